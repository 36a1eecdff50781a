"""Memory, MapInfo, MapFlags, MemoryFlags, AllocationParams, Allocator."""

import gc

import numpy
import pytest

import mediamem
from mediamem import Gst

R, W = Gst.MapFlags.READ, Gst.MapFlags.WRITE


def test_sizes_and_flags_as_gstreamer(system):
    mem = system.alloc(100)
    assert (mem.size, mem.offset, mem.maxsize) == (100, 0, 107)  # GStreamer's numbers
    assert mem.get_sizes() == (100, 0, 107)
    assert len(mem) == 100
    assert mem.align == 7
    assert mem.flags == Gst.MemoryFlags.LOCKABLE
    assert isinstance(mem.flags, Gst.MemoryFlags)
    assert mem.mem_type == "SystemMemory" and mem.is_type("SystemMemory")
    assert mem.allocator == system
    assert mem.parent is None
    assert mem.is_writable()
    assert mem.lock_state == 0
    assert "SystemMemory" in repr(mem)


def test_allocation_params():
    p = Gst.AllocationParams()
    assert (p.flags, p.align, p.prefix, p.padding) == (0, 0, 0, 0)
    p.flags = Gst.MemoryFlags.ZERO_PADDED | Gst.MemoryFlags.ZERO_PREFIXED
    p.align, p.prefix, p.padding = 63, 16, 32
    assert isinstance(p.flags, Gst.MemoryFlags)
    mem = Gst.Allocator.find(None).alloc(1000, p)
    assert (mem.offset, mem.size) == (16, 1000)
    assert mem.maxsize >= 16 + 1000 + 32
    assert mem.align == 63
    assert mem.flags & Gst.MemoryFlags.ZERO_PADDED
    q = p.copy()
    q.init()
    assert q.align == 0 and p.align == 63
    assert Gst.AllocationParams.new().prefix == 0
    assert "align=63" in repr(p)
    with pytest.raises(mediamem.InvalidAlignError):
        Gst.Allocator.find(None).alloc(10, Gst.AllocationParams(align=5))


def test_allocator_find_and_kinds():
    assert Gst.Allocator.find("no-such-allocator") is None
    assert Gst.Allocator.find("SystemMemory").mem_type == "SystemMemory"
    assert Gst.Allocator.find(None) == Gst.Allocator.find("SystemMemory")
    shm = mediamem.ShmAllocator.get()
    assert type(Gst.Allocator.find("shm")) is mediamem.ShmAllocator
    assert isinstance(shm, mediamem.Allocator)
    assert issubclass(mediamem.FdAllocator, Gst.Allocator)
    assert mediamem.FdAllocator().mem_type == "fd"
    assert mediamem.DmaBufAllocator.new().mem_type == "dmabuf"
    mediamem.ShmAllocator.init_once()
    assert "shm" in repr(shm)


def test_allocator_register():
    shm = mediamem.ShmAllocator.get()
    Gst.Allocator.register("python-test-shm", shm)
    assert Gst.Allocator.find("python-test-shm") == shm
    assert type(Gst.Allocator.find("python-test-shm")) is mediamem.ShmAllocator


def test_map_read_write_context_manager(system):
    mem = system.alloc(64)
    with mem.map(W) as info:
        assert info.mapped and info.size == 64 and info.maxsize == 71
        assert info.flags == W and isinstance(info.flags, Gst.MapFlags)
        assert info.memory is mem
        data = info.data
        assert isinstance(data, memoryview)
        assert not data.readonly and data.format == "B" and data.nbytes == 64
        assert info.data is data  # the same view each time
        data[:] = bytes(range(64))
        assert mem.lock_state != 0
    assert not info.mapped and info.data is None
    assert mem.lock_state == 0
    with pytest.raises(ValueError):  # the block's view was released
        data[0]
    with mem.map(R) as info:
        assert info.data.readonly
        assert bytes(info.data) == bytes(range(64))
        with pytest.raises(TypeError):
            info.data[0] = 1
    with mem.map(R | W) as info:
        assert not info.data.readonly


