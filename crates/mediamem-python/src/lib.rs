//! `mediamem` for Python: GstAllocators' Python API (PyGObject's
//! `GstAllocators` namespace) on mediamem, built with PyO3 as an abi3
//! extension module (`mediamem._mediamem`) for CPython >= 3.11. The Python
//! package around it (`python/mediamem`) arranges the names as
//! `mediamem.GstAllocators` and `mediamem.Gst`.
//!
//! Every `unsafe` operation is in `sys.rs`.

mod allocators;
mod errors;
mod functions;
mod ipc;
mod memory;
mod pool;
mod sys;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// What this machine offers: one dict per allocator kind (`name`,
/// `mem_type`, `available`, `caps`, `plain_alloc`, `fd_backed`, `dmabuf`,
/// `contiguous`, `copies_to`, `detail`), each from a real check. Releases
/// the GIL while probing.
#[pyfunction]
fn probe(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let rows = py.allow_threads(mediamem::probe::probe);
    rows.into_iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("name", r.name)?;
            d.set_item("mem_type", r.mem_type)?;
            d.set_item("available", r.available)?;
            let caps: Vec<&str> = r.caps.iter_names().map(|(n, _)| n).collect();
            d.set_item("caps", caps)?;
            d.set_item("plain_alloc", r.plain_alloc)?;
            d.set_item("fd_backed", r.fd_backed)?;
            d.set_item("dmabuf", r.dmabuf)?;
            d.set_item("contiguous", r.contiguous)?;
            d.set_item("copies_to", r.copies_to)?;
            d.set_item("detail", r.detail)?;
            Ok(d)
        })
        .collect()
}

#[pymodule]
fn _mediamem(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    let kinds = PyDict::new(m.py());
    for (kind, exc) in errors::KINDS {
        kinds.set_item(kind, m.getattr(exc)?)?;
    }
    m.add("ERROR_KINDS", kinds)?;
    m.add_class::<memory::PyMemory>()?;
    m.add_class::<memory::MapInfo>()?;
    m.add_class::<memory::Mapping>()?;
    m.add_class::<memory::PyAllocationParams>()?;
    m.add_class::<allocators::PyAllocator>()?;
    m.add_class::<allocators::PyFdAllocator>()?;
    m.add_class::<allocators::PyDmaBufAllocator>()?;
    m.add_class::<allocators::PyShmAllocator>()?;
    m.add_class::<allocators::PyDrmDumbAllocator>()?;
    m.add_class::<allocators::PyUdmabufAllocator>()?;
    m.add_class::<allocators::PyDmaHeapAllocator>()?;
    m.add_class::<allocators::PyHugePageAllocator>()?;
    m.add_class::<allocators::PyCmaHeapAllocator>()?;
    m.add_class::<pool::PyMemoryPool>()?;
    m.add_class::<ipc::PySender>()?;
    m.add_class::<ipc::PyReceiver>()?;
    m.add_class::<ipc::PyFrame>()?;
    m.add_function(wrap_pyfunction!(functions::dmabuf_memory_get_fd, m)?)?;
    m.add_function(wrap_pyfunction!(
        functions::drm_dumb_memory_export_dmabuf,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(functions::drm_dumb_memory_get_handle, m)?)?;
    m.add_function(wrap_pyfunction!(functions::fd_memory_get_fd, m)?)?;
    m.add_function(wrap_pyfunction!(functions::is_dmabuf_memory, m)?)?;
    m.add_function(wrap_pyfunction!(functions::is_drm_dumb_memory, m)?)?;
    m.add_function(wrap_pyfunction!(functions::is_fd_memory, m)?)?;
    m.add_function(wrap_pyfunction!(functions::is_phys_memory, m)?)?;
    m.add_function(wrap_pyfunction!(functions::phys_memory_get_phys_addr, m)?)?;
    m.add_function(wrap_pyfunction!(probe, m)?)?;
    m.add("ALLOCATOR_FD", mediamem::fd::ALLOCATOR_FD)?;
    m.add("ALLOCATOR_DMABUF", mediamem::dmabuf::ALLOCATOR_DMABUF)?;
    m.add(
        "CAPS_FEATURE_MEMORY_DMABUF",
        mediamem::dmabuf::CAPS_FEATURE_MEMORY_DMABUF,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
