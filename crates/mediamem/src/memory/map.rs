//! Map guards: unmapping happens on drop, so a double unmap cannot be
//! written.

use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use super::flags::MapFlags;
use super::region::Borrow;
use super::Memory;
use crate::error::Error;

/// One live map: what `Memory::map_with` produced and `Memory::unmap`
/// undoes.
pub(crate) struct Mapping {
    /// Start of the whole block.
    pub(crate) base: NonNull<u8>,
    /// Visible region at map time (a later resize does not affect it).
    pub(crate) offset: usize,
    pub(crate) size: usize,
    pub(crate) flags: MapFlags,
    pub(crate) borrow: Borrow,
    /// Whether the map holds the lock word (false only for `map_mut` of an
    /// owned block, and for read maps of a READONLY root that no other
    /// root aliases, which nothing can write).
    pub(crate) locked: bool,
    /// Whether the backend's `map` was called (the block has no static
    /// address), so its `unmap` must be.
    pub(crate) backend_mapped: bool,
    /// The extra reference of [`MapFlags::REF_MEMORY`].
    pub(crate) _keep: Option<Memory>,
}

impl Mapping {
    #[inline]
    fn data(&self) -> *mut u8 {
        // SAFETY: offset + size <= maxsize was true when the mapping was made
        // (the region is read consistently), so this stays inside the block.
        unsafe { self.base.as_ptr().add(self.offset) }
    }

    /// The visible bytes.
    #[inline]
    fn slice(&self) -> &[u8] {
        // SAFETY: the backend keeps the block's initialised bytes valid until
        // unmap (MemoryBackend contract), and every slice-giving guard holds
        // at least a shared borrow of the block, or (an unlocked `map_mut`)
        // the only handle to it, mutably borrowed, or (an unlocked read map)
        // a READONLY root without alias, whose bytes no map, lock or other
        // root can ever write, so no `&mut` aliases them. (RawMap never
        // calls this.)
        unsafe { std::slice::from_raw_parts(self.data(), self.size) }
    }

    /// The visible bytes, mutably, if this is a WRITE map.
    #[inline]
    fn slice_mut(&mut self) -> Option<&mut [u8]> {
        if !self.flags.contains(MapFlags::WRITE) {
            return None;
        }
        // SAFETY: a WRITE map made the bytes writable (MemoryBackend
        // contract); slice-giving WRITE maps hold the block's exclusive
        // borrow, or (an unlocked `map_mut`) the only handle to the block,
        // mutably borrowed, with no way to reach it from the guard; and
        // `&mut self` makes this the only slice from this mapping.
        Some(unsafe { std::slice::from_raw_parts_mut(self.data(), self.size) })
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The access a guard was mapped with: [`Readable`], [`Writable`],
/// [`Dynamic`] (flags chosen at run time) or [`Owned`].
pub trait MapMode: sealed::Sealed + 'static {}

/// Mapped for reading: the guard derefs to `&[u8]`.
#[derive(Debug)]
pub enum Readable {}
/// Mapped for writing: the guard also derefs to `&mut [u8]`.
#[derive(Debug)]
pub enum Writable {}
/// Mapped with run-time [`MapFlags`]: `as_mut_slice` answers `Some` when
/// they include WRITE.
#[derive(Debug)]
pub enum Dynamic {}
/// Mapped for writing through the only handle ([`Memory::map_mut`]): the
/// guard derefs mutably, may hold no lock, and so never hands the memory
/// out (no `memory()`).
#[derive(Debug)]
pub enum Owned {}

impl sealed::Sealed for Readable {}
impl sealed::Sealed for Writable {}
impl sealed::Sealed for Dynamic {}
impl sealed::Sealed for Owned {}
impl MapMode for Readable {}
impl MapMode for Writable {}
impl MapMode for Dynamic {}
impl MapMode for Owned {}

/// A writable mapping from [`Memory::map_mut`]; unmapped on drop. It has
/// no `memory()`: while it may hold no lock, nothing may reach the memory.
///
/// ```compile_fail
/// let mut mem = mediamem::Memory::with_size(4).unwrap();
/// let map = mem.map_mut().unwrap();
/// let other = map.memory().clone(); // no such method on an Owned map
/// ```
pub type MemoryMapMut<'a> = MemoryMap<'a, Owned>;

/// A mapping of a borrowed [`Memory`] (`GstMapInfo`); unmapped on drop.
pub struct MemoryMap<'a, M: MapMode> {
    memory: &'a Memory,
    mapping: Mapping,
    _mode: PhantomData<M>,
}

// SAFETY: the guard gives `&[u8]` through `&self` and `&mut [u8]` only
// through `&mut self` (and only with a WRITE map, which holds the block's
// exclusive borrow, or an `Owned` one, whose handle owns the block),
// exactly like `&mut [u8]`, which is Send and Sync. The
// unmap on drop goes through `Memory`, which is Send + Sync.
unsafe impl<M: MapMode> Send for MemoryMap<'_, M> {}
// SAFETY: see Send.
unsafe impl<M: MapMode> Sync for MemoryMap<'_, M> {}

impl<'a, M: MapMode> MemoryMap<'a, M> {
    #[inline]
    pub(crate) fn new(memory: &'a Memory, mapping: Mapping) -> Self {
        MemoryMap {
            memory,
            mapping,
            _mode: PhantomData,
        }
    }

