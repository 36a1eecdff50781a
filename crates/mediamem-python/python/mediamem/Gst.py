"""The part of PyGObject's ``Gst`` namespace that GstAllocators uses:
``Memory``, ``MapInfo``, ``MapFlags``, ``MemoryFlags``,
``AllocationParams``, ``Allocator``, and ``init`` (which has nothing to do
here).
"""

from ._flags import MapFlags, MemoryFlags
from ._mediamem import AllocationParams, Allocator, MapInfo, Memory

__all__ = [
    "Memory",
    "MapInfo",
    "MapFlags",
    "MemoryFlags",
    "AllocationParams",
    "Allocator",
    "init",
    "init_check",
    "is_initialized",
]


def init(argv=None):
    """Nothing to initialise (``Gst.init``); returns ``argv`` as GStreamer does."""
    return argv


def init_check(argv=None):
    """Always ``(True, argv)`` (``Gst.init_check``)."""
    return True, argv


def is_initialized():
    """Always True."""
    return True
