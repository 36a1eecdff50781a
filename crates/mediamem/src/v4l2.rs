//! V4L2 capture as mediamem memory: camera buffers out as dma-buf
//! [`Memory`] (export), and mediamem dma-bufs into a camera's queue
//! (import).
//!
//! * [`Device::open`] opens a video capture node (single- or multi-planar)
//!   and checks it: a file that is not a V4L2 node, a node that does not
//!   capture video (an output, a radio, ...) or one without streaming I/O
//!   is an [`Error::V4l2`] saying which. [`Device::formats`] lists the
//!   formats, [`Device::set_format`] sets one, [`Device::set_control`] and
//!   [`Device::set_frame_interval`] tune the source.
//! * [`Device::stream_export`]: `VIDIOC_REQBUFS` (MMAP), then
//!   `VIDIOC_EXPBUF` of every plane of every buffer, each wrapped by a
//!   [`DmaBufAllocator`] as dma-buf memory.
//! * [`Device::stream_import`] and [`Device::stream_import_pool`]:
//!   `V4L2_MEMORY_DMABUF` with memories of any mediamem dma-buf allocator
//!   (udmabuf, a dma-heap, DRM dumb buffers exported), or taken from a
//!   [`MemoryPool`]. Every memory is checked against the format before the
//!   first `VIDIOC_REQBUFS`: one too small for its plane, not dma-buf, a
//!   view with an offset, with other handles alive, with a block-free hook
//!   already, or with another root memory of this process over the same
//!   dma-buf is refused.
//! * [`Device::stream_mmap`]: MMAP buffers mapped through the device fd,
//!   as classic V4L2 applications do (no dma-buf; the tests' reference).
//! * [`Stream::next_frame`] waits (`poll`, bounded by its timeout) and
//!   dequeues a [`Frame`]: the buffer's memories, its [`FrameLayout`]
//!   (DRM fourcc, planes, strides; the data offsets the multi-planar API
//!   reports included), sequence number and timestamp.
//!
//! A [`Device`] has one [`Stream`] at a time (the fd has one buffer
//! queue; a second `REQBUFS` would free the first stream's buffers under
//! it): while one lives, another is refused with [`V4l2Problem::Busy`].
//! Drop the old stream before making the next (`stream =
//! dev.stream_export(..)?` makes the new one first, and is refused).
//! What the driver answers is checked before it is used: a granted buffer
//! count above [`MAX_GRANTED`], buffers with fewer planes than the format
//! or shorter than its `sizeimage`, a format changed before the buffers
//! were made, data offsets past the buffer are
//! [`V4l2Problem::DriverAnswer`] errors.
//!
//! ## Ownership of a frame
//!
//! Each buffer's memories carry a [`set_on_block_free`] hook. A frame
//! hands the memories themselves to the user: clone them, share them,
//! send them to another process; the buffer goes back to the driver
//! (`VIDIOC_QBUF`) when the last handle of every one of its planes is gone,
//! and only if the stream is still on. Holding a frame stalls that buffer
//! alone. The memory of a held frame stays valid whatever the stream does
//! (`STREAMOFF`, the [`Stream`] dropped, the device closed): the dma-buf fd
//! in the memory keeps the pages alive (an MMAP frame's mapping does, and
//! it keeps no device fd open), and a buffer that comes back to a stream
//! that is off, or gone, is kept idle or freed.
//!
//! Another root memory of a frame's dma-buf in this process (its fd
//! imported again with [`DmaBufAllocator::alloc_borrowed`], say) holds the
//! buffer as a handle does: it is not queued while that root lives
//! ([`Stream::held_count`] counts it), and [`Stream::next_frame`] queues
//! it once the root is gone. What other processes, or raw `mmap`s of the
//! fd, do with a dma-buf is outside this (and any in-process) rule.
//!
//! If the `QBUF` of a returned buffer fails (it is logged), the buffer
//! stays home and [`Stream::next_frame`] tries again before it waits;
//! [`V4l2Problem::RequeueFailed`] when that fails and nothing else is
//! queued. `STREAMON` and `STREAMOFF` run without the stream's lock, so a
//! frame dropped on another thread (its hook takes the lock) never waits
//! for the driver.
//!
//! Limits, as they stand:
//!
//! * Taking a frame memory's hook back
//!   ([`Memory::take_on_block_free`]) takes its buffer out of the stream
//!   for good: it never comes home, stays counted by
//!   [`Stream::held_count`], and once every buffer is gone so,
//!   [`Stream::next_frame`] reports [`V4l2Problem::AllBuffersHeld`].
//! * A buffer's memories come home with the flags they left with
//!   ([`FreedBlock::into_memory`]); mediamem has no way to set flags on a
//!   live memory, and `resize` only clears the `ZERO_*` hints, so a flag
//!   can only be lost, never gained, across frames.
//! * The single-planar API has no data offset: a driver that writes the
//!   picture past byte 0 of a single-planar buffer is described from
//!   byte 0. Use the multi-planar API (its offsets are in each
//!   [`Frame::layout`]) for such drivers.
//!
//! ## Where mediamem differs from GStreamer's v4l2 plugin
//!
//! | GStreamer's v4l2 plugin (`v4l2src`, gstv4l2allocator, gstv4l2bufferpool) does | mediamem does | because |
//! |---|---|---|
//! | exports with `EXPBUF` only in `io-mode=dmabuf`; by default maps the MMAP buffers through the device | exports every buffer ([`Device::stream_export`]); device mappings only on request ([`Device::stream_mmap`]) | one kind of memory, which the frame transport and `is_dmabuf_memory` users take zero-copy |
//! | queues a buffer back when its `GstBuffer` returns to the pool; a memory shared out of it does not hold the buffer | queues it back when the last handle of each plane's block is gone, clones and shares included | the driver never overwrites bytes a user can still read |
//! | a buffer out at `STREAMOFF` returns to a flushing pool, queued again at the next `STREAMON` | the same; and a frame outliving its [`Stream`] or [`Device`] stays valid (its dma-buf or mapping keeps the driver's pages) and is freed when dropped | frames go to other threads and processes with no lifetime tie to the camera |
//! | `io-mode=dmabuf-import` takes downstream's buffers one at a time as frames are queued | takes the buffers up front and checks each against the format (dma-buf, offset 0, sole handle, no hook, no other root of its dma-buf, at least the plane's `sizeimage`) before `REQBUFS` | a typed error naming the buffer and plane, and nothing half set up |
//! | waits in `poll` until a frame or a flush | [`Stream::next_frame`] takes a timeout, and fails at once when every buffer is held | never a hang |
//! | describes formats with `GstVideoInfo` | [`FrameLayout`] with DRM fourccs; a format mediamem has no layout for is refused at [`Device::set_format`] | the layout is what the IPC receiver checks |
//!
//! [`set_on_block_free`]: Memory::set_on_block_free
//! [`DmaBufAllocator`]: crate::DmaBufAllocator
//! [`DmaBufAllocator::alloc_borrowed`]: crate::DmaBufAllocator::alloc_borrowed

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::ProtFlags;

use crate::allocator::{Allocator, AllocatorFlags, AllocatorImpl};
use crate::dmabuf::{dmabuf_memory_get_fd, is_dmabuf_memory, DmaBufAllocator};
use crate::drm::{fourcc, fourcc_name, plane_extents};
use crate::error::{Error, Result, V4l2Problem};
use crate::fd::FdMemoryFlags;
use crate::layout::{FrameLayout, PlaneLayout, MODIFIER_LINEAR};
use crate::mapping::{FileMapping, MapFailure, MapOptions, Upgrade};
use crate::memory::{FreedBlock, MapFlags, Memory, MemoryBackend, MemoryParts};
use crate::pool::MemoryPool;
use crate::sys;

/// Most buffers a stream asks for.
pub const MAX_BUFFERS: u32 = 32;

/// Most buffers a driver may grant (it may grant more than asked, to
/// reach its minimum): more is refused as a broken answer
/// ([`V4l2Problem::DriverAnswer`]) rather than trusted as a length.
pub const MAX_GRANTED: u32 = 2 * MAX_BUFFERS;

/// vivid's private controls (drivers/media/test-drivers/vivid), to make
/// its test pattern static for comparisons.
pub mod vivid {
    /// `VIVID_CID_OSD_TEXT_MODE`: 0 all, 1 counters only, 2 none.
    pub const CID_OSD_TEXT_MODE: u32 = 0x00f0_f001;
    /// `VIVID_CID_HOR_MOVEMENT`: 3 is "No Movement".
    pub const CID_HOR_MOVEMENT: u32 = 0x00f0_f002;
    /// `VIVID_CID_VERT_MOVEMENT`: 3 is "No Movement".
    pub const CID_VERT_MOVEMENT: u32 = 0x00f0_f003;
    /// `VIVID_CID_TEST_PATTERN`: 0 is 75% colour bars.
    pub const CID_TEST_PATTERN: u32 = 0x00f0_f000;
    /// `VIVID_CID_BUF_PREPARE_ERROR` (a button): the next `VIDIOC_QBUF`
    /// fails once with `EINVAL`.
    pub const CID_BUF_PREPARE_ERROR: u32 = 0x00f0_f044;
    /// `VIVID_CID_QUEUE_ERROR` (a button): the streaming queue goes into
    /// its error state (`QBUF` and `DQBUF` fail with `EIO`) until
    /// `STREAMOFF`.
    pub const CID_QUEUE_ERROR: u32 = 0x00f0_f046;
    /// The menu value of "No Movement".
    pub const NO_MOVEMENT: i32 = 3;
    /// The menu value of OSD "None".
    pub const OSD_NONE: i32 = 2;
}

