//! `MemoryPool`: a bounded pool of recycled memories.

use std::time::Duration;

use mediamem::pool::MemoryPool;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::allocators::PyAllocator;
use crate::errors::IntoPy;
use crate::memory::{PyAllocationParams, PyMemory};

/// `seconds` as a Duration; negative, NaN or infinite values are refused.
pub fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("{seconds} is not a timeout in seconds")))
}

/// A bounded pool of `size`-byte memories from `allocator`: `min` made
/// now, at most `max` alive. A memory from `acquire()` goes back to the
/// pool when it and every share of it are gone (also when it travelled to
/// another process through an IPC `Sender` and was released there).
#[pyclass(module = "mediamem", name = "MemoryPool", frozen)]
pub struct PyMemoryPool {
    p: MemoryPool,
}

#[pymethods]
impl PyMemoryPool {
    #[new]
    #[pyo3(signature = (allocator, size, min = 0, max = 4, params = None))]
    fn py_new(
        py: Python<'_>,
        allocator: &Bound<'_, PyAllocator>,
        size: usize,
        min: usize,
        max: usize,
        params: Option<PyRef<'_, PyAllocationParams>>,
    ) -> PyResult<Self> {
        let a = allocator.get().a.clone();
        let params = params.map(|p| p.params());
        let p = py
            .allow_threads(|| MemoryPool::new(a, size, params.as_ref(), min, max))
            .py()?;
        Ok(PyMemoryPool { p })
    }

    /// A memory: at once (PoolExhaustedError when all `max` are in use),
    /// or waiting up to `timeout` seconds for one to come back (the GIL
    /// is released while waiting).
    #[pyo3(signature = (timeout = None))]
    fn acquire(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyMemory>> {
        let m = match timeout {
            None => self.p.acquire(),
            Some(t) => {
                let t = duration(t)?;
                py.allow_threads(|| self.p.acquire_timeout(t))
            }
        }
        .py()?;
        PyMemory::pooled(py, m)
    }

    /// The memories' size.
    #[getter]
    fn size(&self) -> Option<usize> {
        self.p.size()
    }

    /// The most memories alive at once.
    #[getter]
    fn max(&self) -> usize {
        self.p.max()
    }

    /// Memories waiting in the pool.
    #[getter]
    fn free_count(&self) -> usize {
        self.p.free_count()
    }

    /// Memories handed out and not yet back.
    #[getter]
    fn outstanding(&self) -> usize {
        self.p.outstanding()
    }

    fn __repr__(&self) -> String {
        format!(
            "<mediamem.MemoryPool size={} max={} outstanding={}>",
            self.p.size().map_or("varying".into(), |s| s.to_string()),
            self.p.max(),
            self.p.outstanding()
        )
    }
}
