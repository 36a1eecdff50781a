//! IPC: frames of fd-backed memory between processes, releases back to the
//! sender's pool, and a receiver that no input can make panic, hang or leak.

use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mediamem::ipc::{
    parse_frame, parse_header, FrameInfo, ReceivePolicy, Received, Receiver, Sender, Timestamps,
    TrySend, MAGIC, MAX_PAYLOAD, VERSION,
};
use mediamem::pool::MemoryPool;
use mediamem::{
    is_dmabuf_memory, is_fd_memory, DmaBufAllocator, Error, FdAllocator, FdMemoryFlags, Memory,
    Result, ShmAllocator,
};
use proptest::prelude::*;

mod common;

use common::{ipc_header as header, sealed_memfd_named, send_raw};

fn pair(policy: ReceivePolicy) -> (Sender, Receiver) {
    let (a, b) = UnixStream::pair().unwrap();
    (Sender::new(a), Receiver::new(b, policy))
}

/// An unsealed memfd of `len` bytes.
fn plain_memfd(len: usize, fill: u8) -> OwnedFd {
    let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::io::write(&fd, &vec![fill; len]).unwrap();
    fd
}

#[test]
fn frames_round_trip_and_release_to_the_pool() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let pool = MemoryPool::new(ShmAllocator::get(), 10_000, None, 2, 2)?;
    for round in 0..10u8 {
        let a = pool.acquire_timeout(Duration::from_secs(5))?;
        a.map_writable()?.fill(round);
        let b = pool.acquire_timeout(Duration::from_secs(5))?;
        b.map_writable()?.fill(round.wrapping_add(100));
        let id = tx.send_frame(vec![a, b], &[round; 3])?;
        assert_eq!(pool.outstanding(), 2);

        let frame = rx.recv()?.expect("a frame");
        assert_eq!(frame.id, id);
        assert_eq!(frame.meta, vec![round; 3]);
        assert_eq!(frame.memories.len(), 2);
        for (m, v) in frame.memories.iter().zip([round, round.wrapping_add(100)]) {
            assert!(m.is_readonly());
            assert!(is_fd_memory(m));
            assert!(m.map_writable().is_err());
            assert_eq!(m.size(), 10_000);
            assert!(m.map_readable()?.iter().all(|&x| x == v));
        }
        drop(frame);
        assert_eq!(tx.wait_release()?, Some(id));
        assert_eq!(tx.in_flight(), 0);
        assert_eq!(pool.outstanding(), 0, "the buffers are back in the pool");
    }
    tx.send_eos()?;
    assert!(rx.recv()?.is_none());
    Ok(())
}

#[test]
fn a_share_keeps_the_frame_until_it_goes() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let m = ShmAllocator::get().alloc(100, None)?;
    let id = tx.send_frame(vec![m.share(10..60)?], b"")?;
    let frame = rx.recv()?.unwrap();
    let (offset, size) = (frame.memories[0].offset(), frame.memories[0].size());
    assert_eq!((offset, size), (10, 50), "offset and size travel");
    let keep = frame.memories[0].share(..10)?;
    drop(frame);
    assert_eq!(tx.poll_releases()?, 0, "a share is still alive");
    drop(keep);
    assert_eq!(tx.wait_release()?, Some(id));
    Ok(())
}

#[test]
fn a_fake_dmabuf_gets_the_memfd_rules_and_empty_frames_release_at_once() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    // A regular file wrapped as "dma-buf" (GStreamer's allocator accepts
    // any fd, and so does mediamem's) travels as kind dma-buf, but it is
    // not one: its owner could truncate it, so it is refused.
    let f = common::temp_file(&[9u8; 64]);
    let d = DmaBufAllocator::new().alloc(OwnedFd::from(f), 64)?;
    let id = tx.send_frame(vec![d], b"dmabuf")?;
    assert!(
        matches!(rx.recv(), Err(Error::Refused(ref why)) if why.contains("not a dma-buf") || why.contains("not one"))
    );
    assert_eq!(tx.wait_release()?, Some(id));
    // A sealed memfd announced as dma-buf is accepted, as the fd memory it is.
    let shm = ShmAllocator::get().alloc(64, None)?;
    shm.map_writable()?.fill(9);
    let d = DmaBufAllocator::new().alloc(shm.try_clone_fd()?, shm.maxsize())?;
    tx.send_frame(vec![d], b"dmabuf")?;
    let frame = rx.recv()?.unwrap();
    assert!(!is_dmabuf_memory(&frame.memories[0]));
    assert!(is_fd_memory(&frame.memories[0]));
    assert_eq!(frame.memories[0].map_readable()?[0], 9);
    let id = frame.id;
    drop(frame);
    assert_eq!(tx.wait_release()?, Some(id));
    // An empty frame holds nothing: it is released as it arrives.
    let empty = tx.send_frame(Vec::<Memory>::new(), b"no memories")?;
    let frame = rx.recv()?.unwrap();
    assert!(frame.memories.is_empty());
    assert_eq!(frame.meta, b"no memories");
    assert_eq!(tx.wait_release()?, Some(empty));
    Ok(())
}

#[test]
fn unsealed_memfds_are_refused_or_copied() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let m = FdAllocator::new().alloc(plain_memfd(4096, 3), 4096, FdMemoryFlags::empty())?;
    let id = tx.send_frame(vec![m.clone()], b"")?;
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(e, Error::Refused(ref why) if why.contains("sealed")),
        "{e}"
    );
    assert_eq!(tx.wait_release()?, Some(id), "a refused frame is released");
    // The connection is still usable.
    let ok = ShmAllocator::get().alloc(10, None)?;
    tx.send_frame(vec![ok], b"")?;
    assert!(rx.recv()?.is_some());

    let (mut tx, mut rx) = pair(ReceivePolicy {
        copy_unsealed: true,
        ..ReceivePolicy::default()
    });
    let id = tx.send_frame(vec![m.share(100..200)?], b"")?;
    let frame = rx.recv()?.unwrap();
    assert_eq!(
        tx.wait_release()?,
        Some(id),
        "a copy releases the sender's buffer at once"
    );
    let got = &frame.memories[0];
    assert!(got.is_readonly());
    assert_eq!(got.size(), 100);
    assert!(got.map_readable()?.iter().all(|&b| b == 3));
    Ok(())
}

#[test]
fn non_fd_memory_cannot_be_sent() {
    let (mut tx, _rx) = pair(ReceivePolicy::default());
    let e = tx
        .send_frame(vec![Memory::with_size(8).unwrap()], b"")
        .unwrap_err();
    assert!(matches!(e, Error::WrongKind { .. }), "{e}");
    assert_eq!(tx.in_flight(), 0);
}

// ---------------------------------------------------------------------------
// Hostile peers: hand-made messages.
// ---------------------------------------------------------------------------

fn frame_payload(id: u64, descs: &[(u8, u64, u64, u64)], meta: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&(descs.len() as u32).to_le_bytes());
    p.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    for &(kind, offset, size, maxsize) in descs {
        p.extend_from_slice(&[kind, 0, 0, 0]);
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&maxsize.to_le_bytes());
    }
    p.extend_from_slice(meta);
    p
}

fn sealed_memfd(len: usize) -> OwnedFd {
    sealed_memfd_named("sealed", len)
}

#[test]
fn a_region_beyond_the_received_file_is_refused_and_its_fd_closed() {
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let name = format!("beyond-{}", std::process::id());
    let fd = sealed_memfd_named(&name, 4096);
    let p = frame_payload(7, &[(0, 0, 8192, 8192)], b"");
    let mut msg = header(1, p.len() as u32, 1);
    msg.extend_from_slice(&p);
    send_raw(&peer, &msg, &[fd.as_fd()]);
    drop(fd);
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(
            e,
            Error::BeyondFile {
                requested: 8192,
                file_size: 4096,
                ..
            }
        ),
        "{e}"
    );
    // No fd of this process still points at that memfd (its name is
    // unique; counting fds would race with parallel tests).
    let still_open = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|t| t.to_string_lossy().contains(&name));
    assert!(!still_open, "the received fd was closed");
    // The refusal was released to the peer.
    let mut buf = [0u8; 24];
    use std::io::Read;
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(u64::from_le_bytes(buf[16..24].try_into().unwrap()), 7);
    let _ = peer.flush();
}

#[test]
fn fd_count_mismatch_unknown_kind_and_bad_regions() {
    let fd = sealed_memfd(4096);
    // One memory described, no fd sent.
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let p = frame_payload(1, &[(0, 0, 10, 4096)], b"");
    let mut msg = header(1, p.len() as u32, 0);
    msg.extend_from_slice(&p);
    send_raw(&peer, &msg, &[]);
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref m)) if m.contains("fds")));

    // Header says 0 fds, two arrive.
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let p = frame_payload(2, &[], b"");
    let mut msg = header(1, p.len() as u32, 0);
    msg.extend_from_slice(&p);
    send_raw(&peer, &msg, &[fd.as_fd(), fd.as_fd()]);
    assert!(matches!(rx.recv(), Err(Error::Protocol(_))));
    assert!(rx.recv().is_err(), "out of sync: refuses to go on");

    for (kind, offset, size, maxsize) in [
        (9, 0, 10, 4096),
        (0, 4000, 200, 4096),
        (0, u64::MAX, 2, 4096),
    ] {
        let (peer, ours) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(ours, ReceivePolicy::default());
        let p = frame_payload(3, &[(kind, offset, size, maxsize)], b"");
        let mut msg = header(1, p.len() as u32, 1);
        msg.extend_from_slice(&p);
        send_raw(&peer, &msg, &[fd.as_fd()]);
        assert!(
            matches!(rx.recv(), Err(Error::Protocol(_))),
            "{kind} {offset} {size}"
        );
    }
}

