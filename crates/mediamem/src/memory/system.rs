//! The system allocator (`"SystemMemory"`) and memory that wraps Rust-owned
//! bytes (`gst_memory_new_wrapped`).

use std::alloc::Layout;
use std::any::Any;
use std::fmt;
use std::mem::MaybeUninit;
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
/// therefore always true when requested. A producer that writes the whole
/// memory anyway can skip the zeroing with
/// [`Allocator::alloc_with`](crate::Allocator::alloc_with), which hands it
/// the uninitialised bytes through a [`WriteCursor`] and makes the memory
/// only once every byte is written.
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
        let (align, maxsize) = sizing(size, params)?;
        let block = SysBlock::new(maxsize, align, true, None)?;
        Ok(MemoryParts::system(block, maxsize)
            .flags(params.flags)
            .align(align)
            .region(params.prefix, size))
    }
}

/// GStreamer's sysmem sizing: the align mask and `maxsize`.
fn sizing(size: usize, params: &AllocationParams) -> Result<(usize, usize)> {
    let align = params.align | DEFAULT_ALIGN_MASK;
    if u32::try_from(align).is_err() {
        // A memory keeps its mask in 32 bits: refuse before allocating
        // (the block would be aligned to 8 GiB or more).
        return Err(Error::InvalidAlign { align });
    }
    let maxsize = size
        .checked_add(params.prefix)
        .and_then(|n| n.checked_add(params.padding))
        .and_then(|n| n.checked_add(align))
        .ok_or(Error::SizeOverflow {
            what: "size + prefix + padding + align",
        })?;
    Ok((align, maxsize))
}

/// The largest allocation that holds a memory's header and its bytes
/// together. Up to here (glibc serves such sizes from its per-thread
/// cache) one allocation instead of two is a clear gain: 64 B alloc + map +
/// free went from 47 ns to 35 ns. Above it the bytes take glibc's slower
/// path either way and the header's own allocation is cheap; with the
/// header inside, the whole benchmark run (where 1 MiB blocks come and go
/// between the 4 KiB rows) measured 4 KiB alloc + map + free at 83–87 ns
/// against 68–69 ns for two allocations (faster only when 4 KiB rows ran
/// alone), so larger blocks keep an allocation of their own.
const HOSTED_MAX: usize = 1024;

/// From this size on a zeroed block is asked for zeroed (`alloc_zeroed`)
/// rather than zeroed here: glibc's calloc skips the memset for memory
/// fresh from `mmap`. Below it the header would be zeroed too, for nothing.
const CALLOC_FROM: usize = 64 * 1024;

/// The bytes of a memory being made by a write-once allocation
/// ([`Allocator::alloc_with`]): not initialised yet, so they can only be
/// written, front to back. The memory exists only if every byte was.
///
/// ```
/// use mediamem::Allocator;
/// let mem = Allocator::system().alloc_with(6, None, |w| {
///     w.put(b"abc");
///     w.fill(b'-', 3);
///     Ok(())
/// })?;
/// assert_eq!(&*mem.map_readable()?, b"abc---");
/// // Leaving bytes unwritten is an error, and no memory is made.
/// assert!(Allocator::system().alloc_with(6, None, |w| { w.put(b"ab"); Ok(()) }).is_err());
/// # Ok::<(), mediamem::Error>(())
/// ```
pub struct WriteCursor<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    filled: usize,
    /// The bytes were initialised before (a memory of another allocator,
    /// written over): whatever the initialiser leaves unwritten is zeroed
    /// again, even on unwind, so they never stay uninitialised.
    rezero_rest: bool,
}

