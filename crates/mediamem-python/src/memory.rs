//! `Memory`, `MapInfo` (with the zero-copy buffer behind `MapInfo.data`) and
//! `AllocationParams`.

use std::ffi::c_int;
use std::sync::Mutex;

use mediamem::pool::PooledMemory;
use mediamem::{Dynamic, MapFlags, MappedMemory, Memory, MemoryFlags};
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyMemoryView, PyTuple};

use crate::errors::{to_py, IntoPy};
use crate::sys::{self, Export};

/// The Python flag class `name` of `mediamem._flags` (an `enum.IntFlag`).
fn flag_class<'py>(
    py: Python<'py>,
    cell: &'static GILOnceCell<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok(py.import("mediamem._flags")?.getattr(name)?.unbind())
    })
    .map(|c| c.bind(py))
}

static MEMORY_FLAGS: GILOnceCell<Py<PyAny>> = GILOnceCell::new();
static MAP_FLAGS: GILOnceCell<Py<PyAny>> = GILOnceCell::new();

/// `bits` as a `mediamem.MemoryFlags`.
pub fn memory_flags(py: Python<'_>, bits: u32) -> PyResult<PyObject> {
    Ok(flag_class(py, &MEMORY_FLAGS, "MemoryFlags")?
        .call1((bits,))?
        .unbind())
}

/// `bits` as a `mediamem.MapFlags`.
pub fn map_flags(py: Python<'_>, bits: u32) -> PyResult<PyObject> {
    Ok(flag_class(py, &MAP_FLAGS, "MapFlags")?
        .call1((bits,))?
        .unbind())
}

/// A memory handle: an ordinary one, or one out of a pool (which goes back
/// to its pool when the last Python reference and every share are gone).
pub enum Handle {
    Plain(Memory),
    Pooled(PooledMemory),
}

/// A memory (`Gst.Memory`): a view `[offset, offset + size)` of a block of
/// `maxsize` bytes. Map it with `map(flags)`; share, copy and resize it as
/// in GStreamer. fd-backed memories keep their fd: use `dup_fd()` for one of
/// your own.
#[pyclass(module = "mediamem", name = "Memory", frozen)]
pub struct PyMemory {
    h: Handle,
}

impl PyMemory {
    /// The library memory.
    pub fn mem(&self) -> &Memory {
        match &self.h {
            Handle::Plain(m) => m,
            Handle::Pooled(p) => p,
        }
    }

    /// A Python memory for `m`.
    pub fn new_py(py: Python<'_>, m: Memory) -> PyResult<Py<PyMemory>> {
        Py::new(
            py,
            PyMemory {
                h: Handle::Plain(m),
            },
        )
    }

    /// A Python memory for a pooled memory.
    pub fn pooled(py: Python<'_>, m: PooledMemory) -> PyResult<Py<PyMemory>> {
        Py::new(
            py,
            PyMemory {
                h: Handle::Pooled(m),
            },
        )
    }
}

/// GStreamer's (offset, size) with size -1 for "to the end", relative to
/// the visible bytes, as a range of the whole block (`0..maxsize`).
fn block_range(m: &Memory, offset: isize, size: isize) -> PyResult<(usize, usize)> {
    let (now_size, now_offset, _) = m.sizes();
    let start = now_offset
        .checked_add_signed(offset)
        .ok_or_else(|| PyValueError::new_err(format!("offset {offset} is before the block")))?;
    let end = match size {
        -1 => (now_offset + now_size).max(start),
        s if s < 0 => {
            return Err(PyValueError::new_err(format!(
                "size {s} is negative (only -1, \"to the end\", is allowed)"
            )))
        }
        s => start.checked_add(s as usize).ok_or_else(|| {
            to_py(mediamem::Error::SizeOverflow {
                what: "offset + size",
            })
        })?,
    };
    Ok((start, end))
}