#[test]
fn oversized_truncated_and_foreign_messages() {
    // Over the payload limit.
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    send_raw(&peer, &header(1, MAX_PAYLOAD as u32 + 1, 0), &[]);
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref m)) if m.contains("limit")));

    // Wrong magic, wrong version.
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    peer.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref m)) if m.contains("magic")));
    // A version 1 peer, and a version 2 one (before fences): refused from
    // the first header on, both versions named.
    for theirs in [1u8, 2] {
        let (mut peer, ours) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(ours, ReceivePolicy::default());
        let mut h = header(3, 0, 0);
        h[4] = theirs;
        peer.write_all(&h).unwrap();
        let e = rx.recv().unwrap_err();
        assert!(
            matches!(e, Error::VersionMismatch { ours: 3, theirs: t } if t == u16::from(theirs)),
            "{e}"
        );
        let says = e.to_string();
        assert!(says.contains(&format!("version {theirs}")) && says.contains("version 3"));
    }

    // End of stream inside a header and inside a payload.
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    peer.write_all(&header(1, 100, 0)[..7]).unwrap();
    drop(peer);
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref m)) if m.contains("header")));
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    peer.write_all(&header(1, 100, 0)).unwrap();
    peer.write_all(&[0; 40]).unwrap();
    drop(peer);
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref m)) if m.contains("40 of 100")));

    // End of stream between messages is the end.
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    drop(peer);
    assert!(rx.recv().unwrap().is_none());
}

/// Whether an fd of this process points at the memfd called `name`.
fn memfd_open(name: &str) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|t| t.to_string_lossy().contains(name))
}

#[test]
fn a_silent_peer_times_out_instead_of_hanging() -> Result<()> {
    let timeout = Some(Duration::from_millis(50));
    // Nothing at all: a timeout between messages, and the stream still
    // works afterwards.
    let (a, b) = UnixStream::pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(a), Receiver::new(b, ReceivePolicy::default()));
    rx.set_timeout(timeout)?;
    tx.set_timeout(timeout)?;
    assert!(matches!(
        rx.recv(),
        Err(Error::TimedOut {
            inside_message: false
        })
    ));
    assert!(matches!(
        tx.wait_release(),
        Err(Error::TimedOut {
            inside_message: false
        })
    ));
    let frame = ShmAllocator::get().alloc(16, None)?;
    let id = tx.send_frame(vec![frame], b"m")?;
    let got = rx.recv()?.expect("a frame after the timeout");
    assert_eq!((got.id, got.meta.as_slice()), (id, &b"m"[..]));
    drop(got);
    assert_eq!(tx.wait_release()?, Some(id));

    // Half a header, with an fd: the timeout is inside a message, the fd
    // is closed, and the receiver refuses to read on.
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    rx.set_timeout(timeout)?;
    let name = format!("half-{}", std::process::id());
    let fd = sealed_memfd_named(&name, 4096);
    send_raw(&peer, &header(1, 48, 1)[..9], &[fd.as_fd()]);
    drop(fd);
    assert!(matches!(
        rx.recv(),
        Err(Error::TimedOut {
            inside_message: true
        })
    ));
    assert!(!memfd_open(&name), "the partial message's fd was closed");
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref m)) if m.contains("out of sync")));

    // A whole header whose payload never comes.
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    rx.set_timeout(timeout)?;
    send_raw(&peer, &header(1, 48, 0), &[]);
    assert!(matches!(
        rx.recv(),
        Err(Error::TimedOut {
            inside_message: true
        })
    ));
    assert!(rx.set_timeout(Some(Duration::ZERO)).is_err());
    Ok(())
}

#[test]
fn the_sender_rejects_unknown_releases_and_survives_a_vanished_peer() -> Result<()> {
    let (a, b) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    let mut m = header(2, 8, 0);
    m.extend_from_slice(&99u64.to_le_bytes());
    (&b).write_all(&m).unwrap();
    assert!(
        matches!(tx.wait_release(), Err(Error::Protocol(ref w)) if w.contains("unknown frame 99"))
    );
    // Shut the peer down, then close it: a child process another test
    // spawns at this moment holds a copy of every fd until it executes, so
    // the close alone may not end the connection yet.
    b.shutdown(std::net::Shutdown::Both).unwrap();
    drop(b);
    // Writing to a closed peer is an error, not SIGPIPE.
    let shm = ShmAllocator::get().alloc(8, None)?;
    assert!(tx.send_frame(vec![shm], b"").is_err());
    Ok(())
}

#[test]
fn frames_cross_a_process_boundary() -> Result<()> {
    if let Ok(fd) = std::env::var("MEDIAMEM_IPC_CHILD_FD") {
        // The child: receive, check, release, until the end of stream.
        use std::os::fd::FromRawFd;
        // SAFETY: the parent passed this inherited fd number for us to own.
        let sock = unsafe { UnixStream::from_raw_fd(fd.parse().unwrap()) };
        let mut rx = Receiver::new(sock, ReceivePolicy::default());
        let mut n = 0u8;
        while let Some(frame) = rx.recv()? {
            assert_eq!(frame.meta, [n]);
            assert!(frame.memories[0].map_readable()?.iter().all(|&b| b == n));
            n += 1;
        }
        assert_eq!(n, 20);
        return Ok(());
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    // Let the child inherit its end.
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "frames_cross_a_process_boundary", "--nocapture"])
        .env("MEDIAMEM_IPC_CHILD_FD", theirs.as_raw_fd().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    // Produce, then always reap the child, even when producing failed.
    let produced = produce_frames(ours);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    produced
}

/// Send 20 frames from a pool of two, waiting for releases as needed.
fn produce_frames(sock: UnixStream) -> Result<()> {
    let mut tx = Sender::new(sock);
    let pool = MemoryPool::new(ShmAllocator::get(), 1 << 20, None, 2, 2)?;
    for i in 0..20u8 {
        let m = loop {
            match pool.acquire() {
                Ok(m) => break m,
                Err(Error::PoolExhausted { .. }) => {
                    tx.wait_release()?.expect("the child releases");
                }
                Err(e) => return Err(e),
            }
        };
        m.map_writable()?.fill(i);
        tx.send_frame(vec![m], &[i])?;
    }
    tx.send_eos()?;
    while tx.in_flight() > 0 && tx.wait_release()?.is_some() {}
    Ok(())
}

#[test]
fn no_fd_leaks_over_many_frames() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy {
        copy_unsealed: true,
        ..ReceivePolicy::default()
    });
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 4, 4)?;
    common::assert_no_leaks(2_000, |i| {
        let m = pool.acquire().unwrap();
        if i % 3 == 0 {
            let plain = FdAllocator::new()
                .alloc(plain_memfd(64, 1), 64, FdMemoryFlags::empty())
                .unwrap();
            tx.send_frame(vec![plain], b"").unwrap();
        } else {
            tx.send_frame(vec![m], b"x").unwrap();
        }
        let f = rx.recv().unwrap().unwrap();
        drop(f);
        tx.wait_release().unwrap().unwrap();
    });
    assert_eq!(tx.in_flight(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// Slow and hostile peers of the sender and the receiver.
// ---------------------------------------------------------------------------

/// Run `f` on its own thread and return its result; fail the test if it
/// has not finished after a minute (a hang, not a slow machine: the work
/// takes milliseconds). The stuck thread is left behind.
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    match result.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r,
        Err(_) => panic!("{what} never returned: it blocks"),
    }
}

#[test]
fn a_sender_that_never_reads_releases_blocks_nothing_and_loses_nothing() -> Result<()> {
    const N: usize = 3_000;
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    tx.set_timeout(Some(Duration::from_secs(20)))?;
    rx.set_timeout(Some(Duration::from_secs(20)))?;
    let shm = ShmAllocator::get().alloc(4096, None)?;
    let (go, wait_for_go) = std::sync::mpsc::channel::<()>();
    // The sender sends everything, reads nothing until told to, then
    // expects every release exactly once (a duplicate would be a release
    // of an unknown frame).
    let sender = std::thread::spawn(move || -> Result<()> {
        let mut sent = Vec::new();
        for i in 0..N {
            sent.push(tx.send_frame(vec![shm.clone()], &(i as u64).to_le_bytes())?);
        }
        wait_for_go.recv().unwrap();
        let mut released = Vec::new();
        while released.len() < N {
            released.push(tx.wait_release()?.expect("a release"));
        }
        assert_eq!(tx.poll_releases()?, 0, "nothing more than one each");
        assert_eq!(tx.in_flight(), 0);
        released.sort();
        assert_eq!(released, sent, "every release exactly once");
        Ok(())
    });
    // Receive everything; drop half the frames here, half on another
    // thread. Nothing of this may wait for the sender.
    let rx = finishes(
        "receiving and dropping frames",
        move || -> Result<Receiver> {
            let (to_dropper, frames) = std::sync::mpsc::channel::<mediamem::ipc::Frame>();
            let dropper = std::thread::spawn(move || frames.into_iter().for_each(drop));
            for i in 0..N {
                let frame = rx.recv()?.expect("a frame");
                assert_eq!(frame.meta, (i as u64).to_le_bytes());
                if i % 2 == 0 {
                    drop(frame);
                } else {
                    to_dropper.send(frame).unwrap();
                }
            }
            drop(to_dropper);
            dropper.join().unwrap();
            Ok(rx)
        },
    )?;
    assert!(
        rx.pending_releases() > 0,
        "the socket filled up, so releases were queued"
    );
    go.send(()).unwrap();
    rx.flush()?;
    assert_eq!(rx.pending_releases(), 0);
    sender.join().unwrap()
}

#[test]
fn releases_queued_before_recv_go_out_while_it_waits() -> Result<()> {
    const N: usize = 2_000;
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    tx.set_timeout(Some(Duration::from_secs(20)))?;
    rx.set_timeout(Some(Duration::from_secs(20)))?;
    // Empty frames are released as they arrive: most of them queue up.
    let (mut tx, mut rx) = finishes("receiving frames", move || -> Result<_> {
        for _ in 0..N {
            tx.send_frame(Vec::<Memory>::new(), b"")?;
            rx.recv()?.expect("a frame");
        }
        Ok((tx, rx))
    })?;
    assert!(rx.pending_releases() > 0);
    // The receiver waits for its next frame; the sender only sends it once
    // every release arrived, which needs the waiting recv to write them.
    let producer = std::thread::spawn(move || -> Result<()> {
        while tx.in_flight() > 0 {
            tx.wait_release()?.expect("a release");
        }
        tx.send_eos()
    });
    assert!(finishes("recv", move || rx.recv())?.is_none());
    producer.join().unwrap()
}

