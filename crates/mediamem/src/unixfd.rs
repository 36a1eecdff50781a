//! GStreamer's `unixfdsink` / `unixfdsrc` protocol (gst-plugins-bad, since
//! 1.24): buffers of fd-backed memories between a GStreamer pipeline and a
//! Rust process, zero-copy.
//!
//! * [`Client`] connects to the socket of a `unixfdsink` and receives what
//!   a `unixfdsrc` would: the caps, buffers of fd memories (imported with
//!   the same hostile-safe admission as [`ipc`](crate::ipc)'s receiver),
//!   end of stream. When the last memory of a buffer is gone (shares
//!   included, on any thread) it sends `RELEASE_BUFFER` back, without ever
//!   blocking in `Drop`; the sink then lets go of the buffer.
//! * [`Server`] is a `unixfdsink`: `unixfdsrc` elements connect to it, get
//!   the caps first, then buffers; it holds each buffer's memories once per
//!   client until that client releases it.
//!
//! ```text
//! gst-launch-1.0 videotestsrc ! unixfdsink socket-path=/tmp/s    → Client::connect("/tmp/s")
//! Server::bind("/tmp/s")      → gst-launch-1.0 unixfdsrc socket-path=/tmp/s ! ...
//! ```
//!
//! # Wire format
//!
//! A stream (`SOCK_STREAM`) Unix socket carries commands, each an 8-byte
//! header `u32 type, u32 payload_size` in **native** byte order, followed
//! by `payload_size` bytes. The header goes with one `sendmsg`, carrying,
//! when the command has fds, exactly one `SCM_RIGHTS` control message with
//! all of them.
//!
//! | type | direction | payload |
//! |---|---|---|
//! | 0 `NEW_BUFFER` | sink → src | `u64 id, u64 pts, u64 dts, u64 duration, u64 offset, u64 offset_end, u32 flags, u8 type, u8 n_memory, u16 n_meta` (56 bytes), then `n_memory` × `u64 size, u64 offset` (size first), then `n_meta` serialized metas; one fd per memory |
//! | 1 `RELEASE_BUFFER` | src → sink | `u64 id` |
//! | 2 `CAPS` | sink → src | the caps as a string, NUL-terminated |
//! | 3 `EOS` | sink → src | none |
//!
//! A buffer's `type` is 0 (`DEFAULT`: fd memory) or 1 (`DMABUF`); a
//! memory's fd is imported with `maxsize = offset + size`. A serialized
//! meta is `u32 LE total_size, u32 LE name_len, name, NUL, u8 version,
//! payload` (`gst_meta_serialize`); [`Meta`] keeps it whole. Timestamps
//! are `CLOCK_MONOTONIC` nanoseconds on the wire (the sink adds its
//! pipeline's base time and latency to the running time; `unixfdsrc`
//! subtracts its own); `u64::MAX` is "none". Unknown command types are
//! skipped (their fds closed), as GStreamer does.
//!
//! # Nothing trusted, nothing blocks for ever
//!
//! A header cut short by the end of the stream, an end of file inside a
//! payload, a payload over [`MAX_PAYLOAD`], more than one control message,
//! truncated control data, fds with a command that has none, an fd count
//! that differs from `n_memory`, a buffer type ≥ 2, a malformed meta, a
//! region that overflows, a command that goes the wrong way, a CAPS
//! payload without its NUL or not UTF-8: each gives a typed [`Error`] and
//! closes every fd that came with the command. Framing errors leave the
//! connection out of sync: the client then refuses further reads.
//! Received fds go through [`ReceivePolicy`] exactly as in
//! [`ipc`](crate::ipc) (GStreamer's shm memory is a memfd sealed against
//! shrinking, so the default policy maps it zero-copy). Every wait is a
//! `poll` bounded by the end's timeout; inside a command the wait is
//! bounded even without one ([`INSIDE_COMMAND_TIMEOUT`]), so a peer that
//! stops half-way gives [`Error::TimedOut`] instead of a hang. GStreamer
//! itself loops for ever on an end of file inside a payload and ignores a
//! short header read; mediamem does neither.
//!
//! # GStreamer versions
//!
//! Tested against Debian trixie's 1.26.2. Its `unixfdsrc` reads a
//! payload with a single `recv` (fixed in 1.26.7): a command larger than
//! the socket's send buffer can arrive short and stop the element; see
//! [`Server::set_send_buffer_size`]. mediamem's client reads in a loop.

use std::collections::{HashMap, HashSet};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
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
use crate::ipc::{admit, copy_by_pread, Admission, ReceivePolicy};
use crate::memory::{Memory, MemoryBackend, MemoryFlags, MemoryParts};
use crate::shm::ShmAllocator;

/// Command type: a buffer (sink → src).
pub const NEW_BUFFER: u32 = 0;
/// Command type: a buffer the src is done with (src → sink).
pub const RELEASE_BUFFER: u32 = 1;
/// Command type: the caps (sink → src).
pub const CAPS: u32 = 2;
/// Command type: end of stream (sink → src).
pub const EOS: u32 = 3;

/// "No time" on the wire (`GST_CLOCK_TIME_NONE`).
pub const CLOCK_TIME_NONE: u64 = u64::MAX;

/// The largest payload accepted for one command (GStreamer has no bound; a
/// 1 MB meta is one of its test cases).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// How long a wait inside a command may last when the end has no timeout
/// of its own.
pub const INSIDE_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for a client to take a command before it
/// drops that client, unless [`Server::set_timeout`] says otherwise.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);

const HEADER_LEN: usize = 8;
const BUFFER_FIXED: usize = 56;
const MEMORY_LEN: usize = 16;
/// The kernel's limit of fds in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
const MAX_FDS: usize = 253;
/// Bytes of one release command.
const RELEASE_LEN: usize = HEADER_LEN + 8;

