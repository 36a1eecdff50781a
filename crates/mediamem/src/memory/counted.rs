//! [`Counted`]: the reference-counted box behind every [`Memory`](super::Memory).
//!
//! `std::sync::Arc` carries a weak count, so dropping the last handle costs
//! two atomic read-modify-writes (the strong count, then the weak count),
//! about 5 ns each on current x86 cores. Memories never need weak
//! references, and the last handle of a memory is dropped on every
//! allocate-fill-free cycle and every share. `Counted` has a strong count
//! only, and its drop first *loads* the count: a handle that sees 1 is the
//! only one left (a new handle can only be made by cloning an existing one),
//! so it frees without any read-modify-write at all. The same load answers
//! [`Counted::is_unique`], which lets `Memory::map_mut` prove exclusive
//! ownership for free.
//!
//! A block is normally a `Box` of its own. [`Counted::new_hosted`] instead
//! places it at the start of an allocation that the value itself owns (a
//! system memory's header and bytes in one heap allocation, as GStreamer
//! makes them): the last handle then moves the value out of the block and
//! drops it, and the value's drop frees the whole allocation.

use std::alloc::Layout;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;

use super::sync::{fence, AtomicUsize, Ordering};

/// The heap block: the count and the value.
struct Block<T> {
    /// The number of handles in steps of [`ONE`], and the [`HOSTED`] bit.
    count: AtomicUsize,
    value: T,
}

/// One handle in the count.
const ONE: usize = 2;
/// Low bit of the count, fixed for the block's life: the block lives in an
/// allocation that its value owns and frees ([`Counted::new_hosted`]).
const HOSTED: usize = 1;

/// Past this many handles, cloning aborts, as `Arc` does: the count must
/// never wrap (unreachable in practice, every handle is 8 bytes of memory).
const MAX_COUNT: usize = isize::MAX as usize;

/// A thread-safe reference-counted pointer without weak references.
pub(crate) struct Counted<T> {
    block: NonNull<Block<T>>,
    /// The handle owns a share of a `Block<T>` (drop check, variance).
    _owns: PhantomData<Block<T>>,
}

// SAFETY: as for `Arc<T>`: handles on several threads give `&T` on all of
// them (so T: Sync) and the last one, on any thread, drops T (so T: Send).
unsafe impl<T: Send + Sync> Send for Counted<T> {}
// SAFETY: see Send.
unsafe impl<T: Send + Sync> Sync for Counted<T> {}

impl<T> Counted<T> {
    /// A new block holding `value`, with one handle.
    pub(crate) fn new(value: T) -> Self {
        let block = Box::new(Block {
            count: AtomicUsize::new(ONE),
            value,
        });
        Counted {
            block: NonNull::from(Box::leak(block)),
            _owns: PhantomData,
        }
    }

    /// The layout of the block that [`new_hosted`](Counted::new_hosted)
    /// places at the start of an allocation.
    pub(crate) fn block_layout() -> Layout {
        Layout::new::<Block<T>>()
    }

    /// A new block holding `value`, with one handle, written at `at`.
    ///
    /// # Safety
    /// `at` must be valid for writes of [`block_layout`](Counted::block_layout)
    /// bytes, aligned for it, and lie in an allocation that `value` owns:
    /// dropping `value` (once it has been moved out of the block) frees that
    /// allocation, and nothing else frees it or touches those bytes while
    /// a handle lives.
    pub(crate) unsafe fn new_hosted(at: NonNull<u8>, value: T) -> Self {
        let block = at.cast::<Block<T>>();
        // SAFETY: valid and aligned for a `Block<T>` (the caller's promise).
        unsafe {
            block.as_ptr().write(Block {
                count: AtomicUsize::new(ONE | HOSTED),
                value,
            });
        }
        Counted {
            block,
            _owns: PhantomData,
        }
    }

    #[inline]
    fn block(&self) -> &Block<T> {
        // SAFETY: the block lives while any handle does, and this is one.
        unsafe { self.block.as_ref() }
    }

    /// The number of handles (a snapshot).
    #[inline]
    pub(crate) fn count(this: &Self) -> usize {
        this.block().count.load(Ordering::Acquire) / ONE
    }

