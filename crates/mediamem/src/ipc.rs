//! Zero-copy frames between processes over a Unix stream socket.
//!
//! A [`Sender`] sends frames of fd-backed memories (fd, shm, dma-buf, or a
//! DRM dumb buffer once exported) with their offset, size, maxsize, flags
//! and kind, a frame id and caller metadata; the fds travel with
//! `SCM_RIGHTS`. A [`Receiver`] turns them into read-only [`Memory`]
//! values (kept mapped); when the last memory of a frame is gone, shares
//! included, it sends a release back, and the sender drops what it held
//! for that frame, so a [`MemoryPool`](crate::pool::MemoryPool) buffer
//! becomes reusable.
//!
//! # Wire format (version 1, little-endian)
//!
//! Every message is a 16-byte header followed by `payload_len` bytes. The
//! header and any fds go in one `sendmsg`; long payloads continue in
//! further writes and are read in a loop.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | magic | u32 | `0x5049_4d4d` (`"MMIP"`) |
//! | version | u16 | 1 |
//! | type | u16 | 1 frame, 2 release, 3 end of stream |
//! | payload_len | u32 | at most [`MAX_PAYLOAD`] |
//! | n_fds | u32 | fds sent with this header |
//!
//! A frame's payload is `id u64, n_memories u32, meta_len u32`, then
//! `n_memories` descriptors `kind u8, 3 × pad, flags u32, offset u64,
//! size u64, maxsize u64` (32 bytes), then `meta_len` bytes of caller
//! metadata. There is one fd per memory, in order. A release's payload is
//! the frame id; end of stream has none.
//!
//! # The receiver trusts nothing
//!
//! Wrong magic or version, an unknown type or memory kind, a payload over
//! the limit or of the wrong length for its type, an fd count that differs
//! from the memory count, truncated control data, a region outside its
//! maxsize, a maxsize beyond the received file, a memfd a peer could still
//! shrink (no `F_SEAL_SHRINK`; [`ReceivePolicy::copy_unsealed`] copies it
//! with `pread` instead), and more bytes to copy than
//! [`ReceivePolicy::max_copy_bytes`] are all errors that close every
//! received fd. Two kinds of error differ in what follows:
//!
//! * a frame refused for its content (its payload's fields, or the fds
//!   they describe) was read whole: it is released to the sender and the
//!   next [`Receiver::recv`] goes on;
//! * a framing error (a bad header, fds that do not match it, an end of
//!   file or a timeout inside a message, a message type the receiver never
//!   gets) leaves the stream out of sync, so the receiver refuses further
//!   reads.
//!
//! End of file between messages is the end of the stream (and so is
//! `ECONNRESET`, which is how a Unix socket reports a peer that closed
//! with some of our messages unread); inside one, an error. Writes use
//! `MSG_NOSIGNAL`: a vanished peer is an error, not a `SIGPIPE`.
//!
//! The sender checks what comes back the same way: anything but a whole
//! release message (a bad header, another type, fds) leaves it out of
//! sync, and every later call returns [`Error::Protocol`] instead of
//! writing or reading garbage; a release of a frame it does not hold is
//! an error that leaves it usable.
//!
//! # Nothing blocks for ever, nothing blocks in `Drop`
//!
//! Neither end ever blocks in the kernel: sockets are read and written with
//! `MSG_DONTWAIT`, and waits are `poll`s bounded by the end's timeout
//! ([`Receiver::set_timeout`], [`Sender::set_timeout`]; none by default).
//! A peer that stops in the middle of a message, stops reading, or never
//! sends gives [`Error::TimedOut`] instead of a hang; `inside_message`
//! says whether that end is now out of sync (the receiver inside a
//! message: its fds are closed; the sender after writing part of one).
//! The sender keeps a release read in part, so
//! [`Sender::poll_releases`] returns at once and the next call completes
//! it.
//!
//! Dropping the last memory of a received frame, on any thread, queues its
//! release in the receiver's queue and writes what the socket takes at
//! once, without blocking. What it cannot take stays queued, in order (a
//! release written in part is completed before the next): the next drop,
//! the next [`Receiver::recv`] (which also writes while it waits for
//! input, woken by drops on other threads) or [`Receiver::flush`] (which
//! waits for room, up to the timeout) writes it. None is lost while the
//! sender is there to read it and the receiver or one of its frames is
//! alive (when the last of them goes, what is still queued goes with it:
//! call [`Receiver::flush`] before dropping the receiver); when the sender
//! is gone they are dropped.
//! A sender that never reads releases thus only grows the receiver's
//! queue (24 bytes a frame), and its pool runs dry.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::dmabuf::{is_dmabuf_memory, DmaBufAllocator, DmaBufBackend};
use crate::error::{Error, Result};
use crate::fd::{fd_block_of, FdAllocator, FdBackend, FdHandle, FdMemoryFlags};
use crate::memory::{Memory, MemoryBackend, MemoryFlags, MemoryParts};
use crate::shm::ShmAllocator;

/// `"MMIP"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MMIP");
/// Protocol version.
pub const VERSION: u16 = 1;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Most memories in one frame (and fds in one message).
pub const MAX_MEMORIES: usize = 64;

const HEADER_LEN: usize = 16;
const FRAME_FIXED: usize = 16;
const DESC_LEN: usize = 32;