#[test]
fn poll_releases_keeps_half_a_release_until_the_rest_comes() -> Result<()> {
    let (a, mut peer) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    tx.set_timeout(Some(Duration::from_millis(50)))?;
    let ids = [
        tx.send_frame(vec![ShmAllocator::get().alloc(8, None)?], b"")?,
        tx.send_frame(vec![ShmAllocator::get().alloc(8, None)?], b"")?,
    ];
    let mut releases = header(2, 8, 0);
    releases.extend_from_slice(&ids[0].to_le_bytes());
    releases.extend(releases.clone());
    releases[40..48].copy_from_slice(&ids[1].to_le_bytes());
    // Cut inside the first header, then inside the second payload.
    peer.write_all(&releases[..10]).unwrap();
    let (mut tx, n) = finishes("poll_releases on half a header", move || {
        let n = tx.poll_releases();
        (tx, n)
    });
    assert_eq!(n?, 0, "nothing whole yet");
    assert!(matches!(
        tx.wait_release(),
        Err(Error::TimedOut {
            inside_message: false
        })
    ));
    peer.write_all(&releases[10..44]).unwrap();
    assert_eq!(tx.poll_releases()?, 1);
    assert_eq!(tx.in_flight(), 1);
    peer.write_all(&releases[44..]).unwrap();
    assert_eq!(tx.wait_release()?, Some(ids[1]));
    assert_eq!(tx.in_flight(), 0);
    // The stream is in sync and still usable.
    tx.send_eos()?;
    drop(peer);
    assert_eq!(tx.wait_release()?, None);
    Ok(())
}

#[test]
fn a_write_to_a_peer_that_never_reads_times_out() -> Result<()> {
    let timeout = Some(Duration::from_millis(50));
    // Small messages: each goes whole or not at all, so the timeout leaves
    // the sender in sync.
    let (a, _peer) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    tx.set_timeout(timeout)?;
    let (mut tx, e) = finishes("send_eos to a full socket", move || {
        let e = loop {
            if let Err(e) = tx.send_eos() {
                break e;
            }
        };
        (tx, e)
    });
    assert!(
        matches!(
            e,
            Error::TimedOut {
                inside_message: false
            }
        ),
        "{e}"
    );
    assert!(matches!(
        tx.send_eos(),
        Err(Error::TimedOut {
            inside_message: false
        })
    ));

    // A frame larger than the socket buffer goes out in part: the sender is
    // out of sync and refuses everything after, and keeps the frame's
    // memory (the peer may hold its fd).
    let (a, _peer) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    tx.set_timeout(timeout)?;
    let big_meta = vec![7u8; MAX_PAYLOAD - 128];
    let m = ShmAllocator::get().alloc(8, None)?;
    let (mut tx, e) = finishes("send_frame to a full socket", move || {
        let e = tx.send_frame(vec![m], &big_meta);
        (tx, e)
    });
    assert!(
        matches!(
            e,
            Err(Error::TimedOut {
                inside_message: true
            })
        ),
        "{e:?}"
    );
    assert_eq!(tx.in_flight(), 1, "the cut frame is kept");
    for e in [
        tx.send_eos().unwrap_err(),
        tx.wait_release().unwrap_err(),
        tx.poll_releases().unwrap_err(),
        tx.send_frame(vec![ShmAllocator::get().alloc(8, None)?], b"")
            .unwrap_err(),
    ] {
        assert!(
            matches!(e, Error::Protocol(ref w) if w.contains("out of sync")),
            "{e}"
        );
    }
    Ok(())
}

#[test]
fn the_sender_is_out_of_sync_after_a_framing_error() -> Result<()> {
    // Each bad message, and what the first error says.
    let fd = sealed_memfd(4096);
    let mut eos = header(3, 0, 0);
    let mut bad_magic = eos.clone();
    bad_magic[0] ^= 1;
    let cases: Vec<(Vec<u8>, bool, &str)> = vec![
        (bad_magic, false, "magic"),
        (std::mem::take(&mut eos), false, "message type 3"),
        (
            [header(2, 8, 0), 1u64.to_le_bytes().to_vec()].concat(),
            true,
            "fds came",
        ),
    ];
    for (bytes, with_fd, says) in cases {
        let (a, peer) = UnixStream::pair().unwrap();
        let mut tx = Sender::new(a);
        let id = tx.send_frame(vec![ShmAllocator::get().alloc(8, None)?], b"")?;
        assert_eq!(id, 1);
        let fds = if with_fd { vec![fd.as_fd()] } else { vec![] };
        send_raw(&peer, &bytes, &fds);
        let e = tx.wait_release().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ref w) if w.contains(says)),
            "{e}"
        );
        // A valid release now would be read as garbage: refused.
        let mut release = header(2, 8, 0);
        release.extend_from_slice(&1u64.to_le_bytes());
        send_raw(&peer, &release, &[]);
        for e in [
            tx.wait_release().unwrap_err(),
            tx.poll_releases().unwrap_err(),
            tx.send_eos().unwrap_err(),
        ] {
            assert!(
                matches!(e, Error::Protocol(ref w) if w.contains("out of sync")),
                "{e}"
            );
        }
        assert_eq!(tx.in_flight(), 1);
    }
    // A release of an unknown frame is an error, but the message was whole:
    // the sender goes on.
    let (a, peer) = UnixStream::pair().unwrap();
    let mut tx = Sender::new(a);
    let id = tx.send_frame(vec![ShmAllocator::get().alloc(8, None)?], b"")?;
    for release_of in [id + 5, id] {
        let mut release = header(2, 8, 0);
        release.extend_from_slice(&release_of.to_le_bytes());
        send_raw(&peer, &release, &[]);
    }
    assert!(matches!(tx.wait_release(), Err(Error::Protocol(ref w)) if w.contains("unknown")));
    assert_eq!(tx.wait_release()?, Some(id));
    Ok(())
}

#[test]
fn a_peer_closing_with_frames_unread_is_the_end_of_the_stream() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let first = tx.send_frame(vec![ShmAllocator::get().alloc(8, None)?], b"1")?;
    tx.send_frame(vec![ShmAllocator::get().alloc(8, None)?], b"2")?;
    drop(rx.recv()?.expect("the first frame"));
    // The second frame is still unread in the receiver's socket: closing
    // it makes the kernel report ECONNRESET to the sender once the first
    // release is read.
    drop(rx);
    assert_eq!(tx.wait_release()?, Some(first));
    assert_eq!(tx.wait_release()?, None, "end of stream, not ECONNRESET");
    assert_eq!(tx.poll_releases()?, 0);
    assert_eq!(tx.in_flight(), 1);

    // The other way round: the sender closes with releases unread, the
    // receiver reads what was sent and then the end.
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    tx.send_frame(Vec::<Memory>::new(), b"a")?;
    tx.send_frame(Vec::<Memory>::new(), b"b")?;
    assert!(rx.recv()?.is_some());
    drop(tx);
    assert!(rx.recv()?.is_some());
    assert!(rx.recv()?.is_none());
    Ok(())
}

#[test]
fn copies_of_unsealed_memfds_are_bounded_per_frame() -> Result<()> {
    assert_eq!(
        ReceivePolicy::default().max_copy_bytes,
        mediamem::ipc::DEFAULT_MAX_COPY_BYTES
    );
    // A sparse memfd: claiming 1 GiB costs the sender nothing.
    let sparse = |len: u64| -> Result<Memory> {
        let fd = plain_memfd(0, 0);
        rustix::fs::ftruncate(&fd, len).unwrap();
        FdAllocator::new().alloc(fd, len as usize, FdMemoryFlags::empty())
    };
    let (mut tx, mut rx) = pair(ReceivePolicy {
        copy_unsealed: true,
        ..ReceivePolicy::default()
    });
    let id = tx.send_frame(vec![sparse(1 << 30)?], b"")?;
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { requested, limit, .. }
            if requested == 1 << 30 && limit == mediamem::ipc::DEFAULT_MAX_COPY_BYTES),
        "{e}"
    );
    assert_eq!(
        tx.wait_release()?,
        Some(id),
        "the refused frame is released"
    );

    // The bound is per frame: two memories of 3 KiB pass a 6 KiB bound
    // alone and together, three do not.
    let (mut tx, mut rx) = pair(ReceivePolicy {
        copy_unsealed: true,
        max_copy_bytes: 6 << 10,
        ..ReceivePolicy::default()
    });
    let three_k = || sparse(3 << 10);
    tx.send_frame(vec![three_k()?, three_k()?], b"")?;
    let frame = rx.recv()?.expect("within the bound");
    assert_eq!(frame.memories.len(), 2);
    tx.send_frame(vec![three_k()?, three_k()?, three_k()?], b"")?;
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { requested, limit, .. } if requested == 9 << 10 && limit == 6 << 10),
        "{e}"
    );
    // Still in sync.
    tx.send_frame(vec![three_k()?], b"next")?;
    assert_eq!(rx.recv()?.expect("the next frame").meta, b"next");
    Ok(())
}

// ---------------------------------------------------------------------------
// Structured messages: a valid message built field by field, then at most
// one field changed; every check of the decoder is reached and each change
// gives its own error.
// ---------------------------------------------------------------------------

/// Size of the sealed memfd sent for every memory.
const FILE: u64 = 8192;

#[derive(Debug, Clone, Copy)]
struct Desc {
    kind: u8,
    flags: u32,
    offset: u64,
    size: u64,
    maxsize: u64,
}

#[derive(Debug, Clone)]
struct FrameMsg {
    id: u64,
    descs: Vec<Desc>,
    meta: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Magic(u32),
    Version(u16),
    Type(u16),
    PayloadOverLimit(u32),
    /// Announce this many bytes fewer than the payload has.
    PayloadShort(usize),
    /// Announce this many bytes more (past the end of stream).
    PayloadLong(u32),
    HeaderFds(u32),
    /// Attach one more fd than the header announces (or one fewer).
    AttachedFds(bool),
    MemCount(u32),
    MetaLen(u32),
    Kind(usize, u8),
    Region(usize, u64, u64),
    MaxsizeOverIsize(usize),
    MaxsizeBeyondFile(usize, u64),
}