/// The V4L2 fourcc of four characters (the same packing as DRM's).
pub const fn v4l2_fourcc(c: [u8; 4]) -> u32 {
    fourcc(c)
}

/// What `VIDIOC_QUERYCAP` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Driver name (`"vivid"`, `"uvcvideo"`).
    pub driver: String,
    /// Device name.
    pub card: String,
    /// Bus location.
    pub bus_info: String,
    /// Kernel version the driver reports.
    pub version: u32,
    /// Capabilities of the whole physical device.
    pub capabilities: u32,
    /// Capabilities of this node (`capabilities` when the driver does not
    /// report them per node).
    pub device_caps: u32,
}

impl Capability {
    fn from_raw(c: &sys::V4l2Capability) -> Self {
        let text = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        Capability {
            driver: text(&c.driver),
            card: text(&c.card),
            bus_info: text(&c.bus_info),
            version: c.version,
            capabilities: c.capabilities,
            device_caps: if c.capabilities & sys::V4L2_CAP_DEVICE_CAPS != 0 {
                c.device_caps
            } else {
                c.capabilities
            },
        }
    }

    /// The node captures video with the multi-planar API only.
    pub fn is_multiplanar(&self) -> bool {
        self.device_caps & sys::V4L2_CAP_VIDEO_CAPTURE == 0
            && self.device_caps & sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE != 0
    }

    /// The node captures video (single- or multi-planar).
    pub fn is_capture(&self) -> bool {
        self.device_caps & (sys::V4L2_CAP_VIDEO_CAPTURE | sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE) != 0
    }

    /// The node outputs video.
    pub fn is_output(&self) -> bool {
        self.device_caps & (sys::V4L2_CAP_VIDEO_OUTPUT | sys::V4L2_CAP_VIDEO_OUTPUT_MPLANE) != 0
    }

    /// The node has streaming I/O.
    pub fn has_streaming(&self) -> bool {
        self.device_caps & sys::V4L2_CAP_STREAMING != 0
    }
}

/// A format the device lists (`VIDIOC_ENUM_FMT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatDesc {
    /// V4L2 fourcc.
    pub fourcc: u32,
    /// The driver's description.
    pub description: String,
    /// `V4L2_FMT_FLAG_*`.
    pub flags: u32,
}

/// One plane (memory) of a [`Format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneFormat {
    /// Bytes from one row to the next.
    pub bytes_per_line: u32,
    /// Bytes a buffer of this plane needs.
    pub size_image: u32,
}

/// The format the device captures in (`VIDIOC_G_FMT` / `VIDIOC_S_FMT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// V4L2 fourcc (`NV12`, `NM12`, `YUYV`, ...).
    pub fourcc: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `V4L2_FIELD_*`.
    pub field: u32,
    /// One entry per memory of a buffer.
    pub planes: Vec<PlaneFormat>,
    /// Set through the multi-planar API.
    pub multiplanar: bool,
}

/// V4L2 fourccs mediamem has a layout for: the DRM fourcc of the image,
/// and whether each plane has a memory of its own (the `...M` formats).
const FORMATS: &[([u8; 4], [u8; 4], bool)] = &[
    (*b"NV12", *b"NV12", false),
    (*b"NV21", *b"NV21", false),
    (*b"NV16", *b"NV16", false),
    (*b"NV61", *b"NV61", false),
    (*b"NV24", *b"NV24", false),
    (*b"NV42", *b"NV42", false),
    (*b"YUYV", *b"YUYV", false),
    (*b"YVYU", *b"YVYU", false),
    (*b"UYVY", *b"UYVY", false),
    (*b"VYUY", *b"VYUY", false),
    (*b"YU12", *b"YU12", false),
    (*b"YV12", *b"YV12", false),
    (*b"GREY", *b"R8  ", false),
    (*b"RGBP", *b"RG16", false),
    (*b"XR24", *b"XR24", false),
    (*b"AR24", *b"AR24", false),
    (*b"NM12", *b"NV12", true),
    (*b"NM21", *b"NV21", true),
    (*b"NM16", *b"NV16", true),
    (*b"NM61", *b"NV61", true),
    (*b"YM12", *b"YU12", true),
    (*b"YM21", *b"YV12", true),
    (*b"YM16", *b"YU16", true),
    (*b"YM61", *b"YV16", true),
    (*b"YM24", *b"YU24", true),
    (*b"YM42", *b"YV24", true),
];

/// The DRM fourcc of V4L2 format `code`, and whether each plane is in a
/// memory of its own; `None` when mediamem has no layout for it.
pub fn drm_format(code: u32) -> Option<(u32, bool)> {
    FORMATS
        .iter()
        .find(|(v, _, _)| fourcc(*v) == code)
        .map(|(_, d, m)| (fourcc(*d), *m))
}

impl Format {
    fn from_raw(f: &sys::V4l2Format) -> Self {
        let p = f.read();
        Format {
            fourcc: p.pixelformat,
            width: p.width,
            height: p.height,
            field: p.field,
            planes: p
                .planes
                .iter()
                .map(|q| PlaneFormat {
                    bytes_per_line: q.bytesperline,
                    size_image: q.sizeimage,
                })
                .collect(),
            multiplanar: f.type_ == sys::V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> V4l2Problem {
        V4l2Problem::UnsupportedFormat {
            fourcc: fourcc_name(self.fourcc),
            width: self.width,
            height: self.height,
            reason: reason.into(),
        }
    }

    /// Where the planes of a frame lie in the buffer's memories: one memory
    /// with the planes one after the other `bytes_per_line`-strided, or one
    /// memory a plane for the multi-memory formats. Checked against the
    /// planes' `size_image`.
    ///
    /// # Errors
    /// [`Error::V4l2`] with [`V4l2Problem::UnsupportedFormat`] for a
    /// format mediamem has no layout for, or whose planes do not fit;
    /// [`Error::SizeOverflow`] for strides or offsets past `u32`/`u64`.
    pub fn layout(&self) -> Result<FrameLayout> {
        let bad = |p: V4l2Problem| Error::V4l2 {
            device: "format".into(),
            problem: p,
        };
        let (drm, separate) = drm_format(self.fourcc)
            .ok_or_else(|| bad(self.unsupported("mediamem has no frame layout for it")))?;
        let extents = plane_extents(drm, self.width, self.height)?;
        let first = self
            .planes
            .first()
            .ok_or_else(|| bad(self.unsupported("no planes")))?;
        let mut planes = Vec::with_capacity(extents.len());
        if separate {
            if self.planes.len() != extents.len() {
                return Err(bad(self.unsupported(format!(
                    "{} memories for {} planes",
                    self.planes.len(),
                    extents.len()
                ))));
            }
            for (i, p) in self.planes.iter().enumerate() {
                planes.push(PlaneLayout {
                    memory: i as u32,
                    offset: 0,
                    stride: p.bytes_per_line,
                });
            }
        } else {
            if self.planes.len() != 1 {
                return Err(bad(self.unsupported(format!(
                    "{} memories for a format in one",
                    self.planes.len()
                ))));
            }
            // Every plane's stride scales with the first one's padding.
            // `Format` is plain data (any caller can fill it), so every
            // step is checked.
            let overflow = || Error::SizeOverflow {
                what: "V4L2 plane stride or offset",
            };
            let row0 = extents[0].0.max(1);
            let mut offset = 0u64;
            for &(row, rows) in &extents {
                let stride = u64::from(first.bytes_per_line)
                    .checked_mul(row)
                    .ok_or_else(overflow)?
                    / row0;
                let stride = u32::try_from(stride).map_err(|_| overflow())?;
                planes.push(PlaneLayout {
                    memory: 0,
                    offset,
                    stride,
                });
                offset = u64::from(stride)
                    .checked_mul(rows)
                    .and_then(|n| offset.checked_add(n))
                    .ok_or_else(overflow)?;
            }
        }
        let layout = FrameLayout::new(drm, MODIFIER_LINEAR, self.width, self.height, planes)?;
        let sizes: Vec<usize> = self.planes.iter().map(|p| p.size_image as usize).collect();
        layout
            .check(&sizes)
            .map_err(|e| bad(self.unsupported(format!("the driver's sizes do not fit: {e}"))))?;
        Ok(layout)
    }
}

/// An open V4L2 video capture device.
pub struct Device {
    fd: Arc<OwnedFd>,
    name: String,
    caps: Capability,
    buf_type: u32,
    /// A stream of this device is alive: the fd has one buffer queue, so
    /// it has at most one stream ([`QueueClaim`]).
    busy: Arc<AtomicBool>,
}

/// The right to the device's one buffer queue, held by a [`Stream`] (or a
/// stream being set up) and given back when it drops: after the stream's
/// `REQBUFS` 0, since `Stream::drop` runs before its fields drop.
///
/// Without it, two streams of one `Device` would share the queue: the
/// second one's `REQBUFS` frees the first one's buffers and makes new ones
/// with the same indexes, so the first, started again, would queue buffers
/// whose frames the second one's user is reading.
struct QueueClaim(Arc<AtomicBool>);

impl QueueClaim {
    fn take(busy: &Arc<AtomicBool>) -> Option<QueueClaim> {
        busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| QueueClaim(busy.clone()))
    }
}

impl Drop for QueueClaim {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("card", &self.caps.card)
            .field("multiplanar", &self.is_multiplanar())
            .finish()
    }
}

