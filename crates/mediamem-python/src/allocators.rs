//! `Allocator` and the allocators of GstAllocators, as Python classes that
//! extend it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use mediamem::{
    heap, phys::CmaHeapAllocator, Allocator, DmaBufAllocator, DmaHeapAllocator, DrmDumbAllocator,
    FdAllocator, FdMemoryFlags, HugePageAllocator, Memory, ShmAllocator, UdmabufAllocator,
};
use pyo3::prelude::*;
use pyo3::PyClassInitializer;

use crate::errors::IntoPy;
use crate::memory::{PyAllocationParams, PyMemory};
use crate::sys;

/// An allocator (`Gst.Allocator`). `Allocator.find(name)` looks one up in
/// the registry ("SystemMemory", "fd", "dmabuf", "shm", "udmabuf", ...;
/// None: the default); `alloc(size, params)` allocates. The kinds of
/// GstAllocators are subclasses.
#[pyclass(module = "mediamem", name = "Allocator", subclass, frozen)]
pub struct PyAllocator {
    pub a: Allocator,
}

fn base(a: &Allocator) -> PyClassInitializer<PyAllocator> {
    PyClassInitializer::from(PyAllocator { a: a.clone() })
}

/// `a` as an object of its most specific Python class.
pub fn wrap(py: Python<'_>, a: Allocator) -> PyResult<PyObject> {
    macro_rules! try_kind {
        ($($rust:ident => $py:ident),*) => {
            $(if let Some(t) = $rust::from_allocator(a.clone()) {
                return Ok(Py::new(py, base(&a).add_subclass($py { a: t }))?.into_any());
            })*
        };
    }
    try_kind!(
        FdAllocator => PyFdAllocator,
        DmaBufAllocator => PyDmaBufAllocator,
        ShmAllocator => PyShmAllocator,
        DrmDumbAllocator => PyDrmDumbAllocator,
        UdmabufAllocator => PyUdmabufAllocator,
        DmaHeapAllocator => PyDmaHeapAllocator,
        HugePageAllocator => PyHugePageAllocator,
        CmaHeapAllocator => PyCmaHeapAllocator
    );
    Ok(Py::new(py, PyAllocator { a })?.into_any())
}

fn fd_flags(flags: u32) -> FdMemoryFlags {
    FdMemoryFlags::from_bits_retain(flags)
}

/// The dma-buf filesystem's magic (`DMA_BUF_MAGIC`).
const DMA_BUF_MAGIC: i64 = 0x444d_4142;

/// Import the caller's `fd` with `import` (fd and dma-buf allocators), as
/// GStreamer does: the memory takes `fd` over (its number is the memory's
/// fd), unless `DONT_CLOSE` asks for a duplicate and leaves `fd` the
/// caller's. The import is first made of a duplicate, so that an error
/// leaves the caller's fd open and the caller's; only then is `fd` taken.
fn import_fd(
    py: Python<'_>,
    fd: i64,
    flags: u32,
    import: impl Fn(OwnedFd, FdMemoryFlags) -> mediamem::Result<Memory> + Send + Sync,
) -> PyResult<Py<PyMemory>> {
    let flags = fd_flags(flags);
    let keep = flags.contains(FdMemoryFlags::DONT_CLOSE);
    let flags = flags - FdMemoryFlags::DONT_CLOSE;
    let dup = sys::dup_fd(fd)?;
    let flags = guarded(dup.as_fd(), flags);
    let m = py.allow_threads(|| import(dup, flags));
    let m = if keep {
        m
    } else {
        drop(m.py()?);
        let owned = sys::take_fd(fd)?;
        py.allow_threads(|| import(owned, flags))
    };
    PyMemory::new_py(py, m.py()?)
}

/// `flags`, plus `GUARD_SIGBUS` unless the file cannot shrink under a
/// mapping: a real dma-buf, or a memfd sealed with `F_SEAL_SHRINK`. From
/// Python, a file truncated by anyone (`os.ftruncate` on the fd's number
/// is enough) must not kill the interpreter with SIGBUS: the guard turns
/// its vanished pages into zeros and the next map into TruncatedError.
// `f_type`'s type differs between architectures: the cast is needed off x86-64.
#[allow(clippy::unnecessary_cast)]
fn guarded(fd: BorrowedFd<'_>, flags: FdMemoryFlags) -> FdMemoryFlags {
    let sealed =
        rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(rustix::fs::SealFlags::SHRINK));
    let dmabuf = rustix::fs::fstatfs(fd).is_ok_and(|s| s.f_type as i64 == DMA_BUF_MAGIC);
    if sealed || dmabuf {
        flags
    } else {
        flags | FdMemoryFlags::GUARD_SIGBUS
    }
}

