//! The nine functions of `GstAllocators`, with the seed's names and return
//! conventions: fds and handles stay owned by the memory; "none" is -1 for
//! an fd and 0 for a handle or a physical address.

use std::os::fd::AsRawFd;

use pyo3::prelude::*;

use crate::errors::IntoPy;
use crate::memory::PyMemory;

/// The file descriptor of dma-buf memory `mem`, or -1. The fd is still
/// owned by the memory: `os.dup` it (or use `mem.dup_fd()`) to keep it
/// beyond the memory's life.
#[pyfunction]
pub fn dmabuf_memory_get_fd(mem: &Bound<'_, PyMemory>) -> i32 {
    mediamem::dmabuf_memory_get_fd(mem.get().mem()).map_or(-1, |fd| fd.as_raw_fd())
}

/// Export the DRM dumb buffer of `mem` as a dma-buf: a new memory of the
/// dma-buf allocator wrapping the exported fd (see
/// `DRMDumbAllocator.has_prime_export()`). Raises WrongKindError for
/// memory that is not DRM dumb memory.
#[pyfunction]
pub fn drm_dumb_memory_export_dmabuf(
    py: Python<'_>,
    mem: &Bound<'_, PyMemory>,
) -> PyResult<Py<PyMemory>> {
    let m = mem.get().mem();
    let exported = py
        .allow_threads(|| mediamem::drm_dumb_memory_export_dmabuf(m))
        .py()?;
    PyMemory::new_py(py, exported)
}

/// The DRM buffer object handle of `mem`, or 0. The handle is still owned
/// by the memory.
#[pyfunction]
pub fn drm_dumb_memory_get_handle(mem: &Bound<'_, PyMemory>) -> u32 {
    mediamem::drm_dumb_memory_get_handle(mem.get().mem()).map_or(0, |h| h.0)
}

/// The fd of `mem`, or -1 when it has none (`is_fd_memory` says whether
/// it has one). The fd is still owned by the memory.
#[pyfunction]
pub fn fd_memory_get_fd(mem: &Bound<'_, PyMemory>) -> i32 {
    mediamem::fd_memory_get_fd(mem.get().mem()).map_or(-1, |fd| fd.as_raw_fd())
}

/// Whether `mem` is dma-buf memory.
#[pyfunction]
pub fn is_dmabuf_memory(mem: &Bound<'_, PyMemory>) -> bool {
    mediamem::is_dmabuf_memory(mem.get().mem())
}

/// Whether `mem` is DRM dumb memory.
#[pyfunction]
pub fn is_drm_dumb_memory(mem: &Bound<'_, PyMemory>) -> bool {
    mediamem::is_drm_dumb_memory(mem.get().mem())
}

/// Whether `mem` has an fd that `fd_memory_get_fd` returns.
#[pyfunction]
pub fn is_fd_memory(mem: &Bound<'_, PyMemory>) -> bool {
    mediamem::is_fd_memory(mem.get().mem())
}

/// Whether `mem` is backed by physically contiguous memory with a known
/// address.
#[pyfunction]
pub fn is_phys_memory(mem: &Bound<'_, PyMemory>) -> bool {
    mediamem::is_phys_memory(mem.get().mem())
}

/// The physical address backing `mem`, or 0 if none.
#[pyfunction]
pub fn phys_memory_get_phys_addr(mem: &Bound<'_, PyMemory>) -> u64 {
    mediamem::phys_memory_get_phys_addr(mem.get().mem()).unwrap_or(0)
}
