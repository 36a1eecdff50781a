//! IPC: frames of fd-backed memory between processes, releases back to the
//! sender's pool, and a receiver that no input can make panic, hang or leak.

use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mediamem::ipc::{
    parse_frame, parse_header, ReceivePolicy, Receiver, Sender, MAGIC, MAX_PAYLOAD,
};
use mediamem::pool::MemoryPool;
use mediamem::{
    is_dmabuf_memory, is_fd_memory, DmaBufAllocator, Error, FdAllocator, FdMemoryFlags, Memory,
    Result, ShmAllocator,
};
use proptest::prelude::*;

mod common;

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
fn dmabuf_kind_travels_and_empty_frames_release_at_once() -> Result<()> {
    let (mut tx, mut rx) = pair(ReceivePolicy::default());
    let f = common::temp_file(&[9u8; 64]);
    let d = DmaBufAllocator::new().alloc(OwnedFd::from(f), 64)?;
    tx.send_frame(vec![d], b"dmabuf")?;
    let frame = rx.recv()?.unwrap();
    assert!(is_dmabuf_memory(&frame.memories[0]));
    drop(frame);
    let empty = tx.send_frame(Vec::<Memory>::new(), b"no memories")?;
    let frame = rx.recv()?.unwrap();
    assert!(frame.memories.is_empty());
    assert_eq!(frame.meta, b"no memories");
    let mut released = [tx.wait_release()?.unwrap(), tx.wait_release()?.unwrap()];
    released.sort();
    assert!(released.contains(&empty));
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

fn header(kind: u16, payload_len: u32, n_fds: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    h.extend_from_slice(&n_fds.to_le_bytes());
    h
}

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

/// Send `bytes` with `fds` in one sendmsg.
fn send_raw(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}

fn sealed_memfd(len: usize) -> OwnedFd {
    sealed_memfd_named("sealed", len)
}

fn sealed_memfd_named(name: &str, len: usize) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK).unwrap();
    fd
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
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut rx = Receiver::new(ours, ReceivePolicy::default());
    let mut h = header(3, 0, 0);
    h[4] = 2;
    peer.write_all(&h).unwrap();
    assert!(matches!(rx.recv(), Err(Error::Protocol(ref m)) if m.contains("version")));

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), n_fds in 0usize..4) {
        if bytes.len() >= 16 {
            let _ = parse_header(bytes[..16].try_into().unwrap());
        }
        let _ = parse_frame(&bytes, n_fds);
    }

    #[test]
    fn arbitrary_streams_end_in_frames_errors_or_eof(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        valid_prefix in any::<bool>(),
    ) {
        let (mut peer, ours) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(ours, ReceivePolicy::default());
        if valid_prefix {
            // A real header so the fuzz reaches the payload parser.
            let len: usize = chunks.iter().map(Vec::len).sum();
            peer.write_all(&header(1, len as u32, 0)).unwrap();
        }
        for c in &chunks {
            peer.write_all(c).unwrap();
        }
        drop(peer);
        // EOF bounds the reads; every path ends within a few calls.
        for _ in 0..64 {
            match rx.recv() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
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
