//! Every `unsafe` operation of the binding: turning Python's integer fds
//! into Rust fd types, and filling a `Py_buffer` for the buffer protocol.

use std::ffi::{c_int, c_void};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, PyErr};

use crate::errors::to_py;

fn check_non_negative(fd: i64) -> PyResult<c_int> {
    c_int::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| PyValueError::new_err(format!("{fd} is not a file descriptor")))
}

fn bad_fd(fd: c_int, e: rustix::io::Errno) -> PyErr {
    to_py(mediamem::Error::BadFd {
        reason: format!("fd {fd}: {e}"),
    })
}

/// A close-on-exec duplicate of the caller's fd `fd`, which the caller
/// keeps. A closed fd, -1 or any other negative number is an error.
pub fn dup_fd(fd: i64) -> PyResult<OwnedFd> {
    let fd = check_non_negative(fd)?;
    // SAFETY: the borrow lives for one fcntl(F_DUPFD_CLOEXEC) call only. If
    // `fd` is closed the call fails with EBADF; if another thread closed and
    // reused the number meanwhile, the duplicate is of that file, which is
    // what the caller named by number. No memory is touched through it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_dupfd_cloexec(borrowed, 0).map_err(|e| bad_fd(fd, e))
}

/// Take ownership of the caller's fd `fd` (GStreamer's contract for
/// `gst_fd_allocator_alloc` and friends: the memory closes it), after
/// checking that it is open.
pub fn take_fd(fd: i64) -> PyResult<OwnedFd> {
    let fd = check_non_negative(fd)?;
    // SAFETY: as in `dup_fd`, the borrow is for one fcntl(F_GETFD) call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).map_err(|e| bad_fd(fd, e))?;
    // SAFETY: `fd` is open (F_GETFD succeeded) and the caller hands it over,
    // as the documented contract of every Python function that calls this
    // says (the same contract as `os.fdopen` or GStreamer's fd allocator):
    // from here only the returned OwnedFd closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a buffer export describes: `len` bytes at `ptr`, and the `[len, 1]`
/// shape and stride arrays the view points at (owned by the exporter, so
/// they live as long as every export).
pub struct Export {
    pub ptr: *mut u8,
    pub readonly: bool,
    pub dims: Box<[isize; 2]>,
}

// SAFETY: `ptr` points into a mapping owned by the same exporter object
// (a `MappedMemory`, which is Send + Sync); the pointer itself is only read,
// and only handed to Python under the GIL.
unsafe impl Send for Export {}
// SAFETY: as above; no interior mutability through `&Export`.
unsafe impl Sync for Export {}

/// Refuse an export: the buffer protocol wants `view->obj` NULL on error.
///
/// # Safety
/// `view` must be NULL or the `Py_buffer` Python passed to `bf_getbuffer`.
pub unsafe fn refuse(view: *mut ffi::Py_buffer, err: PyErr) -> PyErr {
    if !view.is_null() {
        // SAFETY: non-null and Python's to fill (the caller's contract).
        unsafe { (*view).obj = std::ptr::null_mut() };
    }
    err
}

/// Fill `view` for an export of `e` owned by `owner`.
///
/// # Safety
/// `view` must be the `Py_buffer` Python passed to `bf_getbuffer`, and the
/// bytes `e` describes must stay mapped until the matching
/// `bf_releasebuffer` (the exporter keeps the mapping while any export is
/// alive).
pub unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    e: &Export,
    owner: Bound<'_, PyAny>,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("NULL Py_buffer"));
    }
    if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE && e.readonly {
        let err = PyBufferError::new_err(
            "the memory is mapped read-only: map it with MapFlags.WRITE to write",
        );
        // SAFETY: `view` is non-null and Python's (the caller's contract).
        return Err(unsafe { refuse(view, err) });
    }
    let dims = e.dims.as_ptr() as *mut isize;
    // SAFETY: `view` is non-null and Python's to fill (the caller's
    // contract); every pointer stored in it stays valid while the export
    // lives: `dims` is owned by the exporter, which the view's `obj` keeps
    // alive, the format is a static C string.
    unsafe {
        (*view).obj = owner.into_ptr();
        (*view).buf = e.ptr as *mut c_void;
        (*view).len = *dims;
        (*view).readonly = c_int::from(e.readonly);
        (*view).itemsize = 1;
        (*view).format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
            c"B".as_ptr() as *mut _
        } else {
            std::ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND {
            dims
        } else {
            std::ptr::null_mut()
        };
        (*view).strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
            dims.add(1)
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
    }
    Ok(())
}
