//! [`FrameLayout`]: where the planes of a video frame lie in its memories.
//!
//! A layout names the pixel format by its DRM fourcc (from the table in
//! [`drm`](crate::drm): an unknown fourcc is refused), the format modifier,
//! the image size, and for each plane the memory that holds it, the offset
//! of its first row in that memory's visible bytes, and its stride.
//! [`FrameLayout::check`] verifies it against the memories' sizes: the
//! plane count is the format's, every stride covers a row of the width,
//! and every plane, last row included, lies inside its memory. The IPC
//! receiver checks every layout it receives this way, so a consumer can
//! index planes without bounds surprises.
//!
//! Rows are taken as `stride` bytes apart whatever the modifier; for tiled
//! modifiers that is a lower bound of what a device needs.
//!
//! ```
//! use mediamem::drm::fourcc;
//! use mediamem::layout::FrameLayout;
//!
//! // 1920x1080 NV12 in one memory: luma, then interleaved chroma.
//! let nv12 = FrameLayout::packed(fourcc(*b"NV12"), 1920, 1080)?;
//! assert_eq!(nv12.planes().len(), 2);
//! assert_eq!(nv12.planes()[1].offset, 1920 * 1080);
//! assert_eq!(nv12.min_size(0), Some(1920 * 1080 * 3 / 2));
//! nv12.check(&[1920 * 1080 * 3 / 2])?;
//! assert!(nv12.check(&[1920 * 1080]).is_err()); // chroma outside the memory
//! # Ok::<(), mediamem::Error>(())
//! ```

use crate::drm::{fourcc_name, plane_extents};
use crate::error::{Error, Result};

/// Most planes a layout has (DRM's limit).
pub const MAX_PLANES: usize = 4;

/// `DRM_FORMAT_MOD_LINEAR`: rows one after the other, `stride` apart.
pub const MODIFIER_LINEAR: u64 = 0;

/// One plane of a [`FrameLayout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneLayout {
    /// Index of the frame's memory holding the plane.
    pub memory: u32,
    /// Offset of the plane's first row in the memory's visible bytes.
    pub offset: u64,
    /// Bytes from one row to the next.
    pub stride: u32,
}

/// The format, size and planes of a video frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLayout {
    /// DRM fourcc of the pixel format.
    pub fourcc: u32,
    /// DRM format modifier ([`MODIFIER_LINEAR`] for plain rows).
    pub modifier: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    planes: Vec<PlaneLayout>,
}

/// Bytes of a layout on the wire: the fixed part, then 16 per plane.
pub(crate) const WIRE_FIXED: usize = 24;
pub(crate) const WIRE_PLANE: usize = 16;

impl FrameLayout {
    /// A layout of `planes` (at most [`MAX_PLANES`]; checked against the
    /// format by [`check`](FrameLayout::check)).
    ///
    /// # Errors
    /// [`Error::InvalidLayout`] for more than [`MAX_PLANES`] planes.
    pub fn new(
        fourcc: u32,
        modifier: u64,
        width: u32,
        height: u32,
        planes: Vec<PlaneLayout>,
    ) -> Result<Self> {
        if planes.len() > MAX_PLANES {
            return Err(Error::InvalidLayout(format!(
                "{} planes, at most {MAX_PLANES}",
                planes.len()
            )));
        }
        Ok(FrameLayout {
            fourcc,
            modifier,
            width,
            height,
            planes,
        })
    }

    /// The tightest linear layout of a `width`×`height` image in `fourcc`,
    /// every plane in memory 0, one after the other, each stride the row's
    /// bytes.
    ///
    /// # Errors
    /// [`Error::UnknownFourcc`], and [`Error::SizeOverflow`] for a row that
    /// does not fit a `u32` stride.
    pub fn packed(fourcc: u32, width: u32, height: u32) -> Result<Self> {
        let mut offset = 0u64;
        let mut planes = Vec::new();
        for (row, rows) in plane_extents(fourcc, width, height)? {
            let stride = u32::try_from(row).map_err(|_| Error::SizeOverflow {
                what: "plane stride",
            })?;
            planes.push(PlaneLayout {
                memory: 0,
                offset,
                stride,
            });
            offset += row * rows;
        }
        Self::new(fourcc, MODIFIER_LINEAR, width, height, planes)
    }