fn desc_strategy() -> impl Strategy<Value = Desc> {
    (1..=FILE, any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(maxsize, flags, a, b)| {
        let offset = a % (maxsize + 1);
        let size = b % (maxsize - offset + 1);
        Desc {
            kind: 0,
            flags,
            offset,
            size,
            maxsize,
        }
    })
}

fn frame_strategy() -> impl Strategy<Value = FrameMsg> {
    (
        any::<u64>(),
        prop::collection::vec(desc_strategy(), 0..4),
        prop::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(|(id, descs, meta)| FrameMsg { id, descs, meta })
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::None),
        1 => any::<u32>().prop_filter("not the magic", |m| *m != MAGIC).prop_map(Mutation::Magic),
        1 => any::<u16>().prop_filter("not v2", |v| *v != VERSION).prop_map(Mutation::Version),
        1 => any::<u16>().prop_filter("not a frame or an unregister", |t| ![1, 4, 5].contains(t)).prop_map(Mutation::Type),
        1 => (MAX_PAYLOAD as u32 + 1..=u32::MAX).prop_map(Mutation::PayloadOverLimit),
        1 => (1usize..200).prop_map(Mutation::PayloadShort),
        1 => (17u32..4096).prop_map(Mutation::PayloadLong),
        1 => (0u32..100).prop_map(Mutation::HeaderFds),
        1 => any::<bool>().prop_map(Mutation::AttachedFds),
        1 => any::<u32>().prop_map(Mutation::MemCount),
        1 => any::<u32>().prop_map(Mutation::MetaLen),
        1 => (any::<usize>(), 2u8..=255).prop_map(|(i, k)| Mutation::Kind(i, k)),
        1 => (any::<usize>(), any::<u64>(), any::<u64>()).prop_map(|(i, o, s)| Mutation::Region(i, o, s)),
        1 => any::<usize>().prop_map(Mutation::MaxsizeOverIsize),
        1 => (any::<usize>(), FILE + 1..=isize::MAX as u64)
            .prop_map(|(i, m)| Mutation::MaxsizeBeyondFile(i, m)),
    ]
}

/// What the receiver must say about a message.
#[derive(Debug, PartialEq)]
enum Expect {
    /// The frame, unchanged.
    Frame,
    /// An error whose text contains this; the stream is out of sync.
    Framing(&'static str),
    /// A protocol error whose text contains this, for the frame's content
    /// alone: the frame is released, the stream goes on (`in_sync`: whether
    /// the next message is still read right).
    Content(&'static str, bool),
    /// The import refused a maxsize beyond the file.
    BeyondFile(u64),
}

/// The wire bytes and fd count of `frame` with `mutation`, and what the
/// receiver must make of them.
fn build(frame: &FrameMsg, mutation: &Mutation) -> (Vec<u8>, usize, Expect) {
    let mut frame = frame.clone();
    let needs_desc = matches!(
        mutation,
        Mutation::Kind(..)
            | Mutation::Region(..)
            | Mutation::MaxsizeOverIsize(_)
            | Mutation::MaxsizeBeyondFile(..)
    );
    if needs_desc && frame.descs.is_empty() {
        frame.descs.push(Desc {
            kind: 0,
            flags: 0,
            offset: 0,
            size: 1,
            maxsize: FILE,
        });
    }
    let n = frame.descs.len();
    let mut expect = Expect::Frame;
    let pick = |i: usize| i % n.max(1);
    if let Mutation::Kind(i, k) = *mutation {
        frame.descs[pick(i)].kind = k;
        expect = Expect::Content("unknown kind", true);
    }
    if let Mutation::Region(i, o, s) = *mutation {
        let d = &mut frame.descs[pick(i)];
        // Make the region end past the maxsize (or overflow).
        let (o, s) = match o.checked_add(s) {
            Some(end) if end <= d.maxsize => (o, d.maxsize - o + 1 + s % 8),
            _ => (o, s),
        };
        (d.offset, d.size) = (o, s);
        expect = Expect::Content("outside its maxsize", true);
    }
    if let Mutation::MaxsizeOverIsize(i) = *mutation {
        let d = &mut frame.descs[pick(i)];
        d.maxsize = isize::MAX as u64 + 1;
        expect = Expect::Content("outside its maxsize", true);
    }
    if let Mutation::MaxsizeBeyondFile(i, m) = *mutation {
        let d = &mut frame.descs[pick(i)];
        d.maxsize = m;
        expect = Expect::BeyondFile(m);
    }

    let mut payload = Vec::new();
    payload.extend_from_slice(&frame.id.to_le_bytes());
    let mut count = n as u32;
    let mut meta_len = frame.meta.len() as u32;
    if let Mutation::MemCount(c) = *mutation {
        count = if c == n as u32 { c + 1 } else { c };
        expect = if count as usize > mediamem::ipc::MAX_MEMORIES {
            Expect::Content("memories in a frame, at most", true)
        } else {
            Expect::Content("describes", true)
        };
    }
    if let Mutation::MetaLen(m) = *mutation {
        meta_len = if m == meta_len { m + 1 } else { m };
        expect = Expect::Content("its fields say", true);
    }
    payload.extend_from_slice(&count.to_le_bytes());
    payload.extend_from_slice(&meta_len.to_le_bytes());
    for d in &frame.descs {
        payload.extend_from_slice(&[d.kind, 0, 0, 0]);
        payload.extend_from_slice(&d.flags.to_le_bytes());
        payload.extend_from_slice(&d.offset.to_le_bytes());
        payload.extend_from_slice(&d.size.to_le_bytes());
        payload.extend_from_slice(&d.maxsize.to_le_bytes());
    }
    payload.extend_from_slice(&frame.meta);

    let mut magic = MAGIC;
    let mut version = VERSION;
    let mut kind = 1u16;
    let mut payload_len = payload.len() as u32;
    let mut n_fds = n as u32;
    let mut attached = n;
    match *mutation {
        Mutation::Magic(m) => (magic, expect) = (m, Expect::Framing("magic")),
        Mutation::Version(v) => (version, expect) = (v, Expect::Framing("version")),
        Mutation::Type(t) => {
            kind = t;
            expect = Expect::Framing(if t == 2 || t == 3 {
                "must have"
            } else {
                "unknown message type"
            });
        }
        Mutation::PayloadOverLimit(l) => (payload_len, expect) = (l, Expect::Framing("limit")),
        Mutation::PayloadShort(less) => {
            let l = payload.len().saturating_sub(less);
            payload_len = l as u32;
            // The rest is read as the next message.
            expect = if l < 16 {
                Expect::Content("too short", false)
            } else {
                Expect::Content("its fields say", false)
            };
        }
        Mutation::PayloadLong(more) => {
            payload_len += more;
            expect = Expect::Framing("end of stream after");
        }
        Mutation::HeaderFds(h) => {
            n_fds = if h == n as u32 { h + 1 } else { h };
            expect = Expect::Framing(if n_fds as usize > mediamem::ipc::MAX_MEMORIES {
                "fds announced"
            } else {
                "header announces"
            });
        }
        Mutation::AttachedFds(more) => {
            attached = if more || n == 0 { n + 1 } else { n - 1 };
            expect = Expect::Framing("header announces");
        }
        _ => {}
    }
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&magic.to_le_bytes());
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&kind.to_le_bytes());
    bytes.extend_from_slice(&payload_len.to_le_bytes());
    bytes.extend_from_slice(&n_fds.to_le_bytes());
    bytes.extend_from_slice(&payload);
    (bytes, attached, expect)
}

/// Read a release from the raw peer (waiting up to 5 s), or `None`.
fn read_release(peer: &mut UnixStream) -> Option<u64> {
    use std::io::Read;
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 24];
    peer.read_exact(&mut buf).ok()?;
    assert_eq!(buf[..16], header(2, 8, 0)[..], "a release header");
    Some(u64::from_le_bytes(buf[16..].try_into().unwrap()))
}

