//! vgem (drm/vgem_drm.h): fences a test attaches to a buffer and signals
//! itself, the kernel's way to exercise explicit sync without a GPU.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode};

use super::ioctl_rw;

/// `DRM_COMMAND_BASE`: where driver-private DRM ioctls start.
const DRM_COMMAND_BASE: u8 = 0x40;

/// `struct drm_vgem_fence_attach`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DrmVgemFenceAttach {
    pub(crate) handle: u32,
    pub(crate) flags: u32,
    pub(crate) out_fence: u32,
    pub(crate) pad: u32,
}

/// `struct drm_vgem_fence_signal`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DrmVgemFenceSignal {
    pub(crate) fence: u32,
    pub(crate) flags: u32,
}

/// `VGEM_FENCE_WRITE`: the fence is the buffer's writer's.
pub(crate) const VGEM_FENCE_WRITE: u32 = 0x1;

/// `DRM_IOCTL_VGEM_FENCE_ATTACH = DRM_IOWR(DRM_COMMAND_BASE + 1, struct drm_vgem_fence_attach)`.
pub(crate) const DRM_IOCTL_VGEM_FENCE_ATTACH: Opcode =
    opcode::read_write::<DrmVgemFenceAttach>(b'd', DRM_COMMAND_BASE + 1);
/// `DRM_IOCTL_VGEM_FENCE_SIGNAL = DRM_IOW(DRM_COMMAND_BASE + 2, struct drm_vgem_fence_signal)`.
pub(crate) const DRM_IOCTL_VGEM_FENCE_SIGNAL: Opcode =
    opcode::write::<DrmVgemFenceSignal>(b'd', DRM_COMMAND_BASE + 2);

/// `DRM_IOCTL_VGEM_FENCE_ATTACH`: attach a new unsignaled fence to GEM
/// object `handle` (a writer's with `write`); returns the fence's id.
pub(crate) fn vgem_fence_attach(
    fd: BorrowedFd<'_>,
    handle: u32,
    write: bool,
) -> Result<u32, Errno> {
    let mut req = DrmVgemFenceAttach {
        handle,
        flags: if write { VGEM_FENCE_WRITE } else { 0 },
        ..Default::default()
    };
    // SAFETY: FENCE_ATTACH takes a drm_vgem_fence_attach (no pointers).
    unsafe { ioctl_rw::<DRM_IOCTL_VGEM_FENCE_ATTACH, _>(fd, &mut req)? };
    Ok(req.out_fence)
}

/// `DRM_IOCTL_VGEM_FENCE_SIGNAL`: signal fence `fence` of this file
/// (ENOENT if unknown, ETIMEDOUT if vgem already signaled it itself).
pub(crate) fn vgem_fence_signal(fd: BorrowedFd<'_>, fence: u32) -> Result<(), Errno> {
    let req = DrmVgemFenceSignal { fence, flags: 0 };
    // SAFETY: FENCE_SIGNAL reads one drm_vgem_fence_signal, which `Setter`
    // passes by pointer; the kernel does not keep it.
    let setter = unsafe {
        rustix::ioctl::Setter::<DRM_IOCTL_VGEM_FENCE_SIGNAL, DrmVgemFenceSignal>::new(req)
    };
    // SAFETY: the request number and argument type match (see above).
    unsafe { rustix::ioctl::ioctl(fd, setter) }
}
