//! The lock word: GStreamer's `gst_mini_object_lock` state machine.
//!
//! One `u32`, updated with compare-and-swap:
//!
//! | bits   | meaning |
//! |--------|---------|
//! | 0..8   | access mode of the held maps (READ = 1, WRITE = 2) |
//! | 8..16  | number of held maps, in steps of [`LOCK_ONE`] |
//! | 16..32 | share count (exclusive locks), in steps of [`SHARE_ONE`] |
//!
//! The GStreamer word is the low half of a 64-bit atomic. The high half is
//! mediamem's byte-borrow count for the block (on roots only): any number
//! of readers, or one writer bit, for the slice-giving map guards. Keeping
//! both in one word lets a root's map take its lock and its borrow with a
//! single compare-and-swap, and its unmap release both with another.
//!
//! Two deliberate departures from GStreamer, both fixes of real bugs:
//!
//! * **Stale mode bits.** GStreamer clears the mode bits only when the last
//!   unlock's mode equals the stored mode, so mapping READWRITE, then WRITE,
//!   and unmapping in that order leaves `0x3` behind for ever (and from then
//!   on every share fails). Here the mode bits are cleared whenever the map
//!   count reaches zero, so the word always returns to its start state.
//! * **Counter overflow.** GStreamer never checks the 8-bit map count or the
//!   16-bit share count, so the 256th nested map silently becomes a share.
//!   Here a full counter is an error ([`Error::TooManyLocks`]).

use super::flags::LockFlags;
use super::region::Borrow;
use super::sync::{AtomicU64, Ordering};
use crate::error::{Access, Error, Result};

/// One map lock.
pub(crate) const LOCK_ONE: u32 = 1 << 8;
/// One exclusive (share) lock.
pub(crate) const SHARE_ONE: u32 = 1 << 16;
const ACCESS_MASK: u32 = 0xff;
const LOCK_MASK: u32 = 0xff00;
const EXCLUSIVE: u32 = LockFlags::EXCLUSIVE.bits();
const WRITE: u32 = LockFlags::WRITE.bits();

/// `IS_SHARED`: two or more exclusive holders.
#[inline]
fn is_shared(state: u32) -> bool {
    state >= 2 * SHARE_ONE
}

/// The writer bit of the borrow half.
const WRITER: u32 = 1 << 31;

/// The borrow half after taking `kind`, or why not.
#[inline]
fn next_borrowed(borrows: u32, kind: Borrow) -> Result<u32> {
    match kind {
        Borrow::None => Ok(borrows),
        Borrow::Shared if borrows & WRITER != 0 => Err(Error::Aliased {
            held: "a writable mapping",
        }),
        Borrow::Shared if borrows == WRITER - 1 => Err(Error::TooManyLocks {
            what: "readable mappings",
        }),
        Borrow::Shared => Ok(borrows + 1),
        Borrow::Exclusive if borrows == 0 => Ok(WRITER),
        Borrow::Exclusive if borrows & WRITER != 0 => Err(Error::Aliased {
            held: "a writable mapping",
        }),
        Borrow::Exclusive => Err(Error::Aliased {
            held: "readable mappings",
        }),
    }
}

/// The borrow half after releasing `kind`.
#[inline]
fn next_released(borrows: u32, kind: Borrow) -> u32 {
    match kind {
        Borrow::None => borrows,
        Borrow::Shared => borrows.wrapping_sub(1),
        Borrow::Exclusive => 0,
    }
}

