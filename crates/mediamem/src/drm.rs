//! DRM dumb buffers: [`DrmDumbAllocator`] (GStreamer's
//! `GstDRMDumbAllocator`, memory type `"DRMDumbMemory"`), PRIME export to
//! dma-buf, and the seed functions [`is_drm_dumb_memory`],
//! [`drm_dumb_memory_get_handle`] and [`drm_dumb_memory_export_dmabuf`].
//!
//! Faithful to GStreamer where it is right: `DRM_CAP_DUMB_BUFFER` is
//! required, `CREATE_DUMB` with a bpp and a scaled height per fourcc,
//! `MAP_DUMB` + `mmap`, `DESTROY_DUMB` when the memory goes, PRIME export
//! with `O_CLOEXEC | O_RDWR` wrapped as dma-buf memory (`KEEP_MAPPED`).
//!
//! Better where GStreamer is broken:
//! * shares of dumb memory work (GStreamer calls a NULL `mem_share`);
//! * exporting memory that is not dumb memory is an error, not a crash;
//! * concurrent first maps mmap once (the map state is behind a lock);
//! * the map protection follows the map flags (GStreamer always maps RW);
//! * every format has its real size: 8- and 16-bit single-plane formats
//!   (`R8`, `GR88`, ...) are not 32 bpp, 4:2:2 three-plane `YUV422` gets
//!   `2·h` rows (GStreamer gives 1.5·h and under-allocates), odd heights of
//!   4:2:0 formats get their last chroma row, and an unknown fourcc is an
//!   error ([`Error::UnknownFourcc`]) rather than silently 32 bpp;
//! * formats subsampled horizontally (NV12, NV16, YUYV, YUV420, ...) round
//!   an odd width up to even before `CREATE_DUMB`, so the pitch and size
//!   differ from GStreamer's for odd widths: GStreamer's are one chroma
//!   sample short on every row, and the last sample of the image lies past
//!   the buffer;
//! * the device fd is shared through an `Arc`, so memories outlive a dropped
//!   allocator.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::mm::ProtFlags;

use crate::allocator::{Allocator, AllocatorCaps, AllocatorFlags, AllocatorImpl};
use crate::dmabuf::import_dmabuf;
use crate::dmabuf::DmaBufAllocator;
use crate::error::{Error, Result};
use crate::fd::{FdHandle, FdMemoryFlags};
use crate::mapping::{FileMapping, MapFailure, MapOptions, Upgrade};
use crate::memory::{BlockAlias, MapFlags, Memory, MemoryBackend, MemoryKind, MemoryParts};
use crate::sys;

/// Memory type of dumb memory.
pub const DRM_DUMB_MEMORY_TYPE: &str = "DRMDumbMemory";

/// A DRM fourcc code, from its four characters.
///
/// ```
/// use mediamem::drm::fourcc;
/// assert_eq!(fourcc(*b"XR24"), 0x3432_5258);
/// ```
pub const fn fourcc(c: [u8; 4]) -> u32 {
    u32::from_le_bytes(c)
}

/// A fourcc as text (`"NV12"`), or hex when it is not printable.
pub fn fourcc_name(code: u32) -> String {
    let b = code.to_le_bytes();
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        String::from_utf8_lossy(&b).trim_end().to_owned()
    } else {
        format!("{code:#010x}")
    }
}

/// How many rows of `pitch` bytes a format needs for an image of height `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// `h` (single plane, or 4:4:4 with chroma in the same plane).
    Same,
    /// `h + ceil(h/2)`: 4:2:0, chroma at half height.
    Half,
    /// `2·h`: 4:2:2, chroma at full height and half width.
    Double,
    /// `3·h`: 4:4:4 in separate planes.
    Triple,
}

/// The layout rule of one fourcc for a dumb buffer.
#[derive(Debug, Clone, Copy)]
struct DumbFormat {
    code: u32,
    bpp: u32,
    rows: Rows,
    /// Chroma is subsampled horizontally: the width is rounded up to even.
    hsub: bool,
}

const fn f(code: &[u8; 4], bpp: u32, rows: Rows, hsub: bool) -> DumbFormat {
    DumbFormat {
        code: fourcc(*code),
        bpp,
        rows,
        hsub,
    }
}

