//! The system allocator (`"SystemMemory"`) and memory that wraps Rust-owned
//! bytes (`gst_memory_new_wrapped`).

use std::alloc::Layout;
use std::any::Any;
use std::fmt;
use std::ops::RangeBounds;
use std::ptr::NonNull;

use crate::allocator::{AllocationParams, Allocator, AllocatorImpl};
use crate::error::{Error, Result};
use crate::memory::{
    regions_adjacent, MapFlags, Memory, MemoryBackend, MemoryFlags, MemoryParts, DEFAULT_ALIGN_MASK,
};

/// The system allocator: heap blocks, GStreamer's `"SystemMemory"`.
///
/// Sizing is GStreamer's: the alignment mask is `params.align | 7`, and
/// `maxsize = size + prefix + padding + align`, so `alloc(100)` gives
/// `maxsize` 107. mediamem asks the heap for a block aligned to
/// `align + 1` directly, so the slack GStreamer spends on aligning a
/// malloc'ed pointer stays part of `maxsize` and the numbers do not depend on
/// where the heap put the block. Offset 0 of the block is aligned (the
/// alignment applies to the start of the block, not to `offset`).
///
/// Blocks are zero-initialised: a `&[u8]` over uninitialised bytes is
/// undefined behaviour in Rust. The ZERO_PREFIXED / ZERO_PADDED flags are
/// therefore always true when requested.
///
/// ```
/// use mediamem::{AllocationParams, Allocator, MemoryFlags};
/// let sys = Allocator::system();
/// assert_eq!(sys.alloc(100, None)?.maxsize(), 107);
/// let p = AllocationParams::new(MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED, 0, 10, 10);
/// let m = sys.alloc(100, Some(&p))?;
/// assert_eq!((m.offset(), m.size(), m.maxsize()), (10, 100, 127));
/// assert_eq!(m.flags().bits(), 0x61);
/// # Ok::<(), mediamem::Error>(())
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemAllocator;

impl AllocatorImpl for SystemAllocator {
    fn caps(&self) -> crate::allocator::AllocatorCaps {
        crate::allocator::AllocatorCaps::PLAIN_ALLOC
    }

    fn mem_type(&self) -> &str {
        crate::allocator::ALLOCATOR_SYSMEM
    }

    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let align = params.align | DEFAULT_ALIGN_MASK;
        let overflow = Error::SizeOverflow {
            what: "size + prefix + padding + align",
        };
        let maxsize = size
            .checked_add(params.prefix)
            .and_then(|n| n.checked_add(params.padding))
            .and_then(|n| n.checked_add(align))
            .ok_or(overflow)?;
        let block = SysBlock::zeroed(maxsize, align)?;
        Ok(MemoryParts::system(block, maxsize)
            .flags(params.flags)
            .align(align)
            .region(params.prefix, size))
    }
}

/// Where the bytes of a system block live.
enum Storage {
    /// Allocated by the system allocator with this layout.
    Heap(Layout),
    /// Owned by a wrapped Rust value, dropped with the block.
    Wrapped(NonNull<dyn Any + Send>),
}

/// The backend of system memory.
pub(crate) struct SysBlock {
    ptr: NonNull<u8>,
    len: usize,
    storage: Storage,
}

// SAFETY: the block owns its bytes (or the wrapped owner). The bytes are
// reached only through mappings, which the lock word and borrow tracker
// coordinate; the owner value is touched only by Drop, which has exclusive
// access. The owner is `Send`, so dropping it on another thread is fine.
unsafe impl Send for SysBlock {}
// SAFETY: `&SysBlock` only reads `ptr` and `len`; see Send.
unsafe impl Sync for SysBlock {}

impl fmt::Debug for SysBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SysBlock")
            .field("len", &self.len)
            .field(
                "storage",
                &match self.storage {
                    Storage::Heap(_) => "heap",
                    Storage::Wrapped(_) => "wrapped",
                },
            )
            .finish()
    }
}

impl SysBlock {
    /// `len` zeroed bytes whose start is aligned to `align + 1`.
    fn zeroed(len: usize, align: usize) -> Result<SysBlock> {
        let layout =
            Layout::from_size_align(len.max(1), align.saturating_add(1).max(1)).map_err(|_| {
                Error::SizeOverflow {
                    what: "block layout (size beyond isize::MAX or alignment too large)",
                }
            })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(Error::OutOfMemory { size: len })?;
        Ok(SysBlock {
            ptr,
            len,
            storage: Storage::Heap(layout),
        })
    }

