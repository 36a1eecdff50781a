//! dma-buf memory: [`DmaBufAllocator`] (GStreamer's `GstDmaBufAllocator`,
//! `"dmabuf"`) and the seed functions [`is_dmabuf_memory`] and
//! [`dmabuf_memory_get_fd`].
//!
//! dma-buf memory is fd memory (same mapping rules, [`is_fd_memory`] is true)
//! whose CPU access is bracketed with `DMA_BUF_IOCTL_SYNC`: every map issues
//! `SYNC_START` with the map's READ/WRITE bits after the mmap succeeded,
//! every unmap issues `SYNC_END` with the same bits before the mapping can
//! go. A failing sync (for example `ENOTTY` on an fd that is not a dma-buf)
//! is logged as a warning and does not fail the map, as in GStreamer.
//!
//! Before that, a map waits for the buffer's fences, *bounded*: a read map
//! for the writers' fences (`poll` for `POLLIN` on the dma-buf), a write map
//! for every fence (`POLLOUT`), for at most the memory's fence timeout
//! ([`DEFAULT_FENCE_TIMEOUT`], 5 s, unless [`set_default_fence_timeout`]
//! or [`set_fence_timeout`] changed it). When it runs out the map fails
//! with [`Error::FenceTimedOut`], which names
//! the fences and the fd, and nothing is mapped. GStreamer waits inside
//! `SYNC_START`, which the kernel does without a bound: a fence that never
//! signals (a hung GPU job) would hang the map for ever. See the
//! [`sync`](crate::sync) module for fences themselves.
//!
//! The bound covers the fences the buffer has when the map polls it. A
//! fence that another process or device attaches between that `poll` and
//! `SYNC_START` is waited for inside `SYNC_START`, without a bound, as in
//! GStreamer: a window no user-space check can close (the kernel offers
//! no bounded `SYNC_START`). Keep writers from attaching fences to a
//! buffer while it is being mapped, or export its fences
//! ([`export_sync_file`](crate::sync::export_sync_file)) and wait on them
//! yourself.
//!
//! [`is_fd_memory`]: crate::is_fd_memory

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::allocator::{AllocationParams, Allocator, AllocatorCaps, AllocatorFlags, AllocatorImpl};
use crate::error::{Error, Result};
use crate::fd::{check_owned, dup_fd, fd_block, FdBlock, FdHandle, FdMemoryFlags};
use crate::memory::{MapFlags, Memory, MemoryBackend, MemoryKind, MemoryParts};

/// Name (and memory type) of the dma-buf allocator.
pub const ALLOCATOR_DMABUF: &str = "dmabuf";

/// Caps feature of dma-buf memory that must not be mapped (`"memory:DMABuf"`).
pub const CAPS_FEATURE_MEMORY_DMABUF: &str = "memory:DMABuf";

/// The dma-buf allocator implementation: memory type `"dmabuf"`, flags
/// `CUSTOM_ALLOC`.
#[derive(Debug, Default)]
pub(crate) struct DmaBufAllocatorImpl;

impl DmaBufAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps = AllocatorCaps::FD_BACKED.union(AllocatorCaps::DMABUF);
}

impl AllocatorImpl for DmaBufAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        ALLOCATOR_DMABUF
    }
    fn flags(&self) -> AllocatorFlags {
        AllocatorFlags::CUSTOM_ALLOC
    }
}

crate::allocator::allocator_handle! {
    /// Wraps dma-buf fds as [`Memory`] (`GstDmaBufAllocator`).
    DmaBufAllocator => DmaBufAllocatorImpl, new
}

impl DmaBufAllocator {
    /// Wrap `size` bytes of the dma-buf `fd` (`gst_dmabuf_allocator_alloc`).
    /// The memory owns the fd.
    pub fn alloc(&self, fd: OwnedFd, size: usize) -> Result<Memory> {
        self.alloc_with_flags(fd, size, FdMemoryFlags::empty())
    }

    /// Wrap `size` bytes of `fd` with fd-memory `flags`
    /// (`gst_dmabuf_allocator_alloc_with_flags`). `DONT_CLOSE` needs
    /// [`FdAllocator::alloc_unowned`](crate::FdAllocator::alloc_unowned)'s
    /// contract and is refused here.
    pub fn alloc_with_flags(
        &self,
        fd: OwnedFd,
        size: usize,
        flags: FdMemoryFlags,
    ) -> Result<Memory> {
        check_owned(flags)?;
        import_dmabuf(&self.0, FdHandle::Owned(fd), size, 0, size, flags)
    }

    /// Wrap a duplicate of `fd`; the caller keeps its own (`DONT_CLOSE` is
    /// implied for it and ignored).
    pub fn alloc_borrowed(
        &self,
        fd: BorrowedFd<'_>,
        size: usize,
        flags: FdMemoryFlags,
    ) -> Result<Memory> {
        self.alloc_with_flags(dup_fd(fd)?, size, flags - FdMemoryFlags::DONT_CLOSE)
    }
}

