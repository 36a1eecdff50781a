//! V4L2 bridge tests on vivid, the kernel's virtual capture driver.
//!
//! `cargo xtask vm-test` loads `vivid n_devs=2 multiplanar=1,2` in the
//! guest: a single-planar and a multi-planar capture device (each with an
//! output node too). Where no vivid device exists (this machine's kernel)
//! each test that needs one prints `SKIPPED: <test>: <reason>` and returns;
//! in the guest a skip fails the run. The tests share the two devices, so
//! they take turns (one lock).
//!
//! vivid's picture is made static first (no OSD text, no movement), so
//! every frame of one format has the same bytes: a frame read through its
//! dma-buf (export, or import into udmabuf and heap memory) must equal one
//! read through a plain MMAP capture of the same settings.
//!
//! Besides the library's own checks, every test asserts what the user can
//! see: bytes, sequence numbers, timestamps, which buffer the driver has
//! (`Stream::queued_count`), fds and mappings of the process.

use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mediamem::heap::DmaHeapAllocator;
use mediamem::pool::MemoryPool;
use mediamem::v4l2::{v4l2_fourcc, Device, Format, Frame, Stream};
use mediamem::{is_dmabuf_memory, Allocator, Error, Memory, UdmabufAllocator, V4l2Problem};

mod common;

/// Frames each capture checks.
const FRAMES: usize = 100;
/// A frame must come within this (vivid runs at 60 frames/s here; the
/// guest is emulated and busy).
const WAIT: Duration = Duration::from_secs(5);
const WIDTH: u32 = 320;
const HEIGHT: u32 = 180;

static DEVICES: Mutex<()> = Mutex::new(());

fn take_turn() -> MutexGuard<'static, ()> {
    DEVICES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// vivid's capture device, single- or multi-planar; `None` (after a skip
/// line) when there is none.
fn vivid(test: &str, multiplanar: bool) -> Option<Device> {
    let found = mediamem::v4l2::probe_devices()
        .into_iter()
        .find(|r| r.capability.driver == "vivid" && r.capability.is_multiplanar() == multiplanar);
    match found {
        Some(r) => {
            let dev = Device::open(&r.path).expect("open vivid");
            dev.make_vivid_static().expect("vivid's controls");
            Some(dev)
        }
        None => {
            common::skip(
                test,
                &format!(
                    "no {} vivid capture device (modprobe vivid n_devs=2 multiplanar=1,2; \
                     cargo xtask vm-test does)",
                    if multiplanar {
                        "multi-planar"
                    } else {
                        "single-planar"
                    }
                ),
            );
            None
        }
    }
}

fn set(dev: &Device, code: &[u8; 4]) -> Format {
    let f = dev
        .set_format(v4l2_fourcc(*code), WIDTH, HEIGHT)
        .expect("set format");
    assert_eq!(f.fourcc, v4l2_fourcc(*code));
    // Best effort: the fastest rate vivid offers at this size.
    let _ = dev.set_frame_interval(1, 60);
    f
}

/// The bytes the driver wrote in each memory of `frame`.
fn frame_bytes(frame: &Frame, format: &Format) -> Vec<Vec<u8>> {
    frame
        .memories()
        .iter()
        .zip(&format.planes)
        .map(|(m, p)| {
            let map = m.map_readable().expect("map a frame");
            map[..p.size_image as usize].to_vec()
        })
        .collect()
}

/// A frame through plain MMAP buffers (mapped on the device fd): the
/// reference the dma-buf paths must match.
fn reference(dev: &Device, format: &Format) -> Vec<Vec<u8>> {
    let mut s = dev.stream_mmap(4).expect("MMAP stream");
    s.start().expect("STREAMON");
    let f = s.next_frame(WAIT).expect("an MMAP frame");
    assert!(!is_dmabuf_memory(&f.memories()[0]));
    assert!(f.memories()[0].is_type(mediamem::v4l2::V4L2_MMAP_MEMORY_TYPE));
    let bytes = frame_bytes(&f, format);
    drop(f);
    drop(s);
    bytes
}

