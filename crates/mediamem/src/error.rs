//! The one error type of mediamem.

use std::fmt;

/// Which kind of access a map or lock asked for, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(pub(crate) u32);

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.0 & 1 != 0 {
            parts.push("READ");
        }
        if self.0 & 2 != 0 {
            parts.push("WRITE");
        }
        if self.0 & 4 != 0 {
            parts.push("EXCLUSIVE");
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join("|"))
        }
    }
}

/// Everything that can go wrong in mediamem.
///
/// Every failure is reported as a value of this type: bad input never panics,
/// aborts or raises a signal. Each variant says what was wrong so that the
/// message alone is enough to fix the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An alignment mask was not of the form `2^n - 1`.
    #[error("alignment mask {align:#x} is not of the form 2^n - 1")]
    InvalidAlign {
        /// The mask that was given.
        align: usize,
    },

    /// A size computation overflowed `usize` (or exceeded `isize::MAX`).
    #[error("size overflow: {what}")]
    SizeOverflow {
        /// What was being computed.
        what: &'static str,
    },

    /// The system could not provide the memory.
    #[error("out of memory allocating {size} bytes")]
    OutOfMemory {
        /// The number of bytes requested.
        size: usize,
    },

    /// The initialiser of a write-once allocation
    /// ([`Allocator::alloc_with`](crate::Allocator::alloc_with)) returned
    /// without writing every visible byte; no memory was made.
    #[error("the initialiser wrote {written} of {size} bytes; every byte must be written")]
    Uninitialised {
        /// Bytes written.
        written: usize,
        /// Bytes that had to be.
        size: usize,
    },

    /// A range did not fit inside the bytes it refers to.
    #[error("range {start}..{end} is out of bounds of {bound} bytes ({what})")]
    OutOfRange {
        /// Start of the requested range.
        start: usize,
        /// End (exclusive) of the requested range.
        end: usize,
        /// The number of bytes the range had to fit in.
        bound: usize,
        /// Which bytes the range was relative to.
        what: &'static str,
    },

    /// A resize by a signed offset delta would move the offset below zero.
    #[error("resize would move the offset to {offset} + ({delta}) < 0")]
    NegativeOffset {
        /// The current offset.
        offset: usize,
        /// The signed delta that was asked for.
        delta: isize,
    },

    /// A write map or write lock on memory flagged READONLY (shares are always
    /// read-only).
    #[error("memory is read-only: cannot lock or map it for writing")]
    ReadOnly,

    /// The lock word refused the requested access: the requested mode is
    /// not compatible with the mode of the maps already held.
    #[error("cannot lock for {requested}: memory is already locked for {held}")]
    LockConflict {
        /// What was asked for.
        requested: Access,
        /// The access mode currently held.
        held: Access,
    },

    /// The lock word refused write access because the memory is shared
    /// (its share count is two or more: it is the parent of a share, in more
    /// than one container, or being shared right now).
    #[error("cannot lock for {requested}: memory is shared ({shares} holders)")]
    Shared {
        /// What was asked for.
        requested: Access,
        /// The share count after the request.
        shares: u32,
    },

    /// A lock counter would overflow (255 nested maps or 65535 shares).
    #[error("too many nested {what} on one memory")]
    TooManyLocks {
        /// Which counter is full.
        what: &'static str,
    },

    /// An unlock did not match a lock that is held.
    #[error("unlock for {requested} does not match the lock state {state:#x}")]
    NotLocked {
        /// What was asked to be unlocked.
        requested: Access,
        /// The lock word at the time.
        state: u32,
    },

    /// The mapping would alias a mapping that hands out `&mut [u8]`, or a
    /// writable mapping was asked for while other mappings of the same
    /// bytes are alive. This is mediamem's Rust-level aliasing guard; it
    /// applies to the slice-giving guards only (see [`crate::Memory::map_raw`]).
    #[error("the bytes are already borrowed through another mapping ({held})")]
    Aliased {
        /// What holds the bytes: "a writable mapping" or "readable mappings".
        held: &'static str,
    },

    /// The map flags were invalid (no READ or WRITE bit, or the reserved
    /// EXCLUSIVE bit set).
    #[error("invalid map flags {flags:#x}: {why}")]
    InvalidMapFlags {
        /// The flags that were given.
        flags: u32,
        /// Why they were refused.
        why: &'static str,
    },

    /// The memory carries the NO_SHARE flag.
    #[error("memory is flagged NO_SHARE")]
    NoShare,

    /// An operation required writable memory (share count at most one).
    #[error("memory is not writable: it is shared (lock state {state:#x})")]
    NotWritable {
        /// The lock word at the time.
        state: u32,
    },

    /// The memory's allocator or backend does not implement an operation.
    #[error("{mem_type} memory does not support {operation}")]
    Unsupported {
        /// The memory type (allocator `mem_type`).
        mem_type: String,
        /// The operation.
        operation: &'static str,
    },

    /// A map of the underlying storage failed in the backend.
    #[error("{mem_type} memory could not be mapped: {reason}")]
    MapFailed {
        /// The memory type.
        mem_type: String,
        /// What the backend reported.
        reason: String,
        /// The kernel's errno when a system call failed (`mmap`,
        /// `mprotect`, an ioctl), to match on instead of the message.
        errno: Option<rustix::io::Errno>,
    },

    /// A memory of the wrong kind was given.
    #[error("expected {expected} memory, got {found} memory")]
    WrongKind {
        /// The kind that was needed.
        expected: &'static str,
        /// The kind that was given.
        found: String,
    },

    /// A file descriptor was invalid or not of a usable type.
    #[error("bad file descriptor: {reason}")]
    BadFd {
        /// Why the fd was refused.
        reason: String,
    },

    /// A size or offset reaches beyond the end of the file behind an fd.
    #[error("{what} of {requested} bytes reaches beyond the end of the file ({file_size} bytes)")]
    BeyondFile {
        /// What was checked.
        what: &'static str,
        /// The requested end.
        requested: u64,
        /// The size of the file.
        file_size: u64,
    },

    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },

    /// A fourcc that mediamem has no layout for.
    #[error("unknown DRM fourcc {name} ({fourcc:#010x})")]
    UnknownFourcc {
        /// The code.
        fourcc: u32,
        /// The code as text.
        name: String,
    },

    /// Memory that had to be physically contiguous is not.
    #[error("memory is not physically contiguous: page {page} is at PFN {pfn:#x}, expected {expected:#x}")]
    NotContiguous {
        /// Index of the first 4 KiB page that breaks the run.
        page: usize,
        /// Its page frame number.
        pfn: u64,
        /// The frame number contiguity needed.
        expected: u64,
    },

    /// A request is larger than what an allocator can provide in one piece.
    #[error("{what}: {requested} bytes requested, at most {limit} possible")]
    TooLarge {
        /// What limits it.
        what: &'static str,
        /// Bytes requested.
        requested: usize,
        /// The limit.
        limit: usize,
    },

    /// An [`AllocatorImpl::alloc`](crate::AllocatorImpl::alloc) returned a
    /// memory that does not honour the request (fewer visible bytes than
    /// asked for).
    #[error("allocator {mem_type} returned a memory of {got} visible bytes for a request of {requested}")]
    BadAllocation {
        /// The allocator's memory type.
        mem_type: String,
        /// Visible bytes asked for.
        requested: usize,
        /// Visible bytes of the memory it returned.
        got: usize,
    },

    /// Every memory of a pool is out.
    #[error("pool exhausted: all {max} memories are in use")]
    PoolExhausted {
        /// The pool's bound.
        max: usize,
    },

    /// A message of the IPC protocol was malformed or unexpected.
    #[error("IPC protocol error: {0}")]
    Protocol(String),

    /// An IPC read or write waited longer than the timeout set on its end
    /// ([`Receiver::set_timeout`](crate::ipc::Receiver::set_timeout),
    /// [`Sender::set_timeout`](crate::ipc::Sender::set_timeout)).
    #[error("IPC {} timed out", if *.inside_message {
        "transfer inside a message (the stream is out of sync)"
    } else {
        "wait"
    })]
    TimedOut {
        /// Whether the timeout cut a message that cannot be completed (the
        /// receiver had read part of it, or the sender had written part of
        /// it): that end is out of sync and refuses further calls.
        /// Otherwise nothing is lost (a release the sender read in part is
        /// kept) and the call can be made again.
        inside_message: bool,
    },

    /// The IPC peer speaks another version of the wire format.
    #[error("IPC protocol version mismatch: the peer speaks version {theirs}, this side speaks version {ours}")]
    VersionMismatch {
        /// The version this side speaks.
        ours: u16,
        /// The version the peer's message carries.
        theirs: u16,
    },

    /// An IPC message misused a registered buffer (see
    /// [`ipc`](crate::ipc)'s wire format): the message was read whole and
    /// refused, and nothing was unmapped under a live memory.
    #[error("IPC registered buffer {id}: {problem}")]
    Registry {
        /// The buffer id the message named.
        id: u32,
        /// What was wrong.
        problem: RegistryProblem,
    },

    /// A frame layout does not describe its memories (a plane outside its
    /// memory, a stride too small for the width, too many planes).
    #[error("invalid frame layout: {0}")]
    InvalidLayout(String),

    /// A received fd was refused by the receiver's policy.
    #[error("refused received memory: {0}")]
    Refused(String),

    /// The file behind a guarded mapping ([`FdMemoryFlags::GUARD_SIGBUS`](crate::FdMemoryFlags::GUARD_SIGBUS))
    /// was truncated by another holder while mapped: the mapping now holds
    /// zero pages and the memory can no longer be trusted.
    #[error("the file behind this {mem_type} memory was truncated under its mapping (its bytes now read as zeros)")]
    Truncated {
        /// The memory type.
        mem_type: String,
    },

    /// No dma-buf provider in the chain could allocate: each provider with
    /// its own reason, in the order they were tried
    /// ([`DmaBufProvider`](crate::provider::DmaBufProvider)).
    #[error("no dma-buf provider could allocate {size} bytes:{}", ProviderFailure::list(.failures))]
    NoProvider {
        /// The bytes asked for.
        size: usize,
        /// Every provider tried, with why it could not serve.
        failures: Vec<ProviderFailure>,
    },

    /// A configuration value (an environment variable, a provider name)
    /// that mediamem cannot use.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// Which setting.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A pool of memory (huge pages, a heap) has none left (`ENOMEM`).
    #[error("{what} exhausted ({errno}): {hint}")]
    Exhausted {
        /// Which pool.
        what: String,
        /// What to do about it.
        hint: String,
        /// The kernel's errno (`ENOMEM` or `ENOSPC`).
        errno: rustix::io::Errno,
    },

    /// A device or allocator is not available on this system.
    #[error("{what} is not available: {reason}")]
    NotAvailable {
        /// What is missing.
        what: String,
        /// Why.
        reason: String,
    },

    /// An fd given as a sync_file (a fence) is not one: not open, or a
    /// pipe, a memfd, a dma-buf, any other file.
    #[error("not a sync_file: {reason}")]
    NotSyncFile {
        /// What the fd was and why it was refused.
        reason: String,
    },

    /// A bounded wait for fences ran out of time: a
    /// [`SyncFile::wait`](crate::sync::SyncFile::wait), or a map of dma-buf
    /// memory whose fences had not signaled (see the
    /// [`sync`](crate::sync) module). Nothing was mapped or changed; the
    /// call can be made again.
    #[error("timed out after {timeout:?} waiting for {what}")]
    FenceTimedOut {
        /// What was waited for (which fences of which fd).
        what: String,
        /// How long.
        timeout: std::time::Duration,
    },

    /// The kernel, or this buffer's exporter, lacks an interface.
    #[error("{what} is not supported here ({errno}): Linux {since} added it, or the fd is not a dma-buf (or its exporter lacks it)")]
    NotSupported {
        /// The interface (an ioctl's name).
        what: &'static str,
        /// The first Linux version with it.
        since: &'static str,
        /// The kernel's answer (`ENOTTY` on an older kernel).
        errno: rustix::io::Errno,
    },
    /// A V4L2 device cannot do what was asked ([`crate::v4l2`]).
    #[error("V4L2 device {device}: {problem}")]
    V4l2 {
        /// The device's path (or `fd N`).
        device: String,
        /// What is wrong.
        problem: V4l2Problem,
    },
}

