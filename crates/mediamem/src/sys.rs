//! Raw kernel interfaces: ioctl argument structs and request numbers.
//!
//! Every request number is computed from its struct with
//! `rustix::ioctl::opcode` (so the size is never written by hand) and pinned
//! by a test against the value the kernel headers give on x86_64/aarch64.
//! Nothing outside this module issues an ioctl.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Setter};

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
    loop {
        // SAFETY: DMA_BUF_IOCTL_SYNC reads one `struct dma_buf_sync`, which
        // `Setter` passes by pointer; the kernel does not keep the pointer.
        let setter = unsafe { Setter::<DMA_BUF_IOCTL_SYNC, DmaBufSync>::new(DmaBufSync { flags }) };
        // SAFETY: the request number and argument type match (see above).
        match unsafe { rustix::ioctl::ioctl(fd, setter) } {
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes() {
        assert_eq!(std::mem::size_of::<DmaBufSync>(), 8);
    }

    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(DMA_BUF_IOCTL_SYNC as u64, 0x4008_6200);
    }

    #[test]
    fn sync_on_a_regular_file_is_enotty() {
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        use std::os::fd::AsFd;
        assert_eq!(
            dma_buf_sync(f.as_fd(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ),
            Err(Errno::NOTTY)
        );
    }
}
