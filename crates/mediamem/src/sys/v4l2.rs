//! V4L2 (linux/videodev2.h): capabilities, formats, controls, frame
//! intervals, buffer queues (MMAP and DMABUF), dma-buf export, streaming.
//!
//! The structs are the kernel's, field for field; their sizes and the
//! request numbers made from them are pinned by the tests in `sys`. The
//! buffer requests go through [`BufferArgs`], which owns the plane array a
//! multi-planar `v4l2_buffer` points to, so the pointer is set here, right
//! before the ioctl, and never outlives the call.

use std::ffi::{c_long, c_ulong};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::ioctl::{opcode, Getter, Opcode, Setter, Updater};

use super::ioctl_rw;

/// `VIDEO_MAX_PLANES`.
pub(crate) const VIDEO_MAX_PLANES: usize = 8;

/// `V4L2_CAP_VIDEO_CAPTURE`.
pub(crate) const V4L2_CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
/// `V4L2_CAP_VIDEO_OUTPUT`.
pub(crate) const V4L2_CAP_VIDEO_OUTPUT: u32 = 0x0000_0002;
/// `V4L2_CAP_VIDEO_CAPTURE_MPLANE`.
pub(crate) const V4L2_CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
/// `V4L2_CAP_VIDEO_OUTPUT_MPLANE`.
pub(crate) const V4L2_CAP_VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
/// `V4L2_CAP_STREAMING`.
pub(crate) const V4L2_CAP_STREAMING: u32 = 0x0400_0000;
/// `V4L2_CAP_DEVICE_CAPS`: `device_caps` is filled in.
pub(crate) const V4L2_CAP_DEVICE_CAPS: u32 = 0x8000_0000;

/// `V4L2_BUF_TYPE_VIDEO_CAPTURE`.
pub(crate) const V4L2_BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
/// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`.
pub(crate) const V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE: u32 = 9;

/// `V4L2_MEMORY_MMAP`.
pub(crate) const V4L2_MEMORY_MMAP: u32 = 1;
/// `V4L2_MEMORY_DMABUF`.
pub(crate) const V4L2_MEMORY_DMABUF: u32 = 4;

/// `V4L2_BUF_CAP_SUPPORTS_MMAP`.
pub(crate) const V4L2_BUF_CAP_SUPPORTS_MMAP: u32 = 1 << 0;
/// `V4L2_BUF_CAP_SUPPORTS_DMABUF`.
pub(crate) const V4L2_BUF_CAP_SUPPORTS_DMABUF: u32 = 1 << 2;

/// `V4L2_BUF_FLAG_ERROR`.
pub(crate) const V4L2_BUF_FLAG_ERROR: u32 = 0x0000_0040;

/// `V4L2_FIELD_ANY`.
pub(crate) const V4L2_FIELD_ANY: u32 = 0;

/// `struct v4l2_capability`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2Capability {
    pub(crate) driver: [u8; 16],
    pub(crate) card: [u8; 32],
    pub(crate) bus_info: [u8; 32],
    pub(crate) version: u32,
    pub(crate) capabilities: u32,
    pub(crate) device_caps: u32,
    pub(crate) reserved: [u32; 3],
}

/// `struct v4l2_fmtdesc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2Fmtdesc {
    pub(crate) index: u32,
    pub(crate) type_: u32,
    pub(crate) flags: u32,
    pub(crate) description: [u8; 32],
    pub(crate) pixelformat: u32,
    pub(crate) mbus_code: u32,
    pub(crate) reserved: [u32; 3],
}

/// `struct v4l2_pix_format` (single-planar).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2PixFormat {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixelformat: u32,
    pub(crate) field: u32,
    pub(crate) bytesperline: u32,
    pub(crate) sizeimage: u32,
    pub(crate) colorspace: u32,
    pub(crate) priv_: u32,
    pub(crate) flags: u32,
    pub(crate) ycbcr_enc: u32,
    pub(crate) quantization: u32,
    pub(crate) xfer_func: u32,
}

/// `struct v4l2_plane_pix_format`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2PlanePixFormat {
    pub(crate) sizeimage: u32,
    pub(crate) bytesperline: u32,
    pub(crate) reserved: [u16; 6],
}

