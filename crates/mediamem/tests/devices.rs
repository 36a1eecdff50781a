//! Device tests: DRM dumb buffers on bochs, PRIME export, vgem, udmabuf and
//! dma-heaps, on a real kernel.
//!
//! This machine's kernel has none of these devices, so every test here is
//! `#[ignore]`d on the host (cargo test lists them as ignored, with the
//! reason). `cargo xtask vm-test` boots Debian's kernel under QEMU with
//! `bochs-display`, loads `bochs` and `vgem`, and runs this binary with
//! `--include-ignored` as root; there a missing device fails the test.

use std::os::fd::{AsFd, AsRawFd};

use mediamem::drm::{dumb_dimensions, find_device, fourcc, DrmDumbAllocator};
use mediamem::heap::{list_heaps, DmaHeapAllocator};
use mediamem::{
    dmabuf_memory_get_fd, drm_dumb_memory_export_dmabuf, drm_dumb_memory_get_handle,
    fd_memory_get_fd, is_dmabuf_memory, is_drm_dumb_memory, is_fd_memory, Allocator, Error,
    MapFlags, Memory, Result, UdmabufAllocator,
};

mod common;

/// Every seed function on a dma-buf memory (exported, udmabuf or heap).
fn check_dmabuf_seed_functions(mem: &Memory) {
    assert!(is_dmabuf_memory(mem));
    assert!(is_fd_memory(mem), "dma-buf memory is fd memory");
    assert!(!is_drm_dumb_memory(mem));
    assert_eq!(drm_dumb_memory_get_handle(mem), None);
    let fd = dmabuf_memory_get_fd(mem).expect("a dma-buf fd").as_raw_fd();
    assert_eq!(fd_memory_get_fd(mem).unwrap().as_raw_fd(), fd);
    assert_eq!(mem.fd().unwrap().as_raw_fd(), fd);
    assert!(matches!(
        drm_dumb_memory_export_dmabuf(mem),
        Err(Error::WrongKind { .. })
    ));
    // Shares keep the kind and the fd.
    let share = mem.share(..1).unwrap();
    assert!(is_dmabuf_memory(&share));
    assert_eq!(dmabuf_memory_get_fd(&share).unwrap().as_raw_fd(), fd);
}

fn bochs() -> DrmDumbAllocator {
    let path = find_device("bochs-drm").expect("a bochs-drm card (QEMU -device bochs-display)");
    let a = DrmDumbAllocator::new_with_device_path(&path).expect("bochs offers dumb buffers");
    assert_eq!(a.driver_name(), "bochs-drm");
    assert_eq!(a.device_path(), Some(path.as_path()));
    a
}

/// Fill with a pattern that depends on the position and `seed`.
fn pattern(bytes: &mut [u8], seed: u8) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
}

fn check_pattern(bytes: &[u8], seed: u8) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i as u8).wrapping_mul(31).wrapping_add(seed))
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn dumb_alloc_map_share_and_seed_functions() -> Result<()> {
    let dumb = bochs();
    let (mem, pitch) = dumb.alloc(fourcc(*b"XR24"), 640, 480)?;
    // The numbers the recipe measured on bochs.
    assert_eq!(pitch, 2560);
    assert_eq!(mem.size(), 1_228_800);
    assert!(mem.is_type("DRMDumbMemory"));
    assert!(is_drm_dumb_memory(&mem));
    let handle = drm_dumb_memory_get_handle(&mem).expect("a GEM handle");
    assert_ne!(handle.0, 0);
    assert!(!is_fd_memory(&mem) && !is_dmabuf_memory(&mem));
    assert!(fd_memory_get_fd(&mem).is_none());

    pattern(&mut mem.map_writable()?, 1);
    assert!(check_pattern(&mem.map_readable()?, 1));

    // GStreamer crashes here (NULL mem_share); mediamem shares.
    let line = mem.share(2560..5120)?;
    assert!(is_drm_dumb_memory(&line));
    assert_eq!(drm_dumb_memory_get_handle(&line), Some(handle));
    {
        let whole = mem.map_readable()?;
        assert_eq!(&*line.map_readable()?, &whole[2560..5120]);
    }
    assert!(line.map_writable().is_err());

    let copy = mem.copy()?;
    assert!(copy.is_type("SystemMemory"));
    assert!(check_pattern(&copy.map_readable()?, 1));

    // Memories outlive their allocator (the device fd is shared).
    drop(dumb);
    assert!(check_pattern(&mem.map_readable()?, 1));
    Ok(())
}

