//! dma-buf (linux/dma-buf.h): CPU access brackets.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Setter};

use super::retry;

/// `struct dma_buf_sync` (linux/dma-buf.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct DmaBufSync {
    pub(crate) flags: u64,
}

/// `DMA_BUF_SYNC_READ`.
pub(crate) const DMA_BUF_SYNC_READ: u64 = 1;
/// `DMA_BUF_SYNC_WRITE`.
pub(crate) const DMA_BUF_SYNC_WRITE: u64 = 2;
/// `DMA_BUF_SYNC_START`.
pub(crate) const DMA_BUF_SYNC_START: u64 = 0;
/// `DMA_BUF_SYNC_END`.
pub(crate) const DMA_BUF_SYNC_END: u64 = 4;

/// `DMA_BUF_IOCTL_SYNC = _IOW('b', 0, struct dma_buf_sync)`.
pub(crate) const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);

/// Issue `DMA_BUF_IOCTL_SYNC` with `flags`, retrying on EINTR and EAGAIN
/// (the kernel returns them while waiting on fences).
pub(crate) fn dma_buf_sync(fd: BorrowedFd<'_>, flags: u64) -> Result<(), Errno> {
    retry(|| {
        // SAFETY: DMA_BUF_IOCTL_SYNC reads one `struct dma_buf_sync`, which
        // `Setter` passes by pointer; the kernel does not keep the pointer.
        let setter = unsafe { Setter::<DMA_BUF_IOCTL_SYNC, DmaBufSync>::new(DmaBufSync { flags }) };
        // SAFETY: the request number and argument type match (see above).
        unsafe { rustix::ioctl::ioctl(fd, setter) }
    })
}