/// `struct v4l2_pix_format_mplane` (the kernel's is packed; this layout
/// has no padding, so it is the same).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2PixFormatMplane {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixelformat: u32,
    pub(crate) field: u32,
    pub(crate) colorspace: u32,
    pub(crate) plane_fmt: [V4l2PlanePixFormat; VIDEO_MAX_PLANES],
    pub(crate) num_planes: u8,
    pub(crate) flags: u8,
    pub(crate) ycbcr_enc: u8,
    pub(crate) quantization: u8,
    pub(crate) xfer_func: u8,
    pub(crate) reserved: [u8; 7],
}

/// The union `fmt` of `struct v4l2_format`: 200 bytes, pointer-aligned
/// (its `v4l2_window` member holds pointers).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union V4l2FormatUnion {
    pub(crate) pix: V4l2PixFormat,
    pub(crate) pix_mp: V4l2PixFormatMplane,
    pub(crate) raw_data: [u8; 200],
    _align: [usize; 0],
}

/// `struct v4l2_format`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct V4l2Format {
    pub(crate) type_: u32,
    pub(crate) fmt: V4l2FormatUnion,
}

/// A plane of a format, single- or multi-planar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PlaneFmt {
    pub(crate) bytesperline: u32,
    pub(crate) sizeimage: u32,
}

/// What a `v4l2_format` of a video capture type says, read out of the
/// union.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PixFormat {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixelformat: u32,
    pub(crate) field: u32,
    /// One plane for single-planar formats, `num_planes` for multi-planar.
    pub(crate) planes: Vec<PlaneFmt>,
}

impl V4l2Format {
    /// A format request of `type_` (capture or capture-mplane) for a
    /// `width`×`height` image in `pixelformat`.
    pub(crate) fn new(type_: u32, pixelformat: u32, width: u32, height: u32) -> Self {
        let mut f = V4l2Format {
            type_,
            fmt: V4l2FormatUnion { raw_data: [0; 200] },
        };
        if type_ == V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE {
            f.fmt.pix_mp = V4l2PixFormatMplane {
                width,
                height,
                pixelformat,
                field: V4L2_FIELD_ANY,
                ..Default::default()
            };
        } else {
            f.fmt.pix = V4l2PixFormat {
                width,
                height,
                pixelformat,
                field: V4L2_FIELD_ANY,
                ..Default::default()
            };
        }
        f
    }

    /// The format read back, by its type.
    pub(crate) fn read(&self) -> PixFormat {
        if self.type_ == V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE {
            // SAFETY: the kernel filled the `pix_mp` member for this type
            // (and every bit pattern is a valid `V4l2PixFormatMplane`).
            let p = unsafe { self.fmt.pix_mp };
            let n = usize::from(p.num_planes).min(VIDEO_MAX_PLANES);
            PixFormat {
                width: p.width,
                height: p.height,
                pixelformat: p.pixelformat,
                field: p.field,
                planes: p.plane_fmt[..n]
                    .iter()
                    .map(|q| PlaneFmt {
                        bytesperline: q.bytesperline,
                        sizeimage: q.sizeimage,
                    })
                    .collect(),
            }
        } else {
            // SAFETY: the `pix` member for the single-planar type (every
            // bit pattern is a valid `V4l2PixFormat`).
            let p = unsafe { self.fmt.pix };
            PixFormat {
                width: p.width,
                height: p.height,
                pixelformat: p.pixelformat,
                field: p.field,
                planes: vec![PlaneFmt {
                    bytesperline: p.bytesperline,
                    sizeimage: p.sizeimage,
                }],
            }
        }
    }
}

/// `struct v4l2_requestbuffers`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2RequestBuffers {
    pub(crate) count: u32,
    pub(crate) type_: u32,
    pub(crate) memory: u32,
    pub(crate) capabilities: u32,
    pub(crate) flags: u8,
    pub(crate) reserved: [u8; 3],
}

/// `struct timeval` as `v4l2_buffer` has it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timeval {
    pub(crate) tv_sec: c_long,
    pub(crate) tv_usec: c_long,
}

/// `struct v4l2_timecode`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2Timecode {
    pub(crate) type_: u32,
    pub(crate) flags: u32,
    pub(crate) frames: u8,
    pub(crate) seconds: u8,
    pub(crate) minutes: u8,
    pub(crate) hours: u8,
    pub(crate) userbits: [u8; 4],
}

/// The union `m` of `struct v4l2_plane`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union V4l2PlaneM {
    pub(crate) mem_offset: u32,
    pub(crate) userptr: c_ulong,
    pub(crate) fd: i32,
}

