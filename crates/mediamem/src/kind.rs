//! Helpers every allocator kind shares: opening a device node with errors
//! that say what to fix, page-rounded block sizes, and sealable memfds.
//! Kinds use these instead of borrowing from each other.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{MemfdFlags, Mode, OFlags};

use crate::allocator::AllocationParams;
use crate::error::{Error, Result};

/// Open a device node, telling a missing node from a permission problem.
pub(crate) fn open_device(path: &str, what: &str) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
        Error::NotAvailable {
            what: format!("{what} ({path})"),
            reason: match e {
                rustix::io::Errno::NOENT | rustix::io::Errno::NODEV | rustix::io::Errno::NXIO => {
                    format!("no such device ({e}): the kernel lacks it or the module is not loaded")
                }
                rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                    format!(
                        "permission denied ({e}): the node exists but this user may not open it"
                    )
                }
                e => format!("open failed: {e}"),
            },
        }
    })
}

/// Page-rounded `size + prefix + padding + align` (the caller's align mask
/// as given, as GStreamer's udmabuf: dma-buf mappings are page-aligned, so
/// page multiples stay exact).
pub(crate) fn page_rounded_maxsize(size: usize, params: &AllocationParams) -> Result<usize> {
    size.checked_add(params.prefix)
        .and_then(|n| n.checked_add(params.padding))
        .and_then(|n| n.checked_add(params.align))
        .and_then(|n| n.checked_next_multiple_of(rustix::param::page_size()))
        .filter(|&n| n <= i64::MAX as usize)
        .ok_or(Error::SizeOverflow {
            what: "size + prefix + padding + align, page-rounded",
        })
}

/// Whether the kernel refused `MFD_NOEXEC_SEAL` once (Linux < 6.3).
static NO_NOEXEC_SEAL: AtomicBool = AtomicBool::new(false);

/// A new sealable memfd, with `MFD_NOEXEC_SEAL` when the kernel accepts it.
pub(crate) fn create_memfd(name: &str) -> Result<OwnedFd> {
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    if !NO_NOEXEC_SEAL.load(Ordering::Relaxed) {
        match rustix::fs::memfd_create(name, base | MemfdFlags::NOEXEC_SEAL) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::INVAL) => NO_NOEXEC_SEAL.store(true, Ordering::Relaxed),
            Err(e) => {
                return Err(Error::Os {
                    op: "memfd_create",
                    source: e.into(),
                })
            }
        }
    }
    rustix::fs::memfd_create(name, base).map_err(|e| Error::Os {
        op: "memfd_create",
        source: e.into(),
    })
}
