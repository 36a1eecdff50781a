//! dma-buf memory on any machine: one entry point, [`DmaBufProvider`], that
//! allocates from the first provider of an ordered, configurable chain that
//! works, and says what to fix when none does.
//!
//! ```no_run
//! use mediamem::provider::DmaBufProvider;
//! let mem = DmaBufProvider::new()?.alloc(1 << 20, None)?;
//! assert!(mediamem::is_dmabuf_memory(&mem));
//! # Ok::<(), mediamem::Error>(())
//! ```
//!
//! # The chain
//!
//! | order | provider | name | dma-buf | contiguous | CPU-cached |
//! |---|---|---|---|---|---|
//! | 1 | CMA heap (`linux,cma`, `reserved`) | `cma-heap` | yes | yes | yes |
//! | 2 | system heap | `system-heap` | yes | no | yes |
//! | 3 | udmabuf over a sealed memfd | `udmabuf` | yes | no | yes |
//! | 4 | DRM dumb buffer exported with PRIME | `drm-dumb` | yes | unknown | unknown |
//! | 5 | sealed memfd (shm) | `memfd` | **no** | no | yes |
//! | — | any other heap, by name | `heap:<name>` | yes | unknown | no for `*uncached*`, else unknown |
//! | — | huge page memfd | `hugepage` | no | yes | yes |
//!
//! The default order is 1–5 (libcamera and PipeWire try CMA first, for
//! devices that need contiguous memory). The last resort, `memfd`, is only
//! taken when the caller accepts memory that is not a dma-buf
//! ([`DmaBufProvider::allow_non_dmabuf`]); otherwise it is listed as
//! refused. The order is set in code ([`DmaBufProvider::with_order`]), or,
//! when the code keeps the default, by the environment variable
//! [`PROVIDERS_ENV`] (`MEDIAMEM_DMABUF_PROVIDERS=udmabuf,cma-heap`);
//! [`DmaBufProvider::exclude`] removes providers from either.
//!
//! # Decisions
//!
//! | GStreamer / others do | mediamem does | because |
//! |---|---|---|
//! | GStreamer has no chain: an element picks one allocator (`GstDmaBufAllocator` imports, `gst_dma_heap_allocator`-style code in elements opens one heap) and fails alone | one chain, ordered, every failure kept | "could not open any dma-heap device" is the commonest complaint; a program needs a fallback and a reason |
//! | libcamera tries `linux,cma`, `reserved`, then udmabuf | the same start, then the system heap before udmabuf, then DRM, then memfd | the system heap is a real dma-buf without a memfd behind it; DRM dumb buffers need a display device |
//! | errors are a string ("Permission denied") | one typed reason per provider, each with its errno: not present, no permission (owner, group, mode, what to change), exhausted (ENOMEM), refused by a constraint | the fix differs for each: load a module, add a group or a udev rule, free CMA, relax the constraint |
//! | a low-address limit is a device's business | [`DmaBufProvider::max_phys_addr`] reads the frame of every page holding the memory's visible bytes from `/proc/self/pagemap` after the allocation (a prefix or padding of whole pages beyond them is not checked); where this process cannot read frames (no `CAP_SYS_ADMIN`) the provider is refused, never trusted | a constraint that cannot be checked must not be ignored |
//! | CPU caching is a heap property nobody reports | known for the providers above (`cached`), unknown ones refused when the caller asks | a caller who needs uncached memory must not get cached memory silently |

use std::path::Path;
use std::sync::Mutex;

use rustix::io::Errno;

use crate::allocator::{AllocationParams, Allocator};
use crate::drm::{drm_dumb_memory_export_dmabuf, fourcc, DrmDumbAllocator};
use crate::error::{Error, ProviderFailure, ProviderReason, Result};
use crate::heap::{DmaHeapAllocator, DMA_HEAP_DIR};
use crate::memory::Memory;
use crate::phys::{page_frames, CmaHeapAllocator, HugePageAllocator, CMA_HEAPS};
use crate::shm::ShmAllocator;
use crate::udmabuf::{UdmabufAllocator, UDMABUF_DEVICE};