/// Whether the raw peer has nothing to read (no release was sent).
fn nothing_to_read(peer: &UnixStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        rustix::net::recv(peer, &mut buf, rustix::net::RecvFlags::DONTWAIT),
        Err(rustix::io::Errno::AGAIN)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_500))]

    #[test]
    fn every_field_of_a_frame_is_checked(frame in frame_strategy(), mutation in mutation_strategy()) {
        let (bytes, attached, expect) = build(&frame, &mutation);
        let fd = sealed_memfd(FILE as usize);
        let fds: Vec<BorrowedFd<'_>> = (0..attached).map(|_| fd.as_fd()).collect();
        let (mut peer, ours) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(ours, ReceivePolicy::default());
        send_raw(&peer, &bytes, &fds);
        // Then an end of stream, then end of file.
        send_raw(&peer, &header(3, 0, 0), &[]);
        peer.shutdown(std::net::Shutdown::Write).unwrap();

        // The parsers alone agree with the stream.
        let head = parse_header(bytes[..16].try_into().unwrap());
        match &expect {
            Expect::Framing(_) => {}
            _ => {
                let h = head.expect("a valid header");
                let end = (16 + h.payload_len as usize).min(bytes.len());
                let parsed = parse_frame(&bytes[16..end], attached);
                prop_assert_eq!(parsed.is_ok(), matches!(expect, Expect::Frame | Expect::BeyondFile(_)));
            }
        }

        let got = rx.recv();
        match expect {
            Expect::Frame => {
                let f = got.expect("a valid frame").expect("a frame, not the end");
                prop_assert_eq!(f.id, frame.id);
                prop_assert_eq!(&f.meta, &frame.meta);
                prop_assert_eq!(f.memories.len(), frame.descs.len());
                for (m, d) in f.memories.iter().zip(&frame.descs) {
                    prop_assert_eq!(
                        (m.offset() as u64, m.size() as u64, m.maxsize() as u64),
                        (d.offset, d.size, d.maxsize)
                    );
                    prop_assert!(m.is_readonly());
                    prop_assert_eq!(m.map_readable().unwrap().len() as u64, d.size);
                }
                drop(f);
                prop_assert_eq!(read_release(&mut peer), Some(frame.id));
                prop_assert!(rx.recv().unwrap().is_none(), "then the end of stream");
            }
            Expect::Framing(says) => {
                let e = got.expect_err("a framing error");
                let ok = match &e {
                    Error::Protocol(w) => w.contains(says),
                    Error::VersionMismatch { ours: VERSION, .. } => says == "version",
                    _ => false,
                };
                prop_assert!(ok, "{:?}: expected {:?}, got {}", mutation, says, e);
                let next = rx.recv();
                let ok = matches!(next, Err(Error::Protocol(ref w)) if w.contains("out of sync"));
                prop_assert!(ok, "out of sync after {:?}: {:?}", mutation, next);
                prop_assert!(nothing_to_read(&peer), "nothing released");
            }
            Expect::Content(says, in_sync) => {
                let e = got.expect_err("a content error");
                let ok = matches!(e, Error::Protocol(ref w) if w.contains(says));
                prop_assert!(ok, "{:?}: expected {:?}, got {}", mutation, says, e);
                // Released when the payload read holds an id.
                let announced = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
                if announced >= 8 {
                    prop_assert_eq!(read_release(&mut peer), Some(frame.id), "released");
                }
                if in_sync {
                    prop_assert!(rx.recv().unwrap().is_none(), "the stream goes on");
                }
            }
            Expect::BeyondFile(maxsize) => {
                let e = got.expect_err("refused");
                let ok = matches!(e, Error::BeyondFile { requested, file_size, .. }
                    if requested == maxsize && file_size == FILE);
                prop_assert!(ok, "{}", e);
                prop_assert_eq!(read_release(&mut peer), Some(frame.id), "released");
                prop_assert!(rx.recv().unwrap().is_none(), "the stream goes on");
            }
        }
    }

    #[test]
    fn releases_and_ends_of_stream_are_checked(
        id in any::<u64>(),
        payload_len in prop_oneof![Just(None), (0u32..64).prop_map(Some)],
        fds in 0usize..3,
        eos in any::<bool>(),
    ) {
        // A valid end of stream ends the stream; a release (8 bytes and
        // no fd, or 16 bytes and a release fence's fd) is a message a
        // receiver never gets; a wrong length or fd count is a framing
        // error of the header.
        let (kind, right_len) = if eos { (3u16, 0u32) } else { (2, 8) };
        let len = payload_len.unwrap_or(right_len);
        let mut bytes = header(kind, len, fds as u32);
        bytes.extend_from_slice(&id.to_le_bytes()[..(len as usize).min(8)]);
        bytes.resize(16 + len as usize, 0);
        let fd = sealed_memfd(4096);
        let attached: Vec<BorrowedFd<'_>> = (0..fds).map(|_| fd.as_fd()).collect();
        let (peer, ours) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(ours, ReceivePolicy::default());
        send_raw(&peer, &bytes, &attached);
        let got = rx.recv();
        let fenced_release = !eos && len == 16 && fds == 1;
        if (len != right_len || fds != 0) && !fenced_release {
            let ok = matches!(got, Err(Error::Protocol(ref w)) if w.contains("must have"));
            prop_assert!(ok, "{:?}", got);
        } else if eos {
            prop_assert!(got.unwrap().is_none());
        } else {
            let ok = matches!(got, Err(Error::Protocol(ref w)) if w.contains("receiver got message type 2"));
            prop_assert!(ok, "{:?}", got);
            let ok = matches!(rx.recv(), Err(Error::Protocol(ref w)) if w.contains("out of sync"));
            prop_assert!(ok);
        }
    }
}

#[test]
fn more_fds_than_a_message_may_carry_are_truncated_and_closed() {
    // 200 fds with a header announcing 64: the receiver's control buffer
    // holds 64, the kernel truncates the rest.
    let name = format!("many-{}", std::process::id());
    let fd = sealed_memfd_named(&name, 4096);
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let fds: Vec<BorrowedFd<'_>> = (0..200).map(|_| fd.as_fd()).collect();
    let descs: Vec<_> = (0..64).map(|_| (0u8, 0u64, 1u64, 4096u64)).collect();
    let p = frame_payload(1, &descs, b"");
    let mut msg = header(1, p.len() as u32, 64);
    msg.extend_from_slice(&p);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(200))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &peer,
        &[IoSlice::new(&msg)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    drop(fds);
    drop(fd);
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ref w) if w.contains("truncated")),
        "{e}"
    );
    assert!(!memfd_open(&name), "every fd that arrived was closed");
}

// ---------------------------------------------------------------------------
// SIGPIPE and the seal check, each by a second, independent route.
// ---------------------------------------------------------------------------

/// Whether `e` is the OS error EPIPE.
fn is_epipe(e: &Error) -> bool {
    matches!(e, Error::Os { source, .. } if source.raw_os_error() == Some(libc::EPIPE))
}

/// Rust programs (and so this test binary) ignore SIGPIPE, which would hide
/// a write without `MSG_NOSIGNAL`. The child re-executes this test with
/// SIGPIPE at its default disposition (terminate), as in a C program
/// embedding the library, and writes to vanished peers from both ends.
#[test]
fn writes_to_a_vanished_peer_fail_with_sigpipe_at_its_default() {
    const TEST: &str = "writes_to_a_vanished_peer_fail_with_sigpipe_at_its_default";
    const ROLE: &str = "MEDIAMEM_IPC_SIGPIPE_CHILD";
    if std::env::var_os(ROLE).is_some() {
        // SAFETY: setting a signal's disposition to SIG_DFL installs no
        // handler; nothing in this process relies on SIGPIPE being ignored.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert_ne!(previous, libc::SIG_ERR);

        // A sender whose receiver is gone: frames and end of stream.
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut tx = Sender::new(a);
        let shm = ShmAllocator::get().alloc(64, None).unwrap();
        let e = tx.send_frame(vec![shm], b"meta").unwrap_err();
        assert!(is_epipe(&e), "{e}");
        assert_eq!(tx.in_flight(), 0);
        let e = tx.send_eos().unwrap_err();
        assert!(is_epipe(&e), "{e}");

        // A receiver whose sender is gone: dropping the frame writes its
        // release into the closed socket.
        let (a, b) = UnixStream::pair().unwrap();
        let (mut tx, mut rx) = (Sender::new(a), Receiver::new(b, ReceivePolicy::default()));
        tx.send_frame(vec![ShmAllocator::get().alloc(64, None).unwrap()], b"")
            .unwrap();
        let frame = rx.recv().unwrap().expect("a frame");
        drop(tx);
        drop(frame);
        println!("child: both writes failed with EPIPE, no signal");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        None,
        "the child was killed by a signal (SIGPIPE is {}):\n{text}",
        libc::SIGPIPE
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(
        text.contains("no signal") && text.contains("1 passed"),
        "the child ran the test:\n{text}"
    );
}

/// A memfd whose seals are `seals` (sealing allowed), named `name`.
fn memfd_with_seals(name: &str, len: usize, seals: rustix::fs::SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// The default policy refuses a memfd its peer could shrink, judged by
/// its seals alone: a hand-made frame (no `Sender`) of a memfd that allows
/// sealing but is not sealed against shrinking, even sealed against
/// growing and writing, is refused, released and closed; the same frame
/// sealed against shrinking is accepted.
#[test]
fn the_default_policy_refuses_memfds_not_sealed_against_shrinking() {
    use rustix::fs::SealFlags as S;
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let send = |peer: &UnixStream, id: u64, fd: &OwnedFd| {
        let p = frame_payload(id, &[(0, 0, 4096, 4096)], b"");
        let mut msg = header(1, p.len() as u32, 1);
        msg.extend_from_slice(&p);
        send_raw(peer, &msg, &[fd.as_fd()]);
    };
    for (id, seals) in [
        (1, S::empty()),
        (2, S::GROW),
        (3, S::GROW | S::WRITE | S::SEAL),
    ] {
        let name = format!("unsealed-{}-{id}", std::process::id());
        let fd = memfd_with_seals(&name, 4096, seals);
        send(&peer, id, &fd);
        drop(fd);
        let e = rx.recv().unwrap_err();
        assert!(
            matches!(e, Error::Refused(ref why) if why.contains("sealed against shrinking")),
            "seals {seals:?}: {e}"
        );
        assert!(!memfd_open(&name), "seals {seals:?}: the fd was closed");
        let mut release = [0u8; 24];
        use std::io::Read;
        peer.read_exact(&mut release).unwrap();
        assert_eq!(u64::from_le_bytes(release[16..].try_into().unwrap()), id);
    }
    // Sealed against shrinking: accepted, on the same connection.
    let fd = memfd_with_seals("sealed-shrink", 4096, S::SHRINK);
    send(&peer, 4, &fd);
    let frame = rx.recv().unwrap().expect("a frame");
    assert_eq!(frame.id, 4);
    assert_eq!(frame.memories[0].size(), 4096);
}

// ---------------------------------------------------------------------------
// Wire version 2: registered buffers, layouts, timestamps, try_ calls.
// ---------------------------------------------------------------------------

/// One memory of a hand-made version 2 frame: source, kind, buffer,
/// offset, size, maxsize.
type Desc2 = (u8, u8, u32, u64, u64, u64);

const S_FD: u8 = 0;
const S_REGISTER: u8 = 1;
const S_BUFFER: u8 = 2;

/// A whole version 2 frame message.
fn frame2(id: u64, descs: &[Desc2], layout: &[u8], meta: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_le_bytes());
    for _ in 0..3 {
        p.extend_from_slice(&u64::MAX.to_le_bytes());
    }
    p.extend_from_slice(&(descs.len() as u32).to_le_bytes());
    p.extend_from_slice(&(layout.len() as u32).to_le_bytes());
    p.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    let mut fds = 0;
    for &(source, kind, buffer, offset, size, maxsize) in descs {
        fds += u32::from(source != S_BUFFER);
        p.extend_from_slice(&[source, kind, 0, 0]);
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&buffer.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&maxsize.to_le_bytes());
    }
    p.extend_from_slice(layout);
    p.extend_from_slice(meta);
    let mut m = header(4, p.len() as u32, fds);
    m.extend_from_slice(&p);
    m
}

