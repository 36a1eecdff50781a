//! Allocator behaviour: the registry, the copy redirect of CUSTOM_ALLOC /
//! NO_COPY allocators, per-backend share and span rules.
//!
//! Nothing here changes the process-wide default allocator, which most of
//! these tests use: `Allocator::set_default` is tested in its own process
//! (`tests/default_allocator.rs`).

use std::ptr::NonNull;
use std::sync::Mutex;

use mediamem::{
    AllocationParams, Allocator, AllocatorFlags, AllocatorImpl, Error, MapFlags, Memory,
    MemoryParts, Result,
};

mod common;
use common::{vec_alloc, VecBlock};

#[test]
fn generic_copy_uses_own_allocator() -> Result<()> {
    let a = vec_alloc("vec-plain", AllocatorFlags::empty());
    let m = a.alloc(8, None)?;
    m.map_writable()?.copy_from_slice(b"abcdefgh");
    let c = m.copy_range(2..6)?;
    assert_eq!(c.allocator().mem_type(), "vec-plain");
    assert_eq!(&*c.map_readable()?, b"cdef");
    Ok(())
}

#[test]
fn custom_alloc_and_no_copy_copies_go_to_default() -> Result<()> {
    for flags in [AllocatorFlags::CUSTOM_ALLOC, AllocatorFlags::NO_COPY] {
        let a = vec_alloc("vec-redirect", flags);
        let m = a.alloc(4, None)?;
        m.map_writable()?.copy_from_slice(b"wxyz");
        let c = m.copy()?;
        assert_eq!(c.allocator().mem_type(), "SystemMemory", "{flags:?}");
        assert_eq!(&*c.map_readable()?, b"wxyz");
        assert!(!c.is_readonly());
    }
    Ok(())
}

#[test]
fn copy_of_allocator_without_alloc_goes_to_default() -> Result<()> {
    // An allocator that only imports (like fd) has no plain alloc; GStreamer
    // would dereference NULL here, mediamem falls back to the default.
    #[derive(Debug)]
    struct ImportOnly;
    impl AllocatorImpl for ImportOnly {
        fn mem_type(&self) -> &str {
            "import-only"
        }
    }
    let a = Allocator::new(ImportOnly);
    assert!(matches!(a.alloc(4, None), Err(Error::Unsupported { .. })));
    let mut v = vec![1u8, 2, 3];
    let p = NonNull::new(v.as_mut_ptr()).unwrap();
    let m = Memory::from_parts(
        &a,
        MemoryParts::new(Box::new(VecBlock(Mutex::new(v), p)), 3),
    )?;
    let c = m.copy()?;
    assert_eq!(c.allocator().mem_type(), "SystemMemory");
    assert_eq!(&*c.map_readable()?, &[1, 2, 3]);
    Ok(())
}

#[test]
fn backend_without_is_span_never_spans() -> Result<()> {
    let a = vec_alloc("vec-span", AllocatorFlags::empty());
    let m = a.alloc(8, None)?;
    let (x, y) = (m.share(0..4)?, m.share(4..8)?);
    assert_eq!(x.is_span(&y), None, "GStreamer's fallback is_span is FALSE");
    Ok(())
}

#[test]
fn is_span_needs_same_parent_and_allocator() -> Result<()> {
    let m1 = Memory::with_size(8)?;
    let m2 = Memory::with_size(8)?;
    let a = m1.share(0..4)?;
    let b = m2.share(4..8)?;
    assert_eq!(a.is_span(&b), None);
    let c = m1.share(4..8)?;
    assert_eq!(a.is_span(&c), Some(0));
    // Two shares hold m1: it is not writable, so it cannot be resized.
    assert!(matches!(m1.resize(2..), Err(Error::NotWritable { .. })));

    // Offsets are relative to the parent's offset.
    let m3 = Memory::with_size(8)?;
    m3.resize(2..)?;
    let (x, y) = (m3.share(0..2)?, m3.share(2..4)?);
    assert_eq!((x.offset(), y.offset()), (2, 4));
    assert_eq!(x.is_span(&y), Some(0));
    // Adjacent views that start before the parent's offset have no
    // (non-negative) offset in it: not a span.
    let (p, q) = (m3.share_maxsize(0..2)?, m3.share_maxsize(2..4)?);
    assert_eq!(p.is_span(&q), None);
    Ok(())
}