/// Message types.
const T_FRAME: u16 = 1;
const T_RELEASE: u16 = 2;
const T_EOS: u16 = 3;

/// Memory kinds on the wire.
const K_FD: u8 = 0;
const K_DMABUF: u8 = 1;

/// Flags a receiver keeps from the sender's (informational ones).
const KEPT_FLAGS: MemoryFlags = MemoryFlags::ZERO_PREFIXED
    .union(MemoryFlags::ZERO_PADDED)
    .union(MemoryFlags::PHYSICALLY_CONTIGUOUS)
    .union(MemoryFlags::NOT_MAPPABLE);

/// A parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub kind: u16,
    /// Payload length.
    pub payload_len: u32,
    /// Number of fds sent with the header.
    pub n_fds: u32,
}

fn header_bytes(kind: u16, payload_len: usize, n_fds: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(n_fds as u32).to_le_bytes());
    h
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parse and check a header.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<Header> {
    let magic = le_u32(h, 0);
    if magic != MAGIC {
        return Err(Error::Protocol(format!("bad magic {magic:#010x}")));
    }
    let version = le_u16(h, 4);
    if version != VERSION {
        return Err(Error::Protocol(format!(
            "unsupported protocol version {version} (this side speaks {VERSION})"
        )));
    }
    let header = Header {
        kind: le_u16(h, 6),
        payload_len: le_u32(h, 8),
        n_fds: le_u32(h, 12),
    };
    if header.payload_len as usize > MAX_PAYLOAD {
        return Err(Error::Protocol(format!(
            "payload of {} bytes is over the limit of {MAX_PAYLOAD}",
            header.payload_len
        )));
    }
    if header.n_fds as usize > MAX_MEMORIES {
        return Err(Error::Protocol(format!(
            "{} fds announced, at most {MAX_MEMORIES}",
            header.n_fds
        )));
    }
    let expected = match header.kind {
        T_FRAME => None,
        T_RELEASE => Some(8),
        T_EOS => Some(0),
        other => return Err(Error::Protocol(format!("unknown message type {other}"))),
    };
    if let Some(len) = expected {
        if header.payload_len != len || header.n_fds != 0 {
            return Err(Error::Protocol(format!(
                "message type {} must have {len} payload bytes and no fds, has {} and {}",
                header.kind, header.payload_len, header.n_fds
            )));
        }
    }
    Ok(header)
}

/// One memory as described on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryDesc {
    /// 0 fd, 1 dma-buf.
    pub kind: u8,
    /// The sender's memory flags.
    pub flags: u32,
    /// Offset of the visible bytes in the file.
    pub offset: u64,
    /// Visible bytes.
    pub size: u64,
    /// Bytes of the file the memory covers (from file offset 0).
    pub maxsize: u64,
}

/// A frame's payload, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePayload {
    /// The sender's frame id.
    pub id: u64,
    /// One per fd.
    pub memories: Vec<MemoryDesc>,
    /// Caller metadata.
    pub meta: Vec<u8>,
}

/// Parse and check a frame payload that came with `n_fds` fds.
pub fn parse_frame(p: &[u8], n_fds: usize) -> Result<FramePayload> {
    if p.len() < FRAME_FIXED {
        return Err(Error::Protocol(format!(
            "frame payload of {} bytes is too short",
            p.len()
        )));
    }
    let id = le_u64(p, 0);
    let n = le_u32(p, 8) as usize;
    let meta_len = le_u32(p, 12) as usize;
    if n > MAX_MEMORIES {
        return Err(Error::Protocol(format!(
            "{n} memories in a frame, at most {MAX_MEMORIES}"
        )));
    }
    if n != n_fds {
        return Err(Error::Protocol(format!(
            "frame {id} describes {n} memories but came with {n_fds} fds"
        )));
    }
    let want = FRAME_FIXED + n * DESC_LEN + meta_len;
    if p.len() != want {
        return Err(Error::Protocol(format!(
            "frame {id}: payload is {} bytes, its fields say {want}",
            p.len()
        )));
    }
    let mut memories = Vec::with_capacity(n);
    for i in 0..n {
        let d = &p[FRAME_FIXED + i * DESC_LEN..FRAME_FIXED + (i + 1) * DESC_LEN];
        let desc = MemoryDesc {
            kind: d[0],
            flags: le_u32(d, 4),
            offset: le_u64(d, 8),
            size: le_u64(d, 16),
            maxsize: le_u64(d, 24),
        };
        if desc.kind != K_FD && desc.kind != K_DMABUF {
            return Err(Error::Protocol(format!(
                "frame {id}: memory {i} has unknown kind {}",
                desc.kind
            )));
        }
        let end = desc.offset.checked_add(desc.size);
        if end.is_none_or(|e| e > desc.maxsize) || desc.maxsize > isize::MAX as u64 {
            return Err(Error::Protocol(format!(
                "frame {id}: memory {i} region {}+{} is outside its maxsize {}",
                desc.offset, desc.size, desc.maxsize
            )));
        }
        memories.push(desc);
    }
    Ok(FramePayload {
        id,
        memories,
        meta: p[FRAME_FIXED + n * DESC_LEN..].to_vec(),
    })
}

