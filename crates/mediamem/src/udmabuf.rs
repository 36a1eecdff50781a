//! udmabuf: [`UdmabufAllocator`] (GStreamer 1.28's `GstUdmabufAllocator`,
//! `"udmabuf"`), dma-bufs made from sealed memfds through `/dev/udmabuf`.
//!
//! Each allocation is a memfd of `size + prefix + padding + align` bytes
//! rounded up to the page size, sealed against shrinking (the kernel requires
//! it), turned into a dma-buf with `UDMABUF_CREATE` (close-on-exec); the memfd
//! is then closed, the kernel keeps its pages. The memory is dma-buf memory
//! (`KEEP_MAPPED`, sync-bracketed maps). Like GStreamer, the allocator is not
//! `CUSTOM_ALLOC`: copies are udmabuf memory too.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::SealFlags;

use crate::allocator::{AllocationParams, Allocator, AllocatorCaps, AllocatorImpl};
use crate::dmabuf::new_dmabuf_parts;
use crate::error::{Error, Result};
use crate::kind::{create_memfd, open_device, page_rounded_maxsize};
use crate::memory::MemoryParts;

/// Name (and memory type) of the udmabuf allocator.
pub const ALLOCATOR_UDMABUF: &str = "udmabuf";

/// The udmabuf device node.
pub const UDMABUF_DEVICE: &str = "/dev/udmabuf";

/// The udmabuf allocator implementation; holds `/dev/udmabuf` open.
#[derive(Debug)]
pub(crate) struct UdmabufAllocatorImpl {
    device: OwnedFd,
}

impl UdmabufAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps = AllocatorCaps::PLAIN_ALLOC
        .union(AllocatorCaps::FD_BACKED)
        .union(AllocatorCaps::DMABUF);
}

impl AllocatorImpl for UdmabufAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        ALLOCATOR_UDMABUF
    }

    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let maxsize = page_rounded_maxsize(size, params)?;
        let memfd = create_memfd("mediamem-udmabuf")?;
        rustix::fs::ftruncate(&memfd, maxsize as u64).map_err(|e| Error::os("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK)
            .map_err(|e| Error::os("fcntl(F_ADD_SEALS)", e))?;
        let dmabuf =
            crate::sys::udmabuf_create(self.device.as_fd(), memfd.as_fd(), 0, maxsize as u64)
                .map_err(|e| Error::os("UDMABUF_CREATE", e))?;
        drop(memfd);
        new_dmabuf_parts(dmabuf, maxsize, size, params)
    }
}

crate::allocator::allocator_handle! {
    /// The process-wide udmabuf allocator (derefs to [`Allocator`]).
    UdmabufAllocator => UdmabufAllocatorImpl
}

impl UdmabufAllocator {
    /// Open `/dev/udmabuf` and register `"udmabuf"` if that worked
    /// (`gst_udmabuf_allocator_init_once`).
    pub fn init_once() -> Result<()> {
        Self::get().map(drop)
    }

    /// The udmabuf allocator (`gst_udmabuf_allocator_get`), or why there is
    /// none (no device, or no permission).
    pub fn get() -> Result<UdmabufAllocator> {
        if let Some(a) = Allocator::find(Some(ALLOCATOR_UDMABUF)).and_then(Self::from_allocator) {
            return Ok(a);
        }
        let device = open_device(UDMABUF_DEVICE, "udmabuf")?;
        let made = Allocator::new(UdmabufAllocatorImpl { device });
        let registered = Allocator::register_once(ALLOCATOR_UDMABUF, || made.clone());
        // Another allocator registered as "udmabuf" keeps the name; ours is
        // still returned.
        Ok(Self::from_allocator(registered).unwrap_or(UdmabufAllocator(made)))
    }
}
