//! Explicit sync (linux/sync_file.h, the fence ioctls of linux/dma-buf.h):
//! sync_file merge and info, export and import of a dma-buf's fences, and
//! bounded waits with `poll`.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Setter};

use super::{ioctl_rw, retry};

/// `struct sync_merge_data`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct SyncMergeData {
    pub(crate) name: [u8; 32],
    pub(crate) fd2: i32,
    pub(crate) fence: i32,
    pub(crate) flags: u32,
    pub(crate) pad: u32,
}

/// `struct sync_fence_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncFenceInfo {
    pub(crate) obj_name: [u8; 32],
    pub(crate) driver_name: [u8; 32],
    pub(crate) status: i32,
    pub(crate) flags: u32,
    pub(crate) timestamp_ns: u64,
}

/// `struct sync_file_info`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct SyncFileInfo {
    pub(crate) name: [u8; 32],
    pub(crate) status: i32,
    pub(crate) flags: u32,
    pub(crate) num_fences: u32,
    pub(crate) pad: u32,
    pub(crate) sync_fence_info: u64,
}

/// `struct dma_buf_export_sync_file` (also `dma_buf_import_sync_file`,
/// which has the same fields).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct DmaBufSyncFile {
    pub(crate) flags: u32,
    pub(crate) fd: i32,
}

/// `SYNC_IOC_MERGE = _IOWR('>', 3, struct sync_merge_data)`.
pub(crate) const SYNC_IOC_MERGE: Opcode = opcode::read_write::<SyncMergeData>(b'>', 3);
/// `SYNC_IOC_FILE_INFO = _IOWR('>', 4, struct sync_file_info)`.
pub(crate) const SYNC_IOC_FILE_INFO: Opcode = opcode::read_write::<SyncFileInfo>(b'>', 4);
/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE = _IOWR('b', 2, struct dma_buf_export_sync_file)`.
pub(crate) const DMA_BUF_IOCTL_EXPORT_SYNC_FILE: Opcode =
    opcode::read_write::<DmaBufSyncFile>(b'b', 2);
/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE = _IOW('b', 3, struct dma_buf_import_sync_file)`.
pub(crate) const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: Opcode = opcode::write::<DmaBufSyncFile>(b'b', 3);

/// `ANON_INODE_FS_MAGIC` (linux/magic.h): where sync_files live.
const ANON_INODE_FS_MAGIC: i64 = 0x0904_1934;

/// A fence's state as the kernel reports it.
pub(crate) struct FenceInfoRaw {
    pub(crate) obj_name: String,
    pub(crate) driver_name: String,
    pub(crate) status: i32,
    pub(crate) timestamp_ns: u64,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `SYNC_IOC_FILE_INFO` without the fences: the file's name, status and
/// fence count. ENOTTY (or EINVAL) on anything that is not a sync_file.
pub(crate) fn sync_file_status(fd: BorrowedFd<'_>) -> Result<(String, i32, u32), Errno> {
    let mut info = SyncFileInfo::default();
    // SAFETY: SYNC_IOC_FILE_INFO takes a sync_file_info; with num_fences 0
    // the kernel writes no fence array (the pointer is 0 and unused).
    unsafe { ioctl_rw::<SYNC_IOC_FILE_INFO, _>(fd, &mut info)? };
    Ok((c_string(&info.name), info.status, info.num_fences))
}

/// `SYNC_IOC_FILE_INFO` with every fence: the file's name and status and
/// each fence's names, status and timestamp.
/// Most fences [`sync_file_info`] reads from one sync_file: 64 Ki (5.5
/// MiB of `sync_fence_info`). A peer can build a sync_file of very many
/// fences (merges of merges); their descriptions are refused past this
/// (`E2BIG`) rather than allocated.
pub(crate) const MAX_FENCE_INFO: u32 = 1 << 16;

/// A buffer of `n` `sync_fence_info`: `E2BIG` past [`MAX_FENCE_INFO`],
/// `ENOMEM` when the allocation fails, never an abort.
fn fence_buffer<T: Copy>(n: u32, empty: T) -> Result<Vec<T>, Errno> {
    if n > MAX_FENCE_INFO {
        return Err(Errno::TOOBIG);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n as usize).map_err(|_| Errno::NOMEM)?;
    v.resize(n as usize, empty);
    Ok(v)
}

pub(crate) fn sync_file_info(
    fd: BorrowedFd<'_>,
) -> Result<(String, i32, Vec<FenceInfoRaw>), Errno> {
    // The fence count can grow between the calls only if the file is
    // replaced, which a sync_file never is; a bounded retry all the same.
    for _ in 0..4 {
        let (_, _, n) = sync_file_status(fd)?;
        let empty = SyncFenceInfo {
            obj_name: [0; 32],
            driver_name: [0; 32],
            status: 0,
            flags: 0,
            timestamp_ns: 0,
        };
        let mut fences = fence_buffer(n, empty)?;
        let mut info = SyncFileInfo {
            num_fences: n,
            sync_fence_info: fences.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: the kernel writes at most `num_fences` sync_fence_info
        // structs at `sync_fence_info`, which points at a vector of that
        // many, alive for the call (it fails with EINVAL if it has more).
        match unsafe { ioctl_rw::<SYNC_IOC_FILE_INFO, _>(fd, &mut info) } {
            Err(Errno::INVAL) => continue,
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        fences.truncate(info.num_fences.min(n) as usize);
        let fences = fences
            .iter()
            .map(|f| FenceInfoRaw {
                obj_name: c_string(&f.obj_name),
                driver_name: c_string(&f.driver_name),
                status: f.status,
                timestamp_ns: f.timestamp_ns,
            })
            .collect();
        return Ok((c_string(&info.name), info.status, fences));
    }
    Err(Errno::AGAIN)
}

/// Whether `fd` is a sync_file: an anonymous inode that answers
/// `SYNC_IOC_FILE_INFO`. No ioctl is issued on any other file (a device
/// node a peer sent could mean something else by the request number).
pub(crate) fn is_sync_file(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let sfs = rustix::fs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)] // f_type's type differs by platform
    if sfs.f_type as i64 & 0xffff_ffff != ANON_INODE_FS_MAGIC {
        return Ok(false);
    }
    Ok(sync_file_status(fd).is_ok())
}

/// `SYNC_IOC_MERGE`: a new sync_file named `name` that signals when both
/// `a` and `b` have.
pub(crate) fn sync_merge(
    a: BorrowedFd<'_>,
    b: BorrowedFd<'_>,
    name: &str,
) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    let mut data = SyncMergeData {
        fd2: b.as_raw_fd(),
        fence: -1,
        ..Default::default()
    };
    let n = name.len().min(31);
    data.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: SYNC_IOC_MERGE takes a sync_merge_data, which has no pointers.
    unsafe { ioctl_rw::<SYNC_IOC_MERGE, _>(a, &mut data)? };
    if data.fence < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fence) })
}

