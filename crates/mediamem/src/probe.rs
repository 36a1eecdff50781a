//! What this machine offers: one row per allocator kind mediamem knows,
//! with whether it works here and what it can do. `mediamem probe` prints
//! this table.
//!
//! A row's capabilities are its kind's [`AllocatorCaps`] (the kind says
//! what it can do, the probe does not restate it); whether it is available
//! comes from a real check on this machine: an allocation, a map and a
//! free where the kind can allocate.

use crate::allocator::{Allocator, AllocatorCaps, AllocatorFlags};
use crate::memory::{MapFlags, DEFAULT_ALIGN_MASK};

/// One allocator kind and its capabilities on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRow {
    /// Registry name (e.g. `"SystemMemory"`).
    pub name: String,
    /// Memory type string of its memories.
    pub mem_type: String,
    /// Whether it can be used on this machine right now.
    pub available: bool,
    /// The kind's capabilities.
    pub caps: AllocatorCaps,
    /// Whether it allocates from a size alone (`Allocator::alloc`).
    pub plain_alloc: bool,
    /// Whether its memories carry a file descriptor.
    pub fd_backed: bool,
    /// Whether its memories are dma-bufs.
    pub dmabuf: bool,
    /// Whether its memories are physically contiguous.
    pub contiguous: bool,
    /// Where copies of its memories go (`-` when it is not available).
    pub copies_to: String,
    /// A short note: how it was checked, or why it is unavailable.
    pub detail: String,
}

impl ProbeRow {
    /// A row for a kind with `caps`: available with the allocator that
    /// passed the check and what the check saw, or not, and why.
    fn new(
        name: &str,
        mem_type: &str,
        caps: AllocatorCaps,
        check: Result<(Allocator, String), String>,
    ) -> ProbeRow {
        let (available, mem_type, copies_to, detail) = match check {
            Ok((a, detail)) => (true, a.mem_type().to_owned(), copies_to(&a), detail),
            Err(why) => (false, mem_type.to_owned(), "-".to_owned(), why),
        };
        ProbeRow {
            name: name.to_owned(),
            mem_type,
            available,
            caps,
            plain_alloc: caps.contains(AllocatorCaps::PLAIN_ALLOC),
            fd_backed: caps.contains(AllocatorCaps::FD_BACKED),
            dmabuf: caps.contains(AllocatorCaps::DMABUF),
            contiguous: caps.contains(AllocatorCaps::CONTIGUOUS),
            copies_to,
            detail,
        }
    }
}

/// Probe every allocator kind mediamem implements.
///
/// Each row is backed by a real check (an allocation, a map and a free for
/// allocators that can allocate), not by a compile-time list.
///
/// ```
/// let rows = mediamem::probe::probe();
/// let sys = rows.iter().find(|r| r.name == "SystemMemory").unwrap();
/// assert!(sys.available && sys.plain_alloc);
/// ```
pub fn probe() -> Vec<ProbeRow> {
    let mut rows = vec![probe_system(), probe_fd(), probe_shm(), probe_dmabuf()];
    rows.push(probe_udmabuf());
    rows.extend(probe_heaps());
    rows.extend(probe_drm());
    rows.push(probe_hugepage());
    rows.push(probe_cma());
    rows
}

/// A physical-memory allocator's row: allocate, resolve the address.
fn phys_row(
    name: &str,
    mem_type: &str,
    caps: AllocatorCaps,
    info: String,
    alloc: impl FnOnce() -> crate::Result<(Allocator, crate::Memory)>,
) -> ProbeRow {
    let check = alloc()
        .map(|(a, m)| {
            let detail = format!(
                "{info}; allocation at physical {:#x}",
                crate::phys::phys_memory_get_phys_addr(&m).unwrap_or(0)
            );
            (a, detail)
        })
        .map_err(|e| format!("{info}; {e}"));
    ProbeRow::new(name, mem_type, caps, check)
}

