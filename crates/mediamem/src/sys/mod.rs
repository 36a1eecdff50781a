//! Raw kernel interfaces, one module per interface: `dma_buf`, `dma_heap`,
//! `drm`, `udmabuf`, `v4l2`, `file` (filesystem identity), `sigbus` (the
//! `SIGBUS` guard), `sync_file` (fences: sync_files and a dma-buf's fences)
//! and `vgem` (test fences).
//!
//! Each request has one safe function returning `Result<_, Errno>`; every
//! `OwnedFd::from_raw_fd` of the crate is here, next to the request that
//! made the fd. Every request number is computed from its struct with
//! `rustix::ioctl::opcode` (so the size is never written by hand) and pinned
//! by a test against the value the kernel headers give on x86_64/aarch64.
//! Nothing outside this module issues an ioctl.

mod dma_buf;
mod dma_heap;
mod drm;
mod file;
#[cfg(feature = "gstreamer")]
mod gst;
mod sigbus;
mod sync_file;
mod udmabuf;
mod v4l2;
mod vgem;

pub(crate) use dma_buf::*;
pub(crate) use dma_heap::*;
pub(crate) use drm::*;
pub(crate) use file::{file_id, FdHandle, FileId, FsKind};
#[cfg(feature = "gstreamer")]
pub(crate) use gst::{gst_fd_memory, gst_keep_alive, gst_memory_fd};
pub(crate) use sigbus::SigbusGuard;
pub(crate) use sync_file::*;
pub(crate) use udmabuf::*;
pub(crate) use v4l2::*;
pub(crate) use vgem::*;

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::ioctl::{Opcode, Updater};

/// Run a system call again while it fails with EINTR or EAGAIN (the
/// kernel returns them from ioctls that wait, such as fence waits; DRM's
/// own `drmIoctl` retries the same way).
pub(crate) fn retry<T>(mut call: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match call() {
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            other => return other,
        }
    }
}