#[inline]
fn split(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

#[inline]
fn join(lock: u32, borrows: u32) -> u64 {
    u64::from(lock) | u64::from(borrows) << 32
}

/// The lock word of one memory (and, on roots, the borrows of its block).
#[derive(Debug, Default)]
pub(crate) struct LockWord(AtomicU64);

impl LockWord {
    /// The raw GStreamer state.
    #[inline]
    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire) as u32
    }

    /// Whether nothing holds the word: no lock, map or borrow. Relaxed: the
    /// caller (`Memory::owns_block`) already synchronised with every other
    /// handle through the reference count, and has the only one.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }

    /// Apply `f` to the (lock, borrows) halves with a CAS loop.
    #[inline]
    fn update(&self, f: impl Fn(u32, u32) -> Result<(u32, u32)>, order: Ordering) -> Result<()> {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let (lock, borrows) = split(word);
            let (l, b) = f(lock, borrows)?;
            match self
                .0
                .compare_exchange_weak(word, join(l, b), order, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => word = actual,
            }
        }
    }

    /// Take a lock and a borrow of this word's block in one step (a root
    /// mapping itself).
    #[inline]
    pub(crate) fn lock_borrow(&self, flags: LockFlags, readonly: bool, kind: Borrow) -> Result<()> {
        let flags = flags.bits();
        if readonly && flags & WRITE != 0 {
            return Err(Error::ReadOnly);
        }
        self.update(
            |lock, borrows| Ok((next_locked(lock, flags)?, next_borrowed(borrows, kind)?)),
            Ordering::Acquire,
        )
    }

    /// Undo [`lock_borrow`](LockWord::lock_borrow).
    #[inline]
    pub(crate) fn unlock_release(&self, flags: LockFlags, kind: Borrow) -> Result<()> {
        let flags = flags.bits();
        self.update(
            |lock, borrows| Ok((next_unlocked(lock, flags)?, next_released(borrows, kind))),
            Ordering::Release,
        )
    }

    /// `gst_memory_share` on a root, in one step: two temporary exclusive
    /// locks (checked as GStreamer checks them), the new share's exclusive
    /// hold on this same word, and the release of the two temporaries. The
    /// net effect is one more share; the failures are those of the steps.
    #[inline]
    pub(crate) fn share_hold(&self) -> Result<()> {
        self.update(
            |lock, borrows| {
                let first = next_locked(lock, EXCLUSIVE)?;
                let second = next_locked(first, EXCLUSIVE)?;
                let held = next_locked(second, EXCLUSIVE)?;
                Ok((held - 2 * SHARE_ONE, borrows))
            },
            Ordering::AcqRel,
        )
    }

    /// Take only a borrow of this (root's) block.
    #[inline]
    pub(crate) fn borrow(&self, kind: Borrow) -> Result<()> {
        if kind == Borrow::None {
            return Ok(());
        }
        self.update(
            |lock, borrows| Ok((lock, next_borrowed(borrows, kind)?)),
            Ordering::Acquire,
        )
    }

    /// Release only a borrow.
    #[inline]
    pub(crate) fn release(&self, kind: Borrow) {
        if kind == Borrow::None {
            return;
        }
        let done = self.update(
            |lock, borrows| Ok((lock, next_released(borrows, kind))),
            Ordering::Release,
        );
        debug_assert!(done.is_ok());
    }

    /// Whether no slice of the block is alive.
    #[cfg(test)]
    pub(crate) fn borrows_free(&self) -> bool {
        split(self.0.load(Ordering::Acquire)).1 == 0
    }

    /// The share count (number of exclusive holders).
    #[cfg(test)]
    pub(crate) fn shares(&self) -> u32 {
        self.get() >> 16
    }

    /// `gst_memory_is_writable`: the share count is at most one. The reference
    /// count is deliberately not looked at (GStreamer design).
    #[inline]
    pub(crate) fn is_writable(&self) -> bool {
        !is_shared(self.get())
    }

    /// Take a lock. `readonly` is the memory's READONLY flag.
    pub(crate) fn lock(&self, flags: LockFlags, readonly: bool) -> Result<()> {
        self.lock_borrow(flags, readonly, Borrow::None)
    }

    /// Release a lock taken with the same flags.
    pub(crate) fn unlock(&self, flags: LockFlags) -> Result<()> {
        self.unlock_release(flags, Borrow::None)
    }
}

