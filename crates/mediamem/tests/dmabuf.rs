//! dma-buf memory on the host: GStreamer's test_dmabuf (spec §3.2) on a
//! regular file, the sync bracket's pairing and warnings, shares, and the
//! seed functions. Real dma-bufs (udmabuf, heaps, DRM PRIME) are exercised
//! in the QEMU guest.

use std::os::fd::{AsRawFd, OwnedFd};

mod common;

use mediamem::{
    dmabuf_memory_get_fd, fd_memory_get_fd, is_dmabuf_memory, is_fd_memory, AllocatorFlags,
    DmaBufAllocator, Error, FdAllocator, FdMemoryFlags, MapFlags, Memory, Result, ShmAllocator,
};

/// A temporary file of `len` zero bytes.
fn zero_file(len: usize) -> std::fs::File {
    common::temp_file(&vec![0u8; len])
}

#[test]
fn test_dmabuf_on_a_regular_file() -> Result<()> {
    common::warnings(); // start recording
                        // GStreamer maps 4096 bytes of an empty file (any access would SIGBUS);
                        // mediamem refuses that at import...
    let alloc = DmaBufAllocator::new();
    let r = alloc.alloc(OwnedFd::from(zero_file(0)), 4096);
    assert!(
        matches!(r, Err(Error::BeyondFile { file_size: 0, .. })),
        "{r:?}"
    );
    // ...so the port gives the file its 4096 bytes.
    let mem = alloc.alloc(OwnedFd::from(zero_file(4096)), 4096)?;
    let fd = mem.fd().unwrap().as_raw_fd();
    {
        let mut map = mem.map(MapFlags::READWRITE)?;
        assert_eq!(map.flags(), MapFlags::READWRITE);
        assert_eq!(map.size(), 4096);
        assert_eq!(map.maxsize(), 4096);
        map.as_mut_slice().unwrap()[0] = 1;
    }
    // The sync ioctl fails with ENOTTY on a regular file: a warning each for
    // START and END, and the map worked.
    let w = common::warnings_about_fd(fd);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("START") && w[1].contains("END"), "{w:?}");
    assert!(
        w.iter()
            .all(|m| m.contains("Inappropriate ioctl for device")),
        "ENOTTY expected: {w:?}"
    );

    // Nested maps sync on every map and unmap, paired.
    {
        let _a = mem.map_readable()?;
        let _b = mem.map_readable()?;
    }
    let w = common::warnings_about_fd(fd);
    assert_eq!(w.len(), 6, "{w:?}");
    let starts = w.iter().filter(|m| m.contains("START")).count();
    assert_eq!(starts, 3, "START and END stay paired: {w:?}");

    // A failed map issues no sync at all.
    let ro = mem.share(..)?;
    assert!(ro.map_writable().is_err());
    assert_eq!(common::warnings_about_fd(fd).len(), 6);
    Ok(())
}

#[test]
fn dmabuf_kind_shares_and_seed_functions() -> Result<()> {
    let alloc = DmaBufAllocator::new();
    assert_eq!(alloc.mem_type(), "dmabuf");
    assert_eq!(alloc.flags(), AllocatorFlags::CUSTOM_ALLOC);
    let file = common::temp_file(b"dma-buf bytes!");
    let mem = alloc.alloc_with_flags(OwnedFd::from(file), 14, FdMemoryFlags::KEEP_MAPPED)?;
    assert!(is_dmabuf_memory(&mem));
    assert!(is_fd_memory(&mem), "dma-buf memory is fd memory");
    let fd = dmabuf_memory_get_fd(&mem).unwrap().as_raw_fd();
    assert_eq!(fd_memory_get_fd(&mem).unwrap().as_raw_fd(), fd);

    let share = mem.share(4..7)?;
    assert!(
        is_dmabuf_memory(&share),
        "a share of dma-buf memory is dma-buf memory"
    );
    assert_eq!(dmabuf_memory_get_fd(&share).unwrap().as_raw_fd(), fd);
    assert_eq!(&*share.map_readable()?, b"buf");

    let copy = mem.copy()?;
    assert!(copy.is_type("SystemMemory"));
    assert!(!is_dmabuf_memory(&copy));
    assert!(dmabuf_memory_get_fd(&copy).is_none());
    Ok(())
}

#[test]
fn other_kinds_are_not_dmabuf() -> Result<()> {
    let sys = Memory::with_size(8)?;
    let shm = ShmAllocator::get().alloc(8, None)?;
    let fdm = FdAllocator::new().alloc(OwnedFd::from(zero_file(8)), 8, FdMemoryFlags::empty())?;
    for m in [&sys, &shm, &fdm] {
        assert!(!is_dmabuf_memory(m));
        assert!(dmabuf_memory_get_fd(m).is_none());
    }
    Ok(())
}

#[test]
fn dont_close_with_an_owned_fd_is_refused() {
    let r = DmaBufAllocator::new().alloc_with_flags(
        OwnedFd::from(zero_file(8)),
        8,
        FdMemoryFlags::DONT_CLOSE,
    );
    assert!(matches!(r, Err(Error::BadFd { .. })));
}

#[test]
fn borrowed_dmabuf_import() -> Result<()> {
    let f = zero_file(64);
    let mem = DmaBufAllocator::new().alloc_borrowed(
        std::os::fd::AsFd::as_fd(&f),
        64,
        FdMemoryFlags::empty(),
    )?;
    assert_ne!(mem.fd().unwrap().as_raw_fd(), f.as_raw_fd());
    drop(mem);
    assert!(rustix::fs::fstat(&f).is_ok());
    Ok(())
}