fn unregister_msg(ids: &[u32]) -> Vec<u8> {
    let mut m = header(5, 4 * ids.len() as u32, 0);
    for id in ids {
        m.extend_from_slice(&id.to_le_bytes());
    }
    m
}

/// How many of this process's fds refer to the file behind `fd`.
fn fds_on_file(fd: BorrowedFd<'_>) -> usize {
    use std::os::unix::fs::MetadataExt;
    let ino = rustix::fs::fstat(fd).unwrap().st_ino;
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
        .count()
}

#[test]
fn registered_buffers_travel_once_and_stay_mapped_until_freed() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let pool = MemoryPool::new(ShmAllocator::get(), 1 << 16, None, 2, 2)?;
    let mut addresses = std::collections::HashSet::new();
    let mut watch = None;
    for i in 0..50u8 {
        // Two frames in flight at a time: both pool buffers are used.
        let mut held = pool.acquire()?;
        held.map_mut()?[100] = i;
        let first = tx.send_frame(vec![held], b"")?;
        let mut m = pool.acquire()?;
        m.map_mut()?[100] = i;
        let pts = u64::from(i) * 40_000_000;
        let info = FrameInfo {
            timestamps: Timestamps {
                pts: Some(pts),
                ..Timestamps::default()
            },
            ..FrameInfo::default()
        };
        let id = tx.send_frame_with(vec![m], info)?;
        let f0 = rx.recv()?.expect("a frame");
        assert_eq!(f0.timestamps, Timestamps::default());
        addresses.insert(f0.memories[0].map_readable()?.as_ptr() as usize);
        drop(f0);
        assert_eq!(tx.wait_release()?, Some(first));
        let f = rx.recv()?.expect("a frame");
        assert_eq!(f.timestamps.pts, Some(pts));
        assert_eq!(f.timestamps.dts, None);
        let mem = &f.memories[0];
        assert!(mem.is_readonly() && is_fd_memory(mem));
        assert!(mem.map_writable().is_err());
        let map = mem.map_readable()?;
        assert_eq!(map[100], i);
        addresses.insert(map.as_ptr() as usize);
        drop(map);
        // A share of a received memory holds the frame too.
        let share = mem.share(10..20)?;
        drop(f);
        assert_eq!(tx.poll_releases()?, 0, "the share holds the frame");
        drop(share);
        assert_eq!(tx.wait_release()?, Some(id));
        if i == 0 {
            watch = Some(pool.acquire()?.try_clone_fd()?);
        }
    }
    assert_eq!((tx.registered(), rx.registered()), (2, 2));
    assert_eq!(addresses.len(), 2, "one mapping per buffer, kept");
    // Each pool file is open here three times: the pool's block, the
    // receiver's registered buffer and `watch`.
    let watch = watch.unwrap();
    assert_eq!(fds_on_file(watch.as_fd()), 3);
    // The pool goes: its blocks are freed, the sender unregisters them,
    // the receiver closes and unmaps them.
    drop(pool);
    assert_eq!(tx.unregister_freed()?, 2);
    assert_eq!(tx.registered(), 0);
    assert!(matches!(rx.try_recv()?, Received::Empty));
    assert_eq!(rx.registered(), 0);
    assert_eq!(fds_on_file(watch.as_fd()), 1, "only ours is left");
    Ok(())
}

#[test]
fn one_off_memories_are_unregistered_with_the_next_frame() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    for i in 0..20u8 {
        let m = ShmAllocator::get().alloc(4096, None)?;
        m.map_writable()?[0] = i;
        tx.send_frame(vec![m], b"")?;
        let f = rx.recv()?.unwrap();
        assert_eq!(f.memories[0].map_readable()?[0], i);
        drop(f);
        tx.wait_release()?;
        // The previous one-off is unregistered right after this frame.
        assert!(rx.registered() <= 2);
    }
    tx.send_eos()?;
    assert!(rx.recv()?.is_none());
    assert_eq!(rx.registered(), 0);
    // Registration off: every frame carries its fd, nothing is registered.
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    tx.set_register_buffers(false);
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 1, 1)?;
    for _ in 0..3 {
        tx.send_frame(vec![pool.acquire()?], b"")?;
        drop(rx.recv()?.unwrap());
        tx.wait_release()?;
    }
    assert_eq!((tx.registered(), rx.registered()), (0, 0));
    Ok(())
}

#[test]
fn a_frame_can_hold_several_memories_of_one_buffer_and_of_several() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let a = ShmAllocator::get().alloc(8192, None)?;
    a.map_writable()?
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let b = ShmAllocator::get().alloc(4096, None)?;
    b.map_writable()?.fill(0xbb);
    let id = tx.send_frame(vec![a.share(0..100)?, a.share(4096..5000)?, b.clone()], b"")?;
    let f = rx.recv()?.unwrap();
    assert_eq!(rx.registered(), 2);
    assert_eq!(f.memories[0].size(), 100);
    assert_eq!(f.memories[1].offset(), 4096);
    assert_eq!(f.memories[1].map_readable()?[1], 1);
    assert_eq!(f.memories[2].map_readable()?[0], 0xbb);
    // Two memories of one buffer share one rule and one mapping.
    {
        let (m0, m1) = (f.memories[0].map_readable()?, f.memories[1].map_readable()?);
        assert_eq!(m1.as_ptr() as usize - m0.as_ptr() as usize, 4096);
    }
    drop(f);
    assert_eq!(tx.wait_release()?, Some(id));
    // A second frame sends ids only.
    tx.send_frame(vec![a.clone(), b.share(1..2)?], b"")?;
    let f = rx.recv()?.unwrap();
    assert_eq!(f.memories[1].map_readable()?[0], 0xbb);
    assert_eq!(rx.registered(), 2);
    Ok(())
}

#[test]
fn a_buffer_in_use_is_not_unregistered() -> Result<()> {
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    rx.set_timeout(Some(Duration::from_secs(5)))?;
    let fd = sealed_memfd(4096);
    rustix::io::pwrite(&fd, b"hello", 0).unwrap();
    send_raw(
        &peer,
        &frame2(1, &[(S_REGISTER, 0, 7, 0, 64, 4096)], &[], b""),
        &[fd.as_fd()],
    );
    let f = rx.recv()?.unwrap();
    assert_eq!(fds_on_file(fd.as_fd()), 2);
    send_raw(&peer, &unregister_msg(&[7]), &[]);
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Registry {
                id: 7,
                problem: mediamem::RegistryProblem::InUse { live: 1 }
            }
        ),
        "{e}"
    );
    // Still registered, still mapped, the stream in sync.
    assert_eq!(rx.registered(), 1);
    assert_eq!(&f.memories[0].map_readable()?[..5], b"hello");
    drop(f);
    let mut peer = peer;
    assert_eq!(read_release(&mut peer), Some(1));
    send_raw(&peer, &unregister_msg(&[7]), &[]);
    assert!(matches!(rx.try_recv()?, Received::Empty));
    assert_eq!(rx.registered(), 0);
    assert_eq!(fds_on_file(fd.as_fd()), 1, "closed");
    Ok(())
}

#[test]
fn bad_uses_of_registered_buffers_are_refused_and_released() -> Result<()> {
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(
        ours,
        ReceivePolicy {
            max_registered: 2,
            ..ReceivePolicy::default()
        },
    );
    rx.set_timeout(Some(Duration::from_secs(5)))?;
    let fd = sealed_memfd(4096);
    use mediamem::RegistryProblem as P;
    let registry = |r: Result<Option<mediamem::ipc::Frame>>| match r {
        Err(Error::Registry { id, problem }) => Some((id, problem)),
        other => panic!("expected a registry error, got {other:?}"),
    };

    // An id never registered.
    send_raw(
        &peer,
        &frame2(10, &[(S_BUFFER, 0, 9, 0, 8, 0)], &[], b""),
        &[],
    );
    assert_eq!(registry(rx.recv()), Some((9, P::Unregistered)));
    assert_eq!(read_release(&mut peer), Some(10));

    // Registered, then a region outside it.
    send_raw(
        &peer,
        &frame2(11, &[(S_REGISTER, 0, 1, 0, 8, 4096)], &[], b""),
        &[fd.as_fd()],
    );
    drop(rx.recv()?.unwrap());
    assert_eq!(read_release(&mut peer), Some(11));
    for (offset, size) in [(4000, 200), (u64::MAX, 2), (0, 4097)] {
        send_raw(
            &peer,
            &frame2(12, &[(S_BUFFER, 0, 1, offset, size, 0)], &[], b""),
            &[],
        );
        assert_eq!(
            registry(rx.recv()),
            Some((
                1,
                P::OutsideBuffer {
                    offset,
                    size,
                    maxsize: 4096
                }
            ))
        );
        assert_eq!(read_release(&mut peer), Some(12));
    }

    // A second registration of id 1: refused, its fd closed.
    let other = sealed_memfd(4096);
    send_raw(
        &peer,
        &frame2(13, &[(S_REGISTER, 0, 1, 0, 8, 4096)], &[], b""),
        &[other.as_fd()],
    );
    assert_eq!(registry(rx.recv()), Some((1, P::Duplicate)));
    assert_eq!(read_release(&mut peer), Some(13));
    assert_eq!(fds_on_file(other.as_fd()), 1);

    // Past the policy's bound.
    send_raw(
        &peer,
        &frame2(14, &[(S_REGISTER, 0, 2, 0, 8, 4096)], &[], b""),
        &[other.as_fd()],
    );
    drop(rx.recv()?.unwrap());
    assert_eq!(read_release(&mut peer), Some(14));
    let third = sealed_memfd(4096);
    send_raw(
        &peer,
        &frame2(15, &[(S_REGISTER, 0, 3, 0, 8, 4096)], &[], b""),
        &[third.as_fd()],
    );
    assert_eq!(registry(rx.recv()), Some((3, P::TooMany { limit: 2 })));
    assert_eq!(read_release(&mut peer), Some(15));
    assert_eq!(fds_on_file(third.as_fd()), 1);

    // A registration in a frame refused for another memory is kept.
    send_raw(&peer, &unregister_msg(&[2]), &[]);
    send_raw(
        &peer,
        &frame2(
            16,
            &[(S_REGISTER, 0, 4, 0, 8, 4096), (S_BUFFER, 0, 99, 0, 8, 0)],
            &[],
            b"",
        ),
        &[third.as_fd()],
    );
    assert_eq!(registry(rx.recv()), Some((99, P::Unregistered)));
    assert_eq!(read_release(&mut peer), Some(16));
    assert_eq!(rx.registered(), 2);

    // Unregister of an unknown id, and fields that must be zero for a
    // registered buffer.
    send_raw(&peer, &unregister_msg(&[5]), &[]);
    assert_eq!(registry(rx.recv()), Some((5, P::Unregistered)));
    send_raw(
        &peer,
        &frame2(17, &[(S_BUFFER, 1, 1, 0, 8, 0)], &[], b""),
        &[],
    );
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref w)) if w.contains("must be 0")));
    assert_eq!(read_release(&mut peer), Some(17));
    send_raw(
        &peer,
        &frame2(18, &[(9, 0, 1, 0, 8, 0)], &[], b""),
        &[fd.as_fd()],
    );
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref w)) if w.contains("unknown source")));
    assert_eq!(read_release(&mut peer), Some(18));

    // The stream is still in sync: a good frame of both buffers.
    send_raw(
        &peer,
        &frame2(
            19,
            &[
                (S_BUFFER, 0, 1, 0, 8, 0),
                (S_BUFFER, 0, 4, 8, 8, 0),
                (S_FD, 0, 0, 0, 8, 4096),
            ],
            &[],
            b"ok",
        ),
        &[fd.as_fd()],
    );
    let f = rx.recv()?.unwrap();
    assert_eq!((f.memories.len(), &f.meta[..]), (3, &b"ok"[..]));
    Ok(())
}

