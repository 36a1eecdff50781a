//! Physically contiguous memory: the [`PhysMemoryAllocator`] trait
//! (GStreamer's `GstPhysMemoryAllocator` interface), the seed functions
//! [`is_phys_memory`] and [`phys_memory_get_phys_addr`], and two real
//! implementations, which GStreamer does not ship:
//!
//! * [`HugePageAllocator`]: one huge page (2 MiB on x86-64) per memory from
//!   an `MFD_HUGETLB` memfd, so the memory is also fd memory that other
//!   processes can map; locked in memory; its address resolved from
//!   `/proc/self/pagemap`, as DPDK resolves IOVAs.
//! * [`CmaHeapAllocator`]: the CMA dma-heap (`linux,cma`, or `reserved` when
//!   the area comes from `cma=` on the kernel command line), when the kernel
//!   has one; the address is resolved the same way from a mapping.
//!
//! Addresses are never guessed: a block whose pages are not consecutive is
//! [`Error::NotContiguous`], and a process that may not read page frame
//! numbers (they read as 0 without `CAP_SYS_ADMIN`) gets
//! [`Error::NotAvailable`], never a 0 presented as an address.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, OFlags};

use crate::allocator::{AllocationParams, Allocator, AllocatorCaps, AllocatorFlags, AllocatorImpl};
use crate::dmabuf::DmaBufBackend;
use crate::error::{Error, Result};
use crate::fd::{fd_block, FdBackend, FdHandle, FdMemoryFlags};
use crate::memory::{
    BlockAlias, MapFlags, Memory, MemoryBackend, MemoryFlags, MemoryKind, MemoryParts,
    DEFAULT_ALIGN_MASK,
};

pub use crate::memory::allocator::PhysMemoryAllocator;

/// Whether `mem` comes from a physical-memory allocator
/// (`gst_is_phys_memory`).
pub fn is_phys_memory(mem: &Memory) -> bool {
    mem.allocator().as_phys_impl().is_some()
}

/// The physical address of the first visible byte of `mem`
/// (`gst_phys_memory_get_phys_addr`): the block's address plus the memory's
/// offset, so a share's address is its root's block address plus the
/// share's offset. `None` (GStreamer's 0) when unknown.
pub fn phys_memory_get_phys_addr(mem: &Memory) -> Option<u64> {
    let phys = mem.allocator().as_phys_impl()?;
    let block = phys.block_phys_addr(mem.root())?;
    block.checked_add(mem.offset() as u64)
}

impl Allocator {
    fn as_phys_impl(&self) -> Option<&dyn PhysMemoryAllocator> {
        self.inner().as_phys()
    }
}

/// The page size and huge page size of this machine.
fn page_size() -> usize {
    rustix::param::page_size()
}

/// The default huge page size from `/proc/meminfo` (`Hugepagesize`).
pub fn huge_page_size() -> Option<usize> {
    meminfo_kib("Hugepagesize:").map(|k| k * 1024)
}

/// Huge pages free right now (`HugePages_Free`).
pub fn free_huge_pages() -> Option<usize> {
    meminfo_kib("HugePages_Free:")
}

fn meminfo_kib(key: &str) -> Option<usize> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The most bytes of address space [`page_frames`] resolves in one call
/// (16 GiB: 32 MiB of pagemap entries with 4 KiB pages).
pub const MAX_RESOLVE: usize = 16 << 30;

