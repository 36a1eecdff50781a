//! The mapping primitive: one `mmap` of a file (or a device's buffer) shared
//! by every map of a block, with a map count, its protection, and the
//! kind-specific rules every fd-backed memory needs in one place: hugetlbfs
//! lengths and population, the `SIGBUS` guard, kept mappings and
//! protection upgrades.
//!
//! fd, shm, dma-buf, huge page and DRM dumb memory all map through a
//! [`FileMapping`]; apart from `sys`, this is the only place that calls
//! `mmap`, `mprotect`, `munmap` and `mlock`.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;
use rustix::mm::{MprotectFlags, ProtFlags};

use crate::sys::SigbusGuard;

/// How a map that needs more access than the live mapping has is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// Refused while any map is held (GStreamer's fd memory without
    /// `KEEP_MAPPED`): the mapping goes with the last unmap anyway.
    Never,
    /// `mprotect` when no map is held (GStreamer's fd memory with
    /// `KEEP_MAPPED`).
    WhenIdle,
    /// `mprotect` to the union at any time: adding access never
    /// invalidates the maps already held (DRM dumb memory).
    Add,
}

/// How a [`FileMapping`] behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapOptions {
    /// Bytes to map (the block's maxsize, or the buffer's size).
    pub(crate) len: usize,
    /// `MAP_PRIVATE` (copy-on-write) instead of `MAP_SHARED`.
    pub(crate) private: bool,
    /// Keep the mapping after the last unmap, until drop.
    pub(crate) keep: bool,
    /// See [`Upgrade`].
    pub(crate) upgrade: Upgrade,
    /// The file is on hugetlbfs with this page size: map whole pages and
    /// fault them in up front (a missing huge page is then `ENOMEM`, not
    /// `SIGBUS`).
    pub(crate) huge_page: Option<usize>,
    /// Guard the mapping against `SIGBUS` (see `sys::sigbus`).
    pub(crate) guard_sigbus: bool,
}

/// Why a map failed.
#[derive(Debug)]
pub(crate) enum MapFailure {
    /// A system call failed.
    Os(&'static str, Errno),
    /// The live mapping lacks the access and cannot get it now.
    Held {
        prot: ProtFlags,
        count: usize,
        want: ProtFlags,
    },
    /// The guarded file was truncated under the mapping.
    Truncated,
}

impl std::fmt::Display for MapFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapFailure::Os(what, e) => write!(f, "{what}: {e}"),
            MapFailure::Held { prot, count, want } => write!(
                f,
                "already mapped {prot:?} by {count} map(s); cannot add {want:?}"
            ),
            MapFailure::Truncated => write!(f, "the file was truncated under the mapping"),
        }
    }
}

impl MapFailure {
    /// The errno, when the kernel gave one.
    pub(crate) fn errno(&self) -> Option<Errno> {
        match self {
            MapFailure::Os(_, e) => Some(*e),
            _ => None,
        }
    }
}

/// The address of a mapping kept for a block's whole life (shm, huge
/// pages), handed to the memory core as the block's static address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PinnedPtr(NonNull<u8>);

// SAFETY: the address of a mapping that lives as long as its backend; the
// memory core synchronises every access to the bytes behind it.
unsafe impl Send for PinnedPtr {}
// SAFETY: as above.
unsafe impl Sync for PinnedPtr {}

impl PinnedPtr {
    /// The address.
    pub(crate) fn get(self) -> NonNull<u8> {
        self.0
    }
}

struct State {
    /// Start of the mapping; `None` when unmapped.
    ptr: Option<NonNull<u8>>,
    prot: ProtFlags,
    /// Maps currently held.
    count: usize,
    guard: Option<SigbusGuard>,
}

// SAFETY: the pointer is the address of our own mapping, only used under
// the mutex or handed to map guards that the memory core synchronises.
unsafe impl Send for State {}

/// One mapping of a file, shared by every map of a block.
pub(crate) struct FileMapping {
    opts: MapOptions,
    /// The mapped length: `len` rounded up to whole huge pages on hugetlbfs.
    map_len: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for FileMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("FileMapping")
            .field("len", &self.opts.len)
            .field("map_len", &self.map_len)
            .field("mapped", &st.ptr.is_some())
            .field("prot", &st.prot)
            .field("count", &st.count)
            .finish()
    }
}