    /// A block holding a copy of `src` followed by zeroed slack up to
    /// `len` (>= `src.len()`), start aligned to `align + 1`. Every byte is
    /// written before the block is used, so nothing is zeroed twice.
    fn copied(src: &[u8], len: usize, align: usize) -> Result<SysBlock> {
        let layout =
            Layout::from_size_align(len.max(1), align.saturating_add(1).max(1)).map_err(|_| {
                Error::SizeOverflow {
                    what: "block layout (size beyond isize::MAX or alignment too large)",
                }
            })?;
        debug_assert!(src.len() <= len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).ok_or(Error::OutOfMemory { size: len })?;
        // SAFETY: `ptr` is valid for `len` bytes and does not overlap `src`;
        // after these two writes all `len` bytes are initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.as_ptr(), src.len());
            std::ptr::write_bytes(ptr.as_ptr().add(src.len()), 0, len - src.len());
        }
        Ok(SysBlock {
            ptr,
            len,
            storage: Storage::Heap(layout),
        })
    }

    /// Adopt `owner`, whose bytes are `owner_bytes(&mut owner)`.
    fn wrap<T: Send + 'static>(owner: T, bytes: impl FnOnce(&mut T) -> (*mut u8, usize)) -> Self {
        let raw: *mut T = Box::into_raw(Box::new(owner));
        // SAFETY: `raw` comes from Box::into_raw and is valid and unique; the
        // value does not move again until it is dropped in Drop.
        let (ptr, len) = bytes(unsafe { &mut *raw });
        let owner: *mut (dyn Any + Send) = raw;
        SysBlock {
            // An empty slice may have a dangling (but non-null) pointer.
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
            len,
            // SAFETY: `raw` is non-null (it came from a Box).
            storage: Storage::Wrapped(unsafe { NonNull::new_unchecked(owner) }),
        }
    }
}

impl Drop for SysBlock {
    fn drop(&mut self) {
        match self.storage {
            // SAFETY: allocated in `zeroed` with exactly this layout.
            Storage::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
            // SAFETY: created by Box::into_raw in `wrap`, dropped only here.
            Storage::Wrapped(owner) => drop(unsafe { Box::from_raw(owner.as_ptr()) }),
        }
    }
}

// SAFETY: `ptr` points at `len` initialised bytes (zeroed, or the wrapped
// value's slice) for the life of the block; `maxsize` never exceeds `len`
// (set by the constructors below).
unsafe impl MemoryBackend for SysBlock {
    fn map(&self, maxsize: usize, _flags: MapFlags) -> Result<NonNull<u8>> {
        debug_assert!(maxsize <= self.len);
        Ok(self.ptr)
    }

    fn static_ptr(&self) -> Option<NonNull<u8>> {
        // Heap blocks are always there; wrapped read-only data is never
        // written because READONLY memory refuses WRITE maps.
        Some(self.ptr)
    }

    fn is_span(&self, first: (usize, usize), second: (usize, usize)) -> bool {
        regions_adjacent(first, second)
    }

    fn copy(&self, memory: &Memory, offset: usize, size: usize) -> Option<Result<Memory>> {
        Some(memory.copy_unmapped(self.ptr, offset, size))
    }

    fn kind(&self) -> super::MemoryKind {
        super::MemoryKind::System
    }
}

/// A new system memory holding a copy of `src`, sized as `alloc(src.len())`
/// with align mask `align` would be (GStreamer's sysmem copy), without
/// zeroing bytes that are copied over anyway.
pub(crate) fn copy_into_sysmem(src: &[u8], align: usize) -> Result<Memory> {
    let align = align | DEFAULT_ALIGN_MASK;
    let maxsize = src.len().checked_add(align).ok_or(Error::SizeOverflow {
        what: "copy size + align",
    })?;
    let block = SysBlock::copied(src, maxsize, align)?;
    Memory::from_parts(
        Allocator::system_ref(),
        MemoryParts::system(block, maxsize)
            .align(align)
            .region(0, src.len()),
    )
}