/// When a wait of `timeout` that starts now ends (`None`: never).
fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Wait until `sock` is ready for `events` (or has an error or hang-up to
/// report), or `wake` is readable, until `deadline`. `Ok(None)` when the
/// time ran out; otherwise the events of `sock` and whether `wake` fired.
fn wait_for(
    sock: BorrowedFd<'_>,
    events: PollFlags,
    wake: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
) -> Result<Option<(PollFlags, bool)>> {
    loop {
        let left = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(None);
                }
                Timespec::try_from(d - now).ok()
            }
            None => None,
        };
        let mut fds = [
            PollFd::from_borrowed_fd(sock, events),
            PollFd::from_borrowed_fd(wake.unwrap_or(sock), PollFlags::IN),
        ];
        let used = if wake.is_some() { 2 } else { 1 };
        match rustix::event::poll(&mut fds[..used], left.as_ref()) {
            // The time ran out (or nearly): the deadline check decides.
            Ok(0) => continue,
            Ok(_) => {
                let woken = used == 2 && !fds[1].revents().is_empty();
                return Ok(Some((fds[0].revents(), woken)));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::os("poll", e)),
        }
    }
}

/// Give `sock` a read and write timeout: the socket options bound any
/// blocking call, and the calls here, which never block in the kernel,
/// poll with the same bound.
fn set_timeouts(sock: &UnixStream, timeout: Option<Duration>) -> Result<()> {
    sock.set_read_timeout(timeout).map_err(|e| Error::Os {
        op: "setsockopt(SO_RCVTIMEO)",
        source: e,
    })?;
    sock.set_write_timeout(timeout).map_err(|e| Error::Os {
        op: "setsockopt(SO_SNDTIMEO)",
        source: e,
    })
}

/// A message read off the socket, not yet interpreted.
struct RawMessage {
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Read one message for the receiver, never blocking in the kernel: while
/// nothing is there it waits (writing pending releases as room appears) for
/// at most `timeout` at a time. `Ok(None)` at end of file between messages
/// (or `ECONNRESET`: the peer closed with some of our releases unread).
fn read_message(conn: &Conn, timeout: Option<Duration>) -> Result<Option<RawMessage>> {
    let sock = &conn.stream;
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
    while got < HEADER_LEN {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut head[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        );
        let msg = match r {
            Ok(m) => m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                conn.wait_readable(timeout, got > 0 || !fds.is_empty())?;
                continue;
            }
            Err(rustix::io::Errno::CONNRESET) if got == 0 && fds.is_empty() => return Ok(None),
            Err(e) => return Err(Error::os("recvmsg", e)),
        };
        for c in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = c {
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::Protocol(
                "control data truncated: too many fds".into(),
            ));
        }
        if msg.bytes == 0 {
            return if got == 0 && fds.is_empty() {
                Ok(None)
            } else {
                Err(Error::Protocol(
                    "end of stream inside a message header".into(),
                ))
            };
        }
        got += msg.bytes;
    }
    let header = parse_header(&head)?;
    if fds.len() != header.n_fds as usize {
        return Err(Error::Protocol(format!(
            "header announces {} fds, {} arrived",
            header.n_fds,
            fds.len()
        )));
    }
    let mut payload = vec![0u8; header.payload_len as usize];
    let mut read = 0;
    while read < payload.len() {
        // No control buffer: fds sent with payload bytes are closed by the
        // kernel (they were not announced).
        match rustix::net::recv(sock, &mut payload[read..], RecvFlags::DONTWAIT) {
            Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => {
                return Err(Error::Protocol(format!(
                    "end of stream after {read} of {} payload bytes",
                    payload.len()
                )))
            }
            Ok((n, _)) => read += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => conn.wait_readable(timeout, true)?,
            Err(e) => return Err(Error::os("recv", e)),
        }
    }
    Ok(Some(RawMessage {
        header,
        payload,
        fds,
    }))
}

/// Bytes of one release message.
const RELEASE_LEN: usize = HEADER_LEN + 8;

fn release_bytes(id: u64) -> [u8; RELEASE_LEN] {
    let mut m = [0u8; RELEASE_LEN];
    m[..HEADER_LEN].copy_from_slice(&header_bytes(T_RELEASE, 8, 0));
    m[HEADER_LEN..].copy_from_slice(&id.to_le_bytes());
    m
}