/// The page frame numbers of the `len` bytes mapped at `addr`, from
/// `/proc/self/pagemap`; the pages must be resident (touch them first).
///
/// # Errors
/// [`Error::SizeOverflow`] when `addr + len` overflows,
/// [`Error::TooLarge`] when `len` exceeds [`MAX_RESOLVE`],
/// [`Error::NotAvailable`] when pagemap cannot be read, a page is not
/// resident, or frame numbers are hidden from this process.
pub fn page_frames(addr: usize, len: usize) -> Result<Vec<u64>> {
    let page = page_size();
    let end = addr.checked_add(len).ok_or(Error::SizeOverflow {
        what: "address + length of the range to resolve",
    })?;
    if len > MAX_RESOLVE {
        return Err(Error::TooLarge {
            what: "range resolved through /proc/self/pagemap",
            requested: len,
            limit: MAX_RESOLVE,
        });
    }
    let first = addr / page;
    // At most MAX_RESOLVE / page + 1 entries of 8 bytes: no overflow.
    let count = end.div_ceil(page) - first;
    let start = u64::try_from(first)
        .ok()
        .and_then(|f| f.checked_mul(8))
        .ok_or(Error::SizeOverflow {
            what: "pagemap offset",
        })?;
    let pagemap = rustix::fs::open(
        "/proc/self/pagemap",
        OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::NotAvailable {
        what: "/proc/self/pagemap".into(),
        reason: e.to_string(),
    })?;
    let mut raw = vec![0u8; count * 8];
    let mut done = 0;
    while done < raw.len() {
        let n = rustix::io::pread(&pagemap, &mut raw[done..], start + done as u64)
            .map_err(|e| Error::os("pread(/proc/self/pagemap)", e))?;
        if n == 0 {
            return Err(Error::NotAvailable {
                what: "/proc/self/pagemap".into(),
                reason: "short read".into(),
            });
        }
        done += n;
    }
    raw.chunks_exact(8)
        .enumerate()
        .map(|(i, c)| {
            let entry = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            let present = entry >> 63 & 1 == 1;
            let pfn = entry & ((1 << 55) - 1);
            if !present {
                return Err(Error::NotAvailable {
                    what: "physical address".into(),
                    reason: format!("page {i} of the block is not resident"),
                });
            }
            if pfn == 0 {
                return Err(Error::NotAvailable {
                    what: "physical address".into(),
                    reason: "this process may not read page frame numbers from \
                             /proc/self/pagemap (they read as 0 without CAP_SYS_ADMIN)"
                        .into(),
                });
            }
            Ok(pfn)
        })
        .collect()
}

/// The physical address of `len` bytes mapped at `addr`, if every page is
/// resident and the frames are consecutive.
pub fn contiguous_phys_addr(addr: usize, len: usize) -> Result<u64> {
    let frames = page_frames(addr, len)?;
    let first = *frames.first().ok_or(Error::SizeOverflow {
        what: "empty range has no address",
    })?;
    for (i, &pfn) in frames.iter().enumerate() {
        let expected = first + i as u64;
        if pfn != expected {
            return Err(Error::NotContiguous {
                page: i,
                pfn,
                expected,
            });
        }
    }
    first
        .checked_mul(page_size() as u64)
        .and_then(|a| a.checked_add((addr % page_size()) as u64))
        .ok_or(Error::SizeOverflow {
            what: "physical address from a page frame number",
        })
}

/// Map a fresh fd backend read-write (kept mapped), lock it, touch every
/// page, and record its physical address.
/// The backend of physically contiguous memory: the backend of its kind
/// (fd memory for huge pages, dma-buf memory for CMA) and the physical
/// address of its first byte, resolved when it was made. Everything else
/// is the inner backend's.
#[derive(Debug)]
pub struct PhysBackend<B> {
    inner: B,
    phys: u64,
}

/// The backend of [`HugePageAllocator`] memory.
pub type HugePageBackend = PhysBackend<FdBackend>;
/// The backend of [`CmaHeapAllocator`] memory.
pub type CmaBackend = PhysBackend<DmaBufBackend>;

impl<B> PhysBackend<B> {
    /// The physical address of the block's first byte.
    pub fn phys_addr(&self) -> u64 {
        self.phys
    }