/// The environment variable that sets the chain's order when the code
/// keeps the default: provider names separated by commas, e.g.
/// `MEDIAMEM_DMABUF_PROVIDERS=udmabuf,system-heap,memfd`. Providers not
/// named are not tried.
pub const PROVIDERS_ENV: &str = "MEDIAMEM_DMABUF_PROVIDERS";

/// One source of memory in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Provider {
    /// The first CMA heap present (`linux,cma`, then `reserved`).
    CmaHeap,
    /// The `system` dma-heap.
    SystemHeap,
    /// Another dma-heap, by name.
    Heap(String),
    /// `/dev/udmabuf` over a sealed memfd.
    Udmabuf,
    /// A DRM dumb buffer on the first card with dumb buffers and PRIME
    /// export, exported as a dma-buf.
    DrmDumb,
    /// A huge page memfd (physically contiguous; not a dma-buf).
    HugePage,
    /// A sealed memfd (shm; not a dma-buf).
    Memfd,
}

impl Provider {
    /// The default chain.
    pub const DEFAULT_ORDER: [Provider; 5] = [
        Provider::CmaHeap,
        Provider::SystemHeap,
        Provider::Udmabuf,
        Provider::DrmDumb,
        Provider::Memfd,
    ];

    /// The name [`PROVIDERS_ENV`] and [`Provider::parse`] use.
    pub fn name(&self) -> String {
        match self {
            Provider::CmaHeap => "cma-heap".into(),
            Provider::SystemHeap => "system-heap".into(),
            Provider::Heap(name) => format!("heap:{name}"),
            Provider::Udmabuf => "udmabuf".into(),
            Provider::DrmDumb => "drm-dumb".into(),
            Provider::HugePage => "hugepage".into(),
            Provider::Memfd => "memfd".into(),
        }
    }

    /// The provider `name` stands for.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] listing the names there are.
    pub fn parse(name: &str) -> Result<Provider> {
        let name = name.trim();
        Ok(match name {
            "cma-heap" => Provider::CmaHeap,
            "system-heap" | "heap:system" => Provider::SystemHeap,
            "udmabuf" => Provider::Udmabuf,
            "drm-dumb" => Provider::DrmDumb,
            "hugepage" => Provider::HugePage,
            "memfd" => Provider::Memfd,
            _ => match name.strip_prefix("heap:") {
                Some(heap)
                    if !heap.is_empty() && !heap.contains('/') && heap != "." && heap != ".." =>
                {
                    Provider::Heap(heap.to_owned())
                }
                _ => {
                    return Err(Error::InvalidConfig {
                        what: format!("dma-buf provider {name:?}"),
                        reason: "known providers: cma-heap, system-heap, heap:<name>, udmabuf, \
                                 drm-dumb, hugepage, memfd"
                            .into(),
                    })
                }
            },
        })
    }

    /// Parse a comma-separated list (the format of [`PROVIDERS_ENV`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unknown name, a duplicate, or an
    /// empty list.
    pub fn parse_list(list: &str) -> Result<Vec<Provider>> {
        let mut out: Vec<Provider> = Vec::new();
        for name in list.split(',').filter(|n| !n.trim().is_empty()) {
            let p = Provider::parse(name)?;
            if out.contains(&p) {
                return Err(Error::InvalidConfig {
                    what: format!("dma-buf provider list {list:?}"),
                    reason: format!("{} is named twice", p.name()),
                });
            }
            out.push(p);
        }
        if out.is_empty() {
            return Err(Error::InvalidConfig {
                what: format!("dma-buf provider list {list:?}"),
                reason: "it names no provider".into(),
            });
        }
        Ok(out)
    }

    /// Whether its memory is a dma-buf.
    pub fn is_dmabuf(&self) -> bool {
        !matches!(self, Provider::HugePage | Provider::Memfd)
    }