/// How a buffer's memories are to be wrapped (`NewBufferPayload.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// 0: fd memory (`GstFdAllocator` on the GStreamer side).
    Default,
    /// 1: dma-buf memory (`GstDmaBufAllocator`).
    DmaBuf,
}

/// One serialized `GstMeta`, kept whole (as `gst_meta_serialize` wrote it).
#[derive(Clone, PartialEq, Eq)]
pub struct Meta {
    bytes: Vec<u8>,
    name_len: usize,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("name", &self.name())
            .field("version", &self.version())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

impl Meta {
    /// A meta of type `name` (a GType name) with `version` and `payload`,
    /// serialized as `gst_meta_serialize` does.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a name with a NUL or a meta over 4 GiB.
    pub fn new(name: &str, version: u8, payload: &[u8]) -> Result<Meta> {
        if name.as_bytes().contains(&0) {
            return Err(Error::Protocol("a meta name with a NUL".into()));
        }
        let total = 8 + name.len() + 2 + payload.len();
        let total32 = u32::try_from(total)
            .map_err(|_| Error::Protocol(format!("a meta of {total} bytes")))?;
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&total32.to_le_bytes());
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.push(version);
        bytes.extend_from_slice(payload);
        Ok(Meta {
            bytes,
            name_len: name.len(),
        })
    }

    /// Parse the first meta of `data`; the meta and the bytes it used.
    fn parse(data: &[u8]) -> Result<(Meta, usize)> {
        let bad = |why: String| Error::Protocol(format!("malformed meta: {why}"));
        if data.len() < 8 {
            return Err(bad(format!(
                "{} bytes left, a meta header is 8",
                data.len()
            )));
        }
        let total = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let name_len = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
        let header = name_len
            .checked_add(10)
            .ok_or_else(|| bad("name length overflows".into()))?;
        if total < header || total > data.len() {
            return Err(bad(format!(
                "total size {total} with a {name_len}-byte name, {} bytes left",
                data.len()
            )));
        }
        if data[8 + name_len] != 0 {
            return Err(bad("name not NUL-terminated".into()));
        }
        std::str::from_utf8(&data[8..8 + name_len]).map_err(|_| bad("name is not UTF-8".into()))?;
        Ok((
            Meta {
                bytes: data[..total].to_vec(),
                name_len,
            },
            total,
        ))
    }

    /// The meta's GType name (`"GstCustomMeta"`, `"GstVideoMeta"`, ...).
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.bytes[8..8 + self.name_len]).unwrap_or("")
    }

    /// The serializer's version byte.
    pub fn version(&self) -> u8 {
        self.bytes[8 + self.name_len + 1]
    }

    /// What the meta's serializer wrote.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[8 + self.name_len + 2..]
    }

    /// The whole serialized meta, header included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A buffer's timestamps and flags, as on the wire (`None` for
/// [`CLOCK_TIME_NONE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferInfo {
    /// Presentation time, `CLOCK_MONOTONIC` ns.
    pub pts: Option<u64>,
    /// Decoding time, `CLOCK_MONOTONIC` ns.
    pub dts: Option<u64>,
    /// Duration in ns.
    pub duration: Option<u64>,
    /// `GstBuffer.offset` (a frame number for video).
    pub offset: u64,
    /// `GstBuffer.offset_end`.
    pub offset_end: u64,
    /// `GstBufferFlags`.
    pub flags: u32,
}

impl Default for BufferInfo {
    fn default() -> Self {
        BufferInfo {
            pts: None,
            dts: None,
            duration: None,
            offset: CLOCK_TIME_NONE,
            offset_end: CLOCK_TIME_NONE,
            flags: 0,
        }
    }
}

fn time(t: u64) -> Option<u64> {
    (t != CLOCK_TIME_NONE).then_some(t)
}

/// A received buffer.
#[derive(Debug)]
pub struct Buffer {
    /// The sink's id for it (a pointer on the GStreamer side).
    pub id: u64,
    /// Timestamps and flags.
    pub info: BufferInfo,
    /// How the sink said to wrap the memories.
    pub memory_type: MemoryType,
    /// Read-only memories; the buffer is released when all are gone.
    pub memories: Vec<Memory>,
    /// The serialized metas.
    pub metas: Vec<Meta>,
}

/// What a [`Client`] receives.
#[derive(Debug)]
pub enum Event {
    /// New caps (also kept: [`Client::caps`]).
    Caps(String),
    /// A buffer.
    Buffer(Buffer),
    /// End of stream.
    Eos,
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn ne_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn header_bytes(kind: u32, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&kind.to_ne_bytes());
    h[4..].copy_from_slice(&(len as u32).to_ne_bytes());
    h
}

fn release_bytes(id: u64) -> [u8; RELEASE_LEN] {
    let mut m = [0u8; RELEASE_LEN];
    m[..HEADER_LEN].copy_from_slice(&header_bytes(RELEASE_BUFFER, 8));
    m[HEADER_LEN..].copy_from_slice(&id.to_ne_bytes());
    m
}

/// When a wait of `timeout` from now ends.
fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Poll `fds` until one is ready or `deadline`; `false` when time ran out.
fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> Result<bool> {
    loop {
        let left = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(false);
                }
                Timespec::try_from(d - now).ok()
            }
            None => None,
        };
        match rustix::event::poll(fds, left.as_ref()) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::os("poll", e)),
        }
    }
}