impl WriteCursor<'_> {
    /// Bytes to write in all.
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether there is nothing to write at all.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes written so far.
    #[inline]
    pub fn written(&self) -> usize {
        self.filled
    }

    /// Bytes still to write.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.filled
    }

    /// Append as much of `bytes` as fits; returns how many were written.
    #[inline]
    pub fn put(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.remaining());
        let dst = &mut self.buf[self.filled..self.filled + n];
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; `dst` and
        // `bytes` are both `n` long and cannot overlap (`dst` is borrowed
        // mutably from the cursor).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.as_mut_ptr().cast(), n) };
        self.filled += n;
        n
    }

    /// Append `n` copies of `byte` (fewer if fewer remain); returns how many
    /// were written.
    #[inline]
    pub fn fill(&mut self, byte: u8, n: usize) -> usize {
        let n = n.min(self.remaining());
        let dst = &mut self.buf[self.filled..self.filled + n];
        // SAFETY: `dst` is `n` writable bytes (MaybeUninit<u8> is a u8).
        unsafe { std::ptr::write_bytes(dst.as_mut_ptr().cast::<u8>(), byte, n) };
        self.filled += n;
        n
    }

    /// Write `byte` over everything that remains.
    #[inline]
    pub fn fill_rest(&mut self, byte: u8) {
        self.fill(byte, self.remaining());
    }

    /// The bytes not written yet, for code that writes them itself (a
    /// `read` into uninitialised memory); follow with
    /// [`advance`](WriteCursor::advance).
    #[inline]
    pub fn unfilled(&mut self) -> &mut [MaybeUninit<u8>] {
        &mut self.buf[self.filled..]
    }

    /// Count the first `n` bytes of [`unfilled`](WriteCursor::unfilled) as
    /// written.
    ///
    /// # Safety
    /// Those `n` bytes (`n <= remaining()`) must have been initialised.
    #[inline]
    pub unsafe fn advance(&mut self, n: usize) {
        assert!(n <= self.remaining(), "advance past the end of the memory");
        self.filled += n;
    }
}

impl fmt::Debug for WriteCursor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteCursor")
            .field("len", &self.len())
            .field("written", &self.filled)
            .finish()
    }
}

impl Drop for WriteCursor<'_> {
    fn drop(&mut self) {
        if self.rezero_rest {
            self.fill_rest(0);
        }
    }
}

/// The initialiser of a write-once allocation.
pub(crate) type Init<'f> = &'f mut dyn FnMut(&mut WriteCursor<'_>) -> Result<()>;

/// Run `init` on `cursor` and check that it wrote everything.
fn run_init(cursor: &mut WriteCursor<'_>, init: Init<'_>) -> Result<()> {
    init(cursor)?;
    if cursor.filled != cursor.len() {
        return Err(Error::Uninitialised {
            written: cursor.filled,
            size: cursor.len(),
        });
    }
    Ok(())
}

/// A system block of `size` visible bytes (sized as `alloc` sizes them)
/// written by `init` without being zeroed first; prefix, padding and slack
/// are zeroed. The block exists only if `init` wrote every visible byte.
/// With `header`, the block shares one allocation with a memory's header
/// (see [`SysBlock::new`]).
pub(crate) fn alloc_written(
    size: usize,
    params: &AllocationParams,
    init: Init<'_>,
    header: Option<Layout>,
) -> Result<(SysBlock, usize, usize)> {
    let (align, maxsize) = sizing(size, params)?;
    // Freed by its drop on every failure path (including a panic in
    // `init`); its bytes are not read before they are all written.
    let block = SysBlock::new(maxsize, align, false, header)?;
    let base = block.ptr.as_ptr();
    let prefix = params.prefix;
    // SAFETY: the block has `maxsize >= prefix + size` bytes (sizing), so
    // both zeroed ranges and the cursor's range lie inside it, and they do
    // not overlap; nothing else refers to the block yet.
    let buf = unsafe {
        std::ptr::write_bytes(base, 0, prefix);
        std::ptr::write_bytes(base.add(prefix + size), 0, maxsize - prefix - size);
        std::slice::from_raw_parts_mut(base.add(prefix).cast::<MaybeUninit<u8>>(), size)
    };
    let mut cursor = WriteCursor {
        buf,
        filled: 0,
        rezero_rest: false,
    };
    run_init(&mut cursor, init)?;
    // Every byte of the block is now initialised (zeroed or written).
    Ok((block, maxsize, align))
}

/// `Allocator::alloc` of the static system allocator: a zeroed block,
/// straight into a memory, header and bytes in one heap allocation if
/// small (see [`HOSTED_MAX`]).
#[inline]
pub(crate) fn alloc_system(size: usize, params: &AllocationParams) -> Result<Memory> {
    let (align, maxsize) = sizing(size, params)?;
    let block = SysBlock::new(maxsize, align, true, Some(Memory::system_header()))?;
    Memory::system_root(block, maxsize, align, params.flags, params.prefix, size)
}

/// `Allocator::alloc_with` of the static system allocator (one heap
/// allocation if small, as `alloc_system`).
pub(crate) fn alloc_with_system(
    size: usize,
    params: &AllocationParams,
    init: Init<'_>,
) -> Result<Memory> {
    let (block, maxsize, align) = alloc_written(size, params, init, Some(Memory::system_header()))?;
    Memory::system_root(block, maxsize, align, params.flags, params.prefix, size)
}

/// Run `init` over bytes that are already initialised (a memory of another
/// allocator): what it leaves unwritten is zeroed again.
pub(crate) fn write_over(bytes: &mut [u8], init: Init<'_>) -> Result<()> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the bytes are
    // initialised. Safe code can store an uninitialised value through the
    // cursor only into the part not written yet (`unfilled`), and the
    // cursor's drop writes zeros over all of that part (also on unwind)
    // unless `advance` — whose caller promises initialised bytes — counted
    // it as written: every byte is initialised again when this returns.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<MaybeUninit<u8>>(), bytes.len())
    };
    let mut cursor = WriteCursor {
        buf,
        filled: 0,
        rezero_rest: true,
    };
    run_init(&mut cursor, init)
}

