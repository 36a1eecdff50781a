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

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::allocator::{AllocatorFlags, AllocatorImpl};
use crate::error::Result;
use crate::fd::{dup_fd, import_owned, FdBackend, FdKind, FdMemoryFlags};
use crate::memory::Memory;

/// Name (and memory type) of the dma-buf allocator.
pub const ALLOCATOR_DMABUF: &str = "dmabuf";

/// Caps feature of dma-buf memory that must not be mapped (`"memory:DMABuf"`).
pub const CAPS_FEATURE_MEMORY_DMABUF: &str = "memory:DMABuf";

/// The dma-buf allocator implementation: memory type `"dmabuf"`, flags
/// `CUSTOM_ALLOC`.
#[derive(Debug, Default)]
pub struct DmaBufAllocatorImpl;

impl AllocatorImpl for DmaBufAllocatorImpl {
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
        import_owned(&self.0, fd, size, 0, size, flags, FdKind::DmaBuf)
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
    mem.backend::<FdBackend>().is_some_and(FdBackend::is_dmabuf)
}

/// The dma-buf fd of `mem`, still owned by the memory
/// (`gst_dmabuf_memory_get_fd`); `None` when it is not dma-buf memory.
pub fn dmabuf_memory_get_fd(mem: &Memory) -> Option<BorrowedFd<'_>> {
    mem.backend::<FdBackend>()
        .filter(|b| b.is_dmabuf())
        .map(FdBackend::fd)
}
