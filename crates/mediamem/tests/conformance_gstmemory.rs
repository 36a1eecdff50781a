//! Conformance with GStreamer's core memory tests (`tests/check/gst/gstmemory.c`,
//! spec §3.1) and the probe-verified numbers of spec §3.4 that concern core
//! memory. Each test names the GStreamer case it ports. Where mediamem
//! deliberately differs (a GStreamer bug), the test asserts mediamem's
//! behaviour and says so.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;

use mediamem::{
    AllocationParams, Allocator, AllocatorImpl, Error, LockFlags, MapFlags, Memory, MemoryBackend,
    MemoryFlags, MemoryParts, Result,
};

// ---------------------------------------------------------------------------
// 1. test_submemory
// ---------------------------------------------------------------------------
#[test]
fn test_submemory() -> Result<()> {
    let memory = Memory::with_size(4)?;
    {
        let mut w = memory.map_writable()?;
        assert_eq!(w.size(), 4);
        assert!(w.maxsize() >= 4);
        w.fill(0);
        w.copy_from_slice(&[1, 2, 3, 4]);
    }
    let parent = memory.map_readable()?;

    let sub = memory.share(1..3)?; // share(1, 2)
    {
        let s = sub.map_readable()?;
        assert_eq!(s.size(), 2);
        assert_eq!(&s[..], &parent[1..3]);
    }
    assert_eq!(sub.ref_count(), 1);
    drop(sub);

    let sub = memory.share(1..1)?; // share(1, 0)
    assert_eq!(sub.map_readable()?.size(), 0);
    assert_eq!(sub.ref_count(), 1);
    drop(sub);

    assert_eq!(memory.share(0..1)?.sizes().0, 1);
    assert_eq!(memory.share(0..4)?.sizes().0, 4);
    drop(parent);

    // Mapped WRITE, the memory cannot be shared.
    let _w = memory.map_writable()?;
    assert!(matches!(memory.share(0..4), Err(Error::Shared { .. })));
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. test_submemory_writable
// ---------------------------------------------------------------------------
#[test]
fn test_submemory_writable() -> Result<()> {
    static RO: &[u8] = b"abcdefghijklmnopqrstuvwxyz\0";
    assert_eq!(RO.len(), 27);
    let mem = Memory::from_slice(RO);
    assert_eq!(mem.sizes(), (27, 0, 27));
    let sub = mem.share(0..8)?;
    assert!(sub.flags().contains(MemoryFlags::READONLY));
    assert!(matches!(mem.map_writable(), Err(Error::ReadOnly)));
    assert!(matches!(sub.map_writable(), Err(Error::ReadOnly)));
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. test_writable
// ---------------------------------------------------------------------------
#[test]
fn test_writable() -> Result<()> {
    let mem = Memory::from_slice(&b"0123456789"[..]);
    assert!(mem.is_readonly());
    assert!(matches!(mem.map_writable(), Err(Error::ReadOnly)));
    drop(mem.map_readable()?);
    // Map/unmap did not change the lock state: WRITE still fails.
    assert!(matches!(mem.map_writable(), Err(Error::ReadOnly)));
    assert_eq!(mem.lock_state(), 0);

    let copy = mem.copy()?;
    assert!(mem.is_readonly());
    assert!(!copy.is_readonly());
    {
        let mut w = copy.map_writable()?;
        w[4] = b'a';
    }
    assert_eq!(&*copy.map_readable()?, b"0123a56789");

    let extra = copy.clone();
    assert!(matches!(mem.map_writable(), Err(Error::ReadOnly)));
    drop(extra);
    drop(copy.map_writable()?);
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. test_is_span
// ---------------------------------------------------------------------------
#[test]
fn test_is_span() -> Result<()> {
    let mem = Memory::with_size(4)?;
    let sub1 = mem.share(0..2)?;
    let sub2 = mem.share(2..4)?;
    assert_eq!(mem.is_span(&sub2), None);
    assert_eq!(sub1.is_span(&mem), None);
    assert_eq!(sub1.is_span(&sub2), Some(0));
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. test_copy
// ---------------------------------------------------------------------------
#[test]
fn test_copy() -> Result<()> {
    let mem = Memory::with_size(4)?;
    let copy = mem.copy()?;
    assert_eq!(mem.ref_count(), 1);
    assert_eq!(copy.ref_count(), 1);
    assert!(!mem.ptr_eq(&copy));
    assert_eq!(mem.map_readable()?.size(), copy.map_readable()?.size());

    let empty = Memory::with_size(0)?;
    assert_eq!(empty.map_readable()?.size(), 0);
    let copy = empty.copy()?;
    assert_eq!(copy.map_readable()?.size(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. test_try_new_and_alloc
// ---------------------------------------------------------------------------
#[test]
fn test_try_new_and_alloc() -> Result<()> {
    let mem = Memory::with_size(0)?;
    assert_eq!(mem.map_readable()?.size(), 0);

    let size = 640 * 480 * 4;
    let mem = Memory::with_size(size)?;
    let mut w = mem.map_writable()?;
    assert!(!w.as_ptr().is_null());
    assert_eq!(w.size(), 1_228_800);
    w[640 * 479 * 4 + 479] = 0xff;
    assert_eq!(w[1_226_719], 0xff);
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. test_resize
// ---------------------------------------------------------------------------
#[test]
fn test_resize() -> Result<()> {
    let mem = Memory::with_size(100)?;
    let (size, offset, maxalloc) = mem.sizes();
    assert_eq!((size, offset), (100, 0));
    assert!(maxalloc >= 100);
    let m = maxalloc as isize;

    let check = |size: usize, offset: usize| {
        assert_eq!(mem.sizes(), (size, offset, maxalloc));
    };

    // Refused, with no change.
    for (delta, size) in [(200, 50), (0, 150), (1, maxalloc), (m, 1)] {
        assert!(
            matches!(mem.resize_by(delta, size), Err(Error::OutOfRange { .. })),
            "resize({delta}, {size}) must fail"
        );
        check(100, 0);
    }

    mem.resize_by(0, 100)?;
    check(100, 0);
    mem.resize_by(0, 50)?;
    check(50, 0);
    mem.resize_by(0, 100)?;
    check(100, 0);
    mem.resize_by(1, 99)?;
    check(99, 1);
    assert!(mem.resize_by(1, maxalloc - 1).is_err());
    check(99, 1);
    mem.resize_by(0, 99)?;
    check(99, 1);
    mem.resize_by(-1, 100)?;
    check(100, 0);
    assert!(matches!(
        mem.resize_by(-1, 100),
        Err(Error::NegativeOffset {
            offset: 0,
            delta: -1
        })
    ));
    check(100, 0);
    mem.resize_by(50, 40)?;
    check(40, 50);
    mem.resize_by(-50, 100)?;
    check(100, 0);
    mem.resize_by(0, 0)?;
    check(0, 0);
    mem.resize_by(0, 100)?;
    check(100, 0);
    mem.resize_by(0, 100)?;
    check(100, 0);
    assert_eq!(mem.maxsize(), maxalloc);
    Ok(())
}

#[test]
fn resize_requires_writable() -> Result<()> {
    let mem = Memory::with_size(100)?;
    let _a = mem.lock(LockFlags::EXCLUSIVE)?;
    mem.resize(1..)?; // one holder: still writable
    let _b = mem.lock(LockFlags::EXCLUSIVE)?;
    assert!(matches!(mem.resize(1..), Err(Error::NotWritable { .. })));
    assert_eq!(mem.sizes().0, 99);
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. test_map
// ---------------------------------------------------------------------------
#[test]
fn test_map() -> Result<()> {
    let mem = Memory::with_size(100)?;
    let maxalloc = mem.maxsize();
    {
        let r = mem.map_readable()?;
        assert!(!r.as_ptr().is_null());
        assert_eq!(r.size(), 100);
        assert_eq!(r.maxsize(), maxalloc);
        assert_eq!(mem.ref_count(), 1);
    }
    assert_eq!(mem.ref_count(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// 9. test_map_ref (GStreamer 1.28 REF_MEMORY)
// ---------------------------------------------------------------------------
#[test]
fn test_map_ref() -> Result<()> {
    let mem = Memory::with_size(100)?;
    {
        let r = mem.map(MapFlags::READ | MapFlags::REF_MEMORY)?;
        assert_eq!(r.size(), 100);
        assert_eq!(mem.ref_count(), 2);
    }
    assert_eq!(mem.ref_count(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// 10. test_map_nested
// ---------------------------------------------------------------------------
#[test]
fn test_map_nested() -> Result<()> {
    // GStreamer's exact nesting, through the lock-word-only raw maps.
    let mem = Memory::with_size(100)?;
    const R: MapFlags = MapFlags::READ;
    const W: MapFlags = MapFlags::WRITE;
    const RW: MapFlags = MapFlags::READWRITE;

    let info1 = mem.map_raw(R)?;
    assert_eq!(info1.size(), 100);
    let info2 = mem.map_raw(R)?;
    assert_eq!(info2.as_ptr(), info1.as_ptr());
    assert_eq!(info2.size(), 100);
    drop(info2);
    assert!(mem.map_raw(W).is_err());
    assert!(mem.map_raw(RW).is_err());
    drop(mem.map_raw(R)?);
    drop(info1);

    let info1 = mem.map_raw(W)?;
    assert!(mem.map_raw(R).is_err());
    assert!(mem.map_raw(RW).is_err());
    let info2 = mem.map_raw(W)?;
    drop(info1);
    drop(info2);
    // A second unmap of info2 cannot be written: the guard is gone. The
    // state is back where it started.
    assert_eq!(mem.lock_state(), 0);

    let info1 = mem.map_raw(RW)?;
    drop(mem.map_raw(R)?);
    drop(mem.map_raw(W)?);
    drop(info1);
    assert_eq!(mem.lock_state(), 0);
    Ok(())
}

#[test]
fn nested_slice_guards_never_alias() -> Result<()> {
    // mediamem's extra rule for slice guards: readers share, a writer is
    // alone (GStreamer would let the second WRITE map through).
    let mem = Memory::with_size(100)?;
    let r1 = mem.map_readable()?;
    let r2 = mem.map_readable()?;
    assert_eq!(r1.as_ptr(), r2.as_ptr());
    assert!(mem.map_writable().is_err());
    drop((r1, r2));
    let w = mem.map_writable()?;
    assert!(matches!(
        mem.map_writable(),
        Err(Error::Aliased {
            held: "a writable mapping"
        })
    ));
    assert!(matches!(
        mem.map_readable(),
        Err(Error::LockConflict { .. })
    ));
    drop(w);
    let rw = mem.map(MapFlags::READWRITE)?;
    assert!(matches!(mem.map_readable(), Err(Error::Aliased { .. })));
    drop(rw);
    assert_eq!(mem.lock_state(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// 11. test_map_resize
// ---------------------------------------------------------------------------
#[test]
fn test_map_resize() -> Result<()> {
    let mem = Memory::with_size(100)?;
    let maxalloc = mem.maxsize();
    {
        let r = mem.map_readable()?;
        assert_eq!(r.size(), 100);
        mem.resize_by(1, 99)?;
        assert_eq!(mem.sizes(), (99, 1, maxalloc));
        // The existing mapping is not affected.
        assert_eq!(r.size(), 100);
    }
    assert_eq!(mem.sizes(), (99, 1, maxalloc));
    {
        let r = mem.map_readable()?;
        assert_eq!(r.size(), 99);
        assert!(r.maxsize() >= 100);
        // GstMapInfo.maxsize is the block's maxsize less the offset.
        assert_eq!(r.maxsize(), maxalloc - 1);
    }
    {
        let _r = mem.map_readable()?;
        mem.resize_by(-1, 100)?;
    }
    assert_eq!(mem.sizes(), (100, 0, maxalloc));
    Ok(())
}

// ---------------------------------------------------------------------------
// 12. test_alloc_params
// ---------------------------------------------------------------------------
#[test]
fn test_alloc_params() -> Result<()> {
    let flags = MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED;
    let params = AllocationParams::new(flags, 0, 10, 10);
    let mem = Allocator::find(None).unwrap().alloc(100, Some(&params))?;
    let (size, offset, maxsize) = mem.sizes();
    assert_eq!((size, offset), (100, 10));
    assert!(maxsize >= 120);
    assert!(mem.flags().contains(flags));
    {
        let mut w = mem.map_writable()?;
        assert_eq!(w.size(), 100);
        w.fill(0xaa);
    }
    // The 10 bytes before and after the visible region are zero.
    let block = mem.share_maxsize(..)?;
    let all = block.map_readable()?;
    assert!(all[..10].iter().all(|&b| b == 0));
    assert!(all[10..110].iter().all(|&b| b == 0xaa));
    assert!(all[110..120].iter().all(|&b| b == 0));
    Ok(())
}

// ---------------------------------------------------------------------------
// 13. test_lock
// ---------------------------------------------------------------------------
#[test]
fn test_lock() -> Result<()> {
    const R: LockFlags = LockFlags::READ;
    const W: LockFlags = LockFlags::WRITE;
    const X: LockFlags = LockFlags::EXCLUSIVE;
    let mem = Memory::with_size(10)?;

    let a = mem.lock(W | X)?;
    assert!(mem.lock(X).is_err());
    let b = mem.lock(W)?;
    drop((a, b));

    let a = mem.lock(R | X)?;
    let b = mem.lock(R | X)?;
    drop((a, b));

    let a = mem.lock(R | W | X)?;
    let b = mem.lock(R)?;
    assert!(mem.lock(R | X).is_err());
    assert!(mem.lock(X).is_err());
    let c = mem.lock(W)?;
    drop((a, b, c));
    assert_eq!(mem.lock_state(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// 14. test_no_error_and_no_warning_on_map_failure
// ---------------------------------------------------------------------------

/// An allocator whose memory can never be mapped or shared.
#[derive(Debug)]
struct OpaqueAllocator;

#[derive(Debug)]
struct OpaqueBackend;

// SAFETY: map never succeeds, so no pointer is ever handed out.
unsafe impl MemoryBackend for OpaqueBackend {
    fn map(&self, _maxsize: usize, _flags: MapFlags) -> Result<std::ptr::NonNull<u8>> {
        Err(Error::MapFailed {
            mem_type: "MyOpaqueMemory".into(),
            reason: "opaque memory has no CPU mapping".into(),
            errno: None,
        })
    }
    fn can_share(&self) -> bool {
        false
    }
}

impl AllocatorImpl for OpaqueAllocator {
    fn mem_type(&self) -> &str {
        "MyOpaqueMemory"
    }
    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let maxsize = size + params.prefix + params.padding;
        Ok(MemoryParts::new(Box::new(OpaqueBackend), maxsize)
            .flags(params.flags)
            .align(params.align)
            .region(params.prefix, size))
    }
}

#[test]
fn test_no_error_and_no_warning_on_map_failure() -> Result<()> {
    // Only this test's warnings (other tests may log at the same time).
    let before = common::my_warnings().len();

    Allocator::register("MyOpaqueMemory", Allocator::new(OpaqueAllocator));
    let alloc = Allocator::find(Some("MyOpaqueMemory")).unwrap();
    let mem = alloc.alloc(100, None)?;
    let (size, offset, maxsize) = mem.sizes();
    assert_eq!((size, offset), (100, 0));
    assert!(maxsize >= 100);
    assert!(mem.is_type("MyOpaqueMemory"));

    assert!(matches!(mem.map_readable(), Err(Error::MapFailed { .. })));
    assert!(matches!(mem.map_writable(), Err(Error::MapFailed { .. })));
    assert!(matches!(
        mem.map_raw(MapFlags::READ),
        Err(Error::MapFailed { .. })
    ));
    // A failed map leaves nothing locked.
    assert_eq!(mem.lock_state(), 0);
    assert!(matches!(mem.share(..), Err(Error::Unsupported { .. })));
    // Its copy cannot map the source either, and says so.
    assert!(matches!(mem.copy(), Err(Error::MapFailed { .. })));

    let logged = common::my_warnings();
    assert_eq!(logged.len(), before, "warnings were logged: {logged:?}");
    Ok(())
}

/// Bytes that count their own drop (for wrapped memory's free notify).
struct Notify(Vec<u8>, Arc<AtomicUsize>);
impl AsRef<[u8]> for Notify {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
impl Drop for Notify {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// 15. test_auto_unmap
// ---------------------------------------------------------------------------
#[test]
fn test_auto_unmap() -> Result<()> {
    let freed = Arc::new(AtomicUsize::new(0));
    let mem = Memory::from_slice(Notify(b"test string".to_vec(), freed.clone()));
    {
        let map = mem.map_readable()?;
        assert_eq!(&*map, b"test string");
        assert_eq!(mem.ref_count(), 1);
    }
    assert_eq!(mem.ref_count(), 1);
    assert_eq!(mem.lock_state(), 0);
    drop(mem);
    assert_eq!(freed.load(Ordering::SeqCst), 1, "notify runs once on free");
    Ok(())
}

// ---------------------------------------------------------------------------
// Spec §3.4: probe-verified numbers (GStreamer 1.22.0, x86_64)
// ---------------------------------------------------------------------------
#[test]
fn probe_alloc_sizes_and_flags() -> Result<()> {
    let sys = Allocator::system();
    let m = sys.alloc(100, None)?;
    assert_eq!(m.maxsize(), 107);
    assert_eq!(m.align(), 7);
    assert_eq!(m.flags().bits(), 0x1);
    let p = AllocationParams::new(
        MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED,
        0,
        10,
        10,
    );
    let m = sys.alloc(100, Some(&p))?;
    assert_eq!((m.offset(), m.maxsize()), (10, 127));
    assert_eq!(m.flags().bits(), 0x61);
    Ok(())
}

#[test]
fn probe_resize_clears_zero_flags() -> Result<()> {
    let p = AllocationParams::new(
        MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED,
        0,
        10,
        10,
    );
    let m = Allocator::system().alloc(100, Some(&p))?;
    m.resize_by(50, 40)?;
    assert_eq!(m.flags().bits(), 0x1);

    let m = Allocator::system().alloc(100, Some(&p))?;
    m.resize_by(0, 40)?;
    assert_eq!(m.flags().bits(), 0x21, "only ZERO_PADDED is cleared");
    Ok(())
}

#[test]
fn fixed_resize_negative_delta_clears_zero_padded() -> Result<()> {
    // GStreamer quirk (spec 1.7): offset=10,size=100, resize(-10, 5) keeps
    // ZERO_PADDED through an unsigned wrap although bytes 5..110 are now
    // padding with data in them. mediamem clears it.
    let p = AllocationParams::new(MemoryFlags::ZERO_PADDED, 0, 10, 10);
    let m = Allocator::system().alloc(100, Some(&p))?;
    m.resize_by(-10, 5)?;
    assert_eq!((m.offset(), m.size()), (0, 5));
    assert!(!m.flags().contains(MemoryFlags::ZERO_PADDED));
    Ok(())
}

#[test]
fn probe_refcount_does_not_gate_write_maps() -> Result<()> {
    let m = Memory::with_size(16)?;
    let other = m.clone();
    assert_eq!(m.ref_count(), 2);
    assert!(m.is_writable());
    drop(m.map_writable()?);
    drop(other);
    Ok(())
}

#[test]
fn fixed_stale_lock_bits() -> Result<()> {
    // GStreamer: map RW, map W, unmap RW, unmap W leaves lockstate 0x3 and
    // every later share returns NULL. mediamem returns to 0 and shares.
    let m = Memory::with_size(16)?;
    let rw = m.map_raw(MapFlags::READWRITE)?;
    let w = m.map_raw(MapFlags::WRITE)?;
    drop(rw);
    drop(w);
    assert_eq!(m.lock_state(), 0);
    assert!(m.share(..).is_ok());
    Ok(())
}

#[test]
fn probe_share_numbers() -> Result<()> {
    let root = Memory::with_size(100)?;
    let sub = root.share(10..)?; // share(10, -1)
    assert_eq!((sub.size(), sub.offset()), (90, 10));
    assert_eq!(root.lock_state(), 0x10000);
    assert_eq!(root.ref_count(), 2);
    assert_eq!(sub.flags().bits(), 0x3);

    let subsub = sub.share(5..15)?; // share(5, 10) of the sub
    assert_eq!(subsub.offset(), 15);
    assert!(
        subsub.parent().unwrap().ptr_eq(&root),
        "flattened to the root"
    );
    assert_eq!(root.lock_state(), 0x20000);
    drop(subsub);
    drop(sub);
    assert_eq!(root.lock_state(), 0);
    assert_eq!(root.ref_count(), 1);
    Ok(())
}

#[test]
fn probe_is_span_order() -> Result<()> {
    let root = Memory::with_size(100)?;
    let s1 = root.share(30..60)?;
    let s2 = root.share(60..100)?;
    assert_eq!(s1.is_span(&s2), Some(30));
    // GStreamer returns FALSE here but still writes offset 30; mediamem
    // simply answers None.
    assert_eq!(s2.is_span(&s1), None);
    // Merging per the documented use:
    let merged = root.share(30..100)?;
    assert_eq!(merged.size(), s1.size() + s2.size());
    Ok(())
}

#[test]
fn probe_sysmem_copy_while_write_mapped() -> Result<()> {
    let m = Memory::with_size(50)?;
    let w = m.map_raw(MapFlags::WRITE)?;
    // SAFETY: the raw write mapping covers 50 bytes and nothing else
    // accesses them during this write.
    unsafe { std::ptr::write_bytes(w.as_mut_ptr().unwrap(), 7, 50) };
    let copy = m.copy()?;
    drop(w);
    assert_eq!(&*copy.map_readable()?, &[7u8; 50][..]);
    // GStreamer gives an empty copy for copy(60, -1) of 50 bytes; mediamem
    // refuses the out-of-range start.
    assert!(matches!(m.copy_range(60..), Err(Error::OutOfRange { .. })));
    assert_eq!(m.copy_range(50..)?.size(), 0);
    Ok(())
}

#[test]
fn probe_bad_align_is_refused() {
    let p = AllocationParams::new(MemoryFlags::empty(), 5, 0, 0);
    assert!(matches!(
        Allocator::system().alloc(10, Some(&p)),
        Err(Error::InvalidAlign { align: 5 })
    ));
}

#[test]
fn probe_make_mapped_copies_readonly() -> Result<()> {
    let ro = Memory::from_slice(&b"abc"[..]);
    let keep = ro.clone();
    let mapped = ro.make_mapped(MapFlags::WRITE)?;
    assert!(!mapped.memory().ptr_eq(&keep));
    assert_eq!(&*mapped, b"abc");
    // Readable: no copy.
    let mapped = keep.clone().make_mapped(MapFlags::READ)?;
    assert!(mapped.memory().ptr_eq(&keep));
    Ok(())
}

// ---------------------------------------------------------------------------
// Second, independent checks of rules that one test above guards.
// ---------------------------------------------------------------------------

/// ZERO_PREFIXED goes as soon as the visible start moves right, whichever
/// resize form moves it, and stays while the start does not move right
/// (also after a move left, which only uncovers zeroed prefix).
#[test]
fn zero_prefixed_is_cleared_by_every_resize_that_moves_the_start_right() -> Result<()> {
    let zero = MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED;
    let p = AllocationParams::new(zero, 0, 8, 8);
    let fresh = || Allocator::system().alloc(32, Some(&p));

    // Trimming the end, or moving the start left, keeps the prefix zeroed.
    let m = fresh()?;
    m.resize(..16)?;
    assert!(m.flags().contains(MemoryFlags::ZERO_PREFIXED));
    m.resize_by(-8, 8)?;
    assert_eq!((m.offset(), m.size()), (0, 8));
    assert!(m.flags().contains(MemoryFlags::ZERO_PREFIXED));

    // Each form that moves the start right clears it (and only then).
    let m = fresh()?;
    m.resize(1..)?;
    assert!(!m.flags().contains(MemoryFlags::ZERO_PREFIXED));
    let m = fresh()?;
    m.resize_by(4, 28)?;
    assert!(!m.flags().contains(MemoryFlags::ZERO_PREFIXED));
    let m = fresh()?;
    m.resize_maxsize(9..40)?;
    assert!(!m.flags().contains(MemoryFlags::ZERO_PREFIXED));
    // Cleared for good: moving back does not bring it back.
    m.resize_maxsize(0..40)?;
    assert!(!m.flags().contains(MemoryFlags::ZERO_PREFIXED));

    // A share resizes by its own rules: its start moving right clears its
    // flag, not the root's.
    let root = fresh()?;
    let share = root.share(..)?;
    assert!(share.flags().contains(MemoryFlags::ZERO_PREFIXED));
    share.resize(2..)?;
    assert!(!share.flags().contains(MemoryFlags::ZERO_PREFIXED));
    assert!(root.flags().contains(MemoryFlags::ZERO_PREFIXED));
    Ok(())
}

/// REF_MEMORY: the map holds its own reference, through every map form,
/// for as long as it lives, and gives it back when it goes.
#[test]
fn ref_memory_maps_hold_a_reference_until_unmapped() -> Result<()> {
    let freed = Arc::new(AtomicUsize::new(0));
    let mem = Memory::from_slice(Notify(b"kept alive".to_vec(), freed.clone()));
    let read_ref = MapFlags::READ | MapFlags::REF_MEMORY;

    // An owning map: the memory it owns plus the map's own reference.
    let mapped = mem.into_mapped(read_ref)?;
    assert_eq!(mapped.memory().ref_count(), 2);
    let other = mapped.memory().clone();
    assert_eq!(other.ref_count(), 3);
    let mem = mapped.into_memory();
    assert_eq!(mem.ref_count(), 2, "unmapping gave the reference back");
    drop(other);

    // Nested borrowed maps each hold one; a plain map holds none.
    {
        let a = mem.map(read_ref)?;
        let b = mem.map(read_ref)?;
        let plain = mem.map(MapFlags::READ)?;
        assert_eq!(mem.ref_count(), 3);
        drop(a);
        assert_eq!(mem.ref_count(), 2);
        drop((b, plain));
    }
    assert_eq!(mem.ref_count(), 1);

    // On a share: the share's count, not the root's.
    let share = mem.share(5..)?;
    let root_refs = mem.ref_count();
    {
        let m = share.map(read_ref)?;
        assert_eq!(&*m, b"alive");
        assert_eq!(share.ref_count(), 2);
        assert_eq!(mem.ref_count(), root_refs);
    }
    assert_eq!(share.ref_count(), 1);
    drop(share);
    assert_eq!(freed.load(Ordering::SeqCst), 0);
    drop(mem);
    assert_eq!(freed.load(Ordering::SeqCst), 1, "freed once, at the end");
    Ok(())
}