#[pymethods]
impl PyAllocator {
    /// The allocator registered as `name`, the default one for None, or
    /// None when there is none (`gst_allocator_find`).
    #[staticmethod]
    #[pyo3(signature = (name = None))]
    fn find(py: Python<'_>, name: Option<&str>) -> PyResult<Option<PyObject>> {
        Allocator::find(name).map(|a| wrap(py, a)).transpose()
    }

    /// Register `allocator` as `name` (`gst_allocator_register`).
    #[staticmethod]
    fn register(name: &str, allocator: &Bound<'_, PyAllocator>) {
        Allocator::register(name, allocator.get().a.clone());
    }

    /// Make `allocator` the default one (`gst_allocator_set_default`).
    #[staticmethod]
    fn set_default(allocator: &Bound<'_, PyAllocator>) {
        Allocator::set_default(allocator.get().a.clone());
    }

    /// Allocate `size` visible bytes with `params` (`gst_allocator_alloc`).
    /// Releases the GIL.
    #[pyo3(signature = (size, params = None))]
    fn alloc(
        &self,
        py: Python<'_>,
        size: usize,
        params: Option<PyRef<'_, PyAllocationParams>>,
    ) -> PyResult<Py<PyMemory>> {
        let params = params.map(|p| p.params());
        let m = py
            .allow_threads(|| self.a.alloc(size, params.as_ref()))
            .py()?;
        PyMemory::new_py(py, m)
    }

    /// The memory type of the allocator's memories.
    #[getter]
    fn mem_type(&self) -> String {
        self.a.mem_type().to_owned()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .downcast::<PyAllocator>()
            .is_ok_and(|o| o.get().a.ptr_eq(&self.a))
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.a.mem_type().hash(&mut h);
        h.finish()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        Ok(format!(
            "<mediamem.{} mem_type={:?}>",
            slf.get_type().name()?,
            slf.get().a.mem_type()
        ))
    }
}

/// Wraps file descriptors as memory (`GstAllocators.FdAllocator`).
#[pyclass(module = "mediamem", name = "FdAllocator", extends = PyAllocator, frozen)]
pub struct PyFdAllocator {
    a: FdAllocator,
}

fn fd_init() -> PyClassInitializer<PyFdAllocator> {
    let a = FdAllocator::new();
    base(&a).add_subclass(PyFdAllocator { a })
}

#[pymethods]
impl PyFdAllocator {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        fd_init()
    }

    /// A new fd allocator (`gst_fd_allocator_new`).
    #[staticmethod]
    fn new(py: Python<'_>) -> PyResult<Py<Self>> {
        Py::new(py, fd_init())
    }

    /// Wrap `size` bytes of `fd` (`gst_fd_allocator_alloc`). When the call
    /// succeeds the memory has taken `fd` over (its number is the
    /// memory's fd) and closes it when freed, as in GStreamer; when it
    /// raises, `fd` is still yours. With `FdMemoryFlags.DONT_CLOSE` the
    /// memory wraps a duplicate and `fd` stays yours.
    /// `FdMemoryFlags.KEEP_MAPPED` keeps it mapped after the first map.
    /// A file that can shrink (anything but a memfd sealed with
    /// F_SEAL_SHRINK or a real dma-buf) is mapped under a SIGBUS guard
    /// (`FdMemoryFlags.GUARD_SIGBUS`): if it is truncated, its pages read
    /// as zeros and the next map raises TruncatedError, instead of the
    /// interpreter dying.
    #[pyo3(signature = (fd, size, flags = 0))]
    fn alloc(&self, py: Python<'_>, fd: i64, size: usize, flags: u32) -> PyResult<Py<PyMemory>> {
        self.alloc_full(py, fd, size, 0, size, flags)
    }

    /// Wrap `maxsize` bytes of `fd` of which `size` at `offset` are
    /// visible (`gst_fd_allocator_alloc_full`); fd ownership as `alloc`.
    #[pyo3(signature = (fd, maxsize, offset, size, flags = 0))]
    fn alloc_full(
        &self,
        py: Python<'_>,
        fd: i64,
        maxsize: usize,
        offset: usize,
        size: usize,
        flags: u32,
    ) -> PyResult<Py<PyMemory>> {
        import_fd(py, fd, flags, |fd, flags| {
            self.a.alloc_full(fd, maxsize, offset, size, flags)
        })
    }
}

/// Wraps dma-buf fds as memory (`GstAllocators.DmaBufAllocator`).
#[pyclass(module = "mediamem", name = "DmaBufAllocator", extends = PyAllocator, frozen)]
pub struct PyDmaBufAllocator {
    a: DmaBufAllocator,
}

