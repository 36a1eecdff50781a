//! [`Memory`]: GStreamer's `GstMemory` as a cheap, reference-counted,
//! `Send + Sync` handle.
//!
//! # Model
//!
//! A memory is a view `[offset, offset + size)` of a block of `maxsize`
//! bytes. A *root* memory owns the block through its
//! [`MemoryBackend`]; a *share* ([`Memory::share`]) is another view of the
//! root's block and keeps the root alive. Shares of shares point at the root
//! (GStreamer flattens them), and shares are always read-only.
//!
//! Access goes through the lock word ([`Memory::lock_state`]), which follows
//! GStreamer's `gst_mini_object_lock` exactly: READ maps nest with READ maps,
//! WRITE with WRITE, READWRITE with anything; a memory with two or more
//! exclusive holders (its shares, or containers) cannot be written; the
//! reference count is ignored.
//!
//! # GStreamer quirks: what mediamem decided
//!
//! | GStreamer behaviour | mediamem |
//! |---|---|
//! | Out-of-order unmaps leave stale mode bits (`0x3`), after which every share fails | fixed: the mode counts for nothing once the map count reaches 0, and `lock_state()` shows none (unmaps are one subtraction each, so the stored word may keep the bits until the next map; nothing reads them) |
//! | The 8-bit map count and 16-bit share count overflow silently | fixed: [`Error::TooManyLocks`] |
//! | `resize` compares `offset + size < mem.size` in unsigned arithmetic, so a negative delta can keep `ZERO_PADDED` set although the padding grew | fixed: `ZERO_PADDED` is cleared whenever the visible end moves left |
//! | `share` has no bounds check; `share(o, -1)` is `size - o` unchecked | ranges are checked: [`Error::OutOfRange`] |
//! | `copy(o, -1)` with `o > size` quietly gives an empty copy | [`Error::OutOfRange`] |
//! | A share inherits the root's `ZERO_*` flags as they are, even where its own prefix or padding holds data | a share keeps `ZERO_PREFIXED` only if it starts at or before the root's offset, `ZERO_PADDED` only if it ends at or after the root's end |
//! | `gst_memory_init` ignores a failed lock of the parent | the share fails with the lock error |
//! | A missing `mem_share` (DRM dumb) is a NULL call | [`Error::Unsupported`] where a backend refuses, generic shares otherwise |
//! | `is_span` on system memory writes the offset even when it returns FALSE | [`Memory::is_span`] returns `Some(offset)` only on success |
//! | Unmapping twice corrupts counters (before 1.28) | impossible: maps are guards, unmapped on drop |
//! | Mapping with no READ/WRITE bit takes no lock | refused: [`Error::InvalidMapFlags`] |
//! | Read maps of READONLY memory count in its lock word (and at most 255 nest) | a READONLY root that no other root aliases is mapped for reading without the lock word (nothing can write it): its `lock_state()` stays 0 and its read maps are not limited |
//! | The allocator's `alloc` aborts on OOM (before 1.28.3) | [`Error::OutOfMemory`] |
//!
//! Kept as GStreamer does it: the lock-word layout and nesting rules, share
//! failing while WRITE-mapped, writability ignoring the reference count,
//! shares being read-only with the root as parent, `alloc(100)` giving
//! `maxsize` 107, the CUSTOM_ALLOC / NO_COPY copy redirect, and everything the
//! conformance suite checks.
//!
//! # Slices and aliasing
//!
//! The lock word allows two WRITE maps of one memory at once, a WRITE map of a
//! root while one of its shares is mapped READ, and WRITE maps of a memory
//! that has several references. C code can live with that; Rust slices
//! cannot, because two `&mut [u8]` over the same bytes are undefined
//! behaviour. So the slice-giving guards ([`Memory::map_readable`],
//! [`Memory::map_writable`], [`Memory::map`] and the owning forms) add one rule
//! per block on top of the lock word: any number of readable guards, or one
//! writable guard ([`Error::Aliased`] otherwise). [`Memory::map_raw`] takes
//! only the lock word, exactly as GStreamer, and hands out pointers.
//!
//! Ownership can also prove exclusivity outright: [`Memory::map_mut`] takes
//! `&mut self`, and when that handle is the only one to a root memory with
//! nothing held, no other map, share or lock can exist while its guard
//! lives, so it maps without touching the lock word (no atomic
//! read-modify-write; about 4.5 ns for a map and unmap on the benchmark
//! machine, inlined at every call site, where two compare-and-swaps alone,
//! what any shared handle pays, take about 20 ns). That is the producer's
//! case: fill a frame fresh from an allocator or a pool. With other handles
//! it is the ordinary locked map.
//!
//! Within one process that rule holds across roots too: every root of the
//! same file (two imports of one fd, a frame received from this very
//! process, a DRM dumb buffer and its PRIME export) takes its borrows from
//! one [`BlockAlias`], so safe code cannot build two `&mut [u8]` over one
//! page by importing a memory's own fd again.
//!
//! What other processes (or devices) can do to the bytes of fd-backed
//! memory is outside any process's rules: they can write them while a
//! slice is alive (treat them as shared, changing memory, as with any
//! `mmap` of a shared file), and, for files that are not sealed, truncate
//! them. The `fd` module's docs and the README's contract list what
//! mediamem stops (seals, dma-buf verification, the `SIGBUS` guard) and
//! what it cannot.

mod alias;
pub mod allocator;
mod backend;
mod counted;
mod flags;
mod lock;
mod map;
mod region;
mod sync;
pub mod system;

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Bound, RangeBounds};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

#[doc(hidden)]
pub use alias::tracked_files as alias_tracked_files;
pub use alias::BlockAlias;
use backend::BackendSlot;
pub use backend::{MemoryBackend, MemoryKind, MemoryParts};
pub use flags::{LockFlags, MapFlags, MemoryFlags};
pub use map::{
    Dynamic, IntoMappedError, MapMode, MappedMemory, MemoryMap, MemoryMapMut, Owned, RawMap,
    Readable, Writable,
};

use crate::error::{Error, Result};
use allocator::{check_align_mask, AllocationParams, Allocator, AllocatorFlags};
use counted::Counted;
use lock::LockWord;
use map::Mapping;
use region::{Borrow, Region};

/// The alignment mask every allocation gets at least (`gst_memory_alignment`
/// with GStreamer's default `memory-alignment=malloc`): 8 bytes.
pub const DEFAULT_ALIGN_MASK: usize = 7;

/// A reference-counted handle to a memory (`GstMemory*`).
///
/// Cloning takes a reference; dropping the last reference frees the block
/// (for a share: releases its hold on the root).
///
/// ```
/// use mediamem::Memory;
///
/// let mem = Memory::with_size(16)?;
/// {
///     let mut map = mem.map_writable()?;
///     map.copy_from_slice(b"0123456789abcdef");
/// }
/// let tail = mem.share(10..)?;           // zero-copy view of bytes 10..16
/// assert_eq!(&*tail.map_readable()?, b"abcdef");
/// assert!(tail.map_writable().is_err()); // shares are read-only
/// let copy = tail.copy()?;               // a new, writable block
/// copy.map_writable()?[0] = b'A';
/// assert_eq!(&*copy.map_readable()?, b"Abcdef");
/// # Ok::<(), mediamem::Error>(())
/// ```
#[derive(Clone)]
pub struct Memory {
    inner: Counted<Inner>,
}