/// A command read off the socket, not yet interpreted.
struct RawCommand {
    kind: u32,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// How [`read_command`] waits: before the first byte for `idle` (the end's
/// timeout), inside a command for `inside`; `before_wait` runs before each
/// wait (the client writes its pending releases) and says whether to wait
/// for room to write as well.
struct Waits<'a> {
    idle: Option<Duration>,
    inside: Duration,
    before_wait: &'a dyn Fn() -> bool,
}

fn wait_input(sock: BorrowedFd<'_>, waits: &Waits<'_>, inside: bool) -> Result<()> {
    let end = if inside {
        deadline(Some(waits.inside))
    } else {
        deadline(waits.idle)
    };
    loop {
        let pending = (waits.before_wait)();
        // With releases to write, wake up for room too (and at least
        // every 50 ms, for releases queued by other threads meanwhile).
        let mut events = PollFlags::IN;
        if pending {
            events |= PollFlags::OUT;
        }
        let slice = deadline(Some(Duration::from_millis(50)));
        let until = match end {
            Some(e) => Some(slice.map_or(e, |s| s.min(e))),
            None => slice,
        };
        let mut fds = [PollFd::from_borrowed_fd(sock, events)];
        let ready = poll_until(&mut fds, until)?;
        if ready
            && fds[0]
                .revents()
                .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
        {
            return Ok(());
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            return Err(Error::TimedOut {
                inside_message: inside,
            });
        }
    }
}

/// Read one command, never blocking in the kernel. `Ok(None)` at end of
/// file (or `ECONNRESET`) between commands.
fn read_command(sock: &UnixStream, waits: &Waits<'_>) -> Result<Option<RawCommand>> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control_messages = 0;
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
                wait_input(sock.as_fd(), waits, got > 0 || !fds.is_empty())?;
                continue;
            }
            Err(rustix::io::Errno::CONNRESET) if got == 0 && fds.is_empty() => return Ok(None),
            Err(e) => return Err(Error::os("recvmsg", e)),
        };
        for c in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = c {
                control_messages += 1;
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::Protocol(format!(
                "control data truncated: more than {MAX_FDS} fds"
            )));
        }
        if msg.bytes == 0 {
            return if got == 0 && fds.is_empty() {
                Ok(None)
            } else {
                Err(Error::Protocol(format!(
                    "end of stream after {got} of {HEADER_LEN} header bytes"
                )))
            };
        }
        got += msg.bytes;
    }
    if control_messages > 1 {
        return Err(Error::Protocol(format!(
            "{control_messages} fd control messages with one command"
        )));
    }
    let kind = ne_u32(&head, 0);
    let len = ne_u32(&head, 4) as usize;
    if len > MAX_PAYLOAD {
        return Err(Error::TooLarge {
            what: "unixfd command payload",
            requested: len,
            limit: MAX_PAYLOAD,
        });
    }
    let mut payload = vec![0u8; len];
    let mut read = 0;
    while read < len {
        // No control buffer: fds sent with payload bytes (never announced)
        // are closed by the kernel.
        match rustix::net::recv(sock, &mut payload[read..], RecvFlags::DONTWAIT) {
            Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => {
                return Err(Error::Protocol(format!(
                    "end of stream after {read} of {len} payload bytes of a type {kind} command"
                )))
            }
            Ok((n, _)) => read += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => wait_input(sock.as_fd(), waits, true)?,
            Err(e) => return Err(Error::os("recv", e)),
        }
    }
    Ok(Some(RawCommand { kind, payload, fds }))
}

/// Write a whole command (header and fds in the first `sendmsg`, the rest
/// of the payload in further writes) by `deadline`, never blocking in the
/// kernel. Errors leave the stream out of sync if some bytes went.
fn send_command(
    sock: &UnixStream,
    kind: u32,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> Result<()> {
    let head = header_bytes(kind, payload.len());
    let mut sent = 0;
    let total = HEADER_LEN + payload.len();
    while sent < total {
        let r = if sent == 0 {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(Error::Protocol("fds do not fit one control message".into()));
            }
            rustix::net::sendmsg(
                sock,
                &[IoSlice::new(&head), IoSlice::new(payload)],
                &mut control,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            )
        } else if sent < HEADER_LEN {
            rustix::net::sendmsg(
                sock,
                &[IoSlice::new(&head[sent..]), IoSlice::new(payload)],
                &mut SendAncillaryBuffer::default(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            )
        } else {
            rustix::net::send(
                sock,
                &payload[sent - HEADER_LEN..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            )
        };
        match r {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                let mut pfd = [PollFd::new(sock, PollFlags::OUT)];
                if !poll_until(&mut pfd, deadline)? {
                    return Err(Error::TimedOut {
                        inside_message: sent > 0,
                    });
                }
            }
            Err(e) => return Err(Error::os("sendmsg", e)),
        }
    }
    Ok(())
}

/// Releases waiting to be written.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    written: usize,
    gone: Option<rustix::io::Errno>,
}

/// The client's connection: the socket and the releases queued by drops.
struct Conn {
    stream: UnixStream,
    out: Mutex<Outbox>,
}

impl Conn {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write what is queued without blocking; whether some remains.
    fn flush_nonblocking(&self) -> bool {
        let mut out = self.outbox();
        while out.written < out.bytes.len() {
            let r = rustix::net::send(
                &self.stream,
                &out.bytes[out.written..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            );
            match r {
                Ok(n) => out.written += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(e) => {
                    log::debug!("unixfd: releases dropped, the sink is gone ({e})");
                    out.gone = Some(e);
                    out.bytes = Vec::new();
                    out.written = 0;
                    return false;
                }
            }
        }
        out.bytes.clear();
        out.written = 0;
        false
    }

    fn release(&self, id: u64) {
        {
            let mut out = self.outbox();
            if out.gone.is_some() {
                return;
            }
            out.bytes.extend_from_slice(&release_bytes(id));
        }
        self.flush_nonblocking();
    }
}

/// Sends `RELEASE_BUFFER` for one buffer when the last memory goes.
struct ReleaseOnDrop {
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.conn.release(self.id);
    }
}

