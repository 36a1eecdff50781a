//! Write-once allocation (`Allocator::alloc_with`) through allocators
//! other than the system one: the memory is allocated as usual and written
//! over, and an initialiser that leaves bytes unwritten gets no memory.

mod common;

use mediamem::{Allocator, AllocatorFlags, Error, MapFlags, Result, ShmAllocator};

#[test]
fn shm_memory_is_written_over() -> Result<()> {
    let shm: Allocator = ShmAllocator::get().into();
    let m = shm.alloc_with(4096, None, |w| {
        w.put(b"head");
        w.fill_rest(0x5a);
        Ok(())
    })?;
    assert!(m.is_type("shm"));
    let bytes = m.map_readable()?;
    assert_eq!(&bytes[..4], b"head");
    assert!(bytes[4..].iter().all(|&b| b == 0x5a));
    let r = shm.alloc_with(4096, None, |w| {
        w.put(&[1; 10]);
        Ok(())
    });
    assert!(
        matches!(
            r,
            Err(Error::Uninitialised {
                written: 10,
                size: 4096
            })
        ),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn a_custom_allocator_gets_exactly_the_requested_size() -> Result<()> {
    let alloc = common::vec_alloc("write-once-vec", AllocatorFlags::empty());
    let m = alloc.alloc_with(10, None, |w| {
        assert_eq!(w.len(), 10);
        w.fill_rest(3);
        Ok(())
    })?;
    assert_eq!(m.size(), 10);
    assert_eq!(&*m.map(MapFlags::READ)?, &[3; 10]);
    let failed = alloc.alloc_with(10, None, |_| Err(Error::NoShare));
    assert!(matches!(failed, Err(Error::NoShare)));
    Ok(())
}