impl FileMapping {
    /// A mapping of `opts.len` bytes, not yet made.
    ///
    /// # Errors
    /// `Errno::OVERFLOW` when rounding to huge pages overflows.
    pub(crate) fn new(opts: MapOptions) -> Result<Self, Errno> {
        let map_len = match opts.huge_page {
            Some(page) if page > 0 => opts
                .len
                .checked_next_multiple_of(page)
                .ok_or(Errno::OVERFLOW)?,
            _ => opts.len,
        };
        Ok(FileMapping {
            opts,
            map_len,
            state: Mutex::new(State {
                ptr: None,
                prot: ProtFlags::empty(),
                count: 0,
                guard: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a map with `prot` of `fd` at `offset`: the live mapping (its
    /// protection upgraded as the options allow) or a new one.
    pub(crate) fn map(
        &self,
        fd: BorrowedFd<'_>,
        offset: u64,
        prot: ProtFlags,
    ) -> Result<NonNull<u8>, MapFailure> {
        self.map_at(fd, || Ok(offset), prot)
    }

    /// [`map`](FileMapping::map), learning the offset only when a new
    /// mapping is made (a DRM dumb buffer's fake offset costs an ioctl).
    pub(crate) fn map_at(
        &self,
        fd: BorrowedFd<'_>,
        offset: impl FnOnce() -> Result<u64, MapFailure>,
        prot: ProtFlags,
    ) -> Result<NonNull<u8>, MapFailure> {
        if self.opts.len == 0 {
            return Ok(NonNull::dangling());
        }
        let mut st = self.lock();
        if st.guard.as_ref().is_some_and(SigbusGuard::hit) {
            return Err(MapFailure::Truncated);
        }
        if let Some(ptr) = st.ptr {
            if !st.prot.contains(prot) {
                let want = match self.opts.upgrade {
                    Upgrade::Add => st.prot | prot,
                    Upgrade::WhenIdle if st.count == 0 => prot,
                    _ => {
                        return Err(MapFailure::Held {
                            prot: st.prot,
                            count: st.count,
                            want: prot,
                        })
                    }
                };
                let mp = MprotectFlags::from_bits_truncate(want.bits());
                // SAFETY: our own live mapping of `map_len` bytes; with
                // `WhenIdle` no map is held, with `Add` access only grows.
                unsafe { rustix::mm::mprotect(ptr.as_ptr().cast(), self.map_len, mp) }
                    .map_err(|e| MapFailure::Os("mprotect", e))?;
                if let Some(guard) = &st.guard {
                    guard.set_prot(want);
                }
                st.prot = want;
            }
            st.count += 1;
            return Ok(ptr);
        }
        let offset = offset()?;
        let flags = if self.opts.private {
            rustix::mm::MapFlags::PRIVATE
        } else {
            rustix::mm::MapFlags::SHARED
        };
        // SAFETY: a fresh mapping at an address the kernel chooses (NULL
        // hint); nothing else is affected.
        let raw = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), self.map_len, prot, flags, fd, offset)
        }
        .map_err(|e| MapFailure::Os("mmap", e))?;
        let undo = |failure: MapFailure| {
            // SAFETY: the mapping just made, not handed out.
            let _ = unsafe { rustix::mm::munmap(raw, self.map_len) };
            failure
        };
        let ptr = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| undo(MapFailure::Os("mmap", Errno::FAULT)))?;
        if self.opts.huge_page.is_some() {
            populate(raw, self.map_len, prot).map_err(|e| undo(MapFailure::Os("populate", e)))?;
        }
        if self.opts.guard_sigbus {
            let guard = SigbusGuard::new(ptr.as_ptr(), self.map_len, prot)
                .map_err(|e| undo(MapFailure::Os("SIGBUS guard", e)))?;
            st.guard = Some(guard);
        }
        st.ptr = Some(ptr);
        st.prot = prot;
        st.count = 1;
        Ok(ptr)
    }

    /// Give back one map; the mapping goes with the last one unless kept.
    pub(crate) fn unmap(&self) -> Result<(), Errno> {
        if self.opts.len == 0 {
            return Ok(());
        }
        let mut st = self.lock();
        debug_assert!(st.count > 0, "unbalanced unmap");
        st.count = st.count.saturating_sub(1);
        if st.count == 0 && !self.opts.keep {
            return Self::release(&mut st, self.map_len);
        }
        Ok(())
    }

    /// Unmap now (no map may be held).
    fn release(st: &mut State, len: usize) -> Result<(), Errno> {
        // The guard goes before the range can be reused.
        st.guard = None;
        st.prot = ProtFlags::empty();
        match st.ptr.take() {
            // SAFETY: our own mapping, and no map is held any more.
            Some(ptr) => unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) },
            None => Ok(()),
        }
    }

    /// Map read-write now and keep the mapping until drop (only for a
    /// mapping made with `keep`): its address never changes again.
    pub(crate) fn pin(&self, fd: BorrowedFd<'_>) -> Result<PinnedPtr, MapFailure> {
        debug_assert!(self.opts.keep, "only kept mappings can be pinned");
        let ptr = self.map(fd, 0, ProtFlags::READ | ProtFlags::WRITE)?;
        // Kept: the mapping stays; only the count is given back.
        let _ = self.unmap();
        Ok(PinnedPtr(ptr))
    }

    /// The options it was made with.
    pub(crate) fn options(&self) -> MapOptions {
        self.opts
    }

    /// The start of the live mapping.
    pub(crate) fn addr(&self) -> Option<NonNull<u8>> {
        self.lock().ptr
    }

