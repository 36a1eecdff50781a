//! [`MemoryPool`]: a bounded pool of equal-sized memories from any
//! allocator, recycled when released, locally or by an IPC peer.
//!
//! A [`PooledMemory`] derefs to its [`Memory`]. Recycling follows the
//! block: a buffer comes back, its region reset, when the last handle of
//! its block is gone, wherever that handle is: the pooled handle itself, a
//! clone, a share, a frame an IPC sender holds for its peer, or a memory
//! still alive in a receiver in this process. (Each pool memory carries a
//! [`set_on_block_free`](Memory::set_on_block_free) hook; the common case,
//! the pooled handle being the last, takes the memory back without even
//! running it.) The pool never has more than `max` memories in existence:
//! when they are all out, [`MemoryPool::acquire`] is
//! [`Error::PoolExhausted`] and [`MemoryPool::acquire_timeout`] waits.
//!
//! | GStreamer's `GstBufferPool` | mediamem |
//! |---|---|
//! | a buffer returns when its refcount drops to zero; a memory shared out of it (`gst_memory_share`) keeps the memory but not the buffer, so the pool allocates anew | the block returns when its last handle, shares included, is gone: never more than `max` blocks |
//!
//! ```
//! use mediamem::{pool::MemoryPool, Allocator};
//! let pool = MemoryPool::new(Allocator::system(), 4096, None, 1, 2)?;
//! let a = pool.acquire()?;
//! let b = pool.acquire()?;
//! assert!(pool.acquire().is_err()); // both out
//! let first = a.map_readable()?.as_ptr();
//! drop(a);
//! let c = pool.acquire()?; // the same memory again
//! assert_eq!(c.map_readable()?.as_ptr(), first);
//! # drop((b, c));
//! # Ok::<(), mediamem::Error>(())
//! ```

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::allocator::{AllocationParams, Allocator};
use crate::error::{Error, Result};
use crate::memory::{BlockFreeHook, FreedBlock, Memory};

struct State {
    /// Free memories. Its capacity is kept at least `live`, so a memory
    /// coming back never reallocates (reserved when a slot is taken, never
    /// up front: `max` may be huge).
    free: Vec<Memory>,
    /// Memories the pool owns: free ones, those out, and slots reserved for
    /// allocations in progress (which run without the lock).
    live: usize,
    /// Threads waiting in `acquire_timeout` (a notify without waiters
    /// would still cost a futex syscall).
    waiters: usize,
}

/// Makes the pool's memories.
type Factory = Box<dyn Fn() -> Result<Memory> + Send + Sync>;

struct PoolInner {
    factory: Factory,
    /// Armed on every memory of the pool: brings its block back.
    hook: BlockFreeHook,
    mem_type: String,
    /// The visible region every memory is reset to when it comes back
    /// (the first memory's).
    region: OnceLock<(usize, usize)>,
    max: usize,
    state: Mutex<State>,
    returned: Condvar,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserve a slot for a new memory while fewer than `max` exist.
    /// `Ok(false)` when the pool is full.
    fn reserve_slot(&self, st: &mut State) -> Result<bool> {
        if st.live >= self.max {
            return Ok(false);
        }
        // Room for every memory to come back without reallocating.
        let need = (st.live + 1).saturating_sub(st.free.len());
        st.free.try_reserve(need).map_err(|_| Error::OutOfMemory {
            size: (st.live + 1).saturating_mul(std::mem::size_of::<Memory>()),
        })?;
        st.live += 1;
        Ok(true)
    }

    /// Make a memory for a slot reserved with `reserve_slot`, without the
    /// lock held: a factory may take its time, or touch the pool itself.
    /// The slot is given back if the factory fails or panics.
    fn alloc_reserved(&self) -> Result<Memory> {
        /// Gives the reserved slot back unless disarmed (also on unwind).
        struct Slot<'a>(&'a PoolInner);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.live -= 1;
                if st.waiters > 0 {
                    self.0.returned.notify_one();
                }
            }
        }
        let slot = Slot(self);
        let mut m = (self.factory)()?;
        m.set_on_block_free(self.hook.clone())
            .map_err(|_| Error::Unsupported {
                mem_type: self.mem_type.clone(),
                operation: "pooling a memory that is not a fresh root (a share, a clone or one with a hook)",
            })?;
        std::mem::forget(slot);
        let _ = self.region.set((m.offset(), m.size()));
        Ok(m)
    }

    /// The hook's work: a block whose last handle went comes back.
    fn take_back(&self, freed: FreedBlock) {
        let (size, offset, _) = freed.sizes();
        let (offset, size) = self.region().unwrap_or((offset, size));
        let back = freed.into_memory(offset, size).and_then(|mut m| {
            m.set_on_block_free(self.hook.clone())?;
            Ok(m)
        });
        let mut st = self.lock();
        match back {
            Ok(m) => st.free.push(m),
            // Cannot be reused: it is gone, and its slot with it.
            Err(_) => st.live -= 1,
        }
        if st.waiters > 0 {
            self.returned.notify_one();
        }
    }

    fn region(&self) -> Option<(usize, usize)> {
        self.region.get().copied()
    }
}