    /// The planes.
    pub fn planes(&self) -> &[PlaneLayout] {
        &self.planes
    }

    /// The fewest visible bytes memory `memory` needs for its planes
    /// (`None` for an unknown fourcc or sizes past `u64`).
    pub fn min_size(&self, memory: u32) -> Option<u64> {
        let extents = plane_extents(self.fourcc, self.width, self.height).ok()?;
        let mut need = 0u64;
        for (plane, &(row, rows)) in self.planes.iter().zip(&extents) {
            if plane.memory == memory {
                need = need.max(plane_end(plane, row, rows)?);
            }
        }
        Some(need)
    }

    /// Check the layout against the visible sizes of the frame's memories.
    ///
    /// # Errors
    /// [`Error::UnknownFourcc`] for a fourcc outside the table, and
    /// [`Error::InvalidLayout`] for a plane count that is not the
    /// format's, a plane in a memory the frame does not have, a stride
    /// shorter than a row of the width, or a plane that does not lie
    /// inside its memory.
    pub fn check(&self, memory_sizes: &[usize]) -> Result<()> {
        let extents = plane_extents(self.fourcc, self.width, self.height)?;
        let name = fourcc_name(self.fourcc);
        if extents.len() != self.planes.len() {
            return Err(Error::InvalidLayout(format!(
                "{name} has {} planes, the layout {}",
                extents.len(),
                self.planes.len()
            )));
        }
        for (i, (plane, &(row, rows))) in self.planes.iter().zip(&extents).enumerate() {
            let Some(&size) = memory_sizes.get(plane.memory as usize) else {
                return Err(Error::InvalidLayout(format!(
                    "plane {i} is in memory {}, the frame has {}",
                    plane.memory,
                    memory_sizes.len()
                )));
            };
            if u64::from(plane.stride) < row {
                return Err(Error::InvalidLayout(format!(
                    "plane {i}: stride {} is shorter than a row of {name} {} pixels wide ({row} bytes)",
                    plane.stride, self.width
                )));
            }
            match plane_end(plane, row, rows) {
                Some(end) if end <= size as u64 => {}
                end => {
                    return Err(Error::InvalidLayout(format!(
                        "plane {i} ({rows} rows of stride {} from offset {}) ends at {}, memory {} has {size} bytes",
                        plane.stride,
                        plane.offset,
                        end.map_or("an overflow".into(), |e| e.to_string()),
                        plane.memory
                    )))
                }
            }
        }
        Ok(())
    }

    /// Bytes of the layout on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        WIRE_FIXED + self.planes.len() * WIRE_PLANE
    }

    /// Append the wire form (little-endian): fourcc u32, planes u32,
    /// modifier u64, width u32, height u32, then per plane memory u32,
    /// stride u32, offset u64.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fourcc.to_le_bytes());
        out.extend_from_slice(&(self.planes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.modifier.to_le_bytes());
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        for p in &self.planes {
            out.extend_from_slice(&p.memory.to_le_bytes());
            out.extend_from_slice(&p.stride.to_le_bytes());
            out.extend_from_slice(&p.offset.to_le_bytes());
        }
    }

    /// Parse the wire form, which must fill `b` exactly.
    ///
    /// # Errors
    /// [`Error::InvalidLayout`] for a wrong length or too many planes.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        if b.len() < WIRE_FIXED {
            return Err(Error::InvalidLayout(format!(
                "{} bytes, at least {WIRE_FIXED}",
                b.len()
            )));
        }
        let n = u32_at(4) as usize;
        if n > MAX_PLANES || b.len() != WIRE_FIXED + n * WIRE_PLANE {
            return Err(Error::InvalidLayout(format!(
                "{n} planes in {} bytes (at most {MAX_PLANES} planes of {WIRE_PLANE} bytes after {WIRE_FIXED})",
                b.len()
            )));
        }
        let planes = (0..n)
            .map(|i| {
                let at = WIRE_FIXED + i * WIRE_PLANE;
                PlaneLayout {
                    memory: u32_at(at),
                    stride: u32_at(at + 4),
                    offset: u64_at(at + 8),
                }
            })
            .collect();
        Self::new(u32_at(0), u64_at(8), u32_at(16), u32_at(20), planes)
    }
}

