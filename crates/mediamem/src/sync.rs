//! Explicit synchronisation: sync_file fences ([`SyncFile`]), the fences
//! of dma-buf memory ([`export_sync_file`], [`import_sync_file`]), and
//! [`Vgem`], the kernel's fence-only driver, to test with.
//!
//! A *fence* marks the end of some device work (a GPU render, a codec's
//! decode); a *sync_file* is an fd holding one or more fences, which
//! processes pass around (Wayland's linux-drm-syncobj, Vulkan's
//! `VK_KHR_external_semaphore_fd`, V4L2) and which signals when all its
//! fences have. A dma-buf keeps the fences of the work on it (its
//! reservation object): its writers' and its readers'.
//!
//! ```no_run
//! use std::time::Duration;
//! use mediamem::sync::{export_sync_file, import_sync_file, FenceAccess, Vgem};
//! use mediamem::UdmabufAllocator;
//!
//! // A vgem buffer with an unsignaled writer's fence (as a GPU would leave it).
//! let vgem = Vgem::open()?;
//! let buffer = vgem.alloc(1 << 20)?;
//! let fence = buffer.attach_fence(FenceAccess::Write)?;
//!
//! // Export what a reader must wait for, and hand it to another buffer.
//! let sync = export_sync_file(buffer.memory(), FenceAccess::Read)?;
//! assert!(!sync.is_signaled()?);
//! let other = UdmabufAllocator::get()?.alloc(1 << 20, None)?;
//! import_sync_file(&other, &sync, FenceAccess::Write)?;
//!
//! // Wait, bounded: Err(Error::FenceTimedOut) while the work runs.
//! assert!(sync.wait(Duration::from_millis(10)).is_err());
//! fence.signal()?;
//! sync.wait(Duration::from_secs(1))?;
//! assert_eq!(other.map_readable()?.len(), 1 << 20); // no wait now
//! # Ok::<(), mediamem::Error>(())
//! ```
//!
//! Maps of dma-buf memory wait for the buffer's fences, bounded (see
//! [`dmabuf`](crate::dmabuf)), and frames carry fences between processes
//! ([`ipc`](crate::ipc): an acquire fence with a frame, a release fence
//! with its release).
//!
//! # Decisions
//!
//! | | GStreamer 1.26 | mediamem | why |
//! |---|---|---|---|
//! | sync_file API | none: GstAllocators has no fence, export or import call (elements that need one, such as `waylandsink`, issue the ioctls themselves) | [`SyncFile`], [`export_sync_file`], [`import_sync_file`] | users of dma-buf memory keep asking for them; one checked place for the ioctls |
//! | map of a dma-buf with unsignaled fences | `DMA_BUF_IOCTL_SYNC` `SYNC_START`, which the kernel waits in without a bound | first `poll` the dma-buf (`POLLIN`: writers' fences, for a read; `POLLOUT`: every fence, for a write) for at most the memory's fence timeout, 5 s by default ([`DEFAULT_FENCE_TIMEOUT`](crate::dmabuf::DEFAULT_FENCE_TIMEOUT)); then `SYNC_START`, which finds them signaled unless a fence was attached in between (then it waits for that one without a bound: see [`dmabuf`](crate::dmabuf)) | a hung fence must not hang a map; `poll` is the kernel's own bounded wait on a dma-buf's fences and needs no newer kernel than the map (exporting a sync_file to wait on would need 6.0) |
//! | timeout expired | — | [`Error::FenceTimedOut`] naming the fences and the fd; nothing mapped | the caller decides: retry, drop the frame |
//! | `EXPORT`/`IMPORT_SYNC_FILE` missing (Linux < 6.0, `ENOTTY`) | — | [`Error::NotSupported`] naming the ioctl and Linux 6.0 | the message alone says what to upgrade |
//! | a fence that is not a sync_file (a pipe, a memfd, -1, a closed fd) | — | [`Error::NotSyncFile`]; the fd is checked to be an anonymous inode before any sync ioctl is issued on it | an fd from a peer may be any file; another driver could read the request number differently |
//! | export of a buffer without fences | — | a signaled sync_file (the kernel's stub fence) | the kernel's behaviour, kept |

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::PollFlags;