/// A bounded pool of memories of one size from one allocator.
#[derive(Clone)]
pub struct MemoryPool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("MemoryPool")
            .field("mem_type", &self.inner.mem_type)
            .field("region", &self.inner.region())
            .field("free", &st.free.len())
            .field("live", &st.live)
            .field("max", &self.inner.max)
            .finish()
    }
}

impl MemoryPool {
    /// A pool of `size`-byte memories from `allocator` (with `params`),
    /// `min` of them allocated now, at most `max` at any time.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] when `min > max` or `max == 0`, and any error
    /// of the first `min` allocations.
    pub fn new(
        allocator: impl Into<Allocator>,
        size: usize,
        params: Option<&AllocationParams>,
        min: usize,
        max: usize,
    ) -> Result<Self> {
        let allocator = allocator.into();
        let params = params.copied().unwrap_or_default();
        let mem_type = allocator.mem_type().to_owned();
        Self::build(
            mem_type,
            min,
            max,
            Box::new(move || allocator.alloc(size, Some(&params))),
        )
    }

    /// A pool whose memories `make` creates (for allocators without a
    /// plain `alloc`, e.g. DRM dumb buffers exported as dma-bufs). Every
    /// memory should have the same size; each comes back with the region
    /// of the first one.
    ///
    /// ```
    /// use mediamem::{pool::MemoryPool, ShmAllocator};
    /// let pool = MemoryPool::from_fn(0, 3, || ShmAllocator::get().alloc(1 << 16, None))?;
    /// assert_eq!(pool.acquire()?.size(), 1 << 16);
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    pub fn from_fn(
        min: usize,
        max: usize,
        make: impl Fn() -> Result<Memory> + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::build("custom".into(), min, max, Box::new(make))
    }

    fn build(mem_type: String, min: usize, max: usize, factory: Factory) -> Result<Self> {
        if max == 0 || min > max {
            return Err(Error::OutOfRange {
                start: min,
                end: max,
                bound: max,
                what: "pool min..max",
            });
        }
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<PoolInner>| {
            let weak = weak.clone();
            let hook: BlockFreeHook = Arc::new(move |freed: FreedBlock| {
                // A pool that is gone frees the block (by dropping it).
                if let Some(pool) = weak.upgrade() {
                    pool.take_back(freed);
                }
            });
            PoolInner {
                factory,
                hook,
                mem_type,
                region: OnceLock::new(),
                max,
                state: Mutex::new(State {
                    free: Vec::new(),
                    live: 0,
                    waiters: 0,
                }),
                returned: Condvar::new(),
            }
        });
        for _ in 0..min {
            let reserved = inner.reserve_slot(&mut inner.lock())?;
            debug_assert!(reserved, "min <= max");
            let m = inner.alloc_reserved()?;
            inner.lock().free.push(m);
        }
        Ok(MemoryPool { inner })
    }

    /// The size of each memory, once one was made.
    pub fn size(&self) -> Option<usize> {
        self.inner.region().map(|r| r.1)
    }

    /// The most memories the pool holds at once.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Memories ready to be acquired without allocating.
    pub fn free_count(&self) -> usize {
        self.inner.lock().free.len()
    }

    /// Memories currently out of the pool (and ones being made for an
    /// acquire right now).
    pub fn outstanding(&self) -> usize {
        let st = self.inner.lock();
        st.live - st.free.len()
    }

    /// Take a memory: a free one, or a new one while fewer than `max` exist.
    ///
    /// # Errors
    /// [`Error::PoolExhausted`] when all `max` are out.
    pub fn acquire(&self) -> Result<PooledMemory> {
        match self.try_take(self.inner.lock())? {
            Ok(m) => Ok(m),
            Err(_full) => Err(Error::PoolExhausted {
                max: self.inner.max,
            }),
        }
    }

    /// Take a memory, waiting up to `timeout` for one to come back. A
    /// timeout too large to be a point in time (e.g. `Duration::MAX`)
    /// waits without a deadline.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<PooledMemory> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.inner.lock();
        loop {
            st = match self.try_take(st)? {
                Ok(m) => return Ok(m),
                Err(full) => full,
            };
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => {
                    return Err(Error::PoolExhausted {
                        max: self.inner.max,
                    })
                }
                Some(deadline) => Some(deadline - now),
                None => None,
            };
            st.waiters += 1;
            st = match left {
                Some(left) => {
                    self.inner
                        .returned
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .inner
                    .returned
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
            };
            st.waiters -= 1;
        }
    }

    /// A free memory, or a new one while fewer than `max` exist (made
    /// without the lock, its slot reserved so that concurrent acquires
    /// cannot pass `max`). `Ok(Err(st))`, the lock still held, when all
    /// `max` are out.
    #[allow(clippy::type_complexity)]
    fn try_take<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
    ) -> Result<Result<PooledMemory, MutexGuard<'a, State>>> {
        let memory = match st.free.pop() {
            Some(m) => m,
            None => {
                if !self.inner.reserve_slot(&mut st)? {
                    return Ok(Err(st));
                }
                drop(st);
                self.inner.alloc_reserved()?
            }
        };
        Ok(Ok(PooledMemory {
            memory: Some(memory),
            pool: self.inner.clone(),
        }))
    }
}