fn v4l2_err(device: &str, problem: V4l2Problem) -> Error {
    Error::V4l2 {
        device: device.to_owned(),
        problem,
    }
}

impl Device {
    /// Open the capture device at `path` (read-write, non-blocking).
    ///
    /// # Errors
    /// [`Error::Os`] when it cannot be opened; [`Error::V4l2`] when it is
    /// not a V4L2 node ([`V4l2Problem::NotV4l2`]), does not capture video
    /// ([`V4l2Problem::NotCapture`]) or has no streaming I/O
    /// ([`V4l2Problem::NoStreaming`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Device> {
        let path = path.as_ref();
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| Error::os("open of a V4L2 device", e))?;
        Self::with_name(fd, path.display().to_string())
    }

    /// Use `fd` (which the device then owns) as a capture device. It is
    /// made non-blocking: a dequeue never waits beyond its timeout.
    ///
    /// # Errors
    /// As [`Device::open`].
    pub fn from_fd(fd: OwnedFd) -> Result<Device> {
        let name = format!("fd {}", fd.as_raw_fd());
        Self::with_name(fd, name)
    }

    fn with_name(fd: OwnedFd, name: String) -> Result<Device> {
        let raw = sys::v4l2_querycap(fd.as_fd())
            .map_err(|errno| v4l2_err(&name, V4l2Problem::NotV4l2 { errno }))?;
        let caps = Capability::from_raw(&raw);
        if !caps.is_capture() {
            return Err(v4l2_err(
                &name,
                V4l2Problem::NotCapture {
                    device_caps: caps.device_caps,
                },
            ));
        }
        if !caps.has_streaming() {
            return Err(v4l2_err(
                &name,
                V4l2Problem::NoStreaming {
                    device_caps: caps.device_caps,
                },
            ));
        }
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| Error::os("fcntl(F_GETFL)", e))?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)
            .map_err(|e| Error::os("fcntl(F_SETFL)", e))?;
        let buf_type = if caps.is_multiplanar() {
            sys::V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE
        } else {
            sys::V4L2_BUF_TYPE_VIDEO_CAPTURE
        };
        Ok(Device {
            fd: Arc::new(fd),
            name,
            caps,
            buf_type,
            busy: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The device's path (or `fd N`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the device says it can do.
    pub fn capability(&self) -> &Capability {
        &self.caps
    }

    /// The device captures through the multi-planar API.
    pub fn is_multiplanar(&self) -> bool {
        self.buf_type == sys::V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE
    }

    /// The device fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn err(&self, problem: V4l2Problem) -> Error {
        v4l2_err(&self.name, problem)
    }

    /// The formats the device captures in (`VIDIOC_ENUM_FMT`).
    ///
    /// # Errors
    /// [`Error::Os`] when the driver fails the enumeration.
    pub fn formats(&self) -> Result<Vec<FormatDesc>> {
        let mut out = Vec::new();
        for index in 0..1024 {
            match sys::v4l2_enum_fmt(self.fd(), self.buf_type, index) {
                Ok(d) => {
                    let end = d.description.iter().position(|&c| c == 0).unwrap_or(32);
                    out.push(FormatDesc {
                        fourcc: d.pixelformat,
                        description: String::from_utf8_lossy(&d.description[..end]).into_owned(),
                        flags: d.flags,
                    });
                }
                Err(Errno::INVAL) => break,
                Err(e) => return Err(Error::os("VIDIOC_ENUM_FMT", e)),
            }
        }
        Ok(out)
    }

    /// The current format (`VIDIOC_G_FMT`).
    ///
    /// # Errors
    /// [`Error::Os`] when the driver fails it.
    pub fn format(&self) -> Result<Format> {
        let f =
            sys::v4l2_g_fmt(self.fd(), self.buf_type).map_err(|e| Error::os("VIDIOC_G_FMT", e))?;
        Ok(Format::from_raw(&f))
    }

    /// Capture `width`×`height` images in V4L2 format `fourcc`
    /// (`VIDIOC_S_FMT`); returns the format the driver set (it may adjust
    /// the size, and pads rows as it likes).
    ///
    /// # Errors
    /// [`V4l2Problem::UnsupportedFormat`] when the device does not list
    /// `fourcc`, the driver picks another, or mediamem has no layout for
    /// it; [`Error::Os`] when the driver fails (`EBUSY` while a stream has
    /// buffers).
    pub fn set_format(&self, fourcc: u32, width: u32, height: u32) -> Result<Format> {
        let unsupported = |reason: String| {
            self.err(V4l2Problem::UnsupportedFormat {
                fourcc: fourcc_name(fourcc),
                width,
                height,
                reason,
            })
        };
        if drm_format(fourcc).is_none() {
            return Err(unsupported("mediamem has no frame layout for it".into()));
        }
        if !self.formats()?.iter().any(|d| d.fourcc == fourcc) {
            return Err(unsupported("the device does not list it".into()));
        }
        let mut f = sys::V4l2Format::new(self.buf_type, fourcc, width, height);
        sys::v4l2_s_fmt(self.fd(), &mut f).map_err(|e| Error::os("VIDIOC_S_FMT", e))?;
        let got = Format::from_raw(&f);
        if got.fourcc != fourcc {
            return Err(unsupported(format!(
                "the driver chose {} instead",
                fourcc_name(got.fourcc)
            )));
        }
        got.layout()
            .map_err(|_| unsupported("the driver's planes do not fit a layout".into()))?;
        Ok(got)
    }

    /// Set control `id` (`VIDIOC_S_CTRL`); returns the value the driver
    /// took.
    ///
    /// # Errors
    /// [`Error::Os`] (`EINVAL` for a control the device does not have or a
    /// value out of range).
    pub fn set_control(&self, id: u32, value: i32) -> Result<i32> {
        sys::v4l2_s_ctrl(self.fd(), id, value).map_err(|e| Error::os("VIDIOC_S_CTRL", e))
    }

    /// The value of control `id` (`VIDIOC_G_CTRL`).
    ///
    /// # Errors
    /// [`Error::Os`] (`EINVAL` for a control the device does not have).
    pub fn control(&self, id: u32) -> Result<i32> {
        sys::v4l2_g_ctrl(self.fd(), id).map_err(|e| Error::os("VIDIOC_G_CTRL", e))
    }

    /// Ask for `numerator/denominator` seconds a frame (`VIDIOC_S_PARM`);
    /// returns the interval the driver chose.
    ///
    /// # Errors
    /// [`Error::Os`] when the driver has no frame interval to set.
    pub fn set_frame_interval(&self, numerator: u32, denominator: u32) -> Result<(u32, u32)> {
        sys::v4l2_s_frame_interval(self.fd(), self.buf_type, numerator, denominator)
            .map_err(|e| Error::os("VIDIOC_S_PARM", e))
    }

    /// Make vivid's picture static (no OSD text, no movement), so that
    /// every frame of a pattern has the same bytes.
    ///
    /// # Errors
    /// [`Error::Os`] on a device without vivid's controls.
    pub fn make_vivid_static(&self) -> Result<()> {
        self.set_control(vivid::CID_OSD_TEXT_MODE, vivid::OSD_NONE)?;
        self.set_control(vivid::CID_HOR_MOVEMENT, vivid::NO_MOVEMENT)?;
        self.set_control(vivid::CID_VERT_MOVEMENT, vivid::NO_MOVEMENT)?;
        Ok(())
    }

    /// Free the queue's buffers (`REQBUFS` 0) of `memory`, ignoring errors
    /// (a failed setup's cleanup, a dropped stream).
    fn free_buffers(&self, memory: u32) {
        let _ = sys::v4l2_reqbufs(self.fd(), self.buf_type, memory, 0);
    }

    /// The device's one buffer queue for a new stream.
    fn claim(&self) -> Result<QueueClaim> {
        QueueClaim::take(&self.busy).ok_or_else(|| {
            self.err(V4l2Problem::Busy {
                reason: "this device already has a live stream; drop it first \
                         (one stream per device at a time)"
                    .into(),
            })
        })
    }

    fn request(&self, memory: u32, count: u32, what: &'static str) -> Result<u32> {
        let (granted, caps) =
            sys::v4l2_reqbufs(self.fd(), self.buf_type, memory, count).map_err(|e| match e {
                Errno::INVAL => self.err(V4l2Problem::NotSupported {
                    what,
                    reason: "VIDIOC_REQBUFS: EINVAL".into(),
                }),
                Errno::BUSY => self.err(V4l2Problem::Busy {
                    reason: "VIDIOC_REQBUFS: EBUSY (another open file of the node owns the queue)"
                        .into(),
                }),
                e => Error::os("VIDIOC_REQBUFS", e),
            })?;
        let bit = if memory == sys::V4L2_MEMORY_MMAP {
            sys::V4L2_BUF_CAP_SUPPORTS_MMAP
        } else {
            sys::V4L2_BUF_CAP_SUPPORTS_DMABUF
        };
        if caps != 0 && caps & bit == 0 {
            self.free_buffers(memory);
            return Err(self.err(V4l2Problem::NotSupported {
                what,
                reason: format!("the queue's capabilities are {caps:#x}"),
            }));
        }
        if granted == 0 {
            return Err(self.err(V4l2Problem::NotSupported {
                what,
                reason: "the driver granted no buffers".into(),
            }));
        }
        if let Err(reason) = check_granted(count, granted) {
            self.free_buffers(memory);
            return Err(self.err(V4l2Problem::DriverAnswer {
                call: "VIDIOC_REQBUFS",
                reason,
            }));
        }
        Ok(granted)
    }

    /// The format again, now that the queue is ours (`REQBUFS` made it
    /// busy, so no other open file can change it any more): it must be the
    /// one the stream's layout and checks were made from.
    fn check_format_kept(&self, format: &Format) -> Result<()> {
        let now = self.format()?;
        if now != *format {
            return Err(self.err(V4l2Problem::DriverAnswer {
                call: "VIDIOC_G_FMT",
                reason: format!(
                    "the format changed before the buffers were made: {} {}x{} {:?}, was {} {}x{} {:?}",
                    fourcc_name(now.fourcc),
                    now.width,
                    now.height,
                    now.planes,
                    fourcc_name(format.fourcc),
                    format.width,
                    format.height,
                    format.planes
                ),
            }));
        }
        Ok(())
    }

    fn new_shared(&self, memory: u32, format: &Format) -> Arc<Shared> {
        Arc::new(Shared {
            fd: self.fd.clone(),
            device: self.name.clone(),
            buf_type: self.buf_type,
            memory,
            memories: format.planes.len(),
            state: Mutex::new(State {
                streaming: false,
                // Open once the setup is done: until then a freed block is
                // simply freed.
                closed: true,
                slots: Vec::new(),
            }),
        })
    }

    /// Stream with `count` driver buffers (MMAP), each plane exported as a
    /// dma-buf (`VIDIOC_EXPBUF`) and wrapped as [`DmaBufAllocator`] memory.
    /// The stream starts off; call [`Stream::start`]. A device has one
    /// stream at a time: drop the last one first (`stream =
    /// dev.stream_export(..)?` makes the new one while the old one lives,
    /// and is refused).
    ///
    /// # Errors
    /// [`V4l2Problem::Busy`] while another stream of the device lives (or
    /// another open file of the node owns the queue);
    /// [`V4l2Problem::NotSupported`] when the queue has no MMAP buffers or
    /// the driver cannot export them; [`V4l2Problem::UnsupportedFormat`]
    /// when the current format has no layout;
    /// [`V4l2Problem::DriverAnswer`] when the driver's buffers do not fit
    /// the format; [`Error::Os`] otherwise.
    pub fn stream_export(&self, count: u32) -> Result<Stream> {
        self.stream_mmap_buffers(count, true)
    }

    /// Stream with `count` driver buffers (MMAP), each plane mapped
    /// through the device fd as [`V4L2_MMAP_MEMORY_TYPE`] memory, as
    /// classic V4L2 applications (and GStreamer's `io-mode=mmap`) do: no
    /// dma-buf, so nothing another process or device can import. The
    /// stream starts off; call [`Stream::start`].
    ///
    /// # Errors
    /// As [`Device::stream_export`].
    pub fn stream_mmap(&self, count: u32) -> Result<Stream> {
        self.stream_mmap_buffers(count, false)
    }

    fn stream_mmap_buffers(&self, count: u32, export: bool) -> Result<Stream> {
        let claim = self.claim()?;
        let format = self.format()?;
        let layout = format.layout().map_err(|e| self.rename(e))?;
        let count = count.clamp(1, MAX_BUFFERS);
        let granted = self.request(sys::V4L2_MEMORY_MMAP, count, "MMAP buffers")?;
        let shared = self.new_shared(sys::V4L2_MEMORY_MMAP, &format);
        let setup = || -> Result<Vec<Slot>> {
            self.check_format_kept(&format)?;
            let mut slots = Vec::with_capacity(granted as usize);
            for index in 0..granted {
                let mut args = sys::BufferArgs::new(
                    self.buf_type,
                    sys::V4L2_MEMORY_MMAP,
                    index,
                    format.planes.len(),
                );
                let info = sys::v4l2_querybuf(self.fd(), &mut args)
                    .map_err(|e| Error::os("VIDIOC_QUERYBUF", e))?;
                check_buffer(index, &info, &format).map_err(|reason| {
                    self.err(V4l2Problem::DriverAnswer {
                        call: "VIDIOC_QUERYBUF",
                        reason,
                    })
                })?;
                let mut planes = Vec::with_capacity(info.planes.len());
                for (plane, &(_, length, _, offset)) in info.planes.iter().enumerate() {
                    let mut mem = if export {
                        self.export_plane(index, plane as u32, length)?
                    } else {
                        mmap_memory(self.fd(), offset, length as usize)?
                    };
                    mem.set_on_block_free(hook(&shared, index as usize, plane))?;
                    planes.push(Some(mem));
                }
                slots.push(Slot::new(planes));
            }
            Ok(slots)
        };
        match setup() {
            Ok(slots) => Ok(Stream::open(shared, slots, format, layout, claim)),
            Err(e) => {
                self.free_buffers(sys::V4L2_MEMORY_MMAP);
                Err(e)
            }
        }
    }

    /// Plane `plane` of MMAP buffer `index` as dma-buf memory.
    fn export_plane(&self, index: u32, plane: u32, length: u32) -> Result<Memory> {
        let fd = sys::v4l2_expbuf(self.fd(), self.buf_type, index, plane).map_err(|e| {
            self.err(V4l2Problem::NotSupported {
                what: "EXPBUF",
                reason: format!("VIDIOC_EXPBUF of buffer {index}: {e}"),
            })
        })?;
        DmaBufAllocator::new().alloc_with_flags(fd, length as usize, FdMemoryFlags::KEEP_MAPPED)
    }

    /// Stream into `buffers`: for each buffer, one dma-buf memory per
    /// memory of the format (one for `NV12`, two for `NM12`). Each memory
    /// must be dma-buf memory of offset 0 at least as large as its plane's
    /// `size_image`, its only handle (the stream takes it; frames give it
    /// back), without a [`set_on_block_free`](Memory::set_on_block_free)
    /// hook, and the only memory of this process over its dma-buf (no
    /// other import of the same fd, no DRM dumb buffer it was exported
    /// from still alive): nothing else may read the bytes the driver
    /// writes. Everything is checked before `VIDIOC_REQBUFS`; the memories
    /// of a refused call are dropped.
    ///
    /// # Errors
    /// [`V4l2Problem::BadImport`] naming the first memory that does not
    /// fit; [`V4l2Problem::Busy`] while another stream of the device
    /// lives; [`V4l2Problem::NotSupported`] when the queue has no DMABUF
    /// import; [`Error::Os`] otherwise.
    pub fn stream_import(&self, mut buffers: Vec<Vec<Memory>>) -> Result<Stream> {
        let claim = self.claim()?;
        let format = self.format()?;
        let layout = format.layout().map_err(|e| self.rename(e))?;
        if buffers.is_empty() || buffers.len() > MAX_BUFFERS as usize {
            return Err(self.err(V4l2Problem::BadImport {
                buffer: 0,
                plane: 0,
                reason: format!("{} buffers, 1 to {MAX_BUFFERS} needed", buffers.len()),
            }));
        }
        for (b, planes) in buffers.iter_mut().enumerate() {
            self.check_import(b, planes, &format)?;
        }
        let granted = self.request(
            sys::V4L2_MEMORY_DMABUF,
            buffers.len() as u32,
            "DMABUF import",
        )?;
        if let Err(e) = self.check_format_kept(&format) {
            self.free_buffers(sys::V4L2_MEMORY_DMABUF);
            return Err(e);
        }
        let shared = self.new_shared(sys::V4L2_MEMORY_DMABUF, &format);
        let mut slots = Vec::with_capacity(buffers.len());
        for (index, planes) in buffers.into_iter().enumerate() {
            if index >= granted as usize {
                break; // the driver took fewer: the rest are dropped
            }
            let mut kept = Vec::with_capacity(planes.len());
            for (plane, mut mem) in planes.into_iter().enumerate() {
                // Cannot fail: checked above (sole handle of a root, no
                // hook), and nothing else has reached it since.
                if let Err(e) = mem.set_on_block_free(hook(&shared, index, plane)) {
                    self.free_buffers(sys::V4L2_MEMORY_DMABUF);
                    return Err(e);
                }
                kept.push(Some(mem));
            }
            slots.push(Slot::new(kept));
        }
        Ok(Stream::open(shared, slots, format, layout, claim))
    }

    /// Stream into `count` memories taken out of `pool` for the stream's
    /// life (detached: the pool may make new ones). The format must keep
    /// all its planes in one memory.
    ///
    /// # Errors
    /// As [`Device::stream_import`], and [`Error::PoolExhausted`].
    pub fn stream_import_pool(&self, pool: &MemoryPool, count: u32) -> Result<Stream> {
        let format = self.format()?;
        if format.planes.len() != 1 {
            return Err(self.err(V4l2Problem::BadImport {
                buffer: 0,
                plane: 1,
                reason: format!(
                    "{} keeps its planes in {} memories; a pool gives one",
                    fourcc_name(format.fourcc),
                    format.planes.len()
                ),
            }));
        }
        let mut buffers = Vec::new();
        for _ in 0..count.clamp(1, MAX_BUFFERS) {
            buffers.push(vec![pool.acquire()?.detach()]);
        }
        self.stream_import(buffers)
    }

    fn check_import(&self, buffer: usize, planes: &mut [Memory], format: &Format) -> Result<()> {
        let bad = |plane: usize, reason: String| {
            self.err(V4l2Problem::BadImport {
                buffer,
                plane,
                reason,
            })
        };
        if planes.len() != format.planes.len() {
            return Err(bad(
                planes.len().min(format.planes.len()),
                format!(
                    "{} memories, {} has {}",
                    planes.len(),
                    fourcc_name(format.fourcc),
                    format.planes.len()
                ),
            ));
        }
        for (plane, (mem, want)) in planes.iter_mut().zip(&format.planes).enumerate() {
            if !is_dmabuf_memory(mem) {
                return Err(bad(
                    plane,
                    format!(
                        "{} memory is not dma-buf memory",
                        mem.allocator().mem_type()
                    ),
                ));
            }
            if mem.parent().is_some() || mem.ref_count() != 1 {
                return Err(bad(
                    plane,
                    "a share, or a memory with other handles: the stream must own it".into(),
                ));
            }
            // The sole handle of a root: its hook can be looked at (taken
            // and put back).
            if let Some(h) = mem.take_on_block_free() {
                mem.set_on_block_free(h)?;
                return Err(bad(
                    plane,
                    "it already has a block-free hook (a pool's, another stream's): \
                     the stream needs its own"
                        .into(),
                ));
            }
            if other_roots(mem) {
                return Err(bad(
                    plane,
                    "another memory of this process reaches the same dma-buf (another \
                     import of its fd, or the DRM dumb buffer it was exported from): it \
                     could read the buffer while the driver writes it"
                        .into(),
                ));
            }
            if mem.offset() != 0 {
                return Err(bad(
                    plane,
                    format!(
                        "its bytes start at offset {}; the driver writes from 0",
                        mem.offset()
                    ),
                ));
            }
            if mem.size() < want.size_image as usize {
                return Err(bad(
                    plane,
                    format!(
                        "{} bytes, the format needs {} ({} {}x{})",
                        mem.size(),
                        want.size_image,
                        fourcc_name(format.fourcc),
                        format.width,
                        format.height
                    ),
                ));
            }
            if u32::try_from(mem.size()).is_err() {
                return Err(bad(plane, format!("{} bytes, past u32", mem.size())));
            }
        }
        Ok(())
    }

    /// Name a format error after this device.
    fn rename(&self, e: Error) -> Error {
        match e {
            Error::V4l2 { problem, .. } => self.err(problem),
            e => e,
        }
    }
}