/// What is wrong in an [`Error::V4l2`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum V4l2Problem {
    /// The fd is not a V4L2 device node (`VIDIOC_QUERYCAP` failed).
    #[error("not a V4L2 device (VIDIOC_QUERYCAP: {errno})")]
    NotV4l2 {
        /// The errno of `VIDIOC_QUERYCAP` (ENOTTY for other files).
        errno: rustix::io::Errno,
    },
    /// The device does not capture video (an output, radio, ... node).
    #[error("not a video capture device (device caps {device_caps:#010x})")]
    NotCapture {
        /// Its `device_caps`.
        device_caps: u32,
    },
    /// The device has no streaming I/O (`V4L2_CAP_STREAMING`).
    #[error("no streaming I/O (device caps {device_caps:#010x})")]
    NoStreaming {
        /// Its `device_caps`.
        device_caps: u32,
    },
    /// The device (or mediamem's layout table) does not have the format.
    #[error("format {fourcc} {width}x{height}: {reason}")]
    UnsupportedFormat {
        /// The V4L2 fourcc, as text.
        fourcc: String,
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
        /// Why.
        reason: String,
    },
    /// The queue does not offer this kind of buffer (MMAP export, DMABUF
    /// import), or the driver refused to export.
    #[error("{what} is not supported: {reason}")]
    NotSupported {
        /// What was asked (`"MMAP buffers"`, `"DMABUF import"`, `"EXPBUF"`).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A memory offered for import cannot take a plane of the format.
    #[error("buffer {buffer} plane {plane}: {reason}")]
    BadImport {
        /// Which buffer of those offered.
        buffer: usize,
        /// Which plane.
        plane: usize,
        /// Why (too small, not dma-buf memory, shared, ...).
        reason: String,
    },
    /// Every buffer is held by the user: nothing can be captured until one
    /// is dropped.
    #[error("every one of the {count} buffers is held by the user; drop a frame")]
    AllBuffersHeld {
        /// The number of buffers of the stream.
        count: usize,
    },
    /// The device's buffer queue is taken: this
    /// [`Device`](crate::v4l2::Device) already has a live stream (one at a
    /// time: a second `VIDIOC_REQBUFS` would free the first stream's
    /// buffers under it), or another open file of the node owns the queue
    /// (`VIDIOC_REQBUFS`: `EBUSY`).
    #[error("the buffer queue is busy: {reason}")]
    Busy {
        /// Which of the two.
        reason: String,
    },
    /// The driver answered something that does not fit what was asked or
    /// what it said before (more buffers than V4L2 allows, buffers smaller
    /// than the format, a format changed under the stream, a data offset
    /// past the buffer).
    #[error("{call}: the driver's answer does not fit: {reason}")]
    DriverAnswer {
        /// The request (`"VIDIOC_REQBUFS"`, `"VIDIOC_QUERYBUF"`, ...).
        call: &'static str,
        /// What does not fit.
        reason: String,
    },
    /// A buffer came back from the user but `VIDIOC_QBUF` fails on it
    /// again and again, and no other buffer is queued: nothing can be
    /// captured (stop and start the stream to reset the queue).
    #[error("buffer {index} is back, but queueing it keeps failing ({reason}), and no other buffer is queued")]
    RequeueFailed {
        /// The driver's buffer index.
        index: usize,
        /// The last failure (`VIDIOC_QBUF: EIO`, ...).
        reason: String,
    },
    /// The stream is off.
    #[error("the stream is off")]
    NotStreaming,
    /// No frame came within the time given.
    #[error("no frame within {timeout:?}")]
    TimedOut {
        /// The time waited.
        timeout: std::time::Duration,
    },
}

