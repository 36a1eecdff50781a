//! Shared memory: [`ShmAllocator`] (GStreamer's `GstShmAllocator`, `"shm"`),
//! memfd-backed memory that can be handed to other processes.
//!
//! Each allocation is a fresh memfd (`MFD_CLOEXEC | MFD_ALLOW_SEALING`,
//! plus `MFD_NOEXEC_SEAL` where the kernel knows it), sized
//! `size + prefix + padding + align` rounded up to the page size (GStreamer
//! 1.30), sealed with `F_SEAL_SHRINK | F_SEAL_GROW` so no process holding the
//! fd can truncate it under a reader's mapping (which would `SIGBUS`), and
//! kept mapped read-write. Once that mapping exists it is also sealed with
//! `F_SEAL_FUTURE_WRITE`: only the allocating process's own mapping can
//! write; nobody else can map it writable, `write(2)` to it, or punch a hole
//! in it (`fallocate(PUNCH_HOLE)` would turn a reader's bytes into zeros, or,
//! on hugetlbfs, into `SIGBUS`). Its memories are fd memory.
//!
//! | GStreamer | mediamem | why |
//! |---|---|---|
//! | unsealed memfd (1.24–1.30) | `SHRINK \| GROW`, then `FUTURE_WRITE` once mapped | a peer that maps the fd can be neither truncated under nor written behind; a second writable root over the same file cannot be made in this process either |
//!
//! Unlike GStreamer, [`ShmAllocator::get`] registers the allocator itself:
//! it never answers "none" because `init_once` was forgotten.

use rustix::fs::SealFlags;

use crate::allocator::{AllocationParams, Allocator, AllocatorCaps, AllocatorFlags, AllocatorImpl};
use crate::error::{Error, Result};
use crate::fd::{FdBackend, FdBlock, FdHandle, FdMemoryFlags};
use crate::kind::create_memfd;
use crate::memory::{MemoryParts, DEFAULT_ALIGN_MASK};

/// Name (and memory type) of the shm allocator.
pub const ALLOCATOR_SHM: &str = "shm";

/// The seals every shm memfd carries from its creation (`F_SEAL_FUTURE_WRITE`
/// follows once the allocator's own mapping exists).
pub const SHM_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// The shm allocator implementation: memory type `"shm"`, flags
/// `CUSTOM_ALLOC | NO_COPY` (copies go to system memory), plain `alloc`.
#[derive(Debug, Default)]
pub(crate) struct ShmAllocatorImpl;

impl ShmAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps =
        AllocatorCaps::PLAIN_ALLOC.union(AllocatorCaps::FD_BACKED);
}

impl AllocatorImpl for ShmAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        ALLOCATOR_SHM
    }

    fn flags(&self) -> AllocatorFlags {
        AllocatorFlags::CUSTOM_ALLOC | AllocatorFlags::NO_COPY
    }

    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let align = params.align | DEFAULT_ALIGN_MASK;
        let page = rustix::param::page_size();
        let maxsize = size
            .checked_add(params.prefix)
            .and_then(|n| n.checked_add(params.padding))
            .and_then(|n| n.checked_add(align))
            .and_then(|n| n.checked_next_multiple_of(page))
            .filter(|&n| n <= i64::MAX as usize)
            .ok_or(Error::SizeOverflow {
                what: "shm size + prefix + padding + align, page-rounded",
            })?;
        let fd = create_memfd("mediamem-shm")?;
        rustix::fs::ftruncate(&fd, maxsize as u64).map_err(|e| match e {
            rustix::io::Errno::NOMEM | rustix::io::Errno::NOSPC | rustix::io::Errno::FBIG => {
                Error::OutOfMemory { size: maxsize }
            }
            e => Error::Os {
                op: "ftruncate",
                source: e.into(),
            },
        })?;
        // Just created and sized by us: no size check needed, and the
        // filesystem is known.
        let mut block = FdBlock::new_own(
            FdHandle::Owned(fd),
            maxsize,
            FdMemoryFlags::KEEP_MAPPED,
            crate::sys::FsKind::Shmem,
        )?;
        // Map read-write once, for the memory's whole life (GStreamer keeps
        // it mapped too): every later map is then only the lock word.
        let base = block.pin_mapped(ALLOCATOR_SHM)?;
        // Then seal, in one call (nobody else has the fd yet): no shrinking
        // or growing, and, now that our own writable mapping exists, no
        // other writer: no new writable mapping, no write(2), no hole
        // punched under a peer's mapping (F_SEAL_FUTURE_WRITE stops
        // fallocate(PUNCH_HOLE) too). Receivers can require it. Kernels
        // before 5.1 do not know F_SEAL_FUTURE_WRITE (EINVAL): they get the
        // shrink and grow seals alone, and a receiver that requires the
        // write seal says so.
        let sealed =
            match rustix::fs::fcntl_add_seals(block.fd(), SHM_SEALS | SealFlags::FUTURE_WRITE) {
                Err(rustix::io::Errno::INVAL) => rustix::fs::fcntl_add_seals(block.fd(), SHM_SEALS),
                other => other,
            };
        sealed.map_err(|e| Error::Os {
            op: "fcntl(F_ADD_SEALS)",
            source: e.into(),
        })?;
        // mmap is page-aligned; only masks beyond a page need an offset.
        let aoffset = (align + 1 - (base.as_ptr() as usize & align)) & align;
        // The new memfd is zero-filled, so ZERO_PREFIXED / ZERO_PADDED hold.
        Ok(MemoryParts::new(Box::new(FdBackend::new(block)), maxsize)
            .flags(params.flags)
            .align(align)
            .region(params.prefix + aoffset, size))
    }
}

crate::allocator::allocator_handle! {
    /// The process-wide shm allocator (`GstShmAllocator`).
    ///
    /// ```
    /// use mediamem::ShmAllocator;
    /// let shm = ShmAllocator::get();
    /// let mem = shm.alloc(100, None)?;
    /// assert!(mediamem::is_fd_memory(&mem));
    /// assert!(mem.maxsize() >= 4096); // page-rounded
    /// mem.map_writable()?.fill(7);
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    ShmAllocator => ShmAllocatorImpl
}

impl ShmAllocator {
    /// Register the shm allocator as `"shm"` if it is not yet
    /// (`gst_shm_allocator_init_once`).
    pub fn init_once() {
        Self::get();
    }

    /// The shm allocator, registered on first use (`gst_shm_allocator_get`,
    /// which in GStreamer answers NULL before `init_once`).
    pub fn get() -> ShmAllocator {
        let a = Allocator::register_once(ALLOCATOR_SHM, || Allocator::new(ShmAllocatorImpl));
        // Someone may have registered another allocator as "shm" first:
        // this handle is always the real one.
        ShmAllocator::from_allocator(a)
            .unwrap_or_else(|| ShmAllocator(Allocator::new(ShmAllocatorImpl)))
    }
}