/// Capture `FRAMES` frames from `stream`: each equals `want`, sequence
/// numbers and timestamps advance, every frame is dma-buf memory with the
/// stream's layout.
///
/// vivid numbers frames from the time since STREAMON, rounded to whole
/// jiffies; when its thread runs late (a loaded, emulated guest) it
/// catches up one jiffy at a time and can give two buffers the same
/// sequence number and timestamp. So each frame's sequence and timestamp
/// must not go back, and most must move on.
fn capture_and_compare(mut stream: Stream, format: &Format, want: &[Vec<u8>]) {
    assert_eq!(stream.format(), format);
    stream.start().expect("STREAMON");
    let (mut last_seq, mut last_ts) = (None::<u32>, None::<Duration>);
    let (mut first_seq, mut advanced) = (0, 0);
    for i in 0..FRAMES {
        let f = stream.next_frame(WAIT).expect("a frame");
        assert!(!f.is_error(), "frame {i} flagged as an error");
        assert_eq!(f.memories().len(), format.planes.len());
        for m in f.memories() {
            assert!(is_dmabuf_memory(m), "frames are dma-buf memory");
        }
        let sizes: Vec<usize> = f.memories().iter().map(Memory::size).collect();
        f.layout().check(&sizes).expect("layout fits the memories");
        assert_eq!(f.layout(), stream.layout());
        let got = frame_bytes(&f, format);
        assert!(
            got == want,
            "frame {i} (seq {}) differs from the MMAP capture",
            f.sequence()
        );
        match (last_seq, last_ts) {
            (Some(s), Some(t)) => {
                assert!(f.sequence() >= s, "sequence {} after {s}", f.sequence());
                assert!(
                    f.timestamp() >= t,
                    "timestamp {:?} after {t:?}",
                    f.timestamp()
                );
                if f.sequence() > s {
                    assert!(f.timestamp() > t, "a new frame with an old timestamp");
                    advanced += 1;
                }
            }
            _ => first_seq = f.sequence(),
        }
        last_seq = Some(f.sequence());
        last_ts = Some(f.timestamp());
    }
    assert!(
        advanced >= FRAMES * 3 / 4,
        "sequence numbers moved on at {advanced} of {} frames ({first_seq}..={})",
        FRAMES - 1,
        last_seq.unwrap_or(0)
    );
    assert_eq!(stream.held_count(), 0);
}

/// `n` buffers of `alloc` memory for `format` (one memory per plane).
fn buffers(alloc: &Allocator, format: &Format, n: usize) -> Vec<Vec<Memory>> {
    (0..n)
        .map(|_| {
            format
                .planes
                .iter()
                .map(|p| alloc.alloc(p.size_image as usize, None).expect("alloc"))
                .collect()
        })
        .collect()
}

/// Every way of one format: MMAP reference, export, import into udmabuf
/// and into heap memory.
fn every_way(test: &str, multiplanar: bool, code: &[u8; 4]) {
    let _turn = take_turn();
    let Some(dev) = vivid(test, multiplanar) else {
        return;
    };
    let format = set(&dev, code);
    let want = reference(&dev, &format);
    assert!(
        want.iter().any(|p| p.iter().any(|&b| b != want[0][0])),
        "vivid's pattern is not flat"
    );
    capture_and_compare(dev.stream_export(4).expect("export"), &format, &want);
    let udmabuf = UdmabufAllocator::get().expect("udmabuf");
    capture_and_compare(
        dev.stream_import(buffers(&udmabuf, &format, 4))
            .expect("import udmabuf"),
        &format,
        &want,
    );
    let heap = DmaHeapAllocator::new("system").expect("the system heap");
    capture_and_compare(
        dev.stream_import(buffers(&heap, &format, 4))
            .expect("import heap"),
        &format,
        &want,
    );
}

#[test]
fn yuyv_every_way() {
    every_way("yuyv_every_way", false, b"YUYV");
}

#[test]
fn nv12_every_way() {
    every_way("nv12_every_way", false, b"NV12");
}

#[test]
fn nv12_multiplanar_api_every_way() {
    every_way("nv12_multiplanar_api_every_way", true, b"NV12");
}

#[test]
fn nv12_in_two_memories_every_way() {
    let _turn = take_turn();
    let Some(dev) = vivid("nv12_in_two_memories_every_way", true) else {
        return;
    };
    let format = set(&dev, b"NM12");
    assert_eq!(format.planes.len(), 2);
    let layout = format.layout().unwrap();
    assert_eq!(layout.fourcc, mediamem::drm::fourcc(*b"NV12"));
    assert_eq!(layout.planes()[0].memory, 0);
    assert_eq!(layout.planes()[1].memory, 1);
    drop(_turn);
    every_way("nv12_in_two_memories_every_way", true, b"NM12");
}

