//! What kind of file an fd is: the filesystem behind it (`fstatfs`), which
//! tells a real dma-buf from a memfd, a hugetlbfs file or anything else.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::io::Errno;

/// `DMA_BUF_MAGIC` (linux/magic.h): the dma-buf pseudo filesystem.
pub(crate) const DMA_BUF_MAGIC: i64 = 0x444d_4142;
/// `TMPFS_MAGIC`: shmem, where ordinary memfds live.
pub(crate) const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `HUGETLBFS_MAGIC`: hugetlbfs, where `MFD_HUGETLB` memfds live.
pub(crate) const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The filesystem an fd's file lives on, as far as mediamem cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsKind {
    /// A real dma-buf (the dma-buf filesystem).
    DmaBuf,
    /// shmem (memfd, `/dev/shm`, tmpfs).
    Shmem,
    /// hugetlbfs; the huge page size is `st_blksize`.
    Hugetlb,
    /// Anything else (a regular file on disk, a device node, ...).
    Other,
}

/// Identity and filesystem of the file behind an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    /// `st_dev`.
    pub(crate) dev: u64,
    /// `st_ino`.
    pub(crate) ino: u64,
    /// The filesystem.
    pub(crate) fs: FsKind,
    /// `st_blksize` (the huge page size on hugetlbfs).
    pub(crate) blksize: u64,
    /// `st_size` of a regular file (memfds included); `None` for anything
    /// else, whose size `lseek(SEEK_END)` tells (dma-bufs).
    pub(crate) size: Option<u64>,
}

/// The identity and filesystem of `fd`'s file.
pub(crate) fn file_id(fd: BorrowedFd<'_>) -> Result<FileId, Errno> {
    let st = rustix::fs::fstat(fd)?;
    let sfs = rustix::fs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)] // f_type's type differs by platform
    let fs = match sfs.f_type as i64 & 0xffff_ffff {
        DMA_BUF_MAGIC => FsKind::DmaBuf,
        TMPFS_MAGIC => FsKind::Shmem,
        HUGETLBFS_MAGIC => FsKind::Hugetlb,
        _ => FsKind::Other,
    };
    #[allow(clippy::unnecessary_cast)]
    Ok(FileId {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        fs,
        blksize: st.st_blksize as u64,
        size: rustix::fs::FileType::from_raw_mode(st.st_mode)
            .is_file()
            .then_some(st.st_size as u64),
    })
}

/// How a memory holds its fd.
#[derive(Debug)]
pub(crate) enum FdHandle {
    /// Closed when the memory goes.
    Owned(OwnedFd),
    /// Never closed (`DONT_CLOSE`); the creator promised it stays open
    /// (`FdAllocator::alloc_unowned`'s contract).
    Unowned(RawFd),
}

impl FdHandle {
    /// The fd.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            FdHandle::Owned(fd) => fd.as_fd(),
            // SAFETY: `alloc_unowned`'s contract: the fd stays open while the
            // memory (and so this handle) lives.
            FdHandle::Unowned(raw) => unsafe { BorrowedFd::borrow_raw(*raw) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn magic_numbers_match_linux_magic_h() {
        // linux/magic.h
        assert_eq!(DMA_BUF_MAGIC, 0x444d4142);
        assert_eq!(TMPFS_MAGIC, 0x01021994);
        assert_eq!(HUGETLBFS_MAGIC, 0x958458f6);
    }

    #[test]
    fn a_memfd_is_shmem_and_a_binary_is_not() {
        let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let id = file_id(memfd.as_fd()).unwrap();
        assert_eq!(id.fs, FsKind::Shmem);
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let other = file_id(exe.as_fd()).unwrap();
        assert_ne!(other.fs, FsKind::DmaBuf);
        assert_ne!((id.dev, id.ino), (other.dev, other.ino));
    }
}
