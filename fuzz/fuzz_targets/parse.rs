//! Fuzz target `parse`: the receiver's pure decoders on arbitrary bytes.
//!
//! Input: 16 bytes read as a message header by `parse_header`, the rest
//! read as a frame payload by `parse_frame` (version 1's fd frame) and by
//! `parse_frame_v2`, with the header's fd count field (valid or not) as
//! the number of fds that came with it. Inputs under 16 bytes are a
//! payload that came with no fd.
//!
//! Invariants: nothing panics (overflow checks are on); an accepted header
//! has a known type, a payload and an fd count within the limits and the
//! right lengths for its type; an accepted frame describes exactly one
//! memory per fd (and one more fd for its acquire fence, if it has one), its fields add up to the payload's length, and every
//! region lies inside its maxsize, itself at most `isize::MAX`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediamem::ipc::{
    parse_frame, parse_frame_v2, parse_header, Source, MAX_MEMORIES, MAX_PAYLOAD, MAX_UNREGISTER,
};

fuzz_target!(|data: &[u8]| {
    let Some((head, payload)) = data.split_first_chunk::<16>() else {
        if let Ok(f) = parse_frame(data, 0) {
            assert!(f.memories.is_empty());
            assert_eq!(data.len(), 16 + f.meta.len());
        }
        return;
    };
    if let Ok(h) = parse_header(head) {
        assert!(h.payload_len as usize <= MAX_PAYLOAD);
        assert!(h.n_fds as usize <= MAX_MEMORIES);
        match h.kind {
            1 | 4 => {}
            5 => {
                assert_eq!(h.n_fds, 0);
                assert!(h.payload_len > 0 && h.payload_len % 4 == 0);
                assert!(h.payload_len as usize / 4 <= MAX_UNREGISTER);
            }
            // A release, or a release with its fence's fd.
            2 => assert!(matches!((h.payload_len, h.n_fds), (8, 0) | (16, 1))),
            3 => assert_eq!((h.payload_len, h.n_fds), (0, 0)),
            other => panic!("header of unknown type {other} accepted"),
        }
    }
    let n_fds = u32::from_le_bytes(head[12..16].try_into().unwrap()) as usize;
    if let Ok(f) = parse_frame(payload, n_fds) {
        assert_eq!(f.memories.len(), n_fds);
        assert!(n_fds <= MAX_MEMORIES);
        assert_eq!(payload.len(), 16 + 32 * n_fds + f.meta.len());
        assert_eq!(payload[..8], f.id.to_le_bytes());
        for m in &f.memories {
            assert!(m.kind <= 1, "unknown kind {} accepted", m.kind);
            let end = m.offset.checked_add(m.size).expect("region overflows");
            assert!(end <= m.maxsize && m.maxsize <= isize::MAX as u64);
        }
    }
    if let Ok(f) = parse_frame_v2(payload, n_fds) {
        let with_fds = f.memories.iter().filter(|m| m.source.has_fd()).count();
        // The acquire fence's fd follows the memories'.
        assert_eq!(with_fds + usize::from(f.acquire_fence), n_fds);
        assert!(f.memories.len() <= MAX_MEMORIES);
        let layout = f.layout.as_ref().map_or(0, |l| 24 + 16 * l.planes().len());
        assert_eq!(
            payload.len(),
            48 + 40 * f.memories.len() + layout + f.meta.len()
        );
        assert_eq!(payload[..8], f.id.to_le_bytes());
        for m in &f.memories {
            assert!(m.kind <= 1, "unknown kind {} accepted", m.kind);
            if let Source::Buffer(_) = m.source {
                assert_eq!((m.kind, m.maxsize), (0, 0));
            } else {
                let end = m.offset.checked_add(m.size).expect("region overflows");
                assert!(end <= m.maxsize && m.maxsize <= isize::MAX as u64);
            }
        }
    }
});