use crate::dmabuf::{dmabuf_memory_get_fd, DmaBufAllocator};
use crate::error::{Error, Result};
use crate::memory::Memory;

/// Which side of a buffer's work a fence is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceAccess {
    /// Readers: an export for `Read` gives the fences a reader must wait
    /// for (the writers'); an import as `Read` adds a reader's fence.
    Read,
    /// Writers: an export for `Write` gives the fences a writer must wait
    /// for (every reader's and writer's); an import as `Write` adds a
    /// writer's fence.
    Write,
}

impl FenceAccess {
    fn bits(self) -> u32 {
        match self {
            FenceAccess::Read => crate::sys::DMA_BUF_SYNC_READ as u32,
            FenceAccess::Write => crate::sys::DMA_BUF_SYNC_WRITE as u32,
        }
    }
}

/// A fence's (or a sync_file's) state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStatus {
    /// Not signaled yet.
    Active,
    /// Signaled.
    Signaled,
    /// Signaled with an error (the work failed): the negative errno.
    Error(i32),
}

impl FenceStatus {
    fn of(status: i32) -> Self {
        match status {
            0 => FenceStatus::Active,
            s if s > 0 => FenceStatus::Signaled,
            e => FenceStatus::Error(e),
        }
    }
}

/// One fence of a sync_file (`struct sync_fence_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceInfo {
    /// The driver that made it (`"vgem"`, `"i915"`, `"dma_fence_array"`...).
    pub driver_name: String,
    /// Its timeline's name.
    pub timeline_name: String,
    /// Its state.
    pub status: FenceStatus,
    /// When it signaled (`CLOCK_MONOTONIC`, ns), once it has.
    pub timestamp_ns: Option<u64>,
}

/// What `SYNC_IOC_FILE_INFO` says about a sync_file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFileInfo {
    /// The sync_file's name.
    pub name: String,
    /// Its state: signaled once every fence has.
    pub status: FenceStatus,
    /// Its fences.
    pub fences: Vec<FenceInfo>,
}

/// A sync_file: an owned fd of one or more fences, signaled when they all
/// are. Checked when made: only a real sync_file becomes one.
#[derive(Debug)]
pub struct SyncFile {
    fd: OwnedFd,
}

fn not_sync_file(fd: BorrowedFd<'_>, why: String) -> Error {
    Error::NotSyncFile {
        reason: format!("fd {}: {why}", fd.as_raw_fd()),
    }
}

impl SyncFile {
    /// Take `fd` as a sync_file.
    ///
    /// # Errors
    /// [`Error::NotSyncFile`] when it is not one (the fd is closed).
    pub fn from_fd(fd: OwnedFd) -> Result<SyncFile> {
        match crate::sys::is_sync_file(fd.as_fd()) {
            Ok(true) => Ok(SyncFile { fd }),
            Ok(false) => Err(not_sync_file(
                fd.as_fd(),
                describe(fd.as_fd()).unwrap_or_else(|| "not a sync_file".into()),
            )),
            Err(e) => Err(not_sync_file(fd.as_fd(), format!("fstatfs: {e}"))),
        }
    }

    /// A sync_file over a duplicate of the fd numbered `fd` (the caller
    /// keeps its own), as C APIs pass fences.
    ///
    /// # Errors
    /// [`Error::NotSyncFile`] for -1, a number that is not open, or an fd
    /// that is not a sync_file.
    pub fn from_raw_dup(fd: RawFd) -> Result<SyncFile> {
        let owned = crate::sys::dup_raw(fd).map_err(|e| Error::NotSyncFile {
            reason: format!("fd {fd} is not an open file ({e})"),
        })?;
        SyncFile::from_fd(owned)
    }

    /// A sync_file over a duplicate of `fd`.
    ///
    /// # Errors
    /// As [`from_fd`](SyncFile::from_fd).
    pub fn from_borrowed(fd: BorrowedFd<'_>) -> Result<SyncFile> {
        SyncFile::from_fd(crate::fd::dup_fd(fd)?)
    }