/// Where the bytes of a system block live.
enum Storage {
    /// Allocated by the system allocator with this layout.
    Heap(Layout),
    /// After a memory's header, in one allocation of this layout starting
    /// at `head` ([`SysBlock::new`] with a header): the block frees it all.
    Hosted { head: NonNull<u8>, layout: Layout },
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
                    Storage::Hosted { .. } => "heap, with its memory",
                    Storage::Wrapped(_) => "wrapped",
                },
            )
            .finish()
    }
}

impl SysBlock {
    /// Start of the bytes.
    #[inline]
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.ptr
    }

    /// A heap block of `len` bytes whose start is aligned to `align + 1`,
    /// zeroed if `zeroed`, else **not initialised**: only for
    /// [`alloc_written`], which writes every byte before the block can be
    /// mapped (the backend contract); until then it may only be dropped.
    ///
    /// With `header`, a small block (header and bytes within
    /// [`HOSTED_MAX`]) shares one allocation with a memory's header: first
    /// the header (that layout, at [`hosted_head`](SysBlock::hosted_head),
    /// not initialised), then the bytes, as GStreamer's sysmem keeps its
    /// `GstMemory` and its bytes in one `malloc`; dropping the block frees
    /// both, so the header must have been moved out by then. A larger block
    /// is an allocation of its own (`hosted_head` is `None`).
    fn new(len: usize, align: usize, zeroed: bool, header: Option<Layout>) -> Result<SysBlock> {
        let too_big = || Error::SizeOverflow {
            what: "block layout (size beyond isize::MAX or alignment too large)",
        };
        let bytes = Layout::from_size_align(len.max(1), align.saturating_add(1).max(1))
            .map_err(|_| too_big())?;
        let hosted = header
            .and_then(|h| h.extend(bytes).ok())
            .filter(|(layout, _)| layout.size() <= HOSTED_MAX);
        let (layout, offset) = hosted.unwrap_or((bytes, 0));
        // Large blocks come zeroed from the allocator (calloc: memory that
        // is fresh from the kernel is not zeroed again); small ones zero
        // only their bytes, not the header.
        let calloc = zeroed && len >= CALLOC_FROM;
        // SAFETY: the layout has a non-zero size (`bytes` has).
        let head = unsafe {
            if calloc {
                std::alloc::alloc_zeroed(layout)
            } else {
                std::alloc::alloc(layout)
            }
        };
        let head = NonNull::new(head).ok_or(Error::OutOfMemory { size: len })?;
        // SAFETY: `offset + len <= layout.size()` (Layout::extend), so the
        // block's start and its `len` bytes lie in the allocation; the
        // pointer is derived from the allocation's, for all of it.
        let ptr = unsafe { head.add(offset) };
        if zeroed && !calloc {
            // SAFETY: `len` bytes from `ptr` are in the allocation, which
            // nothing else refers to yet.
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        }
        let storage = match hosted {
            Some(_) => Storage::Hosted { head, layout },
            None => Storage::Heap(layout),
        };
        Ok(SysBlock { ptr, len, storage })
    }

    /// The start of the allocation and where a memory's header goes, for a
    /// block made with a header.
    #[inline]
    pub(crate) fn hosted_head(&self) -> Option<NonNull<u8>> {
        match self.storage {
            Storage::Hosted { head, .. } => Some(head),
            _ => None,
        }
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
            // SAFETY: allocated in `new` with exactly this layout.
            Storage::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
            // SAFETY: allocated in `new` at `head` with exactly this layout;
            // a header placed there was moved out before this drop
            // (`Counted::new_hosted`'s contract).
            Storage::Hosted { head, layout } => unsafe {
                std::alloc::dealloc(head.as_ptr(), layout)
            },
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
    let params = AllocationParams {
        align,
        ..AllocationParams::default()
    };
    alloc_with_system(src.len(), &params, &mut |w| {
        w.put(src);
        Ok(())
    })
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
    fn the_direct_system_path_matches_the_generic_one() {
        // Allocator::system() takes the direct path; another instance of
        // the system allocator goes through AllocatorImpl and from_parts.
        let direct = Allocator::system();
        let generic = Allocator::new(SystemAllocator);
        let f = MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED;
        for p in [
            AllocationParams::default(),
            AllocationParams::new(f, 63, 10, 3),
            AllocationParams::new(MemoryFlags::READONLY, 4095, 0, 0),
        ] {
            for size in [0, 1, 64, 4096] {
                let a = direct.alloc(size, Some(&p)).unwrap();
                let b = generic.alloc(size, Some(&p)).unwrap();
                assert_eq!(
                    (a.sizes(), a.align(), a.flags()),
                    (b.sizes(), b.align(), b.flags())
                );
                assert!(a.allocator().ptr_eq(&direct) && b.allocator().ptr_eq(&generic));
                let w = |m: &Memory| {
                    let all = m.share_maxsize(..).unwrap();
                    let v = all.map_readable().unwrap().to_vec();
                    v
                };
                assert!(w(&a).iter().all(|&x| x == 0));
                let c = generic
                    .alloc_with(size, Some(&p), |w| {
                        w.fill_rest(1);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(
                    (c.sizes(), c.align(), c.flags()),
                    (a.sizes(), a.align(), a.flags())
                );
            }
        }
        #[cfg(target_pointer_width = "64")]
        {
            let p = AllocationParams::new(MemoryFlags::empty(), (1usize << 33) - 1, 0, 0);
            for a in [&direct, &generic] {
                assert!(matches!(
                    a.alloc(1, Some(&p)),
                    Err(Error::InvalidAlign { .. })
                ));
            }
        }
    }

    #[test]
    fn write_once_allocation_writes_every_byte_and_sizes_as_alloc() {
        let sys = Allocator::system();
        let p = AllocationParams::new(
            MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED,
            63,
            10,
            5,
        );
        let m = sys
            .alloc_with(100, Some(&p), |w| {
                assert_eq!((w.len(), w.written(), w.remaining()), (100, 0, 100));
                assert_eq!(w.put(&[1; 40]), 40);
                assert_eq!(w.fill(2, 30), 30);
                let rest = w.unfilled();
                assert_eq!(rest.len(), 30);
                for b in rest.iter_mut() {
                    b.write(3);
                }
                // SAFETY: the 30 bytes were written just above.
                unsafe { w.advance(30) };
                assert_eq!(w.put(b"more"), 0, "nothing fits any more");
                Ok(())
            })
            .unwrap();
        let z = sys.alloc(100, Some(&p)).unwrap();
        assert_eq!(m.sizes(), z.sizes());
        assert_eq!((m.align(), m.flags()), (z.align(), z.flags()));
        let all = m.share_maxsize(..).unwrap();
        let all = all.map_readable().unwrap();
        assert!(all[..10].iter().all(|&b| b == 0), "prefix zeroed");
        assert!(all[10..50].iter().all(|&b| b == 1));
        assert!(all[50..80].iter().all(|&b| b == 2));
        assert!(all[80..110].iter().all(|&b| b == 3));
        assert!(all[110..].iter().all(|&b| b == 0), "padding zeroed");
        assert_eq!(all.as_ptr() as usize % 64, 0);
    }

    #[test]
    fn write_once_allocation_refuses_unwritten_bytes() {
        let sys = Allocator::system();
        let short = sys.alloc_with(64, None, |w| {
            w.fill_rest(9);
            // SAFETY: nothing remains, so advancing by 0 claims nothing.
            unsafe { w.advance(0) };
            Ok(())
        });
        assert_eq!(&*short.unwrap().map_readable().unwrap(), &[9; 64]);
        let r = sys.alloc_with(64, None, |w| {
            w.put(&[1; 63]);
            Ok(())
        });
        assert!(
            matches!(
                r,
                Err(Error::Uninitialised {
                    written: 63,
                    size: 64
                })
            ),
            "{r:?}"
        );
        let r = sys.alloc_with(64, None, |_| Err(Error::NoShare));
        assert!(matches!(r, Err(Error::NoShare)), "{r:?}");
        // A panicking initialiser: the block is freed by unwinding.
        let r = std::panic::catch_unwind(|| {
            let _ = Allocator::system().alloc_with(64, None, |w| {
                w.put(&[1; 8]);
                panic!("initialiser gave up")
            });
        });
        assert!(r.is_err());
        assert!(matches!(
            sys.alloc_with(usize::MAX - 3, None, |_| Ok(())),
            Err(Error::SizeOverflow { .. })
        ));
        let empty = sys.alloc_with(0, None, |w| {
            assert!(w.is_empty());
            Ok(())
        });
        assert_eq!(empty.unwrap().size(), 0);
    }

    #[test]
    fn the_cursor_over_initialised_bytes_zeroes_what_is_left() {
        // The cursor over initialised bytes zeroes what was left unwritten.
        let mut bytes = vec![7u8; 16];
        let r = write_over(&mut bytes, &mut |w| {
            w.put(&[1, 2]);
            for b in w.unfilled().iter_mut() {
                *b = MaybeUninit::uninit();
            }
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(&bytes[..2], &[1, 2]);
        assert!(bytes[2..].iter().all(|&b| b == 0));
    }

    #[test]
    fn copies_are_written_once_with_zeroed_slack() {
        let src = Memory::from_slice((0..=255u8).collect::<Vec<_>>());
        let c = src.copy_range(3..20).unwrap();
        assert_eq!(
            &*c.map_readable().unwrap(),
            &(3..20u8).collect::<Vec<_>>()[..]
        );
        let all = c.share_maxsize(..).unwrap();
        assert!(all.map_readable().unwrap()[17..].iter().all(|&b| b == 0));
    }

    #[test]
    fn debug_says_where_the_bytes_live() {
        let heap = SysBlock::new(8, 7, true, None).unwrap();
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