impl Memory {
    /// Wrap Rust-owned bytes as read-only system memory (gstreamer-rs
    /// `Memory::from_slice`). `data` is dropped when the memory is freed.
    ///
    /// ```
    /// use mediamem::Memory;
    /// let mem = Memory::from_slice(vec![1u8, 2, 3]);
    /// assert!(mem.is_readonly());
    /// assert_eq!(&*mem.map_readable()?, &[1, 2, 3]);
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    pub fn from_slice<T: AsRef<[u8]> + Send + 'static>(data: T) -> Memory {
        let block = SysBlock::wrap(data, |d| {
            let s = d.as_ref();
            (s.as_ptr().cast_mut(), s.len())
        });
        let len = block.len;
        Memory::from_parts(
            Allocator::system_ref(),
            MemoryParts::system(block, len).flags(MemoryFlags::READONLY),
        )
        .expect("a whole-slice region always fits")
    }

    /// Wrap Rust-owned mutable bytes as writable system memory.
    pub fn from_mut_slice<T: AsMut<[u8]> + Send + 'static>(data: T) -> Memory {
        Memory::new_wrapped(MemoryFlags::empty(), data, ..)
            .expect("a whole-slice region always fits")
    }

    /// Wrap Rust-owned bytes with explicit flags and visible `range`
    /// (`gst_memory_new_wrapped`): `maxsize` is the length of the bytes and
    /// the align mask 0. `data` is dropped when the memory is freed (the
    /// C `notify`). With ZERO_* flags the caller promises those bytes are
    /// zero.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] when `range` does not fit in the bytes.
    pub fn new_wrapped<T: AsMut<[u8]> + Send + 'static>(
        flags: MemoryFlags,
        data: T,
        range: impl RangeBounds<usize>,
    ) -> Result<Memory> {
        let block = SysBlock::wrap(data, |d| {
            let s = d.as_mut();
            (s.as_mut_ptr(), s.len())
        });
        let len = block.len;
        let (start, end) = crate::memory::resolve_range(range, len, "wrapped bytes")?;
        Memory::from_parts(
            Allocator::system_ref(),
            MemoryParts::system(block, len)
                .flags(flags)
                .region(start, end - start),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn debug_says_where_the_bytes_live() {
        let heap = SysBlock::copied(b"abc", 8, 7).unwrap();
        let text = format!("{heap:?}");
        assert!(text.contains("SysBlock") && text.contains("heap"), "{text}");
    }

    #[test]
    fn sizing_matches_gstreamer() {
        let sys = Allocator::system();
        let m = sys.alloc(100, None).unwrap();
        assert_eq!(
            (m.size(), m.offset(), m.maxsize(), m.align()),
            (100, 0, 107, 7)
        );
        assert_eq!(m.flags().bits(), 0x1);
        let p = AllocationParams::new(MemoryFlags::empty(), 63, 10, 10);
        let m = sys.alloc(100, Some(&p)).unwrap();
        assert_eq!(m.align(), 63);
        assert_eq!(m.maxsize(), 100 + 10 + 10 + 63);
        let map = m.map_readable().unwrap();
        // The block start is 64-aligned, so the data after a 10-byte prefix
        // is at 10 mod 64 (the C probe's result).
        assert_eq!(map.as_ptr() as usize % 64, 10);
    }

    #[test]
    fn overflow_is_an_error() {
        let sys = Allocator::system();
        assert!(matches!(
            sys.alloc(usize::MAX - 3, None),
            Err(Error::SizeOverflow { .. })
        ));
        let p = AllocationParams::new(MemoryFlags::empty(), 0, usize::MAX, 1);
        assert!(matches!(
            sys.alloc(1, Some(&p)),
            Err(Error::SizeOverflow { .. })
        ));
        // Beyond isize::MAX: the layout refuses, no abort.
        assert!(matches!(
            sys.alloc(usize::MAX / 2 + 1, None),
            Err(Error::SizeOverflow { .. })
        ));
    }

    #[test]
    fn huge_allocation_fails_cleanly() {
        // 2^46 bytes (64 TiB) is a valid layout that no machine here can
        // provide: the heap returns null and we report it.
        let r = Allocator::system().alloc(1 << 46, None);
        assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    }

    #[test]
    fn wrapped_owner_dropped_once_with_last_share() {
        struct Owner(Vec<u8>, Arc<AtomicUsize>);
        impl AsMut<[u8]> for Owner {
            fn as_mut(&mut self) -> &mut [u8] {
                &mut self.0
            }
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let m = Memory::new_wrapped(
            MemoryFlags::empty(),
            Owner(vec![7; 32], drops.clone()),
            4..20,
        )
        .unwrap();
        assert_eq!(
            (m.offset(), m.size(), m.maxsize(), m.align()),
            (4, 16, 32, 0)
        );
        let s = m.share(2..4).unwrap();
        drop(m);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        assert_eq!(&*s.map_readable().unwrap(), &[7, 7]);
        drop(s);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn wrapped_arrays_do_not_dangle() {
        // An array moves with its owner; the block must point at the boxed copy.
        let m = Memory::from_mut_slice([5u8; 8]);
        m.map_writable().unwrap()[0] = 9;
        assert_eq!(&*m.map_readable().unwrap(), &[9, 5, 5, 5, 5, 5, 5, 5]);
        let e = Memory::from_slice(Vec::<u8>::new());
        assert_eq!(e.map_readable().unwrap().len(), 0);
        assert!(Memory::new_wrapped(MemoryFlags::empty(), vec![0u8; 4], 2..8).is_err());
    }
}
