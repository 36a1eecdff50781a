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
//! single compare-and-swap, and its unmap release both with one
//! `fetch_sub`.
//!
//! Every lock (and map) is a compare-and-swap, which checks the state
//! before changing it. Every unlock (and unmap, and borrow release) is one
//! `fetch_sub` of what the matching lock added: the guards that call them
//! are balanced by construction, so an unlock has nothing to check, and a
//! subtraction is cheaper than a compare-and-swap loop. A subtraction
//! cannot clear the mode bits when the last map goes, so the stored word
//! may keep them with a map count of zero; such bits mean nothing: every
//! reader of the word ([`LockWord::get`], [`LockWord::is_idle`], the lock
//! transitions) takes a map count of zero as "no mode", and the next map
//! overwrites them.
//!
//! Two deliberate departures from GStreamer, both fixes of real bugs:
//!
//! * **Stale mode bits.** GStreamer clears the mode bits only when the last
//!   unlock's mode equals the stored mode, so mapping READWRITE, then WRITE,
//!   and unmapping in that order leaves `0x3` behind for ever (and from then
//!   on every share fails). Here the mode bits count for nothing once the
//!   map count is zero (see above), so the word always returns to its start
//!   state as [`LockWord::get`] (`Memory::lock_state`) shows it.
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

/// What taking `kind` added to the borrow half.
#[inline]
fn borrow_delta(kind: Borrow) -> u32 {
    match kind {
        Borrow::None => 0,
        Borrow::Shared => 1,
        Borrow::Exclusive => WRITER,
    }
}

/// What a successful `lock(flags)` added to the GStreamer half, less the
/// mode bits it may have set (they are left behind; see the module docs).
#[inline]
fn lock_delta(flags: u32) -> u32 {
    let mut delta = 0;
    if flags & EXCLUSIVE != 0 {
        delta += SHARE_ONE;
    }
    if flags & ACCESS_MASK & !EXCLUSIVE != 0 {
        delta += LOCK_ONE;
    }
    delta
}