impl Error {
    /// The kernel's errno behind this error, when a system call failed
    /// ([`Error::Os`], or [`Error::MapFailed`] from a failed `mmap`).
    ///
    /// ```
    /// use mediamem::Error;
    /// let e = Error::MapFailed {
    ///     mem_type: "fd".into(),
    ///     reason: "mmap of fd 3: Cannot allocate memory".into(),
    ///     errno: Some(rustix::io::Errno::NOMEM),
    /// };
    /// assert_eq!(e.errno(), Some(rustix::io::Errno::NOMEM));
    /// ```
    pub fn errno(&self) -> Option<rustix::io::Errno> {
        match self {
            Error::Os { source, .. } => rustix::io::Errno::from_io_error(source),
            Error::MapFailed { errno, .. } => *errno,
            Error::Exhausted { errno, .. } | Error::NotSupported { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Wrap an errno from a failed call.
    pub(crate) fn os(op: &'static str, errno: rustix::io::Errno) -> Self {
        Error::Os {
            op,
            source: std::io::Error::from(errno),
        }
    }
}

/// Why one provider of a dma-buf chain could not serve an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderReason {
    /// The kernel lacks it, its module is not loaded, or its node is missing.
    NotPresent {
        /// What was looked for.
        what: String,
        /// The errno of the failed open, when one was made.
        errno: Option<rustix::io::Errno>,
    },
    /// The node exists but this process may not open it.
    NoPermission {
        /// The device node.
        path: String,
        /// The node's owner, group and mode.
        owner: String,
        /// The node's group.
        group: String,
        /// The node's permission bits.
        mode: u32,
        /// `EACCES` or `EPERM`.
        errno: rustix::io::Errno,
        /// What to change.
        fix: String,
    },
    /// Present and open, but out of memory (`ENOMEM`).
    Exhausted {
        /// Which pool of memory (e.g. the heap's name).
        what: String,
        /// The errno.
        errno: rustix::io::Errno,
    },
    /// Left out by a constraint the caller stated (or could not be checked
    /// against it).
    Refused {
        /// The constraint and why this provider does not meet it.
        constraint: String,
    },
    /// Any other failure.
    Failed {
        /// The error's message.
        message: String,
        /// Its errno, if a system call failed.
        errno: Option<rustix::io::Errno>,
    },
}

impl ProviderReason {
    /// The kernel's errno behind the reason, if any.
    pub fn errno(&self) -> Option<rustix::io::Errno> {
        match self {
            ProviderReason::NotPresent { errno, .. } | ProviderReason::Failed { errno, .. } => {
                *errno
            }
            ProviderReason::NoPermission { errno, .. }
            | ProviderReason::Exhausted { errno, .. } => Some(*errno),
            ProviderReason::Refused { .. } => None,
        }
    }
}

impl fmt::Display for ProviderReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errno = |e: &Option<rustix::io::Errno>| match e {
            Some(e) => format!(" ({e})"),
            None => String::new(),
        };
        match self {
            ProviderReason::NotPresent { what, errno: e } => {
                write!(f, "not present: {what}{}", errno(e))
            }
            ProviderReason::NoPermission {
                path,
                owner,
                group,
                mode,
                errno: e,
                fix,
            } => write!(
                f,
                "no permission ({e}): {path} is {owner}:{group} mode {mode:04o}; {fix}"
            ),
            ProviderReason::Exhausted { what, errno: e } => {
                write!(f, "exhausted: {what} is out of memory ({e})")
            }
            ProviderReason::Refused { constraint } => {
                write!(f, "refused by constraint: {constraint}")
            }
            ProviderReason::Failed { message, errno: e } => {
                write!(f, "failed: {message}{}", errno(e))
            }
        }
    }
}