struct Inner {
    origin: Origin,
    maxsize: usize,
    /// The align mask; a `u32` (masks past 4 GiB are refused) so that it
    /// packs with `flags` and a memory stays within two cache lines.
    align: u32,
    flags: AtomicU32,
    lock: LockWord,
    region: Region,
}

/// A root's allocator: the system allocator by its static handle (no
/// reference count to take when a system memory is made and to drop when
/// it is freed: two atomic read-modify-writes per memory), any other by a
/// handle of its own.
enum RootAllocator {
    System,
    Other(Allocator),
}

impl RootAllocator {
    #[inline]
    fn of(allocator: &Allocator) -> Self {
        if allocator.ptr_eq(Allocator::system_ref()) {
            RootAllocator::System
        } else {
            RootAllocator::Other(allocator.clone())
        }
    }

    #[inline]
    fn get(&self) -> &Allocator {
        match self {
            RootAllocator::System => Allocator::system_ref(),
            RootAllocator::Other(a) => a,
        }
    }

    /// Move the handle out, leaving the (free) static one behind.
    fn take(&mut self) -> RootAllocator {
        std::mem::replace(self, RootAllocator::System)
    }
}

enum Origin {
    Root {
        /// Shares reach their allocator through the root.
        allocator: RootAllocator,
        /// Dropped with the root, or handed to a free hook (see `Drop`).
        backend: ManuallyDrop<BackendSlot>,
        /// The block's address when the backend says it never needs a map
        /// (system memory): map and unmap then skip the backend. 0 if not.
        static_base: usize,
        /// What only some roots have (an alias, a free hook), out of line so
        /// that system memory stays small and its hot paths test one word.
        extra: Option<Box<RootExtra>>,
    },
    Share {
        root: Memory,
    },
}

/// The rarer parts of a root.
#[derive(Default)]
struct RootExtra {
    /// The byte-borrow rule shared with other roots of the same storage;
    /// `None`: the rule lives in this root's own word.
    alias: Option<BlockAlias>,
    /// This root claimed the alias word's GStreamer half as its lock word
    /// ([`BlockAlias::claim_word`]): its own `lock` is unused, and a map
    /// takes lock and borrow with one compare-and-swap there.
    owns_alias_word: bool,
    /// Runs when the block's last handle is gone, with what is left.
    on_free: Option<BlockFreeHook>,
}

impl RootExtra {
    /// The extra parts of a root with `alias`, if it needs any.
    fn with_alias(alias: Option<BlockAlias>) -> Option<Box<RootExtra>> {
        alias.map(|alias| {
            Box::new(RootExtra {
                owns_alias_word: alias.claim_word(),
                alias: Some(alias),
                on_free: None,
            })
        })
    }

    /// Give the alias word's GStreamer half back, if this root holds it.
    fn unclaim(&mut self) {
        if std::mem::take(&mut self.owns_alias_word) {
            if let Some(alias) = &self.alias {
                alias.unclaim_word();
            }
        }
    }
}

/// A hook run when a root block's last handle is gone
/// ([`Memory::set_on_block_free`]). Shared, so one hook (a pool's) can be
/// armed on many blocks without an allocation each.
pub type BlockFreeHook = std::sync::Arc<dyn Fn(FreedBlock) + Send + Sync>;

impl Drop for Inner {
    fn drop(&mut self) {
        match &mut self.origin {
            Origin::Share { root } => {
                // Balanced with the lock taken in `share_abs`.
                root.lock_word().unlock(LockFlags::EXCLUSIVE);
            }
            Origin::Root {
                allocator,
                backend,
                static_base,
                extra,
            } => match extra.as_mut().and_then(|e| {
                // Nothing holds this root's lock any more: the next root of
                // the file may have the alias word.
                e.unclaim();
                e.on_free.take()
            }) {
                Some(hook) => {
                    // SAFETY: `backend` is never used again: this is the
                    // root's drop, and the field is not dropped on its own
                    // (ManuallyDrop).
                    let backend = unsafe { ManuallyDrop::take(backend) };
                    let (offset, size) = self.region.get();
                    hook(FreedBlock {
                        allocator: allocator.take(),
                        backend: Some(backend),
                        static_base: *static_base,
                        alias: extra.as_mut().and_then(|e| e.alias.take()),
                        maxsize: self.maxsize,
                        align: self.align as usize,
                        flags: MemoryFlags::from_bits_retain(*self.flags.get_mut()),
                        offset,
                        size,
                    });
                }
                // SAFETY: as above: the root's drop, the field's only drop.
                None => unsafe { ManuallyDrop::drop(backend) },
            },
        }
    }
}

/// What is left of a root block when its last handle (shares included) is
/// gone: its storage, untouched, and what it was. A
/// [`set_on_block_free`](Memory::set_on_block_free) hook receives it and
/// can make a fresh memory of it ([`FreedBlock::into_memory`]: a pool takes
/// its buffer back) or drop it (the storage is freed as usual).
pub struct FreedBlock {
    allocator: RootAllocator,
    backend: Option<BackendSlot>,
    static_base: usize,
    alias: Option<BlockAlias>,
    maxsize: usize,
    align: usize,
    flags: MemoryFlags,
    offset: usize,
    size: usize,
}

impl fmt::Debug for FreedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreedBlock")
            .field("mem_type", &self.allocator.get().mem_type())
            .field("maxsize", &self.maxsize)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish()
    }
}

impl FreedBlock {
    /// The allocator that made the block.
    pub fn allocator(&self) -> &Allocator {
        self.allocator.get()
    }

    /// `(size, offset, maxsize)` of the root when it was freed.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.size, self.offset, self.maxsize)
    }

    /// The block's flags when it was freed.
    pub fn flags(&self) -> MemoryFlags {
        self.flags
    }

    /// A new root memory over the same storage, visible at
    /// `[offset, offset + size)`, with a fresh lock word and no hook.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] when the region does not fit the block (the
    /// storage is then freed).
    pub fn into_memory(mut self, offset: usize, size: usize) -> Result<Memory> {
        let end = offset.checked_add(size).ok_or(Error::SizeOverflow {
            what: "offset + size",
        })?;
        if end > self.maxsize {
            return Err(Error::OutOfRange {
                start: offset,
                end,
                bound: self.maxsize,
                what: "maxsize of the freed block",
            });
        }
        let backend = self.backend.take().expect("present until used");
        Ok(Memory {
            inner: Counted::new(Inner {
                origin: Origin::Root {
                    allocator: self.allocator.take(),
                    backend: ManuallyDrop::new(backend),
                    static_base: self.static_base,
                    extra: RootExtra::with_alias(self.alias.take()),
                },
                maxsize: self.maxsize,
                align: self.align as u32, // it came from a u32
                flags: AtomicU32::new((self.flags | MemoryFlags::LOCKABLE).bits()),
                lock: LockWord::default(),
                region: Region::new(offset, size),
            }),
        })
    }
}