/// Every format mediamem sizes, from drm_fourcc.h.
const FORMATS: &[DumbFormat] = &[
    // 8-bit single plane
    f(b"C8  ", 8, Rows::Same, false),
    f(b"R8  ", 8, Rows::Same, false),
    // 16-bit single plane
    f(b"R16 ", 16, Rows::Same, false),
    f(b"RG88", 16, Rows::Same, false),
    f(b"GR88", 16, Rows::Same, false),
    f(b"RG16", 16, Rows::Same, false), // RGB565
    f(b"BG16", 16, Rows::Same, false), // BGR565
    f(b"XR15", 16, Rows::Same, false),
    f(b"XB15", 16, Rows::Same, false),
    f(b"RX15", 16, Rows::Same, false),
    f(b"BX15", 16, Rows::Same, false),
    f(b"AR15", 16, Rows::Same, false),
    f(b"AB15", 16, Rows::Same, false),
    f(b"RA15", 16, Rows::Same, false),
    f(b"BA15", 16, Rows::Same, false),
    f(b"XR12", 16, Rows::Same, false),
    f(b"XB12", 16, Rows::Same, false),
    f(b"RX12", 16, Rows::Same, false),
    f(b"BX12", 16, Rows::Same, false),
    f(b"AR12", 16, Rows::Same, false),
    f(b"AB12", 16, Rows::Same, false),
    f(b"RA12", 16, Rows::Same, false),
    f(b"BA12", 16, Rows::Same, false),
    // packed 4:2:2
    f(b"YUYV", 16, Rows::Same, true),
    f(b"YVYU", 16, Rows::Same, true),
    f(b"UYVY", 16, Rows::Same, true),
    f(b"VYUY", 16, Rows::Same, true),
    // 24-bit
    f(b"RG24", 24, Rows::Same, false), // RGB888
    f(b"BG24", 24, Rows::Same, false), // BGR888
    // 32-bit
    f(b"XR24", 32, Rows::Same, false),
    f(b"XB24", 32, Rows::Same, false),
    f(b"RX24", 32, Rows::Same, false),
    f(b"BX24", 32, Rows::Same, false),
    f(b"AR24", 32, Rows::Same, false),
    f(b"AB24", 32, Rows::Same, false),
    f(b"RA24", 32, Rows::Same, false),
    f(b"BA24", 32, Rows::Same, false),
    f(b"XR30", 32, Rows::Same, false),
    f(b"XB30", 32, Rows::Same, false),
    f(b"RX30", 32, Rows::Same, false),
    f(b"BX30", 32, Rows::Same, false),
    f(b"AR30", 32, Rows::Same, false),
    f(b"AB30", 32, Rows::Same, false),
    f(b"RA30", 32, Rows::Same, false),
    f(b"BA30", 32, Rows::Same, false),
    f(b"AYUV", 32, Rows::Same, false),
    f(b"XYUV", 32, Rows::Same, false),
    f(b"RG32", 32, Rows::Same, false), // RG1616
    f(b"GR32", 32, Rows::Same, false), // GR1616
    // 64-bit
    f(b"XR4H", 64, Rows::Same, false),
    f(b"XB4H", 64, Rows::Same, false),
    f(b"AR4H", 64, Rows::Same, false),
    f(b"AB4H", 64, Rows::Same, false),
    f(b"XR48", 64, Rows::Same, false),
    f(b"XB48", 64, Rows::Same, false),
    f(b"AR48", 64, Rows::Same, false),
    f(b"AB48", 64, Rows::Same, false),
    // two-plane YUV
    f(b"NV12", 8, Rows::Half, true),
    f(b"NV21", 8, Rows::Half, true),
    f(b"NV16", 8, Rows::Double, true),
    f(b"NV61", 8, Rows::Double, true),
    f(b"NV24", 8, Rows::Triple, false),
    f(b"NV42", 8, Rows::Triple, false),
    f(b"NV15", 10, Rows::Half, true),
    f(b"P010", 16, Rows::Half, true),
    f(b"P012", 16, Rows::Half, true),
    f(b"P016", 16, Rows::Half, true),
    f(b"P210", 16, Rows::Double, true),
    // three-plane YUV
    f(b"YU12", 8, Rows::Half, true),    // YUV420
    f(b"YV12", 8, Rows::Half, true),    // YVU420
    f(b"YU16", 8, Rows::Double, true),  // YUV422
    f(b"YV16", 8, Rows::Double, true),  // YVU422
    f(b"YU24", 8, Rows::Triple, false), // YUV444
    f(b"YV24", 8, Rows::Triple, false), // YVU444
];

