//! [`BlockAlias`]: one byte-borrow rule for every root memory in this
//! process that reaches the same underlying object.
//!
//! The slice guards' rule (many readers or one writer) lives in each
//! root's lock word, which is enough while a block has one root. But safe
//! code can make a second root over the same pages: import the fd of a
//! live shm memory again with the [`FdAllocator`](crate::FdAllocator),
//! receive in this process a frame that this process sent, export a DRM
//! dumb buffer and map both. Two roots, two words, and two `&mut [u8]`
//! over one page would follow.
//!
//! So a backend whose storage can be reached again (everything fd-backed)
//! gives its root a `BlockAlias`, found in a process-wide registry by the
//! file's identity (`st_dev`, `st_ino`): every root of the same file gets
//! the same one, and the roots' slice guards take their borrows there.
//! The rule then covers the whole file, whatever ranges the roots view.
//!
//! | GStreamer | mediamem |
//! |---|---|
//! | no slices, so no aliasing rule at all | one rule per file within a process; the raw maps ([`Memory::map_raw`](super::Memory::map_raw)) stay GStreamer's |
//! | — | the first root of a file keeps its lock word in the alias's word (its low half, unused by the rule), so its map takes lock and borrow with one compare-and-swap, as a root without alias; a second root of the same file keeps its own lock word, and its map costs one more compare-and-swap (on the alias) |
//!
//! Writes by other processes, or by devices, to a shared file are outside
//! any process's rules: see the crate's contract in the README.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::lock::LockWord;
use super::region::Borrow;
use super::sync::{AtomicBool, Ordering};
use super::LockFlags;
use crate::error::{Error, Result};

/// The identity of a file: `(st_dev, st_ino)`.
type FileKey = (u64, u64);

struct AliasInner {
    /// The borrow half holds the rule; the GStreamer half is the lock
    /// word of the root that claimed it ([`BlockAlias::claim_word`]), if
    /// any.
    borrows: LockWord,
    /// Whether a root holds the GStreamer half as its lock word.
    claimed: AtomicBool,
    keys: Mutex<Vec<FileKey>>,
}

/// The shared byte-borrow rule of every root over one underlying object.
/// Cloning gives another handle to the same rule.
#[derive(Clone)]
pub struct BlockAlias(Arc<AliasInner>);

impl fmt::Debug for BlockAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.0.keys.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("BlockAlias").field("files", &*keys).finish()
    }
}

static REGISTRY: Mutex<Option<HashMap<FileKey, Weak<AliasInner>>>> = Mutex::new(None);

