//! [`Memory`] ↔ `gst::Memory`, through gstreamer-rs (feature
//! `gstreamer`, off by default: it links libgstreamer-1.0 and
//! libgstallocators-1.0).
//!
//! | from | to | how |
//! |---|---|---|
//! | mediamem dma-buf memory | GStreamer | a duplicate of the fd, `GstDmaBufAllocator` |
//! | mediamem fd memory (fd, shm, huge page) | GStreamer | a duplicate of the fd, `GstFdAllocator` |
//! | any other mediamem memory | GStreamer | wrapped zero-copy (`gst_memory_new_wrapped`): the GStreamer memory keeps a read map of the mediamem memory alive, and is read-only |
//! | GStreamer dma-buf / fd memory | mediamem | a duplicate of the fd, [`DmaBufAllocator`] / [`FdAllocator`] |
//! | any other GStreamer memory | mediamem | wrapped zero-copy ([`Memory::from_slice`]): the mediamem memory keeps a read map of the GStreamer memory alive, and is read-only |
//!
//! Wrapping needs a read map. A mediamem memory mapped writable elsewhere
//! cannot be read (nor copied) while that map lives: [`to_gst`] then
//! fails with [`Error::Aliased`] or [`Error::LockConflict`]. A GStreamer
//! memory that refuses a read map is copied (`gst_memory_copy`, whose
//! result is system memory) and the copy wrapped. Both fd paths cross the same file (the same `st_ino` on both
//! sides): the bytes are shared, offset and size are kept, and the
//! GStreamer side is read-only (a share) when the mediamem memory is. The
//! GStreamer memory holds a handle to the mediamem memory until GStreamer
//! frees it (and every share of it), so a pooled block is not handed out
//! again while a pipeline still reads it.

use gstreamer as gst;

use crate::error::{Error, Result};
use crate::fd::{dup_fd, FdAllocator, FdMemoryFlags};
use crate::memory::Memory;
use crate::DmaBufAllocator;

fn gst_error(operation: &'static str, what: impl std::fmt::Display) -> Error {
    Error::NotAvailable {
        what: format!("GStreamer ({operation})"),
        reason: what.to_string(),
    }
}

fn init() -> Result<()> {
    gst::init().map_err(|e| gst_error("gst_init", e))
}

/// A `gst::Memory` for `mem`: its fd duplicated for fd and dma-buf memory,
/// wrapped zero-copy otherwise (see the module docs).
///
/// The fd goes over as it is: nothing waits for a received frame's
/// acquire fence ([`Frame::take_acquire_fence`](crate::ipc::Frame::take_acquire_fence))
/// or the buffer's own fences first. GStreamer's dma-buf maps wait for
/// the buffer's implicit fences (in `SYNC_START`); an acquire fence that
/// came with a frame, wait on yourself (or hand to the element) before
/// the pixels are read.
///
/// # Errors
/// [`Error::NotAvailable`] when GStreamer cannot be initialized or refuses
/// the fd; `dup` and map errors.
pub fn to_gst(mem: &Memory) -> Result<gst::Memory> {
    init()?;
    let Some(fd) = mem.fd() else {
        return to_gst_wrapped(mem);
    };
    let dmabuf = crate::is_dmabuf_memory(mem);
    let (size, offset, maxsize) = mem.sizes();
    let dup = dup_fd(fd)?;
    let mut whole = crate::sys::gst_fd_memory(dup, maxsize, dmabuf)
        .ok_or_else(|| gst_error("fd allocator", "refused the fd"))?;
    // The mediamem block stays alive (a pool cannot hand it out again)
    // until GStreamer frees this memory and every share of it.
    crate::sys::gst_keep_alive(&whole, mem.clone());
    if mem.is_readonly() {
        // A share of GStreamer memory is read-only.
        Ok(whole.share(offset..offset + size))
    } else {
        whole
            .get_mut()
            .ok_or_else(|| gst_error("resize", "memory is shared"))?
            .resize(offset..offset + size);
        Ok(whole)
    }
}

/// A read-only `gst::Memory` wrapping `mem` zero-copy, whatever its kind:
/// it holds a read map of `mem` (and so `mem`'s block) until GStreamer
/// frees it.
///
/// # Errors
/// Map errors: [`Error::Aliased`] or [`Error::LockConflict`] while `mem`
/// is mapped writable elsewhere.
pub fn to_gst_wrapped(mem: &Memory) -> Result<gst::Memory> {
    init()?;
    let mapped = mem.clone().into_mapped_readable().map_err(|e| e.error)?;
    Ok(gst::Memory::from_slice(mapped))
}

/// A mediamem [`Memory`] for `mem`: its fd duplicated for GStreamer fd and
/// dma-buf memory (offset and size kept; read-only when `mem` is), wrapped
/// zero-copy otherwise (see the module docs).
///
/// Pass a reference to the GStreamer memory (`buffer.memory(i)`), not
/// `peek_memory(i).to_owned()`: gstreamer-rs makes `to_owned` of a
/// `MemoryRef` a copy (`gst_mini_object_copy`), which is system memory.
///
/// # Errors
/// [`Error::NotAvailable`] when GStreamer cannot be initialized; import,
/// `dup` and map errors.
pub fn from_gst(mem: gst::Memory) -> Result<Memory> {
    init()?;
    if let Some((fd, dmabuf)) = crate::sys::gst_memory_fd(&mem) {
        let (size, offset, maxsize) = (mem.size(), mem.offset(), mem.maxsize());
        let dup = dup_fd(fd)?;
        let imported = if dmabuf {
            let m = DmaBufAllocator::new().alloc(dup, maxsize)?;
            m.resize(offset..offset + size)?;
            m
        } else {
            FdAllocator::new().alloc_full(dup, maxsize, offset, size, FdMemoryFlags::KEEP_MAPPED)?
        };
        return if mem.flags().contains(gst::MemoryFlags::READONLY) {
            imported.share(..)
        } else {
            Ok(imported)
        };
    }
    match mem.into_mapped_memory_readable() {
        Ok(mapped) => Ok(Memory::from_slice(mapped)),
        Err(mem) => {
            // No read map now: GStreamer's copy (system memory), wrapped.
            let copy = mem.copy_range(..);
            let mapped = copy
                .into_mapped_memory_readable()
                .map_err(|_| gst_error("map", "a copy of the memory cannot be mapped"))?;
            Ok(Memory::from_slice(mapped))
        }
    }
}