    /// The flags of this map.
    #[inline]
    pub fn flags(&self) -> MapFlags {
        self.mapping.flags
    }

    /// Number of visible bytes (the memory's size at map time).
    #[inline]
    pub fn size(&self) -> usize {
        self.mapping.size
    }

    /// `maxsize - offset` at map time (`GstMapInfo.maxsize`).
    #[inline]
    pub fn maxsize(&self) -> usize {
        self.memory.maxsize() - self.mapping.offset
    }

    /// The visible bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        self.mapping.slice()
    }

    /// Start of the visible bytes.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.mapping.data()
    }
}

/// `memory()` for the guards that hold the lock word: an [`Owned`] map may
/// not, so it must not let anyone reach the memory.
macro_rules! memory_accessor {
    ($($mode:ty),*) => {$(
        impl<'a> MemoryMap<'a, $mode> {
            /// The mapped memory.
            #[inline]
            pub fn memory(&self) -> &'a Memory {
                self.memory
            }
        }
    )*};
}
memory_accessor!(Readable, Writable, Dynamic);

impl MemoryMap<'_, Writable> {
    /// The visible bytes, mutably.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mapping
            .slice_mut()
            .expect("Writable guards are WRITE maps")
    }
}

impl MemoryMap<'_, Owned> {
    /// The visible bytes, mutably.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mapping.slice_mut().expect("map_mut makes WRITE maps")
    }

    /// Start of the visible bytes, for writing.
    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.mapping.data()
    }

    /// Whether the map skipped the lock word (the handle owned the block).
    #[inline]
    pub fn is_lockless(&self) -> bool {
        !self.mapping.locked
    }
}

impl AsMut<[u8]> for MemoryMap<'_, Owned> {
    #[inline]
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl MemoryMap<'_, Dynamic> {
    /// The visible bytes, mutably, if the map includes WRITE.
    #[inline]
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        self.mapping.slice_mut()
    }
}

impl<M: MapMode> Deref for MemoryMap<'_, M> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for MemoryMap<'_, Writable> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl DerefMut for MemoryMap<'_, Owned> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl<M: MapMode> AsRef<[u8]> for MemoryMap<'_, M> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<M: MapMode> fmt::Debug for MemoryMap<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryMap")
            .field("flags", &self.mapping.flags)
            .field("size", &self.mapping.size)
            .field("maxsize", &self.maxsize())
            .field("locked", &self.mapping.locked)
            .finish()
    }
}

impl<M: MapMode> Drop for MemoryMap<'_, M> {
    #[inline(always)]
    fn drop(&mut self) {
        // An owned map of a heap block holds nothing to give back: nothing
        // to call, so the drop stays a two-flag test at every call site.
        if self.mapping.locked || self.mapping.backend_mapped {
            self.memory.unmap_held(&self.mapping);
        }
    }
}

/// A mapping that owns its [`Memory`] (`into_mapped_*`); unmapped on drop or
/// by [`into_memory`](MappedMemory::into_memory).
pub struct MappedMemory<M: MapMode> {
    memory: ManuallyDrop<Memory>,
    mapping: ManuallyDrop<Mapping>,
    _mode: PhantomData<M>,
}