fn probe_hugepage() -> ProbeRow {
    use crate::phys::{free_huge_pages, huge_page_size, HugePageAllocator, ALLOCATOR_HUGEPAGE};
    let info = match (huge_page_size(), free_huge_pages()) {
        (Some(size), Some(free)) => format!("huge page {} KiB, {free} free", size / 1024),
        _ => "no hugetlb".to_owned(),
    };
    phys_row(
        ALLOCATOR_HUGEPAGE,
        ALLOCATOR_HUGEPAGE,
        HugePageAllocator::CAPS,
        info,
        || {
            let a = HugePageAllocator::new()?;
            let m = a.alloc(4096, None)?;
            Ok((a.allocator().clone(), m))
        },
    )
}

fn probe_cma() -> ProbeRow {
    use crate::phys::{CmaHeapAllocator, CMA_MEMORY_TYPE};
    phys_row(
        CMA_MEMORY_TYPE,
        CMA_MEMORY_TYPE,
        CmaHeapAllocator::CAPS,
        "CMA dma-heap".into(),
        || {
            let a = CmaHeapAllocator::new()?;
            let m = a.alloc(1 << 20, None)?;
            Ok((a.allocator().clone(), m))
        },
    )
}

/// The row of a dma-buf allocator with a plain `alloc` (udmabuf, heaps):
/// allocate 1 MiB and map it for writing, or say why that failed.
fn dmabuf_alloc_row(
    name: &str,
    mem_type: &str,
    caps: AllocatorCaps,
    node: &str,
    get: impl FnOnce() -> crate::Result<Allocator>,
) -> ProbeRow {
    let check = get()
        .and_then(|a| {
            let m = a.alloc(1 << 20, None)?;
            m.map_writable()?.fill(1);
            Ok((a, format!("{node}; 1 MiB alloc and map checked")))
        })
        .map_err(|e| e.to_string());
    ProbeRow::new(name, mem_type, caps, check)
}

fn probe_udmabuf() -> ProbeRow {
    use crate::udmabuf::{UdmabufAllocator, ALLOCATOR_UDMABUF, UDMABUF_DEVICE};
    dmabuf_alloc_row(
        ALLOCATOR_UDMABUF,
        ALLOCATOR_UDMABUF,
        UdmabufAllocator::CAPS,
        UDMABUF_DEVICE,
        || UdmabufAllocator::get().map(Allocator::from),
    )
}

fn probe_heaps() -> Vec<ProbeRow> {
    use crate::heap::{list_heaps, DmaHeapAllocator, DMA_HEAP_DIR, DMA_HEAP_MEMORY_TYPE};
    let heaps = list_heaps();
    if heaps.is_empty() {
        return vec![ProbeRow::new(
            DMA_HEAP_MEMORY_TYPE,
            DMA_HEAP_MEMORY_TYPE,
            DmaHeapAllocator::CAPS,
            Err(format!("no heaps in {DMA_HEAP_DIR}")),
        )];
    }
    heaps
        .iter()
        .map(|name| {
            dmabuf_alloc_row(
                &format!("{DMA_HEAP_MEMORY_TYPE}:{name}"),
                DMA_HEAP_MEMORY_TYPE,
                DmaHeapAllocator::CAPS,
                &format!("{DMA_HEAP_DIR}/{name}"),
                || DmaHeapAllocator::get(name).map(Allocator::from),
            )
        })
        .collect()
}

