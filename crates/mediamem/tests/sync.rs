//! Explicit sync: sync_files, the fences of dma-buf memory, bounded maps,
//! and fences through the frame transport.
//!
//! The device tests need vgem (real unsignaled fences, attached and
//! signaled with vgem's ioctls), udmabuf and the system dma-heap: `cargo
//! xtask vm-test` runs them in the QEMU guest, as root, where all are
//! loaded. Elsewhere they print `SKIPPED: <test>: <reason>` and return.
//! vgem signals a fence by itself 10 s after it was attached: every wait
//! here that must time out is far shorter, and every signal comes from the
//! test (another thread) well before.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mediamem::dmabuf::set_fence_timeout;
use mediamem::heap::DmaHeapAllocator;
use mediamem::ipc::{FanOut, FrameInfo, ReceivePolicy, Receiver, Sender};
use mediamem::pool::MemoryPool;
use mediamem::sync::{FenceStatus, Vgem, VgemBuffer};
use mediamem::{
    export_sync_file, import_sync_file, Error, FenceAccess, Memory, ShmAllocator, SyncFile,
    UdmabufAllocator,
};

mod common;

use common::{ipc_header as header, send_raw};

/// A peer's memory: a memfd sealed against shrinking.
fn sealed_memfd() -> OwnedFd {
    common::sealed_memfd_named("frame", 4096)
}

const SHORT: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(8);

/// vgem, or a skip line and `None` where it is missing.
fn vgem(test: &str) -> Option<Vgem> {
    match Vgem::open() {
        Ok(v) => Some(v),
        Err(e) => {
            common::skip(test, &format!("no vgem: {e}"));
            None
        }
    }
}

fn vgem_buffer(vgem: &Vgem) -> VgemBuffer {
    vgem.alloc(64 << 10).expect("a vgem buffer")
}

/// A vgem buffer (a "GPU" whose fences the test attaches and signals), or
/// a skip line and `None` where vgem is missing.
fn gpu(test: &str) -> Option<VgemBuffer> {
    vgem(test).map(|v| vgem_buffer(&v))
}

/// Run `f` on another thread after `delay`, setting `done` first.
fn later(
    delay: Duration,
    done: &Arc<AtomicBool>,
    f: impl FnOnce() + Send + 'static,
) -> thread::JoinHandle<()> {
    let done = done.clone();
    thread::spawn(move || {
        thread::sleep(delay);
        done.store(true, Ordering::SeqCst);
        f();
    })
}

fn timed_out<T: std::fmt::Debug>(r: mediamem::Result<T>) -> String {
    match r {
        Err(Error::FenceTimedOut { what, timeout }) => {
            assert!(!what.is_empty());
            assert!(timeout <= LONG);
            what
        }
        other => panic!("expected FenceTimedOut, got {other:?}"),
    }
}

#[test]
fn fds_that_are_not_sync_files_are_refused() {
    common::assert_no_leaks(40, |_| not_sync_files());
}

fn not_sync_files() {
    // A pipe (both ends, of a child's stdin and stdout).
    let mut child = std::process::Command::new("true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let r = OwnedFd::from(child.stdout.take().unwrap());
    let w = OwnedFd::from(child.stdin.take().unwrap());
    child.wait().unwrap();
    let e = SyncFile::from_fd(r).unwrap_err();
    assert!(
        matches!(e, Error::NotSyncFile { ref reason } if reason.contains("pipe")),
        "{e}"
    );
    // A memfd (shm memory's).
    let shm = ShmAllocator::get().alloc(4096, None).unwrap();
    let e = SyncFile::from_fd(shm.try_clone_fd().unwrap()).unwrap_err();
    assert!(
        matches!(e, Error::NotSyncFile { ref reason } if reason.contains("memfd")),
        "{e}"
    );
    assert!(matches!(
        SyncFile::from_borrowed(w.as_fd()),
        Err(Error::NotSyncFile { .. })
    ));
    // -1 and a closed fd (the highest number: other tests get low ones).
    assert!(matches!(
        SyncFile::from_raw_dup(-1),
        Err(Error::NotSyncFile { .. })
    ));
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024);
    let high =
        rustix::io::fcntl_dupfd_cloexec(&w, (limit - 1).min(i32::MAX as u64) as i32).unwrap();
    let n = high.as_raw_fd();
    drop(high);
    let e = SyncFile::from_raw_dup(n).unwrap_err();
    assert!(
        matches!(e, Error::NotSyncFile { ref reason } if reason.contains("not an open file")),
        "{e}"
    );
    // An open fd that is not one, by number: the caller's stays open.
    assert!(matches!(
        SyncFile::from_raw_dup(w.as_raw_fd()),
        Err(Error::NotSyncFile { .. })
    ));
    assert!(rustix::fs::fstat(&w).is_ok());
    // Fences of memory that is not a dma-buf.
    assert!(matches!(
        export_sync_file(&shm, FenceAccess::Read),
        Err(Error::WrongKind { .. })
    ));
}

