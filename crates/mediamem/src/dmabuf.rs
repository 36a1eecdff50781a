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
//! [`is_fd_memory`]: crate::is_fd_memory

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use crate::allocator::{AllocationParams, Allocator, AllocatorCaps, AllocatorFlags, AllocatorImpl};
use crate::error::Result;
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

/// The backend of dma-buf memory: an fd block whose CPU access is
/// bracketed with `DMA_BUF_IOCTL_SYNC`. Reach it with [`Memory::backend`].
#[derive(Debug)]
pub struct DmaBufBackend {
    block: FdBlock,
}

impl DmaBufBackend {
    /// dma-buf memory over `block`.
    pub(crate) fn new(block: FdBlock) -> Self {
        DmaBufBackend { block }
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