/// Resolve `range` against `len` bytes into `(start, end)`.
pub(crate) fn resolve_range(
    range: impl RangeBounds<usize>,
    len: usize,
    what: &'static str,
) -> Result<(usize, usize)> {
    let overflow = Error::SizeOverflow {
        what: "range bound",
    };
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1).ok_or(overflow)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1).ok_or(Error::SizeOverflow {
            what: "range bound",
        })?,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    if start > end || end > len {
        return Err(Error::OutOfRange {
            start,
            end,
            bound: len,
            what,
        });
    }
    Ok((start, end))
}

impl Memory {
    // ----------------------------------------------------------------
    // Construction
    // ----------------------------------------------------------------

    /// Make a root memory of `allocator` from `parts` (`gst_memory_init` for a
    /// root). This is how custom allocators create their memories.
    ///
    /// # Errors
    /// [`Error::InvalidAlign`] for a bad mask, [`Error::OutOfRange`] when
    /// `offset + size > maxsize`.
    pub fn from_parts(allocator: &Allocator, parts: MemoryParts) -> Result<Memory> {
        check_align_mask(parts.align)?;
        let align =
            u32::try_from(parts.align).map_err(|_| Error::InvalidAlign { align: parts.align })?;
        let end = parts
            .offset
            .checked_add(parts.size)
            .ok_or(Error::SizeOverflow {
                what: "offset + size",
            })?;
        if end > parts.maxsize {
            return Err(Error::OutOfRange {
                start: parts.offset,
                end,
                bound: parts.maxsize,
                what: "maxsize of the new memory",
            });
        }
        Ok(Memory {
            inner: Counted::new(Inner {
                origin: Origin::Root {
                    allocator: RootAllocator::of(allocator),
                    static_base: parts
                        .backend
                        .get()
                        .static_ptr()
                        .map_or(0, |p| p.as_ptr() as usize),
                    // System blocks never alias: no virtual call for them.
                    extra: match &parts.backend {
                        BackendSlot::System(_) => None,
                        other => RootExtra::with_alias(other.get().alias().cloned()),
                    },
                    backend: ManuallyDrop::new(parts.backend),
                },
                maxsize: parts.maxsize,
                align,
                flags: AtomicU32::new((parts.flags | MemoryFlags::LOCKABLE).bits()),
                lock: LockWord::default(),
                region: Region::new(parts.offset, parts.size),
            }),
        })
    }

    /// The layout of a memory's header (its reference count and `Inner`),
    /// which a system block made for [`system_root`](Memory::system_root)
    /// keeps in front of its bytes.
    #[inline]
    pub(crate) fn system_header() -> std::alloc::Layout {
        Counted::<Inner>::block_layout()
    }

    /// A root of the static system allocator over a fresh heap block: what
    /// [`Allocator::alloc`] does for it, without building and moving
    /// [`MemoryParts`] or calling the backend through its vtable. The caller
    /// sized the block (`offset + size <= maxsize`, `align` a valid mask).
    /// A block made with [`system_header`](Memory::system_header) room gets
    /// the memory's header in that room: one heap allocation in all.
    #[inline]
    pub(crate) fn system_root(
        block: system::SysBlock,
        maxsize: usize,
        align: usize,
        flags: MemoryFlags,
        offset: usize,
        size: usize,
    ) -> Result<Memory> {
        debug_assert!(check_align_mask(align).is_ok());
        debug_assert!(offset.checked_add(size).is_some_and(|end| end <= maxsize));
        let align = u32::try_from(align).map_err(|_| Error::InvalidAlign { align })?;
        let static_base = block.base().as_ptr() as usize;
        let head = block.hosted_head();
        let inner = Inner {
            origin: Origin::Root {
                allocator: RootAllocator::System,
                backend: ManuallyDrop::new(BackendSlot::System(block)),
                static_base,
                extra: None,
            },
            maxsize,
            align,
            flags: AtomicU32::new((flags | MemoryFlags::LOCKABLE).bits()),
            lock: LockWord::default(),
            region: Region::new(offset, size),
        };
        let inner = match head {
            // SAFETY: the block made room for the header at `head`
            // (`SysBlock::new` with `system_header()`: the size and
            // alignment of the counted block, in front of the bytes, not
            // overlapping them). The block is part of `inner` and frees the
            // whole allocation when dropped: the root's drop drops it, or
            // hands it to a free hook (`FreedBlock`), only after the last
            // handle moved `inner` out of the allocation; nothing else
            // touches the header's bytes.
            Some(head) => unsafe { Counted::new_hosted(head, inner) },
            None => Counted::new(inner),
        };
        Ok(Memory { inner })
    }

    /// A memory of `size` bytes from the default allocator.
    pub fn with_size(size: usize) -> Result<Memory> {
        Allocator::default_allocator().alloc(size, None)
    }

    /// A memory of `size` bytes from the default allocator with `params`.
    pub fn with_size_and_params(size: usize, params: &AllocationParams) -> Result<Memory> {
        Allocator::default_allocator().alloc(size, Some(params))
    }

    // ----------------------------------------------------------------
    // Properties
    // ----------------------------------------------------------------

    /// The allocator that made this memory (shares keep their root's).
    pub fn allocator(&self) -> &Allocator {
        match &self.root().inner.origin {
            Origin::Root { allocator, .. } => allocator.get(),
            Origin::Share { .. } => unreachable!("shares always point at a root"),
        }
    }

    /// The parent (always the root) of a share; `None` for a root.
    #[inline]
    pub fn parent(&self) -> Option<&Memory> {
        match &self.inner.origin {
            Origin::Root { .. } => None,
            Origin::Share { root } => Some(root),
        }
    }

    /// The root: the parent of a share, or `self`.
    #[inline]
    pub fn root(&self) -> &Memory {
        self.parent().unwrap_or(self)
    }

    /// Size of the whole block in bytes. Never changes.
    #[inline]
    pub fn maxsize(&self) -> usize {
        self.inner.maxsize
    }

    /// Alignment mask of the block.
    pub fn align(&self) -> usize {
        self.inner.align as usize
    }

    /// Offset of the visible region in the block.
    #[inline]
    pub fn offset(&self) -> usize {
        self.inner.region.get().0
    }

    /// Size of the visible region.
    #[inline]
    pub fn size(&self) -> usize {
        self.inner.region.get().1
    }