/// The state after a successful `lock(flags)` from `state`, or why it fails.
#[inline]
fn next_locked(state: u32, flags: u32) -> Result<u32> {
    let mut access = flags & ACCESS_MASK;
    let mut new = state;
    if access & EXCLUSIVE != 0 {
        if state >> 16 == 0xffff {
            return Err(Error::TooManyLocks { what: "shares" });
        }
        new += SHARE_ONE;
        access &= !EXCLUSIVE;
    }
    if (state & WRITE != 0 || access & WRITE != 0) && is_shared(new) {
        return Err(Error::Shared {
            requested: Access(flags & 0x7),
            shares: new >> 16,
        });
    }
    if access != 0 {
        if state & (ACCESS_MASK | LOCK_MASK) == 0 {
            // No map held: this one sets the mode.
            new |= access;
        } else if state & access != access {
            return Err(Error::LockConflict {
                requested: Access(access),
                held: Access(state & ACCESS_MASK),
            });
        }
        if state & LOCK_MASK == LOCK_MASK {
            return Err(Error::TooManyLocks { what: "maps" });
        }
        new += LOCK_ONE;
    }
    Ok(new)
}

/// The state after `unlock(flags)` from `state`, or why it does not match.
#[inline]
fn next_unlocked(state: u32, flags: u32) -> Result<u32> {
    let mut access = flags & ACCESS_MASK;
    let mut new = state;
    let mismatch = || Error::NotLocked {
        requested: Access(flags & 0x7),
        state,
    };
    if access & EXCLUSIVE != 0 {
        if state < SHARE_ONE {
            return Err(mismatch());
        }
        new -= SHARE_ONE;
        access &= !EXCLUSIVE;
    }
    if access != 0 {
        if state & access != access || state & LOCK_MASK == 0 {
            return Err(mismatch());
        }
        new -= LOCK_ONE;
        // Fixed GStreamer quirk: clear the mode when the last map goes,
        // whatever order the maps were released in.
        if new & LOCK_MASK == 0 {
            new &= !ACCESS_MASK;
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: LockFlags = LockFlags::READ;
    const W: LockFlags = LockFlags::WRITE;
    const RW: LockFlags = LockFlags::READWRITE;
    const X: LockFlags = LockFlags::EXCLUSIVE;

    #[test]
    fn shared_means_two_exclusive_holders_whatever_else_is_held() {
        assert!(!is_shared(0));
        // One exclusive holder with maps and access bits: not shared.
        assert!(!is_shared(SHARE_ONE + 2 * LOCK_ONE + 0x3));
        assert!(!is_shared(SHARE_ONE + LOCK_MASK + ACCESS_MASK));
        assert!(is_shared(2 * SHARE_ONE));
        assert!(is_shared(3 * SHARE_ONE + LOCK_ONE + 0x1));
    }

    #[test]
    fn borrow_half_raw_transitions() {
        use Borrow::{Exclusive, Shared};
        assert_eq!(next_borrowed(0, Shared).unwrap(), 1);
        assert_eq!(next_borrowed(0, Exclusive).unwrap(), WRITER);
        // The last reader count below the writer bit is refused, never
        // carried into it.
        assert_eq!(next_borrowed(WRITER - 2, Shared).unwrap(), WRITER - 1);
        assert!(matches!(
            next_borrowed(WRITER - 1, Shared),
            Err(Error::TooManyLocks { .. })
        ));
        // Each refusal names what holds the bytes.
        for (borrows, kind, held) in [
            (WRITER, Shared, "a writable mapping"),
            (WRITER, Exclusive, "a writable mapping"),
            (1, Exclusive, "readable mappings"),
            (WRITER - 1, Exclusive, "readable mappings"),
        ] {
            match next_borrowed(borrows, kind) {
                Err(Error::Aliased { held: h }) => assert_eq!(h, held, "{borrows:#x}"),
                other => panic!("{borrows:#x}: {other:?}"),
            }
        }
        assert_eq!(next_released(WRITER, Exclusive), 0);
        assert_eq!(next_released(2, Shared), 1);
    }

    #[test]
    fn lock_transitions_and_their_refusals_in_raw_values() {
        let (r, w, x) = (R.bits(), W.bits(), X.bits());
        // A held mode is kept by further maps of the same access...
        assert_eq!(next_locked(0x101, r).unwrap(), 0x201);
        assert_eq!(next_locked(0x103, r).unwrap(), 0x203);
        // ...and refused for an access it does not include, saying both.
        match next_locked(0x101, w) {
            Err(Error::LockConflict { requested, held }) => {
                assert_eq!((requested.0, held.0), (w, r));
            }
            other => panic!("{other:?}"),
        }
        // Exclusive holders: the second makes the memory shared, and a
        // write then fails with the number of holders.
        assert_eq!(next_locked(0, x).unwrap(), SHARE_ONE);
        match next_locked(SHARE_ONE, x | w) {
            Err(Error::Shared { requested, shares }) => {
                assert_eq!((requested.0, shares), (w | x, 2));
            }
            other => panic!("{other:?}"),
        }
        match next_locked(2 * SHARE_ONE + 0x100 + r, w) {
            Err(Error::Shared { requested, shares }) => assert_eq!((requested.0, shares), (w, 2)),
            other => panic!("{other:?}"),
        }
        // Unlocks that do not match say what was asked and what is held.
        for (state, flags) in [(0, r), (0x101, w), (0, x), (0x101, x)] {
            match next_unlocked(state, flags) {
                Err(Error::NotLocked {
                    requested,
                    state: s,
                }) => {
                    assert_eq!(
                        (requested.0, s),
                        (flags & 0x7, state),
                        "{state:#x} {flags:#x}"
                    );
                }
                other => panic!("{state:#x} {flags:#x}: {other:?}"),
            }
        }
        assert_eq!(next_unlocked(0x203, r).unwrap(), 0x103);
        assert_eq!(next_unlocked(SHARE_ONE + 0x101, x | r).unwrap(), 0);
    }

    #[test]
    fn bit_layout() {
        let l = LockWord::default();
        l.lock(R, false).unwrap();
        assert_eq!(l.get(), 0x101);
        l.lock(R, false).unwrap();
        assert_eq!(l.get(), 0x201);
        l.lock(X, false).unwrap();
        assert_eq!(l.get(), 0x10201);
        l.unlock(R).unwrap();
        l.unlock(R).unwrap();
        l.unlock(X).unwrap();
        assert_eq!(l.get(), 0);
    }

    #[test]
    fn stale_mode_bits_are_cleared() {
        // GStreamer leaves 0x3 here (spec 1.3); we return to 0.
        let l = LockWord::default();
        l.lock(RW, false).unwrap();
        l.lock(W, false).unwrap();
        l.unlock(RW).unwrap();
        assert_eq!(l.get(), 0x103);
        l.unlock(W).unwrap();
        assert_eq!(l.get(), 0);
        // RW then R, RW released first.
        l.lock(RW, false).unwrap();
        l.lock(R, false).unwrap();
        l.unlock(RW).unwrap();
        l.unlock(R).unwrap();
        assert_eq!(l.get(), 0);
    }

    #[test]
    fn readonly_refuses_write() {
        let l = LockWord::default();
        assert!(matches!(l.lock(W, true), Err(Error::ReadOnly)));
        assert!(matches!(l.lock(W | X, true), Err(Error::ReadOnly)));
        l.lock(R, true).unwrap();
        assert_eq!(l.get(), 0x101);
    }

    #[test]
    fn unbalanced_unlock_is_an_error_and_changes_nothing() {
        let l = LockWord::default();
        assert!(matches!(l.unlock(R), Err(Error::NotLocked { .. })));
        assert!(matches!(l.unlock(X), Err(Error::NotLocked { .. })));
        l.lock(R, false).unwrap();
        assert!(matches!(l.unlock(W), Err(Error::NotLocked { .. })));
        assert_eq!(l.get(), 0x101);
    }

    #[test]
    fn map_counter_overflow_is_refused() {
        let l = LockWord::default();
        for _ in 0..255 {
            l.lock(R, false).unwrap();
        }
        assert_eq!(l.get(), 0xff01);
        assert!(matches!(
            l.lock(R, false),
            Err(Error::TooManyLocks { what: "maps" })
        ));
        assert_eq!(l.get(), 0xff01, "a refused lock changes nothing");
        // The share count was not touched by the overflow.
        assert_eq!(l.shares(), 0);
    }

    #[test]
    fn share_counter_overflow_is_refused() {
        let l = LockWord(AtomicU64::new(0xffff << 16));
        assert!(matches!(
            l.lock(X, false),
            Err(Error::TooManyLocks { what: "shares" })
        ));
    }

    #[test]
    fn share_hold_matches_the_sequence() {
        // Fresh: one more share.
        let l = LockWord::default();
        l.share_hold().unwrap();
        assert_eq!(l.get(), 0x10000);
        l.share_hold().unwrap();
        assert_eq!(l.get(), 0x20000);
        // Mapped for writing: the second temporary lock fails, as in
        // GStreamer, and nothing changes.
        let l = LockWord::default();
        l.lock(W, false).unwrap();
        assert!(matches!(l.share_hold(), Err(Error::Shared { .. })));
        assert_eq!(l.get(), 0x102);
        // Mapped for reading: fine.
        let l = LockWord::default();
        l.lock(R, false).unwrap();
        l.share_hold().unwrap();
        assert_eq!(l.get(), 0x10101);
    }

    #[test]
    fn borrow_rules() {
        let l = LockWord::default();
        l.borrow(Borrow::Shared).unwrap();
        l.borrow(Borrow::Shared).unwrap();
        assert!(matches!(
            l.borrow(Borrow::Exclusive),
            Err(Error::Aliased {
                held: "readable mappings"
            })
        ));
        l.release(Borrow::Shared);
        l.release(Borrow::Shared);
        l.borrow(Borrow::Exclusive).unwrap();
        assert!(l.borrow(Borrow::Shared).is_err());
        assert!(l.borrow(Borrow::Exclusive).is_err());
        l.borrow(Borrow::None).unwrap();
        l.release(Borrow::Exclusive);
        assert!(l.borrows_free());
        assert_eq!(l.get(), 0, "borrows never touch the GStreamer word");
    }

    #[test]
    fn lock_and_borrow_are_one_step() {
        let l = LockWord::default();
        l.lock_borrow(W, false, Borrow::Exclusive).unwrap();
        assert_eq!(l.get(), 0x102);
        // A second WRITE passes the lock word but not the borrow: nothing
        // changes.
        assert!(matches!(
            l.lock_borrow(W, false, Borrow::Exclusive),
            Err(Error::Aliased { .. })
        ));
        assert_eq!(l.get(), 0x102);
        // A refused lock takes no borrow either.
        assert!(l.lock_borrow(R, false, Borrow::Shared).is_err());
        l.unlock_release(W, Borrow::Exclusive).unwrap();
        assert_eq!(l.get(), 0);
        assert!(l.borrows_free());
    }

    #[test]
    fn write_fails_when_shared() {
        let l = LockWord::default();
        l.lock(X, false).unwrap();
        l.lock(W, false).unwrap(); // share count 1 is still writable
        l.unlock(W).unwrap();
        l.lock(X, false).unwrap();
        assert!(!l.is_writable());
        assert!(matches!(l.lock(W, false), Err(Error::Shared { .. })));
        l.lock(R, false).unwrap();
    }
}

/// Model checks of the lock word's compare-and-swap loops (`cargo xtask
/// loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::memory::sync::outcomes;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    const R: LockFlags = LockFlags::READ;
    const W: LockFlags = LockFlags::WRITE;
    const X: LockFlags = LockFlags::EXCLUSIVE;

    /// Map with `flags` on another thread and unmap; whether the lock was
    /// granted.
    fn map_unmap(l: &Arc<LockWord>, flags: LockFlags) -> thread::JoinHandle<bool> {
        let l = l.clone();
        thread::spawn(move || match l.lock(flags, false) {
            Ok(()) => {
                l.unlock(flags).unwrap();
                true
            }
            Err(e) => {
                assert!(matches!(e, Error::LockConflict { .. }), "{e:?}");
                false
            }
        })
    }

    #[test]
    fn loom_read_maps_nest() {
        let seen = outcomes(|| {
            let l = Arc::new(LockWord::default());
            let other = map_unmap(&l, R);
            l.lock(R, false).unwrap();
            let held = l.get();
            l.unlock(R).unwrap();
            assert!(other.join().unwrap(), "READ refused next to READ");
            assert_eq!(l.0.load(Ordering::Relaxed), 0);
            held
        });
        // Alone, and nested with the other thread's map.
        assert_eq!(seen, [0x101, 0x201].into(), "{seen:x?}");
    }

    #[test]
    fn loom_read_and_write_maps_conflict_but_never_corrupt() {
        let seen = outcomes(|| {
            let l = Arc::new(LockWord::default());
            let writer = map_unmap(&l, W);
            let reader = map_unmap(&l, R);
            let granted = (writer.join().unwrap(), reader.join().unwrap());
            assert_eq!(l.0.load(Ordering::Relaxed), 0);
            granted
        });
        // A map is only refused while the other one is held.
        assert_eq!(seen, [(false, true), (true, false), (true, true)].into());
    }

    #[test]
    fn loom_share_hold_and_write_map() {
        // A share is made (share_hold) and dropped (unlock EXCLUSIVE) while
        // the root is mapped for writing: a share of a WRITE-mapped root is
        // refused, a WRITE map next to one share is fine.
        let seen = outcomes(|| {
            let l = Arc::new(LockWord::default());
            let sharer = {
                let l = l.clone();
                thread::spawn(move || match l.share_hold() {
                    Ok(()) => {
                        assert!(l.get() >= SHARE_ONE);
                        l.unlock(X).unwrap();
                        true
                    }
                    Err(e) => {
                        assert!(matches!(e, Error::Shared { .. }), "{e:?}");
                        false
                    }
                })
            };
            l.lock(W, false).unwrap();
            l.unlock(W).unwrap();
            let shared = sharer.join().unwrap();
            assert_eq!(l.0.load(Ordering::Relaxed), 0);
            shared
        });
        assert_eq!(seen, [false, true].into());
    }

    #[test]
    fn loom_exclusive_borrows_exclude() {
        // Two writable maps (one through the lock word and its borrow half
        // in one step, one through the borrow half only) and one readable
        // map of the same block. Whoever is granted a borrow touches the
        // bytes: loom reports a data race if two of them ever overlap with a
        // writer among them.
        let seen = outcomes(|| {
            let l = Arc::new(LockWord::default());
            let bytes = Arc::new(UnsafeCell::new(0u32));
            let mapper = {
                let (l, bytes) = (l.clone(), bytes.clone());
                thread::spawn(move || {
                    let granted = l.lock_borrow(W, false, Borrow::Exclusive).is_ok();
                    if granted {
                        // loom records the write access; the pointer
                        // itself need not be touched.
                        bytes.with_mut(|_| ());
                        l.unlock_release(W, Borrow::Exclusive).unwrap();
                    }
                    granted
                })
            };
            let borrower = {
                let (l, bytes) = (l.clone(), bytes.clone());
                thread::spawn(move || {
                    let granted = l.borrow(Borrow::Exclusive).is_ok();
                    if granted {
                        bytes.with_mut(|_| ());
                        l.release(Borrow::Exclusive);
                    }
                    granted
                })
            };
            let granted = l.lock_borrow(R, false, Borrow::Shared).is_ok();
            if granted {
                bytes.with(|_| ());
                l.unlock_release(R, Borrow::Shared).unwrap();
            }
            let all = (mapper.join().unwrap(), borrower.join().unwrap(), granted);
            assert_eq!(l.0.load(Ordering::Relaxed), 0);
            all
        });
        // Everyone in turn, and each of them refused while another held
        // the bytes.
        for expected in [(true, true, true), (false, true, true), (true, false, true)] {
            assert!(
                seen.contains(&expected),
                "{expected:?} never explored: {seen:?}"
            );
        }
        assert!(
            seen.iter().any(|o| !o.2),
            "the reader was never refused: {seen:?}"
        );
    }
}