#[test]
fn vgem_fence_export_wait_signal_and_info() {
    let Some(vgem) = vgem("vgem_fence_export_wait_signal_and_info") else {
        return;
    };
    let buffer = vgem_buffer(&vgem);
    // No fence yet: signaled at once (the kernel's stub fence).
    let none = export_sync_file(buffer.memory(), FenceAccess::Write).unwrap();
    assert!(none.is_signaled().unwrap());
    none.wait(Duration::ZERO).unwrap();

    let fence = buffer.attach_fence(FenceAccess::Write).unwrap();
    let sync = export_sync_file(buffer.memory(), FenceAccess::Read).unwrap();
    assert!(!sync.is_signaled().unwrap());
    let what = timed_out(sync.wait(SHORT));
    assert!(what.contains("sync_file"), "{what}");
    let info = sync.info().unwrap();
    assert_eq!(info.status, FenceStatus::Active);
    assert!(
        info.fences.iter().any(|f| f.driver_name == "vgem"),
        "{info:?}"
    );
    assert!(
        info.fences.iter().all(|f| f.timestamp_ns.is_none()),
        "{info:?}"
    );

    let done = Arc::new(AtomicBool::new(false));
    let signaler = later(Duration::from_millis(100), &done, move || {
        fence.signal().unwrap()
    });
    sync.wait(LONG).unwrap();
    assert!(
        done.load(Ordering::SeqCst),
        "the wait returned before the signal"
    );
    signaler.join().unwrap();
    assert!(sync.is_signaled().unwrap());
    let info = sync.info().unwrap();
    assert_eq!(info.status, FenceStatus::Signaled);
    let f = info
        .fences
        .iter()
        .find(|f| f.driver_name == "vgem")
        .expect("vgem's fence");
    assert_eq!(f.status, FenceStatus::Signaled);
    assert!(f.timestamp_ns.is_some_and(|t| t > 0), "{f:?}");
}

#[test]
fn readers_fences_block_writers_only() {
    let Some(vgem) = vgem("readers_fences_block_writers_only") else {
        return;
    };
    let buffer = vgem_buffer(&vgem);
    let fence = buffer.attach_fence(FenceAccess::Read).unwrap();
    assert!(export_sync_file(buffer.memory(), FenceAccess::Read)
        .unwrap()
        .is_signaled()
        .unwrap());
    let for_writers = export_sync_file(buffer.memory(), FenceAccess::Write).unwrap();
    assert!(!for_writers.is_signaled().unwrap());
    // Maps: a read goes at once, a write waits (and times out here).
    set_fence_timeout(buffer.memory(), Some(SHORT)).unwrap();
    assert_eq!(buffer.memory().map_readable().unwrap().len(), 64 << 10);
    let what = timed_out(buffer.memory().map_writable().map(|m| m.len()));
    assert!(
        what.contains("every fence") && what.contains("writing"),
        "{what}"
    );
    fence.signal().unwrap();
    for_writers.wait(LONG).unwrap();
    buffer.memory().map_writable().unwrap()[0] = 1;
}