/// The GStreamer state with mode bits left behind by the last unmap
/// removed: no map held means no mode.
#[inline]
fn normalized(state: u32) -> u32 {
    if state & LOCK_MASK == 0 {
        state & !ACCESS_MASK
    } else {
        state
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
    /// The GStreamer state (without mode bits when no map is held).
    #[inline]
    pub(crate) fn get(&self) -> u32 {
        normalized(self.0.load(Ordering::Acquire) as u32)
    }

    /// Clear the GStreamer half, keeping the borrows: for a word that
    /// passes from one root to another ([`BlockAlias`](super::alias::BlockAlias)),
    /// when its root is freed, so that locks leaked with `mem::forget` (and
    /// mode bits) die with that root as its own word would.
    pub(crate) fn clear_gst_half(&self) {
        self.0.fetch_and(!u64::from(u32::MAX), Ordering::AcqRel);
    }

    /// Whether nothing holds the word: no lock, map or borrow (mode bits
    /// left behind by the last unmap hold nothing). Relaxed: the caller
    /// (`Memory::owns_block`) already synchronised with every other handle
    /// through the reference count, and has the only one.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.0.load(Ordering::Relaxed) & !u64::from(ACCESS_MASK) == 0
    }

    /// Give back `lock` and `borrows` (what a lock and a borrow added) with
    /// one subtraction. Only for what the caller holds: the guards call
    /// this once for each lock or borrow they took, so every field is at
    /// least what is subtracted from it and nothing borrows across fields.
    #[inline]
    fn give_back(&self, lock: u32, borrows: u32) {
        let old = self.0.fetch_sub(join(lock, borrows), Ordering::Release);
        if cfg!(debug_assertions) {
            let (l, b) = split(old);
            assert!(
                l & LOCK_MASK >= lock & LOCK_MASK
                    && l >> 16 >= lock >> 16
                    && (borrows != WRITER || b == WRITER)
                    && (borrows != 1 || (b != 0 && b & WRITER == 0)),
                "unbalanced unlock: {lock:#x}/{borrows:#x} from {l:#x}/{b:#x}"
            );
        }
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

    /// [`lock_borrow`](LockWord::lock_borrow)`(READ, _, Shared)`, the read
    /// map of a root, with its common case written out: no map held or
    /// only READ maps, room for one more map and one more reader, and no
    /// writer. The compare-and-swap is then built from the word with no
    /// other test (the generic transition, with flags known only at run
    /// time, stays an out-of-line call); anything else takes the generic
    /// path, which gives the same result or the exact error.
    #[inline(always)]
    pub(crate) fn lock_read_shared(&self) -> Result<()> {
        let read = LockFlags::READ.bits();
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let (lock, borrows) = split(word);
            let lock = normalized(lock);
            if lock & ACCESS_MASK & !read != 0
                || lock & LOCK_MASK == LOCK_MASK
                || borrows >= WRITER - 1
            {
                return self.lock_borrow(LockFlags::READ, false, Borrow::Shared);
            }
            let new = join((lock | read) + LOCK_ONE, borrows + 1);
            match self
                .0
                .compare_exchange_weak(word, new, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => word = actual,
            }
        }
    }

    /// Undo [`lock_borrow`](LockWord::lock_borrow) (one subtraction; only
    /// for what the caller holds).
    #[inline]
    pub(crate) fn unlock_release(&self, flags: LockFlags, kind: Borrow) {
        self.give_back(lock_delta(flags.bits()), borrow_delta(kind));
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

    /// Release only a borrow (one subtraction; only one the caller holds).
    #[inline]
    pub(crate) fn release(&self, kind: Borrow) {
        if kind == Borrow::None {
            return;
        }
        self.give_back(0, borrow_delta(kind));
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

    /// Release a lock taken with the same flags (one subtraction; only a
    /// lock the caller holds).
    pub(crate) fn unlock(&self, flags: LockFlags) {
        self.unlock_release(flags, Borrow::None);
    }

    /// `gst_memory_unlock` checked as GStreamer's: refused, changing
    /// nothing, unless the state holds a lock of `flags`. The guards never
    /// need it (they give back exactly what they took); kept for the
    /// lock-word tests of GStreamer's unlock rules.
    #[cfg(test)]
    pub(crate) fn unlock_checked(&self, flags: LockFlags) -> Result<()> {
        let flags = flags.bits();
        self.update(
            |lock, borrows| Ok((next_unlocked(lock, flags)?, borrows)),
            Ordering::Release,
        )
    }
}

/// The state after a successful `lock(flags)` from `state`, or why it fails.
#[inline]
fn next_locked(state: u32, flags: u32) -> Result<u32> {
    let state = normalized(state);
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

/// The state after `unlock(flags)` from `state`, or why it does not match
/// (GStreamer's rules; the guards' unlocks are subtractions, see
/// [`LockWord::unlock`]).
#[cfg(test)]
fn next_unlocked(state: u32, flags: u32) -> Result<u32> {
    let state = normalized(state);
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
        assert_eq!(borrow_delta(Exclusive), WRITER);
        assert_eq!(borrow_delta(Shared), 1);
        assert_eq!(borrow_delta(Borrow::None), 0);
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
    fn unlocks_subtract_and_leave_mode_bits_that_mean_nothing() {
        let raw = |l: &LockWord| l.0.load(Ordering::Relaxed);
        let l = LockWord::default();
        l.lock_borrow(R, false, Borrow::Shared).unwrap();
        assert_eq!(raw(&l), join(0x101, 1));
        l.unlock_release(R, Borrow::Shared);
        // The stored word keeps READ's mode bit; with no map held it means
        // nothing, and nothing shows it.
        assert_eq!(raw(&l), 0x1);
        assert_eq!(l.get(), 0);
        assert!(l.is_idle() && l.borrows_free());
        // A WRITE map is granted from there and sets its own mode.
        l.lock_borrow(W, false, Borrow::Exclusive).unwrap();
        assert_eq!(raw(&l), join(0x102, WRITER));
        l.unlock_release(W, Borrow::Exclusive);
        assert_eq!((raw(&l), l.get()), (0x2, 0));
        // GStreamer's unlock rules see no map either.
        assert!(matches!(l.unlock_checked(W), Err(Error::NotLocked { .. })));
        // A WRITE bit left behind never makes a share look like a share of
        // a WRITE-mapped memory (which would be refused).
        l.lock(X, false).unwrap();
        l.lock_borrow(W, false, Borrow::Exclusive).unwrap();
        l.unlock_release(W, Borrow::Exclusive);
        assert_eq!((raw(&l), l.get()), (0x10002, 0x10000));
        l.share_hold().unwrap();
        assert_eq!((raw(&l), l.get()), (0x20000, 0x20000));
        assert!(!l.is_writable());
        l.unlock(X);
        l.unlock(X);
        assert!(l.is_idle() && l.get() == 0);
        assert_eq!(next_locked(0x2, R.bits()).unwrap(), 0x101);
        assert_eq!(next_locked(0x3, W.bits()).unwrap(), 0x102);
    }

    #[test]
    fn the_read_map_fast_path_is_the_generic_transition() {
        // From every kind of state: the same new word, or the same error
        // and no change.
        let locks = [
            0,
            0x1,
            0x2,
            0x3,
            0x101,
            0x102,
            0x103,
            0x109,
            0xff01,
            0xfe01,
            SHARE_ONE,
            2 * SHARE_ONE + 0x101,
            2 * SHARE_ONE + 0x103,
            0xffff_0000,
        ];
        let borrows = [0, 1, 7, WRITER - 2, WRITER - 1, WRITER];
        for lock in locks {
            for b in borrows {
                let start = join(lock, b);
                let fast = LockWord(AtomicU64::new(start));
                let slow = LockWord(AtomicU64::new(start));
                let f = fast.lock_read_shared();
                let s = slow.lock_borrow(R, false, Borrow::Shared);
                assert_eq!(format!("{f:?}"), format!("{s:?}"), "{lock:#x}/{b:#x}");
                assert_eq!(
                    fast.0.load(Ordering::Relaxed),
                    slow.0.load(Ordering::Relaxed),
                    "{lock:#x}/{b:#x}"
                );
                if f.is_err() {
                    assert_eq!(fast.0.load(Ordering::Relaxed), start);
                }
            }
        }
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
        l.unlock(R);
        l.unlock(R);
        l.unlock(X);
        assert_eq!(l.get(), 0);
    }

    #[test]
    fn stale_mode_bits_are_cleared() {
        // GStreamer leaves 0x3 here (spec 1.3); we return to 0.
        let l = LockWord::default();
        l.lock(RW, false).unwrap();
        l.lock(W, false).unwrap();
        l.unlock(RW);
        assert_eq!(l.get(), 0x103);
        l.unlock(W);
        assert_eq!(l.get(), 0);
        // RW then R, RW released first.
        l.lock(RW, false).unwrap();
        l.lock(R, false).unwrap();
        l.unlock(RW);
        l.unlock(R);
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
        assert!(matches!(l.unlock_checked(R), Err(Error::NotLocked { .. })));
        assert!(matches!(l.unlock_checked(X), Err(Error::NotLocked { .. })));
        l.lock(R, false).unwrap();
        assert!(matches!(l.unlock_checked(W), Err(Error::NotLocked { .. })));
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
        l.unlock_release(W, Borrow::Exclusive);
        assert_eq!(l.get(), 0);
        assert!(l.borrows_free());
    }

    #[test]
    fn write_fails_when_shared() {
        let l = LockWord::default();
        l.lock(X, false).unwrap();
        l.lock(W, false).unwrap(); // share count 1 is still writable
        l.unlock(W);
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
                l.unlock(flags);
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
            l.unlock(R);
            assert!(other.join().unwrap(), "READ refused next to READ");
            assert!(
                l.is_idle() && l.get() == 0,
                "{:#x}",
                l.0.load(Ordering::Relaxed)
            );
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
            assert!(
                l.is_idle() && l.get() == 0,
                "{:#x}",
                l.0.load(Ordering::Relaxed)
            );
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
                        l.unlock(X);
                        true
                    }
                    Err(e) => {
                        assert!(matches!(e, Error::Shared { .. }), "{e:?}");
                        false
                    }
                })
            };
            l.lock(W, false).unwrap();
            l.unlock(W);
            let shared = sharer.join().unwrap();
            assert!(
                l.is_idle() && l.get() == 0,
                "{:#x}",
                l.0.load(Ordering::Relaxed)
            );
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
                        l.unlock_release(W, Borrow::Exclusive);
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
            // The read map of a root, as `map_readable` takes it.
            let granted = l.lock_read_shared().is_ok();
            if granted {
                bytes.with(|_| ());
                l.unlock_release(R, Borrow::Shared);
            }
            let all = (mapper.join().unwrap(), borrower.join().unwrap(), granted);
            assert!(
                l.is_idle() && l.get() == 0,
                "{:#x}",
                l.0.load(Ordering::Relaxed)
            );
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
