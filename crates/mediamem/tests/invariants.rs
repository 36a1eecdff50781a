//! Property tests: random sequences of map / share / resize / copy / lock
//! never break the invariants, and the lock word always follows the
//! reference model of GStreamer's algorithm (with mediamem's stale-bit fix).

use mediamem::{Dynamic, LockFlags, LockGuard, MapFlags, MappedMemory, Memory, RawMap};
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_operations_keep_invariants(ops in prop::collection::vec(op(), 0..50)) {
        let root = Memory::with_size(200).unwrap();
        let maxsize = root.maxsize();
        // The model of the root block's bytes.
        let mut bytes = vec![0u8; maxsize];
        let mut views: Vec<Memory> = vec![root.clone()];
        // Each mapping with the block offset its memory had when it was mapped
        // (mappings do not follow later resizes).
        let mut maps: Vec<(MappedMemory<Dynamic>, usize)> = Vec::new();

        for op in ops {
            match op {
                Op::Share { src, a, b } => {
                    let m = &views[src % views.len()];
                    if let Ok(s) = m.share(range(m.size(), a, b)) {
                        prop_assert!(s.is_readonly());
                        prop_assert!(s.parent().unwrap().ptr_eq(&root));
                        views.push(s);
                    }
                }
                Op::ShareMax { src, a, b } => {
                    let m = &views[src % views.len()];
                    if let Ok(s) = m.share_maxsize(range(maxsize, a, b)) {
                        views.push(s);
                    }
                }
                Op::Copy { src, a, b } => {
                    let m = &views[src % views.len()];
                    let r = range(m.size(), a, b);
                    let off = m.offset();
                    if let Ok(c) = m.copy_range(r.clone()) {
                        prop_assert!(!c.is_readonly());
                        prop_assert_eq!(&*c.map_readable().unwrap(), &bytes[off + r.start..off + r.end]);
                    }
                }
                Op::MapRead { src } => {
                    let m = views[src % views.len()].clone();
                    let off = m.offset();
                    if let Ok(m) = m.into_mapped(MapFlags::READ) {
                        maps.push((m, off));
                    }
                }
                Op::MapWrite { src, pos, byte } => {
                    let m = views[src % views.len()].clone();
                    let off = m.offset();
                    if let Ok(mut w) = m.into_mapped(MapFlags::WRITE) {
                        prop_assert!(!w.memory().is_readonly());
                        let s = w.as_mut_slice().unwrap();
                        if !s.is_empty() {
                            let p = pos as usize % s.len();
                            s[p] = byte;
                            bytes[off + p] = byte;
                        }
                        maps.push((w, off));
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
                    let m = &views[src % views.len()];
                    let before = m.sizes();
                    if m.resize_by(delta as isize, size as usize).is_err() {
                        prop_assert_eq!(m.sizes(), before, "a failed resize changes nothing");
                    }
                }
                Op::Span { a, b } => {
                    let (x, y) = (&views[a % views.len()], &views[b % views.len()]);
                    if let Some(off) = x.is_span(y) {
                        prop_assert_eq!(x.offset() + x.size(), y.offset());
                        prop_assert_eq!(off + root.offset(), x.offset());
                    }
                }
            }

            // Invariants after every step.
            for v in &views {
                let (size, offset, max) = v.sizes();
                prop_assert!(offset + size <= max);
                prop_assert_eq!(max, maxsize);
            }
            // Live shares: distinct share objects held by views or by
            // mappings (an owned mapping keeps its share alive).
            let mut live: Vec<&Memory> = Vec::new();
            for m in views.iter().chain(maps.iter().map(|(m, _)| m.memory())) {
                if m.parent().is_some() && !live.iter().any(|l| l.ptr_eq(m)) {
                    live.push(m);
                }
            }
            prop_assert_eq!(root.lock_state() >> 16, live.len() as u32, "one exclusive lock per live share");
            for (m, off) in &maps {
                // Every live mapping sees exactly the model's bytes.
                prop_assert_eq!(m.as_slice(), &bytes[*off..*off + m.size()]);
            }
        }
        drop(maps);
        views.truncate(1);
        prop_assert_eq!(root.lock_state(), 0);
        prop_assert_eq!(root.ref_count(), 2); // `root` and views[0]
    }
}