fn dmabuf_init() -> PyClassInitializer<PyDmaBufAllocator> {
    let a = DmaBufAllocator::new();
    base(&a).add_subclass(PyDmaBufAllocator { a })
}

#[pymethods]
impl PyDmaBufAllocator {
    #[new]
    fn py_new() -> PyClassInitializer<Self> {
        dmabuf_init()
    }

    /// A new dma-buf allocator (`gst_dmabuf_allocator_new`).
    #[staticmethod]
    fn new(py: Python<'_>) -> PyResult<Py<Self>> {
        Py::new(py, dmabuf_init())
    }

    /// Wrap `size` bytes of the dma-buf `fd` (`gst_dmabuf_allocator_alloc`);
    /// the memory takes `fd` over, and a file that is not a real dma-buf
    /// and can shrink is guarded, as in `FdAllocator.alloc`.
    fn alloc(&self, py: Python<'_>, fd: i64, size: usize) -> PyResult<Py<PyMemory>> {
        self.alloc_with_flags(py, fd, size, 0)
    }

    /// As `alloc`, with `FdMemoryFlags` (`DONT_CLOSE`: a duplicate is
    /// wrapped and `fd` stays yours).
    fn alloc_with_flags(
        &self,
        py: Python<'_>,
        fd: i64,
        size: usize,
        flags: u32,
    ) -> PyResult<Py<PyMemory>> {
        import_fd(py, fd, flags, |fd, flags| {
            self.a.alloc_with_flags(fd, size, flags)
        })
    }
}

/// Shared memory: sealed memfds another process can map
/// (`GstAllocators.ShmAllocator`, "shm"). Allocate with `alloc(size,
/// params)`.
#[pyclass(module = "mediamem", name = "ShmAllocator", extends = PyAllocator, frozen)]
pub struct PyShmAllocator {
    // The typed handle, kept as the other kinds keep theirs (for methods
    // to come); `Allocator.alloc` is all these two need today.
    #[allow(dead_code)]
    a: ShmAllocator,
}

#[pymethods]
impl PyShmAllocator {
    /// The shm allocator, registered as "shm" (`gst_shm_allocator_get`).
    #[staticmethod]
    fn get(py: Python<'_>) -> PyResult<Py<Self>> {
        let a = ShmAllocator::get();
        Py::new(py, base(&a).add_subclass(PyShmAllocator { a }))
    }

    /// Register "shm" (`gst_shm_allocator_init_once`).
    #[staticmethod]
    fn init_once() {
        ShmAllocator::init_once();
    }
}

/// DRM dumb buffers (`GstAllocators.DRMDumbAllocator`).
#[pyclass(module = "mediamem", name = "DRMDumbAllocator", extends = PyAllocator, frozen)]
pub struct PyDrmDumbAllocator {
    a: DrmDumbAllocator,
}

fn dumb(py: Python<'_>, a: DrmDumbAllocator) -> PyResult<Py<PyDrmDumbAllocator>> {
    Py::new(py, base(&a).add_subclass(PyDrmDumbAllocator { a }))
}

#[pymethods]
impl PyDrmDumbAllocator {
    /// Open the DRM node at `path` (`gst_drm_dumb_allocator_new_with_device_path`).
    /// Raises NotAvailableError when it is missing or has no dumb buffers.
    #[staticmethod]
    fn new_with_device_path(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Py<Self>> {
        let a = py
            .allow_threads(|| DrmDumbAllocator::new_with_device_path(&path))
            .py()?;
        dumb(py, a)
    }

    /// Use a duplicate of the DRM fd `fd`; the caller keeps `fd`
    /// (`gst_drm_dumb_allocator_new_with_fd`).
    #[staticmethod]
    fn new_with_fd(py: Python<'_>, fd: i64) -> PyResult<Py<Self>> {
        let dup = sys::dup_fd(fd)?;
        let a = DrmDumbAllocator::new_with_fd(dup.as_fd()).py()?;
        dumb(py, a)
    }

    /// Whether dumb buffers can be exported as dma-bufs.
    fn has_prime_export(&self) -> bool {
        self.a.has_prime_export()
    }

    /// A dumb buffer for a `width` x `height` image of `drm_fourcc`
    /// (`gst_drm_dumb_allocator_alloc`): `(memory, pitch)`.
    fn alloc(
        &self,
        py: Python<'_>,
        drm_fourcc: u32,
        width: u32,
        height: u32,
    ) -> PyResult<(Py<PyMemory>, u32)> {
        let (m, pitch) = py
            .allow_threads(|| self.a.alloc(drm_fourcc, width, height))
            .py()?;
        Ok((PyMemory::new_py(py, m)?, pitch))
    }

    /// The DRM driver's name (e.g. "bochs-drm").
    #[getter]
    fn driver_name(&self) -> String {
        self.a.driver_name().to_owned()
    }

    /// The device node, when opened by path.
    #[getter]
    fn device_path(&self) -> Option<std::path::PathBuf> {
        self.a.device_path().map(|p| p.to_owned())
    }
}

/// udmabuf: dma-bufs over memfds (`GstAllocators.UdmabufAllocator`,
/// "udmabuf"). Allocate with `alloc(size, params)`.
#[pyclass(module = "mediamem", name = "UdmabufAllocator", extends = PyAllocator, frozen)]
pub struct PyUdmabufAllocator {
    // The typed handle, kept as the other kinds keep theirs (for methods
    // to come); `Allocator.alloc` is all these two need today.
    #[allow(dead_code)]
    a: UdmabufAllocator,
}

#[pymethods]
impl PyUdmabufAllocator {
    /// The udmabuf allocator (`gst_udmabuf_allocator_get`); raises
    /// NotAvailableError without /dev/udmabuf.
    #[staticmethod]
    fn get(py: Python<'_>) -> PyResult<Py<Self>> {
        let a = UdmabufAllocator::get().py()?;
        Py::new(py, base(&a).add_subclass(PyUdmabufAllocator { a }))
    }