#[test]
fn a_pool_of_udmabufs_feeds_the_queue() {
    let _turn = take_turn();
    let Some(dev) = vivid("a_pool_of_udmabufs_feeds_the_queue", false) else {
        return;
    };
    let format = set(&dev, b"YUYV");
    let want = reference(&dev, &format);
    let udmabuf = UdmabufAllocator::get().expect("udmabuf");
    let pool = MemoryPool::new(
        udmabuf.allocator().clone(),
        format.planes[0].size_image as usize,
        None,
        0,
        8,
    )
    .unwrap();
    let stream = dev.stream_import_pool(&pool, 4).expect("import a pool");
    capture_and_compare(stream, &format, &want);
}

/// Buffers go back when the last handle of a frame's memories is gone,
/// and not before: a held frame stalls its own buffer only.
fn held_frames_stall_only_their_buffer(mut s: Stream) {
    s.start().unwrap();
    let n = s.buffer_count();
    assert!(n >= 3, "{n} buffers");
    assert_eq!(s.queued_count(), n);
    let held = s.next_frame(WAIT).unwrap();
    let held_index = held.index();
    assert_eq!((s.queued_count(), s.held_count()), (n - 1, 1));
    // A clone and a share outlive the frame: still held.
    let clone = held.memories()[0].clone();
    let share = held.memories()[0].share(..16).unwrap();
    drop(held);
    assert_eq!((s.queued_count(), s.held_count()), (n - 1, 1));
    for _ in 0..3 * n {
        let f = s.next_frame(WAIT).unwrap();
        assert_ne!(
            f.index(),
            held_index,
            "a held buffer was given to the driver"
        );
        assert_eq!(s.queued_count(), n - 2);
        drop(f);
        assert_eq!(s.queued_count(), n - 1, "a dropped frame goes back at once");
    }
    drop(clone);
    assert_eq!(s.held_count(), 1, "the share still holds it");
    drop(share);
    assert_eq!((s.queued_count(), s.held_count()), (n, 0));
    // It comes round again.
    let mut seen = false;
    for _ in 0..3 * n {
        seen |= s.next_frame(WAIT).unwrap().index() == held_index;
    }
    assert!(seen, "buffer {held_index} never came back");
    // Every buffer held: no wait, a typed error.
    let all: Vec<Frame> = (0..n).map(|_| s.next_frame(WAIT).unwrap()).collect();
    assert_eq!(s.queued_count(), 0);
    assert!(matches!(
        s.next_frame(WAIT),
        Err(Error::V4l2 {
            problem: V4l2Problem::AllBuffersHeld { .. },
            ..
        })
    ));
    drop(all);
    assert_eq!(s.queued_count(), n);
    s.next_frame(WAIT).unwrap();
}

#[test]
fn buffers_go_back_when_dropped_and_not_before() {
    let _turn = take_turn();
    let Some(dev) = vivid("buffers_go_back_when_dropped_and_not_before", false) else {
        return;
    };
    let format = set(&dev, b"YUYV");
    held_frames_stall_only_their_buffer(dev.stream_export(4).unwrap());
    let udmabuf = UdmabufAllocator::get().unwrap();
    held_frames_stall_only_their_buffer(dev.stream_import(buffers(&udmabuf, &format, 4)).unwrap());
}