/// Whether `granted` buffers (for `count` asked) is an answer to trust as
/// a length: at most [`MAX_GRANTED`].
fn check_granted(count: u32, granted: u32) -> std::result::Result<(), String> {
    if granted > MAX_GRANTED {
        return Err(format!(
            "{granted} buffers granted for {count} asked; at most {MAX_GRANTED} are taken"
        ));
    }
    Ok(())
}

/// Whether MMAP buffer `index`, as `VIDIOC_QUERYBUF` describes it, can
/// hold a frame of `format`: one plane per memory of the format, each at
/// least the plane's `size_image` long.
fn check_buffer(
    index: u32,
    info: &sys::BufInfo,
    format: &Format,
) -> std::result::Result<(), String> {
    if info.planes.len() != format.planes.len() {
        return Err(format!(
            "buffer {index} has {} planes, the format {}",
            info.planes.len(),
            format.planes.len()
        ));
    }
    for (plane, (&(_, length, _, _), want)) in info.planes.iter().zip(&format.planes).enumerate() {
        if length < want.size_image {
            return Err(format!(
                "buffer {index} plane {plane} has {length} bytes, the format needs {}",
                want.size_image
            ));
        }
    }
    Ok(())
}

/// Whether another root memory (or block) of this process reaches the
/// storage of `mem`'s block: another import of the same dma-buf, the DRM
/// dumb buffer it was exported from. Such a root can map the bytes while
/// the driver writes them, so a buffer is neither imported nor queued
/// again while one exists. Memory without an alias (V4L2 MMAP memory)
/// has no other root.
fn other_roots(mem: &Memory) -> bool {
    // An fd-backed root holds its alias twice (its block, itself).
    mem.block_alias().is_some_and(|a| a.handles() > 2)
}