#[test]
fn from_parts_validates() {
    let a = vec_alloc("vec-validate", AllocatorFlags::empty());
    let mk = || {
        let mut v = vec![0u8; 8];
        let p = NonNull::new(v.as_mut_ptr()).unwrap();
        Box::new(VecBlock(Mutex::new(v), p))
    };
    assert!(matches!(
        Memory::from_parts(&a, MemoryParts::new(mk(), 8).region(4, 5)),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        Memory::from_parts(&a, MemoryParts::new(mk(), 8).align(6)),
        Err(Error::InvalidAlign { align: 6 })
    ));
    assert!(matches!(
        Memory::from_parts(&a, MemoryParts::new(mk(), 8).region(usize::MAX, 2)),
        Err(Error::SizeOverflow { .. })
    ));
}

#[test]
fn registry_register_replace_find() {
    let first = vec_alloc("reg-a", AllocatorFlags::empty());
    Allocator::register("test-registry-name", first.clone());
    assert!(Allocator::find(Some("test-registry-name"))
        .unwrap()
        .ptr_eq(&first));
    let second = vec_alloc("reg-b", AllocatorFlags::empty());
    Allocator::register("test-registry-name", second.clone());
    let found = Allocator::find(Some("test-registry-name")).unwrap();
    assert!(found.ptr_eq(&second), "re-registering replaces");
    assert_eq!(found.mem_type(), "reg-b");
    assert!(Allocator::registered()
        .iter()
        .any(|(n, a)| n == "test-registry-name" && a.ptr_eq(&second)));

    let once = Allocator::register_once("test-registry-once", || {
        vec_alloc("once-1", AllocatorFlags::empty())
    });
    let again = Allocator::register_once("test-registry-once", || {
        vec_alloc("once-2", AllocatorFlags::empty())
    });
    assert!(once.ptr_eq(&again));
    assert_eq!(again.mem_type(), "once-1");
}

#[test]
fn share_of_share_fails_cleanly_while_root_write_mapped() -> Result<()> {
    // gst_memory_init ignores a failed parent lock (FIXME 2.0); mediamem
    // refuses the share and leaves every lock word as it was.
    let root = Memory::with_size(16)?;
    let s = root.share(0..8)?; // root share count 1: still writable
    let w = root.map_writable();
    // The slice guard refuses because `s` could be mapped; use the raw map
    // to get GStreamer's situation.
    drop(w);
    let raw = root.map_raw(MapFlags::WRITE)?;
    let before = (root.lock_state(), s.lock_state());
    assert!(matches!(s.share(0..4), Err(Error::Shared { .. })));
    assert_eq!((root.lock_state(), s.lock_state()), before);
    drop(raw);
    assert!(s.share(0..4).is_ok());
    Ok(())
}

#[test]
fn no_share_flag() -> Result<()> {
    let p = AllocationParams::new(mediamem::MemoryFlags::NO_SHARE, 0, 0, 0);
    let m = Allocator::system().alloc(8, Some(&p))?;
    assert!(matches!(m.share(..), Err(Error::NoShare)));
    assert_eq!(m.lock_state(), 0);
    // Copies still work (GstBuffer copies NO_SHARE memory instead of sharing).
    assert_eq!(m.copy()?.size(), 8);
    Ok(())
}

#[test]
fn share_and_copy_ranges_are_checked() -> Result<()> {
    let m = Memory::with_size(10)?;
    m.resize(2..8)?; // offset 2, size 6
    assert!(matches!(m.share(0..7), Err(Error::OutOfRange { .. })));
    assert!(matches!(m.copy_range(7..), Err(Error::OutOfRange { .. })));
    let all = m.share_maxsize(..)?;
    assert_eq!((all.offset(), all.size()), (0, m.maxsize()));
    assert!(m.share_maxsize(..=m.maxsize()).is_err());
    let s = m.share(1..=2)?;
    assert_eq!((s.offset(), s.size()), (3, 2));
    let c = m.copy_range_maxsize(0..2)?;
    assert_eq!(c.size(), 2);
    Ok(())
}