/// A memory out of a [`MemoryPool`]; goes back when dropped.
pub struct PooledMemory {
    memory: Option<Memory>,
    pool: Arc<PoolInner>,
}

impl PooledMemory {
    /// The memory.
    pub fn memory(&self) -> &Memory {
        self.memory.as_ref().expect("present until drop")
    }

    /// Map the memory for writing through [`Memory::map_mut`]: a frame
    /// fresh out of the pool is owned by this handle alone, so the map
    /// takes no lock.
    ///
    /// ```
    /// use mediamem::{pool::MemoryPool, Allocator};
    /// let pool = MemoryPool::new(Allocator::system(), 64, None, 1, 1)?;
    /// let mut frame = pool.acquire()?;
    /// frame.map_mut()?.fill(0x80);
    /// assert_eq!(frame.map_readable()?[63], 0x80);
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    pub fn map_mut(&mut self) -> Result<crate::memory::MemoryMapMut<'_>> {
        self.memory.as_mut().expect("present until drop").map_mut()
    }

    /// Keep the memory and take it out of the pool for good (the pool may
    /// allocate a replacement). A memory that is still shared or cloned
    /// when detached cannot leave: its block comes back to the pool when
    /// its last handle goes, as any pooled block does.
    pub fn detach(mut self) -> Memory {
        let mut m = self.memory.take().expect("present until drop");
        if m.take_on_block_free().is_some() {
            let mut st = self.pool.lock();
            st.live -= 1;
            if st.waiters > 0 {
                self.pool.returned.notify_one();
            }
        }
        m
    }
}

impl std::ops::Deref for PooledMemory {
    type Target = Memory;
    fn deref(&self) -> &Memory {
        self.memory()
    }
}

impl AsRef<Memory> for PooledMemory {
    fn as_ref(&self) -> &Memory {
        self.memory()
    }
}

impl fmt::Debug for PooledMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PooledMemory").field(&self.memory).finish()
    }
}