/// Issue an `_IOWR` ioctl on `value`, retrying on EINTR/EAGAIN (DRM's own
/// `drmIoctl` does the same).
///
/// # Safety
/// `OPCODE` must be an `_IOWR` request whose argument is a `T`, and any
/// pointers inside `value` must be valid for what the kernel does with them.
unsafe fn ioctl_rw<const OPCODE: Opcode, T>(
    fd: BorrowedFd<'_>,
    value: &mut T,
) -> Result<(), Errno> {
    retry(|| {
        // SAFETY: forwarded to the caller.
        let updater = unsafe { Updater::<OPCODE, T>::new(&mut *value) };
        // SAFETY: forwarded to the caller.
        unsafe { rustix::ioctl::ioctl(fd, updater) }
    })
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
        assert_eq!(std::mem::size_of::<SyncMergeData>(), 48);
        assert_eq!(std::mem::size_of::<SyncFenceInfo>(), 80);
        assert_eq!(std::mem::size_of::<SyncFileInfo>(), 56);
        assert_eq!(std::mem::size_of::<DmaBufSyncFile>(), 8);
        assert_eq!(std::mem::size_of::<DrmVgemFenceAttach>(), 16);
        assert_eq!(std::mem::size_of::<DrmVgemFenceSignal>(), 8);
        assert_eq!(std::mem::size_of::<V4l2Capability>(), 104);
        assert_eq!(std::mem::size_of::<V4l2Fmtdesc>(), 64);
        assert_eq!(std::mem::size_of::<V4l2PixFormat>(), 48);
        assert_eq!(std::mem::size_of::<V4l2PlanePixFormat>(), 20);
        assert_eq!(std::mem::size_of::<V4l2PixFormatMplane>(), 192);
        assert_eq!(std::mem::size_of::<V4l2RequestBuffers>(), 20);
        assert_eq!(std::mem::size_of::<V4l2ExportBuffer>(), 64);
        assert_eq!(std::mem::size_of::<V4l2Control>(), 8);
        assert_eq!(std::mem::size_of::<V4l2StreamParm>(), 204);
    }

    /// The V4L2 structs whose size depends on the pointer width.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn v4l2_pointer_sized_structs() {
        assert_eq!(std::mem::size_of::<V4l2Format>(), 208);
        assert_eq!(std::mem::offset_of!(V4l2Format, fmt), 8);
        assert_eq!(std::mem::size_of::<V4l2Buffer>(), 88);
        assert_eq!(std::mem::offset_of!(V4l2Buffer, timestamp), 24);
        assert_eq!(std::mem::offset_of!(V4l2Buffer, sequence), 56);
        assert_eq!(std::mem::offset_of!(V4l2Buffer, m), 64);
        assert_eq!(std::mem::offset_of!(V4l2Buffer, length), 72);
        assert_eq!(std::mem::size_of::<V4l2Plane>(), 64);
        assert_eq!(std::mem::offset_of!(V4l2Plane, data_offset), 16);
        assert_eq!(std::mem::offset_of!(V4l2PixFormatMplane, num_planes), 180);
    }

    #[test]
    fn v4l2_calls_on_a_regular_file_are_enotty() {
        use std::os::fd::AsFd;
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(v4l2_querycap(f.as_fd()).unwrap_err(), Errno::NOTTY);
        assert_eq!(
            v4l2_stream(f.as_fd(), V4L2_BUF_TYPE_VIDEO_CAPTURE, true),
            Err(Errno::NOTTY)
        );
        let mut args = BufferArgs::new(V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE, V4L2_MEMORY_MMAP, 0, 2);
        assert_eq!(v4l2_dqbuf(f.as_fd(), &mut args), Err(Errno::NOTTY));
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
        assert_eq!(SYNC_IOC_MERGE as u64, 0xC030_3E03);
        assert_eq!(SYNC_IOC_FILE_INFO as u64, 0xC038_3E04);
        assert_eq!(DMA_BUF_IOCTL_EXPORT_SYNC_FILE as u64, 0xC008_6202);
        assert_eq!(DMA_BUF_IOCTL_IMPORT_SYNC_FILE as u64, 0x4008_6203);
        assert_eq!(DRM_IOCTL_VGEM_FENCE_ATTACH as u64, 0xC010_6441);
        assert_eq!(DRM_IOCTL_VGEM_FENCE_SIGNAL as u64, 0x4008_6442);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(DRM_IOCTL_VERSION as u64, 0xC040_6400);
        assert_eq!(VIDIOC_QUERYCAP as u64, 0x8068_5600);
        assert_eq!(VIDIOC_ENUM_FMT as u64, 0xC040_5602);
        assert_eq!(VIDIOC_REQBUFS as u64, 0xC014_5608);
        assert_eq!(VIDIOC_EXPBUF as u64, 0xC040_5610);
        assert_eq!(VIDIOC_STREAMON as u64, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF as u64, 0x4004_5613);
        assert_eq!(VIDIOC_S_PARM as u64, 0xC0CC_5616);
        assert_eq!(VIDIOC_G_CTRL as u64, 0xC008_561B);
        assert_eq!(VIDIOC_S_CTRL as u64, 0xC008_561C);
        // v4l2_format and v4l2_buffer hold pointers: 64-bit sizes.
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(VIDIOC_G_FMT as u64, 0xC0D0_5604);
            assert_eq!(VIDIOC_S_FMT as u64, 0xC0D0_5605);
            assert_eq!(VIDIOC_QUERYBUF as u64, 0xC058_5609);
            assert_eq!(VIDIOC_QBUF as u64, 0xC058_560F);
            assert_eq!(VIDIOC_DQBUF as u64, 0xC058_5611);
        }
    }

    #[test]
    fn drm_calls_on_a_non_drm_fd_fail_cleanly() {
        use std::os::fd::AsFd;
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(drm_driver_name(f.as_fd()).is_err());
        assert!(drm_get_cap(f.as_fd(), DRM_CAP_DUMB_BUFFER).is_err());
    }

    #[test]
    fn sync_file_calls_on_other_files_fail_cleanly() {
        use std::os::fd::AsFd;
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(is_sync_file(f.as_fd()), Ok(false));
        assert!(sync_file_status(f.as_fd()).is_err());
        assert!(dma_buf_export_sync_file(f.as_fd(), 1).is_err());
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(is_sync_file(r.as_fd()), Ok(false));
        assert_eq!(dup_raw(-1).unwrap_err(), Errno::BADF);
        // Ready at once: a socket with data is readable.
        rustix::io::write(&w, b"x").unwrap();
        assert_eq!(
            poll_until(
                r.as_fd(),
                rustix::event::PollFlags::IN,
                std::time::Duration::ZERO
            ),
            Ok(true)
        );
        let (r2, _w2) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            poll_until(
                r2.as_fd(),
                rustix::event::PollFlags::IN,
                std::time::Duration::from_millis(1)
            ),
            Ok(false)
        );
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
