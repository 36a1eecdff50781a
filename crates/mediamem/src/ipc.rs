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
//! maxsize, a maxsize beyond the received file, and a memfd a peer could
//! still shrink (no `F_SEAL_SHRINK`; [`ReceivePolicy::copy_unsealed`]
//! copies it with `pread` instead) are all errors that close every received
//! fd. A frame refused for its content is released to the sender and the
//! connection stays usable; a framing error leaves the stream out of sync,
//! so the receiver refuses further reads. End of file between messages is
//! the end of the stream; inside one, an error. Writes use `MSG_NOSIGNAL`:
//! a vanished peer is an error, not a `SIGPIPE`. A peer that stops sending
//! in the middle of a message would block a read for ever: give either end
//! a timeout ([`Receiver::set_timeout`], [`Sender::set_timeout`]) and it
//! is [`Error::TimedOut`] instead, with every fd of the partial message
//! closed.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::dmabuf::{is_dmabuf_memory, DmaBufAllocator};
use crate::error::{Error, Result};
use crate::fd::{fd_backend, FdAllocator, FdHandle, FdKind, FdMemoryFlags};
use crate::memory::{Memory, MemoryFlags, MemoryParts};
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

/// Write all of `bytes`, the first write carrying `fds`.
fn send_all(sock: &UnixStream, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
    let mut sent = 0;
    while sent < bytes.len() {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(Error::Protocol("too many fds for one message".into()));
        }
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&bytes[sent..])],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(0) => return Err(Error::Protocol("the peer stopped reading".into())),
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::os("sendmsg", e)),
        }
    }
    Ok(())
}

/// A message read off the socket, not yet interpreted.
struct RawMessage {
    header: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Read one message. `Ok(None)` at end of file between messages, or when
/// `nonblocking` and nothing is there yet.
fn read_message(sock: &UnixStream, nonblocking: bool) -> Result<Option<RawMessage>> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
    while got < HEADER_LEN {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut flags = RecvFlags::CMSG_CLOEXEC;
        if nonblocking && got == 0 {
            flags |= RecvFlags::DONTWAIT;
        }
        let r = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut head[got..])],
            &mut control,
            flags,
        );
        let msg = match r {
            Ok(m) => m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if nonblocking && got == 0 => return Ok(None),
            // SO_RCVTIMEO ran out (a blocking read with a timeout).
            Err(rustix::io::Errno::AGAIN) => {
                return Err(Error::TimedOut {
                    inside_message: got > 0 || !fds.is_empty(),
                })
            }
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
        match rustix::io::read(sock, &mut payload[read..]) {
            Ok(0) => {
                return Err(Error::Protocol(format!(
                    "end of stream after {read} of {} payload bytes",
                    payload.len()
                )))
            }
            Ok(n) => read += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(Error::TimedOut {
                    inside_message: true,
                })
            }
            Err(e) => return Err(Error::os("read", e)),
        }
    }
    Ok(Some(RawMessage {
        header,
        payload,
        fds,
    }))
}

fn set_read_timeout(sock: &UnixStream, timeout: Option<Duration>) -> Result<()> {
    sock.set_read_timeout(timeout).map_err(|e| Error::Os {
        op: "setsockopt(SO_RCVTIMEO)",
        source: e,
    })
}

fn release_bytes(id: u64) -> [u8; HEADER_LEN + 8] {
    let mut m = [0u8; HEADER_LEN + 8];
    m[..HEADER_LEN].copy_from_slice(&header_bytes(T_RELEASE, 8, 0));
    m[HEADER_LEN..].copy_from_slice(&id.to_le_bytes());
    m
}

/// Sends frames and takes releases back.
pub struct Sender {
    sock: UnixStream,
    next_id: u64,
    held: HashMap<u64, Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("next_id", &self.next_id)
            .field("in_flight", &self.held.len())
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
        }
    }

    /// Make [`wait_release`](Sender::wait_release) give up with
    /// [`Error::TimedOut`] after `timeout` without a message (`None`: wait
    /// for ever, the default).
    ///
    /// # Errors
    /// [`Error::Os`] when the socket refuses the timeout (a zero duration).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        set_read_timeout(&self.sock, timeout)
    }

    /// Frames sent and not yet released.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Send `memories` as one frame with `meta`; keep them until the peer
    /// releases the frame. Returns the frame id.
    ///
    /// # Errors
    /// [`Error::WrongKind`] for memory without an fd (export DRM dumb
    /// memory first), [`Error::Protocol`] for too many memories or too much
    /// metadata, and I/O errors (a vanished peer).
    pub fn send_frame<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        meta: &[u8],
    ) -> Result<u64> {
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
        send_all(&self.sock, &msg, &fds)?;
        drop(fds);
        self.next_id += 1;
        self.held.insert(id, Box::new(memories));
        Ok(id)
    }

    /// Tell the peer the stream ended.
    pub fn send_eos(&mut self) -> Result<()> {
        send_all(&self.sock, &header_bytes(T_EOS, 0, 0), &[])
    }

    /// Handle one message from the peer; `Ok(None)` when there was none
    /// (nonblocking) or the peer closed.
    fn take_release(&mut self, nonblocking: bool) -> Result<Option<u64>> {
        let Some(m) = read_message(&self.sock, nonblocking)? else {
            return Ok(None);
        };
        if m.header.kind != T_RELEASE {
            return Err(Error::Protocol(format!(
                "sender got message type {}",
                m.header.kind
            )));
        }
        let id = le_u64(&m.payload, 0);
        if self.held.remove(&id).is_none() {
            return Err(Error::Protocol(format!("release of unknown frame {id}")));
        }
        Ok(Some(id))
    }

    /// Wait for the next release; `Ok(None)` when the peer closed.
    pub fn wait_release(&mut self) -> Result<Option<u64>> {
        self.take_release(false)
    }

    /// Handle every release already received, without waiting; returns how
    /// many frames were released.
    pub fn poll_releases(&mut self) -> Result<usize> {
        let mut n = 0;
        while self.take_release(true)?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// What the receiver accepts.
#[derive(Debug, Clone, Copy, Default)]
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
}