/// The table's entry for `code`.
///
/// # Errors
/// [`Error::UnknownFourcc`] for a fourcc outside the table.
fn dumb_format(code: u32) -> Result<&'static DumbFormat> {
    FORMATS
        .iter()
        .find(|x| x.code == code)
        .ok_or_else(|| Error::UnknownFourcc {
            fourcc: code,
            name: fourcc_name(code),
        })
}

/// The `(width, height, bpp)` to ask `CREATE_DUMB` for, so that one dumb
/// buffer holds every plane of a `width`×`height` image in `fourcc`.
///
/// ```
/// use mediamem::drm::{dumb_dimensions, fourcc};
/// assert_eq!(dumb_dimensions(fourcc(*b"NV12"), 1920, 1080)?, (1920, 1620, 8));
/// assert_eq!(dumb_dimensions(fourcc(*b"NV12"), 5, 3)?, (6, 5, 8)); // whole chroma samples
/// assert_eq!(dumb_dimensions(fourcc(*b"YU16"), 640, 480)?, (640, 960, 8));
/// assert!(dumb_dimensions(fourcc(*b"ZZZZ"), 1, 1).is_err());
/// # Ok::<(), mediamem::Error>(())
/// ```
pub fn dumb_dimensions(code: u32, width: u32, height: u32) -> Result<(u32, u32, u32)> {
    let format = dumb_format(code)?;
    let overflow = Error::SizeOverflow {
        what: "dumb buffer dimensions",
    };
    let width = if format.hsub {
        width.checked_next_multiple_of(2).ok_or(overflow)?
    } else {
        width
    };
    let rows = match format.rows {
        Rows::Same => Some(height),
        Rows::Half => height.checked_add(height.div_ceil(2)),
        Rows::Double => height.checked_mul(2),
        Rows::Triple => height.checked_mul(3),
    }
    .ok_or(Error::SizeOverflow {
        what: "dumb buffer rows",
    })?;
    Ok((width, rows, format.bpp))
}

/// The planes of a `width`×`height` image in `fourcc`, from the same table
/// as [`dumb_dimensions`]: for each plane, the fewest bytes a row holds
/// (a stride must cover them) and its number of rows. Used to check frame
/// layouts (`layout`).
///
/// # Errors
/// [`Error::UnknownFourcc`] for a fourcc outside the table.
pub(crate) fn plane_extents(code: u32, width: u32, height: u32) -> Result<Vec<(u64, u64)>> {
    let format = dumb_format(code)?;
    let (w, h, bpp) = (u64::from(width), u64::from(height), u64::from(format.bpp));
    let w_even = if format.hsub {
        w.next_multiple_of(2)
    } else {
        w
    };
    let bytes = |samples: u64| (samples * bpp).div_ceil(8);
    let luma = (bytes(w_even), h);
    let chroma_rows = if format.rows == Rows::Half {
        h.div_ceil(2)
    } else {
        h
    };
    Ok(match format.rows {
        Rows::Same => vec![luma],
        // Three planes: YUV420/422/444 (YU12, YV16, ...); packed YUYV and
        // YVYU are single-plane (`Rows::Same`).
        _ if code.to_le_bytes()[0] == b'Y' => {
            let per_row = if format.rows == Rows::Triple {
                bytes(w)
            } else {
                bytes(w_even / 2)
            };
            vec![luma, (per_row, chroma_rows), (per_row, chroma_rows)]
        }
        // Two planes: interleaved chroma (NV12, P010, NV24, ...).
        Rows::Triple => vec![luma, (bytes(2 * w), chroma_rows)],
        _ => vec![luma, (bytes(w_even), chroma_rows)],
    })
}

/// An open DRM device, shared by its allocator and every memory from it.
struct DrmDevice {
    fd: OwnedFd,
    path: Option<PathBuf>,
    driver: String,
    prime_export: bool,
}

impl fmt::Debug for DrmDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrmDevice")
            .field("fd", &self.fd.as_raw_fd())
            .field("path", &self.path)
            .field("driver", &self.driver)
            .field("prime_export", &self.prime_export)
            .finish()
    }
}

impl DrmDevice {
    /// Check `fd` is a DRM device with dumb buffers.
    fn new(fd: OwnedFd, path: Option<PathBuf>) -> Result<DrmDevice> {
        let what = || {
            path.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("fd {}", fd.as_raw_fd()))
        };
        let driver = sys::drm_driver_name(fd.as_fd()).map_err(|e| Error::BadFd {
            reason: format!("{} is not a DRM device (DRM_IOCTL_VERSION: {e})", what()),
        })?;
        let dumb = sys::drm_get_cap(fd.as_fd(), sys::DRM_CAP_DUMB_BUFFER).unwrap_or(0);
        if dumb == 0 {
            return Err(Error::NotAvailable {
                what: format!("dumb buffers on {} (driver {driver})", what()),
                reason: "DRM_CAP_DUMB_BUFFER is 0: not a KMS device".into(),
            });
        }
        let prime = sys::drm_get_cap(fd.as_fd(), sys::DRM_CAP_PRIME).unwrap_or(0);
        Ok(DrmDevice {
            fd,
            path,
            driver,
            prime_export: prime & sys::DRM_PRIME_CAP_EXPORT != 0,
        })
    }
}