    /// Whether `this` is the only handle. With `&mut` access to that one
    /// handle the answer cannot change until the borrow ends, and the
    /// acquire load orders everything other handles did before they were
    /// dropped before what the caller does next.
    #[inline]
    pub(crate) fn is_unique(this: &Self) -> bool {
        Counted::count(this) == 1
    }

    /// `&mut` access to the value when `this` is the only handle.
    #[inline]
    pub(crate) fn get_mut(this: &mut Self) -> Option<&mut T> {
        if Counted::is_unique(this) {
            // SAFETY: the only handle, borrowed mutably: no other handle
            // exists or can be made (cloning needs a handle) while the
            // borrow lives, and the acquire load in `is_unique` ordered the
            // other handles' uses before this.
            Some(unsafe { &mut (*this.block.as_ptr()).value })
        } else {
            None
        }
    }

    /// Whether both handles point at the same block.
    #[inline]
    pub(crate) fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.block == b.block
    }
}

impl<T> Clone for Counted<T> {
    #[inline]
    fn clone(&self) -> Self {
        // Relaxed, as in `Arc`: a new handle made from an existing one needs
        // no ordering; the drops order the frees.
        let old = self.block().count.fetch_add(ONE, Ordering::Relaxed);
        if old >= MAX_COUNT {
            std::process::abort();
        }
        Counted {
            block: self.block,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for Counted<T> {
    #[inline]
    fn drop(&mut self) {
        let count = &self.block().count;
        // Only handle left: nobody can clone it (that needs a handle), so
        // the count can no longer change and the block is ours to free.
        // The acquire load orders the other handles' uses before the free.
        let mut last = count.load(Ordering::Acquire);
        if last & !HOSTED != ONE {
            last = count.fetch_sub(ONE, Ordering::Release);
            if last & !HOSTED != ONE {
                return;
            }
            // Order every other handle's release before the free.
            fence(Ordering::Acquire);
        }
        let block = self.block.as_ptr();
        if last & HOSTED != 0 {
            // SAFETY: the last handle (see above), so nobody reads the value
            // again; it is moved out (no reference to the block is made or
            // kept), and dropping it frees the allocation the block lives in
            // (`new_hosted`'s contract) after it has left it.
            drop(unsafe { std::ptr::read(std::ptr::addr_of!((*block).value)) });
        } else {
            // SAFETY: this was the last handle (see above), the block came
            // from `Box::leak` in `new`, and no handle will touch it again.
            drop(unsafe { Box::from_raw(block) });
        }
    }
}

impl<T> Deref for Counted<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.block().value
    }
}

impl<T: fmt::Debug> fmt::Debug for Counted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.block().value.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// Counts its drops.
    struct Probe(Arc<AtomicUsize>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drops_once_after_last_handle() {
        let drops = Arc::new(AtomicUsize::new(0));
        let a = Counted::new(Probe(drops.clone()));
        assert!(Counted::is_unique(&a));
        let b = a.clone();
        assert_eq!(Counted::count(&a), 2);
        assert!(!Counted::is_unique(&b));
        assert!(Counted::ptr_eq(&a, &b));
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        assert!(Counted::is_unique(&b));
        drop(b);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn racing_drops_free_exactly_once() {
        for _ in 0..200 {
            let drops = Arc::new(AtomicUsize::new(0));
            let handle = Counted::new(Probe(drops.clone()));
            let clones: Vec<_> = (0..8).map(|_| handle.clone()).collect();
            drop(handle);
            std::thread::scope(|s| {
                for c in clones {
                    s.spawn(move || {
                        let again = c.clone();
                        drop(c);
                        drop(again);
                    });
                }
            });
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        }
    }

    /// Owns the allocation its block was placed in, and frees it.
    struct Host {
        head: NonNull<u8>,
        layout: Layout,
        drops: Arc<AtomicUsize>,
    }
    // SAFETY: the allocation is only freed, once, by the drop.
    unsafe impl Send for Host {}
    // SAFETY: `&Host` reads nothing behind the pointer.
    unsafe impl Sync for Host {}
    impl Drop for Host {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
            // SAFETY: allocated with this layout in the test below; the
            // block was moved out of it before this drop.
            unsafe { std::alloc::dealloc(self.head.as_ptr(), self.layout) };
        }
    }

    #[test]
    fn a_hosted_block_is_freed_by_its_value_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let layout = Counted::<Host>::block_layout()
            .extend(Layout::new::<[u8; 16]>())
            .unwrap()
            .0;
        // SAFETY: a non-zero size.
        let head = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
        let host = Host {
            head,
            layout,
            drops: drops.clone(),
        };
        // SAFETY: `head` starts an allocation with room and alignment for
        // the block, owned and freed by `host`.
        let a = unsafe { Counted::new_hosted(head, host) };
        let b = a.clone();
        assert_eq!(Counted::count(&a), 2);
        drop(a);
        assert!(Counted::is_unique(&b));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(b);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn distinct_blocks_differ() {
        let a = Counted::new(1u8);
        let b = Counted::new(1u8);
        assert!(!Counted::ptr_eq(&a, &b));
        assert_eq!(*a, *b);
    }
}

/// Model checks of the reference count (`cargo xtask loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::memory::lock::LockWord;
    use crate::memory::region::Borrow;
    use crate::memory::sync::outcomes;
    use crate::memory::LockFlags;
    use loom::cell::UnsafeCell;
    use loom::thread;
    use std::sync::{Arc, Mutex};