#[test]
fn a_map_waits_for_the_writers_fence() {
    let Some(vgem) = vgem("a_map_waits_for_the_writers_fence") else {
        return;
    };
    let buffer = vgem_buffer(&vgem);
    let mem = buffer.memory().clone();
    let fence = buffer.attach_fence(FenceAccess::Write).unwrap();
    // Bounded: the map fails, names what it waited for, maps nothing.
    set_fence_timeout(&mem, Some(SHORT)).unwrap();
    let what = timed_out(mem.map_readable().map(|m| m.len()));
    assert!(
        what.contains("writers' fences") && what.contains("dma-buf fd"),
        "{what}"
    );
    timed_out(mem.map_writable().map(|m| m.len()));
    assert_eq!(mem.lock_state(), 0, "a failed map holds no lock");
    // A share waits the same way (one block, one buffer).
    timed_out(mem.share(..16).unwrap().map_readable().map(|m| m.len()));

    // With room to wait, the map returns once the fence signals.
    set_fence_timeout(&mem, Some(LONG)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let signaler = later(Duration::from_millis(200), &done, move || {
        fence.signal().unwrap()
    });
    let map = mem.map_readable().unwrap();
    assert!(
        done.load(Ordering::SeqCst),
        "the map returned before the signal"
    );
    assert_eq!(map.len(), 64 << 10);
    drop(map);
    signaler.join().unwrap();
}

/// udmabuf and system-heap memory (a dma-buf exported by DRM, bochs, has
/// its own test: `exported_drm_dumb_buffers_have_fences_too`).
fn other_dmabufs(test: &str) -> Vec<(&'static str, Memory)> {
    let mut out = Vec::new();
    match UdmabufAllocator::get().and_then(|a| a.alloc(64 << 10, None)) {
        Ok(m) => out.push(("udmabuf", m)),
        Err(e) => common::skip(test, &format!("no udmabuf: {e}")),
    }
    match DmaHeapAllocator::new("system").and_then(|a| a.alloc(64 << 10, None)) {
        Ok(m) => out.push(("system heap", m)),
        Err(e) => common::skip(test, &format!("no system heap: {e}")),
    }
    out
}

#[test]
fn a_vgem_fence_imported_into_udmabuf_and_heap_buffers() {
    const TEST: &str = "a_vgem_fence_imported_into_udmabuf_and_heap_buffers";
    let Some(vgem) = vgem(TEST) else {
        return;
    };
    for (kind, other) in other_dmabufs(TEST) {
        let buffer = vgem_buffer(&vgem);
        let fence = buffer.attach_fence(FenceAccess::Write).unwrap();
        let sync = export_sync_file(buffer.memory(), FenceAccess::Read).unwrap();
        assert!(export_sync_file(&other, FenceAccess::Read)
            .unwrap()
            .is_signaled()
            .unwrap());
        import_sync_file(&other, &sync, FenceAccess::Write).unwrap();
        let seen = export_sync_file(&other, FenceAccess::Read).unwrap();
        assert!(!seen.is_signaled().unwrap(), "{kind}");
        assert!(
            seen.info()
                .unwrap()
                .fences
                .iter()
                .any(|f| f.driver_name == "vgem"),
            "{kind}: {:?}",
            seen.info()
        );
        set_fence_timeout(&other, Some(SHORT)).unwrap();
        timed_out(other.map_readable().map(|m| m.len()));
        // As a reader's fence, it blocks writers only.
        let readers = UdmabufAllocator::get()
            .and_then(|a| a.alloc(4096, None))
            .unwrap_or_else(|_| other.copy().unwrap());
        import_sync_file(&readers, &sync, FenceAccess::Read).unwrap();
        assert!(export_sync_file(&readers, FenceAccess::Read)
            .unwrap()
            .is_signaled()
            .unwrap());
        assert!(!export_sync_file(&readers, FenceAccess::Write)
            .unwrap()
            .is_signaled()
            .unwrap());

        fence.signal().unwrap();
        seen.wait(LONG).unwrap();
        assert!(
            export_sync_file(&other, FenceAccess::Write)
                .unwrap()
                .is_signaled()
                .unwrap(),
            "{kind}"
        );
        assert_eq!(other.map_readable().unwrap().len(), 64 << 10);
    }
}

#[test]
fn exported_drm_dumb_buffers_have_fences_too() {
    const TEST: &str = "exported_drm_dumb_buffers_have_fences_too";
    let Some(path) = mediamem::drm::find_device("bochs-drm") else {
        common::skip(TEST, "no bochs-drm card");
        return;
    };
    let Some(vgem) = vgem(TEST) else {
        return;
    };
    let dumb = mediamem::DrmDumbAllocator::new_with_device_path(path).unwrap();
    let (mem, _) = dumb.alloc(mediamem::drm::fourcc(*b"XR24"), 64, 64).unwrap();
    // DRM dumb memory itself has no dma-buf: export it first.
    assert!(matches!(
        export_sync_file(&mem, FenceAccess::Read),
        Err(Error::WrongKind { .. })
    ));
    let exported = mediamem::drm_dumb_memory_export_dmabuf(&mem).unwrap();
    let buffer = vgem_buffer(&vgem);
    let fence = buffer.attach_fence(FenceAccess::Write).unwrap();
    let sync = export_sync_file(buffer.memory(), FenceAccess::Read).unwrap();
    import_sync_file(&exported, &sync, FenceAccess::Write).unwrap();
    assert!(!export_sync_file(&exported, FenceAccess::Read)
        .unwrap()
        .is_signaled()
        .unwrap());
    fence.signal().unwrap();
    export_sync_file(&exported, FenceAccess::Read)
        .unwrap()
        .wait(LONG)
        .unwrap();
}

#[test]
fn a_merge_signals_when_both_have() {
    let Some(vgem) = vgem("a_merge_signals_when_both_have") else {
        return;
    };
    let (a, b) = (vgem_buffer(&vgem), vgem_buffer(&vgem));
    let (fa, fb) = (
        a.attach_fence(FenceAccess::Write).unwrap(),
        b.attach_fence(FenceAccess::Write).unwrap(),
    );
    let sa = export_sync_file(a.memory(), FenceAccess::Read).unwrap();
    let sb = export_sync_file(b.memory(), FenceAccess::Read).unwrap();
    let both = sa.merge(&sb, "both").unwrap();
    let info = both.info().unwrap();
    assert_eq!(info.name, "both");
    assert_eq!(info.fences.len(), 2, "{info:?}");
    assert!(!both.is_signaled().unwrap());
    fa.signal().unwrap();
    sa.wait(LONG).unwrap();
    timed_out(both.wait(SHORT));
    assert_eq!(both.info().unwrap().status, FenceStatus::Active);
    let done = Arc::new(AtomicBool::new(false));
    let signaler = later(Duration::from_millis(100), &done, move || {
        fb.signal().unwrap()
    });
    both.wait(LONG).unwrap();
    assert!(done.load(Ordering::SeqCst));
    signaler.join().unwrap();
    assert_eq!(both.info().unwrap().status, FenceStatus::Signaled);
    // A clone is the same fences.
    assert!(both.try_clone().unwrap().is_signaled().unwrap());
}

#[test]
fn fences_that_never_signal_in_time_leak_nothing() {
    let Some(vgem) = vgem("fences_that_never_signal_in_time_leak_nothing") else {
        return;
    };
    common::assert_no_leaks(20, |_| {
        let buffer = vgem_buffer(&vgem);
        let _fence = buffer.attach_fence(FenceAccess::Write).unwrap();
        let sync = export_sync_file(buffer.memory(), FenceAccess::Read).unwrap();
        timed_out(sync.wait(Duration::from_millis(1)));
        set_fence_timeout(buffer.memory(), Some(Duration::ZERO)).unwrap();
        timed_out(buffer.memory().map_readable().map(|m| m.len()));
        // A merge and a dup of an unsignaled fence go with their handles.
        let merged = sync.merge(&sync.try_clone().unwrap(), "m").unwrap();
        timed_out(merged.wait(Duration::ZERO));
        // Dropping the fence signals it: nothing waits for vgem's 10 s.
    });
}

// ---- Fences through the frame transport -------------------------------

/// A connected sender and receiver.
fn transport() -> (Sender, Receiver) {
    let (a, b) = UnixStream::pair().unwrap();
    (Sender::new(a), Receiver::new(b, ReceivePolicy::default()))
}

#[test]
fn an_acquire_fence_delays_the_receivers_read() {
    let Some(vgem) = vgem("an_acquire_fence_delays_the_receivers_read") else {
        return;
    };
    // Registered buffers (maps through the registered view) and an fd each
    // frame (maps through the memory's own backend).
    for register in [true, false] {
        let (mut tx, mut rx) = transport();
        tx.set_register_buffers(register);
        let frame = ShmAllocator::get().alloc(4096, None).unwrap();
        frame.map_writable().unwrap().fill(7);
        // The GPU's work: a vgem buffer's writer's fence.
        let gpu = vgem_buffer(&vgem);
        let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
        let acquire = export_sync_file(gpu.memory(), FenceAccess::Read).unwrap();

        // Bounded: a map fails while the fence is unsignaled.
        rx.set_fence_timeout(SHORT);
        tx.send_frame_fenced(vec![frame.clone()], FrameInfo::default(), &acquire)
            .unwrap();
        let got = rx.recv().unwrap().unwrap();
        assert!(got.has_acquire_fence());
        let what = timed_out(got.memories[0].map_readable().map(|m| m.len()));
        assert!(what.contains("acquire fence of frame"), "{what}");
        timed_out(
            got.memories[0]
                .share(..8)
                .unwrap()
                .map_readable()
                .map(|m| m.len()),
        );
        drop(got);
        assert!(tx.wait_release().unwrap().is_some());

        // The read waits until the producer signals.
        rx.set_fence_timeout(LONG);
        tx.send_frame_fenced(vec![frame.clone()], FrameInfo::default(), &acquire)
            .unwrap();
        let got = rx.recv().unwrap().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let signaler = later(Duration::from_millis(200), &done, move || {
            fence.signal().unwrap()
        });
        let bytes = got.memories[0].map_readable().unwrap();
        assert!(
            done.load(Ordering::SeqCst),
            "the read began before the signal"
        );
        assert!(bytes.iter().all(|&b| b == 7));
        drop(bytes);
        assert!(
            !got.has_acquire_fence(),
            "seen signaled: maps no longer wait"
        );
        signaler.join().unwrap();
        drop(got);
        assert!(tx.wait_release().unwrap().is_some());

        // The receiver takes the fence: maps do not wait, the caller does.
        let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
        let acquire = export_sync_file(gpu.memory(), FenceAccess::Read).unwrap();
        rx.set_fence_timeout(SHORT);
        tx.send_frame_fenced(vec![frame.clone()], FrameInfo::default(), &acquire)
            .unwrap();
        let got = rx.recv().unwrap().unwrap();
        let taken = got
            .take_acquire_fence()
            .unwrap()
            .expect("the acquire fence");
        assert!(got.take_acquire_fence().unwrap().is_none());
        assert!(!taken.is_signaled().unwrap());
        assert_eq!(got.memories[0].map_readable().unwrap()[0], 7);
        fence.signal().unwrap();
        taken.wait(LONG).unwrap();
        drop(got);
        assert!(tx.wait_release().unwrap().is_some());
        assert_eq!(tx.in_flight(), 0);
    }
}

#[test]
fn a_release_fence_delays_the_buffers_reuse() {
    let Some(vgem) = vgem("a_release_fence_delays_the_buffers_reuse") else {
        return;
    };
    let (mut tx, mut rx) = transport();
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 1, 1).unwrap();
    let id = tx.send_frame(vec![pool.acquire().unwrap()], b"").unwrap();
    let got = rx.recv().unwrap().unwrap();
    // This side's GPU still reads the frame when its memories are dropped.
    let gpu = vgem_buffer(&vgem);
    let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
    got.set_release_fence(export_sync_file(gpu.memory(), FenceAccess::Read).unwrap())
        .unwrap();
    drop(got);
    assert_eq!(tx.wait_release().unwrap(), Some(id));
    // Held for its fence: still in flight.
    assert_eq!(tx.in_flight(), 1);
    assert_eq!(tx.fenced(), 1);
    // Not handed out again while the fence is unsignaled.
    assert_eq!(tx.reclaim_fenced(), 0);
    assert!(matches!(pool.acquire(), Err(Error::PoolExhausted { .. })));
    timed_out(tx.wait_fenced(SHORT));
    assert_eq!(pool.outstanding(), 1);

    let done = Arc::new(AtomicBool::new(false));
    let signaler = later(Duration::from_millis(100), &done, move || {
        fence.signal().unwrap()
    });
    assert_eq!(tx.wait_fenced(LONG).unwrap(), 1);
    assert!(done.load(Ordering::SeqCst));
    signaler.join().unwrap();
    assert_eq!(tx.fenced(), 0);
    assert_eq!(pool.outstanding(), 0);
    let again = pool.acquire().unwrap();

    // A release fence on a frame already released is refused.
    tx.send_frame(vec![again], b"").unwrap();
    let mut got = rx.recv().unwrap().unwrap();
    got.memories.clear(); // released now
    let late = export_sync_file(gpu.memory(), FenceAccess::Read).unwrap();
    assert!(matches!(
        got.set_release_fence(late),
        Err(Error::Protocol(_))
    ));
    assert!(tx.wait_release().unwrap().is_some());
    assert_eq!(pool.outstanding(), 0);
}