#[pymethods]
impl PyMemory {
    /// The visible size in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.mem().size()
    }

    /// The offset of the visible bytes in the block.
    #[getter]
    fn offset(&self) -> usize {
        self.mem().offset()
    }

    /// The size of the whole block.
    #[getter]
    fn maxsize(&self) -> usize {
        self.mem().maxsize()
    }

    /// The block's alignment mask (bytes - 1).
    #[getter]
    fn align(&self) -> usize {
        self.mem().align()
    }

    /// The memory's flags (`MemoryFlags`).
    #[getter]
    fn flags(&self, py: Python<'_>) -> PyResult<PyObject> {
        memory_flags(py, self.mem().flags().bits())
    }

    /// The allocator that made the block.
    #[getter]
    fn allocator(&self, py: Python<'_>) -> PyResult<PyObject> {
        crate::allocators::wrap(py, self.mem().allocator().clone())
    }

    /// The memory this one shares, or None for a root.
    #[getter]
    fn parent(&self, py: Python<'_>) -> PyResult<Option<Py<PyMemory>>> {
        self.mem()
            .parent()
            .map(|p| PyMemory::new_py(py, p.clone()))
            .transpose()
    }

    /// The memory type string (e.g. "SystemMemory", "fd", "dmabuf").
    #[getter]
    fn mem_type(&self) -> String {
        self.mem().allocator().mem_type().to_owned()
    }

    /// The raw lock word (GStreamer's `mini_object.lockstate`).
    #[getter]
    fn lock_state(&self) -> u32 {
        self.mem().lock_state()
    }

    /// `(size, offset, maxsize)` (`gst_memory_get_sizes`).
    fn get_sizes(&self) -> (usize, usize, usize) {
        self.mem().sizes()
    }

    /// Whether the memory's type is `mem_type`.
    fn is_type(&self, mem_type: &str) -> bool {
        self.mem().is_type(mem_type)
    }

    /// Whether the memory may be mapped for writing now (not read-only,
    /// not shared).
    fn is_writable(&self) -> bool {
        self.mem().is_writable()
    }

    /// A zero-copy, read-only view of `size` bytes at `offset` of the
    /// visible bytes (`size=-1`: to the end); `offset` may be negative to
    /// reach into the prefix (`gst_memory_share`).
    #[pyo3(signature = (offset = 0, size = -1), text_signature = "($self, /, offset=0, size=-1)")]
    fn share(&self, py: Python<'_>, offset: isize, size: isize) -> PyResult<Py<PyMemory>> {
        let m = self.mem();
        let shared = if offset == 0 && size == -1 {
            m.share(..)
        } else {
            let (s, e) = block_range(m, offset, size)?;
            m.share_maxsize(s..e)
        };
        PyMemory::new_py(py, shared.py()?)
    }

    /// A writable copy of `size` bytes at `offset` (`size=-1`: to the
    /// end), in new memory (`gst_memory_copy`). Releases the GIL.
    #[pyo3(signature = (offset = 0, size = -1), text_signature = "($self, /, offset=0, size=-1)")]
    fn copy(&self, py: Python<'_>, offset: isize, size: isize) -> PyResult<Py<PyMemory>> {
        let m = self.mem();
        let (s, e) = block_range(m, offset, size)?;
        let copied = py.allow_threads(|| m.copy_range_maxsize(s..e)).py()?;
        PyMemory::new_py(py, copied)
    }

    /// Move the offset by `offset` (may be negative) and set the size
    /// (`gst_memory_resize`).
    fn resize(&self, offset: isize, size: usize) -> PyResult<()> {
        self.mem().resize_by(offset, size).py()
    }

    /// `(True, offset)` when this memory and `mem2` are adjacent shares of
    /// one block (offset: this one's in its parent), else `(False, 0)`.
    fn is_span(&self, mem2: &Bound<'_, PyMemory>) -> (bool, usize) {
        match self.mem().is_span(mem2.get().mem()) {
            Some(o) => (true, o),
            None => (false, 0),
        }
    }

    /// Map the memory (`MapFlags.READ`, `WRITE` or both) and return a
    /// `MapInfo` whose `.data` is a zero-copy memoryview of the visible
    /// bytes. Use it as a context manager; it unmaps when the block ends
    /// (or with `unmap(info)`). For GStreamer's tuple style,
    /// `ok, info = mem.map(flags)` works too. Errors raise (ReadOnlyError,
    /// LockConflictError, AliasedError, MapFailedError, ...). The GIL is
    /// released while memory other than system memory is mapped (an
    /// mmap, a dma-buf sync that may wait for a device).
    fn map(slf: &Bound<'_, Self>, flags: u32) -> PyResult<MapInfo> {
        let py = slf.py();
        let flags = MapFlags::from_bits_retain(flags);
        let mem = slf.get().mem().clone();
        // System memory maps in nanoseconds; other kinds may mmap, or wait
        // for a device in DMA_BUF_IOCTL_SYNC: without the GIL.
        let mapped = if mem.is_type(mediamem::ALLOCATOR_SYSMEM) {
            mem.into_mapped(flags)
        } else {
            py.allow_threads(|| mem.into_mapped(flags))
        };
        let mut mapped = mapped.map_err(|e| to_py(e.into()))?;
        let len = mapped.size();
        let (ptr, readonly) = match mapped.as_mut_slice() {
            Some(s) => (s.as_mut_ptr(), false),
            None => (mapped.as_slice().as_ptr() as *mut u8, true),
        };
        let maxsize = mapped.memory().maxsize();
        let mapping = Py::new(
            py,
            Mapping {
                export: Export {
                    ptr,
                    readonly,
                    dims: Box::new([len as isize, 1]),
                },
                state: Mutex::new(MapState {
                    guard: Some(mapped),
                    exports: 0,
                    closing: false,
                }),
            },
        )?;
        Ok(MapInfo {
            memory: Some(slf.clone().unbind()),
            flags: flags.bits(),
            size: len,
            maxsize,
            data: None,
            mapping: Some(mapping),
        })
    }

    /// Unmap `info` (the end of its `with` block does this for you).
    fn unmap(slf: &Bound<'_, Self>, info: &Bound<'_, MapInfo>) -> PyResult<bool> {
        let mut info = info.try_borrow_mut()?;
        if info
            .memory
            .as_ref()
            .is_some_and(|m| !m.bind(slf.py()).is(slf))
        {
            return Err(PyValueError::new_err("this MapInfo maps another memory"));
        }
        info.end(slf.py())?;
        Ok(true)
    }

    /// A new fd (close-on-exec) for the memory's file, which the caller
    /// owns and must close. Raises WrongKindError for memory without fd.
    fn dup_fd(&self) -> PyResult<i64> {
        use std::os::fd::IntoRawFd;
        Ok(i64::from(self.mem().try_clone_fd().py()?.into_raw_fd()))
    }

    fn __len__(&self) -> usize {
        self.mem().size()
    }

    fn __repr__(&self) -> String {
        let m = self.mem();
        let (size, offset, maxsize) = m.sizes();
        format!(
            "<mediamem.Memory {} size={size} offset={offset} maxsize={maxsize} flags={:#x}>",
            m.allocator().mem_type(),
            m.flags().bits()
        )
    }
}

