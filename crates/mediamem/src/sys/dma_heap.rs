//! dma-heap (linux/dma-heap.h): dma-bufs allocated from a heap.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode};

use super::ioctl_rw;

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DmaHeapAllocationData {
    pub(crate) len: u64,
    pub(crate) fd: u32,
    pub(crate) fd_flags: u32,
    pub(crate) heap_flags: u64,
}

/// `DMA_HEAP_IOCTL_ALLOC = _IOWR('H', 0x0, struct dma_heap_allocation_data)`.
pub(crate) const DMA_HEAP_IOCTL_ALLOC: Opcode =
    opcode::read_write::<DmaHeapAllocationData>(b'H', 0x0);

/// `DMA_HEAP_IOCTL_ALLOC`: a new dma-buf of `len` bytes from the heap open
/// on `heap` (close-on-exec, read-write), owned by the caller.
pub(crate) fn dma_heap_alloc(heap: BorrowedFd<'_>, len: u64) -> Result<OwnedFd, Errno> {
    let mut req = DmaHeapAllocationData {
        len,
        fd: 0,
        fd_flags: (rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC).bits(),
        heap_flags: 0,
    };
    // SAFETY: DMA_HEAP_IOCTL_ALLOC takes a dma_heap_allocation_data (no
    // pointers).
    unsafe { ioctl_rw::<DMA_HEAP_IOCTL_ALLOC, _>(heap, &mut req)? };
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(req.fd as i32) })
}