/// Whether `mem` is dma-buf memory (`gst_is_dmabuf_memory`); shares of
/// dma-buf memory are dma-buf memory too.
pub fn is_dmabuf_memory(mem: &Memory) -> bool {
    mem.root_backend().kind() == MemoryKind::DmaBuf
}

/// The dma-buf fd of `mem`, still owned by the memory
/// (`gst_dmabuf_memory_get_fd`); `None` when it is not dma-buf memory.
pub fn dmabuf_memory_get_fd(mem: &Memory) -> Option<BorrowedFd<'_>> {
    let backend = mem.root_backend();
    (backend.kind() == MemoryKind::DmaBuf)
        .then(|| backend.fd())
        .flatten()
}

/// How long a map of dma-buf memory waits for the buffer's fences by
/// default before it fails with
/// [`Error::FenceTimedOut`]: 5 s, long past
/// any frame's GPU work and short of the 10 s after which kernels
/// typically declare a GPU job hung.
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Stands for "the process-wide default" in a memory's timeout.
const USE_DEFAULT: u64 = u64::MAX;

/// The process-wide fence timeout of maps, in nanoseconds.
static DEFAULT_TIMEOUT_NS: AtomicU64 = AtomicU64::new(DEFAULT_FENCE_TIMEOUT.as_nanos() as u64);

fn to_ns(timeout: Duration) -> u64 {
    // `USE_DEFAULT - 1` ns is 584 years: for ever.
    u64::try_from(timeout.as_nanos()).map_or(USE_DEFAULT - 1, |n| n.min(USE_DEFAULT - 1))
}

/// Set how long maps of dma-buf memory wait for fences, for every memory
/// without a timeout of its own ([`set_fence_timeout`]). `Duration::MAX`
/// waits for ever (the kernel's own behaviour); `Duration::ZERO` fails
/// any map of a buffer with unsignaled fences at once.
pub fn set_default_fence_timeout(timeout: Duration) {
    DEFAULT_TIMEOUT_NS.store(to_ns(timeout), Ordering::Relaxed);
}

/// The process-wide fence timeout of maps ([`set_default_fence_timeout`]).
pub fn default_fence_timeout() -> Duration {
    Duration::from_nanos(DEFAULT_TIMEOUT_NS.load(Ordering::Relaxed))
}

/// Set how long maps of the dma-buf memory `mem` (its block: shares
/// included) wait for the buffer's fences (`None`: the process-wide
/// default again).
///
/// A dma-buf received through [`ipc`](crate::ipc) as a registered buffer,
/// or in a frame with an acquire fence, is a view of the receiver's
/// buffer, not dma-buf memory of its own: it gives [`Error::WrongKind`],
/// and its maps wait for the process-wide default
/// ([`set_default_fence_timeout`]). (Unregistered, unfenced ones are
/// dma-buf memory and take a timeout of their own.)
///
/// # Errors
/// [`Error::WrongKind`] when `mem` is not dma-buf memory of
/// [`DmaBufAllocator`] or a dma-buf allocator of mediamem.
pub fn set_fence_timeout(mem: &Memory, timeout: Option<Duration>) -> Result<()> {
    let backend = mem
        .backend::<DmaBufBackend>()
        .ok_or_else(|| Error::WrongKind {
            expected: "dma-buf",
            found: mem.allocator().mem_type().to_owned(),
        })?;
    backend
        .fence_timeout_ns
        .store(timeout.map_or(USE_DEFAULT, to_ns), Ordering::Relaxed);
    Ok(())
}

/// The backend of dma-buf memory: an fd block whose CPU access is
/// bracketed with `DMA_BUF_IOCTL_SYNC`. Reach it with [`Memory::backend`].
#[derive(Debug)]
pub struct DmaBufBackend {
    block: FdBlock,
    /// How long a map waits for fences, in ns; `USE_DEFAULT`: the
    /// process-wide default.
    fence_timeout_ns: AtomicU64,
}

impl DmaBufBackend {
    /// dma-buf memory over `block`.
    pub(crate) fn new(block: FdBlock) -> Self {
        DmaBufBackend {
            block,
            fence_timeout_ns: AtomicU64::new(USE_DEFAULT),
        }
    }

    /// How long a map of this memory waits for the buffer's fences.
    pub fn fence_timeout(&self) -> Duration {
        match self.fence_timeout_ns.load(Ordering::Relaxed) {
            USE_DEFAULT => default_fence_timeout(),
            ns => Duration::from_nanos(ns),
        }
    }

