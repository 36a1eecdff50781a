//! Attacks on a process that holds mediamem memory: peers that truncate,
//! punch holes in, or lie about the files they hand over, and safe code
//! that tries to make two writable roots over the same pages.
//!
//! Scenarios that would end the process with `SIGBUS` if mediamem failed
//! run in a child process (this test binary, re-executed with
//! `MEDIAMEM_HOSTILE_CHILD` naming the scenario), so a failure is a failed
//! assertion on the child's exit, not the end of the whole test run. Each
//! attack also runs once *without* the protection, in a child, to show the
//! attack is real: that child must die of `SIGBUS`.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
use mediamem::{DmaBufAllocator, Error, FdAllocator, FdMemoryFlags, Memory, Result, ShmAllocator};
use rustix::fs::{FallocateFlags, SealFlags};

mod common;

const CHILD: &str = "MEDIAMEM_HOSTILE_CHILD";
const PAGE: usize = 4096;

/// Run scenario `name` in a child process; return its exit status.
fn in_child(name: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .status()
        .expect("the test binary runs again")
}

/// The child's side: runs the scenario named in the environment. In the
/// parent's own test run it does nothing.
#[test]
fn child_entry() {
    let Ok(name) = std::env::var(CHILD) else {
        return;
    };
    match name.as_str() {
        "unguarded_truncation" => unguarded_truncation(),
        "guarded_truncation" => guarded_truncation(),
        "guard_chains_foreign_sigbus" => guard_chains_foreign_sigbus(),
        "receiver_guarded_truncation" => receiver_guarded_truncation(),
        other => panic!("no scenario {other}"),
    }
    std::process::exit(0);
}

fn shrink(file: &std::fs::File) {
    file.set_len(0).unwrap();
}

/// Without the guard, a file truncated under a mapping raises SIGBUS on the
/// next read: the attack.
fn unguarded_truncation() {
    let file = common::temp_file(&[7u8; 3 * PAGE]);
    let mem = FdAllocator::new()
        .alloc_borrowed(
            file.as_fd(),
            3 * PAGE,
            0,
            3 * PAGE,
            FdMemoryFlags::KEEP_MAPPED,
        )
        .unwrap();
    let map = mem.map_readable().unwrap();
    assert_eq!(map[PAGE], 7);
    shrink(&file);
    // Dies here.
    let sum: u32 = map.iter().map(|&b| u32::from(b)).sum();
    println!("read {sum} after the truncation");
}

/// With `GUARD_SIGBUS` the same read gives zeros, and the next map says
/// what happened.
fn guarded_truncation() {
    let file = common::temp_file(&[7u8; 3 * PAGE]);
    let mem = FdAllocator::new()
        .alloc_borrowed(
            file.as_fd(),
            3 * PAGE,
            0,
            3 * PAGE,
            FdMemoryFlags::KEEP_MAPPED | FdMemoryFlags::GUARD_SIGBUS,
        )
        .unwrap();
    {
        let map = mem.map_readable().unwrap();
        assert_eq!(map[2 * PAGE], 7);
        shrink(&file);
        assert!(map.iter().all(|&b| b == 0), "the pages read as zeros");
    }
    assert!(
        matches!(mem.map_readable(), Err(Error::Truncated { .. })),
        "the next map reports the truncation"
    );
    // Other guarded memories are unaffected.
    let other = common::temp_file(&[5u8; PAGE]);
    let ok = FdAllocator::new()
        .alloc_borrowed(other.as_fd(), PAGE, 0, PAGE, FdMemoryFlags::GUARD_SIGBUS)
        .unwrap();
    assert!(ok.map_readable().unwrap().iter().all(|&b| b == 5));
}

/// The guard handles only its own ranges: a SIGBUS anywhere else still
/// ends the process, as it would without mediamem.
fn guard_chains_foreign_sigbus() {
    let guarded_file = common::temp_file(&[1u8; PAGE]);
    let guarded = FdAllocator::new()
        .alloc_borrowed(
            guarded_file.as_fd(),
            PAGE,
            0,
            PAGE,
            FdMemoryFlags::GUARD_SIGBUS,
        )
        .unwrap();
    let _held = guarded.map_readable().unwrap();
    unguarded_truncation();
}