/// Receives from a `unixfdsink` (what `unixfdsrc` does).
pub struct Client {
    conn: Arc<Conn>,
    policy: ReceivePolicy,
    fd_alloc: FdAllocator,
    dmabuf_alloc: DmaBufAllocator,
    timeout: Option<Duration>,
    caps: Option<String>,
    broken: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("caps", &self.caps)
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .field("pending_releases", &self.pending_releases())
            .finish()
    }
}

impl Client {
    /// Connect to the socket of a `unixfdsink` (`socket-path`), with the
    /// default [`ReceivePolicy`].
    ///
    /// # Errors
    /// [`Error::Os`] when the connection fails.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let stream = UnixStream::connect(path.as_ref()).map_err(|e| Error::Os {
            op: "connect",
            source: e,
        })?;
        Ok(Client::new(stream, ReceivePolicy::default()))
    }

    /// Connect to a `unixfdsink` with `socket-type=abstract` and
    /// `socket-path=<name>` (Linux's abstract namespace: no file; the
    /// name's bytes as they are, which is GStreamer's `ABSTRACT`, not
    /// `ABSTRACT_PADDED`).
    ///
    /// # Errors
    /// [`Error::Os`] when the name is too long or the connection fails.
    pub fn connect_abstract(name: &[u8]) -> Result<Client> {
        let stream = abstract_addr(name)
            .and_then(|a| UnixStream::connect_addr(&a))
            .map_err(|e| Error::Os {
                op: "connect",
                source: e,
            })?;
        Ok(Client::new(stream, ReceivePolicy::default()))
    }

    /// A client on a connected stream socket.
    pub fn new(stream: UnixStream, policy: ReceivePolicy) -> Client {
        Client {
            conn: Arc::new(Conn {
                stream,
                out: Mutex::new(Outbox::default()),
            }),
            policy,
            fd_alloc: FdAllocator::new(),
            dmabuf_alloc: DmaBufAllocator::new(),
            timeout: None,
            caps: None,
            broken: None,
        }
    }

    /// Bound every wait by `timeout` (`None`, the default: wait for the
    /// next command for ever; a wait inside a command is bounded by
    /// [`INSIDE_COMMAND_TIMEOUT`] then).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The caps last received.
    pub fn caps(&self) -> Option<&str> {
        self.caps.as_deref()
    }

    /// Releases queued and not yet written in full.
    pub fn pending_releases(&self) -> usize {
        let out = self.conn.outbox();
        (out.bytes.len() - out.written).div_ceil(RELEASE_LEN)
    }

    /// Write the queued releases, waiting for room up to the timeout.
    ///
    /// # Errors
    /// [`Error::TimedOut`], or the write's error when the sink is gone.
    pub fn flush(&self) -> Result<()> {
        let end = deadline(self.timeout.or(Some(INSIDE_COMMAND_TIMEOUT)));
        loop {
            if !self.conn.flush_nonblocking() {
                return match self.conn.outbox().gone {
                    Some(e) => Err(Error::os("send", e)),
                    None => Ok(()),
                };
            }
            let mut pfd = [PollFd::new(&self.conn.stream, PollFlags::OUT)];
            if !poll_until(&mut pfd, end)? {
                return Err(Error::TimedOut {
                    inside_message: false,
                });
            }
        }
    }

    /// The next event; `Ok(None)` when the sink closed the connection
    /// between commands. Unknown command types are skipped.
    ///
    /// # Errors
    /// [`Error::Protocol`], [`Error::TooLarge`] and [`Error::TimedOut`] as
    /// the module docs list; after a framing error every later call fails.
    /// A buffer whose fds are refused ([`Error::Refused`],
    /// [`Error::BeyondFile`], ...) was read whole: it is released, its fds
    /// closed, and the next call goes on.
    pub fn recv(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(why) = &self.broken {
                return Err(Error::Protocol(format!(
                    "connection is out of sync after: {why}"
                )));
            }
            self.conn.flush_nonblocking();
            let conn = self.conn.clone();
            let flush = move || conn.flush_nonblocking();
            let waits = Waits {
                idle: self.timeout,
                inside: self.timeout.unwrap_or(INSIDE_COMMAND_TIMEOUT),
                before_wait: &flush,
            };
            let raw = match read_command(&self.conn.stream, &waits) {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(None),
                Err(
                    e @ Error::TimedOut {
                        inside_message: false,
                    },
                ) => return Err(e),
                Err(e) => return Err(self.out_of_sync(e)),
            };
            match raw.kind {
                NEW_BUFFER => return self.new_buffer(raw).map(|b| Some(Event::Buffer(b))),
                CAPS => {
                    if !raw.fds.is_empty() {
                        return Err(self.out_of_sync(Error::Protocol(format!(
                            "{} fds with a CAPS command",
                            raw.fds.len()
                        ))));
                    }
                    let caps = match raw.payload.split_last() {
                        Some((0, text)) if !text.contains(&0) => {
                            std::str::from_utf8(text).map(str::to_owned).ok()
                        }
                        _ => None,
                    };
                    let Some(caps) = caps else {
                        return Err(self.out_of_sync(Error::Protocol(
                            "CAPS payload is not a NUL-terminated UTF-8 string".into(),
                        )));
                    };
                    self.caps = Some(caps.clone());
                    return Ok(Some(Event::Caps(caps)));
                }
                EOS => {
                    if !raw.fds.is_empty() || !raw.payload.is_empty() {
                        return Err(
                            self.out_of_sync(Error::Protocol("EOS with a payload or fds".into()))
                        );
                    }
                    return Ok(Some(Event::Eos));
                }
                RELEASE_BUFFER => {
                    return Err(self.out_of_sync(Error::Protocol(
                        "RELEASE_BUFFER goes from unixfdsrc to unixfdsink, not to the client"
                            .into(),
                    )))
                }
                other => {
                    log::debug!(
                        "unixfd: skipping a command of unknown type {other} ({} bytes, {} fds)",
                        raw.payload.len(),
                        raw.fds.len()
                    );
                    // Its fds close here.
                }
            }
        }
    }

    fn out_of_sync(&mut self, e: Error) -> Error {
        self.broken = Some(e.to_string());
        e
    }

    fn new_buffer(&mut self, raw: RawCommand) -> Result<Buffer> {
        let p = &raw.payload;
        if p.len() < BUFFER_FIXED {
            return Err(self.out_of_sync(Error::Protocol(format!(
                "NEW_BUFFER payload of {} bytes, at least {BUFFER_FIXED}",
                p.len()
            ))));
        }
        let id = ne_u64(p, 0);
        let info = BufferInfo {
            pts: time(ne_u64(p, 8)),
            dts: time(ne_u64(p, 16)),
            duration: time(ne_u64(p, 24)),
            offset: ne_u64(p, 32),
            offset_end: ne_u64(p, 40),
            flags: ne_u32(p, 48),
        };
        let kind = p[52];
        let n_memory = p[53] as usize;
        let n_meta = u16::from_ne_bytes([p[54], p[55]]) as usize;
        // The fds and the content are wrong but the command was read whole:
        // the stream is in sync, the sink gets its buffer back.
        let refuse = |conn: &Arc<Conn>, e: Error| {
            conn.release(id);
            e
        };
        if raw.fds.len() != n_memory {
            return Err(refuse(
                &self.conn,
                Error::Protocol(format!(
                    "buffer {id:#x}: {n_memory} memories, {} fds",
                    raw.fds.len()
                )),
            ));
        }
        let memory_type = match kind {
            0 => MemoryType::Default,
            1 => MemoryType::DmaBuf,
            t => {
                return Err(refuse(
                    &self.conn,
                    Error::Protocol(format!("buffer {id:#x}: memory type {t}")),
                ))
            }
        };
        let mems_end = BUFFER_FIXED + n_memory * MEMORY_LEN;
        if p.len() < mems_end {
            return Err(refuse(
                &self.conn,
                Error::Protocol(format!(
                    "buffer {id:#x}: {n_memory} memories need {mems_end} payload bytes, {} came",
                    p.len()
                )),
            ));
        }
        let mut metas = Vec::with_capacity(n_meta);
        let mut at = mems_end;
        for _ in 0..n_meta {
            match Meta::parse(&p[at..]) {
                Ok((meta, used)) => {
                    metas.push(meta);
                    at += used;
                }
                Err(e) => return Err(refuse(&self.conn, e)),
            }
        }
        if at != p.len() {
            return Err(refuse(
                &self.conn,
                Error::Protocol(format!(
                    "buffer {id:#x}: {} bytes after its {n_meta} metas",
                    p.len() - at
                )),
            ));
        }
        let regions: Vec<(usize, usize)> = (0..n_memory)
            .map(|i| {
                let d = BUFFER_FIXED + i * MEMORY_LEN;
                (ne_u64(p, d), ne_u64(p, d + 8))
            })
            .map(|(size, offset)| (usize::try_from(size), usize::try_from(offset)))
            .map(|(s, o)| match (s, o) {
                (Ok(s), Ok(o)) => (s, o),
                _ => (usize::MAX, usize::MAX),
            })
            .collect();
        let memories = self.import(id, memory_type, &regions, raw.fds)?;
        Ok(Buffer {
            id,
            info,
            memory_type,
            memories,
            metas,
        })
    }

    fn import(
        &self,
        id: u64,
        memory_type: MemoryType,
        regions: &[(usize, usize)],
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<Memory>> {
        // Dropped on any error below, or with the last memory: the sink
        // gets exactly one release either way (at once for a buffer with
        // no memories, as unixfdsrc does since 1.24.3).
        let token = Arc::new(ReleaseOnDrop {
            id,
            conn: self.conn.clone(),
        });
        let mut memories = Vec::with_capacity(fds.len());
        let mut copied = 0;
        for (i, (&(size, offset), fd)) in regions.iter().zip(fds).enumerate() {
            let maxsize = offset.checked_add(size).ok_or_else(|| {
                Error::Protocol(format!(
                    "buffer {id:#x}: memory {i}: offset {offset} + size {size} overflows"
                ))
            })?;
            let (admission, file) = admit(&fd, memory_type == MemoryType::DmaBuf, &self.policy)
                .map_err(|e| match e {
                    Error::Refused(why) => {
                        Error::Refused(format!("buffer {id:#x}: memory {i} {why}"))
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
            let mut fd_flags = FdMemoryFlags::KEEP_MAPPED;
            if admission == Admission::Guarded {
                fd_flags |= FdMemoryFlags::GUARD_SIGBUS;
            }
            let block = fd_block_of(FdHandle::Owned(fd), file, maxsize, fd_flags)?;
            let (alloc, backend): (_, Box<dyn MemoryBackend>) = if admission == Admission::DmaBuf {
                (
                    self.dmabuf_alloc.allocator(),
                    Box::new(DmaBufBackend::new(block)),
                )
            } else {
                (self.fd_alloc.allocator(), Box::new(FdBackend::new(block)))
            };
            let parts = MemoryParts::new(backend, maxsize)
                .region(offset, size)
                .flags(MemoryFlags::READONLY);
            let mut memory = Memory::from_parts(alloc, parts)?;
            let release = token.clone();
            memory.set_on_block_free(Arc::new(move |_freed| {
                let _ = &release;
            }))?;
            memories.push(memory);
        }
        drop(token);
        Ok(memories)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Never blocks; buffers still alive write their releases as they go.
        self.conn.flush_nonblocking();
    }
}

/// A buffer to send from a [`Server`].
#[derive(Debug, Clone, Default)]
pub struct OutBuffer {
    /// Its memories. fd-backed memory (shm, fd, dma-buf) goes zero-copy;
    /// any other memory is copied into new shm memory first (as
    /// `unixfdsink` 1.28 does).
    pub memories: Vec<Memory>,
    /// Timestamps and flags (pts and dts in `CLOCK_MONOTONIC` ns: see
    /// [`monotonic_now`]).
    pub info: BufferInfo,
    /// Metas to send as they are.
    pub metas: Vec<Meta>,
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of timestamps on the wire.
pub fn monotonic_now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// One `unixfdsrc` connected to a [`Server`].
struct Peer {
    stream: UnixStream,
    /// The buffers this peer holds.
    holds: HashSet<u64>,
}

/// What the server keeps of a sent buffer: its memories, once per client
/// that has not released it.
struct Held {
    _memories: Vec<Memory>,
    refs: usize,
}

/// A `unixfdsink`: `unixfdsrc` elements connect to its socket.
///
/// Single-threaded and driven by its caller: [`send_buffer`](Server::send_buffer)
/// and [`process`](Server::process) accept new clients (sending them the
/// caps first), read releases, and drop clients that hung up, broke the
/// protocol or did not take a command within the send timeout.
pub struct Server {
    listener: UnixListener,
    path: Option<PathBuf>,
    peers: Vec<Peer>,
    caps: Option<String>,
    held: HashMap<u64, Held>,
    next_id: u64,
    timeout: Duration,
    send_buffer: Option<usize>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .field("clients", &self.peers.len())
            .field("held", &self.held.len())
            .field("caps", &self.caps)
            .finish()
    }
}

impl Server {
    /// Listen on a socket at `path` (removed again when the server is
    /// dropped, as `unixfdsink` does on stop).
    ///
    /// # Errors
    /// [`Error::Os`] when the socket cannot be bound (for example, `path`
    /// exists).
    pub fn bind(path: impl AsRef<Path>) -> Result<Server> {
        let path = path.as_ref();
        let listener = UnixListener::bind(path).map_err(|e| Error::Os {
            op: "bind",
            source: e,
        })?;
        let mut server = Server::from_listener(listener)?;
        server.path = Some(path.to_owned());
        Ok(server)
    }

    /// Listen on `name` in Linux's abstract socket namespace, for
    /// `unixfdsrc socket-type=abstract socket-path=<name>`.
    ///
    /// # Errors
    /// [`Error::Os`] when the name is too long or taken.
    pub fn bind_abstract(name: &[u8]) -> Result<Server> {
        let listener = abstract_addr(name)
            .and_then(|a| UnixListener::bind_addr(&a))
            .map_err(|e| Error::Os {
                op: "bind",
                source: e,
            })?;
        Server::from_listener(listener)
    }

    /// A server on a bound, listening socket (left in place on drop).
    ///
    /// # Errors
    /// [`Error::Os`] when the socket cannot be made non-blocking.
    pub fn from_listener(listener: UnixListener) -> Result<Server> {
        listener.set_nonblocking(true).map_err(|e| Error::Os {
            op: "fcntl(O_NONBLOCK)",
            source: e,
        })?;
        Ok(Server {
            listener,
            path: None,
            peers: Vec::new(),
            caps: None,
            held: HashMap::new(),
            next_id: 1,
            timeout: DEFAULT_SEND_TIMEOUT,
            send_buffer: None,
        })
    }

    /// How long a client may take to accept a command (or to finish a
    /// release it started) before it is dropped.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Give each client's socket a send buffer of `bytes` (`SO_SNDBUFFORCE`
    /// when the process may, else `SO_SNDBUF`, which the kernel caps at
    /// `net.core.wmem_max`), for clients connected now and later.
    ///
    /// GStreamer's `unixfdsrc` up to 1.26.6 (Debian trixie has 1.26.2)
    /// reads a command's payload with a single `recv`, and fails ("Connection
    /// closed by peer") when that returns less than the whole payload. Any
    /// payload bigger than what the socket holds at once (a large
    /// serialized meta) can come short, unless the command is queued whole
    /// before the element reads it: a send buffer larger than the command
    /// lets [`send_buffer`](Server::send_buffer) queue it in one go.
    ///
    /// # Errors
    /// [`Error::Os`] when the socket option is refused.
    pub fn set_send_buffer_size(&mut self, bytes: usize) -> Result<()> {
        self.send_buffer = Some(bytes);
        for p in &self.peers {
            set_send_buffer(&p.stream, bytes)?;
        }
        Ok(())
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.peers.len()
    }

    /// Buffers some client still holds.
    pub fn held_buffers(&self) -> usize {
        self.held.len()
    }

    /// Set the caps and send them to every client (new clients get them
    /// first on connect).
    ///
    /// # Errors
    /// [`Error::Protocol`] for caps with a NUL. A client that does not
    /// take them is dropped, not an error.
    pub fn set_caps(&mut self, caps: &str) -> Result<()> {
        if caps.as_bytes().contains(&0) {
            return Err(Error::Protocol("caps with a NUL".into()));
        }
        self.accept()?;
        self.caps = Some(caps.to_owned());
        let payload = caps_payload(caps);
        let mut i = 0;
        while i < self.peers.len() {
            let end = deadline(Some(self.timeout));
            match send_command(&self.peers[i].stream, CAPS, &payload, &[], end) {
                Ok(()) => i += 1,
                Err(e) => self.drop_peer(i, &e),
            }
        }
        Ok(())
    }

    /// Send a buffer to every client connected now, and hold its memories
    /// until each has released it; its id. With no client the buffer is
    /// dropped (as `unixfdsink` does).
    ///
    /// # Errors
    /// [`Error::Protocol`] before [`set_caps`](Server::set_caps) (a
    /// `unixfdsrc` cannot negotiate a buffer without caps), for more than
    /// 253 memories or more than 65535 metas; copy errors for non-fd
    /// memory. A client that does not take the buffer is dropped, not an
    /// error.
    pub fn send_buffer(&mut self, buffer: OutBuffer) -> Result<u64> {
        if self.caps.is_none() {
            return Err(Error::Protocol(
                "a buffer before any caps: call set_caps first".into(),
            ));
        }
        self.process(Some(Duration::ZERO))?;
        let n = buffer.memories.len();
        if n > MAX_FDS {
            return Err(Error::Protocol(format!("{n} memories, at most {MAX_FDS}")));
        }
        let n_meta = u16::try_from(buffer.metas.len())
            .map_err(|_| Error::Protocol(format!("{} metas", buffer.metas.len())))?;
        let mut memories = Vec::with_capacity(n);
        for m in buffer.memories {
            if m.fd().is_some() {
                memories.push(m);
            } else {
                let mut copy = ShmAllocator::get().alloc(m.size(), None)?;
                copy.map_mut()?.copy_from_slice(&m.map_readable()?);
                memories.push(copy);
            }
        }
        let dmabuf = memories.iter().filter(|m| is_dmabuf_memory(m)).count();
        if dmabuf != 0 && dmabuf != n {
            return Err(Error::Protocol(
                "dma-buf and other memories in one buffer: all are dma-bufs or none".into(),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let info = buffer.info;
        let mut payload = Vec::with_capacity(BUFFER_FIXED + n * MEMORY_LEN);
        for v in [
            id,
            info.pts.unwrap_or(CLOCK_TIME_NONE),
            info.dts.unwrap_or(CLOCK_TIME_NONE),
            info.duration.unwrap_or(CLOCK_TIME_NONE),
            info.offset,
            info.offset_end,
        ] {
            payload.extend_from_slice(&v.to_ne_bytes());
        }
        payload.extend_from_slice(&info.flags.to_ne_bytes());
        payload.push(u8::from(dmabuf != 0));
        payload.push(n as u8);
        payload.extend_from_slice(&n_meta.to_ne_bytes());
        for m in &memories {
            payload.extend_from_slice(&(m.size() as u64).to_ne_bytes());
            payload.extend_from_slice(&(m.offset() as u64).to_ne_bytes());
        }
        for meta in &buffer.metas {
            payload.extend_from_slice(meta.as_bytes());
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                what: "unixfd command payload",
                requested: payload.len(),
                limit: MAX_PAYLOAD,
            });
        }
        let fds: Vec<BorrowedFd<'_>> = memories.iter().filter_map(|m| m.fd()).collect();
        let mut refs = 0;
        let mut i = 0;
        while i < self.peers.len() {
            let end = deadline(Some(self.timeout));
            match send_command(&self.peers[i].stream, NEW_BUFFER, &payload, &fds, end) {
                Ok(()) => {
                    self.peers[i].holds.insert(id);
                    refs += 1;
                    i += 1;
                }
                Err(e) => self.drop_peer(i, &e),
            }
        }
        drop(fds);
        if refs > 0 {
            self.held.insert(
                id,
                Held {
                    _memories: memories,
                    refs,
                },
            );
        }
        Ok(id)
    }

    /// Send end of stream to every client.
    ///
    /// # Errors
    /// None today (a client that does not take it is dropped); the
    /// `Result` leaves room for accept errors.
    pub fn send_eos(&mut self) -> Result<()> {
        self.accept()?;
        let mut i = 0;
        while i < self.peers.len() {
            let end = deadline(Some(self.timeout));
            match send_command(&self.peers[i].stream, EOS, &[], &[], end) {
                Ok(()) => i += 1,
                Err(e) => self.drop_peer(i, &e),
            }
        }
        Ok(())
    }

    /// Accept clients and read releases for up to `timeout` (`None`: until
    /// something happens; `Some(ZERO)`: only what is there now). Returns
    /// after the first round in which something happened.
    ///
    /// # Errors
    /// [`Error::Os`] when polling or accepting fails for the listener
    /// itself.
    pub fn process(&mut self, timeout: Option<Duration>) -> Result<()> {
        let end = deadline(timeout);
        let mut fds = Vec::with_capacity(self.peers.len() + 1);
        fds.push(PollFd::new(&self.listener, PollFlags::IN));
        for p in &self.peers {
            fds.push(PollFd::new(&p.stream, PollFlags::IN));
        }
        let ready = if timeout == Some(Duration::ZERO) {
            match rustix::event::poll(&mut fds, Some(&Timespec::default())) {
                Ok(n) => n > 0,
                Err(rustix::io::Errno::INTR) => false,
                Err(e) => return Err(Error::os("poll", e)),
            }
        } else {
            poll_until(&mut fds, end)?
        };
        if !ready {
            return Ok(());
        }
        let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        if !revents[0].is_empty() {
            self.accept()?;
        }
        // Peers accepted just now are at the end, past `revents`; a dropped
        // peer's place takes the last one, already seen (reverse order).
        for i in (0..revents.len() - 1).rev() {
            if !revents[i + 1].is_empty() {
                self.read_peer(i);
            }
        }
        Ok(())
    }

    /// Process until no buffer is held or `timeout` passes; whether none
    /// is held.
    ///
    /// # Errors
    /// As [`process`](Server::process).
    pub fn wait_released(&mut self, timeout: Duration) -> Result<bool> {
        let end = Instant::now() + timeout;
        while !self.held.is_empty() {
            let now = Instant::now();
            if now >= end {
                return Ok(false);
            }
            self.process(Some(end - now))?;
        }
        Ok(true)
    }

    /// Process until `n` clients are connected or `timeout` passes; whether
    /// they are.
    ///
    /// # Errors
    /// As [`process`](Server::process).
    pub fn wait_for_clients(&mut self, n: usize, timeout: Duration) -> Result<bool> {
        let end = Instant::now() + timeout;
        loop {
            self.accept()?;
            if self.peers.len() >= n {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(false);
            }
            self.process(Some(end - now))?;
        }
    }

    /// Accept every pending client and send it the caps.
    fn accept(&mut self) -> Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    return Err(Error::Os {
                        op: "accept",
                        source: e,
                    })
                }
            };
            if let Some(bytes) = self.send_buffer {
                set_send_buffer(&stream, bytes)?;
            }
            let peer = Peer {
                stream,
                holds: HashSet::new(),
            };
            if let Some(caps) = &self.caps {
                let end = deadline(Some(self.timeout));
                if let Err(e) = send_command(&peer.stream, CAPS, &caps_payload(caps), &[], end) {
                    log::debug!("unixfd: a new client did not take the caps: {e}");
                    continue;
                }
            }
            self.peers.push(peer);
        }
    }

    /// Read what client `i` sent: releases, until nothing is left.
    fn read_peer(&mut self, i: usize) {
        let nothing = || false;
        loop {
            let waits = Waits {
                idle: Some(Duration::ZERO),
                inside: self.timeout,
                before_wait: &nothing,
            };
            let cmd = match read_command(&self.peers[i].stream, &waits) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return self.drop_peer(i, &Error::Protocol("client disconnected".into()))
                }
                Err(Error::TimedOut {
                    inside_message: false,
                }) => return,
                Err(e) => return self.drop_peer(i, &e),
            };
            let e = match cmd.kind {
                RELEASE_BUFFER if cmd.payload.len() == 8 && cmd.fds.is_empty() => {
                    let id = ne_u64(&cmd.payload, 0);
                    if self.peers[i].holds.remove(&id) {
                        self.unhold(id);
                        continue;
                    }
                    Error::Protocol(format!("client released {id:#x}, which it does not hold"))
                }
                RELEASE_BUFFER => Error::Protocol(format!(
                    "RELEASE_BUFFER with {} payload bytes and {} fds",
                    cmd.payload.len(),
                    cmd.fds.len()
                )),
                NEW_BUFFER | CAPS | EOS => Error::Protocol(format!(
                    "client sent type {}, which goes from the sink to the client",
                    cmd.kind
                )),
                other => {
                    log::debug!("unixfd: skipping a client command of unknown type {other}");
                    continue;
                }
            };
            return self.drop_peer(i, &e);
        }
    }

    fn unhold(&mut self, id: u64) {
        if let Some(h) = self.held.get_mut(&id) {
            h.refs -= 1;
            if h.refs == 0 {
                self.held.remove(&id);
            }
        }
    }

    /// Drop client `i` and every hold it had.
    fn drop_peer(&mut self, i: usize, why: &Error) {
        log::debug!("unixfd: dropping a client: {why}");
        let peer = self.peers.swap_remove(i);
        for id in peer.holds {
            self.unhold(id);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn abstract_addr(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

fn set_send_buffer(sock: &UnixStream, bytes: usize) -> Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_send_buffer_size_force(sock, bytes)
        .or_else(|_| sockopt::set_socket_send_buffer_size(sock, bytes))
        .map_err(|e| Error::os("setsockopt(SO_SNDBUF)", e))
}

fn caps_payload(caps: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(caps.len() + 1);
    p.extend_from_slice(caps.as_bytes());
    p.push(0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_refusals() {
        let m = Meta::new("GstCustomMeta", 0, b"field=42").unwrap();
        let mut bytes = m.as_bytes().to_vec();
        assert_eq!(bytes.len(), 8 + 13 + 2 + 8);
        assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), 31);
        let (back, used) = Meta::parse(&bytes).unwrap();
        assert_eq!(
            (back.name(), back.version(), back.payload()),
            ("GstCustomMeta", 0, &b"field=42"[..])
        );
        assert_eq!(used, bytes.len());
        bytes[8 + 13] = b'x';
        assert!(Meta::parse(&bytes).is_err(), "no NUL after the name");
        let mut short = m.as_bytes().to_vec();
        short[0] = 9;
        assert!(
            Meta::parse(&short).is_err(),
            "total smaller than its header"
        );
        assert!(Meta::parse(&m.as_bytes()[..20]).is_err(), "cut");
        assert!(Meta::new("a\0b", 0, b"").is_err());
    }

    #[test]
    fn release_command_is_native_endian() {
        let b = release_bytes(0x0102_0304_0506_0708);
        assert_eq!(&b[..4], &1u32.to_ne_bytes());
        assert_eq!(&b[4..8], &8u32.to_ne_bytes());
        assert_eq!(&b[8..], &0x0102_0304_0506_0708u64.to_ne_bytes());
    }
}