    /// Register "udmabuf" if the device is there.
    #[staticmethod]
    fn init_once() -> PyResult<()> {
        UdmabufAllocator::init_once().py()
    }
}

/// A dma-heap (`/dev/dma_heap/NAME`).
#[pyclass(module = "mediamem", name = "DmaHeapAllocator", extends = PyAllocator, frozen)]
pub struct PyDmaHeapAllocator {
    a: DmaHeapAllocator,
}

fn heap_obj(py: Python<'_>, a: DmaHeapAllocator) -> PyResult<Py<PyDmaHeapAllocator>> {
    Py::new(py, base(&a).add_subclass(PyDmaHeapAllocator { a }))
}

#[pymethods]
impl PyDmaHeapAllocator {
    /// Open the heap `name` (e.g. "system"); NotAvailableError says why not.
    #[staticmethod]
    #[pyo3(signature = (name = "system"))]
    fn new(py: Python<'_>, name: &str) -> PyResult<Py<Self>> {
        heap_obj(py, DmaHeapAllocator::new(name).py()?)
    }

    /// The heap `name`, registered as "dmaheap:NAME".
    #[staticmethod]
    #[pyo3(signature = (name = "system"))]
    fn get(py: Python<'_>, name: &str) -> PyResult<Py<Self>> {
        heap_obj(py, DmaHeapAllocator::get(name).py()?)
    }

    /// The heaps of this machine.
    #[staticmethod]
    fn list_heaps() -> Vec<String> {
        heap::list_heaps()
    }

    /// The heap's name.
    #[getter]
    fn name(&self) -> String {
        self.a.name().to_owned()
    }
}

/// Huge page memory (memfd, mlocked, physically contiguous, with a
/// physical address), "hugepage".
#[pyclass(module = "mediamem", name = "HugePageAllocator", extends = PyAllocator, frozen)]
pub struct PyHugePageAllocator {
    a: HugePageAllocator,
}

#[pymethods]
impl PyHugePageAllocator {
    /// A huge page allocator; NotAvailableError without hugetlbfs.
    #[staticmethod]
    fn new(py: Python<'_>) -> PyResult<Py<Self>> {
        let a = HugePageAllocator::new().py()?;
        Py::new(py, base(&a).add_subclass(PyHugePageAllocator { a }))
    }

    /// The largest memory it makes (one huge page).
    #[getter]
    fn max_size(&self) -> usize {
        self.a.max_size()
    }
}

/// Physically contiguous dma-bufs from the CMA heap.
#[pyclass(module = "mediamem", name = "CmaHeapAllocator", extends = PyAllocator, frozen)]
pub struct PyCmaHeapAllocator {
    a: CmaHeapAllocator,
}

#[pymethods]
impl PyCmaHeapAllocator {
    /// The first CMA heap present; NotAvailableError otherwise.
    #[staticmethod]
    fn new(py: Python<'_>) -> PyResult<Py<Self>> {
        let a = CmaHeapAllocator::new().py()?;
        Py::new(py, base(&a).add_subclass(PyCmaHeapAllocator { a }))
    }

    /// The heap's name.
    #[getter]
    fn name(&self) -> String {
        self.a.name().to_owned()
    }
}