#[test]
fn into_mapped_hands_memory_back() -> Result<()> {
    let ro = Memory::from_slice(&b"xy"[..]);
    let err = ro.into_mapped_writable().unwrap_err();
    assert!(matches!(err.error, Error::ReadOnly));
    let ro = err.memory;
    assert_eq!(ro.lock_state(), 0);
    let mapped = ro.into_mapped_readable()?;
    assert_eq!(&*mapped, b"xy");
    let ro = mapped.into_memory();
    assert_eq!(ro.lock_state(), 0);

    let m = Memory::with_size(3)?;
    let mut w = m.into_mapped_writable()?;
    w.copy_from_slice(b"abc");
    let m = w.into_memory();
    assert_eq!(&*m.map_readable()?, b"abc");
    Ok(())
}

#[test]
fn invalid_map_flags() -> Result<()> {
    let m = Memory::with_size(3)?;
    assert!(matches!(
        m.map(MapFlags::empty()),
        Err(Error::InvalidMapFlags { .. })
    ));
    assert!(matches!(
        m.map(MapFlags::READ | MapFlags::from_bits_retain(4)),
        Err(Error::InvalidMapFlags { .. })
    ));
    // Custom flags above LAST are fine.
    drop(m.map(MapFlags::READ | MapFlags::from_bits_retain(1 << 16))?);
    assert_eq!(m.lock_state(), 0);
    Ok(())
}

/// A custom allocator that returns `size + extra` visible bytes.
#[derive(Debug)]
struct SkewAllocator {
    extra: isize,
}

impl AllocatorImpl for SkewAllocator {
    fn mem_type(&self) -> &str {
        "vec-skew"
    }
    fn alloc(&self, size: usize, _params: &AllocationParams) -> Result<MemoryParts> {
        let size = size.saturating_add_signed(self.extra);
        let mut v = vec![0u8; size.max(1)];
        let p = NonNull::new(v.as_mut_ptr()).unwrap();
        Ok(MemoryParts::new(Box::new(VecBlock(Mutex::new(v), p)), size))
    }
}

fn skewed_memory(a: &Allocator, bytes: &[u8]) -> Result<Memory> {
    let mut v = bytes.to_vec();
    let p = NonNull::new(v.as_mut_ptr()).unwrap();
    Memory::from_parts(
        a,
        MemoryParts::new(Box::new(VecBlock(Mutex::new(v), p)), bytes.len()),
    )
}

#[test]
fn alloc_checks_what_the_implementation_returned() -> Result<()> {
    // Fewer bytes than asked: a typed error naming the allocator.
    let short = Allocator::new(SkewAllocator { extra: -1 });
    let r = short.alloc(8, None);
    assert!(
        matches!(&r, Err(Error::BadAllocation { mem_type, requested: 8, got: 7 }) if mem_type == "vec-skew"),
        "{r:?}"
    );
    // A copy, which allocates from the memory's own allocator, used to
    // panic in copy_from_slice; it is the same error now.
    let m = skewed_memory(&short, b"abcdefgh")?;
    let c = m.copy();
    assert!(matches!(c, Err(Error::BadAllocation { .. })), "{c:?}");
    assert_eq!(m.lock_state(), 0, "the failed copy left nothing mapped");

    // More bytes than asked is allowed; a copy keeps exactly the source's.
    let long = Allocator::new(SkewAllocator { extra: 5 });
    assert_eq!(long.alloc(8, None)?.size(), 13);
    let m = skewed_memory(&long, b"abcdefgh")?;
    let c = m.copy_range(1..7)?;
    assert_eq!(c.allocator().mem_type(), "vec-skew");
    assert_eq!(&*c.map_readable()?, b"bcdefg");
    Ok(())
}

#[test]
fn allocator_handles_compare_and_print() {
    let sys = Allocator::system();
    let shm: Allocator = mediamem::ShmAllocator::get().into();
    assert!(sys.ptr_eq(&Allocator::system()));
    assert!(!sys.ptr_eq(&shm), "two allocators are not the same one");
    let text = format!("{sys:?}");
    assert!(
        text.starts_with("Allocator(") && text.contains("System"),
        "{text}"
    );
    assert!(sys
        .caps()
        .contains(mediamem::allocator::AllocatorCaps::PLAIN_ALLOC));
}

