//! DRM (drm.h, drm_mode.h): device identity, capabilities, dumb buffers
//! and PRIME export.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode};

use super::ioctl_rw;

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

/// A new dumb buffer (`DRM_IOCTL_MODE_CREATE_DUMB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DumbCreated {
    /// Its GEM handle on the device fd.
    pub(crate) handle: u32,
    /// Bytes per row.
    pub(crate) pitch: u32,
    /// Bytes in all.
    pub(crate) size: u64,
}

/// `DRM_IOCTL_MODE_CREATE_DUMB`: a `width`×`height` buffer of `bpp` bits
/// per pixel.
pub(crate) fn drm_create_dumb(
    fd: BorrowedFd<'_>,
    width: u32,
    height: u32,
    bpp: u32,
) -> Result<DumbCreated, Errno> {
    let mut create = DrmModeCreateDumb {
        height,
        width,
        bpp,
        ..Default::default()
    };
    // SAFETY: CREATE_DUMB takes a drm_mode_create_dumb (no pointers).
    unsafe { ioctl_rw::<DRM_IOCTL_MODE_CREATE_DUMB, _>(fd, &mut create)? };
    Ok(DumbCreated {
        handle: create.handle,
        pitch: create.pitch,
        size: create.size,
    })
}

/// `DRM_IOCTL_MODE_MAP_DUMB`: the fake offset to `mmap` the device fd at
/// to reach dumb buffer `handle`.
pub(crate) fn drm_map_dumb_offset(fd: BorrowedFd<'_>, handle: u32) -> Result<u64, Errno> {
    let mut req = DrmModeMapDumb {
        handle,
        ..Default::default()
    };
    // SAFETY: MAP_DUMB takes a drm_mode_map_dumb (no pointers).
    unsafe { ioctl_rw::<DRM_IOCTL_MODE_MAP_DUMB, _>(fd, &mut req)? };
    Ok(req.offset)
}

/// `DRM_IOCTL_MODE_DESTROY_DUMB`.
pub(crate) fn drm_destroy_dumb(fd: BorrowedFd<'_>, handle: u32) -> Result<(), Errno> {
    let mut req = DrmModeDestroyDumb { handle };
    // SAFETY: DESTROY_DUMB takes a drm_mode_destroy_dumb (no pointers).
    unsafe { ioctl_rw::<DRM_IOCTL_MODE_DESTROY_DUMB, _>(fd, &mut req) }
}

/// `DRM_IOCTL_PRIME_HANDLE_TO_FD` with `O_CLOEXEC | O_RDWR`: a dma-buf of
/// GEM `handle`, owned by the caller.
pub(crate) fn drm_prime_handle_to_fd(fd: BorrowedFd<'_>, handle: u32) -> Result<OwnedFd, Errno> {
    let mut req = DrmPrimeHandle {
        handle,
        flags: DRM_CLOEXEC | DRM_RDWR,
        fd: -1,
    };
    // SAFETY: PRIME_HANDLE_TO_FD takes a drm_prime_handle (no pointers).
    unsafe { ioctl_rw::<DRM_IOCTL_PRIME_HANDLE_TO_FD, _>(fd, &mut req)? };
    if req.fd < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(req.fd) })
}