/// Sends frames and takes releases back.
pub struct Sender {
    sock: UnixStream,
    next_id: u64,
    held: HashMap<u64, Box<dyn std::any::Any + Send>>,
    timeout: Option<Duration>,
    /// The release being read: its bytes stay here across calls until it
    /// is whole.
    partial: [u8; RELEASE_LEN],
    partial_len: usize,
    /// Why the stream is out of sync: nothing more is read or written.
    broken: Option<String>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("next_id", &self.next_id)
            .field("in_flight", &self.held.len())
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Sender {
    /// A sender on a connected stream socket.
    pub fn new(sock: UnixStream) -> Self {
        Sender {
            sock,
            next_id: 1,
            held: HashMap::new(),
            timeout: None,
            partial: [0; RELEASE_LEN],
            partial_len: 0,
            broken: None,
        }
    }

    /// Bound every wait of this sender by `timeout` (`None`: wait for ever,
    /// the default): [`wait_release`](Sender::wait_release) gives up after
    /// `timeout` without a whole release, and a write
    /// ([`send_frame`](Sender::send_frame), [`send_eos`](Sender::send_eos))
    /// after `timeout` without room in the socket (a peer that stopped
    /// reading). Both are [`Error::TimedOut`]: a release read in part is
    /// kept for the next call (`inside_message: false`), but a message
    /// written in part cannot be completed (`inside_message: true`), and
    /// the sender is then out of sync.
    ///
    /// # Errors
    /// [`Error::Os`] when the socket refuses the timeout (a zero duration).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        set_timeouts(&self.sock, timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Frames sent and not yet released.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    fn check_sync(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(Error::Protocol(format!(
                "connection is out of sync after: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Record that the stream is out of sync because of `e`, and return it.
    fn out_of_sync(&mut self, e: Error) -> Error {
        self.broken = Some(e.to_string());
        e
    }

    /// Write all of `bytes`, the first write carrying `fds`, never blocking
    /// in the kernel: waits for room for at most the timeout at a time. A
    /// failure after part of the message went out leaves the sender out of
    /// sync.
    fn send_message(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        self.check_sync()?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
        let mut sent = 0;
        while sent < bytes.len() {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(Error::Protocol("too many fds for one message".into()));
            }
            let e = match rustix::net::sendmsg(
                &self.sock,
                &[IoSlice::new(&bytes[sent..])],
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(0) => Error::Protocol("the peer stopped reading".into()),
                Ok(n) => {
                    sent += n;
                    continue;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    match wait_for(
                        self.sock.as_fd(),
                        PollFlags::OUT,
                        None,
                        deadline(self.timeout),
                    ) {
                        // Room, or an error the next sendmsg reports.
                        Ok(Some(_)) => continue,
                        Ok(None) => Error::TimedOut {
                            inside_message: sent > 0,
                        },
                        Err(e) => e,
                    }
                }
                Err(e) => Error::os("sendmsg", e),
            };
            if sent > 0 {
                self.broken = Some(format!(
                    "a message was cut after {sent} of {} bytes: {e}",
                    bytes.len()
                ));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Send `memories` as one frame with `meta`; keep them until the peer
    /// releases the frame. Returns the frame id.
    ///
    /// # Errors
    /// [`Error::WrongKind`] for memory without an fd (export DRM dumb
    /// memory first), [`Error::Protocol`] for too many memories or too much
    /// metadata or a sender out of sync, [`Error::TimedOut`] when the peer
    /// left no room for the timeout (see [`set_timeout`](Sender::set_timeout)),
    /// and I/O errors (a vanished peer). When part of the frame went out
    /// (the sender is then out of sync), its memories are kept with the
    /// frames in flight, since the peer may hold their fds.
    pub fn send_frame<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        meta: &[u8],
    ) -> Result<u64> {
        self.check_sync()?;
        if memories.len() > MAX_MEMORIES {
            return Err(Error::Protocol(format!(
                "{} memories, at most {MAX_MEMORIES}",
                memories.len()
            )));
        }
        let payload_len = FRAME_FIXED + memories.len() * DESC_LEN + meta.len();
        if payload_len > MAX_PAYLOAD {
            return Err(Error::Protocol(format!(
                "frame of {payload_len} bytes is over {MAX_PAYLOAD}"
            )));
        }
        let id = self.next_id;
        let mut msg = Vec::with_capacity(HEADER_LEN + payload_len);
        msg.extend_from_slice(&header_bytes(T_FRAME, payload_len, memories.len()));
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&(memories.len() as u32).to_le_bytes());
        msg.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        let mut fds = Vec::with_capacity(memories.len());
        for m in &memories {
            let m = m.as_ref();
            let fd = m.fd().ok_or_else(|| Error::WrongKind {
                expected: "fd-backed (export DRM dumb memory to a dma-buf first)",
                found: m.allocator().mem_type().to_owned(),
            })?;
            let (size, offset, maxsize) = m.sizes();
            let kind = if is_dmabuf_memory(m) { K_DMABUF } else { K_FD };
            msg.extend_from_slice(&[kind, 0, 0, 0]);
            msg.extend_from_slice(&(m.flags() - MemoryFlags::LOCKABLE).bits().to_le_bytes());
            msg.extend_from_slice(&(offset as u64).to_le_bytes());
            msg.extend_from_slice(&(size as u64).to_le_bytes());
            msg.extend_from_slice(&(maxsize as u64).to_le_bytes());
            fds.push(fd);
        }
        msg.extend_from_slice(meta);
        let sent = self.send_message(&msg, &fds);
        drop(fds);
        if sent.is_ok() || self.broken.is_some() {
            // Sent, or cut (the fds went with the first bytes): held until
            // released, or until the sender goes.
            self.next_id += 1;
            self.held.insert(id, Box::new(memories));
        }
        sent.map(|()| id)
    }

    /// Tell the peer the stream ended.
    ///
    /// # Errors
    /// As [`send_frame`](Sender::send_frame).
    pub fn send_eos(&mut self) -> Result<()> {
        self.send_message(&header_bytes(T_EOS, 0, 0), &[])
    }

    /// Read the next release. `block`: wait for at most the timeout;
    /// otherwise `Ok(None)` as soon as nothing more is there. `Ok(None)`
    /// also when the peer closed between messages. A release that arrived
    /// in part stays buffered for the next call.
    fn take_release(&mut self, block: bool) -> Result<Option<u64>> {
        self.check_sync()?;
        let deadline = deadline(self.timeout);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
        loop {
            let want = if self.partial_len < HEADER_LEN {
                HEADER_LEN
            } else {
                RELEASE_LEN
            };
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let r = rustix::net::recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut self.partial[self.partial_len..want])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            );
            let mut fds = 0;
            for c in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = c {
                    // Counting drops (closes) them.
                    fds += received.count();
                }
            }
            let msg = match r {
                Ok(m) => m,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) if !block => return Ok(None),
                Err(rustix::io::Errno::AGAIN) => {
                    match wait_for(self.sock.as_fd(), PollFlags::IN, None, deadline)? {
                        Some(_) => continue,
                        // What arrived of a release is kept: still in sync.
                        None => {
                            return Err(Error::TimedOut {
                                inside_message: false,
                            })
                        }
                    }
                }
                // A Unix socket reports ECONNRESET once the queued data is
                // read when the peer closed with some of ours unread: the
                // end of the stream.
                Err(rustix::io::Errno::CONNRESET) if self.partial_len == 0 => return Ok(None),
                Err(rustix::io::Errno::CONNRESET) => {
                    return Err(
                        self.out_of_sync(Error::Protocol("end of stream inside a release".into()))
                    )
                }
                Err(e) => return Err(self.out_of_sync(Error::os("recvmsg", e))),
            };
            if fds > 0 || msg.flags.contains(ReturnFlags::CTRUNC) {
                return Err(self.out_of_sync(Error::Protocol(format!(
                    "{fds} fds came with a message to the sender"
                ))));
            }
            if msg.bytes == 0 {
                if self.partial_len == 0 {
                    return Ok(None);
                }
                return Err(
                    self.out_of_sync(Error::Protocol("end of stream inside a release".into()))
                );
            }
            self.partial_len += msg.bytes;
            if self.partial_len == HEADER_LEN {
                let head: &[u8; HEADER_LEN] = self.partial[..HEADER_LEN]
                    .try_into()
                    .expect("a header's bytes");
                match parse_header(head) {
                    Ok(h) if h.kind == T_RELEASE => {}
                    Ok(h) => {
                        return Err(self.out_of_sync(Error::Protocol(format!(
                            "sender got message type {}",
                            h.kind
                        ))))
                    }
                    Err(e) => return Err(self.out_of_sync(e)),
                }
            }
            if self.partial_len == RELEASE_LEN {
                self.partial_len = 0;
                let id = le_u64(&self.partial, HEADER_LEN);
                // A whole message was read: still in sync.
                if self.held.remove(&id).is_none() {
                    return Err(Error::Protocol(format!("release of unknown frame {id}")));
                }
                return Ok(Some(id));
            }
        }
    }

    /// Wait for the next release; `Ok(None)` when the peer closed.
    ///
    /// # Errors
    /// [`Error::TimedOut`] after the timeout (the sender stays usable),
    /// [`Error::Protocol`] for anything but a release of a frame in flight
    /// (after a malformed message, the sender is out of sync and every
    /// later call fails), and I/O errors.
    pub fn wait_release(&mut self) -> Result<Option<u64>> {
        self.take_release(true)
    }

    /// Handle every release already received, without waiting (half a
    /// release waits in the sender for its other half); returns how many
    /// frames were released.
    ///
    /// # Errors
    /// As [`wait_release`](Sender::wait_release), without the timeout.
    pub fn poll_releases(&mut self) -> Result<usize> {
        let mut n = 0;
        while self.take_release(false)?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// Bytes copied out of unsealed memfds per frame by default
/// ([`ReceivePolicy::max_copy_bytes`]): 64 MiB, a 4K NV12 frame's size
/// five times over.
pub const DEFAULT_MAX_COPY_BYTES: usize = 64 << 20;

/// What the receiver accepts.
#[derive(Debug, Clone, Copy)]
pub struct ReceivePolicy {
    /// Copy memfds that are not sealed against shrinking into local shm
    /// memory (with `pread`, which a shrink cannot turn into `SIGBUS`),
    /// instead of refusing them.
    pub copy_unsealed: bool,
    /// Map files that are not sealed against shrinking (regular files,
    /// unsealed memfds) zero-copy under a `SIGBUS` guard
    /// ([`FdMemoryFlags::GUARD_SIGBUS`]) instead of refusing or copying
    /// them: if the sender truncates one, its pages read as zeros and the
    /// next map fails with [`Error::Truncated`]. Takes precedence over
    /// `copy_unsealed`.
    pub guard_unsealed: bool,
    /// Also require memfds to be sealed against writes by anyone but their
    /// creator's existing mapping (`F_SEAL_FUTURE_WRITE` or
    /// `F_SEAL_WRITE`), as mediamem's shm memory is. Without it, a memfd
    /// sealed only against shrinking is accepted: its sender can still
    /// change the bytes (through its own mapping, or by punching a hole,
    /// which reads back as zeros), never take the pages away. hugetlbfs
    /// memfds always need the write seal, since a hole punched in one can
    /// leave no page to refault (`SIGBUS`).
    pub require_write_seal: bool,
    /// Most bytes [`copy_unsealed`](ReceivePolicy::copy_unsealed) copies
    /// for one frame, all its memories together
    /// ([`DEFAULT_MAX_COPY_BYTES`] by default). A sparse file costs its
    /// sender nothing whatever size it claims, the receiver a copy of that
    /// size; a frame over the bound is refused with [`Error::TooLarge`]
    /// (and released).
    pub max_copy_bytes: usize,
}

impl Default for ReceivePolicy {
    fn default() -> Self {
        ReceivePolicy {
            copy_unsealed: false,
            guard_unsealed: false,
            require_write_seal: false,
            max_copy_bytes: DEFAULT_MAX_COPY_BYTES,
        }
    }
}

/// What the receiver does with one received fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Map it zero-copy as a dma-buf.
    DmaBuf,
    /// Map it zero-copy as fd memory (sealed memfd).
    Sealed,
    /// Map it zero-copy with a SIGBUS guard.
    Guarded,
    /// Copy it with `pread`.
    Copy,
}

