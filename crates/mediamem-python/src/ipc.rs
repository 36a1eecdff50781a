//! The IPC endpoints: frames of fd-backed memory over a Unix stream socket.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};

use mediamem::ipc::{ReceivePolicy, Receiver, Sender};
use mediamem::Memory;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::errors::IntoPy;
use crate::memory::PyMemory;
use crate::pool::duration;
use crate::sys;

/// A duplicate of the socket `sock` (a `socket.socket`, or anything with
/// `fileno()`, or an int fd); the caller keeps its own.
fn socket_of(sock: &Bound<'_, PyAny>) -> PyResult<UnixStream> {
    let fd: i64 = match sock.extract::<i64>() {
        Ok(fd) => fd,
        Err(_) if sock.hasattr("fileno")? => sock.call_method0("fileno")?.extract()?,
        Err(_) => {
            return Err(PyTypeError::new_err(format!(
                "expected a socket or an fd, got {}",
                sock.get_type().name()?
            )))
        }
    };
    let dup: OwnedFd = sys::dup_fd(fd)?;
    Ok(UnixStream::from(dup))
}

fn closed() -> PyErr {
    PyValueError::new_err("the endpoint is closed")
}

fn lock<T>(m: &Mutex<Option<T>>) -> MutexGuard<'_, Option<T>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sending end: `send_frame([mem, ...], meta)` passes the memories'
/// fds (not their bytes) and holds the memories until the receiver
/// releases the frame (`wait_release()`, `poll_releases()`). The socket is
/// duplicated: the Python socket stays yours. Blocking calls release the
/// GIL.
#[pyclass(module = "mediamem", name = "Sender", frozen)]
pub struct PySender {
    s: Mutex<Option<Sender>>,
    fd: i32,
}

impl PySender {
    /// Run `f` on the sender with the GIL released (its mutex is only ever
    /// taken without the GIL, so a blocked call cannot deadlock another).
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Sender) -> mediamem::Result<R> + Send,
    ) -> PyResult<R> {
        py.allow_threads(|| match lock(&self.s).as_mut() {
            Some(s) => Ok(f(s)),
            None => Err(closed()),
        })?
        .py()
    }
}

#[pymethods]
impl PySender {
    #[new]
    fn py_new(sock: &Bound<'_, PyAny>) -> PyResult<Self> {
        let sock = socket_of(sock)?;
        let fd = sock.as_raw_fd();
        Ok(PySender {
            s: Mutex::new(Some(Sender::new(sock))),
            fd,
        })
    }

    /// Send a frame of fd-backed memories with `meta` bytes; returns its id.
    #[pyo3(
        signature = (memories, meta = b"".as_slice()),
        text_signature = "($self, /, memories, meta=b'')"
    )]
    fn send_frame(
        &self,
        py: Python<'_>,
        memories: Vec<Bound<'_, PyMemory>>,
        meta: &[u8],
    ) -> PyResult<u64> {
        let mems: Vec<Memory> = memories.iter().map(|m| m.get().mem().clone()).collect();
        self.with(py, |s| s.send_frame(mems, meta))
    }

    /// Tell the receiver the stream ended.
    fn send_eos(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.send_eos())
    }

    /// Wait for the next release (up to the timeout): the released frame's
    /// id, or None when the peer closed.
    fn wait_release(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.with(py, |s| s.wait_release())
    }

    /// Handle the releases already received, without waiting; how many.
    fn poll_releases(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| s.poll_releases())
    }

    /// Bound every wait by `seconds` (None: no bound).
    #[pyo3(signature = (seconds))]
    fn set_timeout(&self, py: Python<'_>, seconds: Option<f64>) -> PyResult<()> {
        let t = seconds.map(duration).transpose()?;
        self.with(py, |s| s.set_timeout(t))
    }

    /// Frames sent and not yet released.
    #[getter]
    fn in_flight(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| Ok(s.in_flight()))
    }

    /// The socket's fd (owned by the sender), for select/poll.
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.with(py, |_| Ok(self.fd))
    }

    /// Close the socket; frames in flight are let go.
    fn close(&self, py: Python<'_>) {
        // The lock is taken without the GIL: another thread may be blocked
        // in a call on this sender, and needs the GIL to return.
        py.allow_threads(|| drop(lock(&self.s).take()));
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}