/// A peer sends an unsealed file (announced as a dma-buf), the receiver
/// takes it zero-copy under the guard, and the peer truncates it.
fn receiver_guarded_truncation() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    let mut rx = Receiver::new(
        b,
        ReceivePolicy {
            guard_unsealed: true,
            ..ReceivePolicy::default()
        },
    );
    let file = common::temp_file(&[9u8; 2 * PAGE]);
    let fake = DmaBufAllocator::new()
        .alloc(file.try_clone().unwrap().into(), 2 * PAGE)
        .unwrap();
    tx.send_frame(vec![fake], b"").unwrap();
    let frame = rx.recv().unwrap().unwrap();
    let mem = &frame.memories[0];
    assert!(
        !mediamem::is_dmabuf_memory(mem),
        "not a dma-buf, whatever it was called"
    );
    {
        let map = mem.map_readable().unwrap();
        assert_eq!(map[PAGE], 9);
        shrink(&file);
        assert!(map.iter().all(|&b| b == 0));
    }
    assert!(matches!(mem.map_readable(), Err(Error::Truncated { .. })));
}

fn died_of_sigbus(status: std::process::ExitStatus) -> bool {
    status.signal() == Some(rustix::process::Signal::BUS.as_raw())
}

#[test]
fn truncation_under_a_mapping_is_a_real_sigbus() {
    let status = in_child("unguarded_truncation");
    assert!(died_of_sigbus(status), "expected SIGBUS, got {status}");
}

#[test]
fn a_guarded_import_survives_truncation() {
    let status = in_child("guarded_truncation");
    assert!(status.success(), "{status}");
}

#[test]
fn the_guard_leaves_other_sigbus_to_the_default_action() {
    let status = in_child("guard_chains_foreign_sigbus");
    assert!(died_of_sigbus(status), "expected SIGBUS, got {status}");
}

#[test]
fn a_receiver_survives_a_sender_that_truncates() {
    let status = in_child("receiver_guarded_truncation");
    assert!(status.success(), "{status}");
}

#[test]
fn guarded_mappings_release_their_slots() -> Result<()> {
    let file = common::temp_file(&[3u8; PAGE]);
    // More cycles than there are guard slots: each unmap frees its slot.
    common::assert_no_leaks(3000, |_| {
        let mem = FdAllocator::new()
            .alloc_borrowed(file.as_fd(), PAGE, 0, PAGE, FdMemoryFlags::GUARD_SIGBUS)
            .unwrap();
        assert_eq!(mem.map_readable().unwrap()[0], 3);
    });
    Ok(())
}

// ---------------------------------------------------------------------
// Files that lie about what they are
// ---------------------------------------------------------------------

fn pair(policy: ReceivePolicy) -> (Sender, Receiver) {
    let (a, b) = UnixStream::pair().unwrap();
    (Sender::new(a), Receiver::new(b, policy))
}

#[test]
fn a_file_announced_as_dmabuf_is_refused_and_its_fds_closed() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let fds = common::open_fds();
    for round in 0..50 {
        // A regular file and an unsealed memfd, both sent as "dma-buf".
        let file = common::temp_file(&[1u8; PAGE]);
        let memfd = rustix::fs::memfd_create("fake", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memfd, PAGE as u64).unwrap();
        let fake: OwnedFd = if round % 2 == 0 { file.into() } else { memfd };
        let d = DmaBufAllocator::new().alloc(fake, PAGE)?;
        assert!(mediamem::is_dmabuf_memory(&d));
        let id = tx.send_frame(vec![d], b"")?;
        let e = rx.recv().unwrap_err();
        assert!(
            matches!(e, Error::Refused(ref why) if why.contains("announced as a dma-buf")),
            "{e}"
        );
        assert_eq!(tx.wait_release()?, Some(id));
    }
    // Other tests of this binary open fds meanwhile; a leak of one per
    // round (50) still shows.
    assert!(common::open_fds() <= fds + 16, "received fds are closed");
    Ok(())
}