impl Drop for PooledMemory {
    fn drop(&mut self) {
        let Some(memory) = self.memory.take() else {
            return;
        };
        let pool = &self.pool;
        // The last handle, nothing held: straight back, memory and all.
        let reusable = memory.ref_count() == 1
            && memory.lock_state() == 0
            && pool.region().is_some_and(|(offset, size)| {
                let (now_size, now_offset, _) = memory.sizes();
                (now_offset, now_size) == (offset, size)
                    || memory.resize_maxsize(offset..offset + size).is_ok()
            });
        if !reusable {
            // Others still hold the block (or it cannot be reset): it
            // comes back through its hook when the last of them goes.
            drop(memory);
            return;
        }
        let mut st = pool.lock();
        st.free.push(memory);
        if st.waiters > 0 {
            pool.returned.notify_one();
        }
        drop(st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_recycled() {
        let pool = MemoryPool::new(Allocator::system(), 64, None, 0, 2).unwrap();
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert_eq!(pool.outstanding(), 2);
        assert!(matches!(
            pool.acquire(),
            Err(Error::PoolExhausted { max: 2 })
        ));
        let pa = a.map_readable().unwrap().as_ptr();
        drop(a);
        assert_eq!(pool.free_count(), 1);
        let c = pool.acquire().unwrap();
        assert_eq!(c.map_readable().unwrap().as_ptr(), pa);
        drop((b, c));
        assert_eq!(pool.outstanding(), 0);
    }

    #[test]
    fn held_memories_come_back_when_their_last_share_goes() {
        let pool = MemoryPool::new(Allocator::system(), 64, None, 1, 1).unwrap();
        let a = pool.acquire().unwrap();
        let addr = a.map_readable().unwrap().as_ptr();
        let keep = a.share(..8).unwrap();
        drop(a); // a share still sees it: still out
        assert_eq!(pool.free_count(), 0);
        assert_eq!(pool.outstanding(), 1);
        assert!(matches!(
            pool.acquire(),
            Err(Error::PoolExhausted { max: 1 })
        ));
        drop(keep); // the block's last handle: back
        assert_eq!(pool.free_count(), 1);
        let b = pool.acquire().unwrap();
        assert_eq!(b.map_readable().unwrap().as_ptr(), addr, "the same block");
        assert_eq!((b.offset(), b.size()), (0, 64));
    }

    #[test]
    fn resized_memories_come_back_whole() {
        let p = AllocationParams::new(crate::MemoryFlags::empty(), 0, 16, 0);
        let pool = MemoryPool::new(Allocator::system(), 100, Some(&p), 1, 1).unwrap();
        let a = pool.acquire().unwrap();
        a.resize(10..20).unwrap();
        drop(a);
        let b = pool.acquire().unwrap();
        assert_eq!((b.offset(), b.size()), (16, 100));
    }

    /// Start a thread waiting in `acquire_timeout` with a timeout far longer
    /// than any test may take, and return once it is waiting (counted in
    /// `waiters` under the lock, which the condvar wait then releases).
    fn start_waiter(pool: &MemoryPool) -> std::sync::mpsc::Receiver<Result<PooledMemory>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = pool.clone();
        std::thread::spawn(move || {
            let _ = tx.send(p2.acquire_timeout(Duration::from_secs(3600)));
        });
        let started = Instant::now();
        while pool.inner.lock().waiters == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the waiter never started waiting"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        rx
    }

    /// The waiter's result, which must come long before its timeout: only
    /// a wake-up can deliver it. The bound is no timing claim; it only keeps
    /// a missing wake-up from hanging the suite for an hour.
    fn woken(rx: std::sync::mpsc::Receiver<Result<PooledMemory>>) -> PooledMemory {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("the waiter was not woken by the release")
            .expect("the waiter got a memory")
    }

    #[test]
    fn acquire_timeout_waits_for_a_release() {
        let pool = MemoryPool::new(Allocator::system(), 64, None, 1, 1).unwrap();
        let a = pool.acquire().unwrap();
        let block = a.map_readable().unwrap().as_ptr();
        let rx = start_waiter(&pool);
        drop(a);
        let got = woken(rx);
        // The released buffer itself, and it is out again.
        assert_eq!(got.map_readable().unwrap().as_ptr(), block);
        assert_eq!(got.size(), 64);
        assert_eq!(pool.outstanding(), 1);
        assert!(matches!(
            pool.acquire_timeout(Duration::from_millis(1)),
            Err(Error::PoolExhausted { max: 1 })
        ));
        drop(got);
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn a_detach_or_a_block_coming_back_wakes_a_waiter() {
        // Detached: the slot frees up and the waiter gets a new memory.
        let pool = MemoryPool::new(Allocator::system(), 32, None, 1, 1).unwrap();
        let a = pool.acquire().unwrap();
        let rx = start_waiter(&pool);
        let kept = a.detach();
        let got = woken(rx);
        assert!(!got.ptr_eq(&kept));
        drop(got);

        // Held by a share after its pooled handle went: the block comes
        // back, and the waiter is woken, when the share goes.
        let b = pool.acquire().unwrap();
        let addr = b.map_readable().unwrap().as_ptr();
        let share = b.share(..4).unwrap();
        let rx = start_waiter(&pool);
        drop(b);
        drop(share);
        let got = woken(rx);
        assert_eq!(got.map_readable().unwrap().as_ptr(), addr, "the same block");
    }

    #[test]
    fn bad_bounds_and_detach() {
        assert!(MemoryPool::new(Allocator::system(), 1, None, 3, 2).is_err());
        assert!(MemoryPool::new(Allocator::system(), 1, None, 0, 0).is_err());
        let pool = MemoryPool::new(Allocator::system(), 8, None, 1, 1).unwrap();
        let m = pool.acquire().unwrap().detach();
        assert_eq!(pool.outstanding(), 0);
        assert!(pool.acquire().is_ok());
        drop(m);
    }

    #[test]
    fn huge_max_is_not_allocated_up_front() {
        // It used to reserve room for `max` memories at once: a capacity
        // overflow panic for usize::MAX, an abort for 1 << 40.
        for max in [usize::MAX, 1 << 40] {
            let pool = MemoryPool::new(Allocator::system(), 64, None, 1, max).unwrap();
            assert_eq!(pool.max(), max);
            let a = pool.acquire().unwrap();
            let b = pool.acquire().unwrap();
            assert_eq!(pool.outstanding(), 2);
            drop((a, b));
            assert_eq!(pool.free_count(), 2);
        }
    }

    #[test]
    fn acquire_timeout_without_deadline() {
        // `Instant::now() + Duration::MAX` used to panic.
        let pool = MemoryPool::new(Allocator::system(), 64, None, 1, 1).unwrap();
        assert_eq!(pool.acquire_timeout(Duration::MAX).unwrap().size(), 64);
        let a = pool.acquire().unwrap();
        let p2 = pool.clone();
        let t = std::thread::spawn(move || p2.acquire_timeout(Duration::MAX).map(|m| m.size()));
        // Let the thread wait (if it has not started waiting yet, it finds
        // the memory free: the test passes the same way).
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        assert_eq!(t.join().unwrap().unwrap(), 64);
    }

    #[test]
    fn a_panicking_factory_gives_its_slot_back() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let panicked = Arc::new(AtomicBool::new(false));
        let p = panicked.clone();
        let pool = MemoryPool::from_fn(0, 2, move || {
            if !p.swap(true, Ordering::SeqCst) {
                panic!("factory fails once");
            }
            Memory::with_size(16)
        })
        .unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.acquire()));
        assert!(r.is_err(), "the factory panicked through acquire");
        assert!(panicked.load(Ordering::SeqCst));
        assert_eq!(pool.outstanding(), 0, "the slot came back");
        // The pool still reaches its max.
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert!(matches!(
            pool.acquire(),
            Err(Error::PoolExhausted { max: 2 })
        ));
        drop((a, b));
        assert_eq!(pool.free_count(), 2);
    }

    #[test]
    fn a_failing_factory_wakes_a_waiter() {
        // A slot given back after a failed allocation lets a waiting
        // acquire allocate in its place.
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let pool = MemoryPool::from_fn(0, 1, move || match c.fetch_add(1, Ordering::SeqCst) {
            0 => Err(Error::PoolExhausted { max: 0 }),
            _ => Memory::with_size(8),
        })
        .unwrap();
        assert!(pool.acquire().is_err());
        assert_eq!(pool.outstanding(), 0);
        assert_eq!(
            pool.acquire_timeout(Duration::from_secs(30))
                .unwrap()
                .size(),
            8
        );
    }

    /// An allocator that reads its own pool while allocating.
    #[derive(Debug)]
    struct Reentrant {
        pool: Arc<Mutex<Option<MemoryPool>>>,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl crate::AllocatorImpl for Reentrant {
        fn mem_type(&self) -> &str {
            "reentrant"
        }
        fn alloc(&self, size: usize, params: &AllocationParams) -> Result<crate::MemoryParts> {
            let pool = self.pool.lock().unwrap().clone();
            if let Some(pool) = pool {
                // Each of these takes the pool's lock.
                let n = pool.outstanding() + pool.free_count();
                self.seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            }
            crate::AllocatorImpl::alloc(&crate::system::SystemAllocator, size, params)
        }
    }

    #[test]
    fn an_allocator_may_touch_its_pool() {
        let slot = Arc::new(Mutex::new(None));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let alloc = Allocator::new(Reentrant {
            pool: slot.clone(),
            seen: seen.clone(),
        });
        let pool = MemoryPool::new(alloc, 32, None, 0, 3).unwrap();
        *slot.lock().unwrap() = Some(pool.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pool.clone();
        let t = std::thread::spawn(move || {
            let held: Vec<_> = (0..3).map(|_| p.acquire()).collect();
            let _ = tx.send(
                held.iter()
                    .map(|r| r.as_ref().map(|m| m.size()).map_err(|e| e.to_string()))
                    .collect::<Vec<_>>(),
            );
        });
        // The allocation used to run under the pool's lock: a deadlock.
        let held = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("acquire with a re-entrant allocator did not deadlock");
        assert!(held.iter().all(|r| matches!(r, Ok(32))), "{held:?}");
        t.join().unwrap();
        assert_eq!(pool.outstanding(), 0, "all three came back");
        // Each allocation saw the slots reserved so far (1, 2, 3: held
        // memories are out, the one being made is reserved).
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 6);
        *slot.lock().unwrap() = None; // break the pool -> allocator -> pool cycle
    }
}
