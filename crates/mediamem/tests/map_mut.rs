//! `Memory::map_mut`: the lock-free write map of an owned memory, and its
//! fallback to the locked path whenever anything else can reach the block.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use mediamem::pool::MemoryPool;
use mediamem::{Allocator, Error, LockFlags, MapFlags, Memory, Result};

/// WRITE mode, one map: what the lock word reads under a locked WRITE map.
const WRITE_MAPPED: u32 = 0x2 | 0x100;

#[test]
fn owned_memory_maps_without_the_lock_word() -> Result<()> {
    let mut mem = Memory::with_size(64)?;
    {
        let mut map = mem.map_mut()?;
        assert!(map.is_lockless());
        assert_eq!(map.size(), 64);
        map.fill(0xa5);
    }
    assert_eq!(mem.lock_state(), 0);
    assert!(mem.map_readable()?.iter().all(|&b| b == 0xa5));
    // Nothing left held: the locked paths work as before.
    drop(mem.map_writable()?);
    drop(mem.share(1..3)?);
    assert_eq!(mem.lock_state(), 0);
    Ok(())
}

#[test]
fn a_second_handle_makes_it_an_ordinary_locked_map() -> Result<()> {
    let mut mem = Memory::with_size(8)?;
    let other = mem.clone();
    let mut map = mem.map_mut()?;
    assert!(!map.is_lockless());
    // The other handle sees the map, exactly as after map_writable.
    assert_eq!(other.lock_state(), WRITE_MAPPED);
    // READ on a WRITE-only lock word: GStreamer's conflict.
    assert!(matches!(
        other.map_readable(),
        Err(Error::LockConflict { .. })
    ));
    assert!(
        matches!(other.share(..), Err(Error::Shared { .. })),
        "no share while WRITE-mapped"
    );
    map[0] = 7;
    drop(map);
    assert_eq!(other.lock_state(), 0);
    assert_eq!(other.map_readable()?[0], 7);
    Ok(())
}

#[test]
fn a_live_share_makes_it_an_ordinary_locked_map() -> Result<()> {
    let mut mem = Memory::with_size(8)?;
    let share = mem.share(2..6)?;
    // A share holds the root, and its readable map is a borrow of the block.
    {
        let seen = share.map_readable()?;
        assert!(matches!(mem.map_mut(), Err(Error::Aliased { .. })));
        drop(seen);
    }
    let mut map = mem.map_mut()?;
    assert!(!map.is_lockless());
    // The share's own lock word is free; the block's borrow is not.
    assert!(matches!(share.map_readable(), Err(Error::Aliased { .. })));
    map[3] = 9;
    drop(map);
    assert_eq!(share.map_readable()?[1], 9);
    Ok(())
}

#[test]
fn shares_and_read_only_memory_are_refused() -> Result<()> {
    let mem = Memory::with_size(8)?;
    let mut share = mem.share(..)?;
    assert!(matches!(share.map_mut(), Err(Error::ReadOnly)));
    drop(mem);
    // The share is now the only handle to the block, still read-only.
    assert!(matches!(share.map_mut(), Err(Error::ReadOnly)));
    let mut ro = Memory::from_slice(b"constant");
    assert!(matches!(ro.map_mut(), Err(Error::ReadOnly)));
    assert_eq!(&*ro.map_readable()?, b"constant");
    Ok(())
}

#[test]
fn a_leaked_lock_is_still_seen() -> Result<()> {
    let mut mem = Memory::with_size(8)?;
    // Two exclusive holders make the memory unwritable; a leaked guard keeps
    // them held after its borrow ends.
    std::mem::forget(mem.lock(LockFlags::EXCLUSIVE)?);
    std::mem::forget(mem.lock(LockFlags::EXCLUSIVE)?);
    assert!(matches!(mem.map_mut(), Err(Error::Shared { .. })));
    let mut one = Memory::with_size(8)?;
    std::mem::forget(one.map_raw(MapFlags::READ)?);
    assert!(matches!(one.map_mut(), Err(Error::LockConflict { .. })));
    Ok(())
}

#[test]
fn a_handle_dropped_on_another_thread_hands_over_its_writes() -> Result<()> {
    for round in 0..200u8 {
        let mut mem = Memory::with_size(4096)?;
        let other = mem.clone();
        let started = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                other.map_writable().unwrap().fill(round);
                started.store(true, Ordering::Relaxed);
                drop(other);
            });
            // Wait for the other handle to go, without a join (which would
            // synchronise by itself): the count's acquire does it.
            while mem.ref_count() != 1 {
                std::hint::spin_loop();
            }
            let map = mem.map_mut().unwrap();
            assert!(map.is_lockless());
            assert!(map.iter().all(|&b| b == round), "round {round}");
        });
        assert!(started.load(Ordering::Relaxed));
    }
    Ok(())
}