/// The dumb allocator implementation (`"DRMDumbMemory"`, `CUSTOM_ALLOC`).
#[derive(Debug)]
pub(crate) struct DrmDumbAllocatorImpl {
    device: Arc<DrmDevice>,
    dmabuf: DmaBufAllocator,
}

impl DrmDumbAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps = AllocatorCaps::empty();
}

impl AllocatorImpl for DrmDumbAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        DRM_DUMB_MEMORY_TYPE
    }
    fn flags(&self) -> AllocatorFlags {
        AllocatorFlags::CUSTOM_ALLOC
    }
}

crate::allocator::allocator_handle! {
    /// Allocates DRM dumb buffers as [`Memory`] (`GstDRMDumbAllocator`).
    ///
    /// ```no_run
    /// use mediamem::drm::{fourcc, DrmDumbAllocator};
    /// let dumb = DrmDumbAllocator::new_with_device_path("/dev/dri/card0")?;
    /// let (mem, pitch) = dumb.alloc(fourcc(*b"XR24"), 640, 480)?;
    /// assert!(pitch >= 640 * 4);
    /// mem.map_writable()?.fill(0xff);
    /// if dumb.has_prime_export() {
    ///     let dmabuf = mediamem::drm_dumb_memory_export_dmabuf(&mem)?;
    ///     assert!(mediamem::is_dmabuf_memory(&dmabuf));
    /// }
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    DrmDumbAllocator => DrmDumbAllocatorImpl
}

impl DrmDumbAllocator {
    /// Open `path` (`O_RDWR | O_CLOEXEC`) and check it offers dumb buffers
    /// (`gst_drm_dumb_allocator_new_with_device_path`).
    ///
    /// # Errors
    /// [`Error::NotAvailable`] when the node is missing, not accessible, or
    /// has no dumb buffers (e.g. vgem); [`Error::BadFd`] when it is not a
    /// DRM device.
    pub fn new_with_device_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let fd =
            rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
                Error::NotAvailable {
                    what: path.display().to_string(),
                    reason: match e {
                        rustix::io::Errno::NOENT => "no such device node".into(),
                        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                            format!("permission denied ({e}): add the user to the video group")
                        }
                        e => format!("open failed: {e}"),
                    },
                }
            })?;
        Self::from_device(DrmDevice::new(fd, Some(path.to_owned()))?)
    }

    /// Use a duplicate of the caller's DRM fd
    /// (`gst_drm_dumb_allocator_new_with_fd`); the caller keeps its own.
    pub fn new_with_fd(fd: BorrowedFd<'_>) -> Result<Self> {
        let dup = crate::fd::dup_fd(fd)?;
        Self::from_device(DrmDevice::new(dup, None)?)
    }

    fn from_device(device: DrmDevice) -> Result<Self> {
        Ok(DrmDumbAllocator(Allocator::new(DrmDumbAllocatorImpl {
            device: Arc::new(device),
            dmabuf: DmaBufAllocator::new(),
        })))
    }

    /// Whether dumb buffers can be exported as dma-bufs
    /// (`DRM_CAP_PRIME & DRM_PRIME_CAP_EXPORT`).
    pub fn has_prime_export(&self) -> bool {
        self.imp().device.prime_export
    }

    /// The device node, when opened by path.
    pub fn device_path(&self) -> Option<&Path> {
        self.imp().device.path.as_deref()
    }

    /// The DRM driver's name (`DRM_IOCTL_VERSION`), e.g. `"bochs-drm"`.
    pub fn driver_name(&self) -> &str {
        &self.imp().device.driver
    }

    /// The allocator of this device's PRIME exports.
    pub(crate) fn export_allocator(&self) -> &Allocator {
        self.imp().dmabuf.allocator()
    }

    /// The device fd (owned by the allocator and its memories).
    pub fn device_fd(&self) -> BorrowedFd<'_> {
        self.imp().device.fd.as_fd()
    }

    /// Allocate a dumb buffer for a `width`×`height` image in `fourcc`
    /// (`gst_drm_dumb_allocator_alloc`); returns the memory and the pitch.
    ///
    /// # Errors
    /// [`Error::UnknownFourcc`], [`Error::SizeOverflow`], and
    /// [`Error::Os`] when the driver refuses (`CREATE_DUMB`).
    pub fn alloc(&self, fourcc: u32, width: u32, height: u32) -> Result<(Memory, u32)> {
        let (w, h, bpp) = dumb_dimensions(fourcc, width, height)?;
        let device = &self.imp().device;
        let create = sys::drm_create_dumb(device.fd.as_fd(), w, h, bpp)
            .map_err(|e| Error::os("DRM_IOCTL_MODE_CREATE_DUMB", e))?;
        let backend = DumbBackend {
            device: device.clone(),
            handle: create.handle,
            size: create.size as usize,
            alias: BlockAlias::new(),
            mapping: FileMapping::new(MapOptions {
                len: create.size as usize,
                private: false,
                keep: false,
                upgrade: Upgrade::Add,
                huge_page: None,
                guard_sigbus: false,
            })
            .map_err(|e| Error::os("dumb buffer size", e))?,
        };
        let size = backend.size;
        // From here the backend owns the handle: any error below destroys it.
        let mem = Memory::from_parts(&self.0, MemoryParts::new(Box::new(backend), size))?;
        Ok((mem, create.pitch))
    }
}