/// The bytes a `w`×`h` image in `code` needs with tight strides, plane by
/// plane (an independent check of the dumb-buffer sizing).
fn tight_bytes(code: &[u8; 4], w: usize, h: usize) -> usize {
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    match code {
        b"XR24" | b"AR24" | b"XB24" | b"AB24" | b"XR30" => 4 * w * h,
        b"RG24" | b"BG24" => 3 * w * h,
        b"RG16" | b"BG16" | b"GR88" | b"RG88" | b"R16 " => 2 * w * h,
        b"R8  " | b"C8  " => w * h,
        b"YUYV" | b"UYVY" => 4 * cw * h,
        b"NV12" | b"NV21" | b"YU12" | b"YV12" => w * h + 2 * cw * ch,
        b"NV16" | b"YU16" | b"YV16" => w * h + 2 * cw * h,
        b"NV24" | b"YU24" => 3 * w * h,
        b"P010" | b"P016" => 2 * w * h + 4 * cw * ch,
        b"P210" => 2 * w * h + 4 * cw * h,
        b"AR4H" | b"XR48" => 8 * w * h,
        other => panic!("no tight size for {:?}", std::str::from_utf8(other)),
    }
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn dumb_pitch_and_size_for_a_table_of_formats() -> Result<()> {
    let dumb = bochs();
    let table: &[(&[u8; 4], u32, u32)] = &[
        (b"XR24", 640, 480),
        (b"AR24", 1, 1),
        (b"RG24", 333, 111),
        (b"RG16", 320, 240),
        (b"GR88", 100, 100),
        (b"R8  ", 100, 100),
        (b"YUYV", 639, 480),
        (b"UYVY", 64, 64),
        (b"NV12", 1920, 1080),
        (b"NV12", 641, 481),
        (b"NV21", 320, 240),
        (b"YU12", 320, 240),
        (b"YU12", 33, 17),
        (b"YU16", 320, 240),
        (b"NV16", 320, 240),
        (b"NV24", 320, 240),
        (b"YU24", 64, 48),
        (b"P010", 640, 480),
        (b"P210", 64, 48),
        (b"AR4H", 320, 240),
    ];
    for &(code, w, h) in table {
        let (mem, pitch) = dumb.alloc(fourcc(*code), w, h)?;
        let name = std::str::from_utf8(code).unwrap();
        let (dw, rows, bpp) = dumb_dimensions(fourcc(*code), w, h)?;
        let row_bytes = (dw as usize * bpp as usize).div_ceil(8);
        assert!(
            pitch as usize >= row_bytes,
            "{name} {w}x{h}: pitch {pitch} < {row_bytes}"
        );
        assert!(
            mem.size() >= pitch as usize * rows as usize,
            "{name} {w}x{h}: size {} < pitch {pitch} x rows {rows}",
            mem.size()
        );
        let tight = tight_bytes(code, w as usize, h as usize);
        assert!(
            mem.size() >= tight,
            "{name} {w}x{h}: size {} cannot hold the {tight} bytes the image needs",
            mem.size()
        );
        // The whole buffer is mappable and writable.
        let mut m = mem.map_writable()?;
        let last = m.len() - 1;
        m[last] = 0xee;
    }
    assert!(matches!(
        dumb.alloc(fourcc(*b"ZZZZ"), 16, 16),
        Err(Error::UnknownFourcc { .. })
    ));
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn prime_export_shares_bytes_both_ways_and_syncs() -> Result<()> {
    common::warnings(); // record from the start: the no-warning checks below
    let dumb = bochs();
    assert!(dumb.has_prime_export());
    let (mem, _) = dumb.alloc(fourcc(*b"XR24"), 640, 480)?;
    let exported = drm_dumb_memory_export_dmabuf(&mem)?;
    check_dmabuf_seed_functions(&exported);
    let fd = dmabuf_memory_get_fd(&exported).unwrap();
    assert_eq!(
        rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).unwrap(),
        1_228_800,
        "the dma-buf has the buffer's size"
    );
    assert_eq!(exported.size(), mem.size());
    let flags = rustix::io::fcntl_getfd(fd).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));

    // dumb -> dma-buf
    pattern(&mut mem.map_writable()?, 7);
    assert!(check_pattern(&exported.map_readable()?, 7));
    // dma-buf -> dumb
    pattern(&mut exported.map_writable()?, 9);
    assert!(check_pattern(&mem.map_readable()?, 9));

    // DMA_BUF_IOCTL_SYNC succeeded on every map and unmap: no warning.
    assert!(common::warnings_about_fd(fd.as_raw_fd()).is_empty());

    // A new fd every call.
    let again = drm_dumb_memory_export_dmabuf(&mem)?;
    assert_ne!(
        again.fd().unwrap().as_raw_fd(),
        exported.fd().unwrap().as_raw_fd()
    );

    // Export of a share views the share's bytes.
    let part = mem.share(4096..8192)?;
    let part_buf = drm_dumb_memory_export_dmabuf(&part)?;
    assert_eq!((part_buf.offset(), part_buf.size()), (4096, 4096));
    assert_eq!(&*part_buf.map_readable()?, &mem.map_readable()?[4096..8192]);

    // Not dumb memory: an error, not a crash.
    assert!(matches!(
        drm_dumb_memory_export_dmabuf(&exported),
        Err(Error::WrongKind { .. })
    ));
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn vgem_and_non_drm_fds_are_refused() {
    let vgem = find_device("vgem").expect("a vgem card (modprobe vgem)");
    let e = DrmDumbAllocator::new_with_device_path(&vgem).unwrap_err();
    assert!(
        matches!(e, Error::NotAvailable { ref reason, .. } if reason.contains("DRM_CAP_DUMB_BUFFER")),
        "{e}"
    );
    let f = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(
        DrmDumbAllocator::new_with_fd(f.as_fd()),
        Err(Error::BadFd { .. })
    ));
    // new_with_fd dups: the caller's fd stays usable.
    let card = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(find_device("bochs-drm").unwrap())
        .unwrap();
    let a = DrmDumbAllocator::new_with_fd(card.as_fd()).unwrap();
    assert_ne!(a.device_fd().as_raw_fd(), card.as_raw_fd());
    drop(a);
    assert!(rustix::fs::fstat(&card).is_ok());
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn concurrent_first_maps_mmap_once() -> Result<()> {
    let dumb = bochs();
    for _ in 0..50 {
        let (mem, _) = dumb.alloc(fourcc(*b"XR24"), 64, 64)?;
        let barrier = std::sync::Barrier::new(4);
        let ptrs: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let m = mem.map_readable().unwrap();
                        let p = m.as_ptr() as usize;
                        barrier.wait(); // all four hold a map here
                        p
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ptrs.iter().all(|&p| p == ptrs[0]), "one mmap: {ptrs:x?}");
        assert_eq!(mem.lock_state(), 0);
    }
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn map_protection_follows_the_map_flags() -> Result<()> {
    let dumb = bochs();
    let (mem, _) = dumb.alloc(fourcc(*b"R8  "), 4096, 1)?;
    let maps = || std::fs::read_to_string("/proc/self/maps").unwrap();
    let r = mem.map_readable()?;
    let addr = format!("{:x}-", r.as_ptr() as usize);
    let line = maps()
        .lines()
        .find(|l| l.starts_with(&addr))
        .map(str::to_owned)
        .unwrap();
    assert!(line.contains(" r--s "), "read map is read-only: {line}");
    drop(r);
    let w = mem.map_writable()?;
    let addr = format!("{:x}-", w.as_ptr() as usize);
    let line = maps()
        .lines()
        .find(|l| l.starts_with(&addr))
        .map(str::to_owned)
        .unwrap();
    assert!(line.contains(" rw-s "), "write map is read-write: {line}");
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn udmabuf_allocator() -> Result<()> {
    common::warnings(); // record from the start: the no-warning checks below
    UdmabufAllocator::init_once()?;
    let a = Allocator::find(Some("udmabuf")).expect("registered");
    assert!(a.ptr_eq(UdmabufAllocator::get()?.allocator()));
    let mem = a.alloc(100, None)?;
    assert_eq!(mem.maxsize(), rustix::param::page_size());
    assert!(mem.is_type("udmabuf"));
    check_dmabuf_seed_functions(&mem);
    let fd = dmabuf_memory_get_fd(&mem).unwrap().as_raw_fd();
    pattern(&mut mem.map_writable()?, 3);
    assert!(check_pattern(&mem.map_readable()?, 3));
    assert!(
        common::warnings_about_fd(fd).is_empty(),
        "sync succeeds on a udmabuf"
    );
    let s = mem.share(10..20)?;
    assert!(is_dmabuf_memory(&s));
    // Not CUSTOM_ALLOC: copies are udmabuf memory too (as GStreamer).
    let c = mem.copy()?;
    assert!(c.is_type("udmabuf"));
    assert!(check_pattern(&c.map_readable()?, 3));
    let big = a.alloc(8 << 20, None)?;
    big.map_writable()?.fill(1);
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn dma_heap_allocator() -> Result<()> {
    common::warnings(); // record from the start: the no-warning checks below
    let heaps = list_heaps();
    assert!(heaps.iter().any(|h| h == "system"), "{heaps:?}");
    let heap = DmaHeapAllocator::new("system")?;
    assert_eq!(heap.name(), "system");
    let mem = heap.alloc(1 << 20, None)?;
    assert!(mem.is_type("dmaheap"));
    check_dmabuf_seed_functions(&mem);
    let fd = dmabuf_memory_get_fd(&mem).unwrap();
    assert_eq!(
        rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).unwrap(),
        1 << 20
    );
    let raw = fd.as_raw_fd();
    pattern(&mut mem.map_writable()?, 5);
    assert!(check_pattern(&mem.map_readable()?, 5));
    assert!(
        common::warnings_about_fd(raw).is_empty(),
        "sync succeeds on a heap buffer"
    );
    let registered = DmaHeapAllocator::get("system")?;
    assert!(Allocator::find(Some("dmaheap:system"))
        .unwrap()
        .ptr_eq(&registered));

    let e = DmaHeapAllocator::new("no-such-heap").unwrap_err();
    assert!(
        matches!(e, Error::NotAvailable { ref reason, .. } if reason.contains("no such heap") && reason.contains("system")),
        "{e}"
    );
    assert!(DmaHeapAllocator::new("../udmabuf").is_err());
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn no_leaked_fds_mappings_or_gem_handles() -> Result<()> {
    let dumb = bochs();
    let udmabuf = UdmabufAllocator::get()?;
    let heap = DmaHeapAllocator::new("system")?;
    common::assert_no_leaks(2_000, |i| {
        let (mem, _) = dumb.alloc(fourcc(*b"XR24"), 640, 480).unwrap();
        mem.map_writable().unwrap()[i % 1000] = 1;
        let exported = drm_dumb_memory_export_dmabuf(&mem).unwrap();
        assert_eq!(exported.map_readable().unwrap()[i % 1000], 1);
        let share = mem.share(..100).unwrap();
        drop(mem);
        drop(exported);
        assert_eq!(share.map(MapFlags::READ).unwrap().len(), 100);
        let u = udmabuf.alloc(4096, None).unwrap();
        u.map_writable().unwrap()[0] = 2;
        let h = heap.alloc(4096, None).unwrap();
        h.map_writable().unwrap()[0] = 3;
    });
    // Freed GEM handles are reused: after 2,000 buffers a new one still
    // gets a small handle (a leak would have pushed it past 2,000, and
    // exhausted bochs' 16 MiB of VRAM long before).
    let (mem, _) = dumb.alloc(fourcc(*b"XR24"), 64, 64)?;
    let h = drm_dumb_memory_get_handle(&mem).unwrap().0;
    assert!(h < 64, "GEM handle {h}: handles are leaking");
    Ok(())
}

#[test]
fn device_errors_on_the_host_are_typed() {
    // Runs everywhere: missing nodes are NotAvailable with a reason.
    if std::path::Path::new("/dev/udmabuf").exists() {
        return;
    }
    let e = UdmabufAllocator::get().unwrap_err();
    assert!(
        matches!(e, Error::NotAvailable { ref reason, .. } if reason.contains("no such device")),
        "{e}"
    );
    let e = DmaHeapAllocator::new("system").unwrap_err();
    assert!(matches!(e, Error::NotAvailable { .. }), "{e}");
    assert!(Memory::with_size(1).is_ok());
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn a_dumb_buffer_and_its_export_share_one_borrow_rule() -> Result<()> {
    let (mem, _) = bochs().alloc(fourcc(*b"XR24"), 64, 64)?;
    let exported = drm_dumb_memory_export_dmabuf(&mem)?;
    let again = drm_dumb_memory_export_dmabuf(&mem)?;
    // An import of the exported fd by anyone in this process joins too.
    let imported =
        mediamem::DmaBufAllocator::new().alloc(exported.try_clone_fd()?, exported.maxsize())?;
    let rule = mem.block_alias().expect("dumb memory has a rule");
    for other in [&exported, &again, &imported] {
        assert!(rule.same(other.block_alias().unwrap()));
    }
    {
        let _w = mem.map_writable()?;
        assert!(matches!(
            exported.map_readable(),
            Err(Error::Aliased { .. })
        ));
        assert!(matches!(
            imported.map_writable(),
            Err(Error::Aliased { .. })
        ));
    }
    {
        let _r = imported.map_readable()?;
        assert!(matches!(mem.map_writable(), Err(Error::Aliased { .. })));
        assert!(exported.map_readable().is_ok(), "readers share");
    }
    pattern(&mut mem.map_writable()?, 3);
    assert!(check_pattern(&imported.map_readable()?, 3));
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn real_dmabufs_travel_as_dmabufs() -> Result<()> {
    use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(a), Receiver::new(b, ReceivePolicy::default()));
    let (dumb, _) = bochs().alloc(fourcc(*b"XR24"), 64, 64)?;
    let memories = [
        DmaHeapAllocator::new("system")?.alloc(8192, None)?,
        UdmabufAllocator::get()?.alloc(8192, None)?,
        drm_dumb_memory_export_dmabuf(&dumb)?,
    ];
    for (seed, mem) in memories.into_iter().enumerate() {
        pattern(&mut mem.map_writable()?, seed as u8);
        let id = tx.send_frame(vec![mem], b"")?;
        let frame = rx.recv()?.expect("a frame");
        let got = &frame.memories[0];
        assert!(is_dmabuf_memory(got), "a real dma-buf is received as one");
        assert!(check_pattern(&got.map_readable()?, seed as u8));
        drop(frame);
        assert_eq!(tx.wait_release()?, Some(id));
    }
    Ok(())
}
