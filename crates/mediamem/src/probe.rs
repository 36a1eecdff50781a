//! What this machine offers: one row per allocator kind mediamem knows,
//! with whether it works here and what it can do. `mediamem probe` prints
//! this table.

use crate::allocator::{Allocator, AllocatorFlags};
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
    /// Whether it allocates from a size alone (`Allocator::alloc`).
    pub plain_alloc: bool,
    /// Whether its memories carry a file descriptor.
    pub fd_backed: bool,
    /// Whether its memories are dma-bufs.
    pub dmabuf: bool,
    /// Whether its memories are physically contiguous.
    pub contiguous: bool,
    /// Where copies of its memories go.
    pub copies_to: String,
    /// A short note: how it was checked, or why it is unavailable.
    pub detail: String,
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
    dmabuf: bool,
    info: String,
    alloc: impl FnOnce() -> crate::Result<(Allocator, crate::Memory)>,
) -> ProbeRow {
    match alloc() {
        Ok((a, m)) => ProbeRow {
            name: name.to_owned(),
            mem_type: a.mem_type().to_owned(),
            available: true,
            plain_alloc: true,
            fd_backed: true,
            dmabuf,
            contiguous: true,
            copies_to: copies_to(&a),
            detail: format!(
                "{info}; allocation at physical {:#x}",
                crate::phys::phys_memory_get_phys_addr(&m).unwrap_or(0)
            ),
        },
        // The capabilities describe the kind, not whether it works here:
        // huge page and CMA memories are always fd-backed and contiguous.
        Err(e) => ProbeRow {
            fd_backed: true,
            contiguous: true,
            ..unavailable(name, mem_type, dmabuf, format!("{info}; {e}"))
        },
    }
}

fn probe_hugepage() -> ProbeRow {
    use crate::phys::{free_huge_pages, huge_page_size, HugePageAllocator, ALLOCATOR_HUGEPAGE};
    let info = match (huge_page_size(), free_huge_pages()) {
        (Some(size), Some(free)) => format!("huge page {} KiB, {free} free", size / 1024),
        _ => "no hugetlb".to_owned(),
    };
    phys_row(ALLOCATOR_HUGEPAGE, ALLOCATOR_HUGEPAGE, false, info, || {
        let a = HugePageAllocator::new()?;
        let m = a.alloc(4096, None)?;
        Ok((a.allocator().clone(), m))
    })
}

fn probe_cma() -> ProbeRow {
    use crate::phys::{CmaHeapAllocator, CMA_MEMORY_TYPE};
    phys_row(
        CMA_MEMORY_TYPE,
        CMA_MEMORY_TYPE,
        true,
        "CMA dma-heap".into(),
        || {
            let a = CmaHeapAllocator::new()?;
            let m = a.alloc(1 << 20, None)?;
            Ok((a.allocator().clone(), m))
        },
    )
}

/// A row for an allocator kind that is missing here.
fn unavailable(name: &str, mem_type: &str, dmabuf: bool, reason: String) -> ProbeRow {
    ProbeRow {
        name: name.to_owned(),
        mem_type: mem_type.to_owned(),
        available: false,
        plain_alloc: false,
        fd_backed: dmabuf,
        dmabuf,
        contiguous: false,
        copies_to: "-".into(),
        detail: reason,
    }
}

/// The row of a dma-buf allocator with a plain `alloc` (udmabuf, heaps):
/// allocate 1 MiB and map it for writing, or say why that failed.
fn dmabuf_alloc_row(
    name: &str,
    mem_type: &str,
    node: &str,
    get: impl FnOnce() -> crate::Result<Allocator>,
) -> ProbeRow {
    let check = get().and_then(|a| {
        let m = a.alloc(1 << 20, None)?;
        m.map_writable()?.fill(1);
        Ok(a)
    });
    match check {
        Ok(a) => ProbeRow {
            name: name.to_owned(),
            mem_type: a.mem_type().to_owned(),
            available: true,
            plain_alloc: true,
            fd_backed: true,
            dmabuf: true,
            contiguous: false,
            copies_to: copies_to(&a),
            detail: format!("{node}; 1 MiB alloc and map checked"),
        },
        Err(e) => unavailable(name, mem_type, true, e.to_string()),
    }
}

fn probe_udmabuf() -> ProbeRow {
    use crate::udmabuf::{UdmabufAllocator, ALLOCATOR_UDMABUF, UDMABUF_DEVICE};
    dmabuf_alloc_row(
        ALLOCATOR_UDMABUF,
        ALLOCATOR_UDMABUF,
        UDMABUF_DEVICE,
        UdmabufAllocator::get,
    )
}

fn probe_heaps() -> Vec<ProbeRow> {
    use crate::heap::{list_heaps, DmaHeapAllocator, DMA_HEAP_DIR, DMA_HEAP_MEMORY_TYPE};
    let heaps = list_heaps();
    if heaps.is_empty() {
        return vec![unavailable(
            DMA_HEAP_MEMORY_TYPE,
            DMA_HEAP_MEMORY_TYPE,
            true,
            format!("no heaps in {DMA_HEAP_DIR}"),
        )];
    }
    heaps
        .iter()
        .map(|name| {
            dmabuf_alloc_row(
                &format!("{DMA_HEAP_MEMORY_TYPE}:{name}"),
                DMA_HEAP_MEMORY_TYPE,
                &format!("{DMA_HEAP_DIR}/{name}"),
                || DmaHeapAllocator::get(name),
            )
        })
        .collect()
}

