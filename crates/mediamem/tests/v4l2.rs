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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mediamem::heap::DmaHeapAllocator;
use mediamem::pool::MemoryPool;
use mediamem::v4l2::{v4l2_fourcc, vivid as vivid_ctl, Device, Format, Frame, Stream};
use mediamem::{
    dmabuf_memory_get_fd, is_dmabuf_memory, Allocator, DmaBufAllocator, Error, FdMemoryFlags,
    Memory, UdmabufAllocator, V4l2Problem,
};

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

/// Write a marker over the first and last 64 bytes of `mem` (vivid's
/// pattern is static, so only bytes no frame has can show that the driver
/// did not write the buffer again).
fn mark(mem: &Memory) {
    let mut map = mem.map_writable().expect("write-map a held frame");
    let n = map.len();
    let (head, rest) = map.split_at_mut(64);
    let tail = &mut rest[n - 128..];
    for (i, b) in head.iter_mut().chain(tail.iter_mut()).enumerate() {
        *b = 0xa5 ^ (i as u8);
    }
}

/// Whether `mem` still has the marker of [`mark`].
fn marked(mem: &Memory) -> bool {
    let map = mem.map_readable().expect("map a held frame");
    let n = map.len();
    map[..64]
        .iter()
        .chain(map[n - 64..].iter())
        .enumerate()
        .all(|(i, &b)| b == 0xa5 ^ (i as u8))
}