fn probe_drm() -> Vec<ProbeRow> {
    use crate::drm::{fourcc, list_devices, DrmDumbAllocator, DRM_DUMB_MEMORY_TYPE};
    let devices = list_devices();
    if devices.is_empty() {
        return vec![ProbeRow::new(
            DRM_DUMB_MEMORY_TYPE,
            DRM_DUMB_MEMORY_TYPE,
            DrmDumbAllocator::CAPS,
            Err("no DRM devices (/dev/dri/card*)".into()),
        )];
    }
    devices
        .into_iter()
        .map(|d| {
            let driver = d.driver.clone().unwrap_or_else(|e| format!("? ({e})"));
            let name = format!("{DRM_DUMB_MEMORY_TYPE} {}", d.path.display());
            let caps = format!(
                "driver {driver}; dumb {}; PRIME export {}",
                if d.dumb { "yes" } else { "no" },
                if d.prime_export { "yes" } else { "no" }
            );
            let check = DrmDumbAllocator::new_with_device_path(&d.path)
                .and_then(|a| {
                    let (m, pitch) = a.alloc(fourcc(*b"XR24"), 64, 64)?;
                    m.map_writable()?.fill(1);
                    Ok((
                        a.allocator().clone(),
                        format!("{caps}; XR24 64x64 pitch {pitch}"),
                    ))
                })
                .map_err(|e| format!("{caps}: {e}"));
            ProbeRow::new(&name, DRM_DUMB_MEMORY_TYPE, DrmDumbAllocator::CAPS, check)
        })
        .collect()
}

/// Whether explicit sync works on one kind of dma-buf memory here
/// ([`probe_explicit_sync`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncProbeRow {
    /// The dma-buf kind (`"udmabuf"`, `"dmaheap:system"`, `"DRMDumbMemory
    /// /dev/dri/card0"` exported with PRIME...).
    pub kind: String,
    /// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` of a buffer of this kind: `Ok`,
    /// or why it failed (a kernel before 6.0, no such buffer here).
    pub export: Result<(), String>,
    /// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` of that sync_file back into it.
    pub import: Result<(), String>,
}

/// For each kind of dma-buf memory this machine can allocate (udmabuf,
/// each dma-heap, each DRM card's dumb buffers exported with PRIME):
/// whether a sync_file can be exported from a buffer (it must come out
/// signaled: a new buffer has no work pending) and imported into it again.
pub fn probe_explicit_sync() -> Vec<SyncProbeRow> {
    use crate::sync::{export_sync_file, import_sync_file, FenceAccess};
    let mut buffers: Vec<(String, crate::Result<crate::Memory>)> = Vec::new();
    buffers.push((
        "udmabuf".into(),
        crate::udmabuf::UdmabufAllocator::get().and_then(|a| a.alloc(1 << 16, None)),
    ));
    for name in crate::heap::list_heaps() {
        buffers.push((
            format!("{}:{name}", crate::heap::DMA_HEAP_MEMORY_TYPE),
            crate::heap::DmaHeapAllocator::get(&name).and_then(|a| a.alloc(1 << 16, None)),
        ));
    }
    for d in crate::drm::list_devices() {
        if !(d.dumb && d.prime_export) {
            continue;
        }
        let exported = crate::drm::DrmDumbAllocator::new_with_device_path(&d.path)
            .and_then(|a| a.alloc(crate::drm::fourcc(*b"XR24"), 64, 64))
            .and_then(|(m, _)| crate::drm::drm_dumb_memory_export_dmabuf(&m));
        buffers.push((format!("DRM dumb {} (PRIME)", d.path.display()), exported));
    }
    buffers
        .into_iter()
        .map(|(kind, mem)| {
            let (export, import) = match mem {
                Err(e) => {
                    let why = format!("no buffer: {e}");
                    (Err(why.clone()), Err(why))
                }
                Ok(mem) => match export_sync_file(&mem, FenceAccess::Write) {
                    Err(e) => {
                        let why = e.to_string();
                        (Err(why.clone()), Err(format!("not tried: {why}")))
                    }
                    Ok(fence) => {
                        let export = match fence.is_signaled() {
                            Ok(true) => Ok(()),
                            Ok(false) => Err("a new buffer's fences are not signaled".into()),
                            Err(e) => Err(e.to_string()),
                        };
                        let import = import_sync_file(&mem, &fence, FenceAccess::Read)
                            .map_err(|e| e.to_string());
                        (export, import)
                    }
                },
            };
            SyncProbeRow {
                kind,
                export,
                import,
            }
        })
        .collect()
}