    /// Maps held right now.
    pub(crate) fn count(&self) -> usize {
        self.lock().count
    }

    /// Lock the live mapping's pages in RAM and fault every one in (for
    /// physically contiguous memory, whose frames must not move).
    pub(crate) fn lock_in_ram(&self) -> Result<(), Errno> {
        let st = self.lock();
        let ptr = st.ptr.ok_or(Errno::FAULT)?;
        // SAFETY: our own live mapping of `map_len` bytes.
        unsafe { rustix::mm::mlock(ptr.as_ptr().cast(), self.map_len) }?;
        let page = rustix::param::page_size();
        for off in (0..self.map_len).step_by(page) {
            // SAFETY: inside the live mapping (mlock faulted it in, the
            // read makes sure); volatile so it is not elided.
            unsafe { std::ptr::read_volatile(ptr.as_ptr().add(off)) };
        }
        Ok(())
    }
}

impl FileMapping {
    /// Unmap now, whatever the count: the block is gone (drop), or its
    /// backend must unmap before it frees what the mapping shows (a DRM
    /// dumb buffer before `DESTROY_DUMB`).
    pub(crate) fn unmap_all(&mut self) {
        let len = self.map_len;
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        st.count = 0;
        if let Err(e) = Self::release(st, len) {
            log::warn!("munmap of {len} bytes failed: {e}");
        }
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        self.unmap_all();
    }
}

/// Fault in every page of a fresh mapping (`MADV_POPULATE_READ/WRITE`,
/// Linux 5.14). Older kernels (EINVAL) are left to fault lazily.
fn populate(ptr: *mut std::ffi::c_void, len: usize, prot: ProtFlags) -> Result<(), Errno> {
    let advice = if prot.contains(ProtFlags::WRITE) {
        rustix::mm::Advice::LinuxPopulateWrite
    } else {
        rustix::mm::Advice::LinuxPopulateRead
    };
    let done = crate::sys::retry(|| {
        // SAFETY: our own fresh mapping of `len` bytes; populating only
        // faults its pages in.
        unsafe { rustix::mm::madvise(ptr, len, advice) }
    });
    match done {
        Ok(()) | Err(Errno::INVAL) => Ok(()),
        // hugetlb reports a page it cannot get as EFAULT: say ENOMEM.
        Err(Errno::FAULT) => Err(Errno::NOMEM),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn memfd(len: u64) -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create("mapping", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    fn opts(upgrade: Upgrade, keep: bool) -> MapOptions {
        MapOptions {
            len: 8192,
            private: false,
            keep,
            upgrade,
            huge_page: None,
            guard_sigbus: false,
        }
    }

    #[test]
    fn one_mapping_for_every_map_and_gone_with_the_last() {
        let fd = memfd(8192);
        let m = FileMapping::new(opts(Upgrade::Never, false)).unwrap();
        let a = m.map(fd.as_fd(), 0, ProtFlags::READ).unwrap();
        let b = m.map(fd.as_fd(), 0, ProtFlags::READ).unwrap();
        assert_eq!(a, b);
        assert_eq!(m.count(), 2);
        assert!(matches!(
            m.map(fd.as_fd(), 0, ProtFlags::READ | ProtFlags::WRITE),
            Err(MapFailure::Held { count: 2, .. })
        ));
        m.unmap().unwrap();
        m.unmap().unwrap();
        assert_eq!(m.addr(), None);
    }

    #[test]
    fn upgrades_follow_the_options() {
        let fd = memfd(8192);
        let rw = ProtFlags::READ | ProtFlags::WRITE;
        let idle = FileMapping::new(opts(Upgrade::WhenIdle, true)).unwrap();
        idle.map(fd.as_fd(), 0, ProtFlags::READ).unwrap();
        assert!(idle.map(fd.as_fd(), 0, rw).is_err(), "held");
        idle.unmap().unwrap();
        assert!(idle.addr().is_some(), "kept");
        let p = idle.map(fd.as_fd(), 0, rw).unwrap();
        // SAFETY: a live writable mapping of 8192 bytes.
        unsafe { p.as_ptr().write(1) };
        idle.unmap().unwrap();
        let add = FileMapping::new(opts(Upgrade::Add, false)).unwrap();
        add.map(fd.as_fd(), 0, ProtFlags::READ).unwrap();
        let p = add.map(fd.as_fd(), 0, rw).unwrap();
        // SAFETY: upgraded to writable while the first map is held.
        unsafe { p.as_ptr().write(2) };
        add.unmap().unwrap();
        add.unmap().unwrap();
    }

    #[test]
    fn an_empty_block_needs_no_mapping() {
        let fd = memfd(0);
        let m = FileMapping::new(MapOptions {
            len: 0,
            ..opts(Upgrade::Never, false)
        })
        .unwrap();
        assert_eq!(
            m.map(fd.as_fd(), 0, ProtFlags::READ).unwrap(),
            NonNull::dangling()
        );
        m.unmap().unwrap();
    }
}