    /// The backend of the memory's kind.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

// SAFETY: every pointer comes from the inner backend, whose promises hold
// unchanged; this only adds an address.
unsafe impl<B: MemoryBackend> MemoryBackend for PhysBackend<B> {
    fn map(&self, maxsize: usize, flags: MapFlags) -> Result<NonNull<u8>> {
        self.inner.map(maxsize, flags)
    }
    fn static_ptr(&self) -> Option<NonNull<u8>> {
        self.inner.static_ptr()
    }
    fn unmap(&self, flags: MapFlags) {
        self.inner.unmap(flags)
    }
    fn can_share(&self) -> bool {
        self.inner.can_share()
    }
    fn is_span(&self, first: (usize, usize), second: (usize, usize)) -> bool {
        self.inner.is_span(first, second)
    }
    fn alias(&self) -> Option<&BlockAlias> {
        self.inner.alias()
    }
    fn kind(&self) -> MemoryKind {
        self.inner.kind()
    }
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.fd()
    }
    fn copy(&self, memory: &Memory, offset: usize, size: usize) -> Option<Result<Memory>> {
        self.inner.copy(memory, offset, size)
    }
}

/// Resolve the physical address of a block locked in RAM at `addr`.
fn resolved<B>(inner: B, addr: usize, maxsize: usize) -> Result<PhysBackend<B>> {
    let phys = contiguous_phys_addr(addr, maxsize)?;
    Ok(PhysBackend { inner, phys })
}

/// Name of the huge page allocator.
pub const ALLOCATOR_HUGEPAGE: &str = "hugepage";

/// The huge page allocator implementation: memory type `"hugepage"`,
/// `NO_COPY` (copies go to system memory, not to another scarce huge page).
#[derive(Debug)]
pub(crate) struct HugePageAllocatorImpl {
    huge_page: usize,
}

impl HugePageAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps = AllocatorCaps::PLAIN_ALLOC
        .union(AllocatorCaps::FD_BACKED)
        .union(AllocatorCaps::CONTIGUOUS);
}

impl AllocatorImpl for HugePageAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        ALLOCATOR_HUGEPAGE
    }

    fn flags(&self) -> AllocatorFlags {
        AllocatorFlags::NO_COPY
    }

    fn as_phys(&self) -> Option<&dyn PhysMemoryAllocator> {
        Some(self)
    }

    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let align = params.align | DEFAULT_ALIGN_MASK;
        // `align` is a valid mask (checked by `Allocator::alloc`); a huge
        // page is aligned to its own size and no more.
        if align >= self.huge_page {
            return Err(Error::TooLarge {
                what: "alignment of memory from one huge page",
                requested: align.saturating_add(1),
                limit: self.huge_page,
            });
        }
        let needed = size
            .checked_add(params.prefix)
            .and_then(|n| n.checked_add(params.padding))
            .ok_or(Error::SizeOverflow {
                what: "size + prefix + padding",
            })?;
        if needed > self.huge_page {
            return Err(Error::TooLarge {
                what: "physically contiguous memory from one huge page",
                requested: needed,
                limit: self.huge_page,
            });
        }
        if free_huge_pages() == Some(0) {
            return Err(no_huge_pages(rustix::io::Errno::NOMEM));
        }
        let memfd = rustix::fs::memfd_create(
            "mediamem-hugepage",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB,
        )
        .map_err(|e| Error::NotAvailable {
            what: "hugetlb memfd".into(),
            reason: format!("memfd_create(MFD_HUGETLB): {e}"),
        })?;
        rustix::fs::ftruncate(&memfd, self.huge_page as u64).map_err(|e| match e {
            e @ (rustix::io::Errno::NOMEM | rustix::io::Errno::NOSPC) => no_huge_pages(e),
            e => Error::os("ftruncate(hugetlb memfd)", e),
        })?;
        let _ = rustix::fs::fcntl_add_seals(
            &memfd,
            rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
        );
        let mut block = fd_block(
            FdHandle::Owned(memfd),
            self.huge_page,
            FdMemoryFlags::KEEP_MAPPED,
        )?;
        // Ours alone: mapped read-write for good, like shm, then locked.
        block
            .pin_mapped(ALLOCATOR_HUGEPAGE)
            .map_err(out_of_huge_pages)?;
        let addr = block.lock_in_ram()?;
        let backend = resolved(FdBackend::new(block), addr, self.huge_page)?;
        // As shm: once our mapping exists, nobody else may write the file,
        // map it writable or punch a hole in it (a punched huge page
        // refaults with SIGBUS when the pool is empty).
        match rustix::fs::fcntl_add_seals(backend.inner().fd(), rustix::fs::SealFlags::FUTURE_WRITE)
        {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(Error::os("fcntl(F_ADD_SEALS, F_SEAL_FUTURE_WRITE)", e)),
        }
        Ok(MemoryParts::new(Box::new(backend), self.huge_page)
            .flags(params.flags | MemoryFlags::PHYSICALLY_CONTIGUOUS)
            .align(align)
            .region(params.prefix, size))
    }
}

