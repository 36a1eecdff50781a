//! fd-backed memory: [`FdAllocator`] (GStreamer's `GstFdAllocator`, `"fd"`)
//! and the seed functions [`is_fd_memory`] and [`fd_memory_get_fd`].
//!
//! The mapping rules are GStreamer's: one `mmap` of the whole block (file
//! offset 0 to `maxsize`) per root, shared by every share; a map count;
//! `KEEP_MAPPED` keeps the mapping after the last unmap and upgrades its
//! protection with `mprotect` when no map is held; `MAP_PRIVATE` maps
//! copy-on-write; the fd is closed when the root and its shares are gone,
//! unless the memory does not own it. Copies go to system memory (the
//! allocator is `CUSTOM_ALLOC`).
//!
//! Improvements over GStreamer:
//! * imports are checked: a size or offset past the end of the file is an
//!   error at import ([`Error::BeyondFile`]) instead of a `SIGBUS` at the
//!   first access, and an fd whose size cannot be learnt is refused;
//! * fds come in as [`OwnedFd`] (the memory owns it) or [`BorrowedFd`]
//!   (duplicated), and go out as [`BorrowedFd`]; neither type can hold
//!   `-1`, which GStreamer 1.22 accepts and later fails on;
//!   A check at import cannot stop another holder of the same file from
//!   truncating it later; memory that is shared with other processes should
//!   come from [`ShmAllocator`](crate::ShmAllocator), whose memfds are sealed
//!   against shrinking;
//! * a WRITE map is mapped `PROT_READ | PROT_WRITE`, because a `&mut [u8]`
//!   may be read and write-only mappings are not readable everywhere;
//! * `share(..)` of fd and dma-buf memory that was resized covers the
//!   resized region (offset and size relative to the visible bytes, as for
//!   every memory); GStreamer before 1.28 shared from the block's start
//!   with the old size, a share running past the block;
//! * hugetlbfs files are mapped and unmapped in whole huge pages (a partial
//!   `munmap` fails there) and faulted in when mapped, so a missing huge
//!   page is an error, not a `SIGBUS`;
//! * every root of a file shares one byte-borrow rule within the process
//!   ([`BlockAlias`]), so two imports of the same fd cannot give two
//!   `&mut [u8]` over one page;
//! * [`FdMemoryFlags::GUARD_SIGBUS`] (mediamem's own flag) survives a file
//!   truncated under the mapping by another holder.
//!
//! # What another process can still do to mapped bytes
//!
//! A mapping of a shared file is shared with everyone who holds the file.
//! mediamem rules out, within one process, two slices that alias (one
//! borrow rule per file) and, for memory it allocates, every way to take
//! the pages away: shm and huge page memfds are sealed against shrinking,
//! growing and (once mapped) further writers. What remains is written in
//! the README's contract: another holder of an unsealed file can truncate
//! it (a `SIGBUS` on the next access, unless the memory was imported with
//! `GUARD_SIGBUS`, which turns it into zero pages and [`Error::Truncated`]),
//! and the creator of a file, or a device, can write bytes while you read
//! them. No mmap library can stop that (memmap2 documents the same): a
//! slice over such bytes may see them change, so validate a copy of what
//! must not change between two reads (a header, an index), never the
//! mapped bytes twice.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use bitflags::bitflags;
use rustix::fs::{FileType, SeekFrom};
use rustix::mm::ProtFlags;

use crate::allocator::{Allocator, AllocatorCaps, AllocatorFlags, AllocatorImpl};
use crate::error::{Error, Result};
use crate::mapping::{FileMapping, MapFailure, MapOptions, PinnedPtr, Upgrade};
use crate::memory::{BlockAlias, MapFlags, Memory, MemoryBackend, MemoryKind, MemoryParts};
pub(crate) use crate::sys::FdHandle;
use crate::sys::FsKind;

