//! The visible region (offset, size) of a [`Memory`](super::Memory), kept
//! consistent with a sequence lock, and the kinds of byte borrow a map
//! takes (tracked in the lock word).

use super::sync::{self, fence, AtomicU32, AtomicUsize, Ordering};

#[cfg(test)]
use crate::error::Error;
use crate::error::Result;

/// `(offset, size)` of a memory, readable without locks and updated
/// atomically as a pair.
///
/// `resize` takes `&self` (a memory is a shared handle, as in GStreamer), so
/// a reader on another thread must never see the new offset with the old
/// size: that pair could exceed `maxsize`. A sequence lock gives readers a
/// consistent pair with two plain loads.
#[derive(Debug)]
pub(crate) struct Region {
    seq: AtomicU32,
    offset: AtomicUsize,
    size: AtomicUsize,
}

impl Region {
    pub(crate) fn new(offset: usize, size: usize) -> Self {
        Region {
            seq: AtomicU32::new(0),
            offset: AtomicUsize::new(offset),
            size: AtomicUsize::new(size),
        }
    }

    /// A consistent `(offset, size)` pair.
    #[inline]
    pub(crate) fn get(&self) -> (usize, usize) {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let offset = self.offset.load(Ordering::Relaxed);
                let size = self.size.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return (offset, size);
                }
            }
            sync::spin_loop();
        }
    }

    /// Replace the pair with `f(offset, size)` as one atomic step; `f` may
    /// refuse, and then nothing changes. If `f` panics nothing changes
    /// either, and the sequence lock is released all the same.
    pub(crate) fn update<T>(
        &self,
        f: impl FnOnce(usize, usize) -> Result<(usize, usize, T)>,
    ) -> Result<T> {
        // Writers exclude each other by making the sequence odd.
        let mut spins = 0u32;
        let start = loop {
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && self
                    .seq
                    .compare_exchange_weak(
                        s,
                        s.wrapping_add(1),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                break s;
            }
            spins += 1;
            if spins > 64 {
                sync::yield_now();
            } else {
                sync::spin_loop();
            }
        };
        // From here on the sequence is odd; the guard makes it even again
        // however this function is left, so readers never spin for ever.
        let _unlock = WriteGuard {
            seq: &self.seq,
            end: start.wrapping_add(2),
        };
        fence(Ordering::Release);
        let (offset, size, out) = f(
            self.offset.load(Ordering::Relaxed),
            self.size.load(Ordering::Relaxed),
        )?;
        self.offset.store(offset, Ordering::Relaxed);
        self.size.store(size, Ordering::Relaxed);
        Ok(out)
    }
}

/// The write side of [`Region`]'s sequence lock, held: dropping it ends the
/// write with the next even sequence number.
struct WriteGuard<'a> {
    seq: &'a AtomicU32,
    end: u32,
}

impl Drop for WriteGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: a reader that sees `end` sees the stores before it.
        self.seq.store(self.end, Ordering::Release);
    }
}

/// How a mapping borrows the bytes of a block, at the Rust level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Borrow {
    /// No borrow: a raw mapping that only hands out pointers.
    None,
    /// A shared borrow: `&[u8]`.
    Shared,
    /// An exclusive borrow: `&mut [u8]`.
    Exclusive,
}

impl Borrow {
    /// The borrow a slice-giving map with `flags` needs.
    pub(crate) fn for_flags(flags: super::MapFlags) -> Borrow {
        if flags.contains(super::MapFlags::WRITE) {
            Borrow::Exclusive
        } else {
            Borrow::Shared
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_update_is_all_or_nothing() {
        let r = Region::new(1, 2);
        assert_eq!(r.get(), (1, 2));
        r.update(|o, s| Ok((o + 10, s + 20, ()))).unwrap();
        assert_eq!(r.get(), (11, 22));
        let e = r.update::<()>(|_, _| {
            Err(Error::SizeOverflow {
                what: "test refusal",
            })
        });
        assert!(e.is_err());
        assert_eq!(r.get(), (11, 22));
    }

    #[test]
    fn a_panicking_update_releases_the_lock() {
        let r = Region::new(1, 2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.update::<()>(|_, _| panic!("the update closure panics (expected)"))
        }));
        assert!(caught.is_err());
        // Looked at directly first: left odd, the lock would make `get` spin
        // for ever instead of failing.
        assert_eq!(r.seq.load(Ordering::Relaxed) & 1, 0, "sequence left odd");
        assert_eq!(r.get(), (1, 2), "a panicking update changes nothing");
        r.update(|o, s| Ok((o + 1, s + 1, ()))).unwrap();
        assert_eq!(r.get(), (2, 3));
    }

