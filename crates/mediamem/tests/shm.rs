//! shm (memfd) memory: GStreamer's test_shm_alloc_page_aligned (spec
//! §3.2), sizing and alignment, seals, and what a peer holding the fd can
//! and cannot do.

use std::io::Read;
use std::os::fd::AsRawFd;

use mediamem::shm::SHM_SEALS;
use mediamem::{
    fd_memory_get_fd, is_dmabuf_memory, is_fd_memory, AllocationParams, Allocator, AllocatorFlags,
    Error, MemoryFlags, Result, ShmAllocator,
};
use rustix::fs::SealFlags;

mod common;
use common::assert_no_leaks;

fn page() -> usize {
    rustix::param::page_size()
}

#[test]
fn test_shm_alloc_page_aligned() -> Result<()> {
    ShmAllocator::init_once();
    let shm = Allocator::find(Some("shm")).expect("init_once registers \"shm\"");
    assert!(shm.ptr_eq(&ShmAllocator::get()));
    assert!(shm.alloc(100, None)?.maxsize() >= page());
    assert!(shm.alloc(5000, None)?.maxsize() >= 2 * page());
    assert!(shm.alloc(page(), None)?.maxsize() >= page());
    Ok(())
}

#[test]
fn sizes_flags_and_kind() -> Result<()> {
    let shm = ShmAllocator::get();
    assert_eq!(shm.mem_type(), "shm");
    assert_eq!(
        shm.flags(),
        AllocatorFlags::CUSTOM_ALLOC | AllocatorFlags::NO_COPY
    );
    let m = shm.alloc(100, None)?;
    assert_eq!(
        (m.size(), m.offset(), m.maxsize(), m.align()),
        (100, 0, page(), 7)
    );
    assert!(m.is_type("shm"));
    assert!(is_fd_memory(&m));
    assert!(!is_dmabuf_memory(&m));
    assert!(fd_memory_get_fd(&m).is_some());

    let p = AllocationParams::new(MemoryFlags::empty(), 63, 16, 16);
    let m = shm.alloc(1000, Some(&p))?;
    assert_eq!((m.offset(), m.size(), m.align()), (16, 1000, 63));
    assert_eq!(m.map_readable()?.as_ptr() as usize % 64, 16);
    Ok(())
}

#[test]
fn alignment_beyond_a_page() -> Result<()> {
    let mask = (1 << 16) - 1;
    let p = AllocationParams::new(MemoryFlags::empty(), mask, 0, 0);
    let m = ShmAllocator::get().alloc(100, Some(&p))?;
    let map = m.map_readable()?;
    assert_eq!(
        map.as_ptr() as usize & mask,
        0,
        "offset 0 aligned to 64 KiB"
    );
    assert!(m.offset() + m.size() <= m.maxsize());
    assert_eq!(m.maxsize() % page(), 0);
    Ok(())
}

#[test]
fn seals_stop_truncation_by_anyone_holding_the_fd() -> Result<()> {
    let m = ShmAllocator::get().alloc(10_000, None)?;
    m.map_writable()?.fill(0x5a);
    let fd = m.fd().unwrap();
    let seals = rustix::fs::fcntl_get_seals(fd).unwrap();
    assert!(seals.contains(SHM_SEALS), "{seals:?}");
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW));
    assert!(
        !seals.contains(SealFlags::SEAL),
        "more seals may be added later"
    );

    // A peer with a copy of the fd tries to shrink or grow it.
    let peer = m.try_clone_fd()?;
    assert_eq!(
        rustix::fs::ftruncate(&peer, 0),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::fs::ftruncate(&peer, 1 << 20),
        Err(rustix::io::Errno::PERM)
    );
    // Our mapping is intact.
    assert!(m.map_readable()?.iter().all(|&b| b == 0x5a));
    Ok(())
}

#[test]
fn noexec_seal_when_the_kernel_has_it() -> Result<()> {
    let kernel_has_it = rustix::fs::memfd_create(
        "probe",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::NOEXEC_SEAL,
    )
    .is_ok();
    let m = ShmAllocator::get().alloc(10, None)?;
    let seals = rustix::fs::fcntl_get_seals(m.fd().unwrap()).unwrap();
    assert_eq!(seals.contains(SealFlags::EXEC), kernel_has_it, "{seals:?}");
    Ok(())
}

#[test]
fn the_same_bytes_through_another_open_of_the_memfd() -> Result<()> {
    let m = ShmAllocator::get().alloc(11, None)?;
    m.map_writable()?.copy_from_slice(b"hello world");
    // Re-open the memfd through /proc, as another process given the fd
    // would see it.
    let raw = m.fd().unwrap().as_raw_fd();
    let mut other = std::fs::File::open(format!("/proc/self/fd/{raw}")).unwrap();
    let mut buf = [0u8; 11];
    other.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello world");
    Ok(())
}