bitflags! {
    /// Flags of fd memory (`GstFdMemoryFlags`), with GStreamer's values.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FdMemoryFlags: u32 {
        /// Keep the mapping after the last unmap (and re-protect it with
        /// `mprotect` when a later map needs more access).
        const KEEP_MAPPED = 1 << 0;
        /// Map copy-on-write (`MAP_PRIVATE`): writes never reach the fd.
        const MAP_PRIVATE = 1 << 1;
        /// Do not close the fd when the memory is freed. Only with
        /// [`FdAllocator::alloc_unowned`].
        const DONT_CLOSE = 1 << 2;
        /// mediamem's own (not GStreamer's): guard the mapping against
        /// `SIGBUS` when another holder of the file truncates it. Pages of
        /// the mapping then read as zeros instead of killing the process,
        /// and the next map of the memory fails with
        /// [`Error::Truncated`]. For files that cannot be sealed (regular
        /// files, memfds of other programs). See the crate's contract.
        const GUARD_SIGBUS = 1 << 16;
    }
}

/// Name (and memory type) of the fd allocator.
pub const ALLOCATOR_FD: &str = "fd";

/// The fd allocator implementation: memory type `"fd"`, flags
/// `CUSTOM_ALLOC` (it needs an fd, so copies go to system memory).
#[derive(Debug, Default)]
pub(crate) struct FdAllocatorImpl;

impl FdAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps = AllocatorCaps::FD_BACKED;
}

impl AllocatorImpl for FdAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        ALLOCATOR_FD
    }
    fn flags(&self) -> AllocatorFlags {
        AllocatorFlags::CUSTOM_ALLOC
    }
}

crate::allocator::allocator_handle! {
    /// Wraps file descriptors as [`Memory`] (`GstFdAllocator`).
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::OwnedFd;
    /// use mediamem::fd::{FdAllocator, FdMemoryFlags};
    ///
    /// let mut file = tempfile_with(b"0123456789");
    /// let mem = FdAllocator::new().alloc(OwnedFd::from(file), 10, FdMemoryFlags::KEEP_MAPPED)?;
    /// assert_eq!(mem.map_readable()?[5], b'5');
    /// assert!(mediamem::is_fd_memory(&mem));
    /// # fn tempfile_with(b: &[u8]) -> std::fs::File {
    /// #     let p = std::env::temp_dir().join(format!("mm-doc-{}", std::process::id()));
    /// #     let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    /// #     f.write_all(b).unwrap(); std::fs::remove_file(&p).unwrap(); f
    /// # }
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    FdAllocator => FdAllocatorImpl, new
}

impl FdAllocator {
    /// Wrap `size` bytes of `fd`, all visible (`gst_fd_allocator_alloc`).
    /// The memory owns the fd.
    pub fn alloc(&self, fd: OwnedFd, size: usize, flags: FdMemoryFlags) -> Result<Memory> {
        self.alloc_full(fd, size, 0, size, flags)
    }

    /// Wrap `maxsize` bytes of `fd`, of which `[offset, offset + size)` are
    /// visible (`gst_fd_allocator_alloc_full`, GStreamer 1.28). The memory
    /// owns the fd.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] when `offset + size > maxsize`,
    /// [`Error::BeyondFile`] when `maxsize` is past the end of the file,
    /// [`Error::BadFd`] for `DONT_CLOSE` (which would leak an owned fd) or
    /// an fd whose size cannot be learnt.
    pub fn alloc_full(
        &self,
        fd: OwnedFd,
        maxsize: usize,
        offset: usize,
        size: usize,
        flags: FdMemoryFlags,
    ) -> Result<Memory> {
        import_owned(&self.0, fd, maxsize, offset, size, flags)
    }

    /// Wrap a duplicate of `fd`; the caller keeps its own fd, which is
    /// never closed by the memory (so `DONT_CLOSE` is implied and ignored:
    /// the duplicate belongs to the memory).
    pub fn alloc_borrowed(
        &self,
        fd: BorrowedFd<'_>,
        maxsize: usize,
        offset: usize,
        size: usize,
        flags: FdMemoryFlags,
    ) -> Result<Memory> {
        let flags = flags - FdMemoryFlags::DONT_CLOSE;
        self.alloc_full(dup_fd(fd)?, maxsize, offset, size, flags)
    }