    /// `(size, offset, maxsize)`, read consistently (`gst_memory_get_sizes`).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let (offset, size) = self.inner.region.get();
        (size, offset, self.inner.maxsize)
    }

    /// The memory flags (with [`MemoryFlags::LOCKABLE`] always set).
    #[inline]
    pub fn flags(&self) -> MemoryFlags {
        MemoryFlags::from_bits_retain(self.inner.flags.load(Ordering::Acquire))
    }

    /// Whether this memory is flagged READONLY (every share is).
    #[inline]
    pub fn is_readonly(&self) -> bool {
        self.flags().contains(MemoryFlags::READONLY)
    }

    /// Whether the allocator's memory type is `mem_type` (`gst_memory_is_type`).
    pub fn is_type(&self, mem_type: &str) -> bool {
        self.allocator().mem_type() == mem_type
    }

    /// The number of handles to this memory (shares hold one on their root).
    pub fn ref_count(&self) -> usize {
        Counted::count(&self.inner)
    }

    /// Run `hook` when this root block's last handle is gone (this one,
    /// every clone and every share), with the block's remains: a pool takes
    /// its buffer back, a receiver tells the sender. It runs on the thread
    /// that drops the last handle, so it must not block.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use mediamem::Memory;
    ///
    /// let back = Arc::new(Mutex::new(None));
    /// let mut mem = Memory::with_size(64)?;
    /// let slot = back.clone();
    /// mem.set_on_block_free(Arc::new(move |freed| {
    ///     *slot.lock().unwrap() = freed.into_memory(0, 64).ok();
    /// }))?;
    /// let share = mem.share(..8)?;
    /// drop(mem);
    /// assert!(back.lock().unwrap().is_none(), "the share still holds it");
    /// drop(share);
    /// assert!(back.lock().unwrap().is_some(), "the same block, again");
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Unsupported`] when this is a share, another handle exists,
    /// or a hook is already set.
    pub fn set_on_block_free(&mut self, hook: BlockFreeHook) -> Result<()> {
        let mem_type = self.allocator().mem_type().to_owned();
        let refuse = move |why: &'static str| Error::Unsupported {
            mem_type,
            operation: why,
        };
        let inner = match Counted::get_mut(&mut self.inner) {
            Some(inner) => inner,
            None => return Err(refuse("set_on_block_free with other handles alive")),
        };
        match &mut inner.origin {
            Origin::Root { extra, .. } => {
                let extra = extra.get_or_insert_with(Box::default);
                if extra.on_free.is_some() {
                    return Err(refuse("a second set_on_block_free"));
                }
                extra.on_free = Some(hook);
                Ok(())
            }
            Origin::Share { .. } => Err(refuse("set_on_block_free on a share")),
        }
    }

    /// Take back the hook of [`set_on_block_free`](Memory::set_on_block_free)
    /// (`None` when there is none, or when this is not the only handle of
    /// a root: the hook then stays).
    pub fn take_on_block_free(&mut self) -> Option<BlockFreeHook> {
        match &mut Counted::get_mut(&mut self.inner)?.origin {
            Origin::Root { extra, .. } => extra.as_mut()?.on_free.take(),
            Origin::Share { .. } => None,
        }
    }

    /// Whether both handles are the same memory.
    pub fn ptr_eq(&self, other: &Memory) -> bool {
        Counted::ptr_eq(&self.inner, &other.inner)
    }

    /// GStreamer's writability: the share count is at most one. The
    /// reference count is not looked at, and READONLY memory can be writable
    /// in this sense (it can be resized but not write-mapped).
    pub fn is_writable(&self) -> bool {
        self.lock_word().is_writable()
    }

    /// The lock word as GStreamer's reads: bits 0–7 access mode, 8–15 map
    /// count, 16–31 share count; the mode is 0 whenever the map count is.
    /// For diagnostics and tests.
    pub fn lock_state(&self) -> u32 {
        self.lock_word().get()
    }

    /// This memory's GStreamer lock word: its own, or (a root that claimed
    /// it) the GStreamer half of its alias's word.
    #[inline(always)]
    fn lock_word(&self) -> &LockWord {
        match &self.inner.origin {
            Origin::Root { extra: Some(e), .. } if e.owns_alias_word => {
                e.alias.as_ref().map_or(&self.inner.lock, BlockAlias::word)
            }
            _ => &self.inner.lock,
        }
    }

    /// The backend of the root, if it is a `T` (downcast to the concrete
    /// memory kind).
    pub fn backend<T: MemoryBackend>(&self) -> Option<&T> {
        let any: &dyn std::any::Any = self.root_backend();
        any.downcast_ref::<T>()
    }

    /// The root's backend and static block address (0 when it has none).
    #[inline]
    fn root_parts(&self) -> (&dyn MemoryBackend, usize) {
        match &self.root().inner.origin {
            Origin::Root {
                backend,
                static_base,
                ..
            } => (backend.get(), *static_base),
            Origin::Share { .. } => unreachable!("shares always point at a root"),
        }
    }

    /// The root's backend (every share reaches its root's).
    pub fn root_backend(&self) -> &dyn MemoryBackend {
        self.root_parts().0
    }

    /// Take the lock for `flags` on this memory and the byte borrow on its
    /// block: one CAS for a root (both live in its word), two for a share.
    /// `Ok(false)`: nothing needed taking.
    ///
    /// That is a read map of a READONLY root that no other root aliases:
    /// nothing can ever write its bytes (READONLY is set when a memory is
    /// made and never cleared, every WRITE map or lock of it is refused, and
    /// no alias gives another, writable root), so a read map needs neither
    /// the lock word nor a byte borrow. Its `lock_state()` stays 0 while such
    /// maps are alive (GStreamer's would count them), and they are not
    /// limited to 255 at once; every success and failure is otherwise the
    /// same.
    #[inline(always)]
    fn lock_for_map(&self, flags: LockFlags, borrow: Borrow) -> Result<bool> {
        let readonly = self.is_readonly();
        match &self.inner.origin {
            Origin::Root { .. } => {
                let Some((alias, owns_word)) = self.root_alias_and_claim() else {
                    if readonly && !flags.contains(LockFlags::WRITE) {
                        return Ok(false);
                    }
                    if flags == LockFlags::READ && borrow == Borrow::Shared {
                        // `map_readable`: constants here, so this is all
                        // that is left of the test once inlined.
                        return self.inner.lock.lock_read_shared().map(|()| true);
                    }
                    return self
                        .inner
                        .lock
                        .lock_borrow(flags, readonly, borrow)
                        .map(|()| true);
                };
                alias
                    .lock_for_map(&self.inner.lock, owns_word, flags, readonly, borrow)
                    .map(|()| true)
            }
            Origin::Share { root } => {
                self.inner.lock.lock(flags, readonly)?;
                if let Err(e) = root.borrow_word().borrow(borrow) {
                    self.unlock_map(flags, Borrow::None);
                    return Err(e);
                }
                Ok(true)
            }
        }
    }

    /// Undo [`lock_for_map`](Memory::lock_for_map).
    #[inline(always)]
    fn unlock_map(&self, flags: LockFlags, borrow: Borrow) {
        match &self.inner.origin {
            Origin::Root { .. } => match self.root_alias_and_claim() {
                None => self.inner.lock.unlock_release(flags, borrow),
                Some((alias, owns_word)) => {
                    alias.unlock_map(&self.inner.lock, owns_word, flags, borrow)
                }
            },
            Origin::Share { root } => {
                root.borrow_word().release(borrow);
                self.inner.lock.unlock(flags);
            }
        }
    }

    /// The word that holds the byte borrows of this root's block: the
    /// alias's when the storage has one, the root's own otherwise.
    #[inline(always)]
    fn borrow_word(&self) -> &LockWord {
        match self.root_alias() {
            Some(alias) => alias.word(),
            None => &self.inner.lock,
        }
    }

    /// The alias of this memory if it is a root with one.
    #[inline(always)]
    fn root_alias(&self) -> Option<&BlockAlias> {
        self.root_alias_and_claim().map(|(alias, _)| alias)
    }

    /// The alias of this memory if it is a root with one, and whether the
    /// root's lock word is the alias word's GStreamer half.
    #[inline(always)]
    fn root_alias_and_claim(&self) -> Option<(&BlockAlias, bool)> {
        match &self.inner.origin {
            Origin::Root { extra: None, .. } | Origin::Share { .. } => None,
            Origin::Root { extra: Some(e), .. } => e.alias.as_ref().map(|a| (a, e.owns_alias_word)),
        }
    }

    /// The byte-borrow rule this memory's block shares with other roots of
    /// the same storage (fd-backed memory), if any.
    pub fn block_alias(&self) -> Option<&BlockAlias> {
        self.root().root_alias()
    }

    fn clear_flags(&self, flags: MemoryFlags) {
        self.inner.flags.fetch_and(!flags.bits(), Ordering::AcqRel);
    }

    // ----------------------------------------------------------------
    // Locking
    // ----------------------------------------------------------------

    /// Take a lock on the lock word (`gst_memory_lock`); it is released when
    /// the guard drops. Containers take [`LockFlags::EXCLUSIVE`].
    ///
    /// ```
    /// use mediamem::{LockFlags, Memory};
    /// let mem = Memory::with_size(10)?;
    /// let a = mem.lock(LockFlags::EXCLUSIVE)?;
    /// let b = mem.lock(LockFlags::EXCLUSIVE)?;
    /// assert!(!mem.is_writable()); // two holders
    /// drop((a, b));
    /// assert!(mem.is_writable());
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    pub fn lock(&self, flags: LockFlags) -> Result<LockGuard<'_>> {
        self.lock_word().lock(flags, self.is_readonly())?;
        Ok(LockGuard {
            memory: self,
            flags,
        })
    }

    // ----------------------------------------------------------------
    // Mapping
    // ----------------------------------------------------------------

    /// Whether this handle alone reaches the block and nothing holds it:
    /// the only handle of a root that is not read-only, with no lock, map or
    /// borrow in its word. With `&mut self` that stays true for the borrow,
    /// so a map then needs no lock word at all. A root whose storage other
    /// roots can reach (a [`BlockAlias`]: fd-backed memory) never owns its
    /// block this way: its maps take the lock word and the alias's rule.
    #[inline]
    fn owns_block(&mut self) -> bool {
        Counted::is_unique(&self.inner)
            && matches!(self.inner.origin, Origin::Root { .. })
            && self.root_alias().is_none()
            && self.inner.lock.is_idle()
            && !self.is_readonly()
    }

    #[inline]
    fn map_with(&self, flags: MapFlags, borrow: Borrow) -> Result<Mapping> {
        self.map_locked(flags, borrow, true)
    }

    /// Map with `flags`; `locked == false` (only from `map_mut`, after
    /// `owns_block`) skips the lock word.
    #[inline(always)]
    fn map_locked(&self, flags: MapFlags, borrow: Borrow, locked: bool) -> Result<Mapping> {
        if flags.contains(MapFlags::from_bits_retain(LockFlags::EXCLUSIVE.bits())) {
            return Err(Error::InvalidMapFlags {
                flags: flags.bits(),
                why: "bit 2 is the lock EXCLUSIVE bit",
            });
        }
        let lock_flags = flags.lock_flags();
        if lock_flags.is_empty() {
            return Err(Error::InvalidMapFlags {
                flags: flags.bits(),
                why: "neither READ nor WRITE",
            });
        }
        let locked = locked && self.lock_for_map(lock_flags, borrow)?;
        let (backend, static_base) = self.root_parts();
        let (base, backend_mapped) = match NonNull::new(static_base as *mut u8) {
            Some(base) => (base, false),
            None => match backend.map(self.inner.maxsize, flags) {
                Ok(base) => (base, true),
                Err(e) => {
                    // A backend map failure is an ordinary result: no log
                    // above debug (GStreamer's
                    // test_no_error_and_no_warning_on_map_failure).
                    log::debug!("map of {} memory failed: {e}", self.allocator().mem_type());
                    if locked {
                        self.unlock_map(lock_flags, borrow);
                    }
                    return Err(e);
                }
            },
        };
        let (offset, size) = self.inner.region.get();
        Ok(Mapping {
            base,
            offset,
            size,
            flags,
            borrow,
            locked,
            backend_mapped,
            _keep: flags.contains(MapFlags::REF_MEMORY).then(|| self.clone()),
        })
    }

    /// Undo `map_with`. Called exactly once per mapping by the guards.
    #[inline(always)]
    fn unmap(&self, mapping: &Mapping) {
        if mapping.backend_mapped {
            self.root_parts().0.unmap(mapping.flags);
        }
        if mapping.locked {
            self.unlock_map(mapping.flags.lock_flags(), mapping.borrow);
        }
    }

    /// [`unmap`](Memory::unmap) out of line, for guards that hold a lock or
    /// a backend map (the owned heap map holds neither and calls nothing).
    #[inline(never)]
    fn unmap_held(&self, mapping: &Mapping) {
        self.unmap(mapping);
    }

    /// Map for reading: a guard that derefs to the visible bytes.
    ///
    /// # Errors
    /// When the lock word refuses READ (the memory is mapped WRITE-only),
    /// when a writable guard holds the bytes, or when the backend cannot map.
    #[inline]
    pub fn map_readable(&self) -> Result<MemoryMap<'_, Readable>> {
        Ok(MemoryMap::new(
            self,
            self.map_with(MapFlags::READ, Borrow::Shared)?,
        ))
    }

    /// Map for writing: a guard that derefs mutably to the visible bytes.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] for read-only memory (every share),
    /// [`Error::Shared`] when the memory has two or more holders,
    /// [`Error::LockConflict`] when it is mapped READ-only, [`Error::Aliased`]
    /// when any other guard holds the bytes.
    #[inline]
    pub fn map_writable(&self) -> Result<MemoryMap<'_, Writable>> {
        Ok(MemoryMap::new(
            self,
            self.map_with(MapFlags::WRITE, Borrow::Exclusive)?,
        ))
    }

    /// Map for writing through a mutable handle: the fast path for a
    /// producer filling a memory it owns (fresh from an allocator or a
    /// pool).
    ///
    /// When this handle is the only reference to a root memory and nothing
    /// holds it (no clone, share, lock or map), `&mut self` proves that no
    /// other map can exist until the guard drops, so the map takes no lock
    /// and costs no atomic read-modify-write. The guard does not hand the
    /// memory out, so that stays true while it lives. Otherwise this is
    /// exactly [`map_writable`](Memory::map_writable), with its errors.
    ///
    /// ```
    /// use mediamem::Memory;
    /// let mut mem = Memory::with_size(4)?;
    /// mem.map_mut()?.copy_from_slice(b"abcd");
    /// let other = mem.clone();
    /// // Two handles now: the ordinary, locked path (which still allows it,
    /// // as GStreamer does: writability ignores the reference count).
    /// mem.map_mut()?[0] = b'A';
    /// assert_eq!(&*other.map_readable()?, b"Abcd");
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`map_writable`](Memory::map_writable).
    #[inline(always)]
    pub fn map_mut(&mut self) -> Result<MemoryMapMut<'_>> {
        // Small enough to inline at every call site: the common case, the
        // only handle of a heap block, is a few plain loads; anything else
        // is one out-of-line call.
        match self.owned_heap_base() {
            Some(base) => {
                let (offset, size) = self.inner.region.get();
                Ok(MemoryMapMut::new(
                    self,
                    Mapping {
                        base,
                        offset,
                        size,
                        flags: MapFlags::WRITE,
                        borrow: Borrow::Exclusive,
                        locked: false,
                        backend_mapped: false,
                        _keep: None,
                    },
                ))
            }
            None => self.map_mut_slow(),
        }
    }

    /// `map_mut`'s fast path: the address of a block this handle owns
    /// ([`owns_block`](Memory::owns_block)) whose bytes are always at one
    /// address (system memory), so that neither the lock word nor the
    /// backend needs touching, now or at unmap. `None`: take the slow path.
    /// (A pointer, not the whole mapping, so that nothing large is moved
    /// through an `Option`.)
    #[inline(always)]
    fn owned_heap_base(&mut self) -> Option<NonNull<u8>> {
        if !Counted::is_unique(&self.inner) {
            return None;
        }
        let Origin::Root {
            static_base, extra, ..
        } = &self.inner.origin
        else {
            return None;
        };
        let base = NonNull::new(*static_base as *mut u8)?;
        if extra.as_ref().is_some_and(|e| e.alias.is_some())
            || !self.inner.lock.is_idle()
            || self.is_readonly()
        {
            return None;
        }
        Some(base)
    }

    /// Everything else `map_mut` does: an owned block without a static
    /// address (its backend maps it), or the ordinary locked map.
    #[cold]
    #[inline(never)]
    fn map_mut_slow(&mut self) -> Result<MemoryMapMut<'_>> {
        let locked = !self.owns_block();
        let mapping = self.map_locked(MapFlags::WRITE, Borrow::Exclusive, locked)?;
        Ok(MemoryMapMut::new(self, mapping))
    }

    /// Map with explicit flags (`gst_memory_map`). With WRITE the guard
    /// gives `&mut [u8]` through [`MemoryMap::as_mut_slice`]. Custom flags
    /// (`>= MapFlags::LAST`) reach the backend; [`MapFlags::REF_MEMORY`]
    /// makes the guard hold its own reference.
    pub fn map(&self, flags: MapFlags) -> Result<MemoryMap<'_, Dynamic>> {
        Ok(MemoryMap::new(
            self,
            self.map_with(flags, Borrow::for_flags(flags))?,
        ))
    }

    /// Map through the lock word only, exactly as `gst_memory_map`: WRITE
    /// maps nest, a root can be mapped WRITE while its share is mapped READ.
    /// The guard hands out raw pointers, never slices; dereferencing them is
    /// `unsafe` and the caller must rule out data races with other mappings.
    #[inline]
    pub fn map_raw(&self, flags: MapFlags) -> Result<RawMap<'_>> {
        Ok(RawMap::new(self, self.map_with(flags, Borrow::None)?))
    }

    /// Map for reading, keeping the memory in the guard. On failure the
    /// memory comes back inside the error.
    pub fn into_mapped_readable(self) -> Result<MappedMemory<Readable>, IntoMappedError> {
        self.into_mapped_with(MapFlags::READ, Borrow::Shared)
    }

    /// Map for writing, keeping the memory in the guard. On failure the
    /// memory comes back inside the error.
    pub fn into_mapped_writable(self) -> Result<MappedMemory<Writable>, IntoMappedError> {
        self.into_mapped_with(MapFlags::WRITE, Borrow::Exclusive)
    }

    /// Map with `flags`, keeping the memory in the guard. On failure the
    /// memory comes back inside the error.
    pub fn into_mapped(self, flags: MapFlags) -> Result<MappedMemory<Dynamic>, IntoMappedError> {
        self.into_mapped_with(flags, Borrow::for_flags(flags))
    }

    fn into_mapped_with<M: MapMode>(
        self,
        flags: MapFlags,
        borrow: Borrow,
    ) -> Result<MappedMemory<M>, IntoMappedError> {
        match self.map_with(flags, borrow) {
            Ok(mapping) => Ok(MappedMemory::new(self, mapping)),
            Err(error) => Err(IntoMappedError {
                memory: self,
                error,
            }),
        }
    }

    /// Map with `flags`, or, if that fails, copy and map the copy
    /// (`gst_memory_make_mapped`). The memory is consumed either way.
    ///
    /// ```
    /// use mediamem::{MapFlags, Memory};
    /// let ro = Memory::from_slice(b"read-only bytes");
    /// let mut mapped = ro.clone().make_mapped(MapFlags::WRITE)?;
    /// mapped.as_mut_slice().unwrap()[0] = b'R';
    /// assert!(!mapped.memory().ptr_eq(&ro)); // a copy was made
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    pub fn make_mapped(self, flags: MapFlags) -> Result<MappedMemory<Dynamic>> {
        match self.into_mapped(flags) {
            Ok(mapped) => Ok(mapped),
            Err(IntoMappedError { memory, .. }) => {
                let copy = memory.copy()?;
                drop(memory);
                copy.into_mapped(flags).map_err(|e| e.error)
            }
        }
    }

    // ----------------------------------------------------------------
    // Share
    // ----------------------------------------------------------------

    /// A zero-copy, read-only view of `range` of the visible bytes
    /// (`gst_memory_share`). Its parent is the root.
    ///
    /// # Errors
    /// [`Error::OutOfRange`], [`Error::NoShare`], [`Error::Shared`] when the
    /// memory is mapped for writing, [`Error::Unsupported`] when the backend
    /// cannot share.
    pub fn share(&self, range: impl RangeBounds<usize>) -> Result<Memory> {
        let (offset, size) = self.inner.region.get();
        let (start, end) = resolve_range(range, size, "visible bytes")?;
        self.share_abs(offset + start, end - start)
    }

    /// Like [`share`](Memory::share), with `range` relative to the whole
    /// block (`0..maxsize`), so prefix and padding can be reached.
    pub fn share_maxsize(&self, range: impl RangeBounds<usize>) -> Result<Memory> {
        let (start, end) = resolve_range(range, self.inner.maxsize, "maxsize")?;
        self.share_abs(start, end - start)
    }

    fn share_abs(&self, offset: usize, size: usize) -> Result<Memory> {
        if self.flags().contains(MemoryFlags::NO_SHARE) {
            return Err(Error::NoShare);
        }
        let root = self.root();
        if !root.root_backend().can_share() {
            return Err(Error::Unsupported {
                mem_type: self.allocator().mem_type().to_owned(),
                operation: "share",
            });
        }
        let made = |root: &Memory| {
            let (root_offset, root_size) = root.inner.region.get();
            let mut flags = root.flags() | MemoryFlags::READONLY;
            if offset > root_offset {
                flags.remove(MemoryFlags::ZERO_PREFIXED);
            }
            if offset + size < root_offset + root_size {
                flags.remove(MemoryFlags::ZERO_PADDED);
            }
            Memory {
                inner: Counted::new(Inner {
                    origin: Origin::Share { root: root.clone() },
                    maxsize: self.inner.maxsize,
                    align: self.inner.align,
                    flags: AtomicU32::new(flags.bits()),
                    lock: LockWord::default(),
                    region: Region::new(offset, size),
                }),
            }
        };
        if self.parent().is_none() {
            // Sharing a root: gst_memory_share's two temporary exclusive
            // locks, the share's hold on its parent and the two unlocks all
            // land on this one word; take the net hold in one step, with the
            // same checks in the same order.
            self.lock_word().share_hold()?;
            return Ok(made(root));
        }
        // A share of a share: two exclusive locks on it, as
        // gst_memory_share (the second is what fails while it is mapped for
        // writing), then the hold on the root.
        let x = LockFlags::EXCLUSIVE;
        self.inner.lock.lock(x, false)?;
        if let Err(e) = self.inner.lock.lock(x, false) {
            self.unlock_exclusive();
            return Err(e);
        }
        let result = root.lock_word().lock(x, false).map(|()| made(root));
        self.unlock_exclusive();
        self.unlock_exclusive();
        result
    }

    fn unlock_exclusive(&self) {
        self.inner.lock.unlock(LockFlags::EXCLUSIVE);
    }

    // ----------------------------------------------------------------
    // Copy
    // ----------------------------------------------------------------

    /// A writable copy of the visible bytes (`gst_memory_copy(mem, 0, -1)`).
    pub fn copy(&self) -> Result<Memory> {
        self.copy_range(..)
    }

    /// A writable copy of `range` of the visible bytes.
    ///
    /// System memory copies into a new system block (like GStreamer, without
    /// taking the lock word). Other kinds map for reading and allocate from
    /// their own allocator, or from the default one when the allocator is
    /// CUSTOM_ALLOC or NO_COPY (fd, shm, dmabuf: copies are system memory).
    pub fn copy_range(&self, range: impl RangeBounds<usize>) -> Result<Memory> {
        let (offset, size) = self.inner.region.get();
        let (start, end) = resolve_range(range, size, "visible bytes")?;
        self.copy_abs(offset + start, end - start)
    }

    /// Like [`copy_range`](Memory::copy_range), with `range` relative to the
    /// whole block.
    pub fn copy_range_maxsize(&self, range: impl RangeBounds<usize>) -> Result<Memory> {
        let (start, end) = resolve_range(range, self.inner.maxsize, "maxsize")?;
        self.copy_abs(start, end - start)
    }

    fn copy_abs(&self, offset: usize, size: usize) -> Result<Memory> {
        if let Some(result) = self.root_backend().copy(self, offset, size) {
            return result;
        }
        // Generic copy (GStreamer's fallback copy).
        let src = self.map_with(MapFlags::READ, Borrow::Shared)?;
        let src = RawMap::new(self, src);
        let own = self.allocator();
        let params = AllocationParams {
            align: self.inner.align as usize,
            ..AllocationParams::default()
        };
        let redirect = own
            .flags()
            .intersects(AllocatorFlags::CUSTOM_ALLOC | AllocatorFlags::NO_COPY);
        let target = if redirect {
            Allocator::default_allocator()
        } else {
            own.clone()
        };
        // SAFETY: `src` holds a shared borrow of the source block, so no
        // `&mut` to it exists; `offset + size <= maxsize` was checked by the
        // caller and the mapping covers the whole block.
        let bytes = unsafe { src.block_slice(offset, size) };
        if target.is::<system::SystemAllocator>() {
            return system::copy_into_sysmem(bytes, self.inner.align as usize);
        }
        let copy = match target.alloc(size, Some(&params)) {
            Err(Error::Unsupported { .. }) if !redirect => {
                // No plain alloc (an import-only allocator): the default.
                let default = Allocator::default_allocator();
                if default.is::<system::SystemAllocator>() {
                    return system::copy_into_sysmem(bytes, self.inner.align as usize);
                }
                default.alloc(size, Some(&params))?
            }
            other => other?,
        };
        // `alloc` checked the copy has at least `size` visible bytes; a
        // custom allocator may give more: keep `size` of them.
        if copy.size() != size {
            copy.resize(..size)?;
        }
        copy.map_writable()?.copy_from_slice(bytes);
        Ok(copy)
    }

    /// Copy `size` bytes at block `offset` of a memory whose backend can
    /// reach its bytes without mapping (`base`) into a new system block,
    /// as GStreamer's system-memory copy does: no lock-word map is taken, so
    /// it works while the source is mapped through [`Memory::map_raw`].
    pub(crate) fn copy_unmapped(
        &self,
        base: std::ptr::NonNull<u8>,
        offset: usize,
        size: usize,
    ) -> Result<Memory> {
        let root_lock = self.root().borrow_word();
        root_lock.borrow(Borrow::Shared)?;
        // SAFETY: the backend guarantees `base` points at `maxsize`
        // initialised bytes for the life of the block; the caller checked
        // `offset + size <= maxsize`; the shared borrow taken above
        // excludes a live `&mut` into the block until it is released below.
        let src = unsafe { std::slice::from_raw_parts(base.as_ptr().add(offset), size) };
        let result = system::copy_into_sysmem(src, self.inner.align as usize);
        root_lock.release(Borrow::Shared);
        result
    }

    // ----------------------------------------------------------------
    // Resize
    // ----------------------------------------------------------------

    /// Narrow the visible region to `range` of the current visible bytes.
    ///
    /// ```
    /// use mediamem::Memory;
    /// let mem = Memory::with_size(100)?;
    /// mem.resize(10..50)?;
    /// assert_eq!((mem.offset(), mem.size()), (10, 40));
    /// mem.resize_maxsize(0..100)?;        // grow back
    /// assert_eq!((mem.offset(), mem.size()), (0, 100));
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotWritable`] when the memory is shared, [`Error::OutOfRange`].
    pub fn resize(&self, range: impl RangeBounds<usize>) -> Result<()> {
        // Resolve against the region seen inside the update, so a
        // concurrent resize cannot slip between reading and writing.
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        self.resize_with(|offset, size| {
            let (s, e) = resolve_range(bounds, size, "visible bytes")?;
            Ok((offset + s, e - s))
        })
    }

    /// Set the visible region to `range` of the whole block; it can grow
    /// back into the prefix and padding.
    pub fn resize_maxsize(&self, range: impl RangeBounds<usize>) -> Result<()> {
        let (start, end) = resolve_range(range, self.inner.maxsize, "maxsize")?;
        self.resize_with(|_, _| Ok((start, end - start)))
    }

    /// GStreamer's `gst_memory_resize(mem, offset, size)`: move the offset by
    /// the signed `delta` and set the size.
    ///
    /// # Errors
    /// [`Error::NotWritable`], [`Error::NegativeOffset`] when the offset
    /// would go below zero, [`Error::OutOfRange`] past `maxsize`.
    pub fn resize_by(&self, delta: isize, size: usize) -> Result<()> {
        self.resize_with(|offset, _| {
            let new_offset = offset
                .checked_add_signed(delta)
                .ok_or(Error::NegativeOffset { offset, delta })?;
            Ok((new_offset, size))
        })
    }

    fn resize_with(&self, f: impl FnOnce(usize, usize) -> Result<(usize, usize)>) -> Result<()> {
        let maxsize = self.inner.maxsize;
        self.inner.region.update(|offset, size| {
            if !self.is_writable() {
                return Err(Error::NotWritable {
                    state: self.lock_state(),
                });
            }
            let (new_offset, new_size) = f(offset, size)?;
            let end = new_offset
                .checked_add(new_size)
                .ok_or(Error::SizeOverflow {
                    what: "offset + size",
                })?;
            if end > maxsize {
                return Err(Error::OutOfRange {
                    start: new_offset,
                    end,
                    bound: maxsize,
                    what: "maxsize",
                });
            }
            let mut cleared = MemoryFlags::empty();
            if new_offset > offset {
                cleared |= MemoryFlags::ZERO_PREFIXED;
            }
            // Signed comparison of the visible end: GStreamer's unsigned
            // `offset + size < mem.size` misses a leftward move with a
            // negative delta.
            if end < offset + size {
                cleared |= MemoryFlags::ZERO_PADDED;
            }
            self.clear_flags(cleared);
            Ok((new_offset, new_size, ()))
        })
    }

    // ----------------------------------------------------------------
    // Span
    // ----------------------------------------------------------------

    /// If `self` and `other` are shares of one root, of the same allocator,
    /// and `other` starts where `self` ends, the offset of `self` in the
    /// root (`gst_memory_is_span`). Merge the two with
    /// `root.share_maxsize(root.offset() + offset..)`.
    ///
    /// ```
    /// use mediamem::Memory;
    /// let mem = Memory::with_size(4)?;
    /// let (a, b) = (mem.share(0..2)?, mem.share(2..4)?);
    /// assert_eq!(a.is_span(&b), Some(0));
    /// assert_eq!(b.is_span(&a), None);
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    pub fn is_span(&self, other: &Memory) -> Option<usize> {
        if !self.allocator().ptr_eq(other.allocator()) {
            return None;
        }
        let (p1, p2) = (self.parent()?, other.parent()?);
        if !p1.ptr_eq(p2) {
            return None;
        }
        let first = self.inner.region.get();
        if !p1.root_backend().is_span(first, other.inner.region.get()) {
            return None;
        }
        first.0.checked_sub(p1.offset())
    }
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (size, offset, maxsize) = self.sizes();
        f.debug_struct("Memory")
            .field("mem_type", &self.allocator().mem_type())
            .field("offset", &offset)
            .field("size", &size)
            .field("maxsize", &maxsize)
            .field("align", &self.align())
            .field("flags", &self.flags())
            .field("lock_state", &format_args!("{:#x}", self.lock_state()))
            .field("is_share", &self.parent().is_some())
            .finish()
    }
}

