"""mediamem: GStreamer's memory and allocator system (GstMemory and
libgstallocators) in Rust, for Python.

``mediamem.GstAllocators`` is PyGObject's ``GstAllocators`` namespace (the
nine functions and the allocators) and ``mediamem.Gst`` the part of ``Gst``
they use (``Memory``, ``MapFlags``, ``AllocationParams``, ``Allocator``), so
that code written for ``from gi.repository import Gst, GstAllocators``
runs with ``from mediamem import Gst, GstAllocators``.

Errors raise ``mediamem.Error`` subclasses, one per kind
(``ReadOnlyError``, ``BadFdError``, ...; ``ERROR_KINDS`` maps kind names to
classes); each carries ``kind`` and ``errno``.
"""

from ._flags import FdMemoryFlags, MapFlags, MemoryFlags
from ._mediamem import *  # noqa: F401,F403
from ._mediamem import (
    ERROR_KINDS,
    AllocationParams,
    Allocator,
    CmaHeapAllocator,
    DmaBufAllocator,
    DmaHeapAllocator,
    DRMDumbAllocator,
    Error,
    FdAllocator,
    Frame,
    HugePageAllocator,
    MapInfo,
    Memory,
    MemoryPool,
    Receiver,
    Sender,
    ShmAllocator,
    UdmabufAllocator,
    __version__,
    probe,
)
from . import Gst, GstAllocators, ipc  # noqa: E402

__all__ = [
    "Gst",
    "GstAllocators",
    "ipc",
    "probe",
    "Error",
    "ERROR_KINDS",
    "Memory",
    "MapInfo",
    "MapFlags",
    "MemoryFlags",
    "FdMemoryFlags",
    "AllocationParams",
    "Allocator",
    "FdAllocator",
    "DmaBufAllocator",
    "ShmAllocator",
    "DRMDumbAllocator",
    "UdmabufAllocator",
    "DmaHeapAllocator",
    "HugePageAllocator",
    "CmaHeapAllocator",
    "MemoryPool",
    "Sender",
    "Receiver",
    "Frame",
    "__version__",
] + sorted(ERROR_KINDS[k].__name__ for k in ERROR_KINDS)