// SAFETY: as for MemoryMap.
unsafe impl<M: MapMode> Send for MappedMemory<M> {}
// SAFETY: as for MemoryMap.
unsafe impl<M: MapMode> Sync for MappedMemory<M> {}

impl<M: MapMode> MappedMemory<M> {
    pub(crate) fn new(memory: Memory, mapping: Mapping) -> Self {
        MappedMemory {
            memory: ManuallyDrop::new(memory),
            mapping: ManuallyDrop::new(mapping),
            _mode: PhantomData,
        }
    }

    /// The mapped memory.
    #[inline]
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The flags of this map.
    #[inline]
    pub fn flags(&self) -> MapFlags {
        self.mapping.flags
    }

    /// Number of visible bytes.
    #[inline]
    pub fn size(&self) -> usize {
        self.mapping.size
    }

    /// The visible bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        self.mapping.slice()
    }

    /// Unmap and give the memory back.
    #[inline]
    pub fn into_memory(self) -> Memory {
        let mut this = ManuallyDrop::new(self);
        this.memory.unmap(&this.mapping);
        // SAFETY: `this` is never used or dropped again; each field is taken
        // exactly once.
        unsafe {
            ManuallyDrop::drop(&mut this.mapping);
            ManuallyDrop::take(&mut this.memory)
        }
    }
}

impl MappedMemory<Writable> {
    /// The visible bytes, mutably.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mapping
            .slice_mut()
            .expect("Writable guards are WRITE maps")
    }
}

impl MappedMemory<Dynamic> {
    /// The visible bytes, mutably, if the map includes WRITE.
    #[inline]
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        self.mapping.slice_mut()
    }
}

impl<M: MapMode> Deref for MappedMemory<M> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for MappedMemory<Writable> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl<M: MapMode> AsRef<[u8]> for MappedMemory<M> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<M: MapMode> fmt::Debug for MappedMemory<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedMemory")
            .field("memory", &*self.memory)
            .field("flags", &self.mapping.flags)
            .finish()
    }
}

impl<M: MapMode> Drop for MappedMemory<M> {
    #[inline]
    fn drop(&mut self) {
        self.memory.unmap(&self.mapping);
        // SAFETY: drop runs once; the fields are not used afterwards.
        unsafe {
            ManuallyDrop::drop(&mut self.mapping);
            ManuallyDrop::drop(&mut self.memory);
        }
    }
}

/// The error of the `into_mapped_*` forms: why the map failed, and the
/// memory back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct IntoMappedError {
    /// The memory that could not be mapped.
    pub memory: Memory,
    /// Why.
    #[source]
    pub error: Error,
}

/// A lock-word-only mapping from [`Memory::map_raw`]: pointers, no slices.
pub struct RawMap<'a> {
    memory: &'a Memory,
    mapping: Mapping,
}

impl<'a> RawMap<'a> {
    pub(crate) fn new(memory: &'a Memory, mapping: Mapping) -> Self {
        RawMap { memory, mapping }
    }

    /// The mapped memory.
    #[inline]
    pub fn memory(&self) -> &'a Memory {
        self.memory
    }

    /// The flags of this map.
    #[inline]
    pub fn flags(&self) -> MapFlags {
        self.mapping.flags
    }

    /// Number of visible bytes.
    #[inline]
    pub fn size(&self) -> usize {
        self.mapping.size
    }

    /// `maxsize - offset` at map time.
    #[inline]
    pub fn maxsize(&self) -> usize {
        self.memory.maxsize() - self.mapping.offset
    }

    /// Start of the visible bytes; valid for `maxsize()` bytes until drop.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.mapping.data()
    }

    /// Start of the visible bytes for writing, if the map includes WRITE.
    #[inline]
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        self.mapping
            .flags
            .contains(MapFlags::WRITE)
            .then(|| self.mapping.data())
    }

    /// `size` bytes at `offset` from the start of the block.
    ///
    /// # Safety
    /// `offset + size <= maxsize` of the block, and no `&mut` to those bytes
    /// may be alive.
    #[inline]
    pub(crate) unsafe fn block_slice(&self, offset: usize, size: usize) -> &[u8] {
        // SAFETY: forwarded to the caller; the mapping covers the block.
        unsafe { std::slice::from_raw_parts(self.mapping.base.as_ptr().add(offset), size) }
    }
}

