"""PyGObject's ``GstAllocators`` namespace, on mediamem.

The nine functions keep the seed's names, arguments and return
conventions: ``dmabuf_memory_get_fd`` and ``fd_memory_get_fd`` return -1
when the memory has no fd, ``drm_dumb_memory_get_handle`` and
``phys_memory_get_phys_addr`` return 0 when there is none, the ``is_*``
functions return bool. The fds and handles stay owned by the memory (use
``os.dup`` or ``Memory.dup_fd()`` to keep one).
"""

from ._flags import FdMemoryFlags
from ._mediamem import (
    ALLOCATOR_DMABUF,
    ALLOCATOR_FD,
    CAPS_FEATURE_MEMORY_DMABUF,
    CmaHeapAllocator,
    DmaBufAllocator,
    DmaHeapAllocator,
    DRMDumbAllocator,
    FdAllocator,
    HugePageAllocator,
    ShmAllocator,
    UdmabufAllocator,
    dmabuf_memory_get_fd,
    drm_dumb_memory_export_dmabuf,
    drm_dumb_memory_get_handle,
    fd_memory_get_fd,
    is_dmabuf_memory,
    is_drm_dumb_memory,
    is_fd_memory,
    is_phys_memory,
    phys_memory_get_phys_addr,
)

__all__ = [
    "dmabuf_memory_get_fd",
    "drm_dumb_memory_export_dmabuf",
    "drm_dumb_memory_get_handle",
    "fd_memory_get_fd",
    "is_dmabuf_memory",
    "is_drm_dumb_memory",
    "is_fd_memory",
    "is_phys_memory",
    "phys_memory_get_phys_addr",
    "FdAllocator",
    "DmaBufAllocator",
    "ShmAllocator",
    "DRMDumbAllocator",
    "UdmabufAllocator",
    "DmaHeapAllocator",
    "HugePageAllocator",
    "CmaHeapAllocator",
    "FdMemoryFlags",
    "ALLOCATOR_FD",
    "ALLOCATOR_DMABUF",
    "CAPS_FEATURE_MEMORY_DMABUF",
]
