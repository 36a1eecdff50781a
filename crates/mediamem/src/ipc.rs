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
//! # Registered buffers
//!
//! Sending a frame's fds anew each time makes the receiver map each one
//! afresh: a page fault per page it reads and an `munmap` per frame. So a
//! memory whose storage is an fd block (fd, shm, dma-buf and huge page
//! memory, and shares of them) is *registered* the first time it is sent
//! on a connection: its fd travels once with a buffer id, the receiver
//! admits it (the same checks as any received fd) and keeps it mapped;
//! later frames name the buffer id with the memory's offset and size, and
//! carry no fd. The received memories of a registered buffer are read-only
//! roots over that one kept mapping (shares of them too); the frame is
//! released when the last of them is gone.
//!
//! What is registered: every memory whose storage is an fd block, while the
//! sender holds fewer than [`Sender::set_max_registered`] buffers (64 by
//! default; past it, memories go with their fd as unregistered ones do);
//! [`Sender::set_register_buffers`]`(false)` sends every fd every time.
//! Other memories (a received memory forwarded, custom kinds with an fd)
//! travel with their fd on every frame. Registration pays off for storage
//! that is sent again (a [`MemoryPool`](crate::pool::MemoryPool)'s); a
//! block sent once costs one small message more (its unregister).
//!
//! The sender follows each registered block's life: once the block is
//! freed (its last handle gone, wherever it was: a pool dropped, a
//! one-off memory released by the peer and dropped), the sender's next
//! call ([`Sender::send_frame`], [`Sender::send_eos`],
//! [`Sender::unregister_freed`]) sends an unregister, and the receiver
//! closes and unmaps it once no memory of it is alive. A block freed is
//! never sent again, so its id is never in a frame in flight. At the end
//! of the stream the receiver forgets every buffer (memories still alive
//! keep theirs mapped until they go).
//!
//! # Wire format (version 3, little-endian)
//!
//! Every message is a 16-byte header followed by `payload_len` bytes. The
//! header and any fds go in one `sendmsg`; long payloads continue in
//! further writes and are read in a loop.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | magic | u32 | `0x5049_4d4d` (`"MMIP"`) |
//! | version | u16 | 3 (a peer speaking another gets [`Error::VersionMismatch`] naming both) |
//! | type | u16 | 1 fd frame, 2 release, 3 end of stream, 4 frame, 5 unregister |
//! | payload_len | u32 | at most [`MAX_PAYLOAD`] |
//! | n_fds | u32 | fds sent with this header |
//!
//! A **frame**'s payload (type 4) is `id u64, pts u64, dts u64, duration
//! u64` (nanoseconds, `u64::MAX` for unset: [`Timestamps`]), `n_memories
//! u32, layout_len u32, meta_len u32, flags u32`, then `n_memories`
//! descriptors of 40 bytes `source u8, kind u8, 2 × pad, flags u32, buffer
//! u32, pad u32, offset u64, size u64, maxsize u64`, then `layout_len`
//! bytes of [`FrameLayout`] (none when 0), then `meta_len` bytes of caller
//! metadata. `source` is 0 for a memory with its own fd (`maxsize` the
//! bytes of the file it covers), 1 for one that registers buffer `buffer`
//! (its fd, `kind` and `maxsize` are the buffer's) and 2 for one in
//! buffer `buffer`, registered before (`kind` and `maxsize` 0); `kind` is
//! 0 fd, 1 dma-buf. Sources 0 and 1 bring one fd each, in order. `flags`
//! bit 0 (the only one: others are an error) says an *acquire fence*
//! comes with the frame: one more fd, after the memories', which must be a
//! sync_file (see [Fences](#fences)).
//!
//! Version 3 is version 2 with fences: the frame's `flags` (reserved and
//! 0 in version 2) and the fenced release. The two are not mixed on one
//! connection: a version 2 peer that met a fenced frame or release would
//! refuse it or fall out of sync, so each end refuses the other's
//! messages with [`Error::VersionMismatch`] from the first header on,
//! as version 1 and 2 peers do, and both ends are upgraded together.
//!
//! An **fd frame** (type 1, version 1's frame) has the payload `id u64,
//! n_memories u32, meta_len u32`, then `n_memories` descriptors `kind u8,
//! 3 × pad, flags u32, offset u64, size u64, maxsize u64` (32 bytes), then
//! the metadata; one fd per memory. The sender no longer writes it; the
//! receiver still takes it ([`parse_frame`]).
//!
//! The receiver reads ahead: one `recvmsg` brings a message's header and
//! payload, and often the next messages. A message's fds must come with the
//! write that carries its first byte (the kernel then hands them over with
//! the read that reaches that write); fds that no message starting in
//! their read announces are a framing error.
//!
//! A **release**'s payload is the frame id (8 bytes, no fd), or, with a
//! *release fence*, `id u64, flags u32 (1), reserved u32 (0)` (16 bytes)
//! with the fence's fd; an **unregister**'s is one or
//! more buffer ids (u32 each, at most [`MAX_UNREGISTER`]); end of stream
//! has none. The sender writes an unregister right after a frame, in the
//! same write.
//!
//! # Fences
//!
//! Frames carry explicit sync (see [`sync`](crate::sync)):
//!
//! * an **acquire fence** ([`Sender::send_frame_fenced`]): a sync_file
//!   that signals when the frame's bytes are ready (a GPU or a codec still
//!   writing them). The receiver's maps of the frame's memories (shares
//!   included) wait for it, bounded by [`Receiver::set_fence_timeout`]
//!   (5 s by default; [`Error::FenceTimedOut`] after it, nothing mapped),
//!   until one map has seen it signaled; or the receiver takes it
//!   ([`Frame::take_acquire_fence`]) and maps do not wait. A frame copied
//!   out of an unsealed memfd ([`ReceivePolicy::copy_unsealed`]) waits
//!   while it is copied, in [`Receiver::recv`].
//! * a **release fence** ([`Frame::set_release_fence`]): a sync_file that
//!   signals when the receiver's own work on the frame is done (it dropped
//!   the memories while a device still reads them). It goes back with the
//!   release; the sender keeps the frame's memories, so a
//!   [`MemoryPool`](crate::pool::MemoryPool) does not hand the buffers
//!   out again, until it has signaled: [`Sender::reclaim_fenced`] (which
//!   every send and every release read calls) and
//!   [`Sender::wait_fenced`] drop them then, and so does
//!   [`Sender::wait_release`], which waits for the socket and the pending
//!   release fences together: a producer that waits for releases when its
//!   pool is empty gets a buffer back when a fence signals, without
//!   calling anything else. (A pool's own waits,
//!   [`MemoryPool::acquire_timeout`](crate::pool::MemoryPool::acquire_timeout),
//!   see the pool alone: the sender reclaims nothing meanwhile.)
//!
//!   Frames held for their fences count in [`Sender::in_flight`], and a
//!   sender holds at most [`Sender::set_max_fenced`] of them (64 by
//!   default): at the bound it reads no release until one signals, so a
//!   peer returning every frame with a late fence cannot grow the
//!   sender's memory past it.
//!
//!   When the sender goes (dropped, or a [`FanOut`] removes the
//!   receiver) with release fences still pending, the memories must not
//!   go back to a pool under the peer's device. For dma-buf memories the
//!   sender imports the release fence into the buffer as a reader's
//!   fence (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`, Linux 6.0) when the release
//!   arrives: whoever writes the buffer next (a map for writing, a
//!   device) waits for it, held or not, so those go at once. The others
//!   (memfd and shm memories, or a kernel without the import) are waited
//!   for in `Drop`, for at most [`Sender::set_fence_timeout`] (5 s by
//!   default) in all, then dropped with a warning in the log.
//!
//! Both fds are admitted with the care a memory's fd gets: a fence must be
//! a sync_file, checked to be an anonymous inode before any sync ioctl is
//! issued on it ([`Error::NotSyncFile`] otherwise: the frame is released
//! and every fd it brought closed, or, for a release, the frame stays held
//! by the sender); a sync_file sent where a memory's fd belongs is
//! [`Error::Refused`]. A frame with a fence carries at most
//! `MAX_MEMORIES - 1` memories with fds.
//!
//! # The receiver trusts nothing
//!
//! Wrong magic or version, an unknown type, source or memory kind, a payload over
//! the limit or of the wrong length for its type, an fd count that differs
//! from the memory count, truncated control data, a region outside its
//! maxsize, a maxsize beyond the received file, a memfd a peer could still
//! shrink (no `F_SEAL_SHRINK`; [`ReceivePolicy::copy_unsealed`] copies it
//! with `pread` instead), and more bytes to copy than
//! [`ReceivePolicy::max_copy_bytes`] are all errors that close every
//! received fd. So are, for registered buffers ([`Error::Registry`]): an id
//! that is not registered, a region outside its buffer, a registration of
//! an id already registered, more buffers than
//! [`ReceivePolicy::max_registered`], and an unregister of an unknown
//! buffer or of one whose memories are alive (refused: it stays
//! registered, nothing is unmapped under a live memory); and a
//! [`FrameLayout`] that does not fit its memories ([`FrameLayout::check`]).
//! A registered fd gets every check a frame's fd gets. A frame whose
//! registrations were admitted keeps them even when the frame is refused
//! for something else. Two kinds of error differ in what follows:
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
//! (One bounded exception: a [`Sender`] dropped while release fences on
//! memories they do not protect are pending waits for them, for at most
//! its fence timeout; see [Fences](#fences).)
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
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::dmabuf::{is_dmabuf_memory, DmaBufAllocator, DmaBufBackend};
use crate::error::{Error, RegistryProblem, Result};
use crate::fd::{fd_block_of, FdAllocator, FdBackend, FdBlock, FdHandle, FdMemoryFlags};
use crate::layout::FrameLayout;
use crate::memory::{
    BlockAlias, MapFlags, Memory, MemoryBackend, MemoryFlags, MemoryKind, MemoryParts,
};
use crate::shm::ShmAllocator;
use crate::sync::SyncFile;

#[cfg(feature = "tokio")]
pub mod aio;
mod fanout;
pub use fanout::{ClientId, FanOut, FanOutReport, DEFAULT_CLIENT_TIMEOUT};

/// `"MMIP"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MMIP");
/// Protocol version.
pub const VERSION: u16 = 3;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Most memories in one frame (and fds in one message).
pub const MAX_MEMORIES: usize = 64;
/// Most buffer ids in one unregister message.
pub const MAX_UNREGISTER: usize = 1024;
/// Buffers a receiver keeps registered by default
/// ([`ReceivePolicy::max_registered`]) and a sender registers by default
/// ([`Sender::set_max_registered`]).
pub const DEFAULT_MAX_REGISTERED: usize = 64;
/// A timestamp's wire value when it is unset.
pub const TIME_NONE: u64 = u64::MAX;