    /// A second handle on the same fences.
    ///
    /// # Errors
    /// [`Error::BadFd`] when the process is out of fds.
    pub fn try_clone(&self) -> Result<SyncFile> {
        Ok(SyncFile {
            fd: crate::fd::dup_fd(self.fd.as_fd())?,
        })
    }

    /// Whether every fence has signaled (with or without an error), now.
    ///
    /// # Errors
    /// [`Error::Os`] if `poll` fails.
    pub fn is_signaled(&self) -> Result<bool> {
        crate::sys::poll_until(self.fd.as_fd(), PollFlags::IN, Duration::ZERO)
            .map_err(|e| Error::os("poll(sync_file)", e))
    }

    /// Wait until every fence has signaled, for at most `timeout`
    /// (`Duration::MAX`: for ever). A fence that signaled with an error
    /// has signaled: see [`info`](SyncFile::info) for the status.
    ///
    /// # Errors
    /// [`Error::FenceTimedOut`] when the time ran out (nothing changed,
    /// wait again at will), [`Error::Os`] if `poll` fails.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        match crate::sys::poll_until(self.fd.as_fd(), PollFlags::IN, timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::FenceTimedOut {
                what: format!("sync_file fd {}", self.fd.as_raw_fd()),
                timeout,
            }),
            Err(e) => Err(Error::os("poll(sync_file)", e)),
        }
    }

    /// A new sync_file that signals when both `self` and `other` have
    /// (`SYNC_IOC_MERGE`), named `name` (cut to 31 bytes).
    ///
    /// # Errors
    /// [`Error::Os`] when the kernel refuses (out of memory, fds).
    pub fn merge(&self, other: &SyncFile, name: &str) -> Result<SyncFile> {
        let fd = crate::sys::sync_merge(self.fd.as_fd(), other.fd.as_fd(), name)
            .map_err(|e| Error::os("SYNC_IOC_MERGE", e))?;
        Ok(SyncFile { fd })
    }

    /// The state of the sync_file and of each of its fences
    /// (`SYNC_IOC_FILE_INFO`).
    ///
    /// # Errors
    /// [`Error::Os`] when the kernel refuses.
    pub fn info(&self) -> Result<SyncFileInfo> {
        let (name, status, fences) = crate::sys::sync_file_info(self.fd.as_fd())
            .map_err(|e| Error::os("SYNC_IOC_FILE_INFO", e))?;
        Ok(SyncFileInfo {
            name,
            status: FenceStatus::of(status),
            fences: fences
                .into_iter()
                .map(|f| FenceInfo {
                    driver_name: f.driver_name,
                    timeline_name: f.obj_name,
                    status: FenceStatus::of(f.status),
                    timestamp_ns: (f.status != 0).then_some(f.timestamp_ns),
                })
                .collect(),
        })
    }
}

impl AsFd for SyncFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SyncFile {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<SyncFile> for OwnedFd {
    fn from(s: SyncFile) -> OwnedFd {
        s.fd
    }
}

impl TryFrom<OwnedFd> for SyncFile {
    type Error = Error;
    fn try_from(fd: OwnedFd) -> Result<SyncFile> {
        SyncFile::from_fd(fd)
    }
}

/// What an fd that is not a sync_file is, for messages (`/proc/self/fd`).
fn describe(fd: BorrowedFd<'_>) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some(format!("{} is not a sync_file", link.display()))
}

/// The dma-buf fd of `mem`, or why there is none.
fn dmabuf_fd(mem: &Memory) -> Result<BorrowedFd<'_>> {
    dmabuf_memory_get_fd(mem).ok_or_else(|| Error::WrongKind {
        expected: "dma-buf (export DRM dumb memory to a dma-buf first)",
        found: mem.allocator().mem_type().to_owned(),
    })
}

/// What a fence ioctl's errno means: `ENOTTY` is a kernel before 6.0, or
/// an fd that is no dma-buf (the message says both).
fn fence_ioctl_error(what: &'static str, e: rustix::io::Errno) -> Error {
    if e == rustix::io::Errno::NOTTY {
        Error::NotSupported {
            what,
            since: "6.0",
            errno: e,
        }
    } else {
        Error::os(what, e)
    }
}

