//! The gstreamer-rs calls that hand a raw fd to GStreamer or borrow one
//! from it (the `gstreamer` feature's bridge, `crate::gst_bridge`).

use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use gstreamer as gst;
use gstreamer_allocators as gst_allocators;
use gstreamer_allocators::prelude::*;

/// Wrap `fd` (ownership passes to GStreamer) as `size` bytes of fd memory,
/// or of dma-buf memory when `dmabuf`. `None` when GStreamer refuses (the
/// fd is then closed here).
pub(crate) fn gst_fd_memory(fd: OwnedFd, size: usize, dmabuf: bool) -> Option<gst::Memory> {
    let raw = fd.into_raw_fd();
    let mem = if dmabuf {
        let alloc = gst_allocators::DmaBufAllocator::new();
        // SAFETY: `raw` is an open fd that nothing else owns (it came out
        // of an OwnedFd); GStreamer takes it over (no DONT_CLOSE).
        unsafe { alloc.alloc_dmabuf(raw, size) }.ok()
    } else {
        let alloc = gst_allocators::FdAllocator::new();
        // SAFETY: as above.
        unsafe { alloc.alloc_fd(raw, size, gst_allocators::FdMemoryFlags::NONE) }.ok()
    };
    if mem.is_none() {
        // SAFETY: GStreamer refused the fd and did not take it: it is
        // still open and ours.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    mem
}

/// The fd of GStreamer fd (or dma-buf) memory, borrowed for the memory's
/// life, and whether it is dma-buf memory.
pub(crate) fn gst_memory_fd(mem: &gst::MemoryRef) -> Option<(BorrowedFd<'_>, bool)> {
    let (raw, dmabuf) = if let Some(m) = mem.downcast_memory_ref::<gst_allocators::DmaBufMemory>() {
        (m.fd(), true)
    } else {
        (
            mem.downcast_memory_ref::<gst_allocators::FdMemory>()?.fd(),
            false,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: fd memory owns its fd until it is freed, and the borrow
    // cannot outlive `mem`.
    Some((unsafe { BorrowedFd::borrow_raw(raw) }, dmabuf))
}

/// Keep `keep` alive until GStreamer frees `mem` (and so every share of
/// it, which holds its parent): qdata with a destroy notify that drops it,
/// on whichever thread frees the memory.
pub(crate) fn gst_keep_alive<T: Send + 'static>(mem: &gst::Memory, keep: T) {
    unsafe extern "C" fn drop_box<T>(data: gst::glib::ffi::gpointer) {
        // SAFETY: `data` is the `Box<T>` leaked below, handed back exactly
        // once by GStreamer when the memory is finalised.
        drop(unsafe { Box::from_raw(data.cast::<T>()) });
    }
    use gst::glib::translate::IntoGlib;
    let quark = gst::glib::Quark::from_str("mediamem-keep-alive");
    let data = Box::into_raw(Box::new(keep));
    // SAFETY: `mem` is a live GstMemory (a GstMiniObject); setting qdata
    // needs no writability. GStreamer owns `data` from here and frees it
    // with `drop_box::<T>`, the notify for exactly this type.
    unsafe {
        gst::ffi::gst_mini_object_set_qdata(
            mem.as_ptr().cast_mut().cast::<gst::ffi::GstMiniObject>(),
            quark.into_glib(),
            data.cast(),
            Some(drop_box::<T>),
        );
    }
}