impl fmt::Debug for RawMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMap")
            .field("ptr", &self.as_ptr())
            .field("flags", &self.mapping.flags)
            .field("size", &self.mapping.size)
            .finish()
    }
}

impl Drop for RawMap<'_> {
    #[inline]
    fn drop(&mut self) {
        self.memory.unmap(&self.mapping);
    }
}

impl From<IntoMappedError> for Error {
    /// Keep the reason and drop the memory, so `?` works in functions that
    /// return [`Error`].
    fn from(e: IntoMappedError) -> Error {
        e.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 bytes of system memory (maxsize 107) with bytes `i as u8`,
    /// narrowed to the visible region `[10, 60)`, and the block's start.
    fn at_offset() -> (Memory, *const u8) {
        let mem = Memory::with_size(100).unwrap();
        for (i, b) in mem.map_writable().unwrap().iter_mut().enumerate() {
            *b = i as u8;
        }
        mem.resize(10..60).unwrap();
        assert_eq!(mem.sizes(), (50, 10, 107));
        let base = mem
            .share_maxsize(..)
            .unwrap()
            .map_readable()
            .unwrap()
            .as_ptr();
        (mem, base)
    }

    fn expected() -> Vec<u8> {
        (10u8..60).collect()
    }

    #[test]
    fn guard_accessors_at_a_non_zero_offset() {
        let (mut mem, base) = at_offset();
        let start = base.wrapping_add(10);
        {
            let r = mem.map_readable().unwrap();
            assert_eq!((r.size(), r.maxsize(), r.len()), (50, 97, 50));
            assert_eq!(r.as_ptr(), start);
            assert_eq!(r.as_slice(), expected());
            assert_eq!(r.flags(), MapFlags::READ);
        }
        {
            let mut w = mem.map_writable().unwrap();
            assert_eq!((w.size(), w.maxsize()), (50, 97));
            assert_eq!(w.as_ptr(), start);
            assert_eq!(w.as_mut_slice().as_ptr(), start);
            assert_eq!(w.as_mut_slice().len(), 50);
        }
        {
            let mut d = mem.map(MapFlags::READWRITE).unwrap();
            assert_eq!((d.size(), d.maxsize()), (50, 97));
            assert_eq!(d.as_mut_slice().unwrap().as_ptr(), start);
        }
        {
            let raw = mem.map_raw(MapFlags::READ).unwrap();
            assert_eq!((raw.size(), raw.maxsize()), (50, 97));
            assert_eq!(raw.as_ptr(), start);
            assert_eq!(raw.as_mut_ptr(), None);
        }
        {
            let mut owned = mem.map_mut().unwrap();
            assert!(owned.is_lockless());
            assert_eq!((owned.size(), owned.maxsize()), (50, 97));
            assert_eq!(owned.as_mut_ptr().cast_const(), start);
            assert_eq!(owned.as_slice(), expected());
        }
        let mapped = mem.into_mapped_readable().unwrap();
        assert_eq!(mapped.size(), 50);
        assert_eq!(mapped.as_slice().as_ptr(), start);
        assert_eq!(mapped.as_slice(), expected());
    }

    #[test]
    fn a_share_maps_its_own_offset() {
        let (mem, base) = at_offset();
        let share = mem.share(5..15).unwrap(); // block offset 15
        let r = share.map_readable().unwrap();
        assert_eq!((r.size(), r.maxsize()), (10, 107 - 15));
        assert_eq!(r.as_ptr(), base.wrapping_add(15));
        assert_eq!(r.as_slice(), &expected()[5..15]);
    }

    #[test]
    fn a_mapping_keeps_the_region_it_was_made_with() {
        let (mem, base) = at_offset();
        let r = mem.map_readable().unwrap();
        mem.resize_maxsize(0..107).unwrap();
        assert_eq!((r.size(), r.maxsize()), (50, 97));
        assert_eq!(r.as_ptr(), base.wrapping_add(10));
        drop(r);
        let r = mem.map_readable().unwrap();
        assert_eq!((r.size(), r.maxsize(), r.as_ptr()), (107, 107, base));
    }
}