    /// Whether its memory is physically contiguous.
    pub fn is_contiguous(&self) -> bool {
        matches!(self, Provider::CmaHeap | Provider::HugePage)
    }

    /// Whether the CPU caches its memory, where that is known.
    pub fn is_cached(&self) -> Option<bool> {
        match self {
            Provider::CmaHeap
            | Provider::SystemHeap
            | Provider::Udmabuf
            | Provider::HugePage
            | Provider::Memfd => Some(true),
            Provider::Heap(name) if name.contains("uncached") => Some(false),
            Provider::Heap(_) | Provider::DrmDumb => None,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// What the caller needs of the memory; each filters the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// Physically contiguous memory only (CMA or a huge page).
    pub contiguous: bool,
    /// CPU-cached (`Some(true)`) or uncached (`Some(false)`) memory only;
    /// providers that do not say are refused.
    pub cached: Option<bool>,
    /// The highest physical address any byte may have (e.g. `0xffff_ffff`
    /// for a device that sees only the low 4 GiB), checked on every page of its visible bytes.
    pub max_phys_addr: Option<u64>,
    /// Whether memory that is not a dma-buf (memfd, huge pages) may be
    /// returned.
    pub allow_non_dmabuf: bool,
}

/// One allocation and how the chain reached it.
#[derive(Debug)]
pub struct Allocation {
    /// The memory.
    pub memory: Memory,
    /// Who made it.
    pub provider: Provider,
    /// The providers tried before, each with its reason.
    pub skipped: Vec<ProviderFailure>,
}

/// A provider opened once and kept.
#[derive(Debug, Clone)]
enum Opened {
    Alloc(Allocator),
    Drm(DrmDumbAllocator),
}

/// Allocates dma-buf memory from the first provider that works (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct DmaBufProvider {
    order: Vec<Provider>,
    constraints: Constraints,
    opened: Mutex<Vec<(Provider, Opened)>>,
}

impl DmaBufProvider {
    /// The default chain, or the one [`PROVIDERS_ENV`] names.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the environment variable is set but
    /// not a valid list.
    pub fn new() -> Result<Self> {
        let order = match std::env::var(PROVIDERS_ENV) {
            Ok(list) => Provider::parse_list(&list).map_err(|e| match e {
                Error::InvalidConfig { what, reason } => Error::InvalidConfig {
                    what: format!("{PROVIDERS_ENV}: {what}"),
                    reason,
                },
                e => e,
            })?,
            Err(std::env::VarError::NotPresent) => Provider::DEFAULT_ORDER.to_vec(),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::InvalidConfig {
                    what: PROVIDERS_ENV.into(),
                    reason: "not UTF-8".into(),
                })
            }
        };
        Ok(Self::with_order(order))
    }

    /// A chain of exactly `order` (the environment variable is not read).
    pub fn with_order(order: impl IntoIterator<Item = Provider>) -> Self {
        let mut list: Vec<Provider> = Vec::new();
        for p in order {
            if !list.contains(&p) {
                list.push(p);
            }
        }
        DmaBufProvider {
            order: list,
            constraints: Constraints::default(),
            opened: Mutex::new(Vec::new()),
        }
    }

    /// Leave `provider` out.
    pub fn exclude(mut self, provider: &Provider) -> Self {
        self.order.retain(|p| p != provider);
        self
    }

    /// Physically contiguous memory only.
    pub fn contiguous(mut self, contiguous: bool) -> Self {
        self.constraints.contiguous = contiguous;
        self
    }

    /// CPU-cached or uncached memory only.
    pub fn cached(mut self, cached: Option<bool>) -> Self {
        self.constraints.cached = cached;
        self
    }

    /// No byte above physical address `max` (inclusive).
    pub fn max_phys_addr(mut self, max: u64) -> Self {
        self.constraints.max_phys_addr = Some(max);
        self
    }

    /// Accept memory that is not a dma-buf (memfd, huge pages) when no
    /// dma-buf provider works.
    pub fn allow_non_dmabuf(mut self, allow: bool) -> Self {
        self.constraints.allow_non_dmabuf = allow;
        self
    }

    /// All constraints at once.
    pub fn with_constraints(mut self, constraints: Constraints) -> Self {
        self.constraints = constraints;
        self
    }

    /// The chain, in order.
    pub fn order(&self) -> &[Provider] {
        &self.order
    }

    /// The constraints.
    pub fn constraints(&self) -> &Constraints {
        &self.constraints
    }

    /// `size` bytes from the first provider that works.
    ///
    /// # Errors
    /// [`Error::NoProvider`] listing every provider with its reason.
    pub fn alloc(&self, size: usize, params: Option<&AllocationParams>) -> Result<Memory> {
        self.alloc_report(size, params).map(|a| a.memory)
    }

    /// As [`alloc`](Self::alloc), saying which provider served and why
    /// the earlier ones did not.
    ///
    /// # Errors
    /// [`Error::NoProvider`] listing every provider with its reason.
    pub fn alloc_report(
        &self,
        size: usize,
        params: Option<&AllocationParams>,
    ) -> Result<Allocation> {
        let params = params.copied().unwrap_or_default();
        let mut skipped = Vec::new();
        for provider in &self.order {
            match self.try_one(provider, size, &params) {
                Ok(memory) => {
                    return Ok(Allocation {
                        memory,
                        provider: provider.clone(),
                        skipped,
                    })
                }
                Err(reason) => skipped.push(ProviderFailure {
                    provider: provider.name(),
                    reason,
                }),
            }
        }
        Err(Error::NoProvider {
            size,
            failures: skipped,
        })
    }

    /// Every provider of the chain with what a one-page allocation gets
    /// from it now (`Ok` for one that would serve), in order. The first
    /// `Ok` is the provider [`alloc`](Self::alloc) would use.
    pub fn explain(&self) -> Vec<(Provider, std::result::Result<(), ProviderReason>)> {
        let page = rustix::param::page_size();
        self.order
            .iter()
            .map(|p| {
                let outcome = self
                    .try_one(p, page, &AllocationParams::default())
                    .map(drop);
                (p.clone(), outcome)
            })
            .collect()
    }

    /// Which provider of this chain made `mem` (through its allocator),
    /// or `None` for memory from elsewhere.
    pub fn provider_of(&self, mem: &Memory) -> Option<Provider> {
        let allocator = mem.allocator();
        let opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        opened
            .iter()
            .find(|(_, o)| match o {
                Opened::Alloc(a) => a.ptr_eq(allocator),
                Opened::Drm(d) => d.export_allocator().ptr_eq(allocator),
            })
            .map(|(p, _)| p.clone())
    }

    /// One provider: the constraints it cannot meet, opening it, the
    /// allocation, and the checks after it.
    fn try_one(
        &self,
        provider: &Provider,
        size: usize,
        params: &AllocationParams,
    ) -> std::result::Result<Memory, ProviderReason> {
        self.static_refusal(provider)?;
        let opened = self.open(provider)?;
        let memory = match &opened {
            Opened::Alloc(a) => a.alloc(size, Some(params)),
            Opened::Drm(d) => drm_alloc(d, size, params),
        }
        .map_err(|e| classify(provider, e))?;
        if let Some(max) = self.constraints.max_phys_addr {
            check_below(&memory, max)?;
        }
        Ok(memory)
    }

    /// The constraints a provider cannot meet whatever the machine.
    fn static_refusal(&self, p: &Provider) -> std::result::Result<(), ProviderReason> {
        let c = &self.constraints;
        let refuse = |constraint: String| Err(ProviderReason::Refused { constraint });
        if !p.is_dmabuf() && !c.allow_non_dmabuf {
            return refuse(
                "dma-buf memory only: not a dma-buf (allow_non_dmabuf accepts it)".into(),
            );
        }
        if c.contiguous && !p.is_contiguous() {
            return refuse("physically contiguous: not contiguous (or not known to be)".into());
        }
        if let Some(want) = c.cached {
            match p.is_cached() {
                Some(has) if has == want => {}
                Some(has) => {
                    return refuse(format!(
                        "{}: its memory is {}",
                        if want { "CPU-cached" } else { "uncached" },
                        if has { "cached" } else { "uncached" }
                    ))
                }
                None => {
                    return refuse(format!(
                        "{}: it does not say whether the CPU caches its memory",
                        if want { "CPU-cached" } else { "uncached" }
                    ))
                }
            }
        }
        Ok(())
    }

    /// The provider's allocator, opened on first use and kept.
    fn open(&self, p: &Provider) -> std::result::Result<Opened, ProviderReason> {
        {
            let opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, o)) = opened.iter().find(|(q, _)| q == p) {
                return Ok(o.clone());
            }
        }
        let o = match p {
            Provider::CmaHeap => {
                let nodes: Vec<String> = CMA_HEAPS
                    .iter()
                    .map(|h| format!("{DMA_HEAP_DIR}/{h}"))
                    .collect();
                let reason = nodes
                    .iter()
                    .map(|n| check_node(n, "the CMA heap"))
                    .find(|r| !matches!(r, Err(ProviderReason::NotPresent { .. })))
                    .unwrap_or_else(|| {
                        Err(ProviderReason::NotPresent {
                            what: format!(
                                "no CMA heap ({}): the kernel lacks CONFIG_DMABUF_HEAPS_CMA or has no CMA area",
                                nodes.join(", ")
                            ),
                            errno: Some(Errno::NOENT),
                        })
                    });
                reason?;
                Opened::Alloc(CmaHeapAllocator::new().map_err(|e| classify(p, e))?.into())
            }
            Provider::SystemHeap | Provider::Heap(_) => {
                let name = match p {
                    Provider::Heap(name) => name.as_str(),
                    _ => "system",
                };
                check_node(
                    &format!("{DMA_HEAP_DIR}/{name}"),
                    &format!("the {name} dma-heap"),
                )?;
                Opened::Alloc(
                    DmaHeapAllocator::get(name)
                        .map_err(|e| classify(p, e))?
                        .into(),
                )
            }
            Provider::Udmabuf => {
                check_node(UDMABUF_DEVICE, "udmabuf")?;
                Opened::Alloc(UdmabufAllocator::get().map_err(|e| classify(p, e))?.into())
            }
            Provider::DrmDumb => Opened::Drm(open_drm()?),
            Provider::HugePage => {
                Opened::Alloc(HugePageAllocator::get().map_err(|e| classify(p, e))?)
            }
            Provider::Memfd => Opened::Alloc(ShmAllocator::get().into()),
        };
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        opened.push((p.clone(), o.clone()));
        Ok(o)
    }
}