    /// Wrap `fd` without owning it: the memory never closes it (GStreamer's
    /// `DONT_CLOSE`, which this sets).
    ///
    /// # Safety
    /// `fd` must stay open, and refer to the same file, for as long as the
    /// memory or any share of it lives.
    pub unsafe fn alloc_unowned(
        &self,
        fd: BorrowedFd<'_>,
        maxsize: usize,
        offset: usize,
        size: usize,
        flags: FdMemoryFlags,
    ) -> Result<Memory> {
        import(
            &self.0,
            FdHandle::Unowned(fd.as_raw_fd()),
            maxsize,
            offset,
            size,
            flags | FdMemoryFlags::DONT_CLOSE,
        )
    }
}

/// Duplicate `fd` with close-on-exec.
pub(crate) fn dup_fd(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| Error::BadFd {
        reason: format!("cannot duplicate fd {}: {e}", fd.as_raw_fd()),
    })
}

/// The size of the file behind `fd`: `st_size` for regular files (memfd
/// included), `lseek(SEEK_END)` otherwise (dma-bufs report their size so).
pub(crate) fn fd_size(fd: BorrowedFd<'_>) -> Result<u64> {
    let st = rustix::fs::fstat(fd).map_err(|e| Error::BadFd {
        reason: format!("fstat of fd {}: {e}", fd.as_raw_fd()),
    })?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(st.st_size as u64),
        FileType::Fifo | FileType::Socket | FileType::Directory => Err(Error::BadFd {
            reason: format!(
                "fd {} is a {:?}, which cannot be mapped",
                fd.as_raw_fd(),
                FileType::from_raw_mode(st.st_mode)
            ),
        }),
        other => rustix::fs::seek(fd, SeekFrom::End(0)).map_err(|e| Error::BadFd {
            reason: format!(
                "cannot learn the size of fd {} ({other:?}): lseek(SEEK_END): {e}",
                fd.as_raw_fd()
            ),
        }),
    }
}

/// Make fd memory of `allocator` that owns `fd`. `DONT_CLOSE` is refused:
/// with an owned fd it could only leak.
pub(crate) fn import_owned(
    allocator: &Allocator,
    fd: OwnedFd,
    maxsize: usize,
    offset: usize,
    size: usize,
    flags: FdMemoryFlags,
) -> Result<Memory> {
    check_owned(flags)?;
    import(allocator, FdHandle::Owned(fd), maxsize, offset, size, flags)
}

/// `DONT_CLOSE` is refused with an owned fd: it could only leak.
pub(crate) fn check_owned(flags: FdMemoryFlags) -> Result<()> {
    if flags.contains(FdMemoryFlags::DONT_CLOSE) {
        return Err(Error::BadFd {
            reason: "DONT_CLOSE with an owned fd would leak it; import a borrowed fd \
                     (dup) or use FdAllocator::alloc_unowned"
                .into(),
        });
    }
    Ok(())
}

/// Make fd memory of `allocator`: validate and wrap.
pub(crate) fn import(
    allocator: &Allocator,
    fd: FdHandle,
    maxsize: usize,
    offset: usize,
    size: usize,
    flags: FdMemoryFlags,
) -> Result<Memory> {
    Memory::from_parts(allocator, fd_parts(fd, maxsize, offset, size, flags)?)
}

/// Validate an fd and build the parts of fd memory (the region is checked
/// by `Memory::from_parts`).
pub(crate) fn fd_parts(
    fd: FdHandle,
    maxsize: usize,
    offset: usize,
    size: usize,
    flags: FdMemoryFlags,
) -> Result<MemoryParts> {
    let block = fd_block(fd, maxsize, flags)?;
    Ok(MemoryParts::new(Box::new(FdBackend::new(block)), maxsize).region(offset, size))
}