/// Release every frame `rx` holds with a release fence of `gpu`'s (its
/// writer's fences, unsignaled), and write the releases out.
fn release_fenced(rx: &mut Receiver, gpu: &VgemBuffer, n: usize) {
    for _ in 0..n {
        let got = rx.recv().unwrap().unwrap();
        got.set_release_fence(export_sync_file(gpu.memory(), FenceAccess::Read).unwrap())
            .unwrap();
    }
    rx.flush().unwrap();
}

#[test]
fn frames_held_for_their_fences_count_in_flight_and_are_bounded() {
    const TEST: &str = "frames_held_for_their_fences_count_in_flight_and_are_bounded";
    let Some(gpu) = gpu(TEST) else {
        return;
    };
    let frame = ShmAllocator::get().alloc(4096, None).unwrap();

    // A fan-out receiver that returns every frame with a late fence stays
    // at its bound: it gets no more frames until a fence signals.
    let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let mut fan = FanOut::new(2);
    let client = fan.add(a);
    let mut rx = Receiver::new(b, ReceivePolicy::default());
    for _ in 0..2 {
        let report = fan
            .send_frame(std::slice::from_ref(&frame), FrameInfo::default())
            .unwrap();
        assert_eq!(report.sent, vec![client]);
    }
    release_fenced(&mut rx, &gpu, 2);
    assert_eq!(fan.poll_releases().unwrap(), (2, vec![]));
    assert_eq!(fan.in_flight(client), Some(2));
    let report = fan
        .send_frame(std::slice::from_ref(&frame), FrameInfo::default())
        .unwrap();
    assert_eq!(report.skipped, vec![client]);
    fence.signal().unwrap();
    let report = fan
        .send_frame(std::slice::from_ref(&frame), FrameInfo::default())
        .unwrap();
    assert_eq!(report.sent, vec![client]);
    assert_eq!(fan.in_flight(client), Some(1));
    drop(rx.recv().unwrap().unwrap());

    // A sender holds at most `max_fenced` such frames: past it, it reads
    // no release until a fence signals.
    let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
    let (mut tx, mut rx) = transport();
    tx.set_timeout(Some(LONG)).unwrap();
    tx.set_max_fenced(1);
    let ids: Vec<u64> = (0..2)
        .map(|_| tx.send_frame(vec![frame.clone()], b"").unwrap())
        .collect();
    release_fenced(&mut rx, &gpu, 2);
    assert_eq!(tx.poll_releases().unwrap(), 1);
    assert_eq!(tx.fenced(), 1);
    assert_eq!(tx.in_flight(), 2);
    assert_eq!(tx.try_release().unwrap(), None);
    let done = Arc::new(AtomicBool::new(false));
    let signaler = later(Duration::from_millis(100), &done, move || {
        fence.signal().unwrap()
    });
    // The first frame's fence signals: wait_release says so...
    assert_eq!(tx.wait_release().unwrap(), Some(ids[0]));
    assert!(done.load(Ordering::SeqCst));
    signaler.join().unwrap();
    // ...and the second release (the same fence, signaled now) is read.
    assert_eq!(tx.wait_release().unwrap(), Some(ids[1]));
    assert_eq!(tx.in_flight(), 0);
}

