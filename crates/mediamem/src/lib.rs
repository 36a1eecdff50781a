//! # mediamem
//!
//! GStreamer's memory and allocator system (`GstMemory` and
//! `libgstallocators`) in pure Rust, for Linux: reference-counted, mappable,
//! shareable memory with GStreamer's semantics, without libgstreamer.
//!
//! * [`Memory`]: the handle. Map it with guards ([`Memory::map_readable`],
//!   [`Memory::map_writable`], and [`Memory::map_mut`], lock-free on the
//!   only handle), make zero-copy views with
//!   [`Memory::share`], copy with [`Memory::copy_range`], trim with
//!   [`Memory::resize`], merge adjacent views with [`Memory::is_span`].
//! * [`Allocator`]: the allocator handle, with the process-wide registry
//!   ([`Allocator::find`], [`Allocator::register`],
//!   [`Allocator::set_default`]). `"SystemMemory"` ([`SystemAllocator`]) is
//!   registered and the default at first use.
//! * fd-backed memory: [`FdAllocator`] imports any mappable fd,
//!   [`ShmAllocator`] allocates sealed memfd memory that other processes can
//!   map, [`DmaBufAllocator`] imports dma-bufs and brackets CPU access with
//!   `DMA_BUF_IOCTL_SYNC`. The seed functions [`is_fd_memory`],
//!   [`fd_memory_get_fd`], [`is_dmabuf_memory`] and [`dmabuf_memory_get_fd`]
//!   are here at the crate root.
//! * Custom memory kinds implement [`AllocatorImpl`] and [`MemoryBackend`].
//!
//! ```
//! use mediamem::{Allocator, AllocationParams, MemoryFlags};
//!
//! let params = AllocationParams::new(MemoryFlags::ZERO_PADDED, 63, 0, 32);
//! let frame = Allocator::system().alloc(1920 * 1080, Some(&params))?;
//! frame.map_writable()?.fill(0x80);
//!
//! let first_line = frame.share(..1920)?;
//! assert_eq!(first_line.map_readable()?[0], 0x80);
//! assert_eq!(frame.lock_state(), 0x10000); // one share holds the block
//! # Ok::<(), mediamem::Error>(())
//! ```
//!
//! The crate-level documentation of [`memory`] lists every GStreamer quirk
//! and what mediamem does about it.

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod dmabuf;
pub mod drm;
pub mod error;
pub mod fd;
#[cfg(feature = "gstreamer")]
pub mod gst_bridge;
pub mod heap;
pub mod ipc;
mod kind;
pub mod layout;
mod mapping;
pub mod memory;
pub use memory::{allocator, system};
pub mod phys;
pub mod pool;
pub mod probe;
pub mod provider;
pub mod shm;
pub mod sync;
mod sys;
pub mod udmabuf;
pub mod unixfd;
pub mod v4l2;

pub use allocator::{
    AllocationParams, Allocator, AllocatorCaps, AllocatorFlags, AllocatorImpl, ALLOCATOR_SYSMEM,
};
pub use dmabuf::{dmabuf_memory_get_fd, is_dmabuf_memory, DmaBufAllocator};
pub use drm::{
    drm_dumb_memory_export_dmabuf, drm_dumb_memory_get_handle, is_drm_dumb_memory, DrmDumbAllocator,
};
pub use error::{Error, ProviderFailure, ProviderReason, RegistryProblem, Result, V4l2Problem};
pub use fd::{fd_memory_get_fd, is_fd_memory, FdAllocator, FdMemoryFlags};
pub use heap::DmaHeapAllocator;
pub use memory::{
    Dynamic, IntoMappedError, LockFlags, LockGuard, MapFlags, MapMode, MappedMemory, Memory,
    MemoryBackend, MemoryFlags, MemoryMap, MemoryMapMut, MemoryParts, Owned, RawMap, Readable,
    Writable, DEFAULT_ALIGN_MASK,
};
pub use phys::{is_phys_memory, phys_memory_get_phys_addr, HugePageAllocator, PhysMemoryAllocator};
pub use shm::ShmAllocator;
pub use sync::{export_sync_file, import_sync_file, FenceAccess, SyncFile};
pub use system::SystemAllocator;
pub use udmabuf::UdmabufAllocator;

/// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