#[test]
fn a_version_1_fd_frame_is_still_received() -> Result<()> {
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let fd = sealed_memfd(4096);
    let p = frame_payload(3, &[(0, 0, 16, 4096)], b"v1");
    let mut m = header(1, p.len() as u32, 1);
    m.extend_from_slice(&p);
    send_raw(&peer, &m, &[fd.as_fd()]);
    let f = rx.recv()?.unwrap();
    assert_eq!(
        (f.id, f.layout.is_none(), f.timestamps),
        (3, true, Timestamps::default())
    );
    drop(f);
    assert_eq!(read_release(&mut peer), Some(3));
    Ok(())
}

#[test]
fn layouts_are_checked_by_both_ends() -> Result<()> {
    use mediamem::drm::fourcc;
    use mediamem::layout::{FrameLayout, PlaneLayout};
    let nv12 = FrameLayout::packed(fourcc(*b"NV12"), 64, 48)?;
    let size = 64 * 48 * 3 / 2;
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    // The sender refuses a layout its memories cannot hold.
    let small = ShmAllocator::get().alloc(size - 1, None)?;
    let info = FrameInfo {
        layout: Some(&nv12),
        ..FrameInfo::default()
    };
    assert!(matches!(
        tx.send_frame_with(vec![small.share(..size - 1)?], info),
        Err(Error::InvalidLayout(_))
    ));
    assert_eq!(tx.in_flight(), 0);
    // A good one travels.
    let m = ShmAllocator::get().alloc(size, None)?;
    tx.send_frame_with(vec![m], info)?;
    assert_eq!(rx.recv()?.unwrap().layout, Some(nv12.clone()));

    // Hand-made layouts the receiver refuses: the frame is released.
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    rx.set_timeout(Some(Duration::from_secs(5)))?;
    let fd = sealed_memfd(8192);
    let wire = |l: &FrameLayout| {
        let mut b = Vec::new();
        b.extend_from_slice(&l.fourcc.to_le_bytes());
        b.extend_from_slice(&(l.planes().len() as u32).to_le_bytes());
        b.extend_from_slice(&l.modifier.to_le_bytes());
        b.extend_from_slice(&l.width.to_le_bytes());
        b.extend_from_slice(&l.height.to_le_bytes());
        for p in l.planes() {
            b.extend_from_slice(&p.memory.to_le_bytes());
            b.extend_from_slice(&p.stride.to_le_bytes());
            b.extend_from_slice(&p.offset.to_le_bytes());
        }
        b
    };
    let plane = |memory, offset, stride| PlaneLayout {
        memory,
        offset,
        stride,
    };
    let nv12_at = |planes| FrameLayout::new(fourcc(*b"NV12"), 0, 64, 48, planes).unwrap();
    let cases: Vec<(FrameLayout, &str)> = vec![
        (nv12_at(vec![plane(0, 0, 64), plane(0, 64 * 48, 64)]), ""),
        // Chroma past the memory's end.
        (
            nv12_at(vec![plane(0, 0, 64), plane(0, size as u64, 64)]),
            "ends at",
        ),
        // A plane whose end overflows.
        (
            nv12_at(vec![plane(0, 0, 64), plane(0, u64::MAX - 8, 64)]),
            "overflow",
        ),
        // A stride short of the width.
        (
            nv12_at(vec![plane(0, 0, 63), plane(0, 64 * 48, 64)]),
            "stride",
        ),
        // A memory the frame does not have.
        (nv12_at(vec![plane(0, 0, 64), plane(1, 0, 64)]), "memory 1"),
        // One plane for a two-plane format.
        (nv12_at(vec![plane(0, 0, 64)]), "planes"),
        // Unknown fourcc.
        (
            FrameLayout::new(fourcc(*b"ZZZZ"), 0, 64, 48, vec![plane(0, 0, 64)]).unwrap(),
            "ZZZZ",
        ),
    ];
    for (i, (layout, says)) in cases.iter().enumerate() {
        let id = 100 + i as u64;
        let descs = [(S_FD, 0, 0, 0, size as u64, 8192)];
        send_raw(
            &peer,
            &frame2(id, &descs, &wire(layout), b""),
            &[fd.as_fd()],
        );
        let got = rx.recv();
        if says.is_empty() {
            assert_eq!(got?.unwrap().layout.as_ref(), Some(layout));
        } else {
            let e = got.unwrap_err();
            assert!(
                matches!(e, Error::InvalidLayout(_) | Error::UnknownFourcc { .. })
                    && e.to_string().contains(says),
                "case {i}: {e}"
            );
        }
        assert_eq!(read_release(&mut peer), Some(id), "case {i} released");
    }
    // A layout of the wrong length is a content error: released, in sync.
    let mut bad = wire(&cases[0].0);
    bad.pop();
    send_raw(
        &peer,
        &frame2(200, &[(S_FD, 0, 0, 0, 8, 8192)], &bad, b""),
        &[fd.as_fd()],
    );
    assert!(matches!(rx.recv(), Err(Error::InvalidLayout(_))));
    assert_eq!(read_release(&mut peer), Some(200));
    assert_eq!(fds_on_file(fd.as_fd()), 1, "every received fd closed");
    Ok(())
}

#[test]
fn try_calls_never_wait_and_both_ends_can_be_polled() -> Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let readable = |fd: BorrowedFd<'_>| {
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap() == 1
    };
    assert!(!readable(rx.as_fd()));
    assert!(matches!(rx.try_recv()?, Received::Empty));
    let m = ShmAllocator::get().alloc(4096, None)?;
    let TrySend::Sent(id) = tx.try_send_frame(vec![m], FrameInfo::default())? else {
        panic!("an empty socket has room");
    };
    assert!(readable(rx.as_fd()));
    let Received::Frame(f) = rx.try_recv()? else {
        panic!("a frame is there");
    };
    drop(f);
    assert!(readable(tx.as_fd()), "the release is there");
    assert_eq!(tx.poll_releases()?, 1);
    assert_eq!(tx.in_flight(), 0);
    let _ = id;
    // Fill the socket: try_send hands the memories back, nothing cut
    // (small messages go whole or not at all; the timeout is a safety net).
    tx.set_timeout(Some(Duration::from_secs(5)))?;
    // One memory for every frame (a share each time): one fd, registered
    // once, however many frames the socket holds (fds by the thousand
    // would disturb the fd-counting tests running alongside).
    let mut sent = 0;
    let one = ShmAllocator::get().alloc(64, None)?;
    let back = loop {
        let m = one.share(..)?;
        match tx.try_send_frame(vec![m], FrameInfo::default())? {
            TrySend::Sent(_) => sent += 1,
            TrySend::WouldBlock(back) => break back,
        }
        assert!(sent < 100_000, "the socket never filled");
    };
    assert_eq!(back.len(), 1);
    assert_eq!(tx.in_flight(), sent);
    // Every frame sent arrives whole.
    for _ in 0..sent {
        assert!(matches!(rx.try_recv()?, Received::Frame(_)));
    }
    assert!(matches!(rx.try_recv()?, Received::Empty));
    drop(tx);
    // A child forked by another test may hold a copy of the socket until
    // it execs: wait for the end of file (for up to a minute).
    let mut last = rx.try_recv()?;
    for _ in 0..6000 {
        if !matches!(last, Received::Empty) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        last = rx.try_recv()?;
    }
    assert!(matches!(last, Received::End), "{last:?}");
    Ok(())
}

