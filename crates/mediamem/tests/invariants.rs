//! Property tests: random sequences of map / share / resize / copy / lock
//! never break the invariants, and the lock word always follows the
//! reference model of GStreamer's algorithm (with mediamem's stale-bit fix).

use mediamem::{
    AllocationParams, Dynamic, Error, LockFlags, LockGuard, MapFlags, MappedMemory, Memory,
    MemoryFlags, RawMap,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Reference model of the lock word, written from the spec's prose as three
// separate counters (an independent formulation of the bit-packed CAS code).
// ---------------------------------------------------------------------------
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Model {
    mode: u32,
    maps: u32,
    shares: u32,
}

impl Model {
    fn word(&self) -> u32 {
        self.mode | (self.maps << 8) | (self.shares << 16)
    }

    fn lock(&mut self, flags: u32, readonly: bool) -> bool {
        let write = flags & 2 != 0;
        let access = flags & 3;
        if readonly && write {
            return false;
        }
        let shares = self.shares + u32::from(flags & 4 != 0);
        if (self.mode & 2 != 0 || write) && shares >= 2 {
            return false;
        }
        let mut next = Model { shares, ..*self };
        if access != 0 {
            if self.maps == 0 {
                next.mode = access;
            } else if self.mode & access != access {
                return false;
            }
            next.maps += 1;
        }
        *self = next;
        true
    }

    fn unlock(&mut self, flags: u32) {
        if flags & 4 != 0 {
            self.shares -= 1;
        }
        if flags & 3 != 0 {
            self.maps -= 1;
            if self.maps == 0 {
                self.mode = 0;
            }
        }
    }
}

#[derive(Debug, Clone)]
enum LockOp {
    Map(u32),
    Lock(u32),
    Release(usize),
    Share,
}

fn lock_op() -> impl Strategy<Value = LockOp> {
    prop_oneof![
        3 => (1u32..=3).prop_map(LockOp::Map),
        2 => (1u32..=7).prop_map(LockOp::Lock),
        3 => any::<usize>().prop_map(LockOp::Release),
        1 => Just(LockOp::Share),
    ]
}

enum Held<'a> {
    Map(#[allow(dead_code)] RawMap<'a>, u32),
    Lock(#[allow(dead_code)] LockGuard<'a>, u32),
}

fn check_lock_sequence(readonly: bool, ops: Vec<LockOp>) -> Result<(), TestCaseError> {
    let mem = if readonly {
        Memory::from_slice(vec![0u8; 64])
    } else {
        Memory::with_size(64).unwrap()
    };
    let mut model = Model::default();
    let mut held: Vec<Held<'_>> = Vec::new();
    for op in ops {
        match op {
            LockOp::Map(f) if readonly && f & 2 == 0 => {
                // mediamem's departure: a read map of a READONLY root (which
                // nothing can write) always succeeds and skips the lock
                // word, so the word does not count it.
                let m = mem.map_raw(MapFlags::from_bits_retain(f));
                prop_assert!(
                    m.is_ok(),
                    "read map of a READONLY root at {:#x}",
                    model.word()
                );
                held.push(Held::Map(m.unwrap(), 0));
            }
            LockOp::Map(f) => {
                let expect = model.clone().lock(f, readonly);
                let got = mem.map_raw(MapFlags::from_bits_retain(f));
                prop_assert_eq!(got.is_ok(), expect, "map {:#x} at {:#x}", f, model.word());
                if let Ok(m) = got {
                    model.lock(f, readonly);
                    held.push(Held::Map(m, f));
                }
            }
            LockOp::Lock(f) => {
                let expect = model.clone().lock(f, readonly);
                let got = mem.lock(LockFlags::from_bits_retain(f));
                prop_assert_eq!(got.is_ok(), expect, "lock {:#x} at {:#x}", f, model.word());
                if let Ok(g) = got {
                    model.lock(f, readonly);
                    held.push(Held::Lock(g, f));
                }
            }
            LockOp::Release(i) => {
                if !held.is_empty() {
                    let f = match held.remove(i % held.len()) {
                        Held::Map(_, f) | Held::Lock(_, f) => f,
                    };
                    model.unlock(f);
                }
            }
            LockOp::Share => {
                // share = lock X twice, lock the root X, unlock X twice.
                let mut m = model;
                let expect = m.lock(4, false) && m.lock(4, false) && m.lock(4, false);
                let got = mem.share(..);
                prop_assert_eq!(got.is_ok(), expect, "share at {:#x}", model.word());
            }
        }
        prop_assert_eq!(mem.lock_state(), model.word());
    }
    drop(held);
    prop_assert_eq!(mem.lock_state(), 0, "back to the start state");
    Ok(())
}

proptest! {
    #[test]
    fn lock_word_follows_the_model(ops in prop::collection::vec(lock_op(), 0..60)) {
        check_lock_sequence(false, ops)?;
    }

    #[test]
    fn lock_word_follows_the_model_readonly(ops in prop::collection::vec(lock_op(), 0..60)) {
        check_lock_sequence(true, ops)?;
    }
}

// ---------------------------------------------------------------------------
// Random operations over a root, its shares, copies and owned mappings.
// ---------------------------------------------------------------------------
#[derive(Debug, Clone)]
enum Op {
    Share { src: usize, a: u16, b: u16 },
    ShareMax { src: usize, a: u16, b: u16 },
    Copy { src: usize, a: u16, b: u16 },
    MapRead { src: usize },
    MapWrite { src: usize, pos: u16, byte: u8 },
    Unmap { idx: usize },
    Drop { idx: usize },
    Resize { src: usize, delta: i16, size: u16 },
    Span { a: usize, b: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let i = any::<usize>();
    prop_oneof![
        (i, any::<u16>(), any::<u16>()).prop_map(|(src, a, b)| Op::Share { src, a, b }),
        (i, any::<u16>(), any::<u16>()).prop_map(|(src, a, b)| Op::ShareMax { src, a, b }),
        (i, any::<u16>(), any::<u16>()).prop_map(|(src, a, b)| Op::Copy { src, a, b }),
        i.prop_map(|src| Op::MapRead { src }),
        (i, any::<u16>(), any::<u8>()).prop_map(|(src, pos, byte)| Op::MapWrite { src, pos, byte }),
        i.prop_map(|idx| Op::Unmap { idx }),
        i.prop_map(|idx| Op::Drop { idx }),
        (i, -64i16..64, 0u16..300).prop_map(|(src, delta, size)| Op::Resize { src, delta, size }),
        (i, i).prop_map(|(a, b)| Op::Span { a, b }),
    ]
}

/// A sub-range of `len` from two random numbers.
fn range(len: usize, a: u16, b: u16) -> std::ops::Range<usize> {
    let (x, y) = (a as usize % (len + 1), b as usize % (len + 1));
    x.min(y)..x.max(y)
}

/// The model of one memory handle: its region and flags as they must be.
struct View {
    mem: Memory,
    offset: usize,
    size: usize,
    flags: MemoryFlags,
}

impl View {
    fn is_root(&self) -> bool {
        self.mem.parent().is_none()
    }
}

/// A live owned mapping and what it was made of: the block offset and
/// size its memory had when it was mapped (mappings do not follow later
/// resizes), whether it writes, and whether its memory is the root.
struct Mapped {
    map: MappedMemory<Dynamic>,
    offset: usize,
    write: bool,
    root: bool,
}

/// The flags of a share at `[offset, offset + size)` of a root with the
/// (model) flags and region given: READONLY, ZERO_PREFIXED only if it starts
/// at or before the root's offset, ZERO_PADDED only if it ends at or after
/// the root's end.
fn share_flags(root: &View, offset: usize, size: usize) -> MemoryFlags {
    let mut flags = root.flags | MemoryFlags::READONLY;
    if offset > root.offset {
        flags.remove(MemoryFlags::ZERO_PREFIXED);
    }
    if offset + size < root.offset + root.size {
        flags.remove(MemoryFlags::ZERO_PADDED);
    }
    flags
}

/// Distinct live shares: held by views or by mappings (an owned mapping
/// keeps its share alive).
fn live_shares(views: &[View], maps: &[Mapped]) -> usize {
    let mut live: Vec<&Memory> = Vec::new();
    for m in views
        .iter()
        .map(|v| &v.mem)
        .chain(maps.iter().map(|m| m.map.memory()))
    {
        if m.parent().is_some() && !live.iter().any(|l| l.ptr_eq(m)) {
            live.push(m);
        }
    }
    live.len()
}

/// The errors the model expects, by kind.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fails {
    Shared,
    Aliased,
    LockConflict,
    ReadOnly,
    NotWritable,
    NegativeOffset,
    OutOfRange,
}

fn kind(e: &Error) -> Option<Fails> {
    Some(match e {
        Error::Shared { .. } => Fails::Shared,
        Error::Aliased { .. } => Fails::Aliased,
        Error::LockConflict { .. } => Fails::LockConflict,
        Error::ReadOnly => Fails::ReadOnly,
        Error::NotWritable { .. } => Fails::NotWritable,
        Error::NegativeOffset { .. } => Fails::NegativeOffset,
        Error::OutOfRange { .. } => Fails::OutOfRange,
        _ => return None,
    })
}

/// Assert that `$got` failed with the error kind `$want`.
macro_rules! expect_err {
    ($got:expr, $want:expr, $($what:tt)+) => {{
        match $got {
            Ok(_) => prop_assert!(false, "{} succeeded, expected {:?}", format!($($what)+), $want),
            Err(e) => prop_assert!(
                kind(&e) == Some($want),
                "{} failed with {:?}, expected {:?}",
                format!($($what)+),
                e,
                $want
            ),
        }
    }};
}

/// Run `ops` against a root of 200 bytes with a zeroed 16-byte prefix and
/// padding, checking every operation's outcome against the model: which
/// ones succeed, with what result, and which error the others give.
fn check_random_operations(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let zero = MemoryFlags::ZERO_PREFIXED | MemoryFlags::ZERO_PADDED;
    let params = AllocationParams::new(zero, 0, 16, 16);
    let root = Memory::with_size_and_params(200, &params).unwrap();
    let maxsize = root.maxsize();
    prop_assert_eq!((root.offset(), root.size()), (16, 200));
    prop_assert_eq!(root.flags(), MemoryFlags::LOCKABLE | zero);
    // The model of the root block's bytes (system memory is zeroed).
    let mut bytes = vec![0u8; maxsize];
    let mut views = vec![View {
        mem: root.clone(),
        offset: 16,
        size: 200,
        flags: root.flags(),
    }];
    let mut maps: Vec<Mapped> = Vec::new();

    for op in ops {
        // The state every expectation below is derived from.
        let root_written = maps.iter().any(|m| m.root && m.write);
        let root_read = maps.iter().any(|m| m.root && !m.write);
        let shares = live_shares(&views, &maps);
        match op {
            Op::Share { src, a, b } | Op::ShareMax { src, a, b } => {
                let max = matches!(op, Op::ShareMax { .. });
                let v = &views[src % views.len()];
                let (offset, r) = if max {
                    let r = range(maxsize, a, b);
                    (r.start, r)
                } else {
                    let r = range(v.size, a, b);
                    (v.offset + r.start, r)
                };
                let got = if max {
                    v.mem.share_maxsize(r.clone())
                } else {
                    v.mem.share(r.clone())
                };
                if root_written {
                    // The two temporary exclusive locks meet the root's
                    // WRITE map (GStreamer: share fails while write-mapped).
                    expect_err!(got, Fails::Shared, "share {:?} of {:?}", r, v.mem);
                } else {
                    let s = got.map_err(|e| TestCaseError::fail(format!("share {r:?}: {e}")))?;
                    prop_assert!(s.is_readonly());
                    prop_assert!(s.parent().unwrap().ptr_eq(&root));
                    prop_assert_eq!((s.offset(), s.size()), (offset, r.len()));
                    let flags = share_flags(&views[0], offset, r.len());
                    views.push(View {
                        mem: s,
                        offset,
                        size: r.len(),
                        flags,
                    });
                }
            }
            Op::Copy { src, a, b } => {
                let v = &views[src % views.len()];
                let r = range(v.size, a, b);
                let got = v.mem.copy_range(r.clone());
                if root_written {
                    expect_err!(
                        got,
                        Fails::Aliased,
                        "copy {:?} while the root is write-mapped",
                        r
                    );
                } else {
                    let c = got.map_err(|e| TestCaseError::fail(format!("copy {r:?}: {e}")))?;
                    prop_assert!(!c.is_readonly());
                    prop_assert_eq!(c.size(), r.len());
                    let want = &bytes[v.offset + r.start..v.offset + r.end];
                    prop_assert_eq!(&*c.map_readable().unwrap(), want);
                }
            }
            Op::MapRead { src } => {
                let v = &views[src % views.len()];
                let (offset, size, is_root) = (v.offset, v.size, v.is_root());
                let got = v.mem.clone().into_mapped(MapFlags::READ);
                if root_written {
                    // A root's READ meets its WRITE mode in the lock word; a
                    // share's READ meets the block's writable borrow.
                    let want = if is_root {
                        Fails::LockConflict
                    } else {
                        Fails::Aliased
                    };
                    expect_err!(got.map_err(|e| e.error), want, "read map of {:?}", v.mem);
                } else {
                    let m =
                        got.map_err(|e| TestCaseError::fail(format!("read map: {}", e.error)))?;
                    prop_assert_eq!(m.size(), size);
                    prop_assert_eq!(m.as_slice(), &bytes[offset..offset + size]);
                    maps.push(Mapped {
                        map: m,
                        offset,
                        write: false,
                        root: is_root,
                    });
                }
            }
            Op::MapWrite { src, pos, byte } => {
                let v = &views[src % views.len()];
                let (offset, is_root) = (v.offset, v.is_root());
                let got = v
                    .mem
                    .clone()
                    .into_mapped(MapFlags::WRITE)
                    .map_err(|e| e.error);
                let want = if !is_root {
                    Some(Fails::ReadOnly)
                } else if shares >= 2 {
                    Some(Fails::Shared)
                } else if root_read {
                    Some(Fails::LockConflict)
                } else if !maps.is_empty() {
                    // Another writer of the root, or readers of its shares.
                    Some(Fails::Aliased)
                } else {
                    None
                };
                match want {
                    Some(want) => expect_err!(got, want, "write map of {:?}", v.mem),
                    None => {
                        let mut w =
                            got.map_err(|e| TestCaseError::fail(format!("write map: {e}")))?;
                        prop_assert!(!w.memory().is_readonly());
                        let s = w.as_mut_slice().unwrap();
                        prop_assert_eq!(s.len(), v.size);
                        if !s.is_empty() {
                            let p = pos as usize % s.len();
                            s[p] = byte;
                            bytes[offset + p] = byte;
                        }
                        maps.push(Mapped {
                            map: w,
                            offset,
                            write: true,
                            root: true,
                        });
                    }
                }
            }
            Op::Unmap { idx } => {
                if !maps.is_empty() {
                    let i = idx % maps.len();
                    drop(maps.remove(i));
                }
            }
            Op::Drop { idx } => {
                if views.len() > 1 {
                    let i = 1 + idx % (views.len() - 1);
                    views.remove(i);
                }
            }
            Op::Resize { src, delta, size } => {
                let n = views.len();
                let v = &mut views[src % n];
                let size = size as usize;
                // GStreamer's writability: at most one exclusive holder. A
                // root is held by each live share; a share by nothing (its
                // own shares hold the root), so shares can always resize.
                let writable = !v.is_root() || shares <= 1;
                let got = v.mem.resize_by(delta as isize, size);
                let new_offset = v.offset.checked_add_signed(delta as isize);
                if !writable {
                    expect_err!(
                        got,
                        Fails::NotWritable,
                        "resize of {:?} with {} shares",
                        v.mem,
                        shares
                    );
                } else if new_offset.is_none() {
                    expect_err!(got, Fails::NegativeOffset, "resize by {}", delta);
                } else if new_offset.unwrap() + size > maxsize {
                    expect_err!(
                        got,
                        Fails::OutOfRange,
                        "resize to {:?}+{}",
                        new_offset,
                        size
                    );
                } else {
                    got.map_err(|e| {
                        TestCaseError::fail(format!(
                            "resize by {delta} to {size} of {:?}: {e}",
                            v.mem
                        ))
                    })?;
                    let new_offset = new_offset.unwrap();
                    if new_offset > v.offset {
                        v.flags.remove(MemoryFlags::ZERO_PREFIXED);
                    }
                    if new_offset + size < v.offset + v.size {
                        v.flags.remove(MemoryFlags::ZERO_PADDED);
                    }
                    (v.offset, v.size) = (new_offset, size);
                }
            }
            Op::Span { a, b } => {
                let (x, y) = (&views[a % views.len()], &views[b % views.len()]);
                let want = (!x.is_root() && !y.is_root() && x.offset + x.size == y.offset)
                    .then(|| x.offset.checked_sub(views[0].offset))
                    .flatten();
                prop_assert_eq!(x.mem.is_span(&y.mem), want);
            }
        }

        // After every step: every handle's region and flags are the
        // model's (a failed operation changed nothing)...
        for v in &views {
            prop_assert_eq!(v.mem.sizes(), (v.size, v.offset, maxsize), "{:?}", v.mem);
            prop_assert_eq!(v.mem.flags(), v.flags, "{:?}", v.mem);
        }
        // ...the root's lock word is the mode of its own maps, their count
        // and one exclusive lock per live share...
        let root_maps: Vec<&Mapped> = maps.iter().filter(|m| m.root).collect();
        let mode = match root_maps.first() {
            None => 0,
            Some(m) if m.write => 2,
            Some(_) => 1,
        };
        let shares = live_shares(&views, &maps) as u32;
        prop_assert_eq!(
            root.lock_state(),
            mode | (root_maps.len() as u32) << 8 | shares << 16
        );
        // ...and every live mapping sees exactly the model's bytes.
        for m in &maps {
            let size = m.map.size();
            prop_assert_eq!(m.map.as_slice(), &bytes[m.offset..m.offset + size]);
        }
    }
    drop(maps);
    views.truncate(1);
    prop_assert_eq!(root.lock_state(), 0);
    prop_assert_eq!(root.ref_count(), 2); // `root` and views[0]
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_operations_keep_invariants(ops in prop::collection::vec(op(), 0..50)) {
        check_random_operations(ops)?;
    }
}