#[test]
fn a_producer_waiting_for_releases_gets_buffers_back_when_fences_signal() {
    const TEST: &str = "a_producer_waiting_for_releases_gets_buffers_back_when_fences_signal";
    let Some(gpu) = gpu(TEST) else {
        return;
    };
    let (mut tx, mut rx) = transport();
    tx.set_timeout(Some(LONG)).unwrap();
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 2, 2).unwrap();
    // The ordinary producer loop: a buffer from the pool, and when it is
    // empty, wait for a release, nothing else.
    let acquire = |tx: &mut Sender| loop {
        match pool.acquire() {
            Ok(b) => return b,
            Err(Error::PoolExhausted { .. }) => {
                assert!(tx.wait_release().unwrap().is_some());
            }
            Err(e) => panic!("{e}"),
        }
    };
    for peer_closes in [false, true] {
        let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
        for _ in 0..2 {
            let buffer = acquire(&mut tx);
            tx.send_frame(vec![buffer], b"").unwrap();
        }
        // Every frame comes back with a fence that signals later.
        release_fenced(&mut rx, &gpu, 2);
        if peer_closes {
            drop(rx);
            rx = Receiver::new(UnixStream::pair().unwrap().0, ReceivePolicy::default());
        }
        let done = Arc::new(AtomicBool::new(false));
        let signaler = later(Duration::from_millis(200), &done, move || {
            fence.signal().unwrap()
        });
        let buffer = acquire(&mut tx);
        assert!(
            done.load(Ordering::SeqCst),
            "a buffer came back before its fence signaled"
        );
        signaler.join().unwrap();
        drop(buffer);
    }
    // The peer is gone and nothing is pending.
    while tx.wait_release().unwrap().is_some() {}
    assert_eq!(tx.in_flight(), 0);
    assert_eq!(pool.outstanding(), 0);
}