def test_map_tuple_style_and_unmap(system):
    mem = system.alloc(16)
    ok, info = mem.map(R)
    assert ok is True and info.mapped
    assert mem.unmap(info) is True
    assert not info.mapped
    with pytest.raises(ValueError):
        mem.unmap(info)  # twice
    other = system.alloc(16)
    ok, info = mem.map(R)
    with pytest.raises(ValueError):
        other.unmap(info)  # not its map
    mem.unmap(info)


def test_no_copy_map_sees_share_and_memory_views(system):
    mem = system.alloc(4096)
    with mem.map(W) as info:
        info.data[100:104] = b"abcd"
        mv2 = memoryview(info)  # another export of the same bytes
        assert mv2[100:104] == b"abcd"
        mv2[0] = 9
        assert info.data[0] == 9
        mv2.release()
    s = mem.share(100, 4)
    with s.map(R) as info:
        assert bytes(info.data) == b"abcd"


def test_numpy_view_outliving_the_block_keeps_the_mapping(system):
    mem = system.alloc(4096)
    with mem.map(W) as info:
        arr = numpy.frombuffer(info.data, dtype=numpy.uint8)
        arr[:] = 7
    # the block ended: info.data is gone, the array still holds the mapping
    assert info.data is None
    assert arr.sum() == 7 * 4096
    assert mem.lock_state != 0
    with pytest.raises(mediamem.Error):
        mem.map(W)  # still mapped for writing by the array
    del arr
    gc.collect()
    assert mem.lock_state == 0
    with mem.map(R) as info:
        assert bytes(info.data[:3]) == b"\x07\x07\x07"


def test_slices_outliving_the_block(system):
    mem = system.alloc(32)
    with mem.map(W) as info:
        tail = info.data[16:]
        tail[0] = 5
    assert tail[0] == 5  # valid: it keeps the mapping
    del tail
    gc.collect()
    assert mem.lock_state == 0


def test_readonly_numpy_array_refuses_writes(system):
    mem = system.alloc(16)
    with mem.map(R) as info:
        arr = numpy.frombuffer(info.data, dtype=numpy.uint8)
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1
        del arr


def test_map_after_the_block(system):
    mem = system.alloc(16)
    with mem.map(W) as info:
        pass
    assert info.data is None
    with pytest.raises(BufferError):
        memoryview(info)
    with pytest.raises(ValueError):
        mem.unmap(info)
    # exiting again does nothing
    info.__exit__(None, None, None)
    assert "unmapped" in repr(info)


def test_map_without_unmap_is_freed_with_its_mapinfo(system):
    mem = system.alloc(16)
    assert mem.map(W).data[0] == 0  # the MapInfo and its view die here
    gc.collect()
    assert mem.lock_state == 0


def test_nested_maps_follow_the_lock_rules(system):
    mem = system.alloc(16)
    with mem.map(R) as a, mem.map(R) as b:
        assert bytes(a.data) == bytes(b.data)
        with pytest.raises(mediamem.Error):
            mem.map(W)
    s = mem.share()
    with pytest.raises(mediamem.ReadOnlyError):
        s.map(W)


def test_share_copy_resize_is_span(system):
    mem = system.alloc(100, Gst.AllocationParams(prefix=10))
    assert mem.get_sizes() == (100, 10, mem.maxsize)
    a, b = mem.share(0, 50), mem.share(50)
    assert a.get_sizes()[:2] == (50, 10) and b.get_sizes()[:2] == (50, 60)
    assert a.parent is not None and a.parent.get_sizes() == mem.get_sizes()
    assert a.flags & Gst.MemoryFlags.READONLY
    assert a.is_span(b) == (True, 0)  # a's offset in the parent's visible bytes
    assert b.is_span(a) == (False, 0)
    pre = mem.share(-10, 10)  # into the prefix, as GStreamer allows
    assert pre.get_sizes()[:2] == (10, 0)
    del a, b, pre
    c = mem.copy(10, 20)
    assert c.get_sizes()[:2] == (20, 0) and c.is_writable()
    c2 = mem.copy()
    assert c2.size == 100
    mem.resize(5, 20)
    assert mem.get_sizes()[:2] == (20, 15)
    mem.resize(-15, 100)
    assert mem.get_sizes()[:2] == (100, 0)
    with pytest.raises(mediamem.NegativeOffsetError):
        mem.resize(-1, 10)
    s1, s2 = mem.share(), mem.share()
    assert not mem.is_writable()
    with pytest.raises(mediamem.NotWritableError):
        mem.resize(0, 10)  # shared twice, as GStreamer's is_writable
    del s1, s2