#[test]
fn zeroed_prefix_padding_and_copies_to_sysmem() -> Result<()> {
    let flags = MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED;
    let p = AllocationParams::new(flags, 0, 32, 32);
    let m = ShmAllocator::get().alloc(64, Some(&p))?;
    assert!(m.flags().contains(flags));
    m.map_writable()?.fill(1);
    let all = m.share_maxsize(..)?;
    let bytes = all.map_readable()?;
    assert!(bytes[..32].iter().all(|&b| b == 0));
    assert!(bytes[32..96].iter().all(|&b| b == 1));
    assert!(bytes[96..].iter().all(|&b| b == 0));
    let c = m.copy()?;
    assert!(c.is_type("SystemMemory"));
    assert!(c.map_readable()?.iter().all(|&b| b == 1));
    Ok(())
}

#[test]
fn shares_and_spans() -> Result<()> {
    let m = ShmAllocator::get().alloc(100, None)?;
    let (a, b) = (m.share(0..50)?, m.share(50..100)?);
    assert!(a.is_type("shm") && is_fd_memory(&a));
    assert_eq!(a.is_span(&b), Some(0));
    assert_eq!(a.fd().unwrap().as_raw_fd(), m.fd().unwrap().as_raw_fd());
    Ok(())
}

#[test]
fn impossible_sizes_are_errors() {
    let shm = ShmAllocator::get();
    assert!(matches!(
        shm.alloc(usize::MAX - 10, None),
        Err(Error::SizeOverflow { .. })
    ));
    // 1 PiB: the memfd may accept the size, but it cannot be mapped.
    let r = shm.alloc(1 << 50, None);
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn no_fd_or_mapping_leaks_over_many_cycles() -> Result<()> {
    let shm = ShmAllocator::get();
    assert_no_leaks(3_000, |i| {
        let m = shm.alloc(64 + i % 5000, None).unwrap();
        m.map_writable().unwrap()[0] = 1;
        let s = m.share(..).unwrap();
        drop(m);
        assert_eq!(s.map_readable().unwrap()[0], 1);
        let _ = s.copy().unwrap();
    });
    Ok(())
}

#[test]
fn mapped_read_write_once_for_its_whole_life() -> Result<()> {
    use mediamem::fd::FdBackend;
    let mem = ShmAllocator::get().alloc(3 * page(), None)?;
    let backend = mem.backend::<FdBackend>().expect("shm is fd memory");
    assert!(backend.is_mapped(), "mapped at allocation");
    let first = mem.map_readable()?.as_ptr();
    assert_eq!(perms_at(first as usize), "rw-s");
    {
        // Read and write maps, nested through a share, all see one mapping
        // and never reach the backend (no mmap, no mprotect, no count).
        let share = mem.share(..)?;
        let read = share.map_readable()?;
        assert_eq!(read.as_ptr(), first);
        assert_eq!(backend.map_count(), 0);
        assert_eq!(perms_at(first as usize), "rw-s", "no mprotect for READ");
    }
    mem.map_writable()?.fill(0x5a);
    assert_eq!(mem.map_readable()?.as_ptr(), first);
    // The bytes are in the memfd (the mapping is MAP_SHARED).
    let mut peer = std::fs::File::from(mem.try_clone_fd()?);
    let mut bytes = vec![0u8; mem.size()];
    peer.read_exact(&mut bytes).expect("read the memfd");
    assert!(bytes.iter().all(|&b| b == 0x5a));
    Ok(())
}

/// The permissions of the mapping that holds `addr`, from /proc/self/maps.
fn perms_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("procfs");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = usize::from_str_radix(lo, 16).unwrap();
        let hi = usize::from_str_radix(hi, 16).unwrap();
        if (lo..hi).contains(&addr) {
            return perms.to_owned();
        }
    }
    panic!("{addr:#x} is not mapped");
}

#[test]
fn shm_blocks_say_they_stay_mapped() -> mediamem::Result<()> {
    use mediamem::fd::{FdBackend, FdMemoryFlags};
    let mem = mediamem::ShmAllocator::get().alloc(4096, None)?;
    let block = mem.backend::<FdBackend>().expect("shm memory is fd memory");
    assert!(block.flags().contains(FdMemoryFlags::KEEP_MAPPED));
    assert!(block.is_mapped());
    drop(mem.map_readable()?);
    assert!(block.is_mapped(), "kept mapped after the last unmap");
    Ok(())
}