/// Decide how a received fd may be used: a real dma-buf (the dma-buf
/// filesystem's magic, whatever the sender called it) cannot shrink; every
/// other file gets the memfd rules, checked with `F_GET_SEALS`.
pub(crate) fn admit(
    fd: &OwnedFd,
    announced_dmabuf: bool,
    policy: &ReceivePolicy,
) -> Result<(Admission, crate::sys::FileId)> {
    use rustix::fs::SealFlags;
    let file = crate::sys::file_id(fd.as_fd()).map_err(|e| Error::BadFd {
        reason: format!("fstat/fstatfs of a received fd: {e}"),
    })?;
    if file.fs == crate::sys::FsKind::DmaBuf {
        return Ok((Admission::DmaBuf, file));
    }
    let seals = rustix::fs::fcntl_get_seals(fd).unwrap_or(SealFlags::empty());
    let write_sealed = seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE);
    let what = if announced_dmabuf {
        "was announced as a dma-buf but is not one (not on the dma-buf filesystem), and "
    } else {
        ""
    };
    let why = if !seals.contains(SealFlags::SHRINK) {
        format!("{what}is not a memfd sealed against shrinking; its owner could truncate it under our mapping (SIGBUS)")
    } else if file.fs == crate::sys::FsKind::Hugetlb && !write_sealed {
        format!("{what}is a hugetlbfs memfd without a write seal; a hole punched in it could leave no huge page to refault (SIGBUS)")
    } else if policy.require_write_seal && !write_sealed {
        format!("{what}is a memfd without F_SEAL_FUTURE_WRITE or F_SEAL_WRITE, which the receive policy requires")
    } else {
        return Ok((Admission::Sealed, file));
    };
    if policy.guard_unsealed {
        Ok((Admission::Guarded, file))
    } else if policy.copy_unsealed {
        Ok((Admission::Copy, file))
    } else {
        Err(Error::Refused(why))
    }
}