/// A GEM handle of a dumb buffer, valid on its device fd while the memory
/// lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemHandle(pub u32);

/// The backend of dumb memory.
pub struct DumbBackend {
    device: Arc<DrmDevice>,
    handle: u32,
    size: usize,
    /// The borrow rule shared with its PRIME exports (and every import of
    /// them): one rule for the buffer's pages, whichever fd reaches them.
    alias: BlockAlias,
    /// The one mapping of the buffer (through the device fd at its fake
    /// offset) that every map shares; protection only ever grows.
    mapping: FileMapping,
}

impl fmt::Debug for DumbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DumbBackend")
            .field("device", &self.device)
            .field("handle", &self.handle)
            .field("size", &self.size)
            .finish()
    }
}

impl DumbBackend {
    /// The GEM handle.
    pub fn handle(&self) -> GemHandle {
        GemHandle(self.handle)
    }

    /// Whether the buffer is mapped right now.
    pub fn is_mapped(&self) -> bool {
        self.mapping.addr().is_some()
    }

    fn fail(&self, failure: MapFailure) -> Error {
        Error::MapFailed {
            mem_type: DRM_DUMB_MEMORY_TYPE.into(),
            reason: format!("{failure} (handle {})", self.handle),
            errno: failure.errno(),
        }
    }
}