fn copies_to(a: &Allocator) -> String {
    if a.flags()
        .intersects(AllocatorFlags::CUSTOM_ALLOC | AllocatorFlags::NO_COPY)
    {
        Allocator::default_allocator().mem_type().to_owned()
    } else {
        a.mem_type().to_owned()
    }
}

fn probe_system() -> ProbeRow {
    let sys = Allocator::system();
    let check = sys
        .alloc(4096, None)
        .and_then(|m| {
            m.map(MapFlags::READWRITE)?;
            Ok(m.maxsize())
        })
        .map(|maxsize| {
            (
                sys.clone(),
                format!(
                "heap, zeroed, align mask >= {DEFAULT_ALIGN_MASK}; alloc(4096) gave maxsize {maxsize}"
            ),
            )
        })
        .map_err(|e| format!("allocation failed: {e}"));
    ProbeRow::new(
        crate::allocator::ALLOCATOR_SYSMEM,
        sys.mem_type(),
        sys.caps(),
        check,
    )
}

fn probe_fd() -> ProbeRow {
    use crate::fd::{FdAllocator, FdMemoryFlags};
    let fd = FdAllocator::new();
    // Import a real memfd, map it read-write, share it.
    let check = rustix::fs::memfd_create("mediamem-probe", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| crate::Error::os("memfd_create", e))
        .and_then(|memfd| {
            rustix::fs::ftruncate(&memfd, 4096).map_err(|e| crate::Error::os("ftruncate", e))?;
            let m = fd.alloc(memfd, 4096, FdMemoryFlags::KEEP_MAPPED)?;
            m.map_writable()?.fill(1);
            m.share(..)?;
            Ok((
                fd.allocator().clone(),
                "imports any mappable fd; memfd import, map and share checked".to_owned(),
            ))
        })
        .map_err(|e| format!("check failed: {e}"));
    ProbeRow::new(
        crate::fd::ALLOCATOR_FD,
        crate::fd::ALLOCATOR_FD,
        FdAllocator::CAPS,
        check,
    )
}

fn probe_shm() -> ProbeRow {
    use crate::shm::{ShmAllocator, ALLOCATOR_SHM};
    let shm = ShmAllocator::get();
    let check = shm
        .alloc(100, None)
        .and_then(|m| {
            m.map_writable()?.fill(1);
            let seals = m
                .fd()
                .map(|fd| rustix::fs::fcntl_get_seals(fd).unwrap_or(rustix::fs::SealFlags::empty()))
                .unwrap_or(rustix::fs::SealFlags::empty());
            Ok((
                shm.allocator().clone(),
                format!(
                    "memfd; alloc(100) gave maxsize {}; seals {}",
                    m.maxsize(),
                    seal_names(seals)
                ),
            ))
        })
        .map_err(|e| format!("check failed: {e}"));
    ProbeRow::new(ALLOCATOR_SHM, ALLOCATOR_SHM, shm.caps(), check)
}

