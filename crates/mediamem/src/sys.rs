//! Raw kernel interfaces: ioctl argument structs and request numbers.
//!
//! Every request number is computed from its struct with
//! `rustix::ioctl::opcode` (so the size is never written by hand) and pinned
//! by a test against the value the kernel headers give on x86_64/aarch64.
//! Nothing outside this module issues an ioctl.

mod file;
mod sigbus;

pub(crate) use file::{file_id, FsKind};
pub(crate) use sigbus::SigbusGuard;

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Setter, Updater};

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

// ---------------------------------------------------------------------------
// DRM (drm.h, drm_mode.h)
// ---------------------------------------------------------------------------

/// `struct drm_version`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct DrmVersion {
    pub(crate) version_major: i32,
    pub(crate) version_minor: i32,
    pub(crate) version_patchlevel: i32,
    pub(crate) name_len: usize,
    pub(crate) name: *mut u8,
    pub(crate) date_len: usize,
    pub(crate) date: *mut u8,
    pub(crate) desc_len: usize,
    pub(crate) desc: *mut u8,
}

/// `struct drm_get_cap`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DrmGetCap {
    pub(crate) capability: u64,
    pub(crate) value: u64,
}

/// `struct drm_mode_create_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DrmModeCreateDumb {
    pub(crate) height: u32,
    pub(crate) width: u32,
    pub(crate) bpp: u32,
    pub(crate) flags: u32,
    pub(crate) handle: u32,
    pub(crate) pitch: u32,
    pub(crate) size: u64,
}

/// `struct drm_mode_map_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DrmModeMapDumb {
    pub(crate) handle: u32,
    pub(crate) pad: u32,
    pub(crate) offset: u64,
}

/// `struct drm_mode_destroy_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DrmModeDestroyDumb {
    pub(crate) handle: u32,
}

/// `struct drm_prime_handle`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DrmPrimeHandle {
    pub(crate) handle: u32,
    pub(crate) flags: u32,
    pub(crate) fd: i32,
}

/// `DRM_IOCTL_VERSION = _IOWR('d', 0x00, struct drm_version)`.
pub(crate) const DRM_IOCTL_VERSION: Opcode = opcode::read_write::<DrmVersion>(b'd', 0x00);
/// `DRM_IOCTL_GET_CAP = _IOWR('d', 0x0c, struct drm_get_cap)`.
pub(crate) const DRM_IOCTL_GET_CAP: Opcode = opcode::read_write::<DrmGetCap>(b'd', 0x0c);
/// `DRM_IOCTL_PRIME_HANDLE_TO_FD = _IOWR('d', 0x2d, struct drm_prime_handle)`.
pub(crate) const DRM_IOCTL_PRIME_HANDLE_TO_FD: Opcode =
    opcode::read_write::<DrmPrimeHandle>(b'd', 0x2d);
/// `DRM_IOCTL_MODE_CREATE_DUMB = _IOWR('d', 0xB2, struct drm_mode_create_dumb)`.
pub(crate) const DRM_IOCTL_MODE_CREATE_DUMB: Opcode =
    opcode::read_write::<DrmModeCreateDumb>(b'd', 0xB2);
/// `DRM_IOCTL_MODE_MAP_DUMB = _IOWR('d', 0xB3, struct drm_mode_map_dumb)`.
pub(crate) const DRM_IOCTL_MODE_MAP_DUMB: Opcode = opcode::read_write::<DrmModeMapDumb>(b'd', 0xB3);
/// `DRM_IOCTL_MODE_DESTROY_DUMB = _IOWR('d', 0xB4, struct drm_mode_destroy_dumb)`.
pub(crate) const DRM_IOCTL_MODE_DESTROY_DUMB: Opcode =
    opcode::read_write::<DrmModeDestroyDumb>(b'd', 0xB4);

/// `DRM_CAP_DUMB_BUFFER`.
pub(crate) const DRM_CAP_DUMB_BUFFER: u64 = 0x1;
/// `DRM_CAP_PRIME`.
pub(crate) const DRM_CAP_PRIME: u64 = 0x5;
/// `DRM_PRIME_CAP_EXPORT`.
pub(crate) const DRM_PRIME_CAP_EXPORT: u64 = 0x2;
/// `DRM_CLOEXEC` (= `O_CLOEXEC`).
pub(crate) const DRM_CLOEXEC: u32 = 0o2000000;
/// `DRM_RDWR` (= `O_RDWR`).
pub(crate) const DRM_RDWR: u32 = 0o2;

/// Issue an `_IOWR` ioctl on `value`, retrying on EINTR/EAGAIN (DRM's own
/// `drmIoctl` does the same).
///
/// # Safety
/// `OPCODE` must be an `_IOWR` request whose argument is a `T`, and any
/// pointers inside `value` must be valid for what the kernel does with them.
pub(crate) unsafe fn ioctl_rw<const OPCODE: Opcode, T>(
    fd: BorrowedFd<'_>,
    value: &mut T,
) -> Result<(), Errno> {
    loop {
        // SAFETY: forwarded to the caller.
        let updater = unsafe { Updater::<OPCODE, T>::new(value) };
        // SAFETY: forwarded to the caller.
        match unsafe { rustix::ioctl::ioctl(fd, updater) } {
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            other => return other,
        }
    }
}