/// `struct v4l2_plane`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct V4l2Plane {
    pub(crate) bytesused: u32,
    pub(crate) length: u32,
    pub(crate) m: V4l2PlaneM,
    pub(crate) data_offset: u32,
    pub(crate) reserved: [u32; 11],
}

impl Default for V4l2Plane {
    fn default() -> Self {
        V4l2Plane {
            bytesused: 0,
            length: 0,
            m: V4l2PlaneM { userptr: 0 },
            data_offset: 0,
            reserved: [0; 11],
        }
    }
}

/// The union `m` of `struct v4l2_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union V4l2BufferM {
    pub(crate) offset: u32,
    pub(crate) userptr: c_ulong,
    pub(crate) planes: *mut V4l2Plane,
    pub(crate) fd: i32,
}

/// `struct v4l2_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct V4l2Buffer {
    pub(crate) index: u32,
    pub(crate) type_: u32,
    pub(crate) bytesused: u32,
    pub(crate) flags: u32,
    pub(crate) field: u32,
    pub(crate) timestamp: Timeval,
    pub(crate) timecode: V4l2Timecode,
    pub(crate) sequence: u32,
    pub(crate) memory: u32,
    pub(crate) m: V4l2BufferM,
    pub(crate) length: u32,
    pub(crate) reserved2: u32,
    pub(crate) request_fd: i32,
}

/// `struct v4l2_exportbuffer`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2ExportBuffer {
    pub(crate) type_: u32,
    pub(crate) index: u32,
    pub(crate) plane: u32,
    pub(crate) flags: u32,
    pub(crate) fd: i32,
    pub(crate) reserved: [u32; 11],
}

/// `struct v4l2_control`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2Control {
    pub(crate) id: u32,
    pub(crate) value: i32,
}

/// `struct v4l2_fract`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2Fract {
    pub(crate) numerator: u32,
    pub(crate) denominator: u32,
}

/// `struct v4l2_captureparm`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V4l2CaptureParm {
    pub(crate) capability: u32,
    pub(crate) capturemode: u32,
    pub(crate) timeperframe: V4l2Fract,
    pub(crate) extendedmode: u32,
    pub(crate) readbuffers: u32,
    pub(crate) reserved: [u32; 4],
}

/// The union `parm` of `struct v4l2_streamparm`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union V4l2StreamParmUnion {
    pub(crate) capture: V4l2CaptureParm,
    pub(crate) raw_data: [u8; 200],
}

/// `struct v4l2_streamparm`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct V4l2StreamParm {
    pub(crate) type_: u32,
    pub(crate) parm: V4l2StreamParmUnion,
}

/// `VIDIOC_QUERYCAP = _IOR('V', 0, struct v4l2_capability)`.
pub(crate) const VIDIOC_QUERYCAP: Opcode = opcode::read::<V4l2Capability>(b'V', 0);
/// `VIDIOC_ENUM_FMT = _IOWR('V', 2, struct v4l2_fmtdesc)`.
pub(crate) const VIDIOC_ENUM_FMT: Opcode = opcode::read_write::<V4l2Fmtdesc>(b'V', 2);
/// `VIDIOC_G_FMT = _IOWR('V', 4, struct v4l2_format)`.
pub(crate) const VIDIOC_G_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 4);
/// `VIDIOC_S_FMT = _IOWR('V', 5, struct v4l2_format)`.
pub(crate) const VIDIOC_S_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 5);
/// `VIDIOC_REQBUFS = _IOWR('V', 8, struct v4l2_requestbuffers)`.
pub(crate) const VIDIOC_REQBUFS: Opcode = opcode::read_write::<V4l2RequestBuffers>(b'V', 8);
/// `VIDIOC_QUERYBUF = _IOWR('V', 9, struct v4l2_buffer)`.
pub(crate) const VIDIOC_QUERYBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 9);
/// `VIDIOC_QBUF = _IOWR('V', 15, struct v4l2_buffer)`.
pub(crate) const VIDIOC_QBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 15);
/// `VIDIOC_EXPBUF = _IOWR('V', 16, struct v4l2_exportbuffer)`.
pub(crate) const VIDIOC_EXPBUF: Opcode = opcode::read_write::<V4l2ExportBuffer>(b'V', 16);
/// `VIDIOC_DQBUF = _IOWR('V', 17, struct v4l2_buffer)`.
pub(crate) const VIDIOC_DQBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 17);
/// `VIDIOC_STREAMON = _IOW('V', 18, int)`.
pub(crate) const VIDIOC_STREAMON: Opcode = opcode::write::<i32>(b'V', 18);
/// `VIDIOC_STREAMOFF = _IOW('V', 19, int)`.
pub(crate) const VIDIOC_STREAMOFF: Opcode = opcode::write::<i32>(b'V', 19);
/// `VIDIOC_S_PARM = _IOWR('V', 22, struct v4l2_streamparm)`.
pub(crate) const VIDIOC_S_PARM: Opcode = opcode::read_write::<V4l2StreamParm>(b'V', 22);
/// `VIDIOC_G_CTRL = _IOWR('V', 27, struct v4l2_control)`.
pub(crate) const VIDIOC_G_CTRL: Opcode = opcode::read_write::<V4l2Control>(b'V', 27);
/// `VIDIOC_S_CTRL = _IOWR('V', 28, struct v4l2_control)`.
pub(crate) const VIDIOC_S_CTRL: Opcode = opcode::read_write::<V4l2Control>(b'V', 28);