#[test]
fn a_sender_dropped_with_fences_pending_keeps_the_buffers_safe() {
    const TEST: &str = "a_sender_dropped_with_fences_pending_keeps_the_buffers_safe";
    let Some(gpu) = gpu(TEST) else {
        return;
    };
    // dma-buf memories: the release fence goes into the buffer, whose next
    // writer waits for it, the sender gone or not.
    for (kind, mem) in other_dmabufs(TEST) {
        let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
        let (mut tx, mut rx) = transport();
        tx.send_frame(vec![mem.clone()], b"").unwrap();
        release_fenced(&mut rx, &gpu, 1);
        assert!(tx.wait_release().unwrap().is_some());
        assert_eq!(tx.fenced(), 1);
        drop(tx);
        let all = export_sync_file(&mem, FenceAccess::Write).unwrap();
        assert!(
            !all.is_signaled().unwrap(),
            "{kind}: no fence in the buffer"
        );
        set_fence_timeout(&mem, Some(SHORT)).unwrap();
        timed_out(mem.map_writable().map(|m| m.len()));
        assert!(mem.map_readable().is_ok(), "{kind}: readers do not wait");
        fence.signal().unwrap();
        set_fence_timeout(&mem, None).unwrap();
        mem.map_writable().unwrap()[0] = 1;
    }
    // Others: dropping the sender waits for the fence (bounded) before the
    // pool has them back.
    let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
    let (mut tx, mut rx) = transport();
    tx.set_fence_timeout(LONG);
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 1, 1).unwrap();
    tx.send_frame(vec![pool.acquire().unwrap()], b"").unwrap();
    release_fenced(&mut rx, &gpu, 1);
    assert!(tx.wait_release().unwrap().is_some());
    let done = Arc::new(AtomicBool::new(false));
    let signaler = later(Duration::from_millis(200), &done, move || {
        fence.signal().unwrap()
    });
    drop(tx);
    assert!(
        done.load(Ordering::SeqCst),
        "the buffer went back before its fence signaled"
    );
    assert_eq!(pool.outstanding(), 0);
    signaler.join().unwrap();
}