#[test]
fn fd_memory_is_mapped_and_unmapped_by_its_backend() -> Result<()> {
    let file = common::temp_file(&[0u8; 8192]);
    let mut mem = mediamem::fd::FdAllocator::new().alloc(
        file.into(),
        8192,
        mediamem::fd::FdMemoryFlags::empty(),
    )?;
    // fd memory can be reached by other roots (another import of the same
    // file), so even the only handle maps through the lock word and the
    // file's borrow rule: a twin cannot read under the writer.
    let twin = mediamem::fd::FdAllocator::new().alloc_borrowed(
        mem.fd().unwrap(),
        8192,
        0,
        8192,
        mediamem::fd::FdMemoryFlags::empty(),
    )?;
    common::assert_no_leaks(500, |i| {
        let mut map = mem.map_mut().unwrap();
        assert!(!map.is_lockless());
        assert!(matches!(
            twin.map_readable(),
            Err(mediamem::Error::Aliased { .. })
        ));
        map[i % 8192] = i as u8;
    });
    assert_eq!(mem.map_readable()?[499], 499u16 as u8);
    Ok(())
}

#[test]
fn pooled_memory_maps_without_the_lock_word() -> Result<()> {
    let pool = MemoryPool::new(Allocator::system(), 256, None, 1, 1)?;
    let mut frame = pool.acquire()?;
    {
        let mut map = frame.map_mut()?;
        assert!(map.is_lockless());
        map.fill(3);
    }
    let first = frame.map_readable()?.as_ptr();
    drop(frame);
    let again = pool.acquire()?;
    assert_eq!(again.map_readable()?.as_ptr(), first, "recycled");
    assert!(again.map_readable()?.iter().all(|&b| b == 3));
    Ok(())
}

#[test]
fn a_leaked_map_still_counts_against_map_mut() -> Result<()> {
    // Forgetting a guard is safe and leaves its lock held: the lock word is
    // no longer idle, so map_mut takes the locked path and is refused.
    for kind in ["system", "shm"] {
        let mut mem = if kind == "system" {
            Memory::with_size(64)?
        } else {
            mediamem::ShmAllocator::get().alloc(64, None)?
        };
        std::mem::forget(mem.map_readable()?);
        assert!(
            matches!(mem.map_mut(), Err(Error::LockConflict { .. })),
            "{kind}: map_mut while a leaked readable map holds the lock"
        );
        std::mem::forget(mem.lock(LockFlags::EXCLUSIVE)?);
        assert!(mem.map_mut().is_err(), "{kind}");
    }
    Ok(())
}

/// Three call sites in three functions, as in a program that fills
/// memories in several places: each one maps without the lock word, sees
/// the visible region at its offset, and leaves the word idle.
#[inline(never)]
fn fill_at_site_one(mem: &mut Memory) -> Result<(bool, usize, usize)> {
    let mut map = mem.map_mut()?;
    map[0] = 1;
    Ok((map.is_lockless(), map.size(), map.maxsize()))
}
#[inline(never)]
fn fill_at_site_two(mem: &mut Memory) -> Result<bool> {
    let mut map = mem.map_mut()?;
    map[1] = 2;
    Ok(map.is_lockless())
}
#[inline(never)]
fn fill_at_site_three(mem: &mut Memory) -> Result<bool> {
    match mem.map_mut() {
        Ok(mut map) => {
            let last = map.len() - 1;
            map[last] = 3;
            Ok(map.is_lockless())
        }
        Err(e) => Err(e),
    }
}

#[test]
fn map_mut_from_several_call_sites_skips_the_lock_word() -> Result<()> {
    let mut mem = Memory::with_size(100)?;
    mem.resize(10..60)?;
    // A second handle: the locked path, from every site.
    let other = mem.clone();
    assert_eq!(fill_at_site_one(&mut mem)?, (false, 50, 97));
    assert!(!fill_at_site_two(&mut mem)?);
    assert!(!fill_at_site_three(&mut mem)?);
    assert_eq!(other.lock_state(), 0);
    drop(other);
    // A fresh only handle: the lockless path, from every site.
    let mut own = Memory::with_size(100)?;
    own.resize(10..60)?;
    assert_eq!(fill_at_site_one(&mut own)?, (true, 50, 97));
    assert!(fill_at_site_two(&mut own)?);
    assert!(fill_at_site_three(&mut own)?);
    assert_eq!(own.lock_state(), 0);
    let bytes = own.map_readable()?;
    assert_eq!((bytes[0], bytes[1], bytes[49]), (1, 2, 3));
    Ok(())
}

#[test]
fn an_owned_block_without_a_fixed_address_is_mapped_by_its_backend() -> Result<()> {
    // A custom backend (no static address): map_mut's slow path, still
    // lockless for the only handle; the backend maps and unmaps.
    let alloc = common::vec_alloc("mapmut-vec", mediamem::AllocatorFlags::empty());
    let mut mem = alloc.alloc(16, None)?;
    {
        let mut map = mem.map_mut()?;
        assert!(map.is_lockless());
        map.copy_from_slice(&[7; 16]);
    }
    assert_eq!(mem.lock_state(), 0);
    assert_eq!(&*mem.map_readable()?, &[7; 16]);
    let other = mem.clone();
    assert!(!mem.map_mut()?.is_lockless());
    drop(other);
    Ok(())
}
