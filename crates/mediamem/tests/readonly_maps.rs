//! Read maps of a READONLY root that no other root aliases skip the lock
//! word: nothing can write such a block, so they need neither a lock nor a
//! byte borrow. Everything else about the memory behaves as before.

use mediamem::{Error, LockFlags, MapFlags, Memory, MemoryFlags, Result};

#[test]
fn read_maps_of_a_readonly_root_skip_the_lock_word() -> Result<()> {
    let mem = Memory::from_slice((0..64u8).collect::<Vec<_>>());
    assert!(mem.is_readonly() && mem.parent().is_none());
    // Far more than the 255 maps the lock word can count.
    let maps: Vec<_> = (0..1000)
        .map(|_| mem.map_readable())
        .collect::<Result<_>>()?;
    assert_eq!(mem.lock_state(), 0, "read maps are not counted");
    assert_eq!(maps[999][63], 63);
    let raw = mem.map_raw(MapFlags::READ)?;
    let dynamic = mem.map(MapFlags::READ)?;
    assert!(matches!(mem.map_writable(), Err(Error::ReadOnly)));
    assert!(matches!(mem.map_raw(MapFlags::WRITE), Err(Error::ReadOnly)));
    assert!(matches!(mem.map(MapFlags::READWRITE), Err(Error::ReadOnly)));
    assert!(matches!(mem.lock(LockFlags::WRITE), Err(Error::ReadOnly)));
    // Shares and locks still use the word as before.
    let share = mem.share(8..16)?;
    assert_eq!(mem.lock_state(), 0x1_0000);
    {
        let s = share.map_readable()?;
        assert_eq!(&*s, &(8..16u8).collect::<Vec<_>>()[..]);
        assert_eq!(share.lock_state(), 0x101, "a share's maps are counted");
    }
    drop(share);
    let lock = mem.lock(LockFlags::READ)?;
    assert_eq!(mem.lock_state(), 0x101);
    drop((lock, raw, dynamic, maps));
    assert_eq!(mem.lock_state(), 0);
    // An owning readable map of it, and a REF_MEMORY map.
    let owned = mem.clone().into_mapped_readable().map_err(Error::from)?;
    let kept = mem.map(MapFlags::READ | MapFlags::REF_MEMORY)?;
    assert_eq!(mem.ref_count(), 3);
    assert_eq!(owned.as_slice(), &*kept);
    drop((owned, kept));
    assert_eq!((mem.ref_count(), mem.lock_state()), (1, 0));
    Ok(())
}

#[test]
fn writable_roots_and_wrapped_writable_memory_still_count_read_maps() -> Result<()> {
    let mem = Memory::with_size(16)?;
    let m = mem.map_readable()?;
    assert_eq!(mem.lock_state(), 0x101);
    assert!(matches!(
        mem.map_writable(),
        Err(Error::LockConflict { .. })
    ));
    drop(m);
    let wrapped = Memory::new_wrapped(MemoryFlags::empty(), vec![1u8; 8], ..)?;
    let m = wrapped.map_readable()?;
    assert_eq!(wrapped.lock_state(), 0x101);
    drop(m);
    Ok(())
}
