//! Physically contiguous memory: huge pages (on the host as root, and in
//! the QEMU guest, with huge pages each test reserves for itself), the CMA
//! heap when one exists, and the errors when neither can work.
//!
//! Without root the huge page tests cannot reserve pages: they print a
//! line `SKIPPED: <test>: <reason>` (which `cargo xtask vm-test` treats as
//! a failure in the guest, where they run as root) and return.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};

use mediamem::phys::{
    contiguous_phys_addr, free_huge_pages, huge_page_size, page_frames, CmaHeapAllocator,
    HugePageAllocator, MAX_RESOLVE,
};
use mediamem::{
    is_fd_memory, is_phys_memory, phys_memory_get_phys_addr, AllocationParams, Error, Memory,
    MemoryFlags, Result,
};

mod common;

/// Huge pages each test reserves for itself, on top of what is configured.
const NEED: usize = 4;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Serialises the tests of this process that change `nr_hugepages`.
static SERIAL: Mutex<()> = Mutex::new(());

/// `NEED` huge pages reserved for one test. Dropping it (also when the
/// test fails and unwinds) sets `nr_hugepages` back to the value it had
/// before, so no test depends on, or leaves behind, machine state.
struct HugePages {
    previous: usize,
    /// `flock` on a file under /tmp: other processes running these tests
    /// (another checkout, a parallel `cargo test`) wait for this one.
    _lock: File,
    _serial: MutexGuard<'static, ()>,
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR_HUGEPAGES, self.previous.to_string()) {
            eprintln!("could not restore {NR_HUGEPAGES} to {}: {e}", self.previous);
        }
    }
}

fn read_nr_hugepages() -> usize {
    let text = std::fs::read_to_string(NR_HUGEPAGES)
        .unwrap_or_else(|e| panic!("{NR_HUGEPAGES}: {e} (a kernel without hugetlb?)"));
    text.trim().parse().unwrap()
}

/// Reserve `NEED` huge pages for the calling test. Without root, report a
/// skip of `test` and return `None`; as root the pages must be had, so any
/// failure is a test failure, never a skip.
fn reserve(test: &str) -> Option<HugePages> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !rustix::process::geteuid().is_root() {
        common::skip(
            test,
            &format!("needs root to reserve huge pages in {NR_HUGEPAGES}"),
        );
        return None;
    }
    let lock = File::options()
        .create(true)
        .append(true)
        .open("/tmp/mediamem-test-hugepages.lock")
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let previous = read_nr_hugepages();
    let reserved = HugePages {
        previous,
        _lock: lock,
        _serial: serial,
    };
    std::fs::write(NR_HUGEPAGES, (previous + NEED).to_string())
        .unwrap_or_else(|e| panic!("as root, writing {NR_HUGEPAGES} failed: {e}"));
    let free = free_huge_pages().unwrap_or(0);
    assert!(
        free >= NEED,
        "asked the kernel for {NEED} more huge pages ({NR_HUGEPAGES} {previous} -> {}), \
         {free} are free",
        read_nr_hugepages()
    );
    Some(reserved)
}

/// Page frame numbers of `len` bytes at `addr`, read from pagemap by this
/// test itself (independent of the library's reader).
fn pfns(addr: usize, len: usize) -> Vec<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let page = 4096;
    let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
    f.seek(SeekFrom::Start((addr / page * 8) as u64)).unwrap();
    let pages = (addr + len).div_ceil(page) - addr / page;
    let mut buf = vec![0u8; pages * 8];
    f.read_exact(&mut buf).unwrap();
    buf.chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()) & ((1 << 55) - 1))
        .collect()
}

fn block_addr(mem: &Memory) -> (usize, usize) {
    let all = mem.share_maxsize(..).unwrap();
    let m = all.map_readable().unwrap();
    (m.as_ptr() as usize, m.len())
}

#[test]
fn huge_page_memory_is_contiguous_and_its_address_is_right() -> Result<()> {
    let Some(_pages) = reserve("huge_page_memory_is_contiguous_and_its_address_is_right") else {
        return Ok(());
    };
    let huge = HugePageAllocator::new()?;
    assert_eq!(Some(huge.max_size()), huge_page_size());
    let mem = huge.alloc(1 << 20, None)?;
    assert!(mem.flags().contains(MemoryFlags::PHYSICALLY_CONTIGUOUS));
    assert!(is_phys_memory(&mem));
    assert!(is_fd_memory(&mem), "huge page memory is fd memory");
    assert_eq!(mem.maxsize(), huge.max_size());
    let addr = phys_memory_get_phys_addr(&mem).expect("an address");
    assert_ne!(addr, 0);
    assert_eq!(
        addr % huge.max_size() as u64,
        0,
        "a huge page is aligned to its size"
    );

    // Every 4 KiB page of the block, read independently, is the next frame.
    let (va, len) = block_addr(&mem);
    let frames = pfns(va, len);
    assert_eq!(frames.len(), huge.max_size() / 4096);
    for (i, &pfn) in frames.iter().enumerate() {
        assert_eq!(pfn, frames[0] + i as u64, "page {i}");
    }
    assert_eq!(frames[0] * 4096, addr);

    // Stable across map/unmap cycles (locked, KEEP_MAPPED).
    for _ in 0..10 {
        mem.map_writable()?.fill(0x5a);
        assert_eq!(pfns(block_addr(&mem).0, len), frames);
        assert_eq!(phys_memory_get_phys_addr(&mem), Some(addr));
    }

    // A share's address is the block's address plus its offset.
    let share = mem.share(4096..8192)?;
    assert!(is_phys_memory(&share));
    assert_eq!(phys_memory_get_phys_addr(&share), Some(addr + 4096));

    // Copies go to system memory (NO_COPY), which has no address.
    let copy = mem.copy_range(..16)?;
    assert!(copy.is_type("SystemMemory"));
    assert!(!is_phys_memory(&copy));
    assert_eq!(phys_memory_get_phys_addr(&copy), None);
    Ok(())
}