/// Check that `maxsize` bytes of `fd` exist and make the block.
pub(crate) fn fd_block(fd: FdHandle, maxsize: usize, flags: FdMemoryFlags) -> Result<FdBlock> {
    let file = crate::sys::file_id(fd.as_fd()).map_err(|e| Error::BadFd {
        reason: format!("fstat/fstatfs of fd {}: {e}", fd.as_fd().as_raw_fd()),
    })?;
    fd_block_of(fd, file, maxsize, flags)
}

/// [`fd_block`] for a caller that already has the file's identity (the IPC
/// receiver classified the fd): the same size check, no second `fstat`.
pub(crate) fn fd_block_of(
    fd: FdHandle,
    file: crate::sys::FileId,
    maxsize: usize,
    flags: FdMemoryFlags,
) -> Result<FdBlock> {
    // A regular file's size came with the fstat; anything else says it
    // through lseek (or is refused for what it is).
    let file_size = match file.size {
        Some(size) => size,
        None => fd_size(fd.as_fd())?,
    };
    if maxsize as u64 > file_size {
        return Err(Error::BeyondFile {
            what: "maxsize",
            requested: maxsize as u64,
            file_size,
        });
    }
    FdBlock::with_file(fd, maxsize, flags, file)
}

/// The block of fd-backed memory, shared by every kind built on fd memory
/// (fd, shm, dma-buf, huge page): the fd, the one mapping of the file
/// that every map shares, and the file's borrow rule. Each kind's backend
/// wraps one, adds what makes it that kind, and derefs to it.
pub struct FdBlock {
    fd: FdHandle,
    flags: FdMemoryFlags,
    maxsize: usize,
    /// The borrow rule shared with every other root of the same file.
    alias: BlockAlias,
    /// Mapped read-write for the block's whole life (shm): maps never reach
    /// the backend (see [`FdBlock::pin_mapped`]); the address.
    pinned: Option<PinnedPtr>,
    /// The one mapping of the file that every map shares.
    mapping: FileMapping,
    /// Made on first use ([`FdBlock::liveness`]): dropped with the block,
    /// so a weak handle tells whether the storage still exists.
    life: std::sync::OnceLock<std::sync::Arc<()>>,
}

impl fmt::Debug for FdBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdBlock")
            .field("fd", &self.fd.as_fd().as_raw_fd())
            .field("flags", &self.flags)
            .field("maxsize", &self.maxsize)
            .field("mapping", &self.mapping)
            .finish()
    }
}

