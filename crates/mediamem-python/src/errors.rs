//! mediamem's typed errors as Python exceptions: one base class,
//! `mediamem.Error`, and a subclass per kind (`mediamem.ReadOnlyError` for
//! `Error::ReadOnly`, ...). Every exception carries `kind` (the variant's
//! name) and `errno` (the kernel's errno, or None).

use mediamem::Error as MmError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    mediamem,
    Error,
    PyException,
    "Base class of every error mediamem reports. `kind` names the error \
     (e.g. \"ReadOnly\"), `errno` is the kernel's errno or None."
);

macro_rules! kinds {
    ($($kind:ident => $exc:ident: $doc:literal),* $(,)?) => {
        $(create_exception!(mediamem, $exc, Error, $doc);)*

        /// Add the base class and every subclass to `m`.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            m.add("Error", py.get_type::<Error>())?;
            $(m.add(stringify!($exc), py.get_type::<$exc>())?;)*
            Ok(())
        }

        /// The names of every error kind and its exception class.
        pub const KINDS: &[(&str, &str)] = &[$((stringify!($kind), stringify!($exc))),*];

        fn new_err(e: &MmError, msg: String) -> (&'static str, PyErr) {
            match e {
                $(MmError::$kind { .. } => (stringify!($kind), $exc::new_err(msg)),)*
                _ => ("Other", Error::new_err(msg)),
            }
        }
    };
}

kinds! {
    InvalidAlign => InvalidAlignError: "An alignment mask is not of the form 2^n - 1.",
    SizeOverflow => SizeOverflowError: "A size computation overflowed.",
    OutOfMemory => OutOfMemoryError: "An allocation failed for lack of memory.",
    OutOfRange => OutOfRangeError: "An offset or size is out of bounds.",
    NegativeOffset => NegativeOffsetError: "A resize would move the offset below zero.",
    ReadOnly => ReadOnlyError: "The memory is read-only.",
    LockConflict => LockConflictError: "The memory is locked (mapped) in a conflicting mode.",
    Shared => SharedError: "The memory is shared and cannot be mapped for writing.",
    TooManyLocks => TooManyLocksError: "Too many nested locks on one memory.",
    NotLocked => NotLockedError: "An unlock does not match the lock state.",
    Aliased => AliasedError: "The bytes are already borrowed through another mapping.",
    InvalidMapFlags => InvalidMapFlagsError: "Invalid map flags.",
    NoShare => NoShareError: "The memory is flagged NO_SHARE.",
    NotWritable => NotWritableError: "The memory is not writable (it is shared).",
    Unsupported => UnsupportedError: "The memory kind does not support the operation.",
    MapFailed => MapFailedError: "The memory could not be mapped.",
    WrongKind => WrongKindError: "The memory is not of the kind the call needs.",
    BadFd => BadFdError: "A bad file descriptor (closed, negative, or of the wrong kind).",
    BeyondFile => BeyondFileError: "A size reaches beyond the end of the file.",
    Os => OsError: "A system call failed (see errno).",
    UnknownFourcc => UnknownFourccError: "An unknown DRM fourcc.",
    NotContiguous => NotContiguousError: "The memory is not physically contiguous.",
    TooLarge => TooLargeError: "A request is larger than possible.",
    BadAllocation => BadAllocationError: "An allocator returned less than asked.",
    PoolExhausted => PoolExhaustedError: "Every memory of the pool is in use.",
    Protocol => ProtocolError: "An IPC protocol error.",
    TimedOut => TimedOutError: "An IPC read or write timed out.",
    Refused => RefusedError: "Received memory was refused by the receive policy.",
    Truncated => TruncatedError: "The file behind the memory was truncated under its mapping.",
    NotAvailable => NotAvailableError: "The device or feature is not available on this machine.",
    Exhausted => ExhaustedError: "A pool of memory (huge pages, a heap) has none left.",
    NoProvider => NoProviderError: "No dma-buf provider of the chain could allocate; the message lists each one's reason.",
    InvalidConfig => InvalidConfigError: "A configuration value (an environment variable, a provider name) is invalid.",
}

/// The Python exception for `e`, with its `kind` and `errno` attributes.
pub fn to_py(e: MmError) -> PyErr {
    let errno = e.errno().map(|n| n.raw_os_error());
    let (kind, err) = new_err(&e, e.to_string());
    Python::with_gil(|py| {
        let value = err.value(py);
        // Setting an attribute on a fresh exception instance cannot fail
        // short of memory exhaustion; the exception is raised either way.
        let _ = value.setattr("kind", kind);
        let _ = value.setattr("errno", errno);
    });
    err
}

/// `Result` with mediamem's error, as a `PyResult`.
pub trait IntoPy<T> {
    /// Convert the error.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for mediamem::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