#[test]
fn a_receiver_can_require_the_write_seal() -> Result<()> {
    // A memfd sealed only against shrinking: accepted by default...
    let sealed_shrink = || -> Result<Memory> {
        let fd = rustix::fs::memfd_create(
            "shrink-only",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, PAGE as u64).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        FdAllocator::new().alloc(fd, PAGE, FdMemoryFlags::empty())
    };
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    tx.send_frame(vec![sealed_shrink()?], b"")?;
    assert!(rx.recv()?.is_some());
    // ...refused when the policy requires the write seal...
    let strict = ReceivePolicy {
        require_write_seal: true,
        ..ReceivePolicy::default()
    };
    let (mut tx, mut rx) = pair(strict);
    let id = tx.send_frame(vec![sealed_shrink()?], b"")?;
    assert!(
        matches!(rx.recv(), Err(Error::Refused(ref why)) if why.contains("F_SEAL_FUTURE_WRITE"))
    );
    assert_eq!(tx.wait_release()?, Some(id));
    // ...which mediamem's own shm memory carries.
    let shm = ShmAllocator::get().alloc(100, None)?;
    tx.send_frame(vec![shm], b"")?;
    assert!(rx.recv()?.is_some());
    Ok(())
}

#[test]
fn shm_memory_cannot_be_punched_written_or_mapped_writable_by_others() -> Result<()> {
    let shm = ShmAllocator::get().alloc(3 * PAGE, None)?;
    shm.map_writable()?.fill(4);
    let fd = shm.try_clone_fd()?;
    let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE));
    assert_eq!(
        rustix::fs::fallocate(
            &fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            PAGE as u64
        ),
        Err(rustix::io::Errno::PERM),
        "no hole can be punched under a reader"
    );
    assert_eq!(
        rustix::io::pwrite(&fd, b"x", 0),
        Err(rustix::io::Errno::PERM)
    );
    // A second writable root over the same file cannot even be mapped.
    let twin = FdAllocator::new().alloc(fd, shm.maxsize(), FdMemoryFlags::empty())?;
    assert!(twin.map_writable().is_err());
    assert!(twin.map_readable()?.iter().take(3 * PAGE).all(|&b| b == 4));
    // The owner still writes through its own mapping.
    shm.map_writable()?[0] = 5;
    Ok(())
}

// ---------------------------------------------------------------------
// Aliasing from safe code
// ---------------------------------------------------------------------

#[test]
fn two_roots_of_one_file_share_one_borrow_rule() -> Result<()> {
    // The reproducer, on a file that can still be mapped writable
    // twice (shm memory refuses the second writable mapping outright).
    let file = common::temp_file(&[0u8; PAGE]);
    let first =
        FdAllocator::new().alloc_borrowed(file.as_fd(), PAGE, 0, PAGE, FdMemoryFlags::empty())?;
    let twin = FdAllocator::new().alloc_borrowed(
        first.fd().unwrap(),
        first.maxsize(),
        first.offset(),
        first.size(),
        FdMemoryFlags::empty(),
    )?;
    assert!(first
        .block_alias()
        .unwrap()
        .same(twin.block_alias().unwrap()));
    {
        let _a = first.map_writable()?;
        assert!(matches!(twin.map_writable(), Err(Error::Aliased { .. })));
        assert!(matches!(twin.map_readable(), Err(Error::Aliased { .. })));
        assert!(matches!(
            twin.share(..)?.map_readable(),
            Err(Error::Aliased { .. })
        ));
    }
    {
        let _r1 = first.map_readable()?;
        let _r2 = twin.map_readable()?; // readers share
        drop(_r1);
        assert!(matches!(first.map_writable(), Err(Error::Aliased { .. })));
    }
    // map_mut on the only handle skips the lock word, never the rule.
    let mut only = first;
    let _r = twin.map_readable()?;
    assert!(matches!(only.map_mut(), Err(Error::Aliased { .. })));
    drop(_r);
    only.map_mut()?[0] = 1;
    assert_eq!(twin.map_readable()?[0], 1);
    Ok(())
}