/// A mapping of a hugetlb memfd that fails with ENOMEM means no huge page
/// was left to back it (another process took the last one since the
/// count was read): the same error as an empty pool. Told by the errno,
/// never by the message.
fn out_of_huge_pages(e: Error) -> Error {
    match e {
        Error::MapFailed {
            errno: Some(rustix::io::Errno::NOMEM),
            ..
        } => no_huge_pages(rustix::io::Errno::NOMEM),
        e => e,
    }
}

fn no_huge_pages(errno: rustix::io::Errno) -> Error {
    Error::Exhausted {
        what: "huge pages".into(),
        hint: "none free: reserve some with `echo N > /proc/sys/vm/nr_hugepages` (as root)".into(),
        errno,
    }
}

impl PhysMemoryAllocator for HugePageAllocatorImpl {
    fn block_phys_addr(&self, mem: &Memory) -> Option<u64> {
        mem.backend::<HugePageBackend>().map(PhysBackend::phys_addr)
    }
}

crate::allocator::allocator_handle! {
    /// Physically contiguous memory from huge pages.
    ///
    /// ```no_run
    /// use mediamem::phys::{phys_memory_get_phys_addr, HugePageAllocator};
    /// let huge = HugePageAllocator::new()?;
    /// let mem = huge.alloc(1 << 20, None)?;
    /// let addr = phys_memory_get_phys_addr(&mem).expect("resolved at allocation");
    /// assert!(mediamem::is_fd_memory(&mem)); // shareable with other processes
    /// # let _ = addr;
    /// # Ok::<(), mediamem::Error>(())
    /// ```
    HugePageAllocator => HugePageAllocatorImpl
}

impl HugePageAllocator {
    /// A huge page allocator for this machine's default huge page size.
    ///
    /// # Errors
    /// [`Error::NotAvailable`] when the kernel has no hugetlb support.
    pub fn new() -> Result<Self> {
        let huge_page = huge_page_size().ok_or_else(|| Error::NotAvailable {
            what: "huge pages".into(),
            reason: "the kernel reports no Hugepagesize (no hugetlbfs)".into(),
        })?;
        Ok(HugePageAllocator(Allocator::new(HugePageAllocatorImpl {
            huge_page,
        })))
    }

    /// The allocator registered as `"hugepage"` (on first use).
    pub fn get() -> Result<Allocator> {
        if let Some(a) = Allocator::find(Some(ALLOCATOR_HUGEPAGE)) {
            return Ok(a);
        }
        let a = HugePageAllocator::new()?;
        Ok(Allocator::register_once(ALLOCATOR_HUGEPAGE, || a.0))
    }

    /// The largest memory it can make (one huge page).
    pub fn max_size(&self) -> usize {
        self.imp().huge_page
    }
}

/// The CMA heap names, in the order they are tried (libcamera's order).
pub const CMA_HEAPS: &[&str] = &["linux,cma", "reserved"];

/// Memory type of CMA heap memory.
pub const CMA_MEMORY_TYPE: &str = "cma";

/// The CMA heap allocator implementation.
#[derive(Debug)]
pub(crate) struct CmaHeapAllocatorImpl {
    name: String,
    device: OwnedFd,
}