fn probe_drm() -> Vec<ProbeRow> {
    use crate::drm::{fourcc, list_devices, DrmDumbAllocator, DRM_DUMB_MEMORY_TYPE};
    let devices = list_devices();
    if devices.is_empty() {
        return vec![unavailable(
            DRM_DUMB_MEMORY_TYPE,
            DRM_DUMB_MEMORY_TYPE,
            false,
            "no DRM devices (/dev/dri/card*)".into(),
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
            let check = DrmDumbAllocator::new_with_device_path(&d.path).and_then(|a| {
                let (m, pitch) = a.alloc(fourcc(*b"XR24"), 64, 64)?;
                m.map_writable()?.fill(1);
                Ok((a, pitch))
            });
            match check {
                Ok((a, pitch)) => ProbeRow {
                    name,
                    mem_type: a.mem_type().to_owned(),
                    available: true,
                    plain_alloc: false,
                    fd_backed: false,
                    dmabuf: false,
                    contiguous: false,
                    copies_to: copies_to(&a),
                    detail: format!("{caps}; XR24 64x64 pitch {pitch}"),
                },
                Err(e) => unavailable(&name, DRM_DUMB_MEMORY_TYPE, false, format!("{caps}: {e}")),
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
    let check = sys.alloc(4096, None).and_then(|m| {
        m.map(MapFlags::READWRITE)?;
        Ok(m.maxsize())
    });
    ProbeRow {
        name: crate::allocator::ALLOCATOR_SYSMEM.to_owned(),
        mem_type: sys.mem_type().to_owned(),
        available: check.is_ok(),
        plain_alloc: true,
        fd_backed: false,
        dmabuf: false,
        contiguous: false,
        copies_to: copies_to(&sys),
        detail: match check {
            Ok(maxsize) => format!(
                "heap, zeroed, align mask >= {DEFAULT_ALIGN_MASK}; alloc(4096) gave maxsize {maxsize}"
            ),
            Err(e) => format!("allocation failed: {e}"),
        },
    }
}

fn probe_fd() -> ProbeRow {
    use crate::fd::{FdAllocator, FdMemoryFlags};
    let fd = FdAllocator::new();
    // Import a real memfd, map it read-write, share it.
    let check = rustix::fs::memfd_create("mediamem-probe", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| crate::Error::NotAvailable {
            what: "memfd_create".into(),
            reason: e.to_string(),
        })
        .and_then(|memfd| {
            rustix::fs::ftruncate(&memfd, 4096).map_err(|e| crate::Error::NotAvailable {
                what: "ftruncate".into(),
                reason: e.to_string(),
            })?;
            let m = fd.alloc(memfd, 4096, FdMemoryFlags::KEEP_MAPPED)?;
            m.map_writable()?.fill(1);
            m.share(..)?;
            Ok(())
        });
    ProbeRow {
        name: crate::fd::ALLOCATOR_FD.to_owned(),
        mem_type: fd.mem_type().to_owned(),
        available: check.is_ok(),
        plain_alloc: false,
        fd_backed: true,
        dmabuf: false,
        contiguous: false,
        copies_to: copies_to(&fd),
        detail: match check {
            Ok(()) => "imports any mappable fd; memfd import, map and share checked".into(),
            Err(e) => format!("check failed: {e}"),
        },
    }
}

fn probe_shm() -> ProbeRow {
    let shm = crate::shm::ShmAllocator::get();
    let check = shm.alloc(100, None).and_then(|m| {
        m.map_writable()?.fill(1);
        let seals = m
            .fd()
            .map(|fd| rustix::fs::fcntl_get_seals(fd).unwrap_or(rustix::fs::SealFlags::empty()))
            .unwrap_or(rustix::fs::SealFlags::empty());
        Ok((m.maxsize(), seals))
    });
    ProbeRow {
        name: crate::shm::ALLOCATOR_SHM.to_owned(),
        mem_type: shm.mem_type().to_owned(),
        available: check.is_ok(),
        plain_alloc: true,
        fd_backed: true,
        dmabuf: false,
        contiguous: false,
        copies_to: copies_to(&shm),
        detail: match check {
            Ok((maxsize, seals)) => format!(
                "memfd; alloc(100) gave maxsize {maxsize}; seals {}",
                seal_names(seals)
            ),
            Err(e) => format!("check failed: {e}"),
        },
    }
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
    let dmabuf = crate::dmabuf::DmaBufAllocator::new();
    ProbeRow {
        name: crate::dmabuf::ALLOCATOR_DMABUF.to_owned(),
        mem_type: dmabuf.mem_type().to_owned(),
        available: true,
        plain_alloc: false,
        fd_backed: true,
        dmabuf: true,
        contiguous: false,
        copies_to: copies_to(&dmabuf),
        detail: "imports dma-buf fds; map/unmap bracket DMA_BUF_IOCTL_SYNC".into(),
    }
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
    }

    /// A physical-memory row keeps its kind's capabilities when the
    /// allocation fails (no free huge page, no CMA heap): whatever this
    /// machine has, the unavailable row is built here.
    #[test]
    fn unavailable_phys_rows_keep_their_capabilities() {
        for dmabuf in [false, true] {
            let row = super::phys_row("kind", "kind", dmabuf, "info".into(), || {
                Err(crate::Error::NotAvailable {
                    what: "huge pages".into(),
                    reason: "none free".into(),
                })
            });
            assert!(!row.available, "{row:?}");
            assert!(row.fd_backed && row.contiguous, "{row:?}");
            assert_eq!(row.dmabuf, dmabuf);
            assert!(row.detail.starts_with("info; "), "{}", row.detail);
            assert!(row.detail.contains("none free"), "{}", row.detail);
        }
    }
}