#[test]
fn each_root_of_one_file_keeps_its_own_lock_word() -> Result<()> {
    // The first root of a file keeps its GStreamer lock word in the half of
    // the file's alias word that the borrow rule leaves free; any other
    // root keeps its own. Maps, shares and locks of one root never show in
    // another's word, whichever root has the alias's.
    let file = common::temp_file(&[0u8; PAGE]);
    fn import(fd: std::os::fd::BorrowedFd<'_>) -> Result<Memory> {
        FdAllocator::new().alloc_borrowed(fd, PAGE, 0, PAGE, FdMemoryFlags::empty())
    }
    let first = import(file.as_fd())?;
    let twin = import(first.fd().unwrap())?;
    let (r, t) = (first.map_readable()?, twin.map_readable()?);
    assert_eq!((first.lock_state(), twin.lock_state()), (0x101, 0x101));
    let shares = (first.share(..)?, first.share(..)?);
    assert_eq!((first.lock_state(), twin.lock_state()), (0x20101, 0x101));
    assert!(!first.is_writable() && twin.is_writable());
    drop((r, t, shares));
    assert_eq!((first.lock_state(), twin.lock_state()), (0, 0));
    for (writer, other) in [(&first, &twin), (&twin, &first)] {
        let _w = writer.map_writable()?;
        assert!(matches!(other.map_readable(), Err(Error::Aliased { .. })));
        assert_eq!((writer.lock_state(), other.lock_state()), (0x102, 0));
    }
    // When the first root goes, a new root of the file may take the alias
    // word over (with whatever mode bits the last unmap left there, which
    // mean nothing); the twin keeps its own word.
    drop(first);
    let third = import(twin.fd().unwrap())?;
    assert_eq!((third.lock_state(), twin.lock_state()), (0, 0));
    let r = third.map_readable()?;
    assert_eq!((third.lock_state(), twin.lock_state()), (0x101, 0));
    assert!(matches!(twin.map_writable(), Err(Error::Aliased { .. })));
    drop(r);
    twin.map_writable()?[0] = 5;
    let held = (
        third.lock(mediamem::LockFlags::EXCLUSIVE)?,
        third.lock(mediamem::LockFlags::EXCLUSIVE)?,
    );
    assert!(!third.is_writable() && twin.is_writable());
    assert_eq!(third.map_readable()?[0], 5);
    drop(held);
    assert_eq!((third.lock_state(), twin.lock_state()), (0, 0));
    Ok(())
}

#[test]
fn a_lock_leaked_on_the_first_root_dies_with_it() -> Result<()> {
    // `mem::forget` of a guard is safe code. A lock leaked on the root that
    // holds the alias word must not pass to the next root that takes the
    // word over, as it would not had the root kept a word of its own.
    let file = common::temp_file(&[0u8; PAGE]);
    fn import(fd: std::os::fd::BorrowedFd<'_>) -> Result<Memory> {
        FdAllocator::new().alloc_borrowed(fd, PAGE, 0, PAGE, FdMemoryFlags::empty())
    }
    let first = import(file.as_fd())?;
    let twin = import(first.fd().unwrap())?;
    std::mem::forget(first.lock(mediamem::LockFlags::EXCLUSIVE)?);
    std::mem::forget(first.lock(mediamem::LockFlags::READ | mediamem::LockFlags::WRITE)?);
    assert_eq!(first.lock_state(), 0x10103);
    drop(first);
    let third = import(twin.fd().unwrap())?;
    assert_eq!((third.lock_state(), twin.lock_state()), (0, 0));
    // One share keeps a root writable; a second exclusive holder (the
    // leaked lock) would not.
    let share = third.share(..)?;
    assert!(third.is_writable());
    drop(share);
    third.map_writable()?[0] = 7;
    assert_eq!(twin.map_readable()?[0], 7);
    Ok(())
}

#[test]
fn a_frame_received_in_the_same_process_shares_the_senders_rule() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let shm = ShmAllocator::get().alloc(PAGE, None)?;
    let writer = shm.clone();
    tx.send_frame(vec![shm], b"")?;
    let frame = rx.recv()?.unwrap();
    let read = frame.memories[0].map_readable()?;
    assert!(
        matches!(writer.map_writable(), Err(Error::Aliased { .. })),
        "the sender cannot write under the receiver's slice"
    );
    drop(read);
    writer.map_writable()?[0] = 2;
    assert_eq!(frame.memories[0].map_readable()?[0], 2);
    Ok(())
}