/// The fences of dma-buf memory `mem` that an access must wait for now, as
/// a sync_file (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`): for
/// [`FenceAccess::Read`] the writers', for [`FenceAccess::Write`] every
/// fence. A buffer without such fences gives a signaled sync_file.
///
/// # Errors
/// [`Error::WrongKind`] when `mem` is not dma-buf memory,
/// [`Error::NotSupported`] on a kernel before 6.0, [`Error::Os`] otherwise.
pub fn export_sync_file(mem: &Memory, access: FenceAccess) -> Result<SyncFile> {
    let fd = crate::sys::dma_buf_export_sync_file(dmabuf_fd(mem)?, access.bits())
        .map_err(|e| fence_ioctl_error("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", e))?;
    Ok(SyncFile { fd })
}

/// Add the fences of `fence` to dma-buf memory `mem`'s, as a reader's
/// ([`FenceAccess::Read`]: writers wait for it) or a writer's
/// ([`FenceAccess::Write`]: everyone waits for it)
/// (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`). Maps of the buffer then wait for it
/// (bounded), and so does every device and process using the buffer.
///
/// # Errors
/// As [`export_sync_file`].
pub fn import_sync_file(mem: &Memory, fence: &SyncFile, access: FenceAccess) -> Result<()> {
    crate::sys::dma_buf_import_sync_file(dmabuf_fd(mem)?, fence.fd.as_fd(), access.bits())
        .map_err(|e| fence_ioctl_error("DMA_BUF_IOCTL_IMPORT_SYNC_FILE", e))
}

/// The vgem driver (`modprobe vgem`): GEM buffers without a device,
/// exported as dma-bufs, with fences a program attaches and signals
/// itself. It lets tests (yours too) exercise explicit sync on any kernel
/// with `CONFIG_DRM_VGEM`, without a GPU. vgem signals a fence by itself
/// 10 s after it was attached (`VGEM_FENCE_TIMEOUT`).
#[derive(Debug, Clone)]
pub struct Vgem {
    fd: Arc<OwnedFd>,
}

impl Vgem {
    /// The first DRM card whose driver is vgem.
    ///
    /// # Errors
    /// [`Error::NotAvailable`] when there is none.
    pub fn open() -> Result<Vgem> {
        let path = crate::drm::find_device("vgem").ok_or_else(|| Error::NotAvailable {
            what: "vgem".into(),
            reason: "no DRM card with the vgem driver (modprobe vgem, as root)".into(),
        })?;
        Vgem::open_path(&path)
    }

    /// The vgem card at `path`.
    ///
    /// # Errors
    /// [`Error::Os`] when it cannot be opened, [`Error::NotAvailable`]
    /// when its driver is not vgem.
    pub fn open_path(path: &Path) -> Result<Vgem> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::os("open(vgem card)", e))?;
        match crate::sys::drm_driver_name(fd.as_fd()) {
            Ok(name) if name == "vgem" => Ok(Vgem { fd: Arc::new(fd) }),
            other => Err(Error::NotAvailable {
                what: format!("vgem at {}", path.display()),
                reason: format!("its driver is {other:?}"),
            }),
        }
    }

    /// A new buffer of at least `size` bytes (a dumb buffer of 4096-byte
    /// rows), exported as dma-buf memory.
    ///
    /// # Errors
    /// [`Error::Os`] when vgem refuses, [`Error::SizeOverflow`] for a size
    /// over 4 GiB.
    pub fn alloc(&self, size: usize) -> Result<VgemBuffer> {
        let rows = u32::try_from(size.max(1).div_ceil(4096)).map_err(|_| Error::SizeOverflow {
            what: "vgem buffer rows",
        })?;
        let dev = self.fd.as_fd();
        let dumb = crate::sys::drm_create_dumb(dev, 1024, rows, 32)
            .map_err(|e| Error::os("DRM_IOCTL_MODE_CREATE_DUMB(vgem)", e))?;
        let made = (|| {
            let dmabuf = crate::sys::drm_prime_handle_to_fd(dev, dumb.handle)
                .map_err(|e| Error::os("DRM_IOCTL_PRIME_HANDLE_TO_FD(vgem)", e))?;
            let size = usize::try_from(dumb.size).map_err(|_| Error::SizeOverflow {
                what: "vgem buffer size",
            })?;
            DmaBufAllocator::new().alloc(dmabuf, size)
        })();
        match made {
            Ok(memory) => Ok(VgemBuffer {
                vgem: self.clone(),
                handle: dumb.handle,
                memory,
            }),
            Err(e) => {
                let _ = crate::sys::drm_destroy_dumb(dev, dumb.handle);
                Err(e)
            }
        }
    }
}