fn registry() -> std::sync::MutexGuard<'static, Option<HashMap<FileKey, Weak<AliasInner>>>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BlockAlias {
    /// A rule of its own, not yet reachable by any file (for storage that
    /// is not a file yet, such as a DRM dumb buffer before its export).
    pub fn new() -> Self {
        BlockAlias(Arc::new(AliasInner {
            borrows: LockWord::default(),
            claimed: AtomicBool::new(false),
            keys: Mutex::new(Vec::new()),
        }))
    }

    /// The rule of the file behind `fd`: the one every live root of the
    /// same file already uses, or a new one.
    ///
    /// # Errors
    /// [`Error::BadFd`] when `fstat` fails.
    pub fn for_file(fd: BorrowedFd<'_>) -> Result<Self> {
        Ok(Self::for_key(file_key(fd)?))
    }

    /// The rule of the file with identity `(st_dev, st_ino)` (for callers
    /// that already did the `fstat`).
    pub(crate) fn for_key(key: (u64, u64)) -> Self {
        let mut reg = registry();
        let map = reg.get_or_insert_with(HashMap::new);
        if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
            return BlockAlias(live);
        }
        let alias = BlockAlias::new();
        alias
            .0
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key);
        map.insert(key, Arc::downgrade(&alias.0));
        alias
    }

    /// Make the file behind `fd` reach this rule too (a DRM dumb buffer's
    /// PRIME export). If another live rule already holds that file, the
    /// file keeps it and [`Error::Aliased`] says so.
    pub fn add_file(&self, fd: BorrowedFd<'_>) -> Result<()> {
        let key = file_key(fd)?;
        let mut reg = registry();
        let map = reg.get_or_insert_with(HashMap::new);
        match map.get(&key).and_then(Weak::upgrade) {
            Some(live) if Arc::ptr_eq(&live, &self.0) => return Ok(()),
            Some(_) => {
                return Err(Error::Aliased {
                    held: "another memory of the same file",
                })
            }
            None => {}
        }
        self.0
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key);
        map.insert(key, Arc::downgrade(&self.0));
        Ok(())
    }

    /// Whether both handles are the same rule.
    pub fn same(&self, other: &BlockAlias) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// How many handles to this rule are alive: an fd-backed root holds
    /// two (its backend's block and the root itself), so more than two
    /// means another root or block of the same file exists in this
    /// process (the V4L2 bridge's "no one else can read it" check).
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// The word whose borrow half holds the rule.
    #[inline]
    pub(crate) fn word(&self) -> &LockWord {
        &self.0.borrows
    }

    /// Lock a root of this rule for a map and take its borrow: in the
    /// alias word at once when the root `owns_word` (its lock word is the
    /// word's GStreamer half), else in the root's own word `own`, then the
    /// borrow here (undoing the lock if the borrow is refused).
    #[inline(always)]
    pub(crate) fn lock_for_map(
        &self,
        own: &LockWord,
        owns_word: bool,
        flags: LockFlags,
        readonly: bool,
        borrow: Borrow,
    ) -> Result<()> {
        if owns_word {
            return self.word().lock_borrow(flags, readonly, borrow);
        }
        own.lock(flags, readonly)?;
        if let Err(e) = self.word().borrow(borrow) {
            own.unlock(flags);
            return Err(e);
        }
        Ok(())
    }

    /// Undo [`lock_for_map`](BlockAlias::lock_for_map) with the same
    /// arguments.
    #[inline(always)]
    pub(crate) fn unlock_map(
        &self,
        own: &LockWord,
        owns_word: bool,
        flags: LockFlags,
        borrow: Borrow,
    ) {
        if owns_word {
            self.word().unlock_release(flags, borrow);
        } else {
            self.word().release(borrow);
            own.unlock(flags);
        }
    }

    /// Claim the GStreamer half of [`word`](BlockAlias::word) as a root's
    /// lock word: true for the first root that asks while no other holds
    /// it. That root then locks and borrows in one step; it gives the half
    /// back with [`unclaim_word`](BlockAlias::unclaim_word) when it is
    /// freed, by which time none of its guards can touch that half again
    /// (its shares are gone, and a map or lock guard either ended or was
    /// leaked with `mem::forget`); `unclaim_word` clears the half, so
    /// neither a leaked lock nor the mode bits of the last unmap pass to
    /// the next root that claims it.
    pub(crate) fn claim_word(&self) -> bool {
        !self.0.claimed.swap(true, Ordering::AcqRel)
    }

    /// Give back what [`claim_word`](BlockAlias::claim_word) granted.
    pub(crate) fn unclaim_word(&self) {
        self.0.borrows.clear_gst_half();
        // A read-modify-write, as the claim is: the flag's every change is
        // one chain of them. (With a plain store here, loom finds a run of
        // `loom_the_alias_word_passes_between_roots` whose newcomer's claim
        // reads the flag as still held and the word stays claimed by no
        // one; it costs nothing, once per root.)
        self.0.claimed.swap(false, Ordering::AcqRel);
    }
}