/// Whether a device node can be opened read-write, and if not, why.
fn check_node(path: &str, what: &str) -> std::result::Result<(), ProviderReason> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(_) => Ok(()),
        Err(e @ (Errno::NOENT | Errno::NODEV | Errno::NXIO | Errno::NOTDIR)) => {
            Err(ProviderReason::NotPresent {
                what: format!("{what} ({path}): the kernel lacks it or its module is not loaded"),
                errno: Some(e),
            })
        }
        Err(e @ (Errno::ACCESS | Errno::PERM)) => Err(no_permission(path, e)),
        Err(e) => Err(ProviderReason::Failed {
            message: format!("opening {what} ({path})"),
            errno: Some(e),
        }),
    }
}

/// A permission refusal with the node's owner, group, mode and the fix.
fn no_permission(path: &str, errno: Errno) -> ProviderReason {
    let (uid, gid, mode) = rustix::fs::stat(path)
        .map(|st| (st.st_uid, st.st_gid, st.st_mode & 0o7777))
        .unwrap_or((0, 0, 0));
    let owner = id_name("/etc/passwd", uid);
    let group = id_name("/etc/group", gid);
    let rule = if path.starts_with(DMA_HEAP_DIR) {
        let node = Path::new(path)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        format!("SUBSYSTEM==\"dma_heap\", KERNEL==\"{node}\"")
    } else if path.starts_with("/dev/dri/") {
        "SUBSYSTEM==\"drm\", KERNEL==\"card*\"".to_owned()
    } else {
        "KERNEL==\"udmabuf\"".to_owned()
    };
    let fix = if gid != 0 && mode & 0o060 == 0o060 {
        format!("add the user to group {group} (usermod -aG {group} <user>, then log in again)")
    } else {
        format!(
            "give a group access with a udev rule, e.g. in /etc/udev/rules.d/70-mediamem.rules: \
             {rule}, GROUP=\"video\", MODE=\"0660\" (then add the user to group video)"
        )
    };
    ProviderReason::NoPermission {
        path: path.to_owned(),
        owner,
        group,
        mode,
        errno,
        fix,
    }
}