/// The hook of plane `plane` of buffer `index`: brings the block back to
/// the stream, if it is still there.
fn hook(shared: &Arc<Shared>, index: usize, plane: usize) -> crate::memory::BlockFreeHook {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    Arc::new(move |freed: FreedBlock| {
        if let Some(shared) = weak.upgrade() {
            shared.returned(index, plane, freed);
        }
        // Otherwise the stream is gone: `freed` drops here, closing the
        // dma-buf.
    })
}

/// One driver buffer.
struct Slot {
    /// The memories of its planes while the stream has them; `None` for a
    /// plane out in a frame.
    planes: Vec<Option<Memory>>,
    /// The region each plane is given back with.
    regions: Vec<(usize, usize)>,
    /// In the driver's queue.
    queued: bool,
}

impl Slot {
    fn new(planes: Vec<Option<Memory>>) -> Self {
        let regions = planes
            .iter()
            .map(|m| m.as_ref().map_or((0, 0), |m| (m.offset(), m.size())))
            .collect();
        Slot {
            planes,
            regions,
            queued: false,
        }
    }

    fn home(&self) -> bool {
        !self.planes.is_empty() && self.planes.iter().all(Option::is_some)
    }

    /// Home, but another root of one of its dma-bufs is alive (see
    /// [`other_roots`]): still in user hands.
    fn reached_elsewhere(&self) -> bool {
        self.planes.iter().flatten().any(other_roots)
    }

    /// Some plane, or another root of one, is in user hands.
    fn held(&self) -> bool {
        !self.planes.is_empty() && (!self.home() || (!self.queued && self.reached_elsewhere()))
    }
}

struct State {
    streaming: bool,
    /// The stream is gone (or not yet set up): returned blocks are freed.
    closed: bool,
    slots: Vec<Slot>,
}

/// What a stream's frames and hooks share.
struct Shared {
    fd: Arc<OwnedFd>,
    device: String,
    buf_type: u32,
    memory: u32,
    /// Memories a buffer has.
    memories: usize,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `VIDIOC_QBUF` of slot `index`, whose memories are all home; not
    /// while another root of one of its dma-bufs is alive (`Ok(false)`:
    /// left home, tried again by the next [`Stream::next_frame`]).
    fn queue(&self, index: usize, slot: &mut Slot) -> Result<bool> {
        if slot.reached_elsewhere() {
            return Ok(false);
        }
        let mut args =
            sys::BufferArgs::new(self.buf_type, self.memory, index as u32, self.memories);
        if self.memory == sys::V4L2_MEMORY_DMABUF {
            for (p, mem) in slot.planes.iter().enumerate() {
                let mem = mem.as_ref().ok_or(Error::BadFd {
                    reason: "a plane is not home".into(),
                })?;
                let fd = dmabuf_memory_get_fd(mem).ok_or(Error::BadFd {
                    reason: "an imported memory lost its dma-buf fd".into(),
                })?;
                args.set_dmabuf(p, fd.as_raw_fd(), mem.size() as u32);
            }
        }
        sys::v4l2_qbuf(self.fd.as_fd(), &mut args).map_err(|e| Error::os("VIDIOC_QBUF", e))?;
        slot.queued = true;
        Ok(true)
    }

    /// Queue every buffer that is home and not queued: the first failure
    /// (buffer index and error), after trying them all.
    fn queue_home(&self, st: &mut State) -> Option<(usize, Error)> {
        let mut failed = None;
        for (i, slot) in st.slots.iter_mut().enumerate() {
            if slot.home() && !slot.queued {
                if let Err(e) = self.queue(i, slot) {
                    failed.get_or_insert((i, e));
                }
            }
        }
        failed
    }

    /// A plane's block came back (its last handle is gone).
    fn returned(self: &Arc<Self>, index: usize, plane: usize, freed: FreedBlock) {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            drop(freed);
            return;
        }
        let streaming = st.streaming;
        let Some(slot) = st.slots.get_mut(index) else {
            return;
        };
        let Some(&(offset, size)) = slot.regions.get(plane) else {
            return;
        };
        let back = freed.into_memory(offset, size).and_then(|mut m| {
            m.set_on_block_free(hook(self, index, plane))?;
            Ok(m)
        });
        let stale = match back {
            Ok(m) => slot.planes[plane].replace(m),
            Err(e) => {
                log::warn!("{}: buffer {index} plane {plane} is lost: {e}", self.device);
                return;
            }
        };
        if streaming && slot.home() && !slot.queued {
            // On failure the buffer stays home, unqueued: the next
            // `next_frame` tries again, and says so if it still fails.
            if let Err(e) = self.queue(index, slot) {
                log::warn!("{}: re-queueing buffer {index}: {e}", self.device);
            }
        }
        // Never dropped under the lock (its hook would take it).
        drop(st);
        drop(stale);
    }
}

