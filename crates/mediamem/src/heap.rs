//! DMA-BUF heaps: [`DmaHeapAllocator`] allocates dma-buf memory from
//! `/dev/dma_heap/<name>` (`system`, `linux,cma`, `reserved`, vendor heaps).
//!
//! Allocations are page-rounded (`size + prefix + padding + align`, with
//! the caller's align mask as given, as GStreamer's udmabuf does),
//! `O_RDWR | O_CLOEXEC` dma-bufs, kept mapped, with sync-bracketed maps.
//! Errors say whether a heap is missing (and which heaps exist) or present
//! but not accessible.

use std::os::fd::{AsFd, OwnedFd};

use crate::allocator::{AllocationParams, Allocator, AllocatorCaps, AllocatorImpl};
use crate::dmabuf::new_dmabuf_parts;
use crate::error::{Error, Result};
use crate::kind::{open_device, page_rounded_maxsize};
use crate::memory::MemoryParts;
use crate::sys;

/// Where the heaps live.
pub const DMA_HEAP_DIR: &str = "/dev/dma_heap";

/// Memory type of heap memory.
pub const DMA_HEAP_MEMORY_TYPE: &str = "dmaheap";

/// The heaps present on this machine, by name, sorted.
pub fn list_heaps() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(DMA_HEAP_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `DMA_HEAP_IOCTL_ALLOC` of `len` bytes (`O_RDWR | O_CLOEXEC`).
pub(crate) fn heap_alloc_fd(heap: std::os::fd::BorrowedFd<'_>, len: usize) -> Result<OwnedFd> {
    sys::dma_heap_alloc(heap, len as u64).map_err(|e| match e {
        rustix::io::Errno::NOMEM => Error::OutOfMemory { size: len },
        e => Error::os("DMA_HEAP_IOCTL_ALLOC", e),
    })
}

/// The heap allocator implementation for one heap.
#[derive(Debug)]
pub(crate) struct DmaHeapAllocatorImpl {
    name: String,
    device: OwnedFd,
}

impl DmaHeapAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps = AllocatorCaps::PLAIN_ALLOC
        .union(AllocatorCaps::FD_BACKED)
        .union(AllocatorCaps::DMABUF);
}

impl AllocatorImpl for DmaHeapAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        DMA_HEAP_MEMORY_TYPE
    }

    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let maxsize = page_rounded_maxsize(size, params)?;
        let fd = heap_alloc_fd(self.device.as_fd(), maxsize)?;
        new_dmabuf_parts(fd, maxsize, size, params)
    }
}

crate::allocator::allocator_handle! {
    /// Allocates dma-bufs from one DMA-BUF heap.
    ///
    /// ```no_run
    /// use mediamem::heap::DmaHeapAllocator;
    /// let heap = DmaHeapAllocator::new("system")?;
    /// let mem = heap.alloc(1 << 20, None)?;
    /// assert!(mediamem::is_dmabuf_memory(&mem));
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    DmaHeapAllocator => DmaHeapAllocatorImpl
}

impl DmaHeapAllocator {
    /// Open the heap `name`.
    ///
    /// # Errors
    /// [`Error::NotAvailable`] saying whether the heap is missing (and which
    /// heaps exist) or not accessible; [`Error::BadFd`] for a name that is
    /// not a plain file name.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::BadFd {
                reason: format!("{name:?} is not a heap name"),
            });
        }
        let path = format!("{DMA_HEAP_DIR}/{name}");
        let device = open_device(&path, &format!("dma-heap {name:?}")).map_err(|e| match e {
            Error::NotAvailable { what, reason: _ } if !std::path::Path::new(&path).exists() => {
                let present = list_heaps();
                Error::NotAvailable {
                    what,
                    reason: format!(
                        "no such heap; heaps here: {}",
                        if present.is_empty() {
                            "none".to_owned()
                        } else {
                            present.join(", ")
                        }
                    ),
                }
            }
            e => e,
        })?;
        Ok(DmaHeapAllocator(Allocator::new(DmaHeapAllocatorImpl {
            name: name.to_owned(),
            device,
        })))
    }

    /// The heap allocator for `name`, registered as `"dmaheap:<name>"` on
    /// first use.
    pub fn get(name: &str) -> Result<DmaHeapAllocator> {
        let key = format!("{DMA_HEAP_MEMORY_TYPE}:{name}");
        if let Some(a) = Allocator::find(Some(&key)).and_then(Self::from_allocator) {
            return Ok(a);
        }
        let heap = DmaHeapAllocator::new(name)?;
        let registered = Allocator::register_once(&key, || heap.0.clone());
        Ok(Self::from_allocator(registered).unwrap_or(heap))
    }

    /// The heap's name.
    pub fn name(&self) -> &str {
        &self.imp().name
    }
}
