//! The storage behind a root memory and its per-kind behaviour.

use std::any::Any;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use super::flags::{MapFlags, MemoryFlags};
use super::{BlockAlias, Memory};
use crate::error::Result;

/// The storage of a root memory and how to reach it: GStreamer's per-allocator
/// `mem_map` / `mem_unmap` / `mem_share` / `mem_is_span` / `mem_copy`,
/// owned by the memory itself.
///
/// Shares never have a backend of their own: mapping a share maps its root
/// (as GStreamer's fd memory does), so one block has one mapping however
/// many shares look at it. The storage is released when the backend is
/// dropped, which happens when the root and every share are gone.
///
/// # Safety
///
/// A successful [`map`](MemoryBackend::map) must return a pointer to at least
/// `maxsize` initialised bytes that stay valid for reads (and for writes
/// when `flags` contains WRITE) until the matching
/// [`unmap`](MemoryBackend::unmap), and a
/// [`static_ptr`](MemoryBackend::static_ptr) must stay valid for reads of
/// `maxsize` initialised bytes (and writes, unless the memory is READONLY)
/// while the backend lives. mediamem
/// builds `&[u8]` and `&mut [u8]` from these pointers.
pub unsafe trait MemoryBackend: Any + Send + Sync + fmt::Debug {
    /// Make the whole block (`maxsize` bytes from offset 0) accessible and
    /// return its start. Called after the lock word accepted the map, once
    /// per map (nested maps included).
    fn map(&self, maxsize: usize, flags: MapFlags) -> Result<NonNull<u8>>;

    /// The block's address if it is always accessible there for the
    /// backend's whole life (heap memory): readable, and writable unless the
    /// memory is READONLY (which refuses every WRITE map). Map and unmap then
    /// never call the backend. Default: `None`.
    fn static_ptr(&self) -> Option<NonNull<u8>> {
        None
    }

    /// Undo one successful [`map`](MemoryBackend::map) with the same flags.
    fn unmap(&self, flags: MapFlags) {
        let _ = flags;
    }

    /// Whether shares can be made (`mem_share` present). Default: yes.
    fn can_share(&self) -> bool {
        true
    }

    /// Whether the visible region `first` (offset, size) is directly
    /// followed by `second` in this block (`mem_is_span`). The default is
    /// GStreamer's fallback, which never spans.
    fn is_span(&self, first: (usize, usize), second: (usize, usize)) -> bool {
        let _ = (first, second);
        false
    }

    /// The byte-borrow rule this block shares with every other root that
    /// reaches the same storage (see [`BlockAlias`]). Backends whose storage
    /// can be reached again in this process, through an fd or a handle,
    /// return one; it is read once, when the root is made.
    fn alias(&self) -> Option<&BlockAlias> {
        None
    }

    /// What kind of memory this is (the seed functions `is_dmabuf_memory`,
    /// `is_drm_dumb_memory`, ... ask this).
    fn kind(&self) -> MemoryKind {
        MemoryKind::Other
    }

    /// The fd behind the block, for kinds that have one (fd memory and the
    /// kinds built on it: `is_fd_memory`, `fd_memory_get_fd`).
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// A kind-specific copy of `size` bytes starting `offset` bytes into the
    /// block (`mem_copy`). `None` selects the generic copy: map for reading,
    /// allocate from this memory's allocator (or the default one when the
    /// allocator is CUSTOM_ALLOC/NO_COPY or has no plain `alloc`), copy.
    fn copy(&self, memory: &Memory, offset: usize, size: usize) -> Option<Result<Memory>> {
        let _ = (memory, offset, size);
        None
    }
}

/// The kind of a memory's storage, as the seed functions tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryKind {
    /// Process memory: system memory, wrapped bytes.
    System,
    /// fd memory: an imported fd, shm, huge pages (`is_fd_memory`).
    Fd,
    /// dma-buf memory: fd memory whose CPU access is synced
    /// (`is_dmabuf_memory`; `is_fd_memory` too).
    DmaBuf,
    /// A DRM dumb buffer (`is_drm_dumb_memory`).
    DrmDumb,
    /// Anything else (custom backends).
    Other,
}

/// Where a root keeps its backend: system blocks inline (one heap
/// allocation less for every system memory and every copy), any other kind
/// behind a box.
pub(crate) enum BackendSlot {
    System(super::system::SysBlock),
    Boxed(Box<dyn MemoryBackend>),
}

impl BackendSlot {
    /// The backend.
    #[inline]
    pub(crate) fn get(&self) -> &dyn MemoryBackend {
        match self {
            BackendSlot::System(block) => block,
            BackendSlot::Boxed(backend) => &**backend,
        }
    }
}

impl fmt::Debug for BackendSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// Everything needed to make a root [`Memory`]: what an
/// [`AllocatorImpl::alloc`](crate::AllocatorImpl::alloc) returns and what
/// [`Memory::from_parts`] takes.
#[derive(Debug)]
pub struct MemoryParts {
    pub(crate) backend: BackendSlot,
    pub(crate) flags: MemoryFlags,
    pub(crate) maxsize: usize,
    pub(crate) align: usize,
    pub(crate) offset: usize,
    pub(crate) size: usize,
}

impl MemoryParts {
    /// A block of `maxsize` bytes, all visible, no flags, align mask 0.
    pub fn new(backend: Box<dyn MemoryBackend>, maxsize: usize) -> Self {
        Self::with_slot(BackendSlot::Boxed(backend), maxsize)
    }

    /// A system block of `maxsize` bytes, kept inline in the memory.
    pub(crate) fn system(block: super::system::SysBlock, maxsize: usize) -> Self {
        Self::with_slot(BackendSlot::System(block), maxsize)
    }

    fn with_slot(backend: BackendSlot, maxsize: usize) -> Self {
        MemoryParts {
            backend,
            flags: MemoryFlags::empty(),
            maxsize,
            align: 0,
            offset: 0,
            size: maxsize,
        }
    }

    /// Set the memory flags.
    pub fn flags(mut self, flags: MemoryFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Set the alignment mask (checked by [`Memory::from_parts`]).
    pub fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// Set the visible region (checked by [`Memory::from_parts`]).
    pub fn region(mut self, offset: usize, size: usize) -> Self {
        self.offset = offset;
        self.size = size;
        self
    }
}