#[test]
fn fenced_releases_queued_behind_a_full_socket_go_out_whole() {
    const TEST: &str = "fenced_releases_queued_behind_a_full_socket_go_out_whole";
    let Some(gpu) = gpu(TEST) else {
        return;
    };
    let (a, b) = UnixStream::pair().unwrap();
    // The receiver's socket takes a few releases at a time: the rest queue
    // and go out in pieces, each fence's fd with its release's first byte.
    rustix::net::sockopt::set_socket_send_buffer_size(&b, 1).unwrap();
    let (mut tx, mut rx) = (Sender::new(a), Receiver::new(b, ReceivePolicy::default()));
    tx.set_timeout(Some(LONG)).unwrap();
    rx.set_timeout(Some(LONG)).unwrap();
    let frame = ShmAllocator::get().alloc(4096, None).unwrap();
    const N: usize = 200;
    let mut ids = Vec::new();
    for _ in 0..N / 20 {
        for _ in 0..20 {
            ids.push(tx.send_frame(vec![frame.clone()], b"").unwrap());
        }
        for _ in 0..20 {
            let got = rx.recv().unwrap().unwrap();
            // Signaled (vgem's buffer has no fence): the sender checks the
            // message and its fd all the same.
            got.set_release_fence(export_sync_file(gpu.memory(), FenceAccess::Read).unwrap())
                .unwrap();
        }
    }
    assert!(rx.pending_releases() > 0, "the socket never filled");
    let flusher = thread::spawn(move || {
        rx.flush().unwrap();
        rx
    });
    for &id in &ids {
        assert_eq!(tx.wait_release().unwrap(), Some(id));
    }
    let rx = flusher.join().unwrap();
    assert_eq!(rx.pending_releases(), 0);
    assert_eq!(tx.in_flight(), 0);
    assert_eq!(tx.fenced(), 0);
}

#[test]
fn copying_a_fenced_frame_waits_within_the_receivers_timeout() {
    const TEST: &str = "copying_a_fenced_frame_waits_within_the_receivers_timeout";
    let Some(gpu) = gpu(TEST) else {
        return;
    };
    let fence = gpu.attach_fence(FenceAccess::Write).unwrap();
    let acquire = export_sync_file(gpu.memory(), FenceAccess::Read).unwrap();
    let (peer, ours) = UnixStream::pair().unwrap();
    let policy = ReceivePolicy {
        copy_unsealed: true,
        ..ReceivePolicy::default()
    };
    let mut rx = Receiver::new(ours, policy);
    rx.set_fence_timeout(LONG);
    rx.set_timeout(Some(SHORT)).unwrap();
    let unsealed = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 4096).unwrap();
    send_raw(
        &peer,
        &raw_frame(5, 1, 2),
        &[unsealed.as_fd(), acquire.as_fd()],
    );
    match rx.recv() {
        Err(Error::FenceTimedOut { what, timeout }) => {
            assert_eq!(timeout, SHORT, "the receiver's timeout bounds the copy");
            assert!(what.contains("acquire fence of frame 5"), "{what}");
        }
        other => panic!("expected FenceTimedOut, got {other:?}"),
    }
    fence.signal().unwrap();
}

/// A frame message with one memory of its own fd (kind fd, 4096
/// bytes) and `flags`.
fn raw_frame(id: u64, flags: u32, n_fds: u32) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_le_bytes());
    for _ in 0..3 {
        p.extend_from_slice(&u64::MAX.to_le_bytes());
    }
    for v in [1u32, 0, 0, flags] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend_from_slice(&[0, 0, 0, 0]); // source fd, kind fd, padding
    p.extend_from_slice(&[0u8; 12]); // flags, buffer, padding
    for v in [0u64, 4096, 4096] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    let mut m = header(4, p.len() as u32, n_fds);
    m.extend_from_slice(&p);
    m
}

/// A release of frame `id` as a peer writes it: plain, or with a fence's
/// flags (the fd goes with it).
fn release_message(id: u64, fence_flags: Option<u32>) -> Vec<u8> {
    let mut m = header(
        2,
        if fence_flags.is_some() { 16 } else { 8 },
        fence_flags.is_some() as u32,
    );
    m.extend_from_slice(&id.to_le_bytes());
    if let Some(flags) = fence_flags {
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
    }
    m
}

