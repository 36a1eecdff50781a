#!/usr/bin/env python3
"""GstAllocators' nine functions, written against PyGObject.

This script was written for PyGObject (``from gi.repository import Gst,
GstAllocators``) and runs on mediamem with only its import line changed
(the line marked IMPORT below). PyGObject's version of that line is:

    import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstAllocators", "1.0"); from gi.repository import Gst, GstAllocators  # IMPORT

It wraps a memfd with GstAllocators.FdAllocator and another with
GstAllocators.DmaBufAllocator, allocates system memory, maps, shares and
copies them, and prints what each of the nine functions says about each
memory. The functions of GStreamer 1.24 (the DRM dumb ones) are used where
the namespace has them, on the first DRM card with dumb buffers if there
is one; their lines start with "drm:".
"""

import glob
import os

from mediamem import Gst, GstAllocators  # IMPORT

Gst.init(None)


def memfd(size):
    fd = os.memfd_create("gstallocators-example")
    os.ftruncate(fd, size)
    return fd


def report(name, mem):
    print(f"{name}: sizes={tuple(mem.get_sizes())}")
    fd = GstAllocators.fd_memory_get_fd(mem)
    print(f"  is_fd_memory={GstAllocators.is_fd_memory(mem)} fd_memory_get_fd>=0: {fd >= 0}")
    dfd = GstAllocators.dmabuf_memory_get_fd(mem)
    print(f"  is_dmabuf_memory={GstAllocators.is_dmabuf_memory(mem)} dmabuf_memory_get_fd>=0: {dfd >= 0}")
    print(f"  is_phys_memory={GstAllocators.is_phys_memory(mem)} phys_memory_get_phys_addr={GstAllocators.phys_memory_get_phys_addr(mem)}")
    if hasattr(GstAllocators, "is_drm_dumb_memory"):  # GStreamer >= 1.24
        print(f"drm: {name}: is_drm_dumb_memory={GstAllocators.is_drm_dumb_memory(mem)} "
              f"drm_dumb_memory_get_handle={GstAllocators.drm_dumb_memory_get_handle(mem)}")
    return fd


# fd memory: the memory takes the fd over and keeps its number
fd = memfd(8192)
fd_alloc = GstAllocators.FdAllocator.new()
fdmem = GstAllocators.FdAllocator.alloc(fd_alloc, fd, 8192, GstAllocators.FdMemoryFlags.NONE)
print("fd memory keeps the fd number:", report("fd memory", fdmem) == fd)

with fdmem.map(Gst.MapFlags.WRITE) as info:
    info.data[0:5] = b"hello"
ok, info = fdmem.map(Gst.MapFlags.READ)
print("mapped:", ok, bytes(info.data[0:5]))
fdmem.unmap(info)

# a share is fd memory over the same fd; a copy is new memory
share = fdmem.share(4096, 4096)
print("share has the same fd:", GstAllocators.fd_memory_get_fd(share) == fd)
report("share of fd memory", share)
first, second = fdmem.share(0, 100), fdmem.share(100, 100)
print("adjacent shares span:", tuple(first.is_span(second)))
del share, first, second

# dma-buf memory (the dma-buf allocator wraps any fd, as in GStreamer)
fd2 = memfd(4096)
dmabuf_alloc = GstAllocators.DmaBufAllocator.new()
dmamem = GstAllocators.DmaBufAllocator.alloc(dmabuf_alloc, fd2, 4096)
print("dma-buf memory keeps the fd number:", report("dma-buf memory", dmamem) == fd2)
print("dmabuf fd is the fd:", GstAllocators.dmabuf_memory_get_fd(dmamem) == fd2)
copy = dmamem.copy(0, -1)
report("copy of dma-buf memory", copy)

# system memory has none of it
sysmem = Gst.Allocator.find(None).alloc(100, None)
report("system memory", sysmem)

# DRM dumb buffers (GStreamer 1.24): export one as a dma-buf
if hasattr(GstAllocators, "DRMDumbAllocator"):
    dumb = None
    for path in sorted(glob.glob("/dev/dri/card*")):
        try:
            dumb = GstAllocators.DRMDumbAllocator.new_with_device_path(path)
        except Exception:
            continue
        if dumb is not None:
            break
    if dumb is None:
        print("drm: no DRM card with dumb buffers here")
    else:
        mem, pitch = dumb.alloc(int.from_bytes(b"XR24", "little"), 64, 64)
        print(f"drm: dumb buffer pitch={pitch} is_drm_dumb_memory={GstAllocators.is_drm_dumb_memory(mem)} "
              f"handle>0: {GstAllocators.drm_dumb_memory_get_handle(mem) > 0}")
        if dumb.has_prime_export():
            exported = GstAllocators.drm_dumb_memory_export_dmabuf(mem)
            print(f"drm: exported is_dmabuf_memory={GstAllocators.is_dmabuf_memory(exported)} "
                  f"fd>=0: {GstAllocators.dmabuf_memory_get_fd(exported) >= 0}")

print("done")