    /// A value whose every use and whose drop are accesses loom checks for
    /// races: a drop not ordered after some handle's use is reported. Who
    /// dropped it is written down outside the block, in a mutex loom does
    /// not see (so it adds no ordering).
    struct Probe {
        bytes: UnsafeCell<u32>,
        dropped_by: Arc<Mutex<Vec<thread::ThreadId>>>,
    }

    impl Probe {
        fn new(dropped_by: &Arc<Mutex<Vec<thread::ThreadId>>>) -> Self {
            Probe {
                bytes: UnsafeCell::new(0),
                dropped_by: dropped_by.clone(),
            }
        }

        /// A read of the value (loom records the access; the pointer itself
        /// need not be touched).
        fn use_it(&self) {
            self.bytes.with(|_| ());
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.bytes.with_mut(|_| ());
            self.dropped_by.lock().unwrap().push(thread::current().id());
        }
    }

    /// A [`Probe`] as a system memory keeps its header: either in a block
    /// of its own ([`Counted::new`]) or inside the allocation it owns and
    /// frees when dropped ([`Counted::new_hosted`]), so loom also sees the
    /// free of that allocation ordered after every handle's use.
    struct Hosted {
        probe: std::mem::ManuallyDrop<Probe>,
        host: Option<(NonNull<u8>, Layout)>,
    }

    // SAFETY: `host` is only an allocation this value owns and frees once,
    // in its drop; `Probe` is Send + Sync.
    unsafe impl Send for Hosted {}
    // SAFETY: as above; `&Hosted` only reaches the probe.
    unsafe impl Sync for Hosted {}

    impl Deref for Hosted {
        type Target = Probe;
        fn deref(&self) -> &Probe {
            &self.probe
        }
    }

    impl Drop for Hosted {
        fn drop(&mut self) {
            // SAFETY: dropped once, here, and never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.probe) };
            if let Some((ptr, layout)) = self.host.take() {
                // After the probe's drop, which loom checks is ordered
                // after every handle's use (the block inside was read out).
                // SAFETY: allocated with `layout` in `counted`, freed once.
                unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
            }
        }
    }

    /// A handle on a new [`Hosted`] probe, in its own allocation if `hosted`.
    fn counted(probe: Probe, hosted: bool) -> Counted<Hosted> {
        let probe = std::mem::ManuallyDrop::new(probe);
        if !hosted {
            return Counted::new(Hosted { probe, host: None });
        }
        let layout = Counted::<Hosted>::block_layout();
        // SAFETY: the layout has a non-zero size (it holds a count).
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("allocation");
        let host = Some((ptr, layout));
        // SAFETY: `ptr` is valid and aligned for the block's layout, and the
        // value owns and frees that allocation once it has left it.
        unsafe { Counted::new_hosted(ptr, Hosted { probe, host }) }
    }