    #[test]
    fn region_pairs_stay_consistent_under_contention() {
        // Writers keep offset + size == 1000; a torn read would break the
        // sum. The reader goes on until the writers have made many updates
        // while it was reading (bounded, so a stuck writer fails the test).
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let r = Arc::new(Region::new(0, 1000));
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..2usize)
            .map(|t| {
                let (r, stop, updates) = (r.clone(), stop.clone(), updates.clone());
                std::thread::spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let o = (i * 7 + t) % 1000;
                        r.update(|_, _| Ok((o, 1000 - o, ()))).unwrap();
                        updates.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        let mut reads = 0usize;
        while (reads < 200_000 || updates.load(Ordering::Relaxed) < 10_000) && reads < 500_000_000 {
            let (o, s) = r.get();
            assert_eq!(o + s, 1000, "torn read ({o}, {s})");
            reads += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(
            updates.load(Ordering::Relaxed) >= 10_000,
            "writers never ran"
        );
    }
}

/// Model checks of the sequence lock (`cargo xtask loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::memory::sync::outcomes;
    use loom::sync::Arc;
    use loom::thread;

    /// Every pair the writers store keeps this sum.
    const SUM: usize = 10;

    #[test]
    fn loom_seqlock_readers_never_see_a_torn_pair() {
        // The reader runs on a spawned thread, the writer on the model's
        // own: loom finds the reader's conflicts with the writer's stores.
        let seen = outcomes(|| {
            let r = Arc::new(Region::new(0, SUM));
            let reader = {
                let r = r.clone();
                thread::spawn(move || {
                    let mut pairs = [(0, 0); 2];
                    for pair in &mut pairs {
                        *pair = r.get();
                        assert_eq!(pair.0 + pair.1, SUM, "torn read {pair:?}");
                    }
                    pairs
                })
            };
            for o in [3, 7] {
                r.update(|_, _| Ok((o, SUM - o, ()))).unwrap();
            }
            let pairs = reader.join().unwrap();
            assert_eq!(r.get(), (7, SUM - 7));
            pairs.map(|(o, _)| o)
        });
        // The reader saw every pair, and both before and during the writes.
        for expected in [[0, 0], [0, 3], [3, 7], [7, 7], [0, 7]] {
            assert!(
                seen.contains(&expected),
                "{expected:?} never explored: {seen:?}"
            );
        }
    }

    #[test]
    fn loom_seqlock_writers_exclude_each_other() {
        // Each writer moves one byte from the size to the offset, reading
        // the pair it replaces: a lost update or a torn pair shows.
        let seen = outcomes(|| {
            let r = Arc::new(Region::new(0, SUM));
            let move_one = |r: &Region| {
                r.update(|o, s| {
                    assert_eq!(o + s, SUM, "writer saw a torn pair ({o}, {s})");
                    Ok((o + 1, s - 1, o))
                })
                .unwrap()
            };
            let other = {
                let r = r.clone();
                thread::spawn(move || {
                    let seen = move_one(&r);
                    let (o, s) = r.get();
                    assert_eq!(o + s, SUM, "torn read ({o}, {s})");
                    (seen, o)
                })
            };
            let mine = move_one(&r);
            let (theirs, read) = other.join().unwrap();
            assert_eq!(r.get(), (2, SUM - 2), "an update was lost");
            (mine, theirs, read)
        });
        // Either writer can go first.
        for expected in [(0, 1, 2), (1, 0, 1)] {
            assert!(
                seen.contains(&expected),
                "{expected:?} never explored: {seen:?}"
            );
        }
    }

    #[test]
    fn loom_seqlock_refused_update_changes_nothing() {
        // A refusing writer still ends its write: the reader and the other
        // writer get through, and only the accepted update shows.
        let seen = outcomes(|| {
            let r = Arc::new(Region::new(0, SUM));
            let refuser = {
                let r = r.clone();
                thread::spawn(move || {
                    let e = r.update::<()>(|_, _| Err(Error::SizeOverflow { what: "refused" }));
                    assert!(e.is_err());
                    r.get()
                })
            };
            r.update(|o, s| Ok((o + 4, s - 4, ()))).unwrap();
            let after_refusal = refuser.join().unwrap();
            assert_eq!(r.get(), (4, SUM - 4));
            after_refusal.0
        });
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
}