#[test]
fn the_alias_registry_does_not_grow() -> Result<()> {
    let before = mediamem::memory::alias_tracked_files();
    for _ in 0..500 {
        let m = ShmAllocator::get().alloc(64, None)?;
        let twin = FdAllocator::new().alloc_borrowed(
            m.fd().unwrap(),
            m.maxsize(),
            0,
            64,
            FdMemoryFlags::empty(),
        )?;
        drop((m, twin));
    }
    // Other tests run in parallel; a leak of one entry per cycle shows.
    assert!(mediamem::memory::alias_tracked_files() < before + 50);
    Ok(())
}

// ---------------------------------------------------------------------
// hugetlbfs
// ---------------------------------------------------------------------

/// Reserves huge pages for one test and puts the old count back.
struct HugePages {
    old: Option<String>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    /// At least `n` free huge pages, or `None` (the reason is printed as a
    /// skip) when this process may not reserve them.
    fn reserve(n: u64) -> Option<HugePages> {
        let free = mediamem::phys::free_huge_pages().unwrap_or(0) as u64;
        if free >= n {
            return Some(HugePages { old: None });
        }
        let old = std::fs::read_to_string(NR_HUGEPAGES).ok()?;
        let total: u64 = old.trim().parse().ok()?;
        if std::fs::write(NR_HUGEPAGES, format!("{}", total + n - free)).is_err() {
            println!("SKIPPED: hugetlb tests: cannot write {NR_HUGEPAGES} (needs root)");
            return None;
        }
        let guard = HugePages { old: Some(old) };
        if (mediamem::phys::free_huge_pages().unwrap_or(0) as u64) < n {
            println!("SKIPPED: hugetlb tests: the kernel gave no huge pages");
            return None;
        }
        Some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(NR_HUGEPAGES, old.trim());
        }
    }
}

fn hugetlb_memfd(seals: SealFlags) -> (OwnedFd, usize) {
    let huge = mediamem::phys::huge_page_size().unwrap();
    let fd = rustix::fs::memfd_create(
        "hostile-huge",
        rustix::fs::MemfdFlags::CLOEXEC
            | rustix::fs::MemfdFlags::ALLOW_SEALING
            | rustix::fs::MemfdFlags::HUGETLB,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, huge as u64).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    (fd, huge)
}

#[test]
fn hugetlb_memfds_need_the_write_seal_and_map_in_whole_pages() -> Result<()> {
    let Some(_pages) = HugePages::reserve(2) else {
        return Ok(());
    };
    // A hugetlb memfd sealed only against shrinking: a hole punched in it
    // can leave no page to refault, so the receiver refuses it.
    let (fd, huge) = hugetlb_memfd(SealFlags::SHRINK | SealFlags::GROW);
    let mem = FdAllocator::new().alloc(fd, huge, FdMemoryFlags::empty())?;
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let id = tx.send_frame(vec![mem], b"")?;
    assert!(matches!(rx.recv(), Err(Error::Refused(ref why)) if why.contains("hugetlbfs")));
    assert_eq!(tx.wait_release()?, Some(id));

    // With the write seal it is taken, and nobody can punch a hole.
    let (fd, huge) = hugetlb_memfd(SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE);
    assert_eq!(
        rustix::fs::fallocate(
            &fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            huge as u64
        ),
        Err(rustix::io::Errno::PERM)
    );
    // A maxsize of less than a huge page still maps and unmaps a whole
    // one: no mapping is left behind per map.
    let small = FdAllocator::new().alloc(fd, PAGE, FdMemoryFlags::empty())?;
    common::assert_no_leaks(200, |_| {
        assert_eq!(small.map_readable().unwrap().len(), PAGE);
    });
    tx.send_frame(vec![small], b"")?;
    let frame = rx.recv()?.unwrap();
    assert_eq!(frame.memories[0].map_readable()?[0], 0);
    Ok(())
}
