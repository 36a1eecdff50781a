//! `mediamem::gst_bridge` (feature `gstreamer`) with the host's
//! GStreamer: mediamem frames through `appsrc ! videoconvert ! appsink`
//! and back, fd identity for fd memory, zero-copy wrapping for the rest.
//! `cargo xtask test` runs it with `--features gstreamer` (installing the
//! GStreamer dev packages with apt when missing).
#![cfg(feature = "gstreamer")]

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_allocators as gst_allocators;
use mediamem::gst_bridge::{from_gst, to_gst, to_gst_wrapped};
use mediamem::{Allocator, Memory, ShmAllocator};

const W: usize = 64;
const H: usize = 48;

fn ino(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

fn gst_fd_ino(mem: &gst::MemoryRef) -> Option<u64> {
    let fd = mem.downcast_memory_ref::<gst_allocators::FdMemory>()?.fd();
    let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
    Some(std::os::unix::fs::MetadataExt::ino(&meta))
}

fn rgba_frame(n: usize) -> Memory {
    let mut m = ShmAllocator::get().alloc(W * H * 4, None).unwrap();
    for (i, b) in m.map_mut().unwrap().iter_mut().enumerate() {
        *b = (i * 3 + n * 17 + i / 4) as u8;
    }
    m
}

/// Run `pipeline` (an appsrc named src, an appsink named sink), push
/// `frames`, return what the sink got, as mediamem memories.
fn run(pipeline: &str, frames: &[Memory]) -> Vec<Memory> {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(pipeline)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline.by_name("src").unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for (n, f) in frames.iter().enumerate() {
        let mut buffer = gst::Buffer::new();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(n as u64 * 33));
            b.append_memory(to_gst(f).unwrap());
        }
        let ret: gst::FlowReturn = src.emit_by_name("push-buffer", &[&buffer]);
        assert_eq!(ret, gst::FlowReturn::Ok);
    }
    let _: gst::FlowReturn = src.emit_by_name("end-of-stream", &[]);
    let mut out = Vec::new();
    loop {
        let sample: Option<gst::Sample> = sink.emit_by_name("pull-sample", &[]);
        let Some(sample) = sample else { break };
        let buffer = sample.buffer().unwrap();
        assert_eq!(buffer.n_memory(), 1);
        // `memory(0)` takes a reference; `peek_memory(0).to_owned()` would
        // be a copy (gst_mini_object_copy), as system memory.
        out.push(from_gst(buffer.memory(0).unwrap()).unwrap());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

#[test]
fn appsrc_videoconvert_appsink_converts_mediamem_frames() {
    let frames: Vec<Memory> = (0..10).map(rgba_frame).collect();
    let out = run(
        &format!(
            "appsrc name=src format=time caps=video/x-raw,format=RGBA,width={W},height={H},framerate=30/1 \
             ! videoconvert ! video/x-raw,format=BGRA ! appsink name=sink sync=false"
        ),
        &frames,
    );
    assert_eq!(out.len(), 10);
    for (f, o) in frames.iter().zip(&out) {
        let i = f.map_readable().unwrap();
        let o = o.map_readable().unwrap();
        assert_eq!(o.len(), W * H * 4);
        // RGBA -> BGRA swaps the first and third byte of every pixel.
        for (p, q) in i.chunks(4).zip(o.chunks(4)) {
            assert_eq!([p[2], p[1], p[0], p[3]], q);
        }
    }
}

#[test]
fn fd_memory_crosses_a_pipeline_as_the_same_file() {
    let frames: Vec<Memory> = (0..5).map(rgba_frame).collect();
    // Same caps on both sides: videoconvert passes the buffers through.
    let out = run(
        &format!(
            "appsrc name=src format=time caps=video/x-raw,format=RGBA,width={W},height={H},framerate=30/1 \
             ! videoconvert ! appsink name=sink sync=false"
        ),
        &frames,
    );
    assert_eq!(out.len(), 5);
    for (f, o) in frames.iter().zip(&out) {
        assert!(mediamem::is_fd_memory(o), "back as fd memory");
        assert_eq!(ino(o.fd().unwrap()), ino(f.fd().unwrap()), "the same file");
        assert_ne!(
            std::os::fd::AsRawFd::as_raw_fd(&o.fd().unwrap()),
            std::os::fd::AsRawFd::as_raw_fd(&f.fd().unwrap()),
            "a duplicated fd"
        );
        assert_eq!(*o.map_readable().unwrap(), *f.map_readable().unwrap());
    }
}

#[test]
fn fd_identity_offsets_and_read_only_shares() {
    gst::init().unwrap();
    let mut shm = ShmAllocator::get().alloc(8192, None).unwrap();
    shm.map_mut().unwrap()[100..200].fill(7);
    let view = shm.share(100..200).unwrap(); // read-only, offset 100
    let g = to_gst(&view).unwrap();
    assert_eq!((g.offset(), g.size()), (100, 100));
    assert_eq!(gst_fd_ino(&g), Some(ino(shm.fd().unwrap())));
    assert!(g.flags().contains(gst::MemoryFlags::READONLY));
    assert_eq!(&*g.map_readable().unwrap(), &[7u8; 100][..]);
    let back = from_gst(g).unwrap();
    assert_eq!(back.sizes().0, 100);
    assert_eq!(back.offset(), 100);
    assert!(back.is_readonly());
    assert_eq!(ino(back.fd().unwrap()), ino(shm.fd().unwrap()));
    assert_eq!(*back.map_readable().unwrap(), [7u8; 100]);
}

#[test]
fn system_memory_is_wrapped_zero_copy_both_ways() {
    gst::init().unwrap();
    let m = Allocator::system().alloc(4096, None).unwrap();
    m.map_writable().unwrap().fill(3);
    let ptr = m.map_readable().unwrap().as_ptr();
    let g = to_gst(&m).unwrap();
    assert!(g.flags().contains(gst::MemoryFlags::READONLY));
    assert_eq!(g.map_readable().unwrap().as_ptr(), ptr, "zero-copy");
    // The wrapper holds a read map: mediamem refuses a write map meanwhile.
    assert!(m.map_writable().is_err());
    drop(g);
    assert!(m.map_writable().is_ok());

    let g = gst::Memory::from_mut_slice(vec![9u8; 1000]);
    let gptr = g.map_readable().unwrap().as_ptr();
    let back = from_gst(g).unwrap();
    assert!(back.is_readonly());
    assert_eq!(back.map_readable().unwrap().as_ptr(), gptr, "zero-copy");
    assert_eq!(*back.map_readable().unwrap(), [9u8; 1000]);

    // Wrapping works for fd memory too.
    let shm = rgba_frame(1);
    let w = to_gst_wrapped(&shm).unwrap();
    assert_eq!(&*w.map_readable().unwrap(), &*shm.map_readable().unwrap());
}

#[test]
fn memory_mapped_writable_elsewhere_is_refused_not_read() {
    gst::init().unwrap();
    let m = Allocator::system().alloc(64, None).unwrap();
    let w = m.map_writable().unwrap();
    // mediamem's borrow rule: no reader (nor a copy) while a writer maps it.
    assert!(matches!(
        to_gst(&m),
        Err(mediamem::Error::Aliased { .. } | mediamem::Error::LockConflict { .. })
    ));
    drop(w);
    assert!(to_gst(&m).is_ok());
}

#[test]
fn a_pooled_frame_given_to_gstreamer_is_not_reused_until_gstreamer_frees_it() {
    gst::init().unwrap();
    let pool = mediamem::pool::MemoryPool::from_fn(0, 1, || ShmAllocator::get().alloc(4096, None))
        .unwrap();
    let frame = pool.acquire().unwrap();
    let file = ino(frame.fd().unwrap());
    let on_gst = to_gst(&frame).unwrap();
    let share = on_gst.share(16..32);
    drop((frame, on_gst));
    // GStreamer still holds a share: the pool's only block is not free.
    assert!(pool.acquire().is_err(), "the block was handed out again");
    drop(share);
    let again = pool.acquire().expect("back once GStreamer let it go");
    assert_eq!(ino(again.fd().unwrap()), file, "the same block");
}