/// A received frame: `id`, `memories` (read-only `Memory` objects, zero
/// copy), `meta` (bytes). The sender gets the frame back when every one
/// of its memories (and every share of them) is gone.
#[pyclass(module = "mediamem", name = "Frame", frozen)]
pub struct PyFrame {
    /// The sender's frame id.
    #[pyo3(get)]
    id: u64,
    /// The memories.
    #[pyo3(get)]
    memories: Py<PyList>,
    /// The metadata.
    #[pyo3(get)]
    meta: Py<PyBytes>,
}

#[pymethods]
impl PyFrame {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<mediamem.Frame id={} memories={} meta={} bytes>",
            self.id,
            self.memories.bind(py).len(),
            self.meta.bind(py).as_bytes().len()
        )
    }
}

/// The receiving end: `recv()` returns the next `Frame`, or None at the
/// end of stream. What it accepts is its policy: sealed memfds and real
/// dma-bufs by default; `copy_unsealed`, `guard_unsealed`,
/// `require_write_seal` and `max_copy_bytes` as in the library's
/// `ReceivePolicy`. The socket is duplicated. Blocking calls release the
/// GIL.
#[pyclass(module = "mediamem", name = "Receiver", frozen)]
pub struct PyReceiver {
    r: Mutex<Option<Receiver>>,
    fd: i32,
}

impl PyReceiver {
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Receiver) -> mediamem::Result<R> + Send,
    ) -> PyResult<R> {
        py.allow_threads(|| match lock(&self.r).as_mut() {
            Some(r) => Ok(f(r)),
            None => Err(closed()),
        })?
        .py()
    }
}

#[pymethods]
impl PyReceiver {
    #[new]
    #[pyo3(signature = (sock, *, copy_unsealed = false, guard_unsealed = false,
                        require_write_seal = false, max_copy_bytes = None))]
    fn py_new(
        sock: &Bound<'_, PyAny>,
        copy_unsealed: bool,
        guard_unsealed: bool,
        require_write_seal: bool,
        max_copy_bytes: Option<usize>,
    ) -> PyResult<Self> {
        let sock = socket_of(sock)?;
        let fd = sock.as_raw_fd();
        let default = ReceivePolicy::default();
        // `..default`: fields the policy gains later keep their defaults.
        #[allow(clippy::needless_update)]
        let policy = ReceivePolicy {
            copy_unsealed,
            guard_unsealed,
            require_write_seal,
            max_copy_bytes: max_copy_bytes.unwrap_or(default.max_copy_bytes),
            ..default
        };
        Ok(PyReceiver {
            r: Mutex::new(Some(Receiver::new(sock, policy))),
            fd,
        })
    }

    /// The next frame, or None at the end of stream.
    fn recv(&self, py: Python<'_>) -> PyResult<Option<PyFrame>> {
        let Some(frame) = self.with(py, |r| r.recv())? else {
            return Ok(None);
        };
        let mems = frame
            .memories
            .iter()
            .map(|m| PyMemory::new_py(py, m.clone()))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Some(PyFrame {
            id: frame.id,
            memories: PyList::new(py, mems)?.unbind(),
            meta: PyBytes::new(py, &frame.meta).unbind(),
        }))
    }

    /// Write every queued release (up to the timeout).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |r| r.flush())
    }

    /// Bound every wait by `seconds` (None: no bound).
    #[pyo3(signature = (seconds))]
    fn set_timeout(&self, py: Python<'_>, seconds: Option<f64>) -> PyResult<()> {
        let t = seconds.map(duration).transpose()?;
        self.with(py, |r| r.set_timeout(t))
    }

    /// Releases queued and not yet written.
    #[getter]
    fn pending_releases(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |r| Ok(r.pending_releases()))
    }

    /// The socket's fd (owned by the receiver), for select/poll.
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.with(py, |_| Ok(self.fd))
    }

    /// Close the socket.
    fn close(&self, py: Python<'_>) {
        // As Sender.close: the lock is taken without the GIL.
        py.allow_threads(|| drop(lock(&self.r).take()));
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}