#[test]
fn prefix_moves_the_address_and_the_fd_is_shareable() -> Result<()> {
    let Some(_pages) = reserve("prefix_moves_the_address_and_the_fd_is_shareable") else {
        return Ok(());
    };
    let huge = HugePageAllocator::new()?;
    let p = AllocationParams::new(MemoryFlags::ZERO_PREFIXED, 63, 128, 0);
    let mem = huge.alloc(1000, Some(&p))?;
    let block = phys_memory_get_phys_addr(&mem.share_maxsize(..)?).unwrap();
    assert_eq!(phys_memory_get_phys_addr(&mem), Some(block + 128));
    mem.map_writable()?.copy_from_slice(&[7u8; 1000]);
    // Another open of the memfd, as another process would have, sees it.
    let raw = mem.fd().unwrap().as_raw_fd();
    let mut other = std::fs::File::open(format!("/proc/self/fd/{raw}")).unwrap();
    let mut buf = [0u8; 4];
    use std::io::{Read, Seek, SeekFrom};
    other.seek(SeekFrom::Start(128)).unwrap();
    other.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [7; 4]);
    Ok(())
}

#[test]
fn oversize_and_exhaustion_are_clear_errors() -> Result<()> {
    let Some(_pages) = reserve("oversize_and_exhaustion_are_clear_errors") else {
        return Ok(());
    };
    let huge = HugePageAllocator::new()?;
    let max = huge.max_size();
    assert!(matches!(
        huge.alloc(max + 1, None),
        Err(Error::TooLarge { requested, limit, .. }) if requested == max + 1 && limit == max
    ));
    let p = AllocationParams::new(MemoryFlags::empty(), 0, max, 1);
    assert!(matches!(
        huge.alloc(1, Some(&p)),
        Err(Error::TooLarge { .. })
    ));
    let too_wide = AllocationParams::new(MemoryFlags::empty(), 2 * max - 1, 0, 0);
    assert!(matches!(
        huge.alloc(1, Some(&too_wide)),
        Err(Error::TooLarge { requested, limit, .. }) if requested == 2 * max && limit == max
    ));
    // A mask of one huge page is what a huge page gives.
    let one_page = AllocationParams::new(MemoryFlags::empty(), max - 1, 0, 0);
    let m = huge.alloc(1, Some(&one_page))?;
    assert_eq!(m.map_readable()?.as_ptr() as usize % max, 0);
    drop(m);

    // Take every free huge page, then ask for one more.
    let mut held = Vec::new();
    loop {
        match huge.alloc(4096, None) {
            Ok(m) => held.push(m),
            Err(e) => {
                assert!(
                    matches!(e, Error::Exhausted { ref hint, errno, .. } if hint.contains("nr_hugepages") && errno == rustix::io::Errno::NOMEM),
                    "{e}"
                );
                break;
            }
        }
        assert!(held.len() <= 4096, "huge pages never ran out");
    }
    assert!(!held.is_empty());
    drop(held);
    assert!(huge.alloc(4096, None).is_ok(), "freed pages come back");
    Ok(())
}

#[test]
fn absurd_ranges_are_errors() {
    // These used to overflow (a panic in debug builds, a wrong range in
    // release) or allocate a buffer for every page of the range (an abort).
    for (addr, len) in [(usize::MAX - 10, 100), (4096, usize::MAX), (usize::MAX, 1)] {
        let r = page_frames(addr, len);
        assert!(
            matches!(r, Err(Error::SizeOverflow { .. })),
            "{addr:#x}+{len:#x}: {r:?}"
        );
        let r = contiguous_phys_addr(addr, len);
        assert!(
            matches!(r, Err(Error::SizeOverflow { .. })),
            "{addr:#x}+{len:#x}: {r:?}"
        );
    }
    for len in [1 << 46, usize::MAX / 2, MAX_RESOLVE + 1] {
        let r = page_frames(4096, len);
        assert!(
            matches!(r, Err(Error::TooLarge { requested, limit, .. }) if requested == len && limit == MAX_RESOLVE),
            "{len:#x}: {r:?}"
        );
        assert!(matches!(
            contiguous_phys_addr(4096, len),
            Err(Error::TooLarge { .. })
        ));
    }
    // Unmapped addresses near the top of the user address space: an error
    // (pages not resident, or frame numbers hidden), never a panic.
    assert!(page_frames(0x7fff_ffff_0000, 8192).is_err());
}