/// `VIDIOC_QUERYCAP`: fails (ENOTTY) on anything that is not a V4L2 node.
pub(crate) fn v4l2_querycap(fd: BorrowedFd<'_>) -> Result<V4l2Capability, Errno> {
    super::retry(|| {
        // SAFETY: QUERYCAP writes one v4l2_capability (no pointers).
        let getter = unsafe { Getter::<VIDIOC_QUERYCAP, V4l2Capability>::new() };
        // SAFETY: request and argument type match.
        unsafe { rustix::ioctl::ioctl(fd, getter) }
    })
}

/// `VIDIOC_ENUM_FMT`: format `index` of buffer type `type_`; EINVAL past
/// the last.
pub(crate) fn v4l2_enum_fmt(
    fd: BorrowedFd<'_>,
    type_: u32,
    index: u32,
) -> Result<V4l2Fmtdesc, Errno> {
    let mut desc = V4l2Fmtdesc {
        index,
        type_,
        ..Default::default()
    };
    // SAFETY: ENUM_FMT takes a v4l2_fmtdesc (no pointers).
    unsafe { ioctl_rw::<VIDIOC_ENUM_FMT, _>(fd, &mut desc)? };
    Ok(desc)
}

/// `VIDIOC_G_FMT`.
pub(crate) fn v4l2_g_fmt(fd: BorrowedFd<'_>, type_: u32) -> Result<V4l2Format, Errno> {
    let mut f = V4l2Format::new(type_, 0, 0, 0);
    // SAFETY: G_FMT takes a v4l2_format; no member the kernel reads for a
    // video capture type holds a pointer.
    unsafe { ioctl_rw::<VIDIOC_G_FMT, _>(fd, &mut f)? };
    Ok(f)
}

/// `VIDIOC_S_FMT`: the driver adjusts `f` to what it will do.
pub(crate) fn v4l2_s_fmt(fd: BorrowedFd<'_>, f: &mut V4l2Format) -> Result<(), Errno> {
    // SAFETY: S_FMT takes a v4l2_format; video capture formats hold no
    // pointers.
    unsafe { ioctl_rw::<VIDIOC_S_FMT, _>(fd, f) }
}

/// `VIDIOC_REQBUFS`: `count` buffers of `memory` (0 frees them). Returns
/// the count granted and the queue's capability bits.
pub(crate) fn v4l2_reqbufs(
    fd: BorrowedFd<'_>,
    type_: u32,
    memory: u32,
    count: u32,
) -> Result<(u32, u32), Errno> {
    let mut req = V4l2RequestBuffers {
        count,
        type_,
        memory,
        ..Default::default()
    };
    // SAFETY: REQBUFS takes a v4l2_requestbuffers (no pointers).
    unsafe { ioctl_rw::<VIDIOC_REQBUFS, _>(fd, &mut req)? };
    Ok((req.count, req.capabilities))
}

/// A `v4l2_buffer` with the plane array it points to when multi-planar.
pub(crate) struct BufferArgs {
    buf: V4l2Buffer,
    planes: [V4l2Plane; VIDEO_MAX_PLANES],
    num_planes: usize,
}

