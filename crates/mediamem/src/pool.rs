//! [`MemoryPool`]: a bounded pool of equal-sized memories from any
//! allocator, recycled when released, locally or by an IPC peer.
//!
//! A [`PooledMemory`] derefs to its [`Memory`]. Dropping it returns the
//! memory to the pool when nothing else holds it (no clone, no share, no
//! map), with its region reset; a memory still held elsewhere is let go
//! and the pool may allocate a replacement. The pool never holds more than
//! `max` memories at once: when they are all out, [`MemoryPool::acquire`]
//! is [`Error::PoolExhausted`] and [`MemoryPool::acquire_timeout`] waits.
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
use crate::memory::Memory;

struct State {
    free: Vec<Memory>,
    /// Memories the pool owns: free ones plus those out.
    live: usize,
    /// Threads waiting in `acquire_timeout` (a notify without waiters
    /// would still cost a futex syscall).
    waiters: usize,
}

/// Makes the pool's memories.
type Factory = Box<dyn Fn() -> Result<Memory> + Send + Sync>;

struct PoolInner {
    factory: Factory,
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

    fn alloc(&self) -> Result<Memory> {
        let m = (self.factory)()?;
        let _ = self.region.set((m.offset(), m.size()));
        Ok(m)
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
        allocator: Allocator,
        size: usize,
        params: Option<&AllocationParams>,
        min: usize,
        max: usize,
    ) -> Result<Self> {
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
        let inner = Arc::new(PoolInner {
            factory,
            mem_type,
            region: OnceLock::new(),
            max,
            state: Mutex::new(State {
                free: Vec::with_capacity(max),
                live: 0,
                waiters: 0,
            }),
            returned: Condvar::new(),
        });
        {
            let mut st = inner.lock();
            for _ in 0..min {
                st.free.push(inner.alloc()?);
                st.live += 1;
            }
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

    /// Memories currently out of the pool.
    pub fn outstanding(&self) -> usize {
        let st = self.inner.lock();
        st.live - st.free.len()
    }

    /// Take a memory: a free one, or a new one while fewer than `max` exist.
    ///
    /// # Errors
    /// [`Error::PoolExhausted`] when all `max` are out.
    pub fn acquire(&self) -> Result<PooledMemory> {
        let mut st = self.inner.lock();
        self.try_take(&mut st)?.ok_or(Error::PoolExhausted {
            max: self.inner.max,
        })
    }

    /// Take a memory, waiting up to `timeout` for one to come back.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<PooledMemory> {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            if let Some(m) = self.try_take(&mut st)? {
                return Ok(m);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::PoolExhausted {
                    max: self.inner.max,
                });
            }
            st.waiters += 1;
            st = self
                .inner
                .returned
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.waiters -= 1;
        }
    }

    fn try_take(&self, st: &mut MutexGuard<'_, State>) -> Result<Option<PooledMemory>> {
        let memory = match st.free.pop() {
            Some(m) => m,
            None if st.live < self.inner.max => {
                // Allocate with the slot counted, so a concurrent acquire
                // cannot pass `max`; give the slot back on failure.
                st.live += 1;
                match self.inner.alloc() {
                    Ok(m) => m,
                    Err(e) => {
                        st.live -= 1;
                        return Err(e);
                    }
                }
            }
            None => return Ok(None),
        };
        Ok(Some(PooledMemory {
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
    /// allocate a replacement).
    pub fn detach(mut self) -> Memory {
        let m = self.memory.take().expect("present until drop");
        let mut st = self.pool.lock();
        st.live -= 1;
        if st.waiters > 0 {
            self.pool.returned.notify_one();
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
        // Reusable only when nothing else can see it: no clone, no share
        // (each holds a reference), no map.
        let reusable = memory.ref_count() == 1
            && memory.lock_state() == 0
            && pool.region().is_some_and(|(offset, size)| {
                let (now_size, now_offset, _) = memory.sizes();
                (now_offset, now_size) == (offset, size)
                    || memory.resize_maxsize(offset..offset + size).is_ok()
            });
        let mut st = pool.lock();
        if reusable {
            st.free.push(memory);
        } else {
            st.live -= 1;
        }
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
    fn held_memories_are_not_reused() {
        let pool = MemoryPool::new(Allocator::system(), 64, None, 1, 1).unwrap();
        let a = pool.acquire().unwrap();
        let keep = a.share(..8).unwrap();
        drop(a); // a share still sees it: let go, not recycled
        assert_eq!(pool.free_count(), 0);
        assert_eq!(pool.outstanding(), 0);
        let b = pool.acquire().unwrap(); // a replacement
        assert!(!b.ptr_eq(keep.parent().unwrap()));
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
    fn a_detach_or_a_let_go_memory_wakes_a_waiter() {
        // Detached: the slot frees up and the waiter gets a new memory.
        let pool = MemoryPool::new(Allocator::system(), 32, None, 1, 1).unwrap();
        let a = pool.acquire().unwrap();
        let rx = start_waiter(&pool);
        let kept = a.detach();
        let got = woken(rx);
        assert!(!got.ptr_eq(&kept));
        drop(got);

        // Let go because a share still holds it: a replacement too.
        let b = pool.acquire().unwrap();
        let share = b.share(..4).unwrap();
        let rx = start_waiter(&pool);
        drop(b);
        let got = woken(rx);
        assert!(!got.ptr_eq(share.parent().unwrap()));
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
}