impl CmaHeapAllocatorImpl {
    /// What this kind can do.
    pub(crate) const CAPS: AllocatorCaps = AllocatorCaps::PLAIN_ALLOC
        .union(AllocatorCaps::FD_BACKED)
        .union(AllocatorCaps::DMABUF)
        .union(AllocatorCaps::CONTIGUOUS);
}

impl AllocatorImpl for CmaHeapAllocatorImpl {
    fn caps(&self) -> AllocatorCaps {
        Self::CAPS
    }

    fn mem_type(&self) -> &str {
        CMA_MEMORY_TYPE
    }

    fn as_phys(&self) -> Option<&dyn PhysMemoryAllocator> {
        Some(self)
    }

    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let maxsize = crate::kind::page_rounded_maxsize(size, params)?;
        let fd = crate::heap::heap_alloc_fd(self.device.as_fd(), maxsize)?;
        let block = fd_block(FdHandle::Owned(fd), maxsize, FdMemoryFlags::KEEP_MAPPED)?;
        let mut dmabuf = DmaBufBackend::new(block);
        let addr = dmabuf.lock_in_ram()?;
        let backend = resolved(dmabuf, addr, maxsize)?;
        Ok(MemoryParts::new(Box::new(backend), maxsize)
            .flags(params.flags | MemoryFlags::PHYSICALLY_CONTIGUOUS)
            .align(params.align)
            .region(params.prefix, size))
    }
}

impl PhysMemoryAllocator for CmaHeapAllocatorImpl {
    fn block_phys_addr(&self, mem: &Memory) -> Option<u64> {
        mem.backend::<CmaBackend>().map(PhysBackend::phys_addr)
    }
}

crate::allocator::allocator_handle! {
    /// Physically contiguous dma-bufs from the CMA heap.
    CmaHeapAllocator => CmaHeapAllocatorImpl
}

impl CmaHeapAllocator {
    /// Open the first CMA heap present ([`CMA_HEAPS`]).
    ///
    /// # Errors
    /// [`Error::NotAvailable`] naming the heaps tried and the heaps present.
    pub fn new() -> Result<Self> {
        let mut tried = Vec::new();
        for name in CMA_HEAPS {
            let path = format!("{}/{name}", crate::heap::DMA_HEAP_DIR);
            match crate::kind::open_device(&path, "CMA heap") {
                Ok(device) => {
                    return Ok(CmaHeapAllocator(Allocator::new(CmaHeapAllocatorImpl {
                        name: (*name).to_owned(),
                        device,
                    })))
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        let present = crate::heap::list_heaps();
        Err(Error::NotAvailable {
            what: "a CMA dma-heap".into(),
            reason: format!(
                "tried {}; heaps here: {}",
                tried.join("; "),
                if present.is_empty() {
                    "none".into()
                } else {
                    present.join(", ")
                }
            ),
        })
    }

    /// The heap's name (`linux,cma` or `reserved`).
    pub fn name(&self) -> &str {
        &self.imp().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enomem_is_told_by_errno_not_by_message() {
        let nomem = Error::MapFailed {
            mem_type: "fd".into(),
            reason: "mmap of fd 3: something".into(),
            errno: Some(rustix::io::Errno::NOMEM),
        };
        assert!(matches!(
            out_of_huge_pages(nomem),
            Error::Exhausted { ref what, errno: rustix::io::Errno::NOMEM, .. } if what == "huge pages"
        ));
        // The message alone (another locale, another backend's wording)
        // decides nothing.
        let text_only = Error::MapFailed {
            mem_type: "fd".into(),
            reason: "Cannot allocate memory".into(),
            errno: None,
        };
        assert!(matches!(
            out_of_huge_pages(text_only),
            Error::MapFailed { errno: None, .. }
        ));
        let other = Error::MapFailed {
            mem_type: "fd".into(),
            reason: "mmap".into(),
            errno: Some(rustix::io::Errno::ACCESS),
        };
        assert!(matches!(out_of_huge_pages(other), Error::MapFailed { .. }));
    }
}