/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` with `flags` (`DMA_BUF_SYNC_READ`
/// and/or `_WRITE`): a sync_file of the buffer's fences now.
pub(crate) fn dma_buf_export_sync_file(fd: BorrowedFd<'_>, flags: u32) -> Result<OwnedFd, Errno> {
    let mut req = DmaBufSyncFile { flags, fd: -1 };
    // SAFETY: EXPORT_SYNC_FILE takes a dma_buf_export_sync_file (no
    // pointers).
    unsafe { ioctl_rw::<DMA_BUF_IOCTL_EXPORT_SYNC_FILE, _>(fd, &mut req)? };
    if req.fd < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(req.fd) })
}

/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`: add the fences of `fence` to the
/// buffer's, as readers' (`DMA_BUF_SYNC_READ`) or a writer's (`_WRITE`).
pub(crate) fn dma_buf_import_sync_file(
    fd: BorrowedFd<'_>,
    fence: BorrowedFd<'_>,
    flags: u32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let req = DmaBufSyncFile {
        flags,
        fd: fence.as_raw_fd(),
    };
    retry(|| {
        // SAFETY: IMPORT_SYNC_FILE reads one dma_buf_import_sync_file,
        // which `Setter` passes by pointer; the kernel does not keep it.
        let setter = unsafe {
            Setter::<DMA_BUF_IOCTL_IMPORT_SYNC_FILE, DmaBufSyncFile>::new(DmaBufSyncFile {
                flags: req.flags,
                fd: req.fd,
            })
        };
        // SAFETY: the request number and argument type match (see above).
        unsafe { rustix::ioctl::ioctl(fd, setter) }
    })
}

/// Wait until `fd` reports one of `events` (or an error or hang-up), for at
/// most `timeout`; `Ok(true)` when it did, `Ok(false)` when the time ran
/// out. A signal restarts the wait with the time left.
pub(crate) fn poll_until(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    timeout: Duration,
) -> Result<bool, Errno> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = left.map(|l| Timespec {
            tv_sec: l.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: l.subsec_nanos() as _,
        });
        let mut fds = [PollFd::new(&fd, events)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) if left.is_some_and(|l| l.is_zero()) => return Ok(false),
            Ok(0) => continue,
            Ok(_) => {
                let got = fds[0].revents();
                if got.contains(PollFlags::NVAL) {
                    return Err(Errno::BADF);
                }
                return Ok(true);
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Duplicate the fd numbered `raw` (close-on-exec): EBADF for a negative
/// number or one that is not open.
pub(crate) fn dup_raw(raw: RawFd) -> Result<OwnedFd, Errno> {
    if raw < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: the borrow lives for one fcntl(F_DUPFD_CLOEXEC), which fails
    // with EBADF on a number that is not open and leaves an open one as it
    // is (it only makes a new fd); nothing else is done with the number.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_fence_count_is_refused_not_allocated() {
        assert_eq!(fence_buffer(u32::MAX, 0u8), Err(Errno::TOOBIG));
        assert_eq!(fence_buffer(MAX_FENCE_INFO + 1, 0u8), Err(Errno::TOOBIG));
        assert_eq!(fence_buffer(3, 7u8).unwrap(), vec![7, 7, 7]);
        assert_eq!(fence_buffer(MAX_FENCE_INFO, 0u8).unwrap().len(), 1 << 16);
    }
}