impl Default for BlockAlias {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AliasInner {
    fn drop(&mut self) {
        let keys = std::mem::take(self.keys.get_mut().unwrap_or_else(PoisonError::into_inner));
        if keys.is_empty() {
            return;
        }
        let me: *const AliasInner = self;
        let mut reg = registry();
        if let Some(map) = reg.as_mut() {
            for key in keys {
                // Only our own entry: a new rule may already have replaced
                // it (its old value can no longer be upgraded).
                if map.get(&key).is_some_and(|w| std::ptr::eq(w.as_ptr(), me)) {
                    map.remove(&key);
                }
            }
        }
    }
}

fn file_key(fd: BorrowedFd<'_>) -> Result<FileKey> {
    let st = rustix::fs::fstat(fd).map_err(|e| Error::BadFd {
        reason: format!("fstat: {e}"),
    })?;
    #[allow(clippy::unnecessary_cast)] // the stat field types vary by target
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// How many files the registry tracks (for leak tests).
#[doc(hidden)]
pub fn tracked_files() -> usize {
    registry()
        .as_ref()
        .map_or(0, |m| m.values().filter(|w| w.strong_count() > 0).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::region::Borrow;
    use std::os::fd::AsFd;

    fn memfd() -> std::os::fd::OwnedFd {
        rustix::fs::memfd_create("alias", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn one_rule_per_file() {
        let fd = memfd();
        let dup = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let a = BlockAlias::for_file(fd.as_fd()).unwrap();
        let b = BlockAlias::for_file(dup.as_fd()).unwrap();
        assert!(a.same(&b));
        let other = BlockAlias::for_file(memfd().as_fd()).unwrap();
        assert!(!a.same(&other));
        a.word().borrow(Borrow::Exclusive).unwrap();
        assert!(matches!(
            b.word().borrow(Borrow::Shared),
            Err(Error::Aliased { .. })
        ));
        a.word().release(Borrow::Exclusive);
        b.word().borrow(Borrow::Shared).unwrap();
        b.word().release(Borrow::Shared);
    }

    #[test]
    fn the_registry_forgets_dead_rules() {
        let fd = memfd();
        let a = BlockAlias::for_file(fd.as_fd()).unwrap();
        let key = file_key(fd.as_fd()).unwrap();
        assert!(registry().as_ref().unwrap().contains_key(&key));
        drop(a);
        assert!(!registry().as_ref().unwrap().contains_key(&key));
        // A new rule for the same file starts free.
        let b = BlockAlias::for_file(fd.as_fd()).unwrap();
        b.word().borrow(Borrow::Exclusive).unwrap();
        b.word().release(Borrow::Exclusive);
    }

    #[test]
    fn add_file_joins_an_unkeyed_rule() {
        let fd = memfd();
        let dumb = BlockAlias::new();
        dumb.add_file(fd.as_fd()).unwrap();
        dumb.add_file(fd.as_fd()).unwrap(); // idempotent
        assert!(BlockAlias::for_file(fd.as_fd()).unwrap().same(&dumb));
        let other = BlockAlias::new();
        assert!(matches!(
            other.add_file(fd.as_fd()),
            Err(Error::Aliased { .. })
        ));
    }
}

/// Model checks of the alias word passing between roots (`cargo xtask
/// loom`), through the same functions `Memory`'s maps call.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::memory::sync::outcomes;
    use loom::cell::UnsafeCell;
    use loom::thread;

    const R: LockFlags = LockFlags::READ;
    const RW: LockFlags = LockFlags::READ.union(LockFlags::WRITE);

    /// One map of a root of `alias` whose own lock word is `own`: whether
    /// it was granted; a granted map touches the bytes (loom reports a race
    /// if a writer overlaps anyone).
    fn map(
        alias: &BlockAlias,
        own: &LockWord,
        owns_word: bool,
        write: bool,
        bytes: &UnsafeCell<u32>,
    ) -> bool {
        let (flags, borrow) = if write {
            (RW, Borrow::Exclusive)
        } else {
            (R, Borrow::Shared)
        };
        if alias
            .lock_for_map(own, owns_word, flags, false, borrow)
            .is_err()
        {
            return false;
        }
        if write {
            bytes.with_mut(|_| ());
        } else {
            bytes.with(|_| ());
        }
        alias.unlock_map(own, owns_word, flags, borrow);
        true
    }

    #[test]
    fn loom_the_alias_word_passes_between_roots() {
        // The first root of a file holds the alias word as its lock word,
        // write-maps once and is freed (gives the word back). A new root
        // arrives meanwhile: it claims the word if it is free by then, or
        // keeps its own, and write-maps. A second root (never the word's)
        // read-maps. Writers never overlap anyone, and at the end every
        // word is idle and the word is free again.
        let seen = outcomes(|| {
            let alias = BlockAlias::new();
            assert!(alias.claim_word());
            let bytes = loom::sync::Arc::new(UnsafeCell::new(0u32));
            let first = {
                let (alias, bytes) = (alias.clone(), bytes.clone());
                thread::spawn(move || {
                    let own = LockWord::default();
                    let granted = map(&alias, &own, true, true, &bytes);
                    alias.unclaim_word();
                    granted
                })
            };
            let newcomer = {
                let (alias, bytes) = (alias.clone(), bytes.clone());
                thread::spawn(move || {
                    let own = LockWord::default();
                    let owns = alias.claim_word();
                    let granted = map(&alias, &own, owns, true, &bytes);
                    if owns {
                        alias.unclaim_word();
                    }
                    assert!(own.is_idle());
                    (owns, granted)
                })
            };
            let own = LockWord::default();
            let read = map(&alias, &own, false, false, &bytes);
            let first = first.join().unwrap();
            let (owns, granted) = newcomer.join().unwrap();
            assert!(own.is_idle());
            assert!(alias.word().is_idle() && alias.word().get() == 0);
            assert!(alias.claim_word(), "the word was not given back");
            (owns, granted, first, read)
        });
        // The newcomer took the word over when the first root had given it
        // back, and kept its own word otherwise; everyone was granted in
        // some order, and refused in others.
        assert!(
            seen.iter().any(|o| o.0) && seen.iter().any(|o| !o.0),
            "{seen:?}"
        );
        assert!(seen.contains(&(true, true, true, true)), "{seen:?}");
        assert!(seen.contains(&(false, true, true, true)), "{seen:?}");
        assert!(seen.iter().any(|o| !o.3), "the reader was never refused");
    }
}
