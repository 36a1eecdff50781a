"""Bytes written through numpy land in the memory and are seen by another
process mapping the same fd; frames between processes with the IPC
endpoints."""

import gc
import hashlib
import os
import socket
import subprocess
import sys
import textwrap

import numpy
import pytest

import mediamem
from mediamem import Gst, GstAllocators
from conftest import memfd

# The reader: maps the fd it is given with Python's own mmap (no mediamem)
# and prints the bytes' digest.
MMAP_READER = textwrap.dedent(
    """
    import hashlib, mmap, sys
    fd, size = int(sys.argv[1]), int(sys.argv[2])
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    print(hashlib.sha256(m[:size]).hexdigest())
    """
)

# The same through mediamem in the other process.
MEDIAMEM_READER = textwrap.dedent(
    """
    import hashlib, sys
    from mediamem import Gst, GstAllocators
    fd, size = int(sys.argv[1]), int(sys.argv[2])
    mem = GstAllocators.FdAllocator.new().alloc(fd, size, GstAllocators.FdMemoryFlags.NONE)
    assert GstAllocators.fd_memory_get_fd(mem) == fd
    with mem.map(Gst.MapFlags.READ) as info:
        print(hashlib.sha256(info.data).hexdigest())
    """
)


def run_reader(code, fd, size):
    out = subprocess.run(
        [sys.executable, "-c", code, str(fd), str(size)],
        pass_fds=[fd],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def pattern(n):
    return (numpy.arange(n, dtype=numpy.uint32) * 2654435761 >> 7).astype(numpy.uint8)


@pytest.mark.parametrize("reader", [MMAP_READER, MEDIAMEM_READER], ids=["mmap", "mediamem"])
def test_numpy_writes_seen_by_a_second_process_shm(shm, reader):
    size = 1 << 16
    mem = shm.alloc(size)
    want = pattern(size)
    with mem.map(Gst.MapFlags.WRITE) as info:
        arr = numpy.frombuffer(info.data, dtype=numpy.uint8)
        arr[:] = want
        del arr
    fd = mem.dup_fd()
    try:
        assert run_reader(reader, fd, size) == hashlib.sha256(want.tobytes()).hexdigest()
    finally:
        os.close(fd)


def test_numpy_writes_through_fd_memory_seen_by_a_second_process():
    size = 3 * 4096 + 17
    fd = memfd(size)
    mem = mediamem.FdAllocator.new().alloc(fd, size, mediamem.FdMemoryFlags.NONE)
    with mem.map(Gst.MapFlags.READ | Gst.MapFlags.WRITE) as info:
        a = numpy.frombuffer(info.data, dtype=numpy.uint8)
        a[:] = 0x5A
        a[-1] = 1
        del a
    want = hashlib.sha256(b"\x5a" * (size - 1) + b"\x01").hexdigest()
    assert run_reader(MMAP_READER, GstAllocators.fd_memory_get_fd(mem), size) == want


def test_writes_of_another_process_seen_through_numpy():
    size = 4096
    fd = memfd(size)
    mem = mediamem.FdAllocator.new().alloc(fd, size)
    writer = "import os, sys; os.pwrite(int(sys.argv[1]), bytes(range(256)) * 16, 0)"
    subprocess.run([sys.executable, "-c", writer, str(fd)], pass_fds=[fd], check=True, timeout=60)
    with mem.map(Gst.MapFlags.READ) as info:
        a = numpy.frombuffer(info.data, dtype=numpy.uint8)
        assert (a[:256] == numpy.arange(256)).all()
        del a


# The receiving process: gets frames on fd argv[1], checks each frame's
# bytes against the meta's digest, drops it (the release goes back), stops
# at the end of stream.
RECEIVER = textwrap.dedent(
    """
    import hashlib, sys
    import mediamem
    rx = mediamem.Receiver(int(sys.argv[1]))
    n = 0
    while True:
        f = rx.recv()
        if f is None:
            break
        (mem,) = f.memories
        assert mediamem.is_fd_memory(mem) and mem.flags & mediamem.MemoryFlags.READONLY
        with mem.map(mediamem.MapFlags.READ) as info:
            assert hashlib.sha256(info.data).hexdigest().encode() == f.meta, f.id
        del f, mem
        n += 1
    rx.flush()
    print(n)
    """
)


def test_frames_from_a_pool_to_another_process_and_back(shm):
    a, b = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(b.fileno())],
        pass_fds=[b.fileno()],
        stdout=subprocess.PIPE,
        text=True,
    )
    b.close()
    pool = mediamem.MemoryPool(shm, 1 << 16, 0, 2)
    with mediamem.Sender(a) as tx:
        a.close()
        tx.set_timeout(30.0)
        assert tx.fileno() >= 0
        for i in range(20):
            # the pool's memories come back when the child releases them and
            # the sender reads the releases
            while tx.in_flight >= pool.max:
                assert tx.wait_release() is not None
            mem = pool.acquire()
            with mem.map(Gst.MapFlags.WRITE) as info:
                arr = numpy.frombuffer(info.data, dtype=numpy.uint8)
                arr[:] = i
                del arr
                digest = hashlib.sha256(info.data).hexdigest().encode()
            tx.send_frame([mem], digest)
            del mem
            tx.poll_releases()
        tx.send_eos()
        while tx.in_flight:
            assert tx.wait_release() is not None
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "20"
    gc.collect()
    assert pool.outstanding == 0