struct MapState {
    guard: Option<MappedMemory<Dynamic>>,
    exports: usize,
    closing: bool,
}

/// The exporter behind `MapInfo.data`: holds the mapping while any buffer
/// export (a memoryview, a numpy array) is alive.
#[pyclass(module = "mediamem", name = "_Mapping", frozen)]
pub struct Mapping {
    export: Export,
    state: Mutex<MapState>,
}

impl Mapping {
    fn state(&self) -> std::sync::MutexGuard<'_, MapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// End the map: unmap now if nothing exports the bytes, else when the
    /// last export is released. Returns whether it unmapped now.
    fn close(&self) -> bool {
        let guard = {
            let mut st = self.state();
            st.closing = true;
            if st.exports == 0 {
                st.guard.take()
            } else {
                None
            }
        };
        guard.is_some()
    }
}

#[pymethods]
impl Mapping {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        let mut st = me.state();
        if st.closing || st.guard.is_none() {
            let err = PyBufferError::new_err("the map has ended: map the memory again");
            // SAFETY: `view` is Python's (this is bf_getbuffer).
            return Err(unsafe { sys::refuse(view, err) });
        }
        // SAFETY: `view` is Python's; the mapping stays in `state.guard`
        // until `exports` is back to 0 (see __releasebuffer__ and close).
        unsafe { sys::fill_view(view, flags, &me.export, slf.clone().into_any())? };
        st.exports += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let guard = {
            let mut st = self.state();
            st.exports = st.exports.saturating_sub(1);
            if st.closing && st.exports == 0 {
                st.guard.take()
            } else {
                None
            }
        };
        drop(guard);
    }

    /// Whether the bytes are still mapped.
    #[getter]
    fn mapped(&self) -> bool {
        self.state().guard.is_some()
    }
}