// SAFETY: `map` returns a live MAP_SHARED mapping of the whole buffer
// (`size` bytes, which the kernel allocated and initialised), readable, and
// writable when WRITE was asked; it stays until the last unmap.
unsafe impl MemoryBackend for DumbBackend {
    fn map(&self, maxsize: usize, flags: MapFlags) -> Result<NonNull<u8>> {
        debug_assert!(maxsize <= self.size);
        let prot = if flags.contains(MapFlags::WRITE) {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let device = self.device.fd.as_fd();
        self.mapping
            .map_at(
                device,
                || {
                    sys::drm_map_dumb_offset(device, self.handle)
                        .map_err(|e| MapFailure::Os("DRM_IOCTL_MODE_MAP_DUMB", e))
                },
                prot,
            )
            .map_err(|f| self.fail(f))
    }

    fn unmap(&self, _flags: MapFlags) {
        if let Err(e) = self.mapping.unmap() {
            log::warn!("munmap of dumb buffer {} failed: {e}", self.handle);
        }
    }

    fn is_span(&self, first: (usize, usize), second: (usize, usize)) -> bool {
        crate::memory::regions_adjacent(first, second)
    }

    fn alias(&self) -> Option<&BlockAlias> {
        Some(&self.alias)
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::DrmDumb
    }
}

impl Drop for DumbBackend {
    fn drop(&mut self) {
        // The mapping goes first, then the handle.
        self.mapping.unmap_all();
        if let Err(e) = sys::drm_destroy_dumb(self.device.fd.as_fd(), self.handle) {
            log::warn!(
                "DRM_IOCTL_MODE_DESTROY_DUMB of handle {} failed: {e}",
                self.handle
            );
        }
    }
}

/// Whether `mem` is DRM dumb memory (`gst_is_drm_dumb_memory`).
pub fn is_drm_dumb_memory(mem: &Memory) -> bool {
    mem.root_backend().kind() == MemoryKind::DrmDumb
}

/// The GEM handle of dumb memory (`gst_drm_dumb_memory_get_handle`);
/// `None` (GStreamer's 0) for other memory. The handle belongs to the
/// memory's device fd and is valid while the memory lives.
pub fn drm_dumb_memory_get_handle(mem: &Memory) -> Option<GemHandle> {
    mem.backend::<DumbBackend>().map(DumbBackend::handle)
}

/// Export dumb memory as a dma-buf (`gst_drm_dumb_memory_export_dmabuf`):
/// a new fd (`O_CLOEXEC | O_RDWR`) and a new dma-buf memory on every call,
/// `KEEP_MAPPED`, viewing the same bytes as `mem` (its offset and size; for
/// a root that is the whole buffer).
///
/// # Errors
/// [`Error::WrongKind`] when `mem` is not dumb memory, [`Error::Os`] when
/// the export fails (no PRIME export).
pub fn drm_dumb_memory_export_dmabuf(mem: &Memory) -> Result<Memory> {
    let backend = mem
        .backend::<DumbBackend>()
        .ok_or_else(|| Error::WrongKind {
            expected: "DRM dumb",
            found: mem.allocator().mem_type().to_owned(),
        })?;
    let imp = mem
        .allocator()
        .downcast_ref::<DrmDumbAllocatorImpl>()
        .ok_or_else(|| Error::WrongKind {
            expected: "DRM dumb allocator",
            found: mem.allocator().mem_type().to_owned(),
        })?;
    let fd = sys::drm_prime_handle_to_fd(backend.device.fd.as_fd(), backend.handle)
        .map_err(|e| Error::os("DRM_IOCTL_PRIME_HANDLE_TO_FD", e))?;
    // The export and the dumb mapping reach the same pages: one rule.
    backend.alias.add_file(fd.as_fd())?;
    let (size, offset, _) = mem.sizes();
    import_dmabuf(
        imp.dmabuf.allocator(),
        FdHandle::Owned(fd),
        backend.size,
        offset,
        size,
        FdMemoryFlags::KEEP_MAPPED,
    )
}

/// One DRM device node and what it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrmDeviceInfo {
    /// The node, e.g. `/dev/dri/card0`.
    pub path: PathBuf,
    /// The driver name, or why the node could not be asked.
    pub driver: std::result::Result<String, String>,
    /// `DRM_CAP_DUMB_BUFFER`.
    pub dumb: bool,
    /// `DRM_CAP_PRIME` has export.
    pub prime_export: bool,
}

/// The primary DRM nodes (`/dev/dri/card*`) of this machine.
pub fn list_devices() -> Vec<DrmDeviceInfo> {
    let Ok(dir) = std::fs::read_dir("/dev/dri") else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("card"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(
            |path| match rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
                Ok(fd) => {
                    let driver = sys::drm_driver_name(fd.as_fd()).map_err(|e| e.to_string());
                    let cap = |c| sys::drm_get_cap(fd.as_fd(), c).unwrap_or(0);
                    DrmDeviceInfo {
                        path,
                        driver,
                        dumb: cap(sys::DRM_CAP_DUMB_BUFFER) != 0,
                        prime_export: cap(sys::DRM_CAP_PRIME) & sys::DRM_PRIME_CAP_EXPORT != 0,
                    }
                }
                Err(e) => DrmDeviceInfo {
                    path,
                    driver: Err(format!("open: {e}")),
                    dumb: false,
                    prime_export: false,
                },
            },
        )
        .collect()
}

