//! udmabuf (linux/udmabuf.h): dma-bufs made from memfds.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Setter};

use super::{retry, IoctlReturningFd};

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