/// A capture stream: its buffers, their memories, and the queue. A
/// [`Device`] has one at a time.
pub struct Stream {
    shared: Arc<Shared>,
    format: Format,
    layout: FrameLayout,
    /// Given back after `drop` has freed the queue (fields drop after
    /// `Drop::drop`).
    _claim: QueueClaim,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("device", &self.shared.device)
            .field("format", &fourcc_name(self.format.fourcc))
            .field("buffers", &self.buffer_count())
            .field("queued", &self.queued_count())
            .finish()
    }
}

impl Stream {
    fn open(
        shared: Arc<Shared>,
        slots: Vec<Slot>,
        format: Format,
        layout: FrameLayout,
        claim: QueueClaim,
    ) -> Self {
        {
            let mut st = shared.lock();
            st.slots = slots;
            st.closed = false;
        }
        Stream {
            shared,
            format,
            layout,
            _claim: claim,
        }
    }

    /// The format frames come in.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// The layout of frames the driver writes from byte 0 of each memory
    /// (a frame with a data offset has its own, [`Frame::layout`]).
    pub fn layout(&self) -> &FrameLayout {
        &self.layout
    }

    /// Buffers the driver granted.
    pub fn buffer_count(&self) -> usize {
        self.shared.lock().slots.len()
    }

    /// Buffers in the driver's queue now.
    pub fn queued_count(&self) -> usize {
        self.shared.lock().slots.iter().filter(|s| s.queued).count()
    }

    /// Buffers in user hands: some plane still has a handle there, or
    /// another root of one of its dma-bufs is alive.
    pub fn held_count(&self) -> usize {
        self.shared.lock().slots.iter().filter(|s| s.held()).count()
    }

    /// The stream is on.
    pub fn is_streaming(&self) -> bool {
        self.shared.lock().streaming
    }

    /// Queue every buffer that is home and `VIDIOC_STREAMON`.
    ///
    /// `STREAMON` runs without the stream's lock (it can be slow on real
    /// hardware), so a frame dropped meanwhile on another thread never
    /// waits for it: its buffer stays home and is queued right after.
    ///
    /// # Errors
    /// [`Error::Os`] when the driver fails `QBUF` or `STREAMON`.
    pub fn start(&mut self) -> Result<()> {
        let shared = &*self.shared;
        {
            let mut st = shared.lock();
            if st.streaming {
                return Ok(());
            }
            if let Some((_, e)) = shared.queue_home(&mut st) {
                return Err(e);
            }
        }
        sys::v4l2_stream(shared.fd.as_fd(), shared.buf_type, true)
            .map_err(|e| Error::os("VIDIOC_STREAMON", e))?;
        let mut st = shared.lock();
        st.streaming = true;
        // Those that came home during STREAMON; a failure is retried (and
        // reported) by `next_frame`.
        if let Some((i, e)) = shared.queue_home(&mut st) {
            log::warn!("{}: queueing buffer {i}: {e}", shared.device);
        }
        Ok(())
    }

    /// `VIDIOC_STREAMOFF`: the driver gives every queued buffer back.
    /// Frames still held stay valid; their buffers are kept idle when they
    /// come back, and queued again by the next [`start`](Stream::start).
    /// `STREAMOFF` runs without the stream's lock, as `STREAMON`.
    ///
    /// # Errors
    /// [`Error::Os`] when the driver fails `STREAMOFF`; the stream is then
    /// still on (the driver still has its queued buffers).
    pub fn stop(&mut self) -> Result<()> {
        let shared = &*self.shared;
        {
            let mut st = shared.lock();
            if !st.streaming {
                return Ok(());
            }
            // Off for the hooks from now: a buffer that comes back during
            // STREAMOFF stays home.
            st.streaming = false;
        }
        let r = sys::v4l2_stream(shared.fd.as_fd(), shared.buf_type, false);
        let mut st = shared.lock();
        match r {
            Ok(()) => {
                // The queue is cancelled: no buffer is the driver's.
                for slot in &mut st.slots {
                    slot.queued = false;
                }
                Ok(())
            }
            Err(e) => {
                // A failed STREAMOFF cancels nothing: the queued buffers
                // are still the driver's, and the stream still on (one
                // that came home meanwhile is queued by `next_frame`).
                st.streaming = true;
                Err(Error::os("VIDIOC_STREAMOFF", e))
            }
        }
    }

    /// Wait at most `timeout` for a frame and dequeue it. Buffers that are
    /// home but not queued (a `QBUF` in a frame's drop failed, or came
    /// while another root of their dma-buf was alive) are queued first.
    ///
    /// # Errors
    /// [`V4l2Problem::NotStreaming`] when the stream is off,
    /// [`V4l2Problem::AllBuffersHeld`] when no buffer is queued (every one
    /// is in a frame still held), [`V4l2Problem::RequeueFailed`] when none
    /// is queued because `QBUF` fails on those that are back,
    /// [`V4l2Problem::TimedOut`], [`V4l2Problem::DriverAnswer`] when the
    /// driver's data offsets put the frame past its buffer (the buffer is
    /// queued again), and [`Error::Os`] when the driver fails `DQBUF`.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Frame> {
        let shared = &*self.shared;
        let deadline = Instant::now().checked_add(timeout);
        loop {
            {
                let mut st = shared.lock();
                if !st.streaming {
                    return Err(v4l2_err(&shared.device, V4l2Problem::NotStreaming));
                }
                let failed = shared.queue_home(&mut st);
                if !st.slots.iter().any(|s| s.queued) {
                    let problem = match failed {
                        Some((index, e)) => V4l2Problem::RequeueFailed {
                            index,
                            reason: e.to_string(),
                        },
                        None => V4l2Problem::AllBuffersHeld {
                            count: st.slots.len(),
                        },
                    };
                    return Err(v4l2_err(&shared.device, problem));
                }
                if let Some((i, e)) = failed {
                    log::warn!("{}: re-queueing buffer {i}: {e}", shared.device);
                }
            }
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            let mut fds = [PollFd::new(&*shared.fd, PollFlags::IN)];
            let ts = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => {
                    return Err(v4l2_err(&shared.device, V4l2Problem::TimedOut { timeout }));
                }
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::os("poll of a V4L2 device", e)),
            }
            let mut args = sys::BufferArgs::new(shared.buf_type, shared.memory, 0, shared.memories);
            match sys::v4l2_dqbuf(shared.fd.as_fd(), &mut args) {
                Ok(info) => return self.frame(info),
                Err(Errno::AGAIN) => {
                    if left.is_zero() {
                        return Err(v4l2_err(&shared.device, V4l2Problem::TimedOut { timeout }));
                    }
                    // poll said ready but nothing was: wait a little, then
                    // poll again (an error state reports POLLERR at once).
                    std::thread::sleep(left.min(Duration::from_millis(1)));
                }
                Err(e) => return Err(Error::os("VIDIOC_DQBUF", e)),
            }
        }
    }

    fn frame(&self, info: sys::BufInfo) -> Result<Frame> {
        let memories = {
            let mut st = self.shared.lock();
            let Some(slot) = st.slots.get_mut(info.index as usize) else {
                return Err(Error::os("VIDIOC_DQBUF (unknown index)", Errno::INVAL));
            };
            if !slot.home() {
                return Err(Error::os("VIDIOC_DQBUF (buffer not home)", Errno::INVAL));
            }
            slot.queued = false;
            // Taken out whole: no memory of the stream may be dropped while
            // the state is locked (its hook takes the lock).
            slot.planes
                .iter_mut()
                .filter_map(Option::take)
                .collect::<Vec<_>>()
        };
        let sizes: Vec<usize> = memories.iter().map(Memory::size).collect();
        let data_offsets: Vec<u32> = info.planes.iter().map(|p| p.2).collect();
        let layout = match frame_layout(&self.layout, &data_offsets, &sizes) {
            Ok(layout) => layout,
            Err(reason) => {
                // The buffer goes back to the driver.
                drop(memories);
                return Err(v4l2_err(
                    &self.shared.device,
                    V4l2Problem::DriverAnswer {
                        call: "VIDIOC_DQBUF",
                        reason,
                    },
                ));
            }
        };
        let (sec, usec) = info.timestamp;
        let timestamp = if sec < 0 || usec < 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(sec as u64) + Duration::from_micros(usec as u64)
        };
        Ok(Frame {
            memories,
            layout,
            index: info.index,
            sequence: info.sequence,
            timestamp,
            flags: info.flags,
            bytes_used: clamp_bytes_used(&info, &sizes),
        })
    }
}

/// The layout of a dequeued frame: the stream's `layout`, each plane
/// moved by the data offset the driver gave its memory (multi-planar API
/// only; vivid puts 128 bytes before `NV16M`'s luma and `NV61M`'s chroma),
/// and checked against the memories' `sizes`.
fn frame_layout(
    layout: &FrameLayout,
    data_offsets: &[u32],
    sizes: &[usize],
) -> std::result::Result<FrameLayout, String> {
    if data_offsets.iter().all(|&d| d == 0) {
        return Ok(layout.clone());
    }
    let planes = layout
        .planes()
        .iter()
        .map(|p| {
            let d = data_offsets.get(p.memory as usize).copied().unwrap_or(0);
            PlaneLayout {
                offset: p.offset.saturating_add(u64::from(d)),
                ..*p
            }
        })
        .collect();
    let moved = FrameLayout::new(
        layout.fourcc,
        layout.modifier,
        layout.width,
        layout.height,
        planes,
    )
    .and_then(|l| l.check(sizes).map(|()| l))
    .map_err(|e| format!("data offsets {data_offsets:?} put the frame past its buffer: {e}"))?;
    Ok(moved)
}