    #[test]
    fn loom_last_handle_drops_once_after_all_uses() {
        for hosted in [false, true] {
            last_handle_drops_once_after_all_uses(hosted);
        }
    }

    fn last_handle_drops_once_after_all_uses(hosted: bool) {
        // Three handles on three threads; one of them clones its handle
        // and drops the original before its last use.
        let seen = outcomes(move || {
            let dropped_by = Arc::new(Mutex::new(Vec::new()));
            let a = counted(Probe::new(&dropped_by), hosted);
            let b = a.clone();
            let c = a.clone();
            let t1 = thread::spawn(move || {
                b.use_it();
                drop(b);
            });
            let t2 = thread::spawn(move || {
                let d = c.clone();
                drop(c);
                d.use_it();
                drop(d);
            });
            a.use_it();
            drop(a);
            let names = [
                (thread::current().id(), "main"),
                (t1.thread().id(), "t1"),
                (t2.thread().id(), "t2"),
            ];
            t1.join().unwrap();
            t2.join().unwrap();
            let dropped_by = std::mem::take(&mut *dropped_by.lock().unwrap());
            assert_eq!(dropped_by.len(), 1, "dropped by {dropped_by:?}");
            names.iter().find(|(id, _)| *id == dropped_by[0]).unwrap().1
        });
        // Each thread's handle was the last one in some execution.
        assert_eq!(seen, ["main", "t1", "t2"].into());
    }

    /// What `Memory` keeps behind its count: the lock word and the bytes.
    struct Block {
        lock: LockWord,
        bytes: UnsafeCell<u32>,
    }

    /// How the model's `map_mut` went.
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum MapMut {
        /// Unique handle: no lock word.
        Unlocked,
        /// Through the lock word, granted.
        Locked,
        /// Through the lock word, refused (the other thread's read map).
        Refused,
    }

    #[test]
    fn loom_unique_handle_maps_without_the_lock_word() {
        // `Memory::map_mut`: when `is_unique` says so, the handle writes the
        // bytes without touching the lock word (after checking it is idle,
        // as `owns_block` does with a relaxed load). Another thread meanwhile
        // clones its own handle, maps for reading through the lock word and
        // drops both handles. The unique path must see that thread's unlock
        // and be ordered after its read; otherwise the locked path is taken.
        let seen = outcomes(|| {
            let dropped_by = Arc::new(Mutex::new(Vec::new()));
            let a = Counted::new((
                Block {
                    lock: LockWord::default(),
                    bytes: UnsafeCell::new(0),
                },
                Probe::new(&dropped_by),
            ));
            let b = a.clone();
            let reader = thread::spawn(move || {
                let c = b.clone();
                drop(b);
                let (block, probe) = &*c;
                if block.lock.lock_read_shared().is_ok() {
                    block.bytes.with(|_| ());
                    probe.use_it();
                    block.lock.unlock_release(LockFlags::READ, Borrow::Shared);
                }
                drop(c);
            });
            let (block, probe) = &*a;
            probe.use_it();
            let how = if Counted::is_unique(&a) {
                assert!(block.lock.is_idle(), "unique handle, busy lock word");
                block.bytes.with_mut(|_| ());
                MapMut::Unlocked
            } else if block
                .lock
                .lock_borrow(LockFlags::WRITE, false, Borrow::Exclusive)
                .is_ok()
            {
                block.bytes.with_mut(|_| ());
                block
                    .lock
                    .unlock_release(LockFlags::WRITE, Borrow::Exclusive);
                MapMut::Locked
            } else {
                MapMut::Refused
            };
            reader.join().unwrap();
            assert!(Counted::is_unique(&a));
            drop(a);
            assert_eq!(dropped_by.lock().unwrap().len(), 1);
            how
        });
        assert_eq!(
            seen,
            [MapMut::Unlocked, MapMut::Locked, MapMut::Refused].into()
        );
    }
}
