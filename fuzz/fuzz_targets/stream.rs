//! Fuzz target `stream`: a real `Receiver` reading arbitrary bytes, with
//! fds of several kinds attached, from a socketpair, until the stream
//! ends or errors.
//!
//! Input: one policy byte (bit 0: `copy_unsealed`; bit 1: a 4 KiB
//! `max_copy_bytes`), then records, each written with one `sendmsg`:
//! a spec byte (bits 0-1: how many fds to attach, 0-3; bits 2-3, 4-5 and
//! 6-7: the kind of each: 0 a memfd of 8 KiB sealed against shrinking,
//! 1 an unsealed memfd of 8 KiB, 2 a regular file of 8 KiB, 3 the read end
//! of a pipe), a little-endian u16 length, and that many bytes (fewer at
//! the end of the input). A write the socket cannot take at once ends the
//! input. Then the writing end is closed.
//!
//! A frame whose acquire-fence flag is set takes its last fd as the
//! fence; none of these kinds is a sync_file, so the receiver must refuse
//! the frame and close every fd.
//!
//! Invariants: nothing panics or hangs (no recv times out: end of file
//! always comes); every frame returned has read-only memories whose
//! region lies inside their maxsize, shows at most the file's size, and
//! maps to exactly `size` bytes when it maps; and once everything is dropped, this process has exactly the
//! fds it had before (counted in /proc/self/fd).
#![no_main]

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mediamem::ipc::{ReceivePolicy, Receiver};
use mediamem::Error;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

const FILE: u64 = 8192;

/// One fd of each kind, made once; each input sends them (the kernel
/// duplicates them into the receiver, which must close its copies).
fn sources() -> &'static [OwnedFd; 4] {
    static FDS: OnceLock<[OwnedFd; 4]> = OnceLock::new();
    FDS.get_or_init(|| {
        let sealed = rustix::fs::memfd_create(
            "fuzz-sealed",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&sealed, FILE).unwrap();
        rustix::fs::fcntl_add_seals(&sealed, SealFlags::SHRINK).unwrap();
        let unsealed = rustix::fs::memfd_create("fuzz-unsealed", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, FILE).unwrap();
        let file = tempfile_like();
        let (pipe_read, pipe_write) = std::io::pipe().unwrap();
        // Keep the write end open for the life of the process.
        std::mem::forget(pipe_write);
        [sealed, unsealed, file, OwnedFd::from(pipe_read)]
    })
}

/// An unlinked regular file of `FILE` bytes.
fn tempfile_like() -> OwnedFd {
    let path = std::env::temp_dir().join(format!("mediamem-fuzz-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(FILE).unwrap();
    OwnedFd::from(f)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Write the records of `data`; stop at the first write the socket does
/// not take whole at once.
fn write_records(sock: &UnixStream, mut data: &[u8]) {
    let kinds = sources();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    while let Some((&spec, rest)) = data.split_first() {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            _ => (0, &[][..]),
        };
        let (bytes, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        let fds: Vec<BorrowedFd<'_>> = (0..(spec & 3) as usize)
            .map(|i| kinds[(spec >> (2 + 2 * i) & 3) as usize].as_fd())
            .collect();
        if bytes.is_empty() {
            // Fds need at least one byte to travel with; nothing to send.
            continue;
        }
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        }
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) if n == bytes.len() => {}
            _ => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&policy, records)) = data.split_first() else {
        return;
    };
    sources();
    let before = open_fds();
    {
        let (peer, ours) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(
            ours,
            ReceivePolicy {
                copy_unsealed: policy & 1 != 0,
                max_copy_bytes: if policy & 2 != 0 {
                    4096
                } else {
                    ReceivePolicy::default().max_copy_bytes
                },
                require_write_seal: policy & 4 != 0,
                // guard_unsealed stays off here: its SIGBUS handler would
                // sit under the sanitizer's own; tests/hostile.rs covers it.
                ..ReceivePolicy::default()
            },
        );
        // Never needed (the peer closes), but a bug must not hang the run.
        rx.set_timeout(Some(Duration::from_secs(5))).unwrap();
        write_records(&peer, records);
        drop(peer);
        let mut frames = Vec::new();
        loop {
            match rx.recv() {
                Ok(Some(frame)) => {
                    for m in &frame.memories {
                        assert!(m.is_readonly());
                        assert!(m.offset() + m.size() <= m.maxsize());
                        // Never more visible bytes than the sender's file
                        // has (a copy's maxsize is its own block's).
                        assert!(m.size() as u64 <= FILE);
                        if let Ok(map) = m.map_readable() {
                            assert_eq!(map.len(), m.size());
                        }
                    }
                    // Keep some alive past the receiver.
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(Error::TimedOut { inside_message }) => {
                    panic!(
                        "recv timed out (inside a message: {inside_message}) with the peer closed"
                    )
                }
                Err(Error::Protocol(why)) if why.contains("out of sync") => break,
                Err(_) => {}
            }
        }
        drop(rx);
        drop(frames);
    }
    assert_eq!(open_fds(), before, "fds leaked");
});