impl FdBlock {
    /// The block of a memfd mediamem just made on `fs`: one `fstat` for
    /// its identity, no `fstatfs`.
    pub(crate) fn new_own(
        fd: FdHandle,
        maxsize: usize,
        flags: FdMemoryFlags,
        fs: FsKind,
    ) -> Result<FdBlock> {
        let st = rustix::fs::fstat(fd.as_fd()).map_err(|e| Error::os("fstat", e))?;
        #[allow(clippy::unnecessary_cast)] // the stat field types vary by target
        let file = crate::sys::FileId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            fs,
            blksize: st.st_blksize as u64,
            size: Some(st.st_size as u64),
        };
        Self::with_file(fd, maxsize, flags, file)
    }

    /// The block of a file known to hold at least `maxsize` bytes (checked
    /// by [`fd_block`], or made so by mediamem itself and sealed).
    fn with_file(
        fd: FdHandle,
        maxsize: usize,
        flags: FdMemoryFlags,
        file: crate::sys::FileId,
    ) -> Result<FdBlock> {
        let keep = flags.contains(FdMemoryFlags::KEEP_MAPPED);
        let mapping = FileMapping::new(MapOptions {
            len: maxsize,
            private: flags.contains(FdMemoryFlags::MAP_PRIVATE),
            keep,
            upgrade: if keep {
                Upgrade::WhenIdle
            } else {
                Upgrade::Never
            },
            // hugetlbfs maps and unmaps in whole huge pages (`munmap` of a
            // length that is not a multiple fails with EINVAL); its files
            // are always a multiple long, so the rounded mapping stays
            // inside.
            huge_page: (file.fs == FsKind::Hugetlb && file.blksize > 0)
                .then_some(file.blksize as usize),
            guard_sigbus: flags.contains(FdMemoryFlags::GUARD_SIGBUS),
        })
        .map_err(|_| Error::SizeOverflow {
            what: "maxsize rounded to the huge page size",
        })?;
        let alias = BlockAlias::for_key((file.dev, file.ino));
        Ok(FdBlock {
            fd,
            flags,
            maxsize,
            alias,
            pinned: None,
            mapping,
            life: std::sync::OnceLock::new(),
        })
    }

    /// The fd (still owned by the memory).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The fd-memory flags.
    pub fn flags(&self) -> FdMemoryFlags {
        self.flags
    }

    /// Size of the block.
    pub(crate) fn maxsize(&self) -> usize {
        self.maxsize
    }

    /// Whether the block is mapped into this process right now.
    pub fn is_mapped(&self) -> bool {
        self.mapping.addr().is_some()
    }

    /// Maps held through the backend right now. A block mapped for its
    /// whole life (shm memory) is never mapped through the backend again,
    /// and reads 0 here.
    pub fn map_count(&self) -> usize {
        self.mapping.count()
    }

    /// Map the block read-write now and keep it mapped until the backend
    /// drops, so every later map of the memory is the bare lock word (no
    /// backend call, no mutex). For memory this process made and owns
    /// outright (shm, huge pages), made with `KEEP_MAPPED`; never for
    /// dma-bufs, whose maps must be bracketed by syncs.
    pub(crate) fn pin_mapped(&mut self, mem_type: &str) -> Result<NonNull<u8>> {
        if let Some(base) = self.pinned {
            return Ok(base.get());
        }
        debug_assert!(
            self.mapping.options().keep,
            "pinned blocks are made with KEEP_MAPPED"
        );
        let base = self
            .mapping
            .pin(self.fd.as_fd())
            .map_err(|f| self.map_failed(mem_type, f))?;
        self.pinned = Some(base);
        Ok(base.get())
    }

    /// Lock the kept mapping's pages in RAM (phys memory, whose frames must
    /// not move); the block must be mapped and kept.
    pub(crate) fn lock_in_ram(&self) -> Result<usize> {
        self.mapping
            .lock_in_ram()
            .map_err(|e| Error::NotAvailable {
                what: "locking contiguous memory in RAM".into(),
                reason: format!("mlock: {e} (RLIMIT_MEMLOCK?)"),
            })?;
        self.mapping
            .addr()
            .map(|p| p.as_ptr() as usize)
            .ok_or(Error::NotAvailable {
                what: "locking contiguous memory in RAM".into(),
                reason: "the block is not mapped".into(),
            })
    }

    /// The address of the mapping kept for the block's whole life.
    pub(crate) fn static_ptr(&self) -> Option<NonNull<u8>> {
        self.pinned.map(PinnedPtr::get)
    }

    /// A weak handle that stops upgrading when this block (its storage,
    /// whatever roots were made over it) is dropped: the IPC sender's
    /// registered buffers follow their block's life with it. Its pointer
    /// identifies the block while the handle is held.
    pub(crate) fn liveness(&self) -> std::sync::Weak<()> {
        std::sync::Arc::downgrade(self.life.get_or_init(|| std::sync::Arc::new(())))
    }

    /// The borrow rule of the file.
    pub(crate) fn alias(&self) -> &BlockAlias {
        &self.alias
    }

    fn map_failed(&self, mem_type: &str, failure: MapFailure) -> Error {
        match failure {
            MapFailure::Truncated => Error::Truncated {
                mem_type: mem_type.into(),
            },
            failure => Error::MapFailed {
                mem_type: mem_type.into(),
                reason: format!("{failure} (fd {})", self.fd().as_raw_fd()),
                errno: failure.errno(),
            },
        }
    }

    /// Take a map of the whole block for `flags`.
    pub(crate) fn map(&self, mem_type: &str, flags: MapFlags) -> Result<NonNull<u8>> {
        self.mapping
            .map(self.fd(), 0, prot_for(flags))
            .map_err(|f| self.map_failed(mem_type, f))
    }

    /// Give back a map.
    pub(crate) fn unmap(&self) {
        if let Err(e) = self.mapping.unmap() {
            log::warn!("munmap of fd memory failed: {e}");
        }
    }
}