/// The bytes the driver says it wrote in each memory, at most the
/// memory's size.
fn clamp_bytes_used(info: &sys::BufInfo, sizes: &[usize]) -> Vec<u32> {
    info.planes
        .iter()
        .zip(sizes)
        .map(|(p, &size)| p.0.min(u32::try_from(size).unwrap_or(u32::MAX)))
        .collect()
}

impl Drop for Stream {
    fn drop(&mut self) {
        let shared = &*self.shared;
        let (streaming, memories) = {
            let mut st = shared.lock();
            st.closed = true;
            let memories: Vec<Memory> = st
                .slots
                .drain(..)
                .flat_map(|s| s.planes.into_iter().flatten())
                .collect();
            (std::mem::replace(&mut st.streaming, false), memories)
        };
        // Outside the lock (see `start`): frames dropped meanwhile find the
        // stream closed and are freed.
        if streaming {
            let _ = sys::v4l2_stream(shared.fd.as_fd(), shared.buf_type, false);
        }
        let _ = sys::v4l2_reqbufs(shared.fd.as_fd(), shared.buf_type, shared.memory, 0);
        // Their hooks find the stream closed and free them.
        drop(memories);
        // `_claim` goes after this: the device may stream again.
    }
}

/// A captured frame: the buffer's memories (one per memory of the
/// format), its layout, sequence number and timestamp. Dropping the frame
/// and every clone or share of its memories gives the buffer back to the
/// driver.
pub struct Frame {
    memories: Vec<Memory>,
    layout: FrameLayout,
    index: u32,
    sequence: u32,
    timestamp: Duration,
    flags: u32,
    bytes_used: Vec<u32>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("index", &self.index)
            .field("sequence", &self.sequence)
            .field("timestamp", &self.timestamp)
            .field("bytes_used", &self.bytes_used)
            .finish()
    }
}

impl Frame {
    /// The memories (dma-buf memory, one per memory of the format).
    pub fn memories(&self) -> &[Memory] {
        &self.memories
    }

    /// Take the memories out of the frame (the buffer comes back when
    /// they are gone).
    pub fn into_memories(self) -> Vec<Memory> {
        self.memories
    }

    /// Where the planes lie in the memories: the stream's layout, moved
    /// by the data offsets the driver gave this frame.
    pub fn layout(&self) -> &FrameLayout {
        &self.layout
    }

    /// The driver's buffer index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The driver's sequence number.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// The driver's timestamp (`CLOCK_MONOTONIC` for most drivers).
    pub fn timestamp(&self) -> Duration {
        self.timestamp
    }

    /// Bytes the driver says it wrote in each memory (its data offset
    /// included), at most the memory's size.
    pub fn bytes_used(&self) -> &[u32] {
        &self.bytes_used
    }

    /// `V4L2_BUF_FLAG_*`.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The driver flagged the frame as damaged (`V4L2_BUF_FLAG_ERROR`).
    pub fn is_error(&self) -> bool {
        self.flags & sys::V4L2_BUF_FLAG_ERROR != 0
    }
}

/// A V4L2 capture device as `mediamem probe` reports it.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    /// The node.
    pub path: PathBuf,
    /// What it says it is.
    pub capability: Capability,
    /// Its formats (V4L2 fourcc names).
    pub formats: Vec<String>,
    /// MMAP buffers exported with `VIDIOC_EXPBUF`: `Ok` or why not.
    pub export: std::result::Result<(), String>,
    /// The queue takes DMABUF buffers: `Ok` or why not.
    pub import: std::result::Result<(), String>,
}

/// The video capture nodes among `/dev/video*`, by number: each opened,
/// its formats listed, and export (REQBUFS MMAP + EXPBUF) and DMABUF
/// import (REQBUFS DMABUF) tried on one buffer. Nodes that are not capture
/// devices (outputs, metadata, ...) are left out.
pub fn probe_devices() -> Vec<DeviceReport> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes
        .into_iter()
        .filter_map(|(_, path)| {
            let dev = Device::open(&path).ok()?;
            let formats = dev
                .formats()
                .map(|f| f.iter().map(|d| fourcc_name(d.fourcc)).collect())
                .unwrap_or_default();
            let export = dev.try_export();
            let import = dev
                .request(sys::V4L2_MEMORY_DMABUF, 1, "DMABUF import")
                .map(|_| dev.free_buffers(sys::V4L2_MEMORY_DMABUF))
                .map_err(|e| e.to_string());
            Some(DeviceReport {
                path,
                capability: dev.capability().clone(),
                formats,
                export,
                import,
            })
        })
        .collect()
}

impl Device {
    /// Whether one MMAP buffer can be exported.
    fn try_export(&self) -> std::result::Result<(), String> {
        self.request(sys::V4L2_MEMORY_MMAP, 1, "MMAP buffers")
            .map_err(|e| e.to_string())?;
        let r = sys::v4l2_expbuf(self.fd(), self.buf_type, 0, 0)
            .map(drop)
            .map_err(|e| format!("VIDIOC_EXPBUF: {e}"));
        self.free_buffers(sys::V4L2_MEMORY_MMAP);
        r
    }
}

/// Memory type of V4L2 MMAP buffers mapped through the device fd
/// ([`Device::stream_mmap`]).
pub const V4L2_MMAP_MEMORY_TYPE: &str = "V4l2MmapMemory";

/// The allocator of [`V4L2_MMAP_MEMORY_TYPE`] memory (it only wraps
/// buffers a stream made; `alloc` is not offered).
#[derive(Debug, Default)]
struct MmapAllocatorImpl;

impl AllocatorImpl for MmapAllocatorImpl {
    fn mem_type(&self) -> &str {
        V4L2_MMAP_MEMORY_TYPE
    }
    fn flags(&self) -> AllocatorFlags {
        AllocatorFlags::CUSTOM_ALLOC
    }
}

/// A plane of an MMAP buffer, mapped through the device fd at its offset
/// when made, read-write, and kept until dropped: the mapping holds the
/// driver's buffer (it stays valid after `STREAMOFF` and `REQBUFS` 0), so
/// the device fd is not kept (a held frame does not keep the device open).
struct MmapBackend {
    offset: u64,
    len: usize,
    /// The mapping's address (kept as an integer: the backend is shared
    /// between threads; the memory core synchronises access to the bytes).
    base: usize,
    mapping: FileMapping,
}

impl MmapBackend {
    fn base(&self) -> NonNull<u8> {
        NonNull::new(self.base as *mut u8).unwrap_or(NonNull::dangling())
    }
}

impl fmt::Debug for MmapBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmapBackend")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: `base` is the live MAP_SHARED read-write mapping of the whole
// plane (`len` bytes the driver allocated), made when the memory was made
// and unmapped only when the backend drops; every map returns it.
unsafe impl MemoryBackend for MmapBackend {
    fn map(&self, _maxsize: usize, _flags: MapFlags) -> Result<NonNull<u8>> {
        Ok(self.base())
    }

    fn static_ptr(&self) -> Option<NonNull<u8>> {
        Some(self.base())
    }
}

impl Drop for MmapBackend {
    fn drop(&mut self) {
        self.mapping.unmap_all();
    }
}

fn mmap_failed(f: &MapFailure, offset: u64) -> Error {
    Error::MapFailed {
        mem_type: V4L2_MMAP_MEMORY_TYPE.into(),
        reason: format!("{f} (offset {offset:#x})"),
        errno: f.errno(),
    }
}