const HEADER_LEN: usize = 16;
const FRAME_FIXED: usize = 16;
const DESC_LEN: usize = 32;
const FRAME2_FIXED: usize = 48;
const DESC2_LEN: usize = 40;

/// Message types.
const T_FD_FRAME: u16 = 1;
const T_RELEASE: u16 = 2;
const T_EOS: u16 = 3;
const T_FRAME: u16 = 4;
const T_UNREGISTER: u16 = 5;

/// Memory kinds on the wire.
const K_FD: u8 = 0;
const K_DMABUF: u8 = 1;

/// Frame flags on the wire (the frame's u32 at offset 44).
const F_ACQUIRE_FENCE: u32 = 1;
/// Release flags on the wire (a 16-byte release's u32 at offset 8).
const R_RELEASE_FENCE: u32 = 1;

/// Memory sources on the wire.
const S_FD: u8 = 0;
const S_REGISTER: u8 = 1;
const S_BUFFER: u8 = 2;

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
        return Err(Error::VersionMismatch {
            ours: VERSION,
            theirs: version,
        });
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
        T_FD_FRAME | T_FRAME => None,
        T_UNREGISTER => {
            let len = header.payload_len as usize;
            if header.n_fds != 0 || len == 0 || len % 4 != 0 || len / 4 > MAX_UNREGISTER {
                return Err(Error::Protocol(format!(
                    "an unregister must have 1 to {MAX_UNREGISTER} buffer ids (4 bytes each) and no fds, has {len} bytes and {} fds",
                    header.n_fds
                )));
            }
            None
        }
        // A release with a fence: 16 bytes and its fd.
        T_RELEASE if header.payload_len == 16 && header.n_fds == 1 => None,
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

/// A memory kind on the wire must be fd or dma-buf.
fn check_kind(id: u64, i: usize, kind: u8) -> Result<()> {
    if kind != K_FD && kind != K_DMABUF {
        return Err(Error::Protocol(format!(
            "frame {id}: memory {i} has unknown kind {kind}"
        )));
    }
    Ok(())
}

/// A region on the wire must lie inside its maxsize, itself at most
/// `isize::MAX`.
fn check_region(id: u64, i: usize, offset: u64, size: u64, maxsize: u64) -> Result<()> {
    let end = offset.checked_add(size);
    if end.is_none_or(|e| e > maxsize) || maxsize > isize::MAX as u64 {
        return Err(Error::Protocol(format!(
            "frame {id}: memory {i} region {offset}+{size} is outside its maxsize {maxsize}"
        )));
    }
    Ok(())
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
        check_kind(id, i, desc.kind)?;
        check_region(id, i, desc.offset, desc.size, desc.maxsize)?;
        memories.push(desc);
    }
    Ok(FramePayload {
        id,
        memories,
        meta: p[FRAME_FIXED + n * DESC_LEN..].to_vec(),
    })
}

/// Presentation and decoding times and duration of a frame, in
/// nanoseconds (`None`: unset; `u64::MAX` is the wire's unset value, so it
/// cannot be a time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timestamps {
    /// Presentation time.
    pub pts: Option<u64>,
    /// Decoding time.
    pub dts: Option<u64>,
    /// Duration.
    pub duration: Option<u64>,
}

fn time_wire(t: Option<u64>) -> u64 {
    t.unwrap_or(TIME_NONE)
}

fn time_of(v: u64) -> Option<u64> {
    (v != TIME_NONE).then_some(v)
}

/// Where a memory of a frame comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Its own fd, sent with the frame.
    Fd,
    /// Its fd, sent with the frame, registers this buffer id.
    Register(u32),
    /// A buffer registered before.
    Buffer(u32),
}

impl Source {
    /// Whether an fd comes with it.
    pub fn has_fd(self) -> bool {
        !matches!(self, Source::Buffer(_))
    }
}

/// One memory of a frame as described on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireMemory {
    /// Where it comes from.
    pub source: Source,
    /// 0 fd, 1 dma-buf (of the fd or the registered buffer; 0 for
    /// [`Source::Buffer`]).
    pub kind: u8,
    /// The sender's memory flags.
    pub flags: u32,
    /// Offset of the visible bytes in the file (or buffer).
    pub offset: u64,
    /// Visible bytes.
    pub size: u64,
    /// Bytes of the file the memory (or the buffer it registers) covers,
    /// from file offset 0; 0 for [`Source::Buffer`].
    pub maxsize: u64,
}

/// A frame's payload (message type 4), parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    /// The sender's frame id.
    pub id: u64,
    /// Timestamps.
    pub timestamps: Timestamps,
    /// The memories, in order.
    pub memories: Vec<WireMemory>,
    /// The layout, if one came.
    pub layout: Option<FrameLayout>,
    /// Caller metadata.
    pub meta: Vec<u8>,
    /// Whether an acquire fence (a sync_file) came with the frame: its fd
    /// follows the memories' fds.
    pub acquire_fence: bool,
}