/// Buffers go back when the last handle of a frame's memories is gone,
/// and not before: a held frame stalls its own buffer only, and the
/// driver never writes it meanwhile.
fn held_frames_stall_only_their_buffer(mut s: Stream) {
    s.start().unwrap();
    let n = s.buffer_count();
    assert!(n >= 3, "{n} buffers");
    assert_eq!(s.queued_count(), n);
    let held = s.next_frame(WAIT).unwrap();
    let held_index = held.index();
    mark(&held.memories()[0]);
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
    assert!(marked(&clone), "the driver wrote into a held frame");
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

/// Another root memory over the dma-buf of `mem` (its fd imported again).
fn second_root(mem: &Memory) -> Memory {
    let fd = dmabuf_memory_get_fd(mem).expect("dma-buf memory");
    DmaBufAllocator::new()
        .alloc_borrowed(fd, mem.size(), FdMemoryFlags::empty())
        .expect("import the fd again")
}

/// Another root of a frame's dma-buf (its fd imported again) holds the
/// buffer as a handle would: it is not queued while that root lives, and
/// comes round again once it is gone.
fn a_second_root_holds_the_buffer(mut s: Stream) {
    s.start().unwrap();
    let n = s.buffer_count();
    let f = s.next_frame(WAIT).unwrap();
    let index = f.index();
    let other = second_root(&f.memories()[0]);
    mark(&other);
    drop(f);
    assert_eq!(
        (s.queued_count(), s.held_count()),
        (n - 1, 1),
        "the second root holds the buffer"
    );
    for _ in 0..3 * n {
        let g = s.next_frame(WAIT).unwrap();
        assert_ne!(g.index(), index, "queued while another root lived");
    }
    assert!(marked(&other), "the driver wrote under the second root");
    drop(other);
    let mut seen = false;
    for _ in 0..3 * n {
        seen |= s.next_frame(WAIT).unwrap().index() == index;
    }
    assert!(seen, "buffer {index} never came back");
    assert_eq!(s.held_count(), 0);
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
    held_frames_stall_only_their_buffer(dev.stream_mmap(4).unwrap());
    a_second_root_holds_the_buffer(dev.stream_export(4).unwrap());
    a_second_root_holds_the_buffer(dev.stream_import(buffers(&udmabuf, &format, 4)).unwrap());
}

/// STREAMOFF and the stream's drop with frames held: the frames stay
/// readable with their bytes, nothing is queued while off, and a restart
/// queues only the buffers that are home.
fn streamoff_with_frames_held(mut s: Stream, format: &Format) {
    let n = s.buffer_count();
    s.start().unwrap();
    let a = s.next_frame(WAIT).unwrap();
    let b = s.next_frame(WAIT).unwrap();
    mark(&a.memories()[0]);
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
    for _ in 0..2 * n {
        drop(s.next_frame(WAIT).unwrap());
    }
    assert!(
        marked(&a.memories()[0]),
        "the driver wrote into a held frame"
    );
    // The stream goes while both frames are held.
    let c_bytes = frame_bytes(&c, format);
    drop(s);
    assert_eq!(
        frame_bytes(&a, format),
        bytes,
        "a held frame survives its stream"
    );
    assert_eq!(frame_bytes(&c, format), c_bytes);
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

fn is_busy(r: Result<Stream, Error>) -> bool {
    matches!(
        r,
        Err(Error::V4l2 {
            problem: V4l2Problem::Busy { .. },
            ..
        })
    )
}

#[test]
fn two_thousand_cycles_leak_nothing() {
    let _turn = take_turn();
    let Some(dev) = vivid("two_thousand_cycles_leak_nothing", false) else {
        return;
    };
    let format = set(&dev, b"NV12");
    let need = format.planes[0].size_image as usize;
    let udmabuf = UdmabufAllocator::get().unwrap();
    let mut stream: Option<Stream> = None;
    let mut streams = 0;
    common::assert_no_leaks(2000, |i| {
        // A new stream every 10 cycles (200 in all, so one fd or mapping
        // leaked per stream is past the margin): export, import and MMAP
        // in turn, each after the error paths of refused setups.
        if i % 10 == 0 {
            drop(stream.take());
            let mut short = buffers(&udmabuf, &format, 3);
            short.push(vec![udmabuf.alloc(need - 4096, None).unwrap()]);
            assert!(dev.stream_import(short).is_err(), "cycle {i}");
            let mut s = match (i / 10) % 3 {
                0 => dev.stream_export(4).unwrap(),
                1 => dev.stream_import(buffers(&udmabuf, &format, 4)).unwrap(),
                _ => dev.stream_mmap(4).unwrap(),
            };
            assert!(is_busy(dev.stream_export(2)), "cycle {i}: a second stream");
            s.start().unwrap();
            stream = Some(s);
            streams += 1;
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
    assert_eq!(streams, 200);
    drop(stream);
    // Its REQBUFS 0 happened: another open file of the node can take the
    // queue (the driver says EBUSY while a file owns it).
    let other = Device::open(dev.name()).unwrap();
    other.stream_export(2).expect("the queue was given back");
}

#[test]
fn one_stream_per_device() {
    let _turn = take_turn();
    let Some(dev) = vivid("one_stream_per_device", false) else {
        return;
    };
    let format = set(&dev, b"YUYV");
    let udmabuf = UdmabufAllocator::get().unwrap();
    let mut s = dev.stream_export(4).unwrap();
    s.start().unwrap();
    let held = s.next_frame(WAIT).unwrap();
    // A second stream of the same device would free this one's buffers and
    // reuse their indexes: refused, whatever its kind, before REQBUFS.
    assert!(is_busy(dev.stream_export(4)));
    assert!(is_busy(dev.stream_mmap(4)));
    assert!(is_busy(dev.stream_import(buffers(&udmabuf, &format, 4))));
    // Another open file of the node: the driver's EBUSY, typed.
    let other = Device::open(dev.name()).unwrap();
    assert!(is_busy(other.stream_export(4)));
    // The first stream is untouched: the same buffers, all but the held
    // one queued, frames coming.
    assert_eq!((s.buffer_count(), s.queued_count()), (4, 3));
    for _ in 0..8 {
        assert_ne!(s.next_frame(WAIT).unwrap().index(), held.index());
    }
    // The usual replacement pattern makes the new stream while the old
    // one lives: refused, and the old one keeps running.
    let mut slot = Some(s);
    assert!(is_busy(dev.stream_export(4)));
    slot.as_mut().unwrap().next_frame(WAIT).unwrap();
    // Once it is dropped (a frame still held), a new one works, and
    // the other file still cannot take the queue from it.
    drop(slot);
    let mut s = dev.stream_mmap(3).unwrap();
    s.start().unwrap();
    s.next_frame(WAIT).unwrap();
    assert!(is_busy(other.stream_export(4)));
    drop(s);
    // Neither does a refused setup keep the device: a failed import, then
    // a stream.
    assert!(dev.stream_import(Vec::new()).is_err());
    drop(dev.stream_import(buffers(&udmabuf, &format, 2)).unwrap());
    // With every stream of the first file gone, the other file may stream.
    other.stream_export(2).unwrap();
    drop(held);
}

/// A `QBUF` that fails when a frame is dropped (vivid injects the
/// failure) leaves the buffer home: `next_frame` queues it again, and
/// says so when it keeps failing, instead of claiming the user holds it.
#[test]
fn a_failed_requeue_is_retried_and_reported() {
    let _turn = take_turn();
    let Some(dev) = vivid("a_failed_requeue_is_retried_and_reported", false) else {
        return;
    };
    set(&dev, b"YUYV");
    let mut s = dev.stream_export(4).unwrap();
    s.start().unwrap();
    let mut held: Vec<Frame> = (0..4).map(|_| s.next_frame(WAIT).unwrap()).collect();
    assert_eq!(s.queued_count(), 0);
    // The next QBUF fails once: the buffer comes home, unqueued.
    dev.set_control(vivid_ctl::CID_BUF_PREPARE_ERROR, 1)
        .unwrap();
    drop(held.pop());
    assert_eq!((s.queued_count(), s.held_count()), (0, 3));
    // Not "every buffer held": it is queued again and captured.
    held.push(s.next_frame(WAIT).expect("the buffer was queued again"));
    assert_eq!((s.queued_count(), s.held_count()), (0, 4));
    // The queue in its error state: every QBUF fails.
    dev.set_control(vivid_ctl::CID_QUEUE_ERROR, 1).unwrap();
    drop(held.pop());
    let e = s.next_frame(WAIT).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::V4l2 {
                problem: V4l2Problem::RequeueFailed { .. },
                ..
            }
        ),
        "{e}"
    );
    // STREAMOFF resets the queue; everything streams again.
    s.stop().unwrap();
    drop(held);
    s.start().unwrap();
    assert_eq!(s.queued_count(), 4);
    for _ in 0..8 {
        s.next_frame(WAIT).unwrap();
    }
}

/// The multi-planar API reports where each plane's data starts; vivid
/// puts 128 bytes (of 0x80) before a plane of NV16M and NV61M. A frame's
/// layout says so.
#[test]
fn data_offsets_are_in_the_frames_layout() {
    let _turn = take_turn();
    let Some(dev) = vivid("data_offsets_are_in_the_frames_layout", true) else {
        return;
    };
    // NV16M: 128 bytes before the luma (memory 0); NV61M: before the
    // chroma (memory 1).
    for (code, moved) in [(b"NM16", 0usize), (b"NM61", 1)] {
        let format = set(&dev, code);
        for export in [true, false] {
            // One at a time: a device has one stream.
            let mut s = if export {
                dev.stream_export(3).unwrap()
            } else {
                dev.stream_mmap(3).unwrap()
            };
            s.start().unwrap();
            for _ in 0..3 {
                let f = s.next_frame(WAIT).unwrap();
                let p = f.layout().planes()[moved];
                assert_eq!(
                    p.offset,
                    128,
                    "{}: the data offset is not in the layout",
                    String::from_utf8_lossy(code)
                );
                let sizes: Vec<usize> = f.memories().iter().map(Memory::size).collect();
                f.layout().check(&sizes).unwrap();
                let map = f.memories()[p.memory as usize].map_readable().unwrap();
                assert!(map[..128].iter().all(|&b| b == 0x80), "vivid's filler");
                let other = 1 - moved;
                assert_eq!(f.layout().planes()[other].offset, 0);
                for (used, size) in f.bytes_used().iter().zip(&sizes) {
                    assert!(*used as usize <= *size);
                }
                assert!(format.planes[moved].size_image as usize <= sizes[moved]);
            }
        }
    }
}

/// Frames dropped on another thread while the stream stops, starts,
/// dequeues and goes: no deadlock, no buffer lost, held frames readable.
#[test]
fn frames_dropped_on_another_thread_while_the_stream_changes() {
    let _turn = take_turn();
    let Some(dev) = vivid(
        "frames_dropped_on_another_thread_while_the_stream_changes",
        false,
    ) else {
        return;
    };
    set(&dev, b"YUYV");
    let (tx, rx) = std::sync::mpsc::channel::<Frame>();
    // Holds up to two frames, dropping the oldest after a short, varying
    // wait; gives back what it holds when the channel closes.
    let dropper = std::thread::spawn(move || {
        let mut held = std::collections::VecDeque::new();
        let mut seed = 0x2545_f491_u32;
        for f in rx {
            held.push_back(f);
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            std::thread::sleep(Duration::from_micros(u64::from(seed % 3000)));
            if held.len() > 2 {
                drop(held.pop_front());
            }
        }
        held
    });
    let mut s = dev.stream_export(4).unwrap();
    s.start().unwrap();
    let mut sent = 0;
    while sent < 300 {
        if sent % 25 == 24 {
            s.stop().unwrap();
            assert_eq!(s.queued_count(), 0);
            s.start().unwrap();
        }
        match s.next_frame(WAIT) {
            Ok(f) => {
                tx.send(f).unwrap();
                sent += 1;
            }
            Err(Error::V4l2 {
                problem: V4l2Problem::AllBuffersHeld { .. },
                ..
            }) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("frame {sent}: {e}"),
        }
    }
    // The stream goes while the other thread still drops frames.
    drop(s);
    drop(tx);
    let left = dropper.join().unwrap();
    for f in &left {
        assert_eq!(
            f.memories()[0].map_readable().unwrap().len(),
            f.memories()[0].size()
        );
    }
    drop(left);
    // Nothing kept the device: a new stream has every buffer.
    let mut s = dev.stream_export(4).unwrap();
    s.start().unwrap();
    assert_eq!(s.queued_count(), 4);
    s.next_frame(WAIT).unwrap();
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
    // A memory with a block-free hook already (its owner's): refused
    // before REQBUFS, the hook left in place.
    let mut hooked = udmabuf.alloc(need, None).unwrap();
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = fired.clone();
    hooked
        .set_on_block_free(Arc::new(move |_| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        }))
        .unwrap();
    let reason = bad_import(vec![vec![hooked]], "a memory with a hook");
    assert!(reason.contains("hook"), "{reason}");
    assert!(
        fired.load(std::sync::atomic::Ordering::SeqCst),
        "its hook ran when the refused memory dropped"
    );
    // Another root of the same dma-buf (its fd imported again) could read
    // what the driver writes: refused, both ways round.
    let mem = udmabuf.alloc(need, None).unwrap();
    let reason = bad_import(vec![vec![second_root(&mem)]], "a second root");
    assert!(reason.contains("same dma-buf"), "{reason}");
    let again = second_root(&mem);
    bad_import(vec![vec![mem]], "the first root");
    drop(again);
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