#[test]
fn a_system_copy_keeps_the_sources_alignment() -> Result<()> {
    // GStreamer's sysmem copy allocates with the source's align mask:
    // maxsize = size + align, and the data aligned to it.
    for align in [7usize, 15, 63] {
        let params = AllocationParams {
            align,
            ..Default::default()
        };
        let m = Allocator::system().alloc(100, Some(&params))?;
        assert_eq!(m.align(), align);
        let copy = m.copy()?;
        assert_eq!(copy.align(), align, "align {align}");
        assert_eq!(copy.maxsize(), 100 + align, "align {align}");
        assert_eq!(copy.map_readable()?.as_ptr() as usize & align, 0);
    }
    Ok(())
}

#[test]
fn from_parts_keeps_given_flags_and_is_type_compares() -> Result<()> {
    use mediamem::MemoryFlags;
    let a = vec_alloc("vec-flags", AllocatorFlags::empty());
    let mut v = vec![0u8; 8];
    let p = NonNull::new(v.as_mut_ptr()).unwrap();
    let block = Box::new(VecBlock(Mutex::new(v), p));
    // LOCKABLE given or not, every memory has it; other flags are kept.
    let parts = MemoryParts::new(block, 8).flags(MemoryFlags::LOCKABLE | MemoryFlags::NO_SHARE);
    let mem = Memory::from_parts(&a, parts)?;
    assert_eq!(mem.flags(), MemoryFlags::LOCKABLE | MemoryFlags::NO_SHARE);
    assert!(mem.is_type("vec-flags"));
    assert!(!mem.is_type("SystemMemory"));
    assert!(!Memory::with_size(8)?.is_type("vec-flags"));
    Ok(())
}

/// An allocator that hands out vectors and remembers the align mask it
/// was last asked for.
#[derive(Debug, Default)]
struct AlignRecorder(std::sync::atomic::AtomicUsize);

impl AllocatorImpl for AlignRecorder {
    fn mem_type(&self) -> &str {
        "align-recorder"
    }
    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        self.0
            .store(params.align, std::sync::atomic::Ordering::SeqCst);
        let mut v = vec![0u8; size + params.align + 1];
        let p = NonNull::new(v.as_mut_ptr()).unwrap();
        Ok(MemoryParts::new(Box::new(VecBlock(Mutex::new(v), p)), size).align(params.align))
    }
}

#[test]
fn a_generic_copy_asks_its_allocator_for_the_sources_alignment() -> Result<()> {
    let a = Allocator::new(AlignRecorder::default());
    let params = AllocationParams {
        align: 15,
        ..Default::default()
    };
    let mem = a.alloc(32, Some(&params))?;
    mem.map_writable()?.copy_from_slice(&[9; 32]);
    let recorder = a.downcast_ref::<AlignRecorder>().unwrap();
    recorder.0.store(0, std::sync::atomic::Ordering::SeqCst);
    let copy = mem.copy()?;
    assert_eq!(recorder.0.load(std::sync::atomic::Ordering::SeqCst), 15);
    assert_eq!(copy.align(), 15);
    assert_eq!(&*copy.map_readable()?, &[9; 32]);
    // A maxsize-relative range: its length is end - start.
    let part = mem.copy_range_maxsize(2..6)?;
    assert_eq!(part.size(), 4);
    Ok(())
}

#[test]
fn debug_and_lock_guards_say_what_they_hold() -> Result<()> {
    use mediamem::LockFlags;
    let mem = Memory::with_size(8)?;
    let text = format!("{mem:?}");
    assert!(
        text.starts_with("Memory") && text.contains("SystemMemory"),
        "{text}"
    );
    let guard = mem.lock(LockFlags::READ)?;
    assert_eq!(guard.flags(), LockFlags::READ);
    Ok(())
}

#[test]
fn a_resize_that_keeps_the_end_keeps_zero_padded() -> Result<()> {
    use mediamem::MemoryFlags;
    let params = AllocationParams {
        flags: MemoryFlags::ZERO_PADDED,
        padding: 8,
        ..Default::default()
    };
    let mem = Allocator::system().alloc(32, Some(&params))?;
    assert!(mem.flags().contains(MemoryFlags::ZERO_PADDED));
    mem.resize(4..32)?;
    assert!(mem.flags().contains(MemoryFlags::ZERO_PADDED), "same end");
    mem.resize(0..27)?;
    assert!(
        !mem.flags().contains(MemoryFlags::ZERO_PADDED),
        "shorter end"
    );
    Ok(())
}
