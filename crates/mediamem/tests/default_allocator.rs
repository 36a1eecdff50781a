//! The process-wide default allocator (`Allocator::set_default`).
//!
//! These tests change the default, which every `Memory::with_size` and
//! every redirected copy uses, so they live in a test binary (a process) of
//! their own, and take `DEFAULT` so that they never see each other's
//! default either.

use std::sync::{Mutex, MutexGuard};

use mediamem::{Allocator, AllocatorFlags, Memory, Result, ShmAllocator, SystemAllocator};

mod common;
use common::vec_alloc;

/// Serialises the tests of this binary: each sets the default.
static DEFAULT: Mutex<()> = Mutex::new(());

/// Makes `allocator` the default for one test; the system allocator is the
/// default again when it drops, also when the test fails.
struct DefaultSet(#[allow(dead_code)] MutexGuard<'static, ()>);

impl DefaultSet {
    fn new(allocator: Allocator) -> DefaultSet {
        let guard = DEFAULT.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            Allocator::default_allocator().is::<SystemAllocator>(),
            "the default is the system allocator between tests"
        );
        Allocator::set_default(allocator);
        DefaultSet(guard)
    }
}

impl Drop for DefaultSet {
    fn drop(&mut self) {
        Allocator::set_default(Allocator::system());
    }
}

#[test]
fn set_default_changes_find_none_not_names() -> Result<()> {
    let custom = vec_alloc("default-test", AllocatorFlags::empty());
    {
        let _default = DefaultSet::new(custom.clone());
        assert!(Allocator::find(None).unwrap().ptr_eq(&custom));
        assert!(Allocator::default_allocator().ptr_eq(&custom));
        assert_eq!(Memory::with_size(4)?.allocator().mem_type(), "default-test");
        assert!(
            Allocator::find(Some("default-test")).is_none(),
            "not registered by name"
        );
        // The system allocator keeps its name.
        assert!(Allocator::find(Some("SystemMemory"))
            .unwrap()
            .is::<SystemAllocator>());
    }
    assert!(Allocator::find(None).unwrap().is::<SystemAllocator>());
    Ok(())
}

/// The copy redirect of CUSTOM_ALLOC / NO_COPY allocators goes to whatever
/// the default is at the time of the copy, not to system memory as such;
/// an allocator without those flags keeps its copies.
#[test]
fn redirected_copies_follow_the_default_allocator() -> Result<()> {
    let _default = DefaultSet::new(vec_alloc("the-default", AllocatorFlags::empty()));
    for flags in [
        AllocatorFlags::CUSTOM_ALLOC,
        AllocatorFlags::NO_COPY,
        AllocatorFlags::CUSTOM_ALLOC | AllocatorFlags::NO_COPY,
    ] {
        let a = vec_alloc("redirecting", flags);
        let m = a.alloc(6, None)?;
        m.map_writable()?.copy_from_slice(b"abcdef");
        let c = m.copy_range(1..5)?;
        assert_eq!(c.allocator().mem_type(), "the-default", "{flags:?}");
        assert_eq!(&*c.map_readable()?, b"bcde");
        assert!(!c.is_readonly());
        // A share of it copies the same way.
        let s = m.share(2..)?;
        assert_eq!(s.copy()?.allocator().mem_type(), "the-default");
    }
    let own = vec_alloc("keeps-copies", AllocatorFlags::empty());
    let m = own.alloc(3, None)?;
    assert_eq!(m.copy()?.allocator().mem_type(), "keeps-copies");

    // The library's own CUSTOM_ALLOC | NO_COPY allocator: shm.
    let shm = ShmAllocator::get().alloc(64, None)?;
    shm.map_writable()?.fill(9);
    let c = shm.copy()?;
    assert_eq!(c.allocator().mem_type(), "the-default");
    assert!(c.map_readable()?.iter().all(|&b| b == 9));
    Ok(())
}