fn seal_names(seals: rustix::fs::SealFlags) -> String {
    use rustix::fs::SealFlags as S;
    let names = [
        (S::SEAL, "SEAL"),
        (S::SHRINK, "SHRINK"),
        (S::GROW, "GROW"),
        (S::WRITE, "WRITE"),
        (S::FUTURE_WRITE, "FUTURE_WRITE"),
        (S::EXEC, "EXEC"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(f, _)| seals.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join("|")
    }
}

fn probe_dmabuf() -> ProbeRow {
    use crate::dmabuf::{DmaBufAllocator, ALLOCATOR_DMABUF};
    let dmabuf = DmaBufAllocator::new();
    ProbeRow::new(
        ALLOCATOR_DMABUF,
        ALLOCATOR_DMABUF,
        DmaBufAllocator::CAPS,
        Ok((
            dmabuf.allocator().clone(),
            "imports dma-buf fds; map/unmap bracket DMA_BUF_IOCTL_SYNC".into(),
        )),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_row() {
        let rows = super::probe();
        let sys = &rows[0];
        assert_eq!(sys.name, "SystemMemory");
        assert!(sys.available);
        assert_eq!(sys.copies_to, "SystemMemory");
        assert!(sys.detail.contains("maxsize 4103"), "{}", sys.detail);
    }

    #[test]
    fn fd_row() {
        let rows = super::probe();
        let fd = rows.iter().find(|r| r.name == "fd").unwrap();
        assert!(fd.available, "{}", fd.detail);
        assert!(fd.fd_backed && !fd.plain_alloc);
        assert_eq!(fd.copies_to, "SystemMemory");
    }

    #[test]
    fn shm_row_reports_seals() {
        let rows = super::probe();
        let shm = rows.iter().find(|r| r.name == "shm").unwrap();
        assert!(
            shm.available && shm.plain_alloc && shm.fd_backed,
            "{}",
            shm.detail
        );
        assert!(shm.detail.contains("SHRINK|GROW"), "{}", shm.detail);
        assert_eq!(shm.copies_to, "SystemMemory");
        let dmabuf = rows.iter().find(|r| r.name == "dmabuf").unwrap();
        assert!(dmabuf.dmabuf && dmabuf.fd_backed);
    }

    #[test]
    fn device_rows_say_why_they_are_missing() {
        let rows = super::probe();
        let udmabuf = rows.iter().find(|r| r.name == "udmabuf").unwrap();
        assert_eq!(
            udmabuf.available,
            std::path::Path::new("/dev/udmabuf").exists()
        );
        if !udmabuf.available {
            assert!(
                udmabuf.detail.contains("/dev/udmabuf"),
                "{}",
                udmabuf.detail
            );
        }
        assert!(rows.iter().any(|r| r.name.starts_with("dmaheap")));
        assert!(rows.iter().any(|r| r.name.starts_with("DRMDumbMemory")));
        let huge = rows.iter().find(|r| r.name == "hugepage").unwrap();
        assert!(huge.contiguous && huge.fd_backed);
        assert!(
            huge.detail.contains("huge page") || huge.detail.contains("hugetlb"),
            "{}",
            huge.detail
        );
        let cma = rows.iter().find(|r| r.name == "cma").unwrap();
        assert!(cma.contiguous && cma.dmabuf && cma.fd_backed);
        // Explicit sync: a row per dma-buf kind, udmabuf always listed;
        // where it cannot allocate, both say why.
        let sync = super::probe_explicit_sync();
        let u = sync.iter().find(|r| r.kind == "udmabuf").unwrap();
        if !udmabuf.available {
            assert!(
                u.export.as_ref().unwrap_err().starts_with("no buffer"),
                "{u:?}"
            );
            assert!(u.import.is_err());
        }
    }

    /// A row keeps its kind's capabilities when the kind is not available
    /// here (no free huge page, no CMA heap, no device).
    #[test]
    fn unavailable_rows_keep_their_capabilities() {
        use crate::allocator::AllocatorCaps;
        let caps = crate::phys::CmaHeapAllocator::CAPS;
        let row = super::phys_row("kind", "kind", caps, "info".into(), || {
            Err(crate::Error::NotAvailable {
                what: "huge pages".into(),
                reason: "none free".into(),
            })
        });
        assert!(!row.available, "{row:?}");
        assert!(
            row.fd_backed && row.contiguous && row.dmabuf && row.plain_alloc,
            "{row:?}"
        );
        assert_eq!(row.caps, caps);
        assert!(row.caps.contains(AllocatorCaps::CONTIGUOUS));
        assert_eq!(row.copies_to, "-");
        assert!(row.detail.starts_with("info; ") && row.detail.contains("none free"));
    }
}