/// The name of user or group `id` from `/etc/passwd` or `/etc/group`, or
/// the number.
fn id_name(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let found: u32 = fields.nth(1)?.parse().ok()?;
                (found == id).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

/// The first DRM card with dumb buffers and PRIME export.
fn open_drm() -> std::result::Result<DrmDumbAllocator, ProviderReason> {
    let devices = crate::drm::list_devices();
    if let Some(d) = devices.iter().find(|d| d.dumb && d.prime_export) {
        return DrmDumbAllocator::new_with_device_path(&d.path)
            .map_err(|e| classify(&Provider::DrmDumb, e));
    }
    // None usable: a card this user may not open is the likeliest fix.
    for d in &devices {
        if let Err(reason @ ProviderReason::NoPermission { .. }) =
            check_node(&d.path.to_string_lossy(), "a DRM card")
        {
            return Err(reason);
        }
    }
    Err(ProviderReason::NotPresent {
        what: if devices.is_empty() {
            "no DRM card (/dev/dri/card*)".to_owned()
        } else {
            format!(
                "no DRM card with dumb buffers and PRIME export among {}",
                devices
                    .iter()
                    .map(|d| d.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        errno: None,
    })
}

/// Width in bytes of the dumb buffers the DRM provider makes (rows of
/// 8-bit pixels; every driver accepts 4096).
const DRM_ROW: usize = 4096;

/// A dumb buffer of at least the block's size, exported as a dma-buf
/// whose visible region is the caller's (`prefix`, `size`).
fn drm_alloc(drm: &DrmDumbAllocator, size: usize, params: &AllocationParams) -> Result<Memory> {
    let total = crate::kind::page_rounded_maxsize(size, params)?;
    let rows = u32::try_from(total.div_ceil(DRM_ROW).max(1)).map_err(|_| Error::TooLarge {
        what: "DRM dumb buffer rows",
        requested: total,
        limit: u32::MAX as usize * DRM_ROW,
    })?;
    let (dumb, _pitch) = drm.alloc(fourcc(*b"R8  "), DRM_ROW as u32, rows)?;
    // The dma-buf keeps the buffer object alive once the dumb handle goes.
    let exported = drm_dumb_memory_export_dmabuf(&dumb)?;
    drop(dumb);
    exported.resize(params.prefix..params.prefix + size)?;
    Ok(exported)
}

/// A provider's failure as a reason: ENOMEM is exhaustion; a missing or
/// closed node keeps its own words.
fn classify(provider: &Provider, e: Error) -> ProviderReason {
    let what = match provider {
        Provider::CmaHeap => "the CMA heap".to_owned(),
        Provider::SystemHeap => "the system heap".to_owned(),
        Provider::Heap(name) => format!("the {name} heap"),
        Provider::Udmabuf => "udmabuf's memfd".to_owned(),
        Provider::DrmDumb => "the DRM device's memory".to_owned(),
        Provider::HugePage => "the huge page pool".to_owned(),
        Provider::Memfd => "shared memory".to_owned(),
    };
    match e {
        Error::OutOfMemory { .. } => ProviderReason::Exhausted {
            what,
            errno: Errno::NOMEM,
        },
        Error::Exhausted { errno, .. } => ProviderReason::Exhausted { what, errno },
        e if matches!(e.errno(), Some(Errno::NOMEM | Errno::NOSPC)) => ProviderReason::Exhausted {
            errno: e.errno().unwrap_or(Errno::NOMEM),
            what,
        },
        Error::NotAvailable { what, reason } => ProviderReason::NotPresent {
            what: format!("{what}: {reason}"),
            errno: None,
        },
        e => ProviderReason::Failed {
            errno: e.errno(),
            message: e.to_string(),
        },
    }
}

/// Refuse memory with a page above `max`, or whose frames this process
/// cannot read.
fn check_below(mem: &Memory, max: u64) -> std::result::Result<(), ProviderReason> {
    let refuse = |why: String| ProviderReason::Refused {
        constraint: format!("max_phys_addr {max:#x}: {why}"),
    };
    let map = mem
        .map_readable()
        .map_err(|e| refuse(format!("cannot map it to check: {e}")))?;
    let page = rustix::param::page_size();
    // Fault every page in; pagemap reports resident pages only.
    let mut sum = 0u8;
    for i in (0..map.len()).step_by(page) {
        sum ^= map[i];
    }
    std::hint::black_box(sum);
    let frames = page_frames(map.as_ptr() as usize, map.len())
        .map_err(|e| refuse(format!("its physical addresses cannot be checked: {e}")))?;
    let page = page as u64;
    match frames
        .iter()
        .map(|&pfn| pfn.saturating_mul(page).saturating_add(page - 1))
        .max()
    {
        Some(last) if last > max => {
            Err(refuse(format!("a page ends at physical address {last:#x}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Provider::DEFAULT_ORDER
            .iter()
            .cloned()
            .chain([Provider::HugePage, Provider::Heap("vendor,x".into())])
        {
            assert_eq!(Provider::parse(&p.name()).unwrap(), p);
        }
        assert_eq!(
            Provider::parse("heap:system").unwrap(),
            Provider::SystemHeap
        );
        for bad in ["", "heap:", "heap:../x", "cma", "heap:a/b"] {
            assert!(
                matches!(Provider::parse(bad), Err(Error::InvalidConfig { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lists_parse_and_refuse_duplicates_and_emptiness() {
        assert_eq!(
            Provider::parse_list(" udmabuf , memfd,").unwrap(),
            vec![Provider::Udmabuf, Provider::Memfd]
        );
        assert!(Provider::parse_list("memfd,memfd").is_err());
        assert!(Provider::parse_list(" , ").is_err());
        assert!(Provider::parse_list("memfd,nope").is_err());
    }

    #[test]
    fn properties_follow_the_table() {
        use Provider::*;
        let dmabuf: Vec<bool> = [CmaHeap, SystemHeap, Udmabuf, DrmDumb, HugePage, Memfd]
            .iter()
            .map(Provider::is_dmabuf)
            .collect();
        assert_eq!(dmabuf, [true, true, true, true, false, false]);
        assert!(CmaHeap.is_contiguous() && HugePage.is_contiguous());
        assert!(!SystemHeap.is_contiguous() && !DrmDumb.is_contiguous());
        assert_eq!(Heap("system-uncached".into()).is_cached(), Some(false));
        assert_eq!(DrmDumb.is_cached(), None);
    }

    #[test]
    fn ids_resolve_to_names() {
        assert_eq!(id_name("/etc/passwd", 0), "root");
        assert_eq!(id_name("/etc/group", 0), "root");
        assert_eq!(id_name("/etc/passwd", 4_000_000_000), "4000000000");
    }
}
