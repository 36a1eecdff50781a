//! Flag types with GStreamer's exact bit values.

use bitflags::bitflags;

bitflags! {
    /// Flags of a [`Memory`](crate::Memory) (`GstMemoryFlags`), with GStreamer's
    /// bit values.
    ///
    /// Bits from [`MemoryFlags::LAST`] upwards are free for custom use and are
    /// carried through unchanged.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MemoryFlags: u32 {
        /// Set on every memory (GStreamer's mini-object `LOCKABLE`). A fresh
        /// system block therefore reports `0x1`, as GStreamer does.
        const LOCKABLE = 1;
        /// Every lock or map that includes WRITE fails.
        const READONLY = 2;
        /// [`Memory::share`](crate::Memory::share) refuses this memory.
        const NO_SHARE = 16;
        /// The bytes `[0, offset)` are zero.
        const ZERO_PREFIXED = 32;
        /// The bytes `[offset + size, maxsize)` are zero.
        const ZERO_PADDED = 64;
        /// The memory is physically contiguous (informational).
        const PHYSICALLY_CONTIGUOUS = 128;
        /// The memory cannot be mapped by the CPU (informational; map does
        /// not check it, as in GStreamer).
        const NOT_MAPPABLE = 256;
        /// The first flag free for custom use.
        const LAST = 16 << 16;
        // Custom flags at or above LAST are preserved.
        const _ = !0;
    }
}

bitflags! {
    /// Flags of a map request (`GstMapFlags`).
    ///
    /// Only [`READ`](MapFlags::READ) and [`WRITE`](MapFlags::WRITE) reach the
    /// lock word. Bit 2 is GStreamer's lock `EXCLUSIVE` bit and is refused in
    /// map flags. Custom flags at or above [`MapFlags::LAST`] are passed to the
    /// memory backend.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MapFlags: u32 {
        /// Map for reading.
        const READ = 1;
        /// Map for writing.
        const WRITE = 2;
        /// Both.
        const READWRITE = 3;
        /// The mapping holds its own reference to the memory (GStreamer 1.28).
        const REF_MEMORY = 256;
        /// The first flag free for custom use.
        const LAST = 1 << 16;
        const _ = !0;
    }
}

bitflags! {
    /// Flags of a lock request (`GstLockFlags`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct LockFlags: u32 {
        /// Read access.
        const READ = 1;
        /// Write access.
        const WRITE = 2;
        /// Exclusive (share-count) lock: what containers and shares take.
        const EXCLUSIVE = 4;
        /// READ | WRITE.
        const READWRITE = 3;
    }
}

impl MapFlags {
    /// The lock flags a map with these flags takes (`flags & 0xff`).
    pub(crate) fn lock_flags(self) -> LockFlags {
        LockFlags::from_bits_truncate(self.bits() & 0x3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_values_match_gstreamer() {
        assert_eq!(MemoryFlags::READONLY.bits(), 2);
        assert_eq!(MemoryFlags::NO_SHARE.bits(), 16);
        assert_eq!(MemoryFlags::ZERO_PREFIXED.bits(), 32);
        assert_eq!(MemoryFlags::ZERO_PADDED.bits(), 64);
        assert_eq!(MemoryFlags::PHYSICALLY_CONTIGUOUS.bits(), 128);
        assert_eq!(MemoryFlags::NOT_MAPPABLE.bits(), 256);
        assert_eq!(MemoryFlags::LAST.bits(), 0x100000);
        assert_eq!(MapFlags::READ.bits(), 1);
        assert_eq!(MapFlags::WRITE.bits(), 2);
        assert_eq!(MapFlags::REF_MEMORY.bits(), 256);
        assert_eq!(MapFlags::LAST.bits(), 1 << 16);
        assert_eq!(LockFlags::EXCLUSIVE.bits(), 4);
    }

    #[test]
    fn custom_flags_are_kept() {
        let f = MemoryFlags::from_bits_retain(MemoryFlags::LAST.bits() << 1);
        assert_eq!(f.bits(), 0x200000);
        let m = MapFlags::READ | MapFlags::from_bits_retain(1 << 17);
        assert_eq!(m.lock_flags(), LockFlags::READ);
    }
}