def test_in_process_pair(shm):
    tx, rx = mediamem.ipc.pair()
    mem = shm.alloc(4096)
    with mem.map(Gst.MapFlags.WRITE) as info:
        info.data[:3] = b"abc"
    fid = tx.send_frame([mem, mem.share(0, 100)], b"meta")
    f = rx.recv()
    assert f.id == fid and f.meta == b"meta" and len(f.memories) == 2
    assert f.memories[1].size == 100
    with f.memories[0].map(Gst.MapFlags.READ) as info:
        assert bytes(info.data[:3]) == b"abc"
    with pytest.raises(mediamem.ReadOnlyError):
        f.memories[0].map(Gst.MapFlags.WRITE)
    assert "Frame" in repr(f)
    del f, info
    gc.collect()
    rx.flush()
    assert tx.wait_release() == fid
    assert tx.in_flight == 0 and rx.pending_releases == 0
    tx.send_eos()
    assert rx.recv() is None
    tx.close()
    rx.close()
    with pytest.raises(ValueError):
        tx.send_eos()
    with pytest.raises(ValueError):
        rx.fileno()


def test_receiver_refuses_unsealed_memfds_by_policy():
    fd = memfd(4096)
    mem = mediamem.FdAllocator.new().alloc(fd, 4096)
    tx, rx = mediamem.ipc.pair()
    tx.send_frame([mem])
    with pytest.raises(mediamem.RefusedError):
        rx.recv()
    # the same memfd with a guard
    tx2, rx2 = mediamem.ipc.pair(guard_unsealed=True)
    tx2.send_frame([mem])
    assert rx2.recv().memories[0].size == 4096


def test_ipc_errors(system):
    tx, rx = mediamem.ipc.pair()
    with pytest.raises(mediamem.WrongKindError):
        tx.send_frame([system.alloc(10)])
    rx.set_timeout(0.02)
    with pytest.raises(mediamem.TimedOutError) as e:
        rx.recv()
    assert e.value.kind == "TimedOut"
    with pytest.raises(ValueError):
        rx.set_timeout(-1)
    with pytest.raises(mediamem.OsError):
        rx.set_timeout(0)
    tx.set_timeout(None)
    tx.close()
    rx.set_timeout(1.0)
    assert rx.recv() is None  # the peer closed
    with pytest.raises(TypeError):
        tx.send_frame([1, 2])
    with pytest.raises(TypeError):
        mediamem.Sender("not a socket")
    with pytest.raises(ValueError):
        mediamem.Sender(-1)
    r, w = os.pipe()
    try:
        bad = mediamem.Sender(w)  # not a socket: the send fails
        with pytest.raises(mediamem.Error):
            bad.send_eos()
        bad.close()
    finally:
        os.close(r)
        os.close(w)