/// A received frame.
#[derive(Debug)]
pub struct Frame {
    /// The sender's frame id.
    pub id: u64,
    /// Read-only memories; the frame is released when all are gone.
    pub memories: Vec<Memory>,
    /// Caller metadata.
    pub meta: Vec<u8>,
}

/// Releases waiting to be written, as bytes: a release cut by a short write
/// is completed before anything else goes out.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    written: usize,
    /// Why the peer can no longer be written to; releases are then dropped.
    gone: Option<rustix::io::Errno>,
}

impl Outbox {
    /// Write what is queued without blocking; whether some remains.
    fn write_nonblocking(&mut self, sock: &UnixStream) -> bool {
        while self.written < self.bytes.len() {
            match rustix::net::send(
                sock,
                &self.bytes[self.written..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(0) => return true,
                Ok(n) => self.written += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    // Keep the unwritten tail only, so a queue that never
                    // empties does not keep what went out long ago.
                    if self.written >= 1 << 16 {
                        self.bytes.drain(..self.written);
                        self.written = 0;
                    }
                    return true;
                }
                Err(e) => {
                    log::debug!(
                        "{} bytes of releases dropped: the peer is gone ({e})",
                        self.bytes.len() - self.written
                    );
                    self.gone = Some(e);
                    self.bytes = Vec::new();
                    self.written = 0;
                    return false;
                }
            }
        }
        self.bytes.clear();
        self.written = 0;
        false
    }
}

/// The receiver's end of the connection: the socket, and the releases of
/// frames dropped anywhere, which wait here until the socket takes them.
struct Conn {
    stream: UnixStream,
    /// Signalled (an eventfd) when a drop leaves a release unwritten, so a
    /// `recv` blocked for input waits for room to write it as well.
    wake: Option<OwnedFd>,
    out: Mutex<Outbox>,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        );
        if let Err(e) = &wake {
            log::debug!("no eventfd ({e}): releases left over by other threads wait for the next recv or flush");
        }
        Conn {
            stream,
            wake: wake.ok(),
            out: Mutex::new(Outbox::default()),
        }
    }

    /// The queue (never blocks long: nobody holds it across a wait).
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue the release of frame `id` and write what can be written
    /// without blocking.
    fn release(&self, id: u64) {
        let pending = {
            let mut out = self.outbox();
            if out.gone.is_some() {
                return;
            }
            out.bytes.extend_from_slice(&release_bytes(id));
            out.write_nonblocking(&self.stream)
        };
        if pending {
            if let Some(w) = &self.wake {
                // Full or failing: the receiver flushes anyway on its next
                // call.
                let _ = rustix::io::write(w, &1u64.to_ne_bytes());
            }
        }
    }

    /// Write queued releases without blocking; whether some remain.
    fn flush_nonblocking(&self) -> bool {
        self.outbox().write_nonblocking(&self.stream)
    }

    /// Wait until the socket has something to read (or an error or hang-up
    /// to report), writing pending releases whenever there is room; at
    /// most `timeout` from now.
    fn wait_readable(&self, timeout: Option<Duration>, inside_message: bool) -> Result<()> {
        let deadline = deadline(timeout);
        loop {
            let pending = self.flush_nonblocking();
            let events = if pending {
                PollFlags::IN | PollFlags::OUT
            } else {
                PollFlags::IN
            };
            let wake = self.wake.as_ref().map(|w| w.as_fd());
            let Some((ready, woken)) = wait_for(self.stream.as_fd(), events, wake, deadline)?
            else {
                return Err(Error::TimedOut { inside_message });
            };
            if woken {
                if let Some(w) = &self.wake {
                    let mut count = [0u8; 8];
                    let _ = rustix::io::read(w, &mut count);
                }
            }
            if ready.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                return Ok(());
            }
        }
    }
}