/// STREAMOFF and the stream's drop with frames held: the frames stay
/// readable with their bytes, nothing is queued while off, and a restart
/// queues only the buffers that are home.
fn streamoff_with_frames_held(mut s: Stream, format: &Format) {
    let n = s.buffer_count();
    s.start().unwrap();
    let a = s.next_frame(WAIT).unwrap();
    let b = s.next_frame(WAIT).unwrap();
    let bytes = frame_bytes(&a, format);
    s.stop().unwrap();
    assert!(!s.is_streaming());
    assert_eq!(s.queued_count(), 0);
    assert!(matches!(
        s.next_frame(WAIT),
        Err(Error::V4l2 {
            problem: V4l2Problem::NotStreaming,
            ..
        })
    ));
    assert_eq!(
        frame_bytes(&a, format),
        bytes,
        "a held frame survives STREAMOFF"
    );
    drop(b);
    assert_eq!(
        s.queued_count(),
        0,
        "nothing is queued while the stream is off"
    );
    s.start().unwrap();
    assert_eq!(s.queued_count(), n - 1, "all but the held frame's buffer");
    let c = s.next_frame(WAIT).unwrap();
    assert_ne!(c.index(), a.index());
    // The stream goes while both frames are held.
    drop(s);
    assert_eq!(
        frame_bytes(&a, format),
        bytes,
        "a held frame survives its stream"
    );
    assert_eq!(frame_bytes(&c, format), bytes);
    c.memories()[0].map_writable().unwrap()[0] ^= 0xff;
    drop((a, c));
}

#[test]
fn streamoff_and_drop_with_frames_held_are_safe() {
    let _turn = take_turn();
    let Some(dev) = vivid("streamoff_and_drop_with_frames_held_are_safe", true) else {
        return;
    };
    let format = set(&dev, b"NM12");
    streamoff_with_frames_held(dev.stream_export(4).unwrap(), &format);
    let heap = DmaHeapAllocator::new("system").unwrap();
    streamoff_with_frames_held(
        dev.stream_import(buffers(&heap, &format, 4)).unwrap(),
        &format,
    );
    streamoff_with_frames_held(dev.stream_mmap(4).unwrap(), &format);
    // The device is still usable, and dropping it with a frame held too.
    let mut s = dev.stream_export(3).unwrap();
    s.start().unwrap();
    let f = s.next_frame(WAIT).unwrap();
    drop(s);
    drop(dev);
    assert_eq!(frame_bytes(&f, &format).len(), 2);
}

#[test]
fn two_thousand_cycles_leak_nothing() {
    let _turn = take_turn();
    let Some(dev) = vivid("two_thousand_cycles_leak_nothing", false) else {
        return;
    };
    let format = set(&dev, b"NV12");
    let udmabuf = UdmabufAllocator::get().unwrap();
    let mut stream: Option<Stream> = None;
    common::assert_no_leaks(2000, |i| {
        // A new stream every 100 cycles, export and import in turn.
        if i % 100 == 0 {
            drop(stream.take());
            let mut s = if i % 200 == 0 {
                dev.stream_export(4).unwrap()
            } else {
                dev.stream_import(buffers(&udmabuf, &format, 4)).unwrap()
            };
            s.start().unwrap();
            stream = Some(s);
        }
        let s = stream.as_mut().unwrap();
        let f = s.next_frame(WAIT).unwrap();
        assert_eq!(
            f.memories()[0].map_readable().unwrap().len(),
            f.memories()[0].size()
        );
        drop(f);
        assert_eq!(
            s.queued_count(),
            s.buffer_count(),
            "cycle {i}: a buffer is missing"
        );
    });
    drop(stream);
}

