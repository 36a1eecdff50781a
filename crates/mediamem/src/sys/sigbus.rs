//! A `SIGBUS` guard for mappings of files that another process can shrink.
//!
//! A mapping of a regular file (or an unsealed memfd) faults with `SIGBUS`
//! on any page that lies past the end of the file, and the file's other
//! holders can truncate it at any time. A guarded mapping is registered
//! here; when a `SIGBUS` hits an address inside one, the handler maps
//! anonymous zero pages over the whole guarded range (`MAP_FIXED`), marks
//! the slot, and returns, so the faulting access is retried and reads
//! zeros. Every other `SIGBUS` goes to the handler that was installed
//! before (Rust's own stack-overflow handler, a program's, or the default
//! action, which ends the process as usual).
//!
//! This is what libwayland does for client-truncated `wl_shm` pools. The
//! handler is async-signal-safe: it reads a fixed table of atomics and
//! makes two system calls at most.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use rustix::io::Errno;

/// How many guarded mappings can exist at once.
pub(crate) const GUARD_SLOTS: usize = 1024;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    /// PROT_* bits for the zero pages.
    prot: AtomicUsize,
    hit: AtomicBool,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            state: AtomicU8::new(FREE),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            prot: AtomicUsize::new(0),
            hit: AtomicBool::new(false),
        }
    }
}

static SLOTS: [Slot; GUARD_SLOTS] = [const { Slot::new() }; GUARD_SLOTS];

/// The action that was in place before ours, called for every `SIGBUS` we
/// do not handle.
struct Previous(libc::sigaction);

// SAFETY: a plain C struct of integers and function pointers, written once
// before the handler that reads it is installed, never written again.
unsafe impl Sync for Previous {}
// SAFETY: as above.
unsafe impl Send for Previous {}

static PREVIOUS: OnceLock<Result<Previous, Errno>> = OnceLock::new();

/// Install the handler (once per process).
fn install() -> Result<(), Errno> {
    let installed = PREVIOUS.get_or_init(|| {
        // SAFETY: zeroed is a valid `sigaction` (no handler, empty mask).
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction = handler as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        // SAFETY: `sa_mask` is a valid sigset_t owned by `new`.
        unsafe { libc::sigemptyset(&mut new.sa_mask) };
        // SAFETY: zeroed is a valid `sigaction` for the kernel to fill.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both structs are valid; `handler` has the SA_SIGINFO
        // signature and only touches async-signal-safe state.
        if unsafe { libc::sigaction(libc::SIGBUS, &new, &mut old) } != 0 {
            return Err(
                Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL)
            );
        }
        Ok(Previous(old))
    });
    installed.as_ref().map(|_| ()).map_err(|e| *e)
}

/// One guarded mapping. Dropping it unregisters the range; drop it before
/// the range is unmapped.
#[derive(Debug)]
pub(crate) struct SigbusGuard {
    index: usize,
}

impl SigbusGuard {
    /// Guard `len` bytes at `start`, mapped with `prot`.
    ///
    /// # Errors
    /// `Errno::NOSPC` when every slot is taken, or the errno of
    /// `sigaction` when the handler cannot be installed.
    pub(crate) fn new(
        start: *mut u8,
        len: usize,
        prot: rustix::mm::ProtFlags,
    ) -> Result<Self, Errno> {
        install()?;
        for (index, slot) in SLOTS.iter().enumerate() {
            if slot
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                slot.start.store(start as usize, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                slot.prot.store(prot.bits() as usize, Ordering::Relaxed);
                slot.hit.store(false, Ordering::Relaxed);
                slot.state.store(ACTIVE, Ordering::Release);
                return Ok(SigbusGuard { index });
            }
        }
        Err(Errno::NOSPC)
    }

    /// Update the protection (after an `mprotect` of the range).
    pub(crate) fn set_prot(&self, prot: rustix::mm::ProtFlags) {
        SLOTS[self.index]
            .prot
            .store(prot.bits() as usize, Ordering::Relaxed);
    }

    /// Whether a `SIGBUS` hit the range: the file shrank under it and the
    /// range now holds zero pages instead of the file.
    pub(crate) fn hit(&self) -> bool {
        SLOTS[self.index].hit.load(Ordering::Acquire)
    }
}

impl Drop for SigbusGuard {
    fn drop(&mut self) {
        let slot = &SLOTS[self.index];
        slot.state.store(CLAIMED, Ordering::Release);
        slot.len.store(0, Ordering::Relaxed);
        slot.state.store(FREE, Ordering::Release);
    }
}

/// The `SIGBUS` handler.
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
    // for SIGBUS, si_addr is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        if slot.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let len = slot.len.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        let prot = slot.prot.load(Ordering::Relaxed) as libc::c_int;
        // SAFETY: the range is a live mapping of a mediamem memory (a guard
        // exists only while its mapping does); replacing its pages with
        // anonymous zero pages of the same size and protection keeps every
        // pointer into it valid. mmap is async-signal-safe.
        let zero = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                prot,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if zero != libc::MAP_FAILED {
            slot.hit.store(true, Ordering::Release);
            return;
        }
        break;
    }
    chain(sig, info, ctx);
}

/// Hand a `SIGBUS` that is not ours to the previous action.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let previous = match PREVIOUS.get() {
        Some(Ok(p)) => &p.0,
        _ => return restore_default(sig),
    };
    let action = previous.sa_sigaction;
    if action == libc::SIG_DFL || action == libc::SIG_IGN {
        // The default (or an ignored synchronous fault, which the kernel
        // turns into the default anyway): restore it and return; the access
        // faults again and the process ends with SIGBUS as it would have.
        return restore_default(sig);
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it
        // has this signature; we pass the kernel's arguments unchanged.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(action) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler takes the signal number only.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(action) };
        f(sig);
    }
}

fn restore_default(sig: libc::c_int) {
    // SAFETY: zeroed is SIG_DFL with an empty mask; sigaction is
    // async-signal-safe.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
}