/// A vgem buffer: its GEM handle and its dma-buf memory.
#[derive(Debug)]
pub struct VgemBuffer {
    vgem: Vgem,
    handle: u32,
    memory: Memory,
}

impl VgemBuffer {
    /// The buffer as dma-buf memory (clone it to keep it past the buffer).
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Attach a new unsignaled fence to the buffer
    /// (`DRM_IOCTL_VGEM_FENCE_ATTACH`), a writer's or a reader's, as a
    /// device's work on it would.
    ///
    /// # Errors
    /// [`Error::Os`] when vgem refuses (a conflicting fence, out of memory).
    pub fn attach_fence(&self, access: FenceAccess) -> Result<VgemFence> {
        let id = crate::sys::vgem_fence_attach(
            self.vgem.fd.as_fd(),
            self.handle,
            access == FenceAccess::Write,
        )
        .map_err(|e| Error::os("DRM_IOCTL_VGEM_FENCE_ATTACH", e))?;
        Ok(VgemFence {
            vgem: self.vgem.clone(),
            id: Some(id),
        })
    }
}

impl Drop for VgemBuffer {
    fn drop(&mut self) {
        // The dma-buf (the memory, and anyone it was given to) keeps the
        // object alive; only this handle goes.
        let _ = crate::sys::drm_destroy_dumb(self.vgem.fd.as_fd(), self.handle);
    }
}

/// A fence attached to a vgem buffer, signaled by [`signal`](VgemFence::signal)
/// (from any thread), or when dropped, or by vgem after 10 s.
#[derive(Debug)]
pub struct VgemFence {
    vgem: Vgem,
    id: Option<u32>,
}

impl VgemFence {
    /// Signal the fence (`DRM_IOCTL_VGEM_FENCE_SIGNAL`).
    ///
    /// # Errors
    /// [`Error::Os`] with `ETIMEDOUT` when vgem had signaled it itself
    /// (10 s after attaching), or another errno when vgem refuses.
    pub fn signal(mut self) -> Result<()> {
        let id = self.id.take().expect("signaled once, by value");
        crate::sys::vgem_fence_signal(self.vgem.fd.as_fd(), id)
            .map_err(|e| Error::os("DRM_IOCTL_VGEM_FENCE_SIGNAL", e))
    }
}

impl Drop for VgemFence {
    fn drop(&mut self) {
        // Nobody waits for a fence that nothing will signal.
        if let Some(id) = self.id.take() {
            let _ = crate::sys::vgem_fence_signal(self.vgem.fd.as_fd(), id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enotty_is_a_kernel_before_6_0() {
        let e = fence_ioctl_error("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", rustix::io::Errno::NOTTY);
        assert!(matches!(
            e,
            Error::NotSupported {
                what: "DMA_BUF_IOCTL_EXPORT_SYNC_FILE",
                since: "6.0",
                ..
            }
        ));
        assert!(e.to_string().contains("Linux 6.0"), "{e}");
        assert!(e.to_string().contains("not a dma-buf"), "{e}");
        assert_eq!(e.errno(), Some(rustix::io::Errno::NOTTY));
        let e = fence_ioctl_error("DMA_BUF_IOCTL_IMPORT_SYNC_FILE", rustix::io::Errno::INVAL);
        assert!(matches!(e, Error::Os { .. }), "{e}");
    }

    #[test]
    fn statuses() {
        assert_eq!(FenceStatus::of(0), FenceStatus::Active);
        assert_eq!(FenceStatus::of(1), FenceStatus::Signaled);
        assert_eq!(FenceStatus::of(-5), FenceStatus::Error(-5));
    }
}