/// The driver name of a DRM device (`DRM_IOCTL_VERSION`); fails with
/// ENOTTY (or EINVAL) on an fd that is not a DRM device.
pub(crate) fn drm_driver_name(fd: BorrowedFd<'_>) -> Result<String, Errno> {
    let mut name = [0u8; 64];
    let mut v = DrmVersion {
        version_major: 0,
        version_minor: 0,
        version_patchlevel: 0,
        name_len: name.len(),
        name: name.as_mut_ptr(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    // SAFETY: DRM_IOCTL_VERSION takes a drm_version; `name` is valid for
    // `name_len` bytes and date/desc are empty (len 0, NULL).
    unsafe { ioctl_rw::<DRM_IOCTL_VERSION, _>(fd, &mut v)? };
    let len = v.name_len.min(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// `drmGetCap`.
pub(crate) fn drm_get_cap(fd: BorrowedFd<'_>, capability: u64) -> Result<u64, Errno> {
    let mut cap = DrmGetCap {
        capability,
        value: 0,
    };
    // SAFETY: DRM_IOCTL_GET_CAP takes a drm_get_cap, which has no pointers.
    unsafe { ioctl_rw::<DRM_IOCTL_GET_CAP, _>(fd, &mut cap)? };
    Ok(cap.value)
}

// ---------------------------------------------------------------------------
// udmabuf (linux/udmabuf.h) and dma-heap (linux/dma-heap.h)
// ---------------------------------------------------------------------------

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
) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let arg = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: UDMABUF_FLAGS_CLOEXEC,
        offset,
        size,
    };
    let fd = loop {
        // SAFETY: UDMABUF_CREATE reads one udmabuf_create (no pointers).
        let setter =
            unsafe { Setter::<UDMABUF_CREATE, UdmabufCreate>::new(UdmabufCreate { ..arg }) };
        // SAFETY: request and argument match; the result is a new fd number.
        match unsafe { rustix::ioctl::ioctl(dev, IoctlReturningFd(setter)) } {
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            other => break other?,
        }
    };
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// A wrapper that makes an ioctl's return value (a new fd) its output.
struct IoctlReturningFd<I>(I);

// SAFETY: delegates everything to the wrapped ioctl; only the output differs:
// the integer the kernel returned, which these requests define as a new fd.
unsafe impl<I: rustix::ioctl::Ioctl> rustix::ioctl::Ioctl for IoctlReturningFd<I> {
    type Output = i32;
    const IS_MUTATING: bool = I::IS_MUTATING;
    fn opcode(&self) -> Opcode {
        self.0.opcode()
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.0.as_ptr()
    }
    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes() {
        assert_eq!(std::mem::size_of::<DmaBufSync>(), 8);
        assert_eq!(std::mem::size_of::<DrmGetCap>(), 16);
        assert_eq!(std::mem::size_of::<DrmModeCreateDumb>(), 32);
        assert_eq!(std::mem::size_of::<DrmModeMapDumb>(), 16);
        assert_eq!(std::mem::size_of::<DrmModeDestroyDumb>(), 4);
        assert_eq!(std::mem::size_of::<DrmPrimeHandle>(), 12);
        assert_eq!(std::mem::size_of::<UdmabufCreate>(), 24);
        assert_eq!(std::mem::size_of::<DmaHeapAllocationData>(), 24);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn drm_version_size() {
        assert_eq!(std::mem::size_of::<DrmVersion>(), 64);
    }

    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(DMA_BUF_IOCTL_SYNC as u64, 0x4008_6200);
        assert_eq!(DRM_IOCTL_GET_CAP as u64, 0xC010_640C);
        assert_eq!(DRM_IOCTL_MODE_CREATE_DUMB as u64, 0xC020_64B2);
        assert_eq!(DRM_IOCTL_MODE_MAP_DUMB as u64, 0xC010_64B3);
        assert_eq!(DRM_IOCTL_MODE_DESTROY_DUMB as u64, 0xC004_64B4);
        assert_eq!(DRM_IOCTL_PRIME_HANDLE_TO_FD as u64, 0xC00C_642D);
        assert_eq!(UDMABUF_CREATE as u64, 0x4018_7542);
        assert_eq!(DMA_HEAP_IOCTL_ALLOC as u64, 0xC018_4800);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(DRM_IOCTL_VERSION as u64, 0xC040_6400);
    }

    #[test]
    fn drm_calls_on_a_non_drm_fd_fail_cleanly() {
        use std::os::fd::AsFd;
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(drm_driver_name(f.as_fd()).is_err());
        assert!(drm_get_cap(f.as_fd(), DRM_CAP_DUMB_BUFFER).is_err());
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