/// Sends the release of one frame when dropped (the last memory of the
/// frame, shares included, is gone), without blocking: what the socket
/// cannot take now waits in the receiver's queue.
struct ReleaseOnDrop {
    id: u64,
    sock: Arc<Conn>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.sock.release(self.id);
    }
}

/// Receives frames.
pub struct Receiver {
    sock: Arc<Conn>,
    policy: ReceivePolicy,
    fd_alloc: FdAllocator,
    dmabuf_alloc: DmaBufAllocator,
    broken: Option<String>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .field("pending_releases", &self.pending_releases())
            .finish()
    }
}

impl Receiver {
    /// A receiver on a connected stream socket.
    pub fn new(sock: UnixStream, policy: ReceivePolicy) -> Self {
        Receiver {
            sock: Arc::new(Conn::new(sock)),
            policy,
            fd_alloc: FdAllocator::new(),
            dmabuf_alloc: DmaBufAllocator::new(),
            broken: None,
            timeout: None,
        }
    }

    /// Bound every wait of this receiver by `timeout` (`None`: wait for
    /// ever, the default): [`recv`](Receiver::recv) gives up with
    /// [`Error::TimedOut`] after `timeout` without progress, and
    /// [`flush`](Receiver::flush) after `timeout` without room for the
    /// pending releases. A timeout between messages leaves the connection
    /// usable; one inside a message does not.
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use mediamem::ipc::{ReceivePolicy, Receiver};
    /// use mediamem::Error;
    ///
    /// let (_peer, ours) = UnixStream::pair().unwrap();
    /// let mut rx = Receiver::new(ours, ReceivePolicy::default());
    /// rx.set_timeout(Some(Duration::from_millis(10)))?;
    /// assert!(matches!(rx.recv(), Err(Error::TimedOut { inside_message: false })));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Os`] when the socket refuses the timeout (a zero duration).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        set_timeouts(&self.sock.stream, timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// The next frame; `Ok(None)` at end of stream (or end of file between
    /// messages). Releases still queued are written first, and while it
    /// waits for input, as the socket has room for them.
    ///
    /// # Errors
    /// * [`Error::Protocol`] for a malformed message. When the framing
    ///   itself is wrong (a bad header, a wrong fd count, truncated
    ///   control data, an end of file or a timeout inside a message, a
    ///   message type a receiver never gets), the stream is out of sync and
    ///   every later call fails. When only a frame's payload is wrong (its
    ///   memory count, kinds, regions or lengths), the message was read
    ///   whole: the frame is released and the next `recv` goes on.
    /// * [`Error::Refused`], [`Error::BeyondFile`], [`Error::TooLarge`] and
    ///   other import errors for a frame whose content is refused: it is
    ///   released, every fd it brought is closed, and the next `recv` goes
    ///   on.
    /// * [`Error::TimedOut`] after the timeout (see
    ///   [`set_timeout`](Receiver::set_timeout)).
    pub fn recv(&mut self) -> Result<Option<Frame>> {
        if let Some(why) = &self.broken {
            return Err(Error::Protocol(format!(
                "connection is out of sync after: {why}"
            )));
        }
        self.sock.flush_nonblocking();
        let raw = match read_message(&self.sock, self.timeout) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            // Nothing of a message arrived: still in sync.
            Err(
                e @ Error::TimedOut {
                    inside_message: false,
                },
            ) => return Err(e),
            Err(e) => {
                self.broken = Some(e.to_string());
                return Err(e);
            }
        };
        match raw.header.kind {
            T_EOS => Ok(None),
            T_FRAME => {
                let payload = match parse_frame(&raw.payload, raw.fds.len()) {
                    Ok(p) => p,
                    Err(e) => {
                        // Lengths were consistent, so the stream is in sync,
                        // but the frame cannot be trusted; release it if it
                        // has an id.
                        if raw.payload.len() >= 8 {
                            self.release(le_u64(&raw.payload, 0));
                        }
                        return Err(e);
                    }
                };
                // On failure the import's release token is dropped, which
                // releases the frame exactly once.
                self.import(payload, raw.fds).map(Some)
            }
            other => {
                let e = Error::Protocol(format!("receiver got message type {other}"));
                self.broken = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Write every queued release, waiting for room for at most the
    /// timeout at a time (see [`set_timeout`](Receiver::set_timeout)).
    /// Dropping a frame never blocks: a release the socket cannot take at
    /// once is queued, and written by this, by the next
    /// [`recv`](Receiver::recv), or by the next drop. Call it before
    /// dropping the receiver, which only writes what fits without waiting.
    ///
    /// # Errors
    /// [`Error::TimedOut`] when the peer left no room for the timeout (what
    /// is left stays queued, the stream in sync), and the write's error
    /// when the peer is gone (its releases are dropped).
    pub fn flush(&self) -> Result<()> {
        loop {
            if !self.sock.flush_nonblocking() {
                return match self.sock.outbox().gone {
                    Some(e) => Err(Error::os("send", e)),
                    None => Ok(()),
                };
            }
            let ready = wait_for(
                self.sock.stream.as_fd(),
                PollFlags::OUT,
                None,
                deadline(self.timeout),
            )?;
            if ready.is_none() {
                return Err(Error::TimedOut {
                    inside_message: false,
                });
            }
        }
    }

    /// Releases queued and not yet written in full.
    pub fn pending_releases(&self) -> usize {
        let out = self.sock.outbox();
        (out.bytes.len() - out.written).div_ceil(RELEASE_LEN)
    }

    fn release(&self, id: u64) {
        self.sock.release(id);
    }

    fn import(&self, payload: FramePayload, fds: Vec<OwnedFd>) -> Result<Frame> {
        let token = Arc::new(ReleaseOnDrop {
            id: payload.id,
            sock: self.sock.clone(),
        });
        let mut memories = Vec::with_capacity(fds.len());
        let mut copied = 0;
        for (i, (desc, fd)) in payload.memories.iter().zip(fds).enumerate() {
            let (offset, size, maxsize) = (
                desc.offset as usize,
                desc.size as usize,
                desc.maxsize as usize,
            );
            let flags =
                MemoryFlags::from_bits_retain(desc.flags) & KEPT_FLAGS | MemoryFlags::READONLY;
            let (admission, file) =
                admit(&fd, desc.kind == K_DMABUF, &self.policy).map_err(|e| match e {
                    Error::Refused(why) => {
                        Error::Refused(format!("frame {}: memory {i} {why}", payload.id))
                    }
                    e => e,
                })?;
            if admission == Admission::Copy {
                memories.push(copy_by_pread(
                    &fd,
                    (offset, size, maxsize),
                    &mut copied,
                    self.policy.max_copy_bytes,
                )?);
                continue;
            }
            let dmabuf = admission == Admission::DmaBuf;
            let mut fd_flags = FdMemoryFlags::KEEP_MAPPED;
            if admission == Admission::Guarded {
                fd_flags |= FdMemoryFlags::GUARD_SIGBUS;
            }
            // The fd was classified above: no second fstat/fstatfs.
            let block = fd_block_of(FdHandle::Owned(fd), file, maxsize, fd_flags)?;
            let (alloc, backend): (_, Box<dyn MemoryBackend>) = if dmabuf {
                (
                    self.dmabuf_alloc.allocator(),
                    Box::new(DmaBufBackend::new(block)),
                )
            } else {
                (self.fd_alloc.allocator(), Box::new(FdBackend::new(block)))
            };
            let parts = MemoryParts::new(backend, maxsize)
                .region(offset, size)
                .flags(flags);
            let mut memory = Memory::from_parts(alloc, parts)?;
            // The frame's release goes when the last block of the frame
            // is freed, shares included.
            let release = token.clone();
            memory.set_on_block_free(Arc::new(move |_freed| {
                let _ = &release;
            }))?;
            memories.push(memory);
        }
        // Copies (and empty frames) hold nothing of the sender's: the
        // release goes with the last imported memory, or right here.
        drop(token);
        Ok(Frame {
            id: payload.id,
            memories,
            meta: payload.meta,
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Never blocks: what does not fit is lost with the connection
        // unless frames still alive write it when they go.
        self.sock.flush_nonblocking();
    }
}

/// Copy `[offset, offset + size)` of an unsealed file into new shm memory,
/// reading with `pread` (a concurrent truncation shortens the read instead
/// of raising `SIGBUS`). `copied` counts the bytes the frame has copied so
/// far; past `limit` ([`ReceivePolicy::max_copy_bytes`]) the copy is
/// refused before anything is allocated.
pub(crate) fn copy_by_pread(
    fd: &OwnedFd,
    (offset, size, maxsize): (usize, usize, usize),
    copied: &mut usize,
    limit: usize,
) -> Result<Memory> {
    let total = copied.saturating_add(size);
    if total > limit {
        return Err(Error::TooLarge {
            what: "bytes copied from unsealed memfds for one frame (ReceivePolicy::max_copy_bytes)",
            requested: total,
            limit,
        });
    }
    *copied = total;
    let file_size = crate::fd::fd_size(fd.as_fd())?;
    if maxsize as u64 > file_size {
        return Err(Error::BeyondFile {
            what: "maxsize",
            requested: maxsize as u64,
            file_size,
        });
    }
    let mut copy = ShmAllocator::get().alloc(size, None)?;
    {
        let mut dst = copy.map_mut()?;
        let mut done = 0;
        while done < size {
            match rustix::io::pread(fd, &mut dst[done..], (offset + done) as u64) {
                Ok(0) => {
                    return Err(Error::Refused(
                        "the unsealed file shrank while it was copied".into(),
                    ))
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::os("pread", e)),
            }
        }
    }
    // Read-only like every received memory: hand out a share (shares are).
    copy.share(..)
}
