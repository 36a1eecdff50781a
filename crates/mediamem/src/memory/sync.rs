//! The atomics of the lock-free core ([`Counted`](super::counted),
//! the lock word, the region's sequence lock): `std`'s, or `loom`'s when the
//! crate's unit tests are built with `--cfg loom` (`cargo xtask loom`), so
//! the same code runs under loom's model checker.
//!
//! Only the unit tests switch: a `--cfg loom` build of anything else (the
//! library itself, integration tests) keeps `std`'s atomics.
//!
//! Spin loops go through [`spin_loop`] and [`yield_now`]: under loom they
//! tell the scheduler that the thread waits for another one, without which
//! loom would explore a spinning thread for ever.

#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// One iteration of a busy wait (`std::hint::spin_loop`).
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(all(test, loom))]
    loom::hint::spin_loop();
    #[cfg(not(all(test, loom)))]
    std::hint::spin_loop();
}

/// Give up the rest of the time slice (`std::thread::yield_now`).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(all(test, loom))]
    loom::thread::yield_now();
    #[cfg(not(all(test, loom)))]
    std::thread::yield_now();
}

/// Run `f` under `loom::model` and gather what its executions returned.
///
/// The loom tests assert on this set that the interleavings they are about
/// were explored at all: loom's search can miss some (for instance after
/// a thread's load of the same atomic), and a test that only ever saw the
/// easy order would pass without checking anything.
#[cfg(all(test, loom))]
pub(crate) fn outcomes<T, F>(f: F) -> std::collections::BTreeSet<T>
where
    T: Ord + Send + 'static,
    F: Fn() -> T + Send + Sync + 'static,
{
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let record = seen.clone();
    loom::model(move || {
        let outcome = f();
        record.lock().unwrap().insert(outcome);
    });
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    seen
}
