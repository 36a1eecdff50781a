//! `Memory` is `Send + Sync`: many threads mapping, sharing, resizing and
//! dropping the same memory must keep every invariant.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use mediamem::{Error, Memory, Result};

mod common;

const THREADS: usize = 8;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A small deterministic generator (xorshift), one per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }
}

#[test]
fn many_threads_map_share_and_drop() -> Result<()> {
    let len = 64 * 1024;
    let root = Memory::with_size(len)?;
    {
        let mut w = root.map_writable()?;
        for (i, b) in w.iter_mut().enumerate() {
            *b = pattern(i);
        }
    }
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let root = root.clone();
            let barrier = barrier.clone();
            thread::spawn(move || -> Result<usize> {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut checked = 0;
                barrier.wait();
                for _ in 0..2_000 {
                    let start = rng.next() % len;
                    let end = start + rng.next() % (len - start + 1);
                    match rng.next() % 3 {
                        0 => {
                            let map = root.map_readable()?;
                            assert_eq!(map[start.min(len - 1)], pattern(start.min(len - 1)));
                            checked += 1;
                        }
                        1 => {
                            let share = root.share(start..end)?;
                            assert_eq!(share.offset(), start);
                            let map = share.map_readable()?;
                            if let Some(&b) = map.first() {
                                assert_eq!(b, pattern(start));
                            }
                            // A share of the share, dropped on this thread.
                            let inner = share.share(..)?;
                            assert!(inner.parent().unwrap().ptr_eq(&root));
                            checked += 1;
                        }
                        _ => {
                            let copy = root.copy_range(start..end)?;
                            let map = copy.map_readable()?;
                            assert!(map
                                .iter()
                                .enumerate()
                                .all(|(i, &b)| b == pattern(start + i)));
                            checked += 1;
                        }
                    }
                }
                Ok(checked)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("worker panicked")?;
    }
    assert_eq!(total, THREADS * 2_000);
    assert_eq!(root.lock_state(), 0, "every map and share was released");
    assert_eq!(root.ref_count(), 1);
    Ok(())
}

#[test]
fn writers_and_readers_never_see_torn_frames() -> Result<()> {
    // One writer fills the whole block with one value at a time; readers
    // must always see a uniform block. Writable guards are exclusive per
    // block, so this holds by construction.
    let mem = Memory::with_size(4096)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    // Maps never block: a writer that finds readers gets Aliased and tries
    // again. Readers that pause between frames (as real consumers do) leave
    // it room; readers spinning on 2 cores could starve it, which is the
    // caller's policy to handle.
    // The writer raises `waiting` while it wants the block; readers then
    // stand back (as a consumer would for a producer), so the writer makes
    // progress however the two cores are scheduled.
    let waiting = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (mem, stop, reads) = (mem.clone(), stop.clone(), reads.clone());
            let waiting = waiting.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if waiting.load(Ordering::Relaxed) {
                        thread::yield_now();
                        continue;
                    }
                    match mem.map_readable() {
                        Ok(map) => {
                            let first = map[0];
                            assert!(map.iter().all(|&b| b == first), "torn frame");
                            reads.fetch_add(1, Ordering::Relaxed);
                            drop(map);
                            thread::yield_now();
                        }
                        Err(Error::Aliased { .. }) | Err(Error::LockConflict { .. }) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            })
        })
        .collect();
    let mut writes = 0usize;
    let mut attempts = 0usize;
    while (writes < 2_000 || reads.load(Ordering::Relaxed) < 2_000) && attempts < 5_000_000 {
        attempts += 1;
        if writes >= 2_000 {
            // Enough frames written: let the readers catch up.
            thread::yield_now();
            continue;
        }
        waiting.store(true, Ordering::Relaxed);
        match mem.map_writable() {
            Ok(mut w) => {
                waiting.store(false, Ordering::Relaxed);
                w.fill((writes % 256) as u8);
                writes += 1;
                drop(w);
                // Let the readers in between frames.
                thread::yield_now();
            }
            Err(Error::Aliased { .. }) | Err(Error::LockConflict { .. }) => thread::yield_now(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader panicked");
    }
    assert!(writes >= 2_000, "writer starved: {writes} writes");
    assert!(reads.load(Ordering::Relaxed) >= 2_000);
    assert_eq!(mem.lock_state(), 0);
    Ok(())
}

#[test]
fn concurrent_resize_keeps_mappings_in_bounds() -> Result<()> {
    let mem = Memory::with_size(1000)?;
    let maxsize = mem.maxsize();
    {
        let mut w = mem.map_writable()?;
        for (i, b) in w.iter_mut().enumerate() {
            *b = pattern(i);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let resizer = {
        let (mem, stop) = (mem.clone(), stop.clone());
        thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let off = n % 500;
                mem.resize_maxsize(off..off + 400)
                    .expect("resize in bounds");
                n += 1;
            }
            n
        })
    };
    // Read until many mappings taken during the resizing were checked.
    let (mut checked, mut iterations) = (0usize, 0usize);
    while checked < 20_000 && iterations < 50_000_000 {
        iterations += 1;
        let map = mem.map_readable()?;
        let (size, offset, max) = mem.sizes();
        assert!(offset + size <= max);
        assert_eq!(max, maxsize);
        // The guard's slice is self-consistent: its bytes are the pattern
        // at some offset; the first byte tells which.
        assert!(map.len() == 400 || map.len() == 1000);
        if map.len() == 400 {
            let off = map[0] as usize; // offsets < 251 map to themselves
            if off < 251 {
                assert!(map.iter().enumerate().all(|(i, &b)| b == pattern(off + i)));
            }
            checked += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(resizer.join().unwrap() > 0);
    assert_eq!(
        checked, 20_000,
        "the resizer never ran alongside the readers"
    );
    Ok(())
}

#[test]
fn shares_cross_threads_and_release_the_root() -> Result<()> {
    let root = Memory::with_size(1 << 16)?;
    let shares: Vec<Memory> = (0..1_000)
        .map(|i| root.share(i..i + 16))
        .collect::<Result<_>>()?;
    assert_eq!(root.lock_state(), 1_000 << 16);
    assert!(!root.is_writable());
    let chunks: Vec<Vec<Memory>> = shares.chunks(125).map(|c| c.to_vec()).collect();
    drop(shares);
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| thread::spawn(move || drop(chunk)))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(root.lock_state(), 0);
    assert!(root.is_writable());
    assert_eq!(root.ref_count(), 1);
    Ok(())
}

#[test]
fn two_roots_of_one_file_never_hold_the_bytes_for_writing_at_once() -> Result<()> {
    // The first root of a file keeps its lock word in the file's alias
    // word, the second its own: whichever root a writer or a reader goes
    // through, the file's one rule holds (no writer beside any other
    // guard), and both lock words end where they started.
    use mediamem::{FdAllocator, FdMemoryFlags};
    use std::os::fd::{AsFd, BorrowedFd};
    fn import(fd: BorrowedFd<'_>) -> Result<Memory> {
        FdAllocator::new().alloc_borrowed(fd, 4096, 0, 4096, FdMemoryFlags::empty())
    }
    let file = common::temp_file(&[0u8; 4096]);
    let first = import(file.as_fd())?;
    let twin = import(first.fd().unwrap())?;
    assert!(first
        .block_alias()
        .unwrap()
        .same(twin.block_alias().unwrap()));
    // Writers add 1_000 while they hold the bytes, readers add 1: a writer
    // beside anyone shows as a count of 1_001 or more.
    let holders = Arc::new(AtomicUsize::new(0));
    let (writes, reads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let start = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mem = if t % 2 == 0 {
                first.clone()
            } else {
                twin.clone()
            };
            let (holders, writes, reads, start) = (
                holders.clone(),
                writes.clone(),
                reads.clone(),
                start.clone(),
            );
            thread::spawn(move || {
                start.wait();
                for i in 0..20_000usize {
                    if (i + t) % 3 == 0 {
                        if let Ok(mut w) = mem.map_writable() {
                            let before = holders.fetch_add(1_000, Ordering::SeqCst);
                            assert_eq!(before, 0, "a writer beside other guards");
                            w.fill(t as u8);
                            holders.fetch_sub(1_000, Ordering::SeqCst);
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if let Ok(r) = mem.map_readable() {
                        let before = holders.fetch_add(1, Ordering::SeqCst);
                        assert!(before < 1_000, "a reader beside a writer");
                        let first = r[0];
                        assert!(r.iter().all(|&b| b == first), "torn bytes");
                        holders.fetch_sub(1, Ordering::SeqCst);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a mapping thread panicked");
    }
    assert!(writes.load(Ordering::Relaxed) > 0 && reads.load(Ordering::Relaxed) > 0);
    assert_eq!((first.lock_state(), twin.lock_state()), (0, 0));
    // Both roots are free to write again, one after the other.
    first.map_writable()?[0] = 1;
    twin.map_writable()?[1] = 2;
    assert_eq!(&first.map_readable()?[..2], &[1, 2]);
    Ok(())
}