/// A buffer as the kernel returned it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct BufInfo {
    pub(crate) index: u32,
    pub(crate) flags: u32,
    pub(crate) field: u32,
    pub(crate) sequence: u32,
    /// `(seconds, microseconds)`.
    pub(crate) timestamp: (i64, i64),
    /// `(bytesused, length, data_offset, mem_offset)` of each plane
    /// (`mem_offset`: where to `mmap` an MMAP buffer's plane on the
    /// device fd).
    pub(crate) planes: Vec<(u32, u32, u32, u32)>,
}

impl BufferArgs {
    /// Buffer `index` of `type_`/`memory`, with `num_planes` planes when
    /// the type is multi-planar (at most [`VIDEO_MAX_PLANES`]).
    pub(crate) fn new(type_: u32, memory: u32, index: u32, num_planes: usize) -> Self {
        BufferArgs {
            buf: V4l2Buffer {
                index,
                type_,
                bytesused: 0,
                flags: 0,
                field: 0,
                timestamp: Timeval::default(),
                timecode: V4l2Timecode::default(),
                sequence: 0,
                memory,
                m: V4l2BufferM { userptr: 0 },
                length: 0,
                reserved2: 0,
                request_fd: 0,
            },
            planes: [V4l2Plane::default(); VIDEO_MAX_PLANES],
            num_planes: num_planes.clamp(1, VIDEO_MAX_PLANES),
        }
    }

    fn mplane(&self) -> bool {
        self.buf.type_ == V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE
    }

    /// Give plane `plane` the dma-buf `fd` of `length` bytes (DMABUF
    /// import).
    pub(crate) fn set_dmabuf(&mut self, plane: usize, fd: i32, length: u32) {
        if self.mplane() {
            if let Some(p) = self.planes.get_mut(plane) {
                p.m = V4l2PlaneM { fd };
                p.length = length;
            }
        } else if plane == 0 {
            self.buf.m = V4l2BufferM { fd };
            self.buf.length = length;
        }
    }

    /// Issue `OPCODE` (QUERYBUF, QBUF or DQBUF) with the plane pointer set
    /// for this call, retrying only on EINTR (EAGAIN is DQBUF's "nothing
    /// ready" on a non-blocking fd and goes back to the caller).
    fn issue<const OPCODE: Opcode>(&mut self, fd: BorrowedFd<'_>) -> Result<BufInfo, Errno> {
        if self.mplane() {
            self.buf.m = V4l2BufferM {
                planes: self.planes.as_mut_ptr(),
            };
            self.buf.length = self.num_planes as u32;
        }
        loop {
            // SAFETY: these requests take a v4l2_buffer; for a
            // multi-planar type `m.planes` points at `self.planes`, which
            // has `length` (≤ VIDEO_MAX_PLANES) entries and lives across
            // the call; the kernel keeps no pointer after it.
            let updater = unsafe { Updater::<OPCODE, V4l2Buffer>::new(&mut self.buf) };
            // SAFETY: as above.
            match unsafe { rustix::ioctl::ioctl(fd, updater) } {
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        Ok(self.info())
    }

    // `c_long` is `i64` here, `i32` on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    fn info(&self) -> BufInfo {
        let planes = if self.mplane() {
            let n = (self.buf.length as usize).min(VIDEO_MAX_PLANES);
            self.planes[..n]
                .iter()
                .map(|p| {
                    // SAFETY: a union of integers (and for the buffer, a
                    // pointer): every bit pattern is a valid u32.
                    let mem_offset = unsafe { p.m.mem_offset };
                    (p.bytesused, p.length, p.data_offset, mem_offset)
                })
                .collect()
        } else {
            // SAFETY: as above.
            let offset = unsafe { self.buf.m.offset };
            vec![(self.buf.bytesused, self.buf.length, 0, offset)]
        };
        BufInfo {
            index: self.buf.index,
            flags: self.buf.flags,
            field: self.buf.field,
            sequence: self.buf.sequence,
            timestamp: (
                i64::from(self.buf.timestamp.tv_sec),
                i64::from(self.buf.timestamp.tv_usec),
            ),
            planes,
        }
    }
}

/// `VIDIOC_QUERYBUF`.
pub(crate) fn v4l2_querybuf(fd: BorrowedFd<'_>, args: &mut BufferArgs) -> Result<BufInfo, Errno> {
    args.issue::<VIDIOC_QUERYBUF>(fd)
}

/// `VIDIOC_QBUF`.
pub(crate) fn v4l2_qbuf(fd: BorrowedFd<'_>, args: &mut BufferArgs) -> Result<BufInfo, Errno> {
    args.issue::<VIDIOC_QBUF>(fd)
}

/// `VIDIOC_DQBUF` (EAGAIN when nothing is ready on a non-blocking fd).
pub(crate) fn v4l2_dqbuf(fd: BorrowedFd<'_>, args: &mut BufferArgs) -> Result<BufInfo, Errno> {
    args.issue::<VIDIOC_DQBUF>(fd)
}

/// `VIDIOC_EXPBUF` with `O_CLOEXEC | O_RDWR`: a dma-buf of plane `plane`
/// of MMAP buffer `index`, owned by the caller.
pub(crate) fn v4l2_expbuf(
    fd: BorrowedFd<'_>,
    type_: u32,
    index: u32,
    plane: u32,
) -> Result<OwnedFd, Errno> {
    let mut req = V4l2ExportBuffer {
        type_,
        index,
        plane,
        flags: 0o2000000 | 0o2, // O_CLOEXEC | O_RDWR
        fd: -1,
        ..Default::default()
    };
    // SAFETY: EXPBUF takes a v4l2_exportbuffer (no pointers).
    unsafe { ioctl_rw::<VIDIOC_EXPBUF, _>(fd, &mut req)? };
    if req.fd < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(req.fd) })
}