/// A map of a memory (`Gst.MapInfo`), from `Memory.map(flags)`.
///
/// `data` is a memoryview of the visible bytes, without a copy: writable
/// when mapped with `MapFlags.WRITE`, read-only otherwise. Use the map as
/// a context manager (or call `memory.unmap(info)`): at the end `data` is
/// released and becomes None, and the memory is unmapped. Views taken from
/// `data` that are still alive then (a `numpy.frombuffer` array, a slice)
/// keep the bytes mapped, and the memory locked, until they are released
/// or collected: they stay valid and never dangle. `memoryview(info)` gives
/// another view over the same bytes. `memory` is None after the end, so a
/// MapInfo kept around does not keep its memory alive.
#[pyclass(module = "mediamem", name = "MapInfo")]
pub struct MapInfo {
    /// The memory, until the map ends (a MapInfo kept after its block must
    /// not keep a pooled memory from going back).
    memory: Option<Py<PyMemory>>,
    flags: u32,
    size: usize,
    maxsize: usize,
    data: Option<Py<PyMemoryView>>,
    mapping: Option<Py<Mapping>>,
}

impl MapInfo {
    fn end(&mut self, py: Python<'_>) -> PyResult<()> {
        let mapping = self.mapping.take().ok_or_else(|| {
            PyValueError::new_err("this MapInfo is not mapped (already unmapped)")
        })?;
        if let Some(data) = self.data.take() {
            // Fails with BufferError while views exported from it live
            // (numpy arrays): the mapping then waits for them.
            let _ = data.bind(py).call_method0(pyo3::intern!(py, "release"));
        }
        mapping.get().close();
        self.memory = None;
        Ok(())
    }
}

#[pymethods]
impl MapInfo {
    /// The memory mapped; None once the map has ended.
    #[getter]
    fn memory(&self, py: Python<'_>) -> Option<Py<PyMemory>> {
        self.memory.as_ref().map(|m| m.clone_ref(py))
    }

    /// The map flags (`MapFlags`).
    #[getter]
    fn flags(&self, py: Python<'_>) -> PyResult<PyObject> {
        map_flags(py, self.flags)
    }

    /// Bytes mapped (the memory's visible size).
    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    /// The block's size.
    #[getter]
    fn maxsize(&self) -> usize {
        self.maxsize
    }

    /// Whether the map is still in force.
    #[getter]
    fn mapped(&self) -> bool {
        self.mapping.is_some()
    }

