//! Heap use of system memory (issue 15, item 3): a small memory of the
//! system allocator is one heap allocation, header and bytes together, as
//! GStreamer's sysmem is one `malloc` (a large one, whose bytes alone are
//! beyond glibc's per-thread cache sizes, is two: see `HOSTED_MAX` in
//! `system.rs`); every allocation is freed again on every path (drop,
//! shares, a free hook that keeps the block, one that drops it, a failed
//! write-once allocation).
//!
//! A global allocator counts the allocations and frees of the current
//! thread only, so tests running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::{Arc, Mutex};

use mediamem::memory::FreedBlock;
use mediamem::{AllocationParams, Allocator, Error, Memory, MemoryFlags, Result};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static FREES: Cell<usize> = const { Cell::new(0) };
}

fn bump(c: &'static std::thread::LocalKey<Cell<usize>>) {
    // `try_with`: the thread's counters may already be gone while it exits.
    let _ = c.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        // SAFETY: forwarded; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS);
        bump(&FREES);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// (allocations, frees) made by this thread while `f` ran.
fn heap_calls<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (a0, f0) = (ALLOCS.with(Cell::get), FREES.with(Cell::get));
    let out = f();
    let (a1, f1) = (ALLOCS.with(Cell::get), FREES.with(Cell::get));
    (out, a1 - a0, f1 - f0)
}

/// The heap allocations a system memory of `maxsize` bytes is made of:
/// one when it is small, two (header, bytes) when it is large. (Between
/// 512 B and 2 KiB depends on the header's size; no test size falls there.)
fn expected_allocations(maxsize: usize) -> usize {
    assert!(
        !(512..2048).contains(&maxsize),
        "{maxsize}: pick another size"
    );
    if maxsize < 512 {
        1
    } else {
        2
    }
}

fn param_sets() -> Vec<AllocationParams> {
    let zero = MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED;
    vec![
        AllocationParams::default(),
        AllocationParams::new(zero, 63, 10, 32),
        AllocationParams::new(MemoryFlags::empty(), 4095, 0, 0),
        AllocationParams::new(MemoryFlags::READONLY, 0, 3, 5),
    ]
}

#[test]
fn a_small_system_memory_is_one_heap_allocation_and_frees_it() -> Result<()> {
    let sys = Allocator::system();
    for params in param_sets() {
        for size in [0, 1, 64, 4096, 100_000, 1 << 20] {
            let (mem, allocs, frees) = heap_calls(|| sys.alloc(size, Some(&params)));
            let mem = mem?;
            let n = expected_allocations(mem.maxsize());
            assert_eq!((allocs, frees), (n, 0), "alloc({size}) with {params:?}");
            // GStreamer's sizes, alignment and zeroed bytes, in the one
            // allocation.
            let align = params.align | 7;
            assert_eq!(
                mem.sizes(),
                (
                    size,
                    params.prefix,
                    size + params.prefix + params.padding + align
                )
            );
            let all = mem.share_maxsize(..)?;
            {
                let bytes = all.map_readable()?;
                assert_eq!(bytes.as_ptr() as usize % (align + 1), 0, "{params:?}");
                assert!(bytes.iter().all(|&b| b == 0), "zeroed: {params:?}");
            }
            drop(all);
            let ((), allocs, frees) = heap_calls(|| drop(mem));
            assert_eq!((allocs, frees), (0, n), "free of alloc({size})");
        }
    }
    Ok(())
}

#[test]
fn small_write_once_memories_and_copies_are_one_heap_allocation() -> Result<()> {
    let sys = Allocator::system();
    for params in param_sets() {
        for size in [0, 64, 4096, 1 << 20] {
            let (mem, allocs, _) = heap_calls(|| {
                sys.alloc_with(size, Some(&params), |w| {
                    w.fill_rest(0xa5);
                    Ok(())
                })
            });
            let mem = mem?;
            let n = expected_allocations(mem.maxsize());
            assert_eq!(allocs, n, "alloc_with({size})");
            assert!(mem.map_readable()?.iter().all(|&b| b == 0xa5));
            // The prefix and the padding are zeroed, the visible bytes
            // written, in the same block.
            let all = mem.share_maxsize(..)?;
            {
                let bytes = all.map_readable()?;
                let (p, s) = (params.prefix, size);
                assert!(bytes[..p].iter().all(|&b| b == 0));
                assert!(bytes[p + s..].iter().all(|&b| b == 0));
            }
            drop(all);
            let (copy, allocs, _) = heap_calls(|| mem.copy());
            let copy = copy?;
            let c = expected_allocations(copy.maxsize());
            assert_eq!(allocs, c, "copy of {size}");
            assert_eq!(&*copy.map_readable()?, &*mem.map_readable()?);
            let ((), _, frees) = heap_calls(|| drop((mem, copy)));
            assert_eq!(frees, n + c);
        }
    }
    Ok(())
}

