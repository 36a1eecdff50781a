//! Pools whose blocks travel: shared, sent to a receiver, held there.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
use mediamem::pool::MemoryPool;
use mediamem::{Result, ShmAllocator};

/// A pool over shm memory that counts its allocations.
fn counting_pool(max: usize) -> (MemoryPool, Arc<AtomicUsize>) {
    let made = Arc::new(AtomicUsize::new(0));
    let count = made.clone();
    let pool = MemoryPool::from_fn(0, max, move || {
        count.fetch_add(1, Ordering::SeqCst);
        ShmAllocator::get().alloc(4096, None)
    })
    .unwrap();
    (pool, made)
}

#[test]
fn frames_shared_before_sending_come_back_to_the_pool() -> Result<()> {
    let (a, b) = UnixStream::pair().unwrap();
    let (mut tx, mut rx) = (Sender::new(a), Receiver::new(b, ReceivePolicy::default()));
    let (pool, made) = counting_pool(3);
    for round in 0..10_000u32 {
        let mut frame = pool.acquire()?;
        frame.map_mut()?[0] = round as u8;
        // Send a share and let the pooled handle go at once: the block is
        // held by the share, which the sender holds for the receiver.
        let share = frame.share(..)?;
        drop(frame);
        let id = tx.send_frame(vec![share], b"")?;
        let got = rx.recv()?.expect("a frame");
        assert_eq!(got.memories[0].map_readable()?[0], round as u8);
        drop(got);
        assert_eq!(tx.wait_release()?, Some(id));
    }
    assert!(
        made.load(Ordering::SeqCst) <= 3,
        "{} allocations for a pool of 3",
        made.load(Ordering::SeqCst)
    );
    assert_eq!(pool.outstanding(), 0);
    Ok(())
}

#[test]
fn a_block_held_by_a_clone_is_not_handed_out_twice() -> Result<()> {
    let (pool, made) = counting_pool(1);
    let frame = pool.acquire()?;
    let clone = frame.memory().clone();
    drop(frame);
    assert!(
        pool.acquire().is_err(),
        "the clone still holds the only block"
    );
    drop(clone);
    let again = pool.acquire()?;
    assert_eq!(again.size(), 4096);
    assert_eq!(made.load(Ordering::SeqCst), 1);
    Ok(())
}

/// How many of this process's fds refer to inode `ino` (other tests may
/// open and close fds meanwhile; they never reach this inode).
fn fds_on_inode(ino: u64) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::metadata(e.path()).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino() == ino
            })
        })
        .count()
}

#[test]
fn a_dropped_pool_frees_blocks_that_come_back_later() -> Result<()> {
    let (pool, _) = counting_pool(2);
    let frame = pool.acquire()?;
    let ino = rustix::fs::fstat(frame.fd().unwrap()).unwrap().st_ino;
    let share = frame.share(..)?;
    drop((frame, pool));
    assert_eq!(fds_on_inode(ino), 1, "the share keeps the block");
    // The pool is gone; the block's last handle frees it.
    drop(share);
    assert_eq!(fds_on_inode(ino), 0, "the block is freed");
    Ok(())
}

/// The inode of a memory's fd.
fn ino(m: &mediamem::Memory) -> u64 {
    rustix::fs::fstat(m.fd().unwrap()).unwrap().st_ino
}

#[test]
fn the_pool_size_is_the_first_memorys() -> Result<()> {
    let (pool, _) = counting_pool(2);
    assert_eq!(pool.size(), None, "no memory made yet");
    let frame = pool.acquire()?;
    assert_eq!(pool.size(), Some(4096));
    assert_eq!(frame.size(), 4096);
    Ok(())
}

#[test]
fn a_frame_whose_share_lives_is_not_handed_out_again() -> Result<()> {
    let (pool, made) = counting_pool(2);
    let first = pool.acquire()?;
    let share = first.share(..)?;
    let held = ino(&share);
    drop(first);
    // The share holds the block: the next frame is a new one.
    let second = pool.acquire()?;
    assert_ne!(ino(&second), held, "a block still shared was handed out");
    assert_eq!(made.load(Ordering::SeqCst), 2);
    drop((second, share));
    assert_eq!(pool.free_count(), 2);
    Ok(())
}

#[test]
fn a_resized_frame_comes_back_with_the_pools_region() -> Result<()> {
    let (pool, made) = counting_pool(1);
    let frame = pool.acquire()?;
    frame.resize(100..200)?;
    assert_eq!((frame.offset(), frame.size()), (100, 100));
    drop(frame);
    let again = pool.acquire()?;
    assert_eq!((again.offset(), again.size()), (0, 4096));
    assert_eq!(made.load(Ordering::SeqCst), 1);
    Ok(())
}

#[test]
fn a_block_that_cannot_take_the_pools_region_frees_its_slot() -> Result<()> {
    // The first memory sets the region (4096 bytes); the second is too
    // small to be reset to it, so when it comes back it is freed and its
    // slot with it.
    let made = Arc::new(AtomicUsize::new(0));
    let count = made.clone();
    let pool = MemoryPool::from_fn(0, 2, move || {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let size = if n == 1 { 16 } else { 4096 };
        mediamem::Allocator::system().alloc(size, None)
    })?;
    let big = pool.acquire()?;
    let small = pool.acquire()?;
    assert_eq!(small.size(), 16);
    let share = small.share(..)?;
    drop(small);
    assert!(pool.acquire().is_err(), "two memories live in a pool of 2");
    drop(share);
    assert_eq!(pool.outstanding(), 1, "only `big` is out");
    assert_eq!(pool.free_count(), 0, "the small block was not kept");
    let third = pool.acquire()?;
    assert_eq!(third.size(), 4096);
    assert_eq!(made.load(Ordering::SeqCst), 3);
    drop((big, third));
    Ok(())
}