#[test]
fn no_leaks_over_ten_thousand_frames_good_and_refused() -> Result<()> {
    // Good frames: a pool's buffers, one-off memories and unsealed copies.
    let (mut tx, mut rx) = pair(ReceivePolicy {
        copy_unsealed: true,
        ..ReceivePolicy::default()
    });
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 4, 4)?;
    // Refused frames from a hand-made peer.
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut bad = Receiver::new(ours, ReceivePolicy::default());
    bad.set_timeout(Some(Duration::from_secs(5)))?;
    common::assert_no_leaks(10_000, |i| {
        let m: Memory = match i % 4 {
            0 => ShmAllocator::get().alloc(4096, None).unwrap(),
            1 => FdAllocator::new()
                .alloc(plain_memfd(64, 1), 64, FdMemoryFlags::empty())
                .unwrap(),
            _ => pool.acquire().unwrap().memory().clone(),
        };
        tx.send_frame(vec![m], b"").unwrap();
        drop(rx.recv().unwrap().unwrap());
        tx.wait_release().unwrap().unwrap();
        // A registration that is kept, in a frame refused for an
        // unregistered id; then its unregister.
        let fd = sealed_memfd(4096);
        let id = i as u32 + 1;
        let descs = [
            (S_REGISTER, 0, id, 0, 8, 4096),
            (S_BUFFER, 0, u32::MAX, 0, 8, 0),
        ];
        send_raw(&peer, &frame2(i as u64, &descs, &[], b""), &[fd.as_fd()]);
        assert!(matches!(bad.recv(), Err(Error::Registry { .. })));
        assert_eq!(read_release(&mut peer), Some(i as u64));
        send_raw(&peer, &unregister_msg(&[id]), &[]);
        assert!(matches!(bad.try_recv(), Ok(Received::Empty)));
        assert_eq!(bad.registered(), 0);
    });
    assert_eq!(tx.in_flight(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// One sender, several receivers.
// ---------------------------------------------------------------------------

#[test]
fn a_fanned_out_frame_comes_back_when_every_receiver_released_it() -> Result<()> {
    use mediamem::ipc::FanOut;
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 1, 1)?;
    let mut fan = FanOut::new(4);
    let mut rxs = Vec::new();
    for _ in 0..3 {
        let (a, b) = UnixStream::pair().unwrap();
        fan.add(a);
        rxs.push(Receiver::new(b, ReceivePolicy::default()));
    }
    for round in 0..20u8 {
        let mut frame = pool.acquire()?;
        frame.map_mut()?[0] = round;
        let report = fan.send_frame(&[frame.memory().clone()], FrameInfo::default())?;
        drop(frame);
        assert_eq!((report.sent.len(), report.skipped.len()), (3, 0));
        let mut frames: Vec<_> = rxs.iter_mut().map(|r| r.recv().unwrap().unwrap()).collect();
        while let Some(f) = frames.pop() {
            assert_eq!(f.memories[0].map_readable()?[0], round);
            drop(f);
            fan.poll_releases()?;
            // Back only once the last receiver released it.
            assert_eq!(pool.acquire().is_ok(), frames.is_empty(), "round {round}");
        }
    }
    Ok(())
}

#[test]
fn a_slow_receiver_is_bounded_and_a_gone_one_releases_everything() -> Result<()> {
    use mediamem::ipc::FanOut;
    let pool = MemoryPool::new(ShmAllocator::get(), 4096, None, 3, 3)?;
    let mut fan = FanOut::new(2);
    let (a, b) = UnixStream::pair().unwrap();
    let fast_id = fan.add(a);
    let mut fast = Receiver::new(b, ReceivePolicy::default());
    let (a, b) = UnixStream::pair().unwrap();
    let slow_id = fan.add(a);
    let mut slow = Receiver::new(b, ReceivePolicy::default());
    let mut slow_frames = Vec::new();
    for i in 0..10u32 {
        let frame = pool.acquire()?;
        let report = fan.send_frame(&[frame.memory().clone()], FrameInfo::default())?;
        drop(frame);
        assert!(report.sent.contains(&fast_id));
        // The slow one (never releasing) gets two frames, then none.
        assert_eq!(report.sent.contains(&slow_id), i < 2, "frame {i}");
        assert_eq!(report.skipped.contains(&slow_id), i >= 2, "frame {i}");
        if i < 2 {
            slow_frames.push(slow.recv()?.unwrap());
        }
        drop(fast.recv()?.unwrap());
        fast.flush()?;
        fan.poll_releases()?;
    }
    assert_eq!(fan.in_flight(slow_id), Some(2));
    assert_eq!(fan.skipped(slow_id), Some(8));
    assert_eq!(fan.in_flight(fast_id), Some(0));
    assert_eq!(pool.outstanding(), 2, "the slow receiver's two frames");
    // Releasing lets it back in.
    drop(slow_frames.pop());
    slow.flush()?;
    fan.poll_releases()?;
    let frame = pool.acquire()?;
    let report = fan.send_frame(&[frame.memory().clone()], FrameInfo::default())?;
    drop(frame);
    assert_eq!(report.sent.len(), 2);
    drop(fast.recv()?.unwrap());
    fast.flush()?;
    // The slow receiver goes away holding two frames (one unread): the
    // fan-out removes it and everything it held comes back.
    drop((slow, slow_frames));
    // A child forked by another test may hold a copy of the socket until
    // it execs: wait for the end of file (for up to a minute).
    let mut gone = Vec::new();
    for _ in 0..6000 {
        gone = fan.poll_releases()?.1;
        if !gone.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(gone, vec![slow_id]);
    assert_eq!(fan.clients(), vec![fast_id]);
    assert_eq!(pool.outstanding(), 0);
    Ok(())
}

#[test]
fn fds_belong_to_the_message_that_announces_them_however_reads_fall() -> Result<()> {
    let fd = sealed_memfd(4096);
    // Several messages in one write, the fds with a frame in the middle
    // (after a frame without fds, before an unregister): all read right.
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    rx.set_timeout(Some(Duration::from_secs(5)))?;
    send_raw(
        &peer,
        &frame2(1, &[(S_REGISTER, 0, 1, 0, 8, 4096)], &[], b""),
        &[fd.as_fd()],
    );
    drop(rx.recv()?.unwrap());
    assert_eq!(read_release(&mut peer), Some(1));
    // Frame 2 alone, then one write with frame 3 (and its fd), an
    // unregister and frame 4: the reads may take frame 2 and the second
    // write together.
    let mut bytes = frame2(2, &[(S_BUFFER, 0, 1, 0, 8, 0)], &[], b"a");
    bytes.extend(frame2(3, &[(S_FD, 0, 0, 0, 8, 4096)], &[], b"b"));
    bytes.extend(unregister_msg(&[1]));
    bytes.extend(frame2(4, &[], &[], b"c"));
    let split = frame2(2, &[(S_BUFFER, 0, 1, 0, 8, 0)], &[], b"a").len();
    send_raw(&peer, &bytes[..split], &[]);
    send_raw(&peer, &bytes[split..], &[fd.as_fd()]);
    let metas: Vec<Vec<u8>> = (0..3).map(|_| rx.recv().unwrap().unwrap().meta).collect();
    assert_eq!(metas, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(rx.registered(), 0, "the unregister between them was read");

    // Fds attached to a message that announces none: a framing error,
    // and they are closed.
    let (peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    rx.set_timeout(Some(Duration::from_millis(200)))?;
    let stray = sealed_memfd(4096);
    send_raw(&peer, &frame2(5, &[], &[], b""), &[stray.as_fd()]);
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref w)) if w.contains("no message announced")));
    assert_eq!(fds_on_file(stray.as_fd()), 1);

    Ok(())
}

/// A version-2 header of message type `kind`.
fn raw_header(kind: u16, payload_len: u32, n_fds: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&mediamem::ipc::MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&mediamem::ipc::VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h[8..12].copy_from_slice(&payload_len.to_le_bytes());
    h[12..16].copy_from_slice(&n_fds.to_le_bytes());
    h
}

#[test]
fn header_limits_are_inclusive_and_exact() {
    use mediamem::ipc::{MAX_MEMORIES, MAX_PAYLOAD, MAX_UNREGISTER};
    const FRAME: u16 = 4;
    const UNREGISTER: u16 = 5;
    let max_payload = MAX_PAYLOAD as u32;
    let max_fds = MAX_MEMORIES as u32;
    // The payload and fd limits are the largest values taken.
    assert!(parse_header(&raw_header(FRAME, max_payload, max_fds)).is_ok());
    assert!(parse_header(&raw_header(FRAME, max_payload + 1, 0)).is_err());
    assert!(parse_header(&raw_header(FRAME, 64, max_fds + 1)).is_err());
    // An unregister: 1 to MAX_UNREGISTER ids of 4 bytes, no fds.
    let ids = |n: usize| (4 * n) as u32;
    assert!(parse_header(&raw_header(UNREGISTER, ids(1), 0)).is_ok());
    assert!(parse_header(&raw_header(UNREGISTER, ids(MAX_UNREGISTER), 0)).is_ok());
    for (len, fds) in [
        (0, 0),
        (ids(1), 1),
        (ids(1) + 2, 0),
        (ids(1) - 1, 0),
        (ids(MAX_UNREGISTER + 1), 0),
    ] {
        assert!(
            matches!(
                parse_header(&raw_header(UNREGISTER, len, fds)),
                Err(Error::Protocol(_))
            ),
            "unregister of {len} bytes with {fds} fds"
        );
    }
}

#[test]
fn a_frame_may_hold_exactly_max_memories() {
    use mediamem::ipc::MAX_MEMORIES;
    // Version 1's fd frame: id, n, meta_len, then 32-byte descriptors.
    let frame = |n: usize| {
        let mut p = Vec::new();
        p.extend_from_slice(&7u64.to_le_bytes());
        p.extend_from_slice(&(n as u32).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for _ in 0..n {
            let mut d = [0u8; 32];
            d[16..24].copy_from_slice(&16u64.to_le_bytes()); // size
            d[24..32].copy_from_slice(&16u64.to_le_bytes()); // maxsize
            p.extend_from_slice(&d);
        }
        p
    };
    let ok = parse_frame(&frame(MAX_MEMORIES), MAX_MEMORIES).unwrap();
    assert_eq!(ok.memories.len(), MAX_MEMORIES);
    assert!(parse_frame(&frame(MAX_MEMORIES + 1), MAX_MEMORIES + 1).is_err());
}

#[test]
fn a_descriptor_maxsize_may_be_isize_max_and_no_more() {
    let frame = |maxsize: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        let mut d = [0u8; 32];
        d[24..32].copy_from_slice(&maxsize.to_le_bytes());
        p.extend_from_slice(&d);
        p
    };
    assert!(parse_frame(&frame(isize::MAX as u64), 1).is_ok());
    assert!(parse_frame(&frame(isize::MAX as u64 + 1), 1).is_err());
}