/// How an IPC message misused a registered buffer ([`Error::Registry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryProblem {
    /// No buffer of this id is registered on the connection.
    Unregistered,
    /// A buffer of this id is already registered.
    Duplicate,
    /// The buffer is unregistered while memories of it are alive (it stays
    /// registered and mapped).
    InUse {
        /// Frames' memories of it still alive.
        live: usize,
    },
    /// A memory's region does not lie inside the buffer.
    OutsideBuffer {
        /// The region's offset.
        offset: u64,
        /// The region's size.
        size: u64,
        /// The buffer's size.
        maxsize: u64,
    },
    /// The receiver already holds as many buffers as its policy allows.
    TooMany {
        /// The bound.
        limit: usize,
    },
}

impl fmt::Display for RegistryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryProblem::Unregistered => f.write_str("is not registered"),
            RegistryProblem::Duplicate => f.write_str("is already registered"),
            RegistryProblem::InUse { live } => write!(
                f,
                "cannot be unregistered: {live} memories of it are alive (it stays mapped)"
            ),
            RegistryProblem::OutsideBuffer {
                offset,
                size,
                maxsize,
            } => write!(
                f,
                "region {offset}+{size} is outside the buffer's {maxsize} bytes"
            ),
            RegistryProblem::TooMany { limit } => {
                write!(f, "cannot be registered: {limit} buffers already are")
            }
        }
    }
}

/// One provider of a dma-buf chain and why it could not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    /// The provider's name (as [`PROVIDERS_ENV`](crate::provider::PROVIDERS_ENV) spells it).
    pub provider: String,
    /// Why.
    pub reason: ProviderReason,
}

impl ProviderFailure {
    /// One line per failure, each starting on a new line.
    fn list(failures: &[ProviderFailure]) -> String {
        if failures.is_empty() {
            return " no provider is configured".to_owned();
        }
        failures
            .iter()
            .map(|p| format!("\n  {}: {}", p.provider, p.reason))
            .collect()
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