/// The `MemoryBackend` methods every backend over an [`FdBlock`] (a field
/// `block`) shares: spans of adjacent regions, the file's borrow rule, the
/// fd.
macro_rules! fd_block_backend {
    () => {
        fn is_span(&self, first: (usize, usize), second: (usize, usize)) -> bool {
            $crate::memory::regions_adjacent(first, second)
        }

        fn alias(&self) -> Option<&$crate::memory::BlockAlias> {
            Some(self.block.alias())
        }

        fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            Some(self.block.fd())
        }
    };
}
pub(crate) use fd_block_backend;

/// The backend of fd memory (imports, shm); reach it with
/// [`Memory::backend`].
#[derive(Debug)]
pub struct FdBackend {
    block: FdBlock,
}

impl FdBackend {
    /// fd memory over `block`.
    pub(crate) fn new(block: FdBlock) -> Self {
        FdBackend { block }
    }

    /// The fd (still owned by the memory). The block's other accessors
    /// are reached through `Deref` ([`FdBlock`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.block.fd()
    }
}

impl std::ops::Deref for FdBackend {
    type Target = FdBlock;
    fn deref(&self) -> &FdBlock {
        &self.block
    }
}

fn prot_for(flags: MapFlags) -> ProtFlags {
    if flags.contains(MapFlags::WRITE) {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    }
}

// SAFETY: `map` returns the start of the block's live mapping
// (`FileMapping`) of `maxsize` bytes of the file (checked at import to be
// inside the file, and file-backed pages are initialised), readable, and
// writable when WRITE was asked; it stays mapped until the matching unmap
// (or, kept, until drop). `static_ptr` is a mapping kept read-write until
// drop.
unsafe impl MemoryBackend for FdBackend {
    fn static_ptr(&self) -> Option<NonNull<u8>> {
        self.block.static_ptr()
    }

    fn map(&self, maxsize: usize, flags: MapFlags) -> Result<NonNull<u8>> {
        debug_assert!(maxsize <= self.block.maxsize());
        self.block.map(ALLOCATOR_FD, flags)
    }

    fn unmap(&self, _flags: MapFlags) {
        self.block.unmap();
    }

    fd_block_backend!();

    fn kind(&self) -> MemoryKind {
        MemoryKind::Fd
    }
}

/// Whether `mem` is backed by an fd that [`fd_memory_get_fd`] returns
/// (`gst_is_fd_memory`): fd memory and the kinds built on it.
pub fn is_fd_memory(mem: &Memory) -> bool {
    fd_memory_get_fd(mem).is_some()
}

/// The fd of `mem`, still owned by the memory (`gst_fd_memory_get_fd`);
/// `None` when it is not fd memory. Dup it ([`Memory::try_clone_fd`]) to keep
/// it beyond the memory's life.
pub fn fd_memory_get_fd(mem: &Memory) -> Option<BorrowedFd<'_>> {
    mem.root_backend().fd()
}

impl Memory {
    /// The fd behind this memory, if it is fd-backed (shares give their
    /// root's fd).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        fd_memory_get_fd(self)
    }

    /// A duplicate of the fd behind this memory, owned by the caller.
    ///
    /// # Errors
    /// [`Error::WrongKind`] when the memory is not fd-backed,
    /// [`Error::BadFd`] when the dup fails.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        let fd = self.fd().ok_or_else(|| Error::WrongKind {
            expected: "fd-backed",
            found: self.allocator().mem_type().to_owned(),
        })?;
        dup_fd(fd)
    }
}