#[test]
fn a_failed_factory_wakes_a_waiting_acquire() -> Result<()> {
    use std::sync::mpsc;
    use std::time::Duration;
    // The second allocation blocks until told, then fails; meanwhile the
    // pool is full (one frame out, one slot reserved), so a third thread
    // waits. The failed slot must wake it.
    let (go, wait) = mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let made = Arc::new(AtomicUsize::new(0));
    let count = made.clone();
    let pool = Arc::new(MemoryPool::from_fn(0, 2, move || {
        if count.fetch_add(1, Ordering::SeqCst) == 1 {
            wait.lock().unwrap().recv().unwrap();
            return Err(mediamem::Error::OutOfMemory { size: 4096 });
        }
        ShmAllocator::get().alloc(4096, None)
    })?);
    let held = pool.acquire()?;
    let failing = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.acquire().map(drop))
    };
    while made.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.acquire_timeout(Duration::from_secs(60)).map(drop))
    };
    // Give the waiter time to wait (if it has not yet, it finds a free
    // slot and the test passes without exercising the wake-up).
    std::thread::sleep(Duration::from_millis(100));
    go.send(()).unwrap();
    assert!(failing.join().unwrap().is_err());
    waiter.join().unwrap()?;
    drop(held);
    Ok(())
}

#[test]
fn debug_output_names_the_pool_and_its_memory() -> Result<()> {
    let (pool, _) = counting_pool(2);
    let frame = pool.acquire()?;
    assert!(format!("{pool:?}").contains("MemoryPool"), "{pool:?}");
    let text = format!("{frame:?}");
    assert!(text.starts_with("PooledMemory"), "{text}");
    Ok(())
}

#[test]
fn a_freed_block_tells_what_it_was_and_becomes_a_new_memory() -> Result<()> {
    use mediamem::memory::FreedBlock;
    use mediamem::{AllocationParams, Allocator, MemoryFlags};
    use std::sync::Mutex;
    let params = AllocationParams {
        flags: MemoryFlags::NO_SHARE,
        prefix: 8,
        padding: 4,
        ..Default::default()
    };
    let mut mem = Allocator::system().alloc(100, Some(&params))?;
    let maxsize = mem.maxsize();
    let freed: Arc<Mutex<Option<FreedBlock>>> = Arc::default();
    let slot = freed.clone();
    mem.set_on_block_free(Arc::new(move |b| *slot.lock().unwrap() = Some(b)))?;
    mem.map_mut()?[0] = 42;
    mem.resize(10..50)?;
    drop(mem);
    let block = freed.lock().unwrap().take().expect("the hook ran");
    assert_eq!(block.sizes(), (40, 18, maxsize));
    assert!(block.flags().contains(MemoryFlags::NO_SHARE));
    assert_eq!(block.allocator().mem_type(), "SystemMemory");
    let text = format!("{block:?}");
    assert!(
        text.starts_with("FreedBlock") && text.contains(&format!("maxsize: {maxsize}")),
        "{text}"
    );
    // The whole block, to its last byte, is a valid region.
    let again = block.into_memory(0, maxsize)?;
    assert_eq!(again.sizes(), (maxsize, 0, maxsize));
    assert!(again
        .flags()
        .contains(MemoryFlags::NO_SHARE | MemoryFlags::LOCKABLE));
    assert_eq!(again.map_readable()?[8], 42, "the same bytes");
    Ok(())
}

#[test]
fn a_freed_block_refuses_a_region_past_its_end() -> Result<()> {
    use mediamem::memory::FreedBlock;
    use std::sync::Mutex;
    let mut mem = mediamem::Memory::with_size(64)?;
    let maxsize = mem.maxsize();
    let freed: Arc<Mutex<Option<FreedBlock>>> = Arc::default();
    let slot = freed.clone();
    mem.set_on_block_free(Arc::new(move |b| *slot.lock().unwrap() = Some(b)))?;
    drop(mem);
    let block = freed.lock().unwrap().take().unwrap();
    assert!(matches!(
        block.into_memory(1, maxsize),
        Err(mediamem::Error::OutOfRange { .. })
    ));
    Ok(())
}

#[test]
fn a_frame_dropped_with_a_leaked_map_comes_back_unlocked() -> Result<()> {
    // Forgetting a guard is safe and leaves the lock held; the pool must
    // not hand that lock word out again (the block comes back through its
    // hook with a fresh one).
    // (System memory: an fd block's borrow rule lives with its file, and a
    // leaked readable map keeps that file read-borrowed for good.)
    let pool = MemoryPool::new(mediamem::Allocator::system(), 64, None, 0, 1)?;
    let frame = pool.acquire()?;
    let ptr = frame.map_readable()?.as_ptr();
    std::mem::forget(frame.map_readable()?);
    assert_ne!(frame.lock_state(), 0);
    drop(frame);
    let mut again = pool.acquire()?;
    assert_eq!(again.lock_state(), 0);
    assert_eq!(again.map_mut()?.as_ptr(), ptr, "the same block");
    Ok(())
}