/// Parse and check a frame payload (message type 4) that came with `n_fds`
/// fds. Everything that can be checked without the fds and the receiver's
/// registered buffers is: lengths, sources, kinds, regions within their
/// maxsize, the fd count, the layout's form (not yet its fit:
/// [`FrameLayout::check`]).
///
/// # Errors
/// [`Error::Protocol`] for anything malformed, [`Error::InvalidLayout`]
/// for a malformed layout.
pub fn parse_frame_v2(p: &[u8], n_fds: usize) -> Result<WireFrame> {
    if p.len() < FRAME2_FIXED {
        return Err(Error::Protocol(format!(
            "frame payload of {} bytes is too short",
            p.len()
        )));
    }
    let id = le_u64(p, 0);
    let timestamps = Timestamps {
        pts: time_of(le_u64(p, 8)),
        dts: time_of(le_u64(p, 16)),
        duration: time_of(le_u64(p, 24)),
    };
    let n = le_u32(p, 32) as usize;
    let layout_len = le_u32(p, 36) as usize;
    let meta_len = le_u32(p, 40) as usize;
    let flags = le_u32(p, 44);
    if flags & !F_ACQUIRE_FENCE != 0 {
        return Err(Error::Protocol(format!(
            "frame {id}: unknown flags {flags:#x}"
        )));
    }
    let acquire_fence = flags & F_ACQUIRE_FENCE != 0;
    if n > MAX_MEMORIES {
        return Err(Error::Protocol(format!(
            "{n} memories in a frame, at most {MAX_MEMORIES}"
        )));
    }
    let want = (FRAME2_FIXED + n * DESC2_LEN)
        .checked_add(layout_len)
        .and_then(|w| w.checked_add(meta_len));
    if want != Some(p.len()) {
        return Err(Error::Protocol(format!(
            "frame {id}: payload is {} bytes, its fields say {}",
            p.len(),
            want.map_or("more than fit in memory".into(), |w| w.to_string())
        )));
    }
    let mut memories = Vec::with_capacity(n);
    let mut fds = 0;
    for i in 0..n {
        let d = &p[FRAME2_FIXED + i * DESC2_LEN..FRAME2_FIXED + (i + 1) * DESC2_LEN];
        let buffer = le_u32(d, 8);
        let source = match d[0] {
            S_FD if buffer == 0 => Source::Fd,
            S_REGISTER => Source::Register(buffer),
            S_BUFFER => Source::Buffer(buffer),
            other => {
                return Err(Error::Protocol(format!(
                    "frame {id}: memory {i} has unknown source {other} (buffer {buffer})"
                )))
            }
        };
        let m = WireMemory {
            source,
            kind: d[1],
            flags: le_u32(d, 4),
            offset: le_u64(d, 16),
            size: le_u64(d, 24),
            maxsize: le_u64(d, 32),
        };
        if d[2] != 0 || d[3] != 0 || le_u32(d, 12) != 0 {
            return Err(Error::Protocol(format!(
                "frame {id}: memory {i} has non-zero padding"
            )));
        }
        check_kind(id, i, m.kind)?;
        if source.has_fd() {
            fds += 1;
            check_region(id, i, m.offset, m.size, m.maxsize)?;
        } else if m.kind != 0 || m.maxsize != 0 {
            return Err(Error::Protocol(format!(
                "frame {id}: memory {i} of registered buffer {buffer} has kind {} and maxsize {} (must be 0: the buffer's are used)",
                m.kind, m.maxsize
            )));
        }
        memories.push(m);
    }
    let fences = usize::from(acquire_fence);
    if fds + fences != n_fds {
        return Err(Error::Protocol(format!(
            "frame {id} describes {fds} memories with fds and {fences} fences but came with {n_fds} fds"
        )));
    }
    let at = FRAME2_FIXED + n * DESC2_LEN;
    let layout = if layout_len == 0 {
        None
    } else {
        Some(FrameLayout::parse(&p[at..at + layout_len])?)
    };
    Ok(WireFrame {
        id,
        timestamps,
        memories,
        layout,
        meta: p[at + layout_len..].to_vec(),
        acquire_fence,
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

/// Fds that came with one read. A sender's fds go with the first write of
/// their message, and the kernel ends a read after the first write that
/// carried fds (having read at least its first byte): so they belong to
/// the one message that announces fds and starts within the read.
struct FdBatch {
    /// Stream positions of the read's first and last bytes.
    first: u64,
    last: u64,
    fds: Vec<OwnedFd>,
}

/// Bytes the receiver read ahead of the message it handles, so that one
/// `recvmsg` usually brings a whole message (header and payload) and
/// sometimes the next ones too.
#[derive(Default)]
struct InBuf {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream position of `bytes[start]`.
    pos: u64,
    batches: std::collections::VecDeque<FdBatch>,
}

/// Bytes one read asks for at least.
const READ_AHEAD: usize = 16 << 10;

impl InBuf {
    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Whether part of a message (bytes or fds) is buffered.
    fn inside_message(&self) -> bool {
        self.available() > 0 || !self.batches.is_empty()
    }

    /// Room for at least `need` bytes from `start` and a read-ahead.
    fn reserve(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let want = need.max(self.available() + READ_AHEAD);
        if self.bytes.len() - self.start < want {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.bytes.len() < want {
                self.bytes.resize(want, 0);
            }
        }
    }

    /// The whole message at the front, if it is all here: its header
    /// (checked), payload and fds.
    fn take_message(&mut self) -> Result<Option<RawMessage>> {
        if self.available() < HEADER_LEN {
            return Ok(None);
        }
        let head: &[u8; HEADER_LEN] = self.bytes[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("a header's bytes");
        let header = parse_header(head)?;
        let len = HEADER_LEN + header.payload_len as usize;
        if self.available() < len {
            return Ok(None);
        }
        let (at, end) = (self.pos, self.pos + len as u64);
        let mut fds = Vec::new();
        let announced = header.n_fds > 0;
        if announced
            && self
                .batches
                .front()
                .is_some_and(|b| b.first <= at && at <= b.last)
        {
            fds = self.batches.pop_front().expect("checked").fds;
        }
        // Fds whose read ended inside this message and that it did not
        // take: nothing can claim them.
        if self.batches.front().is_some_and(|b| b.last < end) {
            let stray = self.batches.pop_front().expect("checked").fds.len();
            return Err(Error::Protocol(format!(
                "{stray} fds arrived that no message announced (header announces {})",
                header.n_fds
            )));
        }
        if fds.len() != header.n_fds as usize {
            return Err(Error::Protocol(format!(
                "header announces {} fds, {} arrived",
                header.n_fds,
                fds.len()
            )));
        }
        let payload = self.bytes[self.start + HEADER_LEN..self.start + len].to_vec();
        self.start += len;
        self.pos = end;
        Ok(Some(RawMessage {
            header,
            payload,
            fds,
        }))
    }

    /// What an end of file means here.
    fn end_of_stream(&self) -> Result<Option<RawMessage>> {
        if !self.inside_message() {
            return Ok(None);
        }
        if self.available() < HEADER_LEN {
            return Err(Error::Protocol(
                "end of stream inside a message header".into(),
            ));
        }
        let head: &[u8; HEADER_LEN] = self.bytes[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("a header's bytes");
        let len = parse_header(head).map_or(0, |h| h.payload_len as usize);
        Err(Error::Protocol(format!(
            "end of stream after {} of {len} payload bytes",
            self.available() - HEADER_LEN
        )))
    }
}

/// Read one message for the receiver, never blocking in the kernel: while
/// nothing is there it waits (writing pending releases as room appears) for
/// at most `timeout` at a time. `Ok(None)` at end of file between messages
/// (or `ECONNRESET`: the peer closed with some of our releases unread).
/// Reads go through `inbuf`, which may keep the start of the next
/// messages.
///
/// `try_only`: when nothing of a message is there, give up at once with
/// `TimedOut { inside_message: false }` instead of waiting.
fn read_message(
    conn: &Conn,
    inbuf: &mut InBuf,
    timeout: Option<Duration>,
    try_only: bool,
) -> Result<Option<RawMessage>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
    loop {
        if let Some(m) = inbuf.take_message()? {
            return Ok(Some(m));
        }
        let need = if inbuf.available() >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] = inbuf.bytes[inbuf.start..inbuf.start + HEADER_LEN]
                .try_into()
                .expect("a header's bytes");
            HEADER_LEN + parse_header(head)?.payload_len as usize
        } else {
            HEADER_LEN
        };
        inbuf.reserve(need);
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let end = inbuf.end;
        let r = rustix::net::recvmsg(
            &conn.stream,
            &mut [IoSliceMut::new(&mut inbuf.bytes[end..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        );
        let msg = match r {
            Ok(m) => m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if try_only && !inbuf.inside_message() => {
                return Err(Error::TimedOut {
                    inside_message: false,
                })
            }
            Err(rustix::io::Errno::AGAIN) => {
                conn.wait_readable(timeout, inbuf.inside_message())?;
                continue;
            }
            Err(rustix::io::Errno::CONNRESET) => return inbuf.end_of_stream(),
            Err(e) => return Err(Error::os("recvmsg", e)),
        };
        let mut fds = Vec::new();
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
            // Fds need a byte to travel with: none come with an end of file.
            return inbuf.end_of_stream();
        }
        let first = inbuf.pos + inbuf.available() as u64;
        inbuf.end += msg.bytes;
        if !fds.is_empty() {
            let last = first + msg.bytes as u64 - 1;
            inbuf.batches.push_back(FdBatch { first, last, fds });
        }
    }
}

/// Bytes of one release message.
const RELEASE_LEN: usize = HEADER_LEN + 8;
/// Bytes of one release message with a fence.
const FENCED_RELEASE_LEN: usize = HEADER_LEN + 16;

/// A release of frame `id`, with a release fence (its fd goes with the
/// message's first byte) or without.
fn release_bytes(id: u64, fenced: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(FENCED_RELEASE_LEN);
    if fenced {
        m.extend_from_slice(&header_bytes(T_RELEASE, 16, 1));
        m.extend_from_slice(&id.to_le_bytes());
        m.extend_from_slice(&R_RELEASE_FENCE.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
    } else {
        m.extend_from_slice(&header_bytes(T_RELEASE, 8, 0));
        m.extend_from_slice(&id.to_le_bytes());
    }
    m
}

/// Frames a sender holds released with an unsignaled release fence, by
/// default ([`Sender::set_max_fenced`]).
pub const DEFAULT_MAX_FENCED: usize = 64;

/// The memories of a frame the sender holds (a `Vec<T>` of the caller's).
trait HeldMemories: Send {
    fn for_each_memory(&self, f: &mut dyn FnMut(&Memory));
}

impl<T: AsRef<Memory> + Send> HeldMemories for Vec<T> {
    fn for_each_memory(&self, f: &mut dyn FnMut(&Memory)) {
        for m in self {
            f(m.as_ref());
        }
    }
}

/// A frame released with a release fence that had not signaled.
struct Fenced {
    fence: SyncFile,
    id: u64,
    /// Held until the fence signals.
    _memories: Box<dyn HeldMemories>,
    /// Every memory is a dma-buf that has the fence as a reader's fence:
    /// whoever writes it next waits for the fence, held here or not.
    protected: bool,
}

/// Import `fence` into every dma-buf memory of `memories` as a reader's
/// fence (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`), so the next writer's map (or
/// device) waits for it even once the memories are back in a pool;
/// whether every memory is so protected.
fn protect_dmabufs(memories: &dyn HeldMemories, fence: &SyncFile) -> bool {
    let mut all = true;
    memories.for_each_memory(&mut |m| {
        all &= is_dmabuf_memory(m)
            && crate::sync::import_sync_file(m, fence, crate::sync::FenceAccess::Read).is_ok();
    });
    all
}

/// What ended a sender's wait for releases.
enum Woke {
    /// The socket is readable.
    Socket,
    /// The release fence of this frame signaled: its memories were dropped.
    Reclaimed(u64),
    /// The deadline passed.
    TimedOut,
}

/// A buffer this sender registered on its connection.
struct SentBuffer {
    id: u32,
    /// Stops upgrading when the sender's block is freed; held, so the
    /// block's key (its address) is not reused meanwhile.
    life: Weak<()>,
}

/// What [`Sender::try_send_frame`] did.
#[derive(Debug)]
pub enum TrySend<T> {
    /// The frame went out with this id.
    Sent(u64),
    /// The socket had no room: nothing was written, the memories are
    /// handed back.
    WouldBlock(Vec<T>),
}

/// What a frame carries besides its memories ([`Sender::send_frame_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameInfo<'a> {
    /// Timestamps.
    pub timestamps: Timestamps,
    /// The layout of the frame's planes in its memories (checked before
    /// sending, and again by the receiver).
    pub layout: Option<&'a FrameLayout>,
    /// Caller metadata.
    pub meta: &'a [u8],
}

/// Sends frames and takes releases back.
pub struct Sender {
    sock: UnixStream,
    next_id: u64,
    held: HashMap<u64, Box<dyn HeldMemories>>,
    timeout: Option<Duration>,
    /// The release being read: its bytes (and its fence's fd) stay here
    /// across calls until it is whole.
    partial: [u8; FENCED_RELEASE_LEN],
    partial_len: usize,
    partial_fds: Vec<OwnedFd>,
    /// Frames released with a release fence not yet signaled: their
    /// memories are held until it is (at most `max_fenced`).
    fenced: Vec<Fenced>,
    max_fenced: usize,
    /// How long dropping the sender waits for the release fences of frames
    /// whose memories the fences do not protect.
    fence_timeout: Duration,
    /// Why the stream is out of sync: nothing more is read or written.
    broken: Option<String>,
    /// Registered buffers by their block's key.
    registered: HashMap<usize, SentBuffer>,
    next_buffer: u32,
    register: bool,
    max_registered: usize,
    /// Buffers whose block was freed, to unregister with the next write.
    unregister: Vec<u32>,
    /// The message being built (kept for its capacity).
    scratch: Vec<u8>,
    /// The peer closed its end (seen when reading releases).
    closed: bool,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("next_id", &self.next_id)
            .field("in_flight", &self.held.len())
            .field("fenced", &self.fenced.len())
            .field("registered", &self.registered.len())
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Drop for Sender {
    /// Frames released with a fence not yet signaled: the memories that
    /// the fence protects (dma-bufs that have it, see [Fences](self#fences))
    /// go now; for the others, wait for their fences, for at most the
    /// fence timeout in all, before they go back to their pool.
    fn drop(&mut self) {
        let deadline = Instant::now().checked_add(self.fence_timeout);
        for f in self.fenced.drain(..).filter(|f| !f.protected) {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if let Err(e) = f.fence.wait(left) {
                log::warn!(
                    "sender dropped: the release fence of frame {} did not signal ({e}); its memories go all the same",
                    f.id
                );
            }
        }
    }
}

impl AsFd for Sender {
    /// The socket, for `poll`/`epoll`: readable when releases arrived
    /// ([`Sender::poll_releases`]), writable when a frame would go out
    /// ([`Sender::try_send_frame`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl std::os::fd::AsRawFd for Sender {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

impl std::os::fd::AsRawFd for Receiver {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.stream.as_raw_fd()
    }
}

/// The fd block behind `m` (fd, shm, dma-buf, huge page memory and their
/// shares), if any.
fn fd_block(m: &Memory) -> Option<&FdBlock> {
    if let Some(b) = m.backend::<FdBackend>() {
        return Some(b);
    }
    m.backend::<DmaBufBackend>().map(|b| &**b)
}

impl Sender {
    /// A sender on a connected stream socket.
    pub fn new(sock: UnixStream) -> Self {
        Sender {
            sock,
            next_id: 1,
            held: HashMap::new(),
            timeout: None,
            partial: [0; FENCED_RELEASE_LEN],
            partial_len: 0,
            partial_fds: Vec::new(),
            fenced: Vec::new(),
            max_fenced: DEFAULT_MAX_FENCED,
            fence_timeout: crate::dmabuf::DEFAULT_FENCE_TIMEOUT,
            broken: None,
            registered: HashMap::new(),
            next_buffer: 1,
            register: true,
            max_registered: DEFAULT_MAX_REGISTERED,
            unregister: Vec::new(),
            scratch: Vec::new(),
            closed: false,
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

    /// Register fd blocks on first send (the default) or send every
    /// memory's fd with every frame (`false`; buffers registered before
    /// stay registered until freed).
    pub fn set_register_buffers(&mut self, register: bool) {
        self.register = register;
    }

    /// Register at most `max` buffers at a time
    /// ([`DEFAULT_MAX_REGISTERED`] by default; more than the receiver's
    /// [`ReceivePolicy::max_registered`] makes it refuse frames). Past it,
    /// memories of new blocks go with their fd.
    pub fn set_max_registered(&mut self, max: usize) {
        self.max_registered = max;
    }

    /// Buffers registered on the connection and not yet unregistered.
    pub fn registered(&self) -> usize {
        self.registered.len()
    }

    /// Frames whose memories the sender still holds: sent and not yet
    /// released, or released with a release fence that has not signaled
    /// yet ([`fenced`](Sender::fenced)). This is what bounds a slow peer
    /// ([`FanOut`]'s `max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.held.len() + self.fenced.len()
    }

    /// Hold at most `max` frames released with an unsignaled release fence
    /// ([`DEFAULT_MAX_FENCED`] by default, at least 1). At the bound, the
    /// sender reads no more releases until one of those fences signals:
    /// [`try_release`](Sender::try_release) and
    /// [`poll_releases`](Sender::poll_releases) find none, and
    /// [`wait_release`](Sender::wait_release) waits for a fence (within
    /// the timeout). A peer that returns every frame with a late fence
    /// thus holds the sender's memory to `max` frames besides those in
    /// flight, instead of without limit.
    pub fn set_max_fenced(&mut self, max: usize) {
        self.max_fenced = max.max(1);
    }

    /// How long dropping the sender waits for release fences still
    /// pending on memories they do not protect
    /// ([`DEFAULT_FENCE_TIMEOUT`](crate::dmabuf::DEFAULT_FENCE_TIMEOUT), 5
    /// s, by default): see [Fences](self#fences).
    pub fn set_fence_timeout(&mut self, timeout: Duration) {
        self.fence_timeout = timeout;
    }

    /// Whether the peer was seen closing its end (by
    /// [`wait_release`](Sender::wait_release) or
    /// [`poll_releases`](Sender::poll_releases) reading the end of the
    /// stream): it releases nothing more.
    pub fn peer_closed(&self) -> bool {
        self.closed
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
    /// in the kernel: waits for room for at most the timeout at a time,
    /// except before the first byte when `try_only` (then `Ok(false)`:
    /// nothing was written). A failure after part of the message went out
    /// leaves the sender out of sync.
    fn send_message(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        try_only: bool,
    ) -> Result<bool> {
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
                Err(rustix::io::Errno::AGAIN) if sent == 0 && try_only => return Ok(false),
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
        Ok(true)
    }

    /// Queue an unregister for every registered buffer whose block was
    /// freed.
    fn sweep(&mut self) {
        if self.registered.is_empty() {
            return;
        }
        let unregister = &mut self.unregister;
        self.registered.retain(|_, b| {
            let alive = b.life.strong_count() > 0;
            if !alive {
                unregister.push(b.id);
            }
            alive
        });
    }

    /// Append the queued unregisters to `msg` (at most [`MAX_UNREGISTER`]
    /// ids a message); returns how many ids went in.
    fn append_unregisters(&self, msg: &mut Vec<u8>) -> usize {
        let mut done = 0;
        for chunk in self.unregister.chunks(MAX_UNREGISTER) {
            msg.extend_from_slice(&header_bytes(T_UNREGISTER, chunk.len() * 4, 0));
            for id in chunk {
                msg.extend_from_slice(&id.to_le_bytes());
            }
            done += chunk.len();
        }
        done
    }

    /// Send an unregister for every registered buffer whose block was
    /// freed since the last call that did (every send does); returns how
    /// many. The receiver then unmaps them.
    ///
    /// # Errors
    /// As [`send_eos`](Sender::send_eos).
    pub fn unregister_freed(&mut self) -> Result<usize> {
        self.check_sync()?;
        self.reclaim_fenced();
        self.sweep();
        if self.unregister.is_empty() {
            return Ok(0);
        }
        let mut msg = Vec::new();
        let n = self.append_unregisters(&mut msg);
        self.send_message(&msg, &[], false)?;
        self.unregister.clear();
        Ok(n)
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
        self.send_frame_with(
            memories,
            FrameInfo {
                meta,
                ..FrameInfo::default()
            },
        )
    }

    /// [`send_frame`](Sender::send_frame) with timestamps and a layout,
    /// which is checked against the memories first
    /// ([`FrameLayout::check`]).
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use mediamem::drm::fourcc;
    /// use mediamem::ipc::{FrameInfo, ReceivePolicy, Receiver, Sender, Timestamps};
    /// use mediamem::layout::FrameLayout;
    /// use mediamem::ShmAllocator;
    ///
    /// let (a, b) = UnixStream::pair().unwrap();
    /// let (mut tx, mut rx) = (Sender::new(a), Receiver::new(b, ReceivePolicy::default()));
    /// let layout = FrameLayout::packed(fourcc(*b"NV12"), 64, 48)?;
    /// let frame = ShmAllocator::get().alloc(64 * 48 * 3 / 2, None)?;
    /// let timestamps = Timestamps { pts: Some(40_000_000), ..Timestamps::default() };
    /// tx.send_frame_with(vec![frame], FrameInfo { timestamps, layout: Some(&layout), meta: b"" })?;
    /// let got = rx.recv()?.unwrap();
    /// assert_eq!(got.layout.as_ref(), Some(&layout));
    /// assert_eq!(got.timestamps.pts, Some(40_000_000));
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`send_frame`](Sender::send_frame), and the layout's
    /// ([`Error::InvalidLayout`], [`Error::UnknownFourcc`]).
    pub fn send_frame_with<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        info: FrameInfo<'_>,
    ) -> Result<u64> {
        self.send_waiting(memories, info, None)
    }

    /// Send a frame, waiting for room (within the timeout).
    fn send_waiting<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        info: FrameInfo<'_>,
        acquire: Option<BorrowedFd<'_>>,
    ) -> Result<u64> {
        match self.send_inner(memories, info, acquire, false)? {
            TrySend::Sent(id) => Ok(id),
            TrySend::WouldBlock(_) => unreachable!("only try_send_frame gives up"),
        }
    }

    /// [`send_frame_with`](Sender::send_frame_with) with an *acquire
    /// fence*: a sync_file that signals when the memories' bytes are ready
    /// (a GPU or codec still writing them). It travels with the frame; the
    /// receiver's maps of the frame's memories wait for it (bounded by
    /// [`Receiver::set_fence_timeout`]), or the receiver takes it
    /// ([`Frame::take_acquire_fence`]). The caller keeps its `fence`.
    ///
    /// # Errors
    /// As [`send_frame_with`](Sender::send_frame_with); [`Error::Protocol`]
    /// also when the memories' fds and the fence are more than
    /// [`MAX_MEMORIES`] fds.
    pub fn send_frame_fenced<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        info: FrameInfo<'_>,
        acquire: &SyncFile,
    ) -> Result<u64> {
        self.send_waiting(memories, info, Some(acquire.as_fd()))
    }

    /// [`send_frame_with`](Sender::send_frame_with) without waiting for
    /// room: when the socket cannot take the frame's first bytes, nothing
    /// is written and the memories come back
    /// ([`TrySend::WouldBlock`]). Once a byte is out, the rest is written
    /// as by `send_frame` (within the timeout), so the stream never stays
    /// cut.
    ///
    /// # Errors
    /// As [`send_frame_with`](Sender::send_frame_with).
    pub fn try_send_frame<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        info: FrameInfo<'_>,
    ) -> Result<TrySend<T>> {
        self.send_inner(memories, info, None, true)
    }

    fn send_inner<T: AsRef<Memory> + Send + 'static>(
        &mut self,
        memories: Vec<T>,
        info: FrameInfo<'_>,
        acquire: Option<BorrowedFd<'_>>,
        try_only: bool,
    ) -> Result<TrySend<T>> {
        self.check_sync()?;
        if memories.len() > MAX_MEMORIES {
            return Err(Error::Protocol(format!(
                "{} memories, at most {MAX_MEMORIES}",
                memories.len()
            )));
        }
        if let Some(layout) = info.layout {
            let sizes: Vec<usize> = memories.iter().map(|m| m.as_ref().size()).collect();
            layout.check(&sizes)?;
        }
        let layout_len = info.layout.map_or(0, FrameLayout::wire_len);
        let payload_len = FRAME2_FIXED + memories.len() * DESC2_LEN + layout_len + info.meta.len();
        if payload_len > MAX_PAYLOAD {
            return Err(Error::Protocol(format!(
                "frame of {payload_len} bytes is over {MAX_PAYLOAD}"
            )));
        }
        // Reclaim first: blocks its drops free are unregistered now.
        self.reclaim_fenced();
        self.sweep();
        let id = self.next_id;
        let mut msg = std::mem::take(&mut self.scratch);
        msg.clear();
        msg.extend_from_slice(&header_bytes(T_FRAME, payload_len, 0));
        msg.extend_from_slice(&id.to_le_bytes());
        for t in [
            info.timestamps.pts,
            info.timestamps.dts,
            info.timestamps.duration,
        ] {
            msg.extend_from_slice(&time_wire(t).to_le_bytes());
        }
        msg.extend_from_slice(&(memories.len() as u32).to_le_bytes());
        msg.extend_from_slice(&(layout_len as u32).to_le_bytes());
        msg.extend_from_slice(&(info.meta.len() as u32).to_le_bytes());
        let flags = if acquire.is_some() {
            F_ACQUIRE_FENCE
        } else {
            0
        };
        msg.extend_from_slice(&flags.to_le_bytes());
        let mut fds = Vec::with_capacity(memories.len() + 1);
        // Buffers this frame registers: forgotten again if nothing is sent.
        let mut new_keys: Vec<usize> = Vec::new();
        let built = (|| -> Result<()> {
            for m in &memories {
                let m = m.as_ref();
                let fd = m.fd().ok_or_else(|| Error::WrongKind {
                    expected: "fd-backed (export DRM dumb memory to a dma-buf first)",
                    found: m.allocator().mem_type().to_owned(),
                })?;
                let (size, offset, maxsize) = m.sizes();
                let kind = if is_dmabuf_memory(m) { K_DMABUF } else { K_FD };
                let block = if self.register { fd_block(m) } else { None };
                let (source, kind, buffer, maxsize, fd) = match block {
                    Some(block) => {
                        let life = block.liveness();
                        let key = Weak::as_ptr(&life) as usize;
                        match self.registered.get(&key) {
                            Some(b) => (S_BUFFER, 0, b.id, 0, None),
                            None if self.registered.len() < self.max_registered
                                && self.next_buffer != u32::MAX =>
                            {
                                let buffer = self.next_buffer;
                                self.next_buffer += 1;
                                self.registered.insert(key, SentBuffer { id: buffer, life });
                                new_keys.push(key);
                                (S_REGISTER, kind, buffer, block.maxsize(), Some(fd))
                            }
                            None => (S_FD, kind, 0, maxsize, Some(fd)),
                        }
                    }
                    None => (S_FD, kind, 0, maxsize, Some(fd)),
                };
                msg.extend_from_slice(&[source, kind, 0, 0]);
                msg.extend_from_slice(&(m.flags() - MemoryFlags::LOCKABLE).bits().to_le_bytes());
                msg.extend_from_slice(&buffer.to_le_bytes());
                msg.extend_from_slice(&0u32.to_le_bytes());
                msg.extend_from_slice(&(offset as u64).to_le_bytes());
                msg.extend_from_slice(&(size as u64).to_le_bytes());
                msg.extend_from_slice(&(maxsize as u64).to_le_bytes());
                fds.extend(fd);
            }
            if let Some(fence) = acquire {
                if fds.len() >= MAX_MEMORIES {
                    return Err(Error::Protocol(format!(
                        "{} memory fds and an acquire fence, at most {MAX_MEMORIES} fds",
                        fds.len()
                    )));
                }
                // After the memories' fds, in order.
                fds.push(fence);
            }
            Ok(())
        })();
        if let Err(e) = built {
            for key in new_keys {
                self.registered.remove(&key);
            }
            self.scratch = msg;
            return Err(e);
        }
        msg[12..16].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        if let Some(layout) = info.layout {
            layout.write_to(&mut msg);
        }
        msg.extend_from_slice(info.meta);
        // Unregisters follow the frame in the same write (after it, so the
        // fds stay with the frame's header).
        let unregistered = self.append_unregisters(&mut msg);
        let sent = self.send_message(&msg, &fds, try_only);
        drop(fds);
        self.scratch = msg;
        match sent {
            Ok(true) => {
                self.unregister.drain(..unregistered);
                self.next_id += 1;
                self.held.insert(id, Box::new(memories));
                Ok(TrySend::Sent(id))
            }
            Ok(false) | Err(_) if self.broken.is_none() => {
                // Nothing went out: the peer never saw the registrations.
                for key in new_keys {
                    self.registered.remove(&key);
                }
                match sent {
                    Ok(_) => Ok(TrySend::WouldBlock(memories)),
                    Err(e) => Err(e),
                }
            }
            Ok(false) => unreachable!("a sender out of sync never reports room"),
            Err(e) => {
                // Cut (the fds went with the first bytes): held until
                // released, or until the sender goes.
                self.next_id += 1;
                self.held.insert(id, Box::new(memories));
                Err(e)
            }
        }
    }

    /// Tell the peer the stream ended (after unregistering the buffers
    /// whose blocks were freed).
    ///
    /// # Errors
    /// As [`send_frame`](Sender::send_frame).
    pub fn send_eos(&mut self) -> Result<()> {
        self.check_sync()?;
        self.reclaim_fenced();
        self.sweep();
        let mut msg = Vec::new();
        let n = self.append_unregisters(&mut msg);
        msg.extend_from_slice(&header_bytes(T_EOS, 0, 0));
        self.send_message(&msg, &[], false)?;
        self.unregister.drain(..n);
        Ok(())
    }

    /// Read the next release. `block`: wait for at most the timeout,
    /// for a release or for a release fence held to signal (the id of
    /// that frame then); otherwise `Ok(None)` as soon as nothing more is
    /// there. `Ok(None)` also when the peer closed between messages (once
    /// no release fence is pending, when `block`). A release that arrived
    /// in part stays buffered for the next call. `reclaimed`: a frame
    /// whose release fence signaled counts as released without `block` too.
    fn take_release(&mut self, block: bool, reclaimed: bool) -> Result<Option<u64>> {
        self.check_sync()?;
        let first = self.reclaim();
        if (block || reclaimed) && first.is_some() {
            return Ok(first);
        }
        let deadline = deadline(self.timeout);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEMORIES))];
        loop {
            if self.closed || self.fenced.len() >= self.max_fenced {
                // No more releases (the peer closed), or none is read until
                // a fence held signals (at the bound): a buffer comes back
                // only from a fence now.
                if !block || self.fenced.is_empty() {
                    return Ok(None);
                }
                return match self.wait_socket_or_fence(false, deadline)? {
                    Woke::Reclaimed(id) => Ok(Some(id)),
                    Woke::Socket | Woke::TimedOut => Err(Error::TimedOut {
                        inside_message: false,
                    }),
                };
            }
            // Everything the sender reads is a release (24 bytes, or 32
            // with a fence): read the rest of one in one call, never past
            // it; anything else is out of sync anyway.
            let want = if self.partial_len < HEADER_LEN {
                RELEASE_LEN
            } else {
                HEADER_LEN + le_u32(&self.partial, 8) as usize
            };
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let r = rustix::net::recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut self.partial[self.partial_len..want])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            );
            let mut fds: Vec<OwnedFd> = Vec::new();
            for c in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = c {
                    fds.extend(received);
                }
            }
            let msg = match r {
                Ok(m) => m,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) if !block => return Ok(None),
                Err(rustix::io::Errno::AGAIN) => {
                    match self.wait_socket_or_fence(true, deadline)? {
                        Woke::Socket => continue,
                        Woke::Reclaimed(id) => return Ok(Some(id)),
                        // What arrived of a release is kept: still in sync.
                        Woke::TimedOut => {
                            return Err(Error::TimedOut {
                                inside_message: false,
                            })
                        }
                    }
                }
                // A Unix socket reports ECONNRESET once the queued data is
                // read when the peer closed with some of ours unread: the
                // end of the stream.
                Err(rustix::io::Errno::CONNRESET) if self.partial_len == 0 => {
                    self.closed = true;
                    continue;
                }
                Err(rustix::io::Errno::CONNRESET) => {
                    return Err(
                        self.out_of_sync(Error::Protocol("end of stream inside a release".into()))
                    )
                }
                Err(e) => return Err(self.out_of_sync(Error::os("recvmsg", e))),
            };
            // A release's fd comes with its first byte, and only a fenced
            // release brings one.
            if msg.flags.contains(ReturnFlags::CTRUNC)
                || (!fds.is_empty() && (self.partial_len != 0 || fds.len() > 1))
            {
                let n = fds.len();
                drop(fds);
                return Err(self.out_of_sync(Error::Protocol(format!(
                    "{n} fds came with a message to the sender, where at most a release's fence may"
                ))));
            }
            if !fds.is_empty() {
                self.partial_fds = fds;
            }
            if msg.bytes == 0 {
                if self.partial_len == 0 {
                    self.closed = true;
                    continue;
                }
                return Err(
                    self.out_of_sync(Error::Protocol("end of stream inside a release".into()))
                );
            }
            let had = self.partial_len;
            self.partial_len += msg.bytes;
            if had < HEADER_LEN && self.partial_len >= HEADER_LEN {
                let head: &[u8; HEADER_LEN] = self.partial[..HEADER_LEN]
                    .try_into()
                    .expect("a header's bytes");
                match parse_header(head) {
                    Ok(h) if h.kind == T_RELEASE => {
                        if h.n_fds as usize != self.partial_fds.len() {
                            return Err(self.out_of_sync(Error::Protocol(format!(
                                "a release announces {} fds, {} fds came",
                                h.n_fds,
                                self.partial_fds.len()
                            ))));
                        }
                    }
                    Ok(h) => {
                        return Err(self.out_of_sync(Error::Protocol(format!(
                            "sender got message type {}",
                            h.kind
                        ))))
                    }
                    Err(e) => return Err(self.out_of_sync(e)),
                }
            }
            if self.partial_len >= HEADER_LEN
                && self.partial_len == HEADER_LEN + le_u32(&self.partial, 8) as usize
            {
                let len = self.partial_len;
                self.partial_len = 0;
                let fence = self.partial_fds.pop();
                // A whole message was read: still in sync.
                return self.released(len, fence).map(Some);
            }
        }
    }

    /// A whole release of `len` bytes is in `partial`, with its fence's fd
    /// if it has one (the header was checked: 16 payload bytes and one fd,
    /// or 8 and none). The frame's memories go now, or once the fence has
    /// signaled.
    fn released(&mut self, len: usize, fence: Option<OwnedFd>) -> Result<u64> {
        let id = le_u64(&self.partial, HEADER_LEN);
        let fence = match fence {
            None => None,
            Some(fd) => {
                let flags = le_u32(&self.partial, HEADER_LEN + 8);
                let reserved = le_u32(&self.partial, HEADER_LEN + 12);
                debug_assert_eq!(len, FENCED_RELEASE_LEN);
                if flags != R_RELEASE_FENCE || reserved != 0 {
                    return Err(Error::Protocol(format!(
                        "release of frame {id}: flags {flags:#x} and reserved {reserved:#x} (must be {R_RELEASE_FENCE} and 0)"
                    )));
                }
                // A fence the sender cannot wait on cannot free the buffer:
                // the frame stays held (until the sender goes).
                let fence = SyncFile::from_fd(fd).map_err(|e| match e {
                    Error::NotSyncFile { reason } => Error::NotSyncFile {
                        reason: format!("the release fence of frame {id}: {reason}"),
                    },
                    e => e,
                })?;
                Some(fence)
            }
        };
        let Some(memories) = self.held.remove(&id) else {
            return Err(Error::Protocol(format!("release of unknown frame {id}")));
        };
        match fence {
            Some(fence) if !fence.is_signaled().unwrap_or(false) => {
                let protected = protect_dmabufs(&*memories, &fence);
                self.fenced.push(Fenced {
                    fence,
                    id,
                    _memories: memories,
                    protected,
                });
            }
            _ => drop(memories),
        }
        Ok(id)
    }

    /// Drop the memories of every frame released with a fence that has
    /// signaled since; the id of the first such frame.
    fn reclaim(&mut self) -> Option<u64> {
        let mut first = None;
        // A fence that cannot be polled is taken as signaled: holding the
        // buffer for ever would be worse.
        self.fenced.retain(|f| {
            let pending = !f.fence.is_signaled().unwrap_or(true);
            if !pending && first.is_none() {
                first = Some(f.id);
            }
            pending
        });
        first
    }

    /// Drop the memories of every frame released with a fence that has
    /// signaled since (a pool gets its buffers back); returns how many.
    /// Every send and every release read does this first.
    pub fn reclaim_fenced(&mut self) -> usize {
        let before = self.fenced.len();
        self.reclaim();
        before - self.fenced.len()
    }

    /// Wait until the socket is readable (when `sock`) or a release fence
    /// held signals (its frame is reclaimed then), until `deadline`.
    fn wait_socket_or_fence(&mut self, sock: bool, deadline: Option<Instant>) -> Result<Woke> {
        loop {
            if let Some(id) = self.reclaim() {
                return Ok(Woke::Reclaimed(id));
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(Woke::TimedOut);
                    }
                    Timespec::try_from(d - now).ok()
                }
                None => None,
            };
            // At most `max_fenced` fences and the socket.
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.fenced.len() + 1);
            if sock {
                fds.push(PollFd::from_borrowed_fd(self.sock.as_fd(), PollFlags::IN));
            }
            fds.extend(
                self.fenced
                    .iter()
                    .map(|f| PollFd::from_borrowed_fd(f.fence.as_fd(), PollFlags::IN)),
            );
            let readable = match rustix::event::poll(&mut fds, left.as_ref()) {
                Ok(0) | Err(rustix::io::Errno::INTR) => false,
                Ok(_) => sock && !fds[0].revents().is_empty(),
                Err(e) => return Err(Error::os("poll", e)),
            };
            drop(fds);
            if let Some(id) = self.reclaim() {
                return Ok(Woke::Reclaimed(id));
            }
            if readable {
                return Ok(Woke::Socket);
            }
        }
    }

    /// Whether reading releases waits for a fence rather than the socket
    /// (the peer closed, or the sender holds `max_fenced` fenced frames).
    #[cfg(feature = "tokio")]
    pub(crate) fn reads_paused(&self) -> bool {
        self.closed || self.fenced.len() >= self.max_fenced
    }

    /// Duplicates of the pending release fences (for an async wait).
    #[cfg(feature = "tokio")]
    pub(crate) fn fence_fds(&self) -> Result<Vec<OwnedFd>> {
        self.fenced
            .iter()
            .map(|f| {
                f.fence.as_fd().try_clone_to_owned().map_err(|e| Error::Os {
                    op: "dup",
                    source: e,
                })
            })
            .collect()
    }

    /// [`try_release`](Sender::try_release), or a frame whose release
    /// fence signaled since (reclaimed now).
    #[cfg(feature = "tokio")]
    pub(crate) fn try_release_or_reclaim(&mut self) -> Result<Option<u64>> {
        self.take_release(false, true)
    }

    /// Frames released with a release fence that has not signaled yet:
    /// their memories are still held here.
    pub fn fenced(&self) -> usize {
        self.fenced.len()
    }

    /// Wait until every release fence held has signaled, for at most
    /// `timeout`, and drop those frames' memories
    /// ([`reclaim_fenced`](Sender::reclaim_fenced)); returns how many.
    ///
    /// # Errors
    /// [`Error::FenceTimedOut`] when a fence did not signal in time (what
    /// did is reclaimed all the same).
    pub fn wait_fenced(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now().checked_add(timeout);
        let mut done = 0;
        while let Some(Fenced { fence, id, .. }) = self.fenced.first() {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let waited = fence.wait(left).map_err(|e| match e {
                Error::FenceTimedOut { .. } => Error::FenceTimedOut {
                    what: format!("the release fence of frame {id}"),
                    timeout,
                },
                e => e,
            });
            done += self.reclaim_fenced();
            waited?;
        }
        Ok(done)
    }

    /// Wait for the next release, or for a release fence held to signal:
    /// the id of the frame released, or of the frame whose fence signaled
    /// (its memories are dropped then, so a pool has the buffer back).
    /// `Ok(None)` when the peer closed and no release fence is pending.
    /// The producer's loop is thus: acquire from the pool, and when it is
    /// empty, `wait_release` and try again, fences or not.
    ///
    /// # Errors
    /// [`Error::TimedOut`] after the timeout (the sender stays usable),
    /// [`Error::Protocol`] for anything but a release of a frame in flight
    /// (after a malformed message, the sender is out of sync and every
    /// later call fails), and I/O errors.
    pub fn wait_release(&mut self) -> Result<Option<u64>> {
        self.take_release(true, true)
    }

    /// The next release if a whole one is here now (never waits; half a
    /// release is kept for the next call). `Ok(None)` also when the peer
    /// closed ([`peer_closed`](Sender::peer_closed) tells).
    ///
    /// # Errors
    /// As [`wait_release`](Sender::wait_release).
    pub fn try_release(&mut self) -> Result<Option<u64>> {
        self.take_release(false, false)
    }

    /// Handle every release already received, without waiting (half a
    /// release waits in the sender for its other half); returns how many
    /// frames were released.
    ///
    /// # Errors
    /// As [`wait_release`](Sender::wait_release), without the timeout.
    pub fn poll_releases(&mut self) -> Result<usize> {
        let mut n = 0;
        while self.take_release(false, false)?.is_some() {
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
    /// Most buffers the sender may keep registered at once
    /// ([`DEFAULT_MAX_REGISTERED`] by default): each holds an fd and a
    /// mapping here. A registration past it refuses its frame with
    /// [`Error::Registry`].
    pub max_registered: usize,
}

impl Default for ReceivePolicy {
    fn default() -> Self {
        ReceivePolicy {
            copy_unsealed: false,
            guard_unsealed: false,
            require_write_seal: false,
            max_copy_bytes: DEFAULT_MAX_COPY_BYTES,
            max_registered: DEFAULT_MAX_REGISTERED,
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
    if file.fs == crate::sys::FsKind::Other && crate::sys::is_sync_file(fd.as_fd()) == Ok(true) {
        return Err(Error::Refused(
            "is a sync_file (a fence) where a memory's fd was expected".into(),
        ));
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
    /// Timestamps (unset for a version 1 frame).
    pub timestamps: Timestamps,
    /// The planes' layout, checked against the memories, when the sender
    /// gave one.
    pub layout: Option<FrameLayout>,
    /// The frame's fences (see [`Frame::take_acquire_fence`],
    /// [`Frame::set_release_fence`]); gone once the frame is released.
    fences: Weak<ReleaseOnDrop>,
}

impl Frame {
    /// Whether the frame came with an acquire fence that maps of its
    /// memories still wait for (it has not been seen signaled by a map,
    /// nor taken).
    pub fn has_acquire_fence(&self) -> bool {
        self.fences.upgrade().is_some_and(|t| {
            t.acquire
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        })
    }

    /// Take the frame's acquire fence (sent with
    /// [`Sender::send_frame_fenced`]): maps of the frame's memories no
    /// longer wait for it, the caller does (or hands it to a device).
    /// `None` when there was none, a map saw it signaled, or it was taken.
    ///
    /// # Errors
    /// [`Error::Os`] when a map waiting right now holds the fence and no
    /// duplicate of its fd can be made (out of fds): the frame keeps the
    /// fence, and its maps still wait for it.
    pub fn take_acquire_fence(&self) -> Result<Option<SyncFile>> {
        let Some(token) = self.fences.upgrade() else {
            return Ok(None);
        };
        let mut acquire = token.acquire.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(fence) = acquire.take() else {
            return Ok(None);
        };
        // A map waiting right now holds a second handle: hand out a
        // duplicate then, or leave the fence where it was.
        match Arc::try_unwrap(fence) {
            Ok(fence) => Ok(Some(fence)),
            Err(shared) => match shared.try_clone() {
                Ok(dup) => Ok(Some(dup)),
                Err(e) => {
                    *acquire = Some(shared);
                    Err(e)
                }
            },
        }
    }

    /// Send `fence` back with the frame's release: the sender does not
    /// reuse the frame's buffers until it signals (work of this side, a
    /// GPU reading them, still running when the memories are dropped). A
    /// second call replaces the first fence.
    ///
    /// # Errors
    /// [`Error::Protocol`] when the frame was already released (every
    /// memory of it is gone, or it held none: copies); the fence is
    /// dropped.
    pub fn set_release_fence(&self, fence: SyncFile) -> Result<()> {
        let token = self.fences.upgrade().ok_or_else(|| {
            Error::Protocol(format!(
                "frame {} was already released: its release fence cannot go with it",
                self.id
            ))
        })?;
        *token
            .release_fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(fence);
        Ok(())
    }
}

/// Releases waiting to be written, as bytes: a release cut by a short write
/// is completed before anything else goes out. A release fence's fd goes
/// with the first byte of its release, in a write of its own.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    written: usize,
    /// Stream position of `bytes[0]`.
    base: u64,
    /// Release fences, by the stream position of their release's first
    /// byte (never before `base + written`).
    fds: std::collections::VecDeque<(u64, OwnedFd)>,
    /// Stream positions where the queued releases end.
    ends: std::collections::VecDeque<u64>,
    /// Why the peer can no longer be written to; releases are then dropped.
    gone: Option<rustix::io::Errno>,
}

impl Outbox {
    /// Queue a release (with its fence's fd, if any).
    fn push(&mut self, bytes: &[u8], fence: Option<OwnedFd>) {
        let at = self.base + self.bytes.len() as u64;
        if let Some(fd) = fence {
            self.fds.push_back((at, fd));
        }
        self.bytes.extend_from_slice(bytes);
        self.ends.push_back(at + bytes.len() as u64);
    }

    /// Write what is queued without blocking; whether some remains.
    fn write_nonblocking(&mut self, sock: &UnixStream) -> bool {
        while self.written < self.bytes.len() {
            let at = self.base + self.written as u64;
            let index = |pos: u64| (pos - self.base) as usize;
            // Up to the next fence's release; a fence's release starts a
            // write of its own, which carries the fd.
            let (end, fence) = match self.fds.front() {
                Some((pos, fd)) if *pos == at => (
                    self.fds.get(1).map_or(self.bytes.len(), |(p, _)| index(*p)),
                    Some(fd.as_fd()),
                ),
                Some((pos, _)) => (index(*pos), None),
                None => (self.bytes.len(), None),
            };
            let chunk = &self.bytes[self.written..end];
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            let r = match fence {
                Some(fd) => {
                    let fds = [fd];
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    control.push(SendAncillaryMessage::ScmRights(&fds));
                    rustix::net::sendmsg(sock, &[IoSlice::new(chunk)], &mut control, flags)
                }
                None => rustix::net::send(sock, chunk, flags),
            };
            match r {
                Ok(0) => return true,
                Ok(n) => {
                    self.written += n;
                    if fence.is_some() {
                        // It went with the first byte.
                        self.fds.pop_front();
                    }
                    let done = self.base + self.written as u64;
                    while self.ends.front().is_some_and(|&e| e <= done) {
                        self.ends.pop_front();
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    // Keep the unwritten tail only, so a queue that never
                    // empties does not keep what went out long ago.
                    if self.written >= 1 << 16 {
                        self.bytes.drain(..self.written);
                        self.base += self.written as u64;
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
                    self.base += self.bytes.len() as u64;
                    self.bytes = Vec::new();
                    self.written = 0;
                    self.fds.clear();
                    self.ends.clear();
                    return false;
                }
            }
        }
        self.base += self.bytes.len() as u64;
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

    /// Queue the release of frame `id` (with its release fence, if any)
    /// and write what can be written without blocking.
    fn release(&self, id: u64, fence: Option<OwnedFd>) {
        let pending = {
            let mut out = self.outbox();
            if out.gone.is_some() {
                return;
            }
            out.push(&release_bytes(id, fence.is_some()), fence);
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
///
/// It also holds the frame's fences: the acquire fence that maps of the
/// frame's memories wait for (until it has signaled once, or the receiver
/// took it), and the release fence that goes back with the release.
struct ReleaseOnDrop {
    id: u64,
    sock: Arc<Conn>,
    acquire: Mutex<Option<Arc<SyncFile>>>,
    fence_timeout: Duration,
    release_fence: Mutex<Option<SyncFile>>,
}

impl ReleaseOnDrop {
    fn new(id: u64, sock: Arc<Conn>, fence_timeout: Duration) -> Self {
        ReleaseOnDrop {
            id,
            sock,
            acquire: Mutex::new(None),
            fence_timeout,
            release_fence: Mutex::new(None),
        }
    }

    /// Wait for the acquire fence, if one is still to wait for, for at most
    /// the receiver's fence timeout (the lock is not held meanwhile).
    fn wait_acquire(&self) -> Result<()> {
        self.wait_acquire_within(None)
    }

    /// [`wait_acquire`](Self::wait_acquire) for at most `limit` too, when
    /// shorter than the fence timeout (a copy inside `recv`, bounded by the
    /// receiver's timeout).
    fn wait_acquire_within(&self, limit: Option<Duration>) -> Result<()> {
        let lock = || self.acquire.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(fence) = lock().clone() else {
            return Ok(());
        };
        let timeout = limit.map_or(self.fence_timeout, |l| l.min(self.fence_timeout));
        fence.wait(timeout).map_err(|e| match e {
            Error::FenceTimedOut { timeout, .. } => Error::FenceTimedOut {
                what: format!("the acquire fence of frame {}", self.id),
                timeout,
            },
            e => e,
        })?;
        lock().take();
        Ok(())
    }
}

impl std::fmt::Debug for ReleaseOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseOnDrop")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let fence = self
            .release_fence
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.sock.release(self.id, fence.map(OwnedFd::from));
    }
}

/// The storage of a received fd, admitted.
#[derive(Debug)]
enum Storage {
    /// Mapped zero-copy as fd memory (kept mapped).
    Fd(FdBackend),
    /// Mapped zero-copy as a dma-buf.
    DmaBuf(DmaBufBackend),
    /// Copied with `pread` for each memory (an unsealed file under
    /// [`ReceivePolicy::copy_unsealed`]).
    Copy(OwnedFd),
}

/// A buffer registered on a connection: its fd, admitted, and its one
/// mapping (made at the first map, kept until the buffer is dropped: when
/// it is unregistered, or the stream ends, and no memory of it is alive).
#[derive(Debug)]
struct RegisteredBuffer {
    storage: Storage,
    maxsize: usize,
}

impl RegisteredBuffer {
    fn backend(&self) -> &dyn MemoryBackend {
        match &self.storage {
            Storage::Fd(b) => b,
            Storage::DmaBuf(b) => b,
            Storage::Copy(_) => unreachable!("copied buffers have no views"),
        }
    }
}

/// The storage of a received memory of a registered buffer: the buffer's
/// mapping, and the frame's release (sent when the last memory of the
/// frame, shares included, is gone).
#[derive(Debug)]
struct RegisteredView {
    /// Dropped before the release: by the time the sender reads the
    /// release, this frame no longer holds the buffer.
    buffer: Arc<RegisteredBuffer>,
    _release: Arc<ReleaseOnDrop>,
}

// SAFETY: every call is forwarded to the registered buffer's backend (fd
// or dma-buf memory), which keeps its promises for `maxsize` bytes; the
// views are made with the buffer's maxsize.
unsafe impl MemoryBackend for RegisteredView {
    fn map(&self, maxsize: usize, flags: MapFlags) -> Result<NonNull<u8>> {
        self._release.wait_acquire()?;
        self.buffer.backend().map(maxsize, flags)
    }

    fn static_ptr(&self) -> Option<NonNull<u8>> {
        // A frame with an acquire fence to wait for is mapped through
        // `map`, which waits.
        if self
            ._release
            .acquire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return None;
        }
        self.buffer.backend().static_ptr()
    }

    fn unmap(&self, flags: MapFlags) {
        self.buffer.backend().unmap(flags);
    }

    fn is_span(&self, first: (usize, usize), second: (usize, usize)) -> bool {
        self.buffer.backend().is_span(first, second)
    }

    fn alias(&self) -> Option<&BlockAlias> {
        self.buffer.backend().alias()
    }

    fn kind(&self) -> MemoryKind {
        self.buffer.backend().kind()
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.buffer.backend().fd()
    }
}

/// What [`Receiver::try_recv`] found.
#[derive(Debug)]
pub enum Received {
    /// A frame.
    Frame(Frame),
    /// Nothing yet.
    Empty,
    /// The end of the stream.
    End,
}

/// Receives frames.
pub struct Receiver {
    sock: Arc<Conn>,
    policy: ReceivePolicy,
    fd_alloc: FdAllocator,
    dmabuf_alloc: DmaBufAllocator,
    broken: Option<String>,
    timeout: Option<Duration>,
    /// Buffers registered by the sender, by id.
    registry: HashMap<u32, Arc<RegisteredBuffer>>,
    /// Bytes read ahead.
    inbuf: InBuf,
    /// Ids whose registration was refused (at most [`MAX_UNREGISTER`]):
    /// the sender still unregisters them when it frees their block.
    refused: std::collections::HashSet<u32>,
    /// How long maps wait for a frame's acquire fence.
    fence_timeout: Duration,
}

impl AsFd for Receiver {
    /// The socket, for `poll`/`epoll`: readable when a frame (or the end
    /// of the stream) is there for [`Receiver::try_recv`]. The receiver
    /// reads ahead (one read often brings several messages), so call
    /// `try_recv` until it returns [`Received::Empty`] before waiting for
    /// the socket again. Releases left queued by drops are written by the
    /// next `try_recv`, `recv` or [`Receiver::flush`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.stream.as_fd()
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .field("pending_releases", &self.pending_releases())
            .field("registered", &self.registry.len())
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
            registry: HashMap::new(),
            inbuf: InBuf::default(),
            refused: std::collections::HashSet::new(),
            fence_timeout: crate::dmabuf::DEFAULT_FENCE_TIMEOUT,
        }
    }

    /// How long maps of a received frame's memories wait for the frame's
    /// acquire fence ([`Sender::send_frame_fenced`]) before they fail with
    /// [`Error::FenceTimedOut`] (5 s,
    /// [`DEFAULT_FENCE_TIMEOUT`](crate::dmabuf::DEFAULT_FENCE_TIMEOUT), by
    /// default; `Duration::MAX` waits for ever). Applies to frames received
    /// from now on.
    pub fn set_fence_timeout(&mut self, timeout: Duration) {
        self.fence_timeout = timeout;
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
    /// waits for input, as the socket has room for them. Unregisters are
    /// handled on the way.
    ///
    /// # Errors
    /// * [`Error::Protocol`] for a malformed message, and
    ///   [`Error::VersionMismatch`] for a peer speaking another version.
    ///   When the framing itself is wrong (a bad header, a wrong fd count,
    ///   truncated control data, an end of file or a timeout inside a
    ///   message, a message type a receiver never gets), the stream is out
    ///   of sync and every later call fails. When only a frame's payload
    ///   is wrong (its memory count, sources, kinds, regions, layout or
    ///   lengths), the message was read whole: the frame is released and
    ///   the next `recv` goes on.
    /// * [`Error::Refused`], [`Error::BeyondFile`], [`Error::TooLarge`],
    ///   [`Error::Registry`], [`Error::InvalidLayout`],
    ///   [`Error::UnknownFourcc`] and other import errors for a frame whose
    ///   content is refused: it is released, every fd it brought is closed
    ///   (except those of buffers it registered, when they were admitted),
    ///   and the next `recv` goes on. [`Error::Registry`] also for an
    ///   unregister that names an unknown buffer or one still in use (the
    ///   others it names are unregistered; the stream goes on).
    /// * [`Error::TimedOut`] after the timeout (see
    ///   [`set_timeout`](Receiver::set_timeout)).
    pub fn recv(&mut self) -> Result<Option<Frame>> {
        match self.next(false)? {
            Received::Frame(f) => Ok(Some(f)),
            Received::End => Ok(None),
            Received::Empty => unreachable!("recv waits"),
        }
    }

    /// The next frame if one is there now, without waiting for one to
    /// start arriving (a message that started arriving is read whole, as
    /// [`recv`](Receiver::recv) does, within the timeout). Use with
    /// `poll`/`epoll` on the receiver ([`AsFd`]).
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use mediamem::ipc::{ReceivePolicy, Received, Receiver, Sender};
    /// use mediamem::ShmAllocator;
    ///
    /// let (a, b) = UnixStream::pair().unwrap();
    /// let (mut tx, mut rx) = (Sender::new(a), Receiver::new(b, ReceivePolicy::default()));
    /// assert!(matches!(rx.try_recv()?, Received::Empty));
    /// tx.send_frame(vec![ShmAllocator::get().alloc(64, None)?], b"")?;
    /// assert!(matches!(rx.try_recv()?, Received::Frame(_)));
    /// drop(tx);
    /// assert!(matches!(rx.try_recv()?, Received::End));
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`recv`](Receiver::recv).
    pub fn try_recv(&mut self) -> Result<Received> {
        self.next(true)
    }

    fn next(&mut self, try_only: bool) -> Result<Received> {
        loop {
            if let Some(why) = &self.broken {
                return Err(Error::Protocol(format!(
                    "connection is out of sync after: {why}"
                )));
            }
            self.sock.flush_nonblocking();
            let raw = match read_message(&self.sock, &mut self.inbuf, self.timeout, try_only) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.registry.clear();
                    self.refused.clear();
                    return Ok(Received::End);
                }
                Err(Error::TimedOut {
                    inside_message: false,
                }) if try_only => return Ok(Received::Empty),
                // Nothing of a message arrived: still in sync.
                Err(
                    e @ Error::TimedOut {
                        inside_message: false,
                    },
                ) => return Err(e),
                Err(e) => {
                    self.broken = Some(e.to_string());
                    // Out of sync: what was read ahead (fds too) goes.
                    self.inbuf = InBuf::default();
                    return Err(e);
                }
            };
            match raw.header.kind {
                T_EOS => {
                    self.registry.clear();
                    self.refused.clear();
                    return Ok(Received::End);
                }
                T_UNREGISTER => self.unregister(&raw.payload)?,
                T_FRAME => {
                    let parsed = parse_frame_v2(&raw.payload, raw.fds.len());
                    let frame = self.release_unparsed(&raw.payload, parsed)?;
                    // On failure the import's release token is dropped,
                    // which releases the frame exactly once.
                    return self.import_v2(frame, raw.fds).map(Received::Frame);
                }
                T_FD_FRAME => {
                    let parsed = parse_frame(&raw.payload, raw.fds.len());
                    let payload = self.release_unparsed(&raw.payload, parsed)?;
                    return self.import(payload, raw.fds).map(Received::Frame);
                }
                other => {
                    let e = Error::Protocol(format!("receiver got message type {other}"));
                    self.broken = Some(e.to_string());
                    return Err(e);
                }
            }
        }
    }

    /// Buffers registered on this connection now.
    pub fn registered(&self) -> usize {
        self.registry.len()
    }

    /// Unregister every id of an unregister message's payload (a multiple
    /// of 4 bytes, checked with the header). Unknown ids and buffers in use
    /// are errors; the other ids are unregistered all the same.
    fn unregister(&mut self, payload: &[u8]) -> Result<()> {
        let mut first_error = None;
        for at in (0..payload.len()).step_by(4) {
            let id = le_u32(payload, at);
            let problem = match self.registry.get(&id) {
                None if self.refused.remove(&id) => continue,
                None => RegistryProblem::Unregistered,
                // Every live memory of the buffer holds it.
                Some(buf) if Arc::strong_count(buf) > 1 => RegistryProblem::InUse {
                    live: Arc::strong_count(buf) - 1,
                },
                Some(_) => {
                    // The last handle: closed and unmapped here.
                    self.registry.remove(&id);
                    continue;
                }
            };
            first_error.get_or_insert(Error::Registry { id, problem });
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Admit a received fd for a memory (or a buffer) of `maxsize` bytes:
    /// the checks every received fd gets, then its storage.
    fn admit_storage(
        &self,
        fd: OwnedFd,
        announced_dmabuf: bool,
        maxsize: usize,
        what: impl FnOnce() -> String,
    ) -> Result<Storage> {
        let (admission, file) =
            admit(&fd, announced_dmabuf, &self.policy).map_err(|e| match e {
                Error::Refused(why) => Error::Refused(format!("{} {why}", what())),
                e => e,
            })?;
        if admission == Admission::Copy {
            let file_size = crate::fd::fd_size(fd.as_fd())?;
            if maxsize as u64 > file_size {
                return Err(Error::BeyondFile {
                    what: "maxsize",
                    requested: maxsize as u64,
                    file_size,
                });
            }
            return Ok(Storage::Copy(fd));
        }
        let mut fd_flags = FdMemoryFlags::KEEP_MAPPED;
        if admission == Admission::Guarded {
            fd_flags |= FdMemoryFlags::GUARD_SIGBUS;
        }
        // The fd was classified above: no second fstat/fstatfs.
        let block = fd_block_of(FdHandle::Owned(fd), file, maxsize, fd_flags)?;
        Ok(if admission == Admission::DmaBuf {
            Storage::DmaBuf(DmaBufBackend::new(block))
        } else {
            Storage::Fd(FdBackend::new(block))
        })
    }

    /// A frame payload that did not parse: its lengths were consistent, so
    /// the stream is in sync, but the frame cannot be trusted; it is
    /// released if it has an id.
    fn release_unparsed<T>(&self, payload: &[u8], parsed: Result<T>) -> Result<T> {
        if parsed.is_err() && payload.len() >= 8 {
            self.release(le_u64(payload, 0));
        }
        parsed
    }

    fn import_v2(&mut self, frame: WireFrame, mut fds: Vec<OwnedFd>) -> Result<Frame> {
        let token = Arc::new(ReleaseOnDrop::new(
            frame.id,
            self.sock.clone(),
            self.fence_timeout,
        ));
        // The acquire fence's fd comes after the memories'.
        let fence_fd = if frame.acquire_fence { fds.pop() } else { None };
        let mut fds = fds.into_iter();
        let mut fd_of: Vec<Option<OwnedFd>> = frame
            .memories
            .iter()
            .map(|m| if m.source.has_fd() { fds.next() } else { None })
            .collect();
        // Registrations first: admitted ones stay, whatever else the
        // frame holds.
        for (i, m) in frame.memories.iter().enumerate() {
            let Source::Register(id) = m.source else {
                continue;
            };
            let fd = fd_of[i].take().expect("counted by the parser");
            if self.registry.contains_key(&id) {
                return Err(Error::Registry {
                    id,
                    problem: RegistryProblem::Duplicate,
                });
            }
            if self.registry.len() >= self.policy.max_registered {
                if self.refused.len() < MAX_UNREGISTER {
                    self.refused.insert(id);
                }
                return Err(Error::Registry {
                    id,
                    problem: RegistryProblem::TooMany {
                        limit: self.policy.max_registered,
                    },
                });
            }
            let storage = self
                .admit_storage(fd, m.kind == K_DMABUF, m.maxsize as usize, || {
                    format!("frame {}: memory {i} (buffer {id})", frame.id)
                })
                .inspect_err(|_| {
                    if self.refused.len() < MAX_UNREGISTER {
                        self.refused.insert(id);
                    }
                })?;
            self.registry.insert(
                id,
                Arc::new(RegisteredBuffer {
                    storage,
                    maxsize: m.maxsize as usize,
                }),
            );
        }
        if let Some(fd) = fence_fd {
            let fence = SyncFile::from_fd(fd).map_err(|e| match e {
                Error::NotSyncFile { reason } => Error::NotSyncFile {
                    reason: format!("frame {}: the acquire fence: {reason}", frame.id),
                },
                e => e,
            })?;
            // Set before any memory is made: their maps then wait for it.
            *token.acquire.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(fence));
        }
        let mut memories = Vec::with_capacity(frame.memories.len());
        let mut copied = 0;
        for (i, m) in frame.memories.iter().enumerate() {
            let flags = MemoryFlags::from_bits_retain(m.flags) & KEPT_FLAGS | MemoryFlags::READONLY;
            let (offset, size) = (m.offset as usize, m.size as usize);
            let buffer = match m.source {
                Source::Fd => {
                    let fd = fd_of[i].take().expect("counted by the parser");
                    let maxsize = m.maxsize as usize;
                    let storage = self.admit_storage(fd, m.kind == K_DMABUF, maxsize, || {
                        format!("frame {}: memory {i}", frame.id)
                    })?;
                    memories.push(self.own_memory(
                        storage,
                        (offset, size, maxsize),
                        flags,
                        &token,
                        &mut copied,
                    )?);
                    continue;
                }
                Source::Register(id) | Source::Buffer(id) => id,
            };
            let Some(buf) = self.registry.get(&buffer) else {
                return Err(Error::Registry {
                    id: buffer,
                    problem: RegistryProblem::Unregistered,
                });
            };
            if m.offset
                .checked_add(m.size)
                .is_none_or(|e| e > buf.maxsize as u64)
            {
                return Err(Error::Registry {
                    id: buffer,
                    problem: RegistryProblem::OutsideBuffer {
                        offset: m.offset,
                        size: m.size,
                        maxsize: buf.maxsize as u64,
                    },
                });
            }
            if let Storage::Copy(fd) = &buf.storage {
                // A copy reads the bytes now, once they are ready: inside
                // `recv`, so within its timeout too.
                token.wait_acquire_within(self.timeout)?;
                memories.push(copy_by_pread(
                    fd,
                    (offset, size, buf.maxsize),
                    &mut copied,
                    self.policy.max_copy_bytes,
                )?);
                continue;
            }
            let alloc = if matches!(buf.storage, Storage::DmaBuf(_)) {
                self.dmabuf_alloc.allocator()
            } else {
                self.fd_alloc.allocator()
            };
            let view = RegisteredView {
                buffer: buf.clone(),
                _release: token.clone(),
            };
            let parts = MemoryParts::new(Box::new(view), buf.maxsize)
                .region(offset, size)
                .flags(flags);
            memories.push(Memory::from_parts(alloc, parts)?);
        }
        if let Some(layout) = &frame.layout {
            let sizes: Vec<usize> = memories.iter().map(Memory::size).collect();
            layout.check(&sizes)?;
        }
        // Copies (and empty frames) hold nothing of the sender's: the
        // release goes with the last memory that does, or right here.
        let fences = Arc::downgrade(&token);
        drop(token);
        Ok(Frame {
            id: frame.id,
            memories,
            meta: frame.meta,
            timestamps: frame.timestamps,
            layout: frame.layout,
            fences,
        })
    }

    /// A memory over a received fd of its own (not registered), holding
    /// the frame's release `token` until its block is freed.
    fn own_memory(
        &self,
        storage: Storage,
        (offset, size, maxsize): (usize, usize, usize),
        flags: MemoryFlags,
        token: &Arc<ReleaseOnDrop>,
        copied: &mut usize,
    ) -> Result<Memory> {
        let fenced = token
            .acquire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        let alloc = match &storage {
            Storage::Copy(fd) => {
                // A copy reads the bytes now, once they are ready: inside
                // `recv`, so within its timeout too.
                token.wait_acquire_within(self.timeout)?;
                return copy_by_pread(
                    fd,
                    (offset, size, maxsize),
                    copied,
                    self.policy.max_copy_bytes,
                );
            }
            Storage::DmaBuf(_) => self.dmabuf_alloc.allocator(),
            Storage::Fd(_) => self.fd_alloc.allocator(),
        };
        if fenced {
            // A view, as of a registered buffer (one of its own, named by
            // no id): its maps wait for the acquire fence, and it holds
            // the frame's release.
            let view = RegisteredView {
                buffer: Arc::new(RegisteredBuffer { storage, maxsize }),
                _release: token.clone(),
            };
            let parts = MemoryParts::new(Box::new(view), maxsize)
                .region(offset, size)
                .flags(flags);
            return Memory::from_parts(alloc, parts);
        }
        let backend: Box<dyn MemoryBackend> = match storage {
            Storage::DmaBuf(b) => Box::new(b),
            Storage::Fd(b) => Box::new(b),
            Storage::Copy(_) => unreachable!("returned above"),
        };
        let parts = MemoryParts::new(backend, maxsize)
            .region(offset, size)
            .flags(flags);
        let mut memory = Memory::from_parts(alloc, parts)?;
        // The frame's release goes when the last block of the frame is
        // freed, shares included.
        let release = token.clone();
        memory.set_on_block_free(Arc::new(move |_freed| {
            let _ = &release;
        }))?;
        Ok(memory)
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
        self.sock.outbox().ends.len()
    }

    fn release(&self, id: u64) {
        self.sock.release(id, None);
    }

    /// Import a version 1 frame: every memory with its own fd.
    fn import(&self, payload: FramePayload, fds: Vec<OwnedFd>) -> Result<Frame> {
        let token = Arc::new(ReleaseOnDrop::new(
            payload.id,
            self.sock.clone(),
            self.fence_timeout,
        ));
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
            let storage = self.admit_storage(fd, desc.kind == K_DMABUF, maxsize, || {
                format!("frame {}: memory {i}", payload.id)
            })?;
            memories.push(self.own_memory(
                storage,
                (offset, size, maxsize),
                flags,
                &token,
                &mut copied,
            )?);
        }
        // Copies (and empty frames) hold nothing of the sender's: the
        // release goes with the last imported memory, or right here.
        let fences = Arc::downgrade(&token);
        drop(token);
        Ok(Frame {
            id: payload.id,
            memories,
            meta: payload.meta,
            timestamps: Timestamps::default(),
            layout: None,
            fences,
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