/// The id of the plain release the raw peer reads next.
fn read_release(peer: &mut UnixStream) -> u64 {
    peer.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 24];
    peer.read_exact(&mut buf).unwrap();
    let id = u64::from_le_bytes(buf[16..].try_into().unwrap());
    assert_eq!(buf[..], release_message(id, None)[..]);
    id
}

#[test]
fn a_memory_fd_where_a_fence_belongs_is_refused() {
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let (memory, not_a_fence) = (sealed_memfd(), sealed_memfd());
    // 40 rounds: one fd leaked a round would show past the margin for
    // other tests' fds.
    common::assert_no_leaks(40, |_| {
        send_raw(
            &peer,
            &raw_frame(9, 1, 2),
            &[memory.as_fd(), not_a_fence.as_fd()],
        );
        let e = rx.recv().unwrap_err();
        assert!(
            matches!(e, Error::NotSyncFile { ref reason } if reason.contains("frame 9: the acquire fence")),
            "{e}"
        );
        // Read whole: released, and the stream goes on.
        assert_eq!(read_release(&mut peer), 9);
    });
    // The fence's fd missing, or an unknown flag: the payload is refused
    // (read whole: released).
    for (id, flags, says) in [(10, 1, "1 fences"), (11, 2, "unknown flags")] {
        send_raw(&peer, &raw_frame(id, flags, 1), &[memory.as_fd()]);
        let e = rx.recv().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ref w) if w.contains(says)),
            "{e}"
        );
        assert_eq!(read_release(&mut peer), id);
    }
    // And a good frame still comes through.
    send_raw(&peer, &raw_frame(12, 0, 1), &[memory.as_fd()]);
    let got = rx.recv().unwrap().unwrap();
    assert!(!got.has_acquire_fence());
    assert!(got.take_acquire_fence().unwrap().is_none());
}

#[test]
fn a_release_whose_fence_is_not_a_sync_file_is_refused() {
    let (a, peer) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    let id = tx
        .send_frame(vec![ShmAllocator::get().alloc(4096, None).unwrap()], b"")
        .unwrap();
    let not_a_fence = sealed_memfd();
    let fenced = release_message(id, Some(1));
    common::assert_no_leaks(40, |_| {
        send_raw(&peer, &fenced, &[not_a_fence.as_fd()]);
        let e = tx.wait_release().unwrap_err();
        assert!(
            matches!(e, Error::NotSyncFile { ref reason } if reason.contains("release fence of frame")),
            "{e}"
        );
    });
    // The frame stays held (nothing says when its buffers are free); the
    // sender is still in sync.
    assert_eq!(tx.in_flight(), 1);
    send_raw(&peer, &release_message(id, None), &[]);
    assert_eq!(tx.wait_release().unwrap(), Some(id));
    // A fenced release with bad flags: refused, still in sync.
    let id = tx
        .send_frame(vec![ShmAllocator::get().alloc(4096, None).unwrap()], b"")
        .unwrap();
    send_raw(&peer, &release_message(id, Some(3)), &[not_a_fence.as_fd()]);
    assert!(matches!(tx.wait_release(), Err(Error::Protocol(ref w)) if w.contains("flags")));
    send_raw(&peer, &release_message(id, None), &[]);
    assert_eq!(tx.wait_release().unwrap(), Some(id));
}

#[test]
fn a_fence_where_a_memory_belongs_is_refused() {
    let Some(vgem) = vgem("a_fence_where_a_memory_belongs_is_refused") else {
        return;
    };
    let buffer = vgem_buffer(&vgem);
    let fence = export_sync_file(buffer.memory(), FenceAccess::Read).unwrap();
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    common::assert_no_leaks(40, |_| {
        // As a memory, with or without an acquire fence after it.
        send_raw(&peer, &raw_frame(5, 0, 1), &[fence.as_fd()]);
        let e = rx.recv().unwrap_err();
        assert!(
            matches!(e, Error::Refused(ref w) if w.contains("sync_file")),
            "{e}"
        );
        assert_eq!(read_release(&mut peer), 5);
        send_raw(&peer, &raw_frame(6, 1, 2), &[fence.as_fd(), fence.as_fd()]);
        assert!(matches!(rx.recv(), Err(Error::Refused(_))));
        assert_eq!(read_release(&mut peer), 6);
    });
    // A good fence with a good memory passes.
    let memory = sealed_memfd();
    send_raw(&peer, &raw_frame(7, 1, 2), &[memory.as_fd(), fence.as_fd()]);
    let got = rx.recv().unwrap().unwrap();
    assert!(got.has_acquire_fence());
    assert_eq!(got.memories[0].map_readable().unwrap().len(), 4096);
}
