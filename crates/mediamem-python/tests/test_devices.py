"""The device kinds: DRM dumb buffers (and their PRIME export), udmabuf,
dma-heaps, huge pages. This machine's kernel has none of the devices, so
these skip on the host, saying why, and run in the QEMU guest of
`cargo xtask vm-test` (bochs and vgem loaded, /dev/udmabuf, the system
heap), where MEDIAMEM_REQUIRE_DEVICES=1 makes a skip a failure."""

import glob
import mmap
import os

import numpy
import pytest

import mediamem
from mediamem import Gst, GstAllocators
from conftest import need, open_fds

R, W = Gst.MapFlags.READ, Gst.MapFlags.WRITE


def fourcc(code):
    return int.from_bytes(code.encode(), "little")


@pytest.fixture(scope="module")
def dumb():
    """A DRM card with dumb buffers (bochs in the guest)."""
    why = []
    for path in sorted(glob.glob("/dev/dri/card*")):
        try:
            return GstAllocators.DRMDumbAllocator.new_with_device_path(path)
        except mediamem.Error as e:
            why.append(f"{path}: {e}")
    need("a DRM card with dumb buffers", "; ".join(why) or "no /dev/dri/card*")


def test_dumb_buffers_and_the_nine_functions(dumb):
    mem, pitch = dumb.alloc(fourcc("XR24"), 640, 480)
    assert pitch >= 640 * 4 and mem.size >= pitch * 480
    assert GstAllocators.is_drm_dumb_memory(mem) is True
    handle = GstAllocators.drm_dumb_memory_get_handle(mem)
    assert type(handle) is int and handle > 0
    assert GstAllocators.is_fd_memory(mem) is False
    assert GstAllocators.fd_memory_get_fd(mem) == -1
    assert GstAllocators.is_dmabuf_memory(mem) is False
    assert GstAllocators.dmabuf_memory_get_fd(mem) == -1
    assert GstAllocators.is_phys_memory(mem) is False
    assert GstAllocators.phys_memory_get_phys_addr(mem) == 0
    assert isinstance(dumb.driver_name, str) and dumb.device_path
    with mem.map(W) as info:
        numpy.frombuffer(info.data, dtype=numpy.uint8)[:] = 0xAB
    assert dumb.has_prime_export() is True
    exported = GstAllocators.drm_dumb_memory_export_dmabuf(mem)
    assert GstAllocators.is_dmabuf_memory(exported) is True
    assert GstAllocators.is_fd_memory(exported) is True
    fd = GstAllocators.dmabuf_memory_get_fd(exported)
    assert fd >= 0 and fd == GstAllocators.fd_memory_get_fd(exported)
    assert GstAllocators.is_drm_dumb_memory(exported) is False
    assert GstAllocators.drm_dumb_memory_get_handle(exported) == 0
    with exported.map(R) as info:
        assert bytes(info.data[:4]) == b"\xab" * 4
    with pytest.raises(mediamem.UnknownFourccError):
        dumb.alloc(fourcc("????"), 64, 64)
    with pytest.raises(mediamem.WrongKindError):
        GstAllocators.drm_dumb_memory_export_dmabuf(exported)


def test_dumb_buffers_do_not_leak_fds(dumb):
    before = open_fds()
    for _ in range(100):
        mem, _ = dumb.alloc(fourcc("XR24"), 64, 64)
        ex = GstAllocators.drm_dumb_memory_export_dmabuf(mem)
        with ex.map(W) as info:
            info.data[0] = 1
        del mem, ex, info
    assert open_fds() == before


@pytest.fixture(scope="module")
def udmabuf():
    try:
        return GstAllocators.UdmabufAllocator.get()
    except mediamem.Error as e:
        need("/dev/udmabuf", str(e))


def test_udmabuf(udmabuf):
    GstAllocators.UdmabufAllocator.init_once()
    assert Gst.Allocator.find("udmabuf") == udmabuf
    mem = udmabuf.alloc(8192)
    assert GstAllocators.is_dmabuf_memory(mem) and GstAllocators.is_fd_memory(mem)
    assert GstAllocators.dmabuf_memory_get_fd(mem) >= 0
    assert GstAllocators.drm_dumb_memory_get_handle(mem) == 0
    with mem.map(W) as info:
        numpy.frombuffer(info.data, dtype=numpy.uint8)[:] = 3
    fd = mem.dup_fd()
    try:
        # the bytes are in the dma-buf: map it again with Python's mmap
        with mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ) as m:
            assert m[:4] == b"\x03" * 4
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def heap():
    try:
        return mediamem.DmaHeapAllocator.get("system")
    except mediamem.Error as e:
        need("the system dma-heap", str(e))


def test_dma_heap(heap):
    assert heap.name == "system" and "system" in mediamem.DmaHeapAllocator.list_heaps()
    mem = heap.alloc(4096)
    assert GstAllocators.is_dmabuf_memory(mem)
    assert GstAllocators.dmabuf_memory_get_fd(mem) == GstAllocators.fd_memory_get_fd(mem) >= 0
    with mem.map(W) as info:
        info.data[:2] = b"hi"
    with mem.share(0, 2).map(R) as info:
        assert bytes(info.data) == b"hi"


def _huge_page_allocator():
    """A huge page allocator that can allocate now, or why not."""
    try:
        a = mediamem.HugePageAllocator.new()
        a.alloc(4096)
        return a, None
    except mediamem.Error as e:
        return None, str(e)


@pytest.fixture
def huge_pages():
    """One free huge page: reserved here (as root) when there is none, and
    the machine's setting put back afterwards."""
    path = "/proc/sys/vm/nr_hugepages"
    a, reason = _huge_page_allocator()
    if a is not None:
        yield a
        return
    if os.geteuid() != 0:
        need("a free huge page", f"{reason}; reserving one needs root")
    try:
        with open(path) as f:
            before = int(f.read())
    except OSError as e:
        need("huge pages", str(e))
    try:
        with open(path, "w") as f:
            f.write(str(before + 1))
        a, reason = _huge_page_allocator()
        if a is None:
            need("a free huge page", f"none after reserving one: {reason}")
        yield a
    finally:
        with open(path, "w") as f:
            f.write(str(before))


def test_phys_memory(huge_pages):
    mem = huge_pages.alloc(4096)
    assert GstAllocators.is_phys_memory(mem) is True
    addr = GstAllocators.phys_memory_get_phys_addr(mem)
    assert type(addr) is int and addr > 0
    assert GstAllocators.is_fd_memory(mem)
    assert huge_pages.max_size >= 2 << 20
    s = mem.share(4096, 100) if mem.size > 4096 + 100 else mem.share(1, 10)
    assert GstAllocators.phys_memory_get_phys_addr(s) > addr
    with pytest.raises(mediamem.Error):
        huge_pages.alloc(huge_pages.max_size * 2)
    del mem, s


def test_cma_heap_is_refused_with_a_reason():
    # no kernel here has CMA: the refusal says what was tried
    try:
        cma = mediamem.CmaHeapAllocator.new()
    except mediamem.NotAvailableError as e:
        assert "CMA" in str(e) and e.kind == "NotAvailable"
    else:
        mem = cma.alloc(4096)
        assert GstAllocators.is_phys_memory(mem) and cma.name