impl AsRef<Memory> for Memory {
    fn as_ref(&self) -> &Memory {
        self
    }
}

/// A held lock from [`Memory::lock`]; released on drop.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    memory: &'a Memory,
    flags: LockFlags,
}

impl LockGuard<'_> {
    /// The flags this guard holds.
    pub fn flags(&self) -> LockFlags {
        self.flags
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.memory.lock_word().unlock(self.flags);
    }
}

/// Whether the visible regions `first` and `second` (offset, size) are
/// adjacent in one block: the span rule of system and fd memory.
pub(crate) fn regions_adjacent(first: (usize, usize), second: (usize, usize)) -> bool {
    first.0.checked_add(first.1) == Some(second.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Memory>();
        check::<MemoryMap<'static, Readable>>();
        check::<MemoryMap<'static, Writable>>();
        check::<MappedMemory<Writable>>();
        check::<MemoryMapMut<'static>>();
    }

    #[test]
    fn resolve_bounds() {
        assert_eq!(resolve_range(.., 10, "t").unwrap(), (0, 10));
        assert_eq!(resolve_range(2..=3, 10, "t").unwrap(), (2, 4));
        assert_eq!(resolve_range(10.., 10, "t").unwrap(), (10, 10));
        assert!(resolve_range(11.., 10, "t").is_err());
        let (lo, hi) = (5, 4);
        assert!(resolve_range(lo..hi, 10, "t").is_err());
        assert!(resolve_range(..=usize::MAX, 10, "t").is_err());
    }

    #[test]
    fn roots_keep_their_allocator_static_or_owned() {
        let sys = Memory::with_size(8).unwrap();
        assert!(sys.allocator().ptr_eq(Allocator::system_ref()));
        assert!(sys
            .share(..4)
            .unwrap()
            .allocator()
            .ptr_eq(&Allocator::system()));
        let other = Allocator::new(system::SystemAllocator);
        let m = other.alloc(8, None).unwrap();
        assert!(m.allocator().ptr_eq(&other) && !m.allocator().ptr_eq(&Allocator::system()));
        // A freed block hands its allocator on to the memory made of it.
        for (mut mem, alloc) in [(sys, Allocator::system()), (m, other)] {
            let back = std::sync::Arc::new(std::sync::Mutex::new(None));
            let slot = back.clone();
            mem.set_on_block_free(std::sync::Arc::new(move |freed: FreedBlock| {
                *slot.lock().unwrap() = Some(freed.into_memory(0, 8).unwrap());
            }))
            .unwrap();
            drop(mem);
            let again = back.lock().unwrap().take().unwrap();
            assert!(again.allocator().ptr_eq(&alloc));
        }
    }

    #[test]
    fn a_memory_fits_two_cache_lines() {
        // The reference count (8 bytes) and the memory together: one
        // allocator size class and two cache lines for every memory.
        assert!(
            std::mem::size_of::<Inner>() + 8 <= 128,
            "Inner is {} bytes",
            std::mem::size_of::<Inner>()
        );
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn align_masks_past_4_gib_are_refused() {
        use crate::allocator::AllocatorImpl;
        let parts = system::SystemAllocator
            .alloc(16, &AllocationParams::default())
            .unwrap()
            .align((1usize << 33) - 1);
        assert!(matches!(
            Memory::from_parts(&Allocator::system(), parts),
            Err(Error::InvalidAlign { .. })
        ));
    }

    #[test]
    fn guards_release_borrows() {
        let m = Memory::with_size(8).unwrap();
        {
            let _r1 = m.map_readable().unwrap();
            let _r2 = m.map_readable().unwrap();
        }
        assert!(m.inner.lock.borrows_free());
        drop(m.map_writable().unwrap());
        assert!(m.inner.lock.borrows_free());
        let s = m.share(..).unwrap();
        drop(s.map_readable().unwrap());
        assert!(m.inner.lock.borrows_free());
        assert_eq!(m.lock_state(), 0x10000, "the share holds the root");
        drop(s);
        assert_eq!(m.lock_state(), 0);
    }
}