#[test]
fn a_file_that_is_not_v4l2_is_refused() {
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let e = Device::from_fd(OwnedFd::from(f)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::V4l2 {
                problem: V4l2Problem::NotV4l2 {
                    errno: rustix::io::Errno::NOTTY
                },
                ..
            }
        ),
        "{e}"
    );
    let e = Device::open("/dev/null").unwrap_err();
    assert!(
        matches!(
            e,
            Error::V4l2 {
                problem: V4l2Problem::NotV4l2 { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        Device::open("/nonexistent/video0"),
        Err(Error::Os { .. })
    ));
}

#[test]
fn an_output_device_is_refused() {
    let _turn = take_turn();
    if vivid("an_output_device_is_refused", false).is_none() {
        return;
    }
    let mut outputs = 0;
    for e in std::fs::read_dir("/dev").unwrap().flatten() {
        if !e.file_name().to_string_lossy().starts_with("video") {
            continue;
        }
        if let Err(Error::V4l2 {
            problem: V4l2Problem::NotCapture { device_caps },
            ..
        }) = Device::open(e.path())
        {
            if device_caps & 0x2 != 0 {
                outputs += 1;
            }
        }
    }
    assert!(outputs >= 1, "vivid has video output nodes, each refused");
}

#[test]
fn bad_formats_and_imports_are_refused_before_qbuf() {
    let _turn = take_turn();
    let Some(dev) = vivid("bad_formats_and_imports_are_refused_before_qbuf", false) else {
        return;
    };
    let unsupported = |e: Error| {
        matches!(
            e,
            Error::V4l2 {
                problem: V4l2Problem::UnsupportedFormat { .. },
                ..
            }
        )
    };
    // A fourcc nobody has, and one vivid has but mediamem has no layout for.
    assert!(unsupported(
        dev.set_format(v4l2_fourcc(*b"ZZZZ"), 64, 64).unwrap_err()
    ));
    let no_layout = dev
        .formats()
        .unwrap()
        .into_iter()
        .find(|d| mediamem::v4l2::drm_format(d.fourcc).is_none())
        .expect("vivid lists formats mediamem has no layout for");
    assert!(unsupported(
        dev.set_format(no_layout.fourcc, 64, 64).unwrap_err()
    ));

    let format = set(&dev, b"YUYV");
    let need = format.planes[0].size_image as usize;
    let udmabuf = UdmabufAllocator::get().unwrap();
    let bad_import = |buffers: Vec<Vec<Memory>>, what: &str| match dev.stream_import(buffers) {
        Err(Error::V4l2 {
            problem: V4l2Problem::BadImport { reason, .. },
            ..
        }) => reason,
        other => panic!("{what}: {other:?}"),
    };
    // Too small by a page: refused, naming the sizes.
    let mut bufs = buffers(&udmabuf, &format, 3);
    bufs.push(vec![udmabuf.alloc(need - 4096, None).unwrap()]);
    let reason = bad_import(bufs, "too small");
    assert!(reason.contains(&need.to_string()), "{reason}");
    // Not dma-buf memory, a share, a clone held elsewhere, an offset.
    let reason = bad_import(
        vec![vec![Memory::with_size(need).unwrap()]],
        "system memory",
    );
    assert!(reason.contains("dma-buf"), "{reason}");
    let big = udmabuf.alloc(need + 4096, None).unwrap();
    bad_import(vec![vec![big.share(..need).unwrap()]], "a share");
    let clone = big.clone();
    bad_import(vec![vec![big]], "a clone held elsewhere");
    drop(clone);
    let offset = udmabuf.alloc(need + 64, None).unwrap();
    offset.resize(64..).unwrap();
    bad_import(vec![vec![offset]], "an offset");
    bad_import(Vec::new(), "no buffers");
    // Two memories for a one-memory format.
    let two = vec![vec![
        udmabuf.alloc(need, None).unwrap(),
        udmabuf.alloc(need, None).unwrap(),
    ]];
    bad_import(two, "two memories for YUYV");
    // Nothing reached the queue: the device streams as before.
    let mut s = dev.stream_export(3).unwrap();
    s.start().unwrap();
    s.next_frame(WAIT).unwrap();
    // S_FMT while the queue has buffers: the driver's EBUSY, typed.
    assert!(matches!(
        dev.set_format(v4l2_fourcc(*b"NV12"), WIDTH, HEIGHT),
        Err(Error::Os { .. })
    ));
    // A stream that is never started times out of nothing: it is off.
    drop(s);
    let mut off = dev.stream_export(3).unwrap();
    assert!(matches!(
        off.next_frame(Duration::from_millis(10)),
        Err(Error::V4l2 {
            problem: V4l2Problem::NotStreaming,
            ..
        })
    ));
}

#[test]
fn probe_lists_both_vivid_devices_with_export_and_import() {
    let _turn = take_turn();
    if vivid(
        "probe_lists_both_vivid_devices_with_export_and_import",
        false,
    )
    .is_none()
    {
        return;
    }
    let reports: Vec<_> = mediamem::v4l2::probe_devices()
        .into_iter()
        .filter(|r| r.capability.driver == "vivid")
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(
        reports
            .iter()
            .filter(|r| r.capability.is_multiplanar())
            .count(),
        1
    );
    for r in &reports {
        assert!(r.formats.iter().any(|f| f == "NV12"), "{r:?}");
        assert!(r.formats.iter().any(|f| f == "YUYV"), "{r:?}");
        assert_eq!(r.export, Ok(()), "{r:?}");
        assert_eq!(r.import, Ok(()), "{r:?}");
    }
}