    /// Wait, bounded, for the fences a map with `flags` must wait for:
    /// the writers' for a read (`POLLIN` on a dma-buf), every fence for a
    /// write (`POLLOUT`). A `poll` that fails is logged and the map goes on
    /// (its `SYNC_START` waits, as GStreamer's does).
    fn wait_fences(&self, flags: MapFlags) -> Result<()> {
        let (events, what) = if flags.contains(MapFlags::WRITE) {
            (
                rustix::event::PollFlags::OUT,
                "every fence (readers' and writers')",
            )
        } else {
            (rustix::event::PollFlags::IN, "the writers' fences")
        };
        let timeout = self.fence_timeout();
        match crate::sys::poll_until(self.fd(), events, timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::FenceTimedOut {
                what: format!(
                    "{what} of dma-buf fd {} before a map for {}",
                    self.fd().as_raw_fd(),
                    if flags.contains(MapFlags::WRITE) {
                        "writing"
                    } else {
                        "reading"
                    }
                ),
                timeout,
            }),
            Err(e) => {
                log::warn!(
                    "poll for the fences of fd {} failed: {e}",
                    self.fd().as_raw_fd()
                );
                Ok(())
            }
        }
    }

    /// The dma-buf fd (still owned by the memory). The block's other
    /// accessors are reached through `Deref` ([`FdBlock`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.block.fd()
    }

    /// Map read-write once (with its syncs), keep the mapping, and lock its
    /// pages in RAM (CMA memory, whose frames must not move). Returns the
    /// address. The block must have been made with `KEEP_MAPPED`, so the
    /// mapping outlives the unmap.
    pub(crate) fn lock_in_ram(&mut self) -> Result<usize> {
        debug_assert!(self.block.flags().contains(FdMemoryFlags::KEEP_MAPPED));
        self.map(self.block.maxsize(), MapFlags::READWRITE)?;
        self.unmap(MapFlags::READWRITE);
        self.block.lock_in_ram()
    }

    /// `DMA_BUF_IOCTL_SYNC` with `phase` and the READ/WRITE bits of `flags`.
    /// A failure is only a warning, as in GStreamer: the map stays valid.
    fn sync(&self, phase: u64, flags: MapFlags) {
        let mut bits = phase;
        if flags.contains(MapFlags::READ) {
            bits |= crate::sys::DMA_BUF_SYNC_READ;
        }
        if flags.contains(MapFlags::WRITE) {
            bits |= crate::sys::DMA_BUF_SYNC_WRITE;
        }
        if let Err(e) = crate::sys::dma_buf_sync(self.fd(), bits) {
            log::warn!(
                "DMA_BUF_IOCTL_SYNC({}) on fd {} failed: {e}",
                if phase == crate::sys::DMA_BUF_SYNC_END {
                    "END"
                } else {
                    "START"
                },
                self.fd().as_raw_fd()
            );
        }
    }
}

impl std::ops::Deref for DmaBufBackend {
    type Target = FdBlock;
    fn deref(&self) -> &FdBlock {
        &self.block
    }
}

// SAFETY: as fd memory's: `map` returns the block's live mapping
// (`FileMapping`) of `maxsize` bytes of the buffer, readable, writable when
// WRITE was asked, until the matching unmap (or, kept, until drop).
unsafe impl MemoryBackend for DmaBufBackend {
    fn map(&self, maxsize: usize, flags: MapFlags) -> Result<NonNull<u8>> {
        debug_assert!(maxsize <= self.block.maxsize());
        // Bounded, before SYNC_START's unbounded wait has anything to wait
        // for.
        self.wait_fences(flags)?;
        let ptr = self.block.map(ALLOCATOR_DMABUF, flags)?;
        // Sync only after a successful map, on every map (GStreamer does
        // not reference-count it either).
        self.sync(crate::sys::DMA_BUF_SYNC_START, flags);
        Ok(ptr)
    }

    fn unmap(&self, flags: MapFlags) {
        // END before the mapping can go away.
        self.sync(crate::sys::DMA_BUF_SYNC_END, flags);
        self.block.unmap();
    }

    crate::fd::fd_block_backend!();

    fn kind(&self) -> MemoryKind {
        MemoryKind::DmaBuf
    }
}

/// Validate an fd and build the parts of dma-buf memory over it.
pub(crate) fn dmabuf_parts(
    fd: FdHandle,
    maxsize: usize,
    offset: usize,
    size: usize,
    flags: FdMemoryFlags,
) -> Result<MemoryParts> {
    let block = fd_block(fd, maxsize, flags)?;
    Ok(MemoryParts::new(Box::new(DmaBufBackend::new(block)), maxsize).region(offset, size))
}

/// Make dma-buf memory of `allocator` over `fd`.
pub(crate) fn import_dmabuf(
    allocator: &Allocator,
    fd: FdHandle,
    maxsize: usize,
    offset: usize,
    size: usize,
    flags: FdMemoryFlags,
) -> Result<Memory> {
    Memory::from_parts(allocator, dmabuf_parts(fd, maxsize, offset, size, flags)?)
}

/// The parts of dma-buf memory over a whole new buffer `fd` of `maxsize`
/// bytes that an allocator made for `size` bytes with `params`: kept mapped,
/// visible from `params.prefix`, with the caller's flags and align mask.
pub(crate) fn new_dmabuf_parts(
    fd: OwnedFd,
    maxsize: usize,
    size: usize,
    params: &AllocationParams,
) -> Result<MemoryParts> {
    Ok(dmabuf_parts(
        FdHandle::Owned(fd),
        maxsize,
        params.prefix,
        size,
        FdMemoryFlags::KEEP_MAPPED,
    )?
    .flags(params.flags)
    .align(params.align))
}