#[test]
fn too_large_an_alignment_is_not_a_bad_mask() {
    // Needs hugetlb support only: the check comes before any huge page is
    // taken.
    let Ok(huge) = HugePageAllocator::new() else {
        eprintln!("SKIPPED: no hugetlb support");
        return;
    };
    let max = huge.max_size();
    for mask in [2 * max - 1, usize::MAX] {
        let p = AllocationParams::new(MemoryFlags::empty(), mask, 0, 0);
        let r = huge.alloc(1, Some(&p));
        assert!(
            matches!(r, Err(Error::TooLarge { requested, limit, .. })
                if requested == mask.saturating_add(1) && limit == max),
            "{mask:#x}: {r:?}"
        );
        let e = r.unwrap_err().to_string();
        assert!(
            !e.contains("2^n - 1"),
            "a valid mask is not reported as malformed: {e}"
        );
    }
    // A malformed mask still is one.
    let p = AllocationParams::new(MemoryFlags::empty(), 5, 0, 0);
    assert!(matches!(
        huge.alloc(1, Some(&p)),
        Err(Error::InvalidAlign { align: 5 })
    ));
}

#[test]
fn contiguity_checker_agrees_with_the_page_table() {
    // Four ordinary pages: contiguous or not, the answer must match the
    // frames read independently. Only meaningful where PFNs are readable.
    let mem = Memory::with_size(4 * 4096).unwrap();
    mem.map_writable().unwrap().fill(1);
    let m = mem.map_readable().unwrap();
    let (va, len) = (m.as_ptr() as usize, m.len());
    let frames = pfns(va, len);
    if frames.contains(&0) {
        // Not root: the library must say so instead of giving a 0.
        assert!(matches!(
            page_frames(va, len),
            Err(Error::NotAvailable { .. })
        ));
        return;
    }
    assert_eq!(page_frames(va, len).unwrap(), frames);
    let consecutive = frames.windows(2).all(|w| w[1] == w[0] + 1);
    match contiguous_phys_addr(va, len) {
        Ok(addr) => {
            assert!(consecutive);
            assert_eq!(addr, frames[0] * 4096 + (va % 4096) as u64);
        }
        Err(Error::NotContiguous { page, .. }) => {
            assert!(!consecutive);
            assert_ne!(frames[page], frames[0] + page as u64);
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn unprivileged_processes_get_an_error_not_a_zero_address() {
    if std::env::var_os("MEDIAMEM_PHYS_CHILD").is_some() {
        // In the child, running as nobody.
        let mem = Memory::with_size(4096).unwrap();
        mem.map_writable().unwrap().fill(1);
        let m = mem.map_readable().unwrap();
        let e = page_frames(m.as_ptr() as usize, 4096).unwrap_err();
        assert!(
            matches!(e, Error::NotAvailable { ref reason, .. } if reason.contains("CAP_SYS_ADMIN")),
            "{e}"
        );
        if let Ok(huge) = HugePageAllocator::new() {
            match huge.alloc(4096, None) {
                Ok(mem) => panic!(
                    "unprivileged allocation presented an address: {:?}",
                    phys_memory_get_phys_addr(&mem)
                ),
                Err(e) => assert!(matches!(e, Error::NotAvailable { .. }), "{e}"),
            }
        }
        return;
    }
    // As root the pages are reserved so that the child's huge page
    // allocation fails for its privileges, not for want of pages.
    let test = "unprivileged_processes_get_an_error_not_a_zero_address";
    if !rustix::process::geteuid().is_root() {
        common::skip(test, "needs root to start a child as nobody");
        return;
    }
    let Some(_pages) = reserve(test) else { return };
    // Run a copy of this binary from a directory nobody can enter and
    // execute from (the original may sit where nobody cannot).
    common::run_test_as_nobody("phys", test, "MEDIAMEM_PHYS_CHILD");
}

#[test]
fn cma_heap_when_present_or_a_clear_error() -> Result<()> {
    match CmaHeapAllocator::new() {
        Ok(cma) => {
            let mem = cma.alloc(1 << 20, None)?;
            assert!(is_phys_memory(&mem));
            assert!(mem.flags().contains(MemoryFlags::PHYSICALLY_CONTIGUOUS));
            let addr = phys_memory_get_phys_addr(&mem).unwrap();
            let (va, len) = block_addr(&mem);
            let frames = pfns(va, len);
            assert!(frames.windows(2).all(|w| w[1] == w[0] + 1));
            assert_eq!(frames[0] * 4096, addr);
            eprintln!("CMA heap {:?} at {addr:#x}", cma.name());
        }
        Err(e) => {
            let text = e.to_string();
            assert!(matches!(e, Error::NotAvailable { .. }), "{text}");
            assert!(
                text.contains("linux,cma") && text.contains("reserved"),
                "{text}"
            );
            eprintln!("no CMA heap here: {text}");
        }
    }
    Ok(())
}