/// The first primary node whose driver is `driver`.
pub fn find_device(driver: &str) -> Option<PathBuf> {
    list_devices()
        .into_iter()
        .find(|d| d.driver.as_deref() == Ok(driver))
        .map(|d| d.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_fix_gstreamer_sizes() {
        // GStreamer: R8 and GR88 are 32 bpp (default), YUV422 is 1.5·h.
        assert_eq!(
            dumb_dimensions(fourcc(*b"R8  "), 64, 4).unwrap(),
            (64, 4, 8)
        );
        assert_eq!(
            dumb_dimensions(fourcc(*b"GR88"), 64, 4).unwrap(),
            (64, 4, 16)
        );
        assert_eq!(
            dumb_dimensions(fourcc(*b"YU16"), 64, 4).unwrap(),
            (64, 8, 8)
        );
        // P010 is 16 bpp (GStreamer 1.24.9 fix).
        assert_eq!(
            dumb_dimensions(fourcc(*b"P010"), 64, 4).unwrap(),
            (64, 6, 16)
        );
        assert_eq!(
            dumb_dimensions(fourcc(*b"NV15"), 64, 4).unwrap(),
            (64, 6, 10)
        );
        assert_eq!(
            dumb_dimensions(fourcc(*b"NV16"), 64, 4).unwrap(),
            (64, 8, 8)
        );
        assert_eq!(
            dumb_dimensions(fourcc(*b"NV24"), 64, 4).unwrap(),
            (64, 12, 8)
        );
        assert_eq!(
            dumb_dimensions(fourcc(*b"XR24"), 63, 5).unwrap(),
            (63, 5, 32)
        );
        // Odd sizes: whole chroma samples.
        assert_eq!(
            dumb_dimensions(fourcc(*b"NV12"), 63, 5).unwrap(),
            (64, 8, 8)
        );
        assert_eq!(
            dumb_dimensions(fourcc(*b"YUYV"), 63, 5).unwrap(),
            (64, 5, 16)
        );
    }

    #[test]
    fn unknown_fourcc_and_overflow_are_errors() {
        let e = dumb_dimensions(fourcc(*b"ABCD"), 1, 1).unwrap_err();
        assert!(
            matches!(e, Error::UnknownFourcc { ref name, .. } if name == "ABCD"),
            "{e}"
        );
        assert!(matches!(
            dumb_dimensions(fourcc(*b"NV24"), 1, u32::MAX),
            Err(Error::SizeOverflow { .. })
        ));
        assert!(matches!(
            dumb_dimensions(fourcc(*b"NV12"), u32::MAX, 1),
            Err(Error::SizeOverflow { .. })
        ));
    }

    /// The layout of every fourcc, written out from drm_fourcc.h
    /// independently of `FORMATS`: bits per pixel of the first plane,
    /// horizontal and vertical chroma subsampling, number of planes.
    const REFERENCE: &[(&[u8; 4], u32, u32, u32, u32)] = &[
        (b"C8  ", 8, 1, 1, 1),
        (b"R8  ", 8, 1, 1, 1),
        (b"R16 ", 16, 1, 1, 1),
        (b"RG88", 16, 1, 1, 1),
        (b"GR88", 16, 1, 1, 1),
        (b"RG16", 16, 1, 1, 1),
        (b"BG16", 16, 1, 1, 1),
        (b"XR15", 16, 1, 1, 1),
        (b"XB15", 16, 1, 1, 1),
        (b"RX15", 16, 1, 1, 1),
        (b"BX15", 16, 1, 1, 1),
        (b"AR15", 16, 1, 1, 1),
        (b"AB15", 16, 1, 1, 1),
        (b"RA15", 16, 1, 1, 1),
        (b"BA15", 16, 1, 1, 1),
        (b"XR12", 16, 1, 1, 1),
        (b"XB12", 16, 1, 1, 1),
        (b"RX12", 16, 1, 1, 1),
        (b"BX12", 16, 1, 1, 1),
        (b"AR12", 16, 1, 1, 1),
        (b"AB12", 16, 1, 1, 1),
        (b"RA12", 16, 1, 1, 1),
        (b"BA12", 16, 1, 1, 1),
        (b"YUYV", 16, 2, 1, 1),
        (b"YVYU", 16, 2, 1, 1),
        (b"UYVY", 16, 2, 1, 1),
        (b"VYUY", 16, 2, 1, 1),
        (b"RG24", 24, 1, 1, 1),
        (b"BG24", 24, 1, 1, 1),
        (b"XR24", 32, 1, 1, 1),
        (b"XB24", 32, 1, 1, 1),
        (b"RX24", 32, 1, 1, 1),
        (b"BX24", 32, 1, 1, 1),
        (b"AR24", 32, 1, 1, 1),
        (b"AB24", 32, 1, 1, 1),
        (b"RA24", 32, 1, 1, 1),
        (b"BA24", 32, 1, 1, 1),
        (b"XR30", 32, 1, 1, 1),
        (b"XB30", 32, 1, 1, 1),
        (b"RX30", 32, 1, 1, 1),
        (b"BX30", 32, 1, 1, 1),
        (b"AR30", 32, 1, 1, 1),
        (b"AB30", 32, 1, 1, 1),
        (b"RA30", 32, 1, 1, 1),
        (b"BA30", 32, 1, 1, 1),
        (b"AYUV", 32, 1, 1, 1),
        (b"XYUV", 32, 1, 1, 1),
        (b"RG32", 32, 1, 1, 1),
        (b"GR32", 32, 1, 1, 1),
        (b"XR4H", 64, 1, 1, 1),
        (b"XB4H", 64, 1, 1, 1),
        (b"AR4H", 64, 1, 1, 1),
        (b"AB4H", 64, 1, 1, 1),
        (b"XR48", 64, 1, 1, 1),
        (b"XB48", 64, 1, 1, 1),
        (b"AR48", 64, 1, 1, 1),
        (b"AB48", 64, 1, 1, 1),
        (b"NV12", 8, 2, 2, 2),
        (b"NV21", 8, 2, 2, 2),
        (b"NV16", 8, 2, 1, 2),
        (b"NV61", 8, 2, 1, 2),
        (b"NV24", 8, 1, 1, 2),
        (b"NV42", 8, 1, 1, 2),
        (b"NV15", 10, 2, 2, 2),
        (b"P010", 16, 2, 2, 2),
        (b"P012", 16, 2, 2, 2),
        (b"P016", 16, 2, 2, 2),
        (b"P210", 16, 2, 1, 2),
        (b"YU12", 8, 2, 2, 3),
        (b"YV12", 8, 2, 2, 3),
        (b"YU16", 8, 2, 1, 3),
        (b"YV16", 8, 2, 1, 3),
        (b"YU24", 8, 1, 1, 3),
        (b"YV24", 8, 1, 1, 3),
    ];

    /// What one dumb buffer holding every plane needs, derived from the
    /// reference layout: the width rounded to whole chroma samples, the
    /// luma rows plus the chroma planes' bytes in luma rows (two chroma
    /// samples per subsampled position, in one interleaved plane or two).
    fn expected_dimensions(
        (_, bpp, hsub, vsub, planes): (&[u8; 4], u32, u32, u32, u32),
        width: u32,
        height: u32,
    ) -> (u32, u32, u32) {
        let width = width.next_multiple_of(hsub);
        let chroma_rows = if planes == 1 {
            0
        } else {
            2 * height.div_ceil(vsub) / hsub
        };
        (width, height + chroma_rows, bpp)
    }

    #[test]
    fn every_fourcc_has_its_drm_layout() {
        // The table and the reference name the same formats.
        for f in FORMATS {
            assert!(
                REFERENCE.iter().any(|r| fourcc(*r.0) == f.code),
                "{} is not in the reference",
                fourcc_name(f.code)
            );
        }
        assert_eq!(FORMATS.len(), REFERENCE.len());
        for &r in REFERENCE {
            let code = fourcc(*r.0);
            for (w, h) in [(64, 4), (63, 5), (1, 1), (1920, 1080), (4095, 2161)] {
                assert_eq!(
                    dumb_dimensions(code, w, h).unwrap(),
                    expected_dimensions(r, w, h),
                    "{} at {w}x{h}",
                    fourcc_name(code)
                );
            }
        }
        // Spelled out: the 24-bit formats are 24 bpp (not 16 or 32), and an
        // odd 4:2:0 size gets whole chroma samples.
        assert_eq!(
            dumb_dimensions(fourcc(*b"RG24"), 640, 480).unwrap(),
            (640, 480, 24)
        );
        assert_eq!(dumb_dimensions(fourcc(*b"BG24"), 3, 3).unwrap(), (3, 3, 24));
        assert_eq!(dumb_dimensions(fourcc(*b"YU12"), 5, 5).unwrap(), (6, 8, 8));
    }

    #[test]
    fn table_has_no_duplicates() {
        for (i, a) in FORMATS.iter().enumerate() {
            assert!(
                FORMATS[i + 1..].iter().all(|b| b.code != a.code),
                "{} twice",
                fourcc_name(a.code)
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(fourcc_name(fourcc(*b"NV12")), "NV12");
        assert_eq!(fourcc_name(fourcc(*b"R8  ")), "R8");
        assert_eq!(fourcc_name(0), "0x00000000");
    }

    #[test]
    fn a_non_drm_fd_is_refused() {
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let e = DrmDumbAllocator::new_with_fd(f.as_fd()).unwrap_err();
        assert!(matches!(e, Error::BadFd { .. }), "{e}");
        let e = DrmDumbAllocator::new_with_device_path("/dev/dri/no-such-card").unwrap_err();
        assert!(matches!(e, Error::NotAvailable { .. }), "{e}");
    }
}
