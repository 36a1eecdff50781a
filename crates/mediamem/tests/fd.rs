//! fd memory: GStreamer's allocators.c fd cases (spec §3.2), the §3.4 fd
//! probes, import validation, share/copy/is_span, and leak checks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mediamem::fd::{FdAllocator, FdBackend, FdMemoryFlags};

mod common;
use common::{assert_no_leaks, temp_file};
use mediamem::{fd_memory_get_fd, is_fd_memory, AllocatorFlags, Error, Memory, Result};

/// What `/proc/self/fd/<n>` points at, or None when `n` is closed.
fn fd_target(n: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{n}")).ok()
}

/// Whether fd number `n` still refers to the file it referred to when
/// `target` was read (a closed number may be reused by another test).
fn still_open(n: i32, target: &std::path::Path) -> bool {
    fd_target(n).as_deref() == Some(target)
}

#[test]
fn test_fdmem_keep_mapped_read_write_read() -> Result<()> {
    let file = temp_file(b"0123456789");
    let raw = file.as_raw_fd();
    let target = fd_target(raw).unwrap();
    let alloc = FdAllocator::new();
    let mem = alloc.alloc(OwnedFd::from(file), 10, FdMemoryFlags::KEEP_MAPPED)?;
    assert_eq!(mem.map_readable()?[5], b'5');
    mem.map_writable()?[5] = b'X'; // needs the mprotect upgrade
    assert_eq!(mem.map_readable()?[5], b'X');
    let backend = mem.backend::<FdBackend>().unwrap();
    assert!(backend.is_mapped(), "KEEP_MAPPED keeps the mapping");
    assert_eq!(backend.map_count(), 0);
    drop(mem);
    assert!(!still_open(raw, &target), "the memory closed its fd");
    Ok(())
}

#[test]
fn test_fdmem_dont_close() -> Result<()> {
    let file = temp_file(b"0123456789");
    let alloc = FdAllocator::new();
    // SAFETY: `file` outlives `mem`.
    let mem = unsafe { alloc.alloc_unowned(file.as_fd(), 10, 0, 10, FdMemoryFlags::KEEP_MAPPED)? };
    assert_eq!(mem.map_readable()?[5], b'5');
    mem.map_writable()?[5] = b'X';
    assert_eq!(mem.map_readable()?[5], b'X');
    drop(mem);
    // The fd is still ours and open: read the change through it.
    let mut file = file;
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut s).unwrap();
    assert_eq!(s, "01234X6789");
    Ok(())
}

#[test]
fn dont_close_with_an_owned_fd_is_refused() {
    let file = temp_file(b"abc");
    let r = FdAllocator::new().alloc(OwnedFd::from(file), 3, FdMemoryFlags::DONT_CLOSE);
    assert!(matches!(r, Err(Error::BadFd { .. })), "{r:?}");
}

#[test]
fn borrowed_import_dups() -> Result<()> {
    let file = temp_file(b"hello");
    let mem = FdAllocator::new().alloc_borrowed(file.as_fd(), 5, 0, 5, FdMemoryFlags::empty())?;
    assert_ne!(mem.fd().unwrap().as_raw_fd(), file.as_raw_fd());
    drop(mem);
    // Ours is untouched.
    assert!(rustix::fs::fstat(&file).is_ok());
    Ok(())
}

#[test]
fn probe_fd_allocator_flags_and_copy_to_sysmem() -> Result<()> {
    let alloc = FdAllocator::new();
    assert_eq!(alloc.flags(), AllocatorFlags::CUSTOM_ALLOC);
    assert_eq!(alloc.flags().bits(), 0x10);
    assert_eq!(alloc.mem_type(), "fd");
    let mem = alloc.alloc_full(
        OwnedFd::from(temp_file(b"0123456789")),
        10,
        2,
        6,
        FdMemoryFlags::empty(),
    )?;
    let copy = mem.copy()?;
    assert!(copy.is_type("SystemMemory"));
    assert!(!is_fd_memory(&copy));
    assert_eq!(&*copy.map_readable()?, b"234567");
    Ok(())
}

