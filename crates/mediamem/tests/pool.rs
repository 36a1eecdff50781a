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