/// `VIDIOC_STREAMON` (`on`) or `VIDIOC_STREAMOFF` of buffer type `type_`.
pub(crate) fn v4l2_stream(fd: BorrowedFd<'_>, type_: u32, on: bool) -> Result<(), Errno> {
    let arg = type_ as i32;
    super::retry(|| {
        if on {
            // SAFETY: STREAMON reads one int.
            let setter = unsafe { Setter::<VIDIOC_STREAMON, i32>::new(arg) };
            // SAFETY: request and argument type match.
            unsafe { rustix::ioctl::ioctl(fd, setter) }
        } else {
            // SAFETY: STREAMOFF reads one int.
            let setter = unsafe { Setter::<VIDIOC_STREAMOFF, i32>::new(arg) };
            // SAFETY: request and argument type match.
            unsafe { rustix::ioctl::ioctl(fd, setter) }
        }
    })
}

/// `VIDIOC_S_CTRL`: returns the value the driver took.
pub(crate) fn v4l2_s_ctrl(fd: BorrowedFd<'_>, id: u32, value: i32) -> Result<i32, Errno> {
    let mut c = V4l2Control { id, value };
    // SAFETY: S_CTRL takes a v4l2_control (no pointers).
    unsafe { ioctl_rw::<VIDIOC_S_CTRL, _>(fd, &mut c)? };
    Ok(c.value)
}

/// `VIDIOC_G_CTRL`.
pub(crate) fn v4l2_g_ctrl(fd: BorrowedFd<'_>, id: u32) -> Result<i32, Errno> {
    let mut c = V4l2Control { id, value: 0 };
    // SAFETY: G_CTRL takes a v4l2_control (no pointers).
    unsafe { ioctl_rw::<VIDIOC_G_CTRL, _>(fd, &mut c)? };
    Ok(c.value)
}

/// `VIDIOC_S_PARM` of a capture type: ask for `numerator/denominator`
/// seconds a frame; returns the interval the driver chose.
pub(crate) fn v4l2_s_frame_interval(
    fd: BorrowedFd<'_>,
    type_: u32,
    numerator: u32,
    denominator: u32,
) -> Result<(u32, u32), Errno> {
    let mut p = V4l2StreamParm {
        type_,
        parm: V4l2StreamParmUnion { raw_data: [0; 200] },
    };
    p.parm.capture = V4l2CaptureParm {
        timeperframe: V4l2Fract {
            numerator,
            denominator,
        },
        ..Default::default()
    };
    // SAFETY: S_PARM takes a v4l2_streamparm (no pointers).
    unsafe { ioctl_rw::<VIDIOC_S_PARM, _>(fd, &mut p)? };
    // SAFETY: the kernel filled the `capture` member for a capture type;
    // every bit pattern is a valid V4l2CaptureParm.
    let t = unsafe { p.parm.capture.timeperframe };
    Ok((t.numerator, t.denominator))
}