/// `len` bytes of the device's MMAP buffer at `offset`, as memory.
fn mmap_memory(fd: BorrowedFd<'_>, offset: u32, len: usize) -> Result<Memory> {
    static ALLOCATOR: std::sync::OnceLock<Allocator> = std::sync::OnceLock::new();
    let allocator = ALLOCATOR.get_or_init(|| Allocator::new(MmapAllocatorImpl));
    let offset = u64::from(offset);
    let mapping = FileMapping::new(MapOptions {
        len,
        private: false,
        keep: true,
        upgrade: Upgrade::Add,
        huge_page: None,
        guard_sigbus: false,
    })
    .map_err(|e| Error::os("V4L2 MMAP buffer size", e))?;
    // Mapped now and kept: once the queue is freed (REQBUFS 0, the stream
    // dropped) the offset maps nothing any more, but a live mapping keeps
    // the driver's buffer, so a frame held past its stream stays readable.
    let base = mapping
        .map(fd, offset, ProtFlags::READ | ProtFlags::WRITE)
        .inspect(|_| {
            // Kept: only the count goes back, the mapping stays.
            let _ = mapping.unmap();
        })
        .map_err(|f| mmap_failed(&f, offset))?;
    let backend = MmapBackend {
        offset,
        len,
        base: base.as_ptr() as usize,
        mapping,
    };
    Memory::from_parts(allocator, MemoryParts::new(Box::new(backend), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(code: &[u8; 4], w: u32, h: u32, planes: &[(u32, u32)]) -> Format {
        Format {
            fourcc: v4l2_fourcc(*code),
            width: w,
            height: h,
            field: 1,
            planes: planes
                .iter()
                .map(|&(bytes_per_line, size_image)| PlaneFormat {
                    bytes_per_line,
                    size_image,
                })
                .collect(),
            multiplanar: false,
        }
    }

    #[test]
    fn layouts_follow_the_drivers_strides() {
        // NV12 with rows padded to 704 bytes: chroma follows the padded luma.
        let l = format(b"NV12", 640, 480, &[(704, 704 * 720)])
            .layout()
            .unwrap();
        assert_eq!(l.fourcc, fourcc(*b"NV12"));
        assert_eq!(l.planes()[0].stride, 704);
        assert_eq!(l.planes()[1].offset, 704 * 480);
        assert_eq!(l.planes()[1].stride, 704);
        // Three planes: chroma strides are half the luma's.
        let l = format(b"YU12", 640, 480, &[(640, 640 * 720)])
            .layout()
            .unwrap();
        assert_eq!(l.planes()[1].stride, 320);
        assert_eq!(l.planes()[2].offset, 640 * 480 + 320 * 240);
        // Two memories: one plane each, from offset 0.
        let l = format(b"NM12", 64, 32, &[(64, 64 * 32), (64, 64 * 16)])
            .layout()
            .unwrap();
        assert_eq!(l.fourcc, fourcc(*b"NV12"));
        assert_eq!((l.planes()[1].memory, l.planes()[1].offset), (1, 0));
        let l = format(b"YUYV", 320, 180, &[(640, 640 * 180)])
            .layout()
            .unwrap();
        assert_eq!(l.planes().len(), 1);
        assert_eq!(l.fourcc, fourcc(*b"YUYV"));
    }

    #[test]
    fn layouts_refuse_what_does_not_fit() {
        let refused = |f: Format| {
            matches!(
                f.layout(),
                Err(Error::V4l2 {
                    problem: V4l2Problem::UnsupportedFormat { .. },
                    ..
                })
            )
        };
        // A format without a layout, the driver's size one byte short, a
        // memory count that is not the format's, no planes at all.
        assert!(refused(format(b"MJPG", 64, 64, &[(0, 4096)])));
        assert!(refused(format(b"NV12", 64, 64, &[(64, 64 * 96 - 1)])));
        assert!(refused(format(b"NM12", 64, 64, &[(64, 64 * 96)])));
        assert!(refused(format(b"NV12", 64, 64, &[(64, 4096), (64, 4096)])));
        assert!(refused(format(b"NV12", 64, 64, &[])));
        // A stride shorter than a row.
        assert!(refused(format(b"YUYV", 64, 64, &[(64, 64 * 64)])));
    }

    #[test]
    fn layouts_of_huge_formats_overflow_into_an_error() {
        // Format is plain data: strides and offsets past u64 are refused,
        // never a panic (debug) or a wrapped layout (release).
        let overflow = |f: Format| {
            let r = f.layout();
            assert!(matches!(r, Err(Error::SizeOverflow { .. })), "{f:?}: {r:?}");
        };
        // bytes_per_line × a 16 GiB row (XR24, u32::MAX pixels wide).
        overflow(format(b"XR24", u32::MAX, 2, &[(u32::MAX, u32::MAX)]));
        // The second plane's offset: u32::MAX rows of u32::MAX bytes, then
        // half as many again.
        overflow(format(b"NV12", 64, u32::MAX, &[(u32::MAX, u32::MAX)]));
        overflow(format(b"YU12", 64, u32::MAX, &[(u32::MAX, u32::MAX)]));
    }

    fn buf_info(planes: &[(u32, u32, u32)]) -> sys::BufInfo {
        sys::BufInfo {
            planes: planes.iter().map(|&(u, l, d)| (u, l, d, 0)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_drivers_buffers_are_checked_against_the_format() {
        // A driver granting absurd counts is refused, not trusted as a
        // length; the usual "more than asked" is fine.
        assert!(check_granted(4, 4).is_ok());
        assert!(check_granted(2, 3).is_ok());
        assert!(check_granted(4, MAX_GRANTED).is_ok());
        assert!(check_granted(4, MAX_GRANTED + 1).is_err());
        assert!(check_granted(4, u32::MAX).is_err());
        let nm12 = format(b"NM12", 64, 32, &[(64, 64 * 32), (64, 64 * 16)]);
        assert!(check_buffer(0, &buf_info(&[(0, 2048, 0), (0, 1024, 0)]), &nm12).is_ok());
        // Zero-length, one byte short, a plane missing, one too many.
        for planes in [
            &[(0, 0, 0), (0, 1024, 0)][..],
            &[(0, 2048, 0), (0, 1023, 0)],
            &[(0, 2048, 0)],
            &[(0, 2048, 0), (0, 1024, 0), (0, 1024, 0)],
        ] {
            let e = check_buffer(3, &buf_info(planes), &nm12).unwrap_err();
            assert!(e.contains("buffer 3"), "{e}");
        }
    }

    #[test]
    fn data_offsets_move_the_frames_planes() {
        // NV16M as vivid sends it: 128 bytes before the luma.
        let f = format(b"NM16", 64, 32, &[(64, 64 * 32 + 128), (64, 64 * 32)]);
        let layout = f.layout().unwrap();
        let sizes = [64 * 32 + 128, 64 * 32];
        let moved = frame_layout(&layout, &[128, 0], &sizes).unwrap();
        assert_eq!(moved.planes()[0].offset, 128);
        assert_eq!(moved.planes()[1].offset, 0);
        assert_eq!(frame_layout(&layout, &[0, 0], &sizes).unwrap(), layout);
        // One byte too far: the frame would end past its memory.
        assert!(frame_layout(&layout, &[129, 0], &sizes).is_err());
        assert!(frame_layout(&layout, &[0, u32::MAX], &sizes).is_err());
        // NV12 in one memory: both planes move with it.
        let f = format(b"NV12", 64, 32, &[(64, 64 * 48 + 256)]);
        let moved = frame_layout(&f.layout().unwrap(), &[256], &[64 * 48 + 256]).unwrap();
        assert_eq!(
            (moved.planes()[0].offset, moved.planes()[1].offset),
            (256, 256 + 64 * 32)
        );
        // bytesused past the memory is clamped to it.
        assert_eq!(
            clamp_bytes_used(&buf_info(&[(5000, 9000, 0), (100, 4096, 0)]), &[4096, 4096]),
            vec![4096, 100]
        );
    }

    #[test]
    fn another_root_of_the_same_file_is_seen() {
        use crate::fd::FdAllocator;
        let fd = rustix::fs::memfd_create("v4l2-alias", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        let fds = FdAllocator::new();
        let dup = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let mem = fds.alloc(fd, 4096, FdMemoryFlags::empty()).unwrap();
        assert!(!other_roots(&mem), "a lone root");
        let clone = mem.clone();
        assert!(!other_roots(&mem), "a clone is the same root");
        let second = fds.alloc(dup, 4096, FdMemoryFlags::empty()).unwrap();
        assert!(other_roots(&mem) && other_roots(&second));
        drop(second);
        assert!(!other_roots(&mem), "the second root is gone");
        drop(clone);
        // Memory without an alias (system memory) has no other root.
        assert!(!other_roots(&Memory::with_size(64).unwrap()));
    }

    #[test]
    fn v4l2_and_drm_fourccs() {
        assert_eq!(
            drm_format(v4l2_fourcc(*b"NM12")),
            Some((fourcc(*b"NV12"), true))
        );
        assert_eq!(
            drm_format(v4l2_fourcc(*b"GREY")),
            Some((fourcc(*b"R8  "), false))
        );
        assert_eq!(drm_format(v4l2_fourcc(*b"MJPG")), None);
        for (v, d, _) in FORMATS {
            assert!(
                plane_extents(fourcc(*d), 2, 2).is_ok(),
                "{} maps to {}, which has no extents",
                fourcc_name(fourcc(*v)),
                fourcc_name(fourcc(*d))
            );
        }
    }

    #[test]
    fn capabilities_pick_the_api() {
        let caps = |device_caps: u32| Capability {
            driver: String::new(),
            card: String::new(),
            bus_info: String::new(),
            version: 0,
            capabilities: device_caps | sys::V4L2_CAP_DEVICE_CAPS,
            device_caps,
        };
        let single = caps(sys::V4L2_CAP_VIDEO_CAPTURE | sys::V4L2_CAP_STREAMING);
        assert!(single.is_capture() && !single.is_multiplanar() && single.has_streaming());
        let multi = caps(sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE);
        assert!(multi.is_capture() && multi.is_multiplanar() && !multi.has_streaming());
        let out = caps(sys::V4L2_CAP_VIDEO_OUTPUT | sys::V4L2_CAP_STREAMING);
        assert!(!out.is_capture() && out.is_output());
        // A driver without per-node caps: the device's are used.
        let raw = sys::V4l2Capability {
            capabilities: sys::V4L2_CAP_VIDEO_CAPTURE,
            device_caps: 0,
            ..Default::default()
        };
        assert!(Capability::from_raw(&raw).is_capture());
    }
}