def test_no_share_flag(system):
    mem = system.alloc(10, Gst.AllocationParams(flags=Gst.MemoryFlags.NO_SHARE))
    with pytest.raises(mediamem.NoShareError):
        mem.share()


def test_flag_values_are_gstreamers():
    assert (R, W) == (1, 2)
    assert Gst.MapFlags.FLAG_LAST == 1 << 16
    assert Gst.MemoryFlags.READONLY == 2
    assert Gst.MemoryFlags.NO_SHARE == 16
    assert Gst.MemoryFlags.ZERO_PREFIXED == 32
    assert Gst.MemoryFlags.ZERO_PADDED == 64
    assert Gst.MemoryFlags.PHYSICALLY_CONTIGUOUS == 128
    assert Gst.MemoryFlags.NOT_MAPPABLE == 256
    assert Gst.MemoryFlags.LAST == 1 << 20


def test_gst_init_is_harmless():
    assert Gst.init(None) is None
    assert Gst.init_check(None) == (True, None)
    assert Gst.is_initialized()


def test_errors_one_base_class_a_subclass_per_kind():
    assert issubclass(mediamem.Error, Exception)
    assert len(mediamem.ERROR_KINDS) >= 30
    for kind, cls in mediamem.ERROR_KINDS.items():
        assert issubclass(cls, mediamem.Error) and cls is not mediamem.Error
        assert cls.__name__ == kind + "Error"
        assert cls.__doc__
        assert getattr(mediamem, cls.__name__) is cls
    try:
        Gst.Allocator.find(None).alloc(1 << 63)
    except mediamem.Error as e:
        assert e.kind == "SizeOverflow" and e.errno is None
        assert "overflow" in str(e)


def test_probe():
    rows = mediamem.probe()
    names = {r["name"] for r in rows}
    assert {"SystemMemory", "fd", "shm", "dmabuf", "udmabuf", "hugepage"} <= names
    for r in rows:
        assert set(r) == {
            "name", "mem_type", "available", "caps", "plain_alloc", "fd_backed",
            "dmabuf", "contiguous", "copies_to", "detail",
        }
        assert isinstance(r["available"], bool) and isinstance(r["caps"], list)
        assert r["detail"]
    sysrow = next(r for r in rows if r["name"] == "SystemMemory")
    assert sysrow["available"] and sysrow["plain_alloc"]
    shm = next(r for r in rows if r["name"] == "shm")
    assert shm["available"] and shm["fd_backed"]


def test_pool(shm):
    pool = mediamem.MemoryPool(shm, 4096, min=1, max=2)
    assert (pool.size, pool.max, pool.free_count, pool.outstanding) == (4096, 2, 1, 0)
    a = pool.acquire()
    b = pool.acquire(timeout=1.0)
    assert pool.outstanding == 2 and a.size == 4096
    assert mediamem.is_fd_memory(a)
    with pytest.raises(mediamem.PoolExhaustedError):
        pool.acquire()
    with pytest.raises(mediamem.PoolExhaustedError):
        pool.acquire(timeout=0.02)
    s = a.share()
    del a
    gc.collect()
    assert pool.outstanding == 2  # the share holds the block
    del s
    gc.collect()
    assert pool.outstanding == 1
    c = pool.acquire()
    assert pool.outstanding == 2
    del b, c
    gc.collect()
    assert pool.outstanding == 0 and pool.free_count == 2
    assert "MemoryPool" in repr(pool)
    with pytest.raises(mediamem.OutOfRangeError):
        mediamem.MemoryPool(shm, 4096, min=3, max=2)


def test_pool_waiter_gets_a_memory_from_another_thread(shm):
    import threading

    pool = mediamem.MemoryPool(shm, 4096, 0, 1)
    held = [pool.acquire()]
    t = threading.Timer(0.05, held.clear)  # drops the memory in another thread
    t.start()
    got = pool.acquire(timeout=5.0)  # releases the GIL while waiting
    t.join()
    assert got.size == 4096