/// Where a plane's last row ends: `offset + stride·(rows − 1) + row`.
fn plane_end(plane: &PlaneLayout, row: u64, rows: u64) -> Option<u64> {
    if rows == 0 {
        return Some(plane.offset);
    }
    u64::from(plane.stride)
        .checked_mul(rows - 1)?
        .checked_add(row)?
        .checked_add(plane.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drm::fourcc;

    #[test]
    fn packed_layouts_of_two_and_three_plane_formats() {
        let nv12 = FrameLayout::packed(fourcc(*b"NV12"), 5, 3).unwrap();
        // Luma 5 bytes a row (3 rows), chroma 6 bytes a row (2 rows).
        assert_eq!(nv12.planes()[0].stride, 6);
        assert_eq!(nv12.min_size(0), Some(6 * 3 + 6 * 2));
        let i420 = FrameLayout::packed(fourcc(*b"YU12"), 640, 480).unwrap();
        assert_eq!(i420.planes().len(), 3);
        assert_eq!(i420.planes()[1].stride, 320);
        assert_eq!(i420.min_size(0), Some(640 * 480 * 3 / 2));
        let yuyv = FrameLayout::packed(fourcc(*b"YUYV"), 3, 2).unwrap();
        assert_eq!(yuyv.planes().len(), 1);
        assert_eq!(yuyv.planes()[0].stride, 8);
    }

    #[test]
    fn checks_refuse_what_does_not_fit() {
        let l = FrameLayout::packed(fourcc(*b"NV12"), 64, 64).unwrap();
        let size = 64 * 64 * 3 / 2;
        l.check(&[size]).unwrap();
        assert!(matches!(l.check(&[size - 1]), Err(Error::InvalidLayout(_))));
        assert!(matches!(l.check(&[]), Err(Error::InvalidLayout(_))));
        let mut narrow = l.clone();
        narrow.planes[0].stride = 63;
        assert!(
            matches!(narrow.check(&[size]), Err(Error::InvalidLayout(m)) if m.contains("stride"))
        );
        let mut far = l.clone();
        far.planes[1].offset = u64::MAX - 10;
        assert!(
            matches!(far.check(&[size]), Err(Error::InvalidLayout(m)) if m.contains("overflow"))
        );
        let mut unknown = l.clone();
        unknown.fourcc = fourcc(*b"ZZZZ");
        assert!(matches!(
            unknown.check(&[size]),
            Err(Error::UnknownFourcc { .. })
        ));
        let one = FrameLayout::new(l.fourcc, 0, 64, 64, l.planes()[..1].to_vec()).unwrap();
        assert!(matches!(one.check(&[size]), Err(Error::InvalidLayout(m)) if m.contains("planes")));
    }

    #[test]
    fn the_wire_form_round_trips_and_is_checked() {
        let l = FrameLayout::packed(fourcc(*b"YU12"), 33, 17).unwrap();
        let mut b = Vec::new();
        l.write_to(&mut b);
        assert_eq!(b.len(), l.wire_len());
        assert_eq!(FrameLayout::parse(&b).unwrap(), l);
        assert!(FrameLayout::parse(&b[..b.len() - 1]).is_err());
        b[4] = 9; // nine planes
        assert!(FrameLayout::parse(&b).is_err());
    }
}