    /// The mapped bytes as a memoryview (no copy), or None after unmap.
    #[getter]
    fn data(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyMemoryView>>> {
        if let Some(d) = &self.data {
            return Ok(Some(d.clone_ref(py)));
        }
        let Some(mapping) = &self.mapping else {
            return Ok(None);
        };
        let view = PyMemoryView::from(mapping.bind(py).as_any())?.unbind();
        self.data = Some(view.clone_ref(py));
        Ok(Some(view))
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let py = slf.py();
        let mapping = match slf
            .try_borrow()
            .map(|i| i.mapping.as_ref().map(|m| m.clone_ref(py)))
        {
            Ok(Some(m)) => m,
            Ok(None) => {
                let err = PyBufferError::new_err("this MapInfo is not mapped");
                // SAFETY: `view` is Python's (this is bf_getbuffer).
                return Err(unsafe { sys::refuse(view, err) });
            }
            // SAFETY: as above.
            Err(e) => return Err(unsafe { sys::refuse(view, e.into()) }),
        };
        // SAFETY: forwarded to the exporter, which keeps the bytes mapped
        // while the export lives.
        unsafe { Mapping::__getbuffer__(mapping.into_bound(py), view, flags) }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if self.mapping.is_some() {
            self.end(py)?;
        }
        Ok(false)
    }

    /// `ok, info = mem.map(flags)`: GStreamer's Python tuple style.
    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<PyObject> {
        let py = slf.py();
        let ok = slf.try_borrow()?.mapping.is_some();
        let t = PyTuple::new(
            py,
            [
                ok.into_pyobject(py)?.to_owned().into_any(),
                slf.clone().into_any(),
            ],
        )?;
        Ok(t.as_any().try_iter()?.into_any().unbind())
    }

    fn __repr__(&self) -> String {
        format!(
            "<mediamem.MapInfo flags={:#x} size={} {}>",
            self.flags,
            self.size,
            if self.mapping.is_some() {
                "mapped"
            } else {
                "unmapped"
            }
        )
    }
}

/// Allocation parameters (`Gst.AllocationParams`): memory flags, an
/// alignment mask (bytes - 1), and prefix and padding bytes.
#[pyclass(module = "mediamem", name = "AllocationParams")]
#[derive(Clone, Default)]
pub struct PyAllocationParams {
    /// Flags of the new memory (`MemoryFlags`).
    flags: u32,
    /// Alignment mask: 2^n - 1.
    #[pyo3(get, set)]
    align: usize,
    /// Bytes before the visible bytes.
    #[pyo3(get, set)]
    prefix: usize,
    /// Bytes after the visible bytes.
    #[pyo3(get, set)]
    padding: usize,
}

impl PyAllocationParams {
    /// The library's parameters.
    pub fn params(&self) -> mediamem::AllocationParams {
        mediamem::AllocationParams::new(
            MemoryFlags::from_bits_retain(self.flags),
            self.align,
            self.prefix,
            self.padding,
        )
    }
}

#[pymethods]
impl PyAllocationParams {
    #[new]
    #[pyo3(signature = (flags = 0, align = 0, prefix = 0, padding = 0))]
    fn py_new(flags: u32, align: usize, prefix: usize, padding: usize) -> Self {
        PyAllocationParams {
            flags,
            align,
            prefix,
            padding,
        }
    }

    /// Default parameters (`gst_allocation_params_new`).
    #[staticmethod]
    fn new() -> Self {
        Self::default()
    }

    /// Reset to the defaults (`gst_allocation_params_init`).
    fn init(&mut self) {
        *self = Self::default();
    }

    /// A copy.
    fn copy(&self) -> Self {
        self.clone()
    }

    /// Nothing to free (GStreamer API compatibility).
    fn free(&self) {}

    /// Flags of the new memory (`MemoryFlags`).
    #[getter]
    fn get_flags(&self, py: Python<'_>) -> PyResult<PyObject> {
        memory_flags(py, self.flags)
    }

    #[setter]
    fn set_flags(&mut self, flags: u32) {
        self.flags = flags;
    }

    fn __repr__(&self) -> String {
        format!(
            "AllocationParams(flags={:#x}, align={}, prefix={}, padding={})",
            self.flags, self.align, self.prefix, self.padding
        )
    }
}