#[test]
fn import_validation() {
    let alloc = FdAllocator::new();
    // Past the end of the file: an error now, not a SIGBUS later.
    let r = alloc.alloc(
        OwnedFd::from(temp_file(b"short")),
        4096,
        FdMemoryFlags::empty(),
    );
    assert!(
        matches!(
            r,
            Err(Error::BeyondFile {
                requested: 4096,
                file_size: 5,
                ..
            })
        ),
        "{r:?}"
    );
    // offset + size past maxsize.
    let r = alloc.alloc_full(
        OwnedFd::from(temp_file(b"0123456789")),
        10,
        8,
        4,
        FdMemoryFlags::empty(),
    );
    assert!(matches!(r, Err(Error::OutOfRange { .. })), "{r:?}");
    let r = alloc.alloc_full(
        OwnedFd::from(temp_file(b"x")),
        1,
        usize::MAX,
        2,
        FdMemoryFlags::empty(),
    );
    assert!(matches!(r, Err(Error::SizeOverflow { .. })), "{r:?}");
    // A socket cannot be mapped.
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let r = alloc.alloc(OwnedFd::from(sock), 10, FdMemoryFlags::empty());
    assert!(matches!(r, Err(Error::BadFd { .. })), "{r:?}");
    // A directory neither.
    let dir = File::open(std::env::temp_dir()).unwrap();
    let r = alloc.alloc(OwnedFd::from(dir), 1, FdMemoryFlags::empty());
    assert!(matches!(r, Err(Error::BadFd { .. })), "{r:?}");
}

#[test]
fn failed_imports_close_the_fd() {
    let file = temp_file(b"tiny");
    let raw = file.as_raw_fd();
    let target = fd_target(raw).unwrap();
    assert!(FdAllocator::new()
        .alloc(OwnedFd::from(file), 100, FdMemoryFlags::empty())
        .is_err());
    assert!(!still_open(raw, &target));
}

#[test]
fn writes_reach_the_file_and_private_writes_do_not() -> Result<()> {
    let file = temp_file(b"aaaa");
    let mem = FdAllocator::new().alloc_borrowed(file.as_fd(), 4, 0, 4, FdMemoryFlags::empty())?;
    mem.map_writable()?.copy_from_slice(b"bbbb");
    let mut buf = [0u8; 4];
    rustix::io::pread(&file, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"bbbb");

    let private =
        FdAllocator::new().alloc_borrowed(file.as_fd(), 4, 0, 4, FdMemoryFlags::MAP_PRIVATE)?;
    {
        let mut w = private.map_writable()?;
        w.copy_from_slice(b"cccc");
        assert_eq!(&*w, b"cccc");
    }
    rustix::io::pread(&file, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"bbbb", "MAP_PRIVATE never writes back");
    Ok(())
}

#[test]
fn read_only_fd_refuses_write_maps_cleanly() -> Result<()> {
    let path = std::env::temp_dir().join(format!("mediamem-ro-{}", std::process::id()));
    std::fs::write(&path, b"readonly").unwrap();
    let ro = File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mem = FdAllocator::new().alloc(OwnedFd::from(ro), 8, FdMemoryFlags::empty())?;
    assert_eq!(&*mem.map_readable()?, b"readonly");
    let r = mem.map_writable();
    assert!(matches!(r, Err(Error::MapFailed { .. })), "{r:?}");
    // The kernel's errno is kept typed, not only in the message.
    let errno = r.as_ref().err().and_then(Error::errno);
    assert_eq!(errno, Some(rustix::io::Errno::ACCESS), "{r:?}");
    assert_eq!(mem.lock_state(), 0);
    assert!(!mem.backend::<FdBackend>().unwrap().is_mapped());
    Ok(())
}

#[test]
fn without_keep_mapped_each_cycle_unmaps() -> Result<()> {
    let mem = FdAllocator::new().alloc(
        OwnedFd::from(temp_file(&[1u8; 8192])),
        8192,
        FdMemoryFlags::empty(),
    )?;
    let backend = mem.backend::<FdBackend>().unwrap();
    {
        let a = mem.map_readable()?;
        let b = mem.map_readable()?;
        assert_eq!(a.as_ptr(), b.as_ptr(), "one mmap per root");
        assert_eq!(backend.map_count(), 2);
    }
    assert!(!backend.is_mapped());
    // Not KEEP_MAPPED: a READ mapping cannot be upgraded while held.
    let r = mem.map_raw(mediamem::MapFlags::READ)?;
    assert!(mem.map_raw(mediamem::MapFlags::WRITE).is_err());
    drop(r);
    Ok(())
}