/// What the receiver does with one received fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
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
fn admit(fd: &OwnedFd, announced_dmabuf: bool, policy: &ReceivePolicy) -> Result<Admission> {
    use rustix::fs::SealFlags;
    let file = crate::sys::file_id(fd.as_fd()).map_err(|e| Error::BadFd {
        reason: format!("fstat/fstatfs of a received fd: {e}"),
    })?;
    if file.fs == crate::sys::FsKind::DmaBuf {
        return Ok(Admission::DmaBuf);
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
        return Ok(Admission::Sealed);
    };
    if policy.guard_unsealed {
        Ok(Admission::Guarded)
    } else if policy.copy_unsealed {
        Ok(Admission::Copy)
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

/// Sends the release of one frame when dropped (the last memory of the
/// frame, shares included, is gone).
struct ReleaseOnDrop {
    id: u64,
    sock: Arc<UnixStream>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Err(e) = send_all(&self.sock, &release_bytes(self.id), &[]) {
            log::debug!("release of frame {} not delivered: {e}", self.id);
        }
    }
}

/// Receives frames.
pub struct Receiver {
    sock: Arc<UnixStream>,
    policy: ReceivePolicy,
    fd_alloc: FdAllocator,
    dmabuf_alloc: DmaBufAllocator,
    broken: Option<String>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("policy", &self.policy)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Receiver {
    /// A receiver on a connected stream socket.
    pub fn new(sock: UnixStream, policy: ReceivePolicy) -> Self {
        Receiver {
            sock: Arc::new(sock),
            policy,
            fd_alloc: FdAllocator::new(),
            dmabuf_alloc: DmaBufAllocator::new(),
            broken: None,
        }
    }

    /// Make [`recv`](Receiver::recv) give up with [`Error::TimedOut`] after
    /// `timeout` without progress (`None`: wait for ever, the default). A
    /// timeout between messages leaves the connection usable; one inside a
    /// message does not.
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
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        set_read_timeout(&self.sock, timeout)
    }

    /// The next frame; `Ok(None)` at end of stream (or end of file between
    /// messages).
    ///
    /// # Errors
    /// [`Error::Protocol`] for malformed input, after which the receiver
    /// refuses to read on; [`Error::Refused`] and fd errors for a frame
    /// whose content is refused, which is released, and the next `recv`
    /// goes on.
    pub fn recv(&mut self) -> Result<Option<Frame>> {
        if let Some(why) = &self.broken {
            return Err(Error::Protocol(format!(
                "connection is out of sync after: {why}"
            )));
        }
        let raw = match read_message(&self.sock, false) {
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

    fn release(&self, id: u64) {
        drop(ReleaseOnDrop {
            id,
            sock: self.sock.clone(),
        });
    }

    fn import(&self, payload: FramePayload, fds: Vec<OwnedFd>) -> Result<Frame> {
        let token = Arc::new(ReleaseOnDrop {
            id: payload.id,
            sock: self.sock.clone(),
        });
        let mut memories = Vec::with_capacity(fds.len());
        for (i, (desc, fd)) in payload.memories.iter().zip(fds).enumerate() {
            let (offset, size, maxsize) = (
                desc.offset as usize,
                desc.size as usize,
                desc.maxsize as usize,
            );
            let flags =
                MemoryFlags::from_bits_retain(desc.flags) & KEPT_FLAGS | MemoryFlags::READONLY;
            let admission =
                admit(&fd, desc.kind == K_DMABUF, &self.policy).map_err(|e| match e {
                    Error::Refused(why) => {
                        Error::Refused(format!("frame {}: memory {i} {why}", payload.id))
                    }
                    e => e,
                })?;
            if admission == Admission::Copy {
                memories.push(copy_by_pread(&fd, offset, size, maxsize)?);
                continue;
            }
            let (alloc, kind) = if admission == Admission::DmaBuf {
                (self.dmabuf_alloc.allocator(), FdKind::DmaBuf)
            } else {
                (self.fd_alloc.allocator(), FdKind::Plain)
            };
            let mut fd_flags = FdMemoryFlags::KEEP_MAPPED;
            if admission == Admission::Guarded {
                fd_flags |= FdMemoryFlags::GUARD_SIGBUS;
            }
            let mut backend = fd_backend(FdHandle::Owned(fd), maxsize, fd_flags, kind)?;
            backend.set_on_free(Box::new(token.clone()));
            memories.push(Memory::from_parts(
                alloc,
                MemoryParts::new(Box::new(backend), maxsize)
                    .flags(flags)
                    .region(offset, size),
            )?);
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

/// Copy `[offset, offset + size)` of an unsealed file into new shm memory,
/// reading with `pread` (a concurrent truncation shortens the read instead
/// of raising `SIGBUS`).
fn copy_by_pread(fd: &OwnedFd, offset: usize, size: usize, maxsize: usize) -> Result<Memory> {
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