#[test]
fn failed_write_once_allocations_free_their_one_allocation() {
    let sys = Allocator::system();
    let (r, allocs, frees) = heap_calls(|| {
        sys.alloc_with(64, None, |w| {
            w.put(&[1; 10]);
            Ok(())
        })
    });
    assert!(matches!(r, Err(Error::Uninitialised { .. })), "{r:?}");
    drop(r);
    assert_eq!((allocs, frees), (1, 1));
    let (r, allocs, frees) = heap_calls(|| sys.alloc_with(4096, None, |_| Err(Error::NoShare)));
    assert!(matches!(r, Err(Error::NoShare)));
    assert_eq!((allocs, frees), (1, 1));
}

#[test]
fn shares_keep_the_one_allocation_alive_until_the_last_goes() -> Result<()> {
    let mut mem = Allocator::system().alloc(256, None)?;
    mem.map_mut()?.fill(7);
    let share = mem.share(100..200)?;
    let ((), _, frees) = heap_calls(|| drop(mem));
    assert_eq!(frees, 0, "the share holds the root");
    assert!(share.map_readable()?.iter().all(|&b| b == 7));
    let ((), _, frees) = heap_calls(|| drop(share));
    // The share's own header, then the root's one allocation.
    assert_eq!(frees, 2);
    Ok(())
}

#[test]
fn a_free_hook_keeps_the_bytes_of_the_one_allocation() -> Result<()> {
    // The hook gets the block (its bytes live in the allocation that held
    // the memory's header); a memory made of it reads the same bytes, and
    // freeing that memory frees the allocation.
    let params = AllocationParams::new(MemoryFlags::empty(), 63, 16, 16);
    let mut mem = Allocator::system().alloc(256, Some(&params))?;
    assert_eq!(expected_allocations(mem.maxsize()), 1);
    mem.map_mut()?.fill(0x3c);
    let freed: Arc<Mutex<Option<FreedBlock>>> = Arc::default();
    let slot = freed.clone();
    let hook: mediamem::memory::BlockFreeHook = Arc::new(move |b| *slot.lock().unwrap() = Some(b));
    mem.set_on_block_free(hook.clone())?;
    let ((), _, frees) = heap_calls(|| drop(mem));
    assert_eq!(frees, 1, "only the box that held the hook: the block stays");
    let block = freed.lock().unwrap().take().expect("the hook ran");
    let (again, allocs, _) = heap_calls(|| block.into_memory(16, 256));
    let again = again?;
    assert_eq!(allocs, 1, "a new header only");
    {
        let bytes = again.map_readable()?;
        assert!(bytes.iter().all(|&b| b == 0x3c));
        assert_eq!(bytes.as_ptr() as usize % 64, 16);
    }
    let ((), _, frees) = heap_calls(|| drop(again));
    assert_eq!(frees, 2, "the new header and the first allocation");

    // A hook that drops the block frees it at once.
    let mut mem = Memory::with_size(64)?;
    mem.set_on_block_free(Arc::new(drop))?;
    let ((), _, frees) = heap_calls(|| drop(mem));
    // The allocation, and the hook's box of rare parts (the last handle of
    // the hook itself is this test's, gone already with `mem`).
    assert!(frees >= 1, "{frees}");
    Ok(())
}

#[test]
fn a_pool_of_system_memory_recycles_without_leaking() -> Result<()> {
    let pool = mediamem::pool::MemoryPool::new(Allocator::system(), 4096, None, 0, 2)?;
    let (r, allocs, frees) = heap_calls(|| -> Result<()> {
        for i in 0..100u8 {
            let mut a = pool.acquire()?;
            a.map_mut()?.fill(i);
            // A share outlives the pooled handle: the block comes back
            // through the pool's free hook, as a new memory.
            let share = a.share(..16)?;
            let b = pool.acquire()?;
            drop((a, b));
            assert!(share.map_readable()?.iter().all(|&x| x == i));
            drop(share);
        }
        Ok(())
    });
    r?;
    // Each time the hook runs, a new header over the same block and its
    // box of rare parts are made and the old ones freed (a block still in
    // its first allocation keeps that one): beyond the two blocks and the
    // pool's list, allocations and frees balance. A leak per cycle would
    // leave 100 or more.
    assert!(allocs >= 100, "{allocs}");
    assert!(allocs - frees <= 8, "{allocs} allocations, {frees} frees");
    Ok(())
}