#[test]
fn shares_keep_the_fd_and_map_through_the_root() -> Result<()> {
    let file = temp_file(b"0123456789abcdef");
    let raw = file.as_raw_fd();
    let target = fd_target(raw).unwrap();
    let mem = FdAllocator::new().alloc(OwnedFd::from(file), 16, FdMemoryFlags::empty())?;
    let a = mem.share(4..8)?;
    let b = mem.share(8..12)?;
    assert!(is_fd_memory(&a));
    assert_eq!(fd_memory_get_fd(&a).unwrap().as_raw_fd(), raw);
    assert_eq!(a.is_span(&b), Some(4));
    assert_eq!(b.is_span(&a), None);
    drop(mem);
    assert!(still_open(raw, &target), "shares keep the root and its fd");
    assert_eq!(&*a.map_readable()?, b"4567");
    assert!(a.map_writable().is_err(), "shares are read-only");
    drop(a);
    drop(b);
    assert!(!still_open(raw, &target));
    Ok(())
}

#[test]
fn seed_functions_on_system_memory() -> Result<()> {
    let m = Memory::with_size(4)?;
    assert!(!is_fd_memory(&m));
    assert!(fd_memory_get_fd(&m).is_none());
    assert!(m.fd().is_none());
    assert!(matches!(m.try_clone_fd(), Err(Error::WrongKind { .. })));
    Ok(())
}

#[test]
fn try_clone_fd_outlives_the_memory() -> Result<()> {
    let mem =
        FdAllocator::new().alloc(OwnedFd::from(temp_file(b"xyz")), 3, FdMemoryFlags::empty())?;
    let dup = mem.try_clone_fd()?;
    drop(mem);
    let mut buf = [0u8; 3];
    rustix::io::pread(&dup, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"xyz");
    Ok(())
}

#[test]
fn zero_sized_fd_memory() -> Result<()> {
    let mem = FdAllocator::new().alloc(OwnedFd::from(temp_file(b"")), 0, FdMemoryFlags::empty())?;
    assert_eq!(mem.map_readable()?.len(), 0);
    Ok(())
}

#[test]
fn no_fd_or_mapping_leaks_over_many_cycles() -> Result<()> {
    let alloc = FdAllocator::new();
    assert_no_leaks(3_000, |i| {
        let flags = if i % 2 == 0 {
            FdMemoryFlags::KEEP_MAPPED
        } else {
            FdMemoryFlags::empty()
        };
        let mem = alloc
            .alloc(OwnedFd::from(temp_file(&[7u8; 64])), 64, flags)
            .unwrap();
        assert_eq!(mem.map_readable().unwrap()[63], 7);
        let s = mem.share(10..20).unwrap();
        drop(mem);
        assert_eq!(s.map_readable().unwrap()[0], 7);
        let _ = s.copy().unwrap();
        // A refused import closes its fd too.
        assert!(alloc
            .alloc(OwnedFd::from(temp_file(b"1")), 10, flags)
            .is_err());
    });
    Ok(())
}

#[test]
fn concurrent_maps_of_fd_memory() -> Result<()> {
    let mem = FdAllocator::new().alloc(
        OwnedFd::from(temp_file(&[3u8; 4096])),
        4096,
        FdMemoryFlags::empty(),
    )?;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..500 {
                    let m = mem.map_readable().unwrap();
                    assert!(m.iter().all(|&b| b == 3));
                    let sh = mem.share(100..200).unwrap();
                    assert_eq!(sh.map_readable().unwrap()[0], 3);
                }
            });
        }
    });
    let backend = mem.backend::<FdBackend>().unwrap();
    assert_eq!(backend.map_count(), 0);
    assert!(!backend.is_mapped());
    assert_eq!(mem.lock_state(), 0);
    Ok(())
}

#[test]
fn fd_allocator_caps_and_block_debug() -> Result<()> {
    use mediamem::allocator::AllocatorCaps;
    let fds = FdAllocator::new();
    assert_eq!(fds.caps(), AllocatorCaps::FD_BACKED);
    let f = temp_file(&[1; 100]);
    let raw = f.as_raw_fd();
    let mem = fds.alloc(OwnedFd::from(f), 100, FdMemoryFlags::KEEP_MAPPED)?;
    let block = mem.backend::<FdBackend>().expect("an fd backend");
    let text = format!("{:?}", &**block);
    assert!(
        text.starts_with("FdBlock")
            && text.contains(&format!("fd: {raw}"))
            && text.contains("maxsize: 100"),
        "{text}"
    );
    Ok(())
}
