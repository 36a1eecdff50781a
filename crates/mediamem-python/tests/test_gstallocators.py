"""The nine functions of GstAllocators, with the seed's names and return
conventions, on every kind of memory the host has."""

import os

import pytest

import mediamem
from mediamem import Gst, GstAllocators
from conftest import memfd

NINE = [
    "dmabuf_memory_get_fd",
    "drm_dumb_memory_export_dmabuf",
    "drm_dumb_memory_get_handle",
    "fd_memory_get_fd",
    "is_dmabuf_memory",
    "is_drm_dumb_memory",
    "is_fd_memory",
    "is_phys_memory",
    "phys_memory_get_phys_addr",
]


def test_the_nine_functions_are_there_with_docs():
    for name in NINE:
        f = getattr(GstAllocators, name)
        assert callable(f)
        assert f.__doc__ and len(f.__doc__) > 20, name
        assert getattr(mediamem, name) is f
    assert set(NINE) <= set(GstAllocators.__all__)


def check(mem, *, fd, dmabuf, dumb=False, phys=False):
    """Every function's answer on `mem`, with the seed's types."""
    got_fd = GstAllocators.fd_memory_get_fd(mem)
    assert type(got_fd) is int
    assert GstAllocators.is_fd_memory(mem) is (fd is not None)
    if fd is None:
        assert got_fd == -1
    elif fd is not True:
        assert got_fd == fd
    else:
        assert got_fd >= 0
    assert GstAllocators.is_dmabuf_memory(mem) is dmabuf
    dfd = GstAllocators.dmabuf_memory_get_fd(mem)
    assert type(dfd) is int
    assert (dfd >= 0) is dmabuf
    if dmabuf:
        assert dfd == got_fd
    assert GstAllocators.is_drm_dumb_memory(mem) is dumb
    h = GstAllocators.drm_dumb_memory_get_handle(mem)
    assert type(h) is int and (h > 0) is dumb
    assert GstAllocators.is_phys_memory(mem) is phys
    addr = GstAllocators.phys_memory_get_phys_addr(mem)
    assert type(addr) is int and (addr > 0) is phys


def test_system_memory_has_nothing(system):
    mem = system.alloc(4096)
    check(mem, fd=None, dmabuf=False)
    with pytest.raises(mediamem.WrongKindError) as e:
        GstAllocators.drm_dumb_memory_export_dmabuf(mem)
    assert e.value.kind == "WrongKind"


def test_fd_memory_keeps_the_callers_fd_number():
    fd = memfd(8192)
    alloc = GstAllocators.FdAllocator.new()
    mem = GstAllocators.FdAllocator.alloc(alloc, fd, 8192, GstAllocators.FdMemoryFlags.NONE)
    check(mem, fd=fd, dmabuf=False)
    # a share is fd memory too, with the same fd
    s = mem.share(4096)
    check(s, fd=fd, dmabuf=False)
    del s, mem
    # the memory owned the fd: it is closed now
    with pytest.raises(OSError):
        os.fstat(fd)


def test_dont_close_leaves_the_fd_to_the_caller():
    fd = memfd(4096)
    try:
        mem = mediamem.FdAllocator().alloc(fd, 4096, mediamem.FdMemoryFlags.DONT_CLOSE)
        check(mem, fd=True, dmabuf=False)
        assert GstAllocators.fd_memory_get_fd(mem) != fd  # a duplicate
        del mem
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


def test_fd_is_still_owned_by_the_memory_and_dup_fd_gives_one_to_keep(shm):
    mem = shm.alloc(4096)
    fd = GstAllocators.fd_memory_get_fd(mem)
    mine = mem.dup_fd()
    assert mine != fd
    with mem.map(Gst.MapFlags.WRITE) as info:
        info.data[:5] = b"hello"
    del mem, info
    with pytest.raises(OSError):  # the memory's fd went with it
        os.fstat(fd)
    assert os.pread(mine, 5, 0) == b"hello"
    os.close(mine)


def test_shm_memory(shm):
    mem = shm.alloc(100)
    check(mem, fd=True, dmabuf=False)
    assert mem.maxsize >= 4096  # page-rounded
    assert isinstance(shm, Gst.Allocator)
    assert mediamem.Allocator.find("shm") == shm


def test_dmabuf_allocator_on_a_memfd():
    fd = memfd(8192)
    mem = GstAllocators.DmaBufAllocator.alloc(GstAllocators.DmaBufAllocator.new(), fd, 8192)
    check(mem, fd=fd, dmabuf=True)
    check(mem.share(0, 4096), fd=fd, dmabuf=True)
    # a copy is new system memory
    check(mem.copy(), fd=None, dmabuf=False)
    fd2 = memfd(4096)
    m2 = mediamem.DmaBufAllocator().alloc_with_flags(fd2, 4096, mediamem.FdMemoryFlags.KEEP_MAPPED)
    check(m2, fd=fd2, dmabuf=True)


def test_functions_refuse_what_is_not_a_memory():
    for name in NINE:
        f = getattr(GstAllocators, name)
        for bad in (None, 3, "mem", b"x", object(), mediamem.Allocator.find()):
            with pytest.raises(TypeError):
                f(bad)


def test_constants():
    assert GstAllocators.ALLOCATOR_FD == "fd"
    assert GstAllocators.ALLOCATOR_DMABUF == "dmabuf"
    assert GstAllocators.CAPS_FEATURE_MEMORY_DMABUF == "memory:DMABuf"
    assert int(GstAllocators.FdMemoryFlags.KEEP_MAPPED) == 1
    assert int(GstAllocators.FdMemoryFlags.MAP_PRIVATE) == 2
    assert int(GstAllocators.FdMemoryFlags.DONT_CLOSE) == 4
