//! udmabuf (linux/udmabuf.h) and dma-heap (linux/dma-heap.h): dma-bufs
//! from memfds and from heaps.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Setter};

use super::{ioctl_rw, retry, IoctlReturningFd};

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct UdmabufCreate {
    pub(crate) memfd: u32,
    pub(crate) flags: u32,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// `UDMABUF_FLAGS_CLOEXEC`.
pub(crate) const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
/// `UDMABUF_CREATE = _IOW('u', 0x42, struct udmabuf_create)`.
pub(crate) const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);

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

/// `UDMABUF_CREATE`: a dma-buf fd over `size` bytes of `memfd` from
/// `offset`. The returned number is a new fd.
pub(crate) fn udmabuf_create(
    dev: BorrowedFd<'_>,
    memfd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    let arg = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: UDMABUF_FLAGS_CLOEXEC,
        offset,
        size,
    };
    let fd = retry(|| {
        // SAFETY: UDMABUF_CREATE reads one udmabuf_create (no pointers).
        let setter =
            unsafe { Setter::<UDMABUF_CREATE, UdmabufCreate>::new(UdmabufCreate { ..arg }) };
        // SAFETY: request and argument match; the result is a new fd number.
        unsafe { rustix::ioctl::ioctl(dev, IoctlReturningFd(setter)) }
    })?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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
