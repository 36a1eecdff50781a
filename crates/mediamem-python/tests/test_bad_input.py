"""Bad input from Python: exceptions, never a crash, never a leaked fd."""

import os
import socket
import threading

import pytest

import mediamem
from mediamem import Gst, GstAllocators
from conftest import memfd, open_fds

R, W = Gst.MapFlags.READ, Gst.MapFlags.WRITE


def closed_fd():
    fd = memfd(4096)
    os.close(fd)
    return fd


def test_wrong_types(system):
    mem = system.alloc(16)
    fd_alloc = GstAllocators.FdAllocator.new()
    for call in (
        lambda: mem.map("READ"),
        lambda: mem.map(None),
        lambda: mem.map(1.5),
        lambda: mem.share("0"),
        lambda: mem.copy(0, "1"),
        lambda: mem.resize(None, 1),
        lambda: mem.is_span(3),
        lambda: mem.unmap("info"),
        lambda: system.alloc("16"),
        lambda: system.alloc(16, "params"),
        lambda: fd_alloc.alloc("3", 16),
        lambda: fd_alloc.alloc(3.0, 16),
        lambda: GstAllocators.FdAllocator.alloc(system, 0, 16, 0),
        lambda: GstAllocators.DmaBufAllocator.alloc(fd_alloc, 3, 16),
        lambda: GstAllocators.DRMDumbAllocator.new_with_device_path(3),
        lambda: Gst.Allocator.find(3),
        lambda: Gst.Allocator.register("x", "y"),
        lambda: Gst.AllocationParams(align="x"),
        lambda: mediamem.MemoryPool("shm", 10),
        lambda: mediamem.Receiver(object()),
        lambda: mediamem.Memory(),
        lambda: mediamem.MapInfo(),
    ):
        with pytest.raises(TypeError):
            call()


def test_negative_and_huge_sizes(system, shm):
    fd = memfd(4096)
    try:
        for call in (
            lambda: system.alloc(-1),
            lambda: shm.alloc(-4096),
            lambda: mediamem.FdAllocator().alloc(fd, -1),
            lambda: mediamem.DmaBufAllocator().alloc(fd, -10),
            lambda: mediamem.FdAllocator().alloc_full(fd, 10, -1, 5),
            lambda: Gst.AllocationParams(prefix=-1),
            lambda: mediamem.MemoryPool(shm, -1),
            lambda: system.alloc(1 << 70),
            lambda: system.alloc(16).map(-1),
            lambda: system.alloc(16).resize(0, -1),
        ):
            with pytest.raises(OverflowError):
                call()
        os.fstat(fd)  # refused before the fd was taken: still the caller's
    finally:
        os.close(fd)
    mem = system.alloc(16)
    for call, exc in (
        (lambda: system.alloc(1 << 63), mediamem.SizeOverflowError),
        (lambda: system.alloc((1 << 64) - 1), mediamem.SizeOverflowError),
        (lambda: mem.share(0, -2), ValueError),
        (lambda: mem.share(-17), ValueError),
        (lambda: mem.share(0, 100), mediamem.OutOfRangeError),
        (lambda: mem.share(1 << 62, 1 << 62), mediamem.Error),
        (lambda: mem.copy(0, 1 << 40), mediamem.OutOfRangeError),
        (lambda: mem.copy(0, -5), ValueError),
        (lambda: mem.resize(0, 1000), mediamem.OutOfRangeError),
        (lambda: mem.map(0), mediamem.InvalidMapFlagsError),
        (lambda: mem.map(4), mediamem.InvalidMapFlagsError),
    ):
        with pytest.raises(exc):
            call()
    assert mem.get_sizes() == (16, 0, 23) and mem.lock_state == 0


def test_bad_fds(no_fd_leak):
    fd_alloc, dmabuf_alloc = mediamem.FdAllocator(), mediamem.DmaBufAllocator()
    dead = closed_fd()
    for fd in (-1, -2**31, 2**31, 2**40):
        for call in (
            lambda: fd_alloc.alloc(fd, 16),
            lambda: fd_alloc.alloc(fd, 16, mediamem.FdMemoryFlags.DONT_CLOSE),
            lambda: dmabuf_alloc.alloc(fd, 16),
            lambda: GstAllocators.DRMDumbAllocator.new_with_fd(fd),
            lambda: mediamem.Sender(fd),
            lambda: mediamem.Receiver(fd),
        ):
            with pytest.raises((ValueError, OverflowError)):
                call()
    for call in (
        lambda: fd_alloc.alloc(dead, 16),
        lambda: fd_alloc.alloc(dead, 16, mediamem.FdMemoryFlags.DONT_CLOSE),
        lambda: dmabuf_alloc.alloc_with_flags(dead, 16, 0),
        lambda: GstAllocators.DRMDumbAllocator.new_with_fd(dead),
        lambda: mediamem.Sender(dead),
        lambda: mediamem.Receiver(dead),
    ):
        with pytest.raises(mediamem.BadFdError) as e:
            call()
        assert e.value.kind == "BadFd"
    # an fd too small for the size asked: refused, and the fd is still the
    # caller's (it becomes the memory's only when the call succeeds)
    fd = memfd(100)
    try:
        for call in (
            lambda: fd_alloc.alloc(fd, 4096),
            lambda: fd_alloc.alloc_full(fd, 100, 50, 51),
            lambda: dmabuf_alloc.alloc(fd, 4096),
        ):
            with pytest.raises(mediamem.Error):
                call()
            os.fstat(fd)
        mem = fd_alloc.alloc(fd, 100)  # and then it can still be used
        assert GstAllocators.fd_memory_get_fd(mem) == fd
        del mem
        with pytest.raises(OSError):
            os.fstat(fd)  # the memory closed it
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    # not a DRM device
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(mediamem.BadFdError):
            GstAllocators.DRMDumbAllocator.new_with_fd(fd)
    finally:
        os.close(fd)
    with pytest.raises(mediamem.NotAvailableError):
        GstAllocators.DRMDumbAllocator.new_with_device_path("/nonexistent/card0")
    with pytest.raises(mediamem.BadFdError):
        GstAllocators.DRMDumbAllocator.new_with_device_path("/dev/null")
    with pytest.raises(mediamem.BadFdError):
        mediamem.DmaHeapAllocator.new("../../etc/passwd")
    with pytest.raises(mediamem.NotAvailableError):
        mediamem.DmaHeapAllocator.new("no-such-heap")


def test_system_memory_has_no_fd_to_dup(system):
    with pytest.raises(mediamem.WrongKindError):
        system.alloc(10).dup_fd()


def test_map_used_after_its_context(system):
    mem = system.alloc(64)
    with mem.map(W) as info:
        data = info.data
        sub = data[8:16]
    # the block's own view is released; a slice of it keeps the bytes
    with pytest.raises(ValueError):
        data[0] = 1
    with pytest.raises(ValueError):
        bytes(data)
    sub[0] = 3
    assert info.data is None and not info.mapped
    with pytest.raises(BufferError):
        memoryview(info)
    with pytest.raises(ValueError):
        mem.unmap(info)
    del sub
    assert mem.lock_state == 0
    # a MapInfo that outlives its memory's other references keeps it alive
    # while mapped, and lets it go at the end
    info = system.alloc(8).map(R)
    assert info.memory.size == 8
    info.memory.unmap(info)
    assert info.memory is None


def test_no_leaked_fds_over_many_cycles(shm, no_fd_leak):
    fd_alloc = mediamem.FdAllocator()
    for i in range(300):
        fd = memfd(8192)
        mem = fd_alloc.alloc(fd, 8192, mediamem.FdMemoryFlags.KEEP_MAPPED if i % 2 else 0)
        with mem.map(W) as info:
            info.data[0] = i & 0xFF
        s = mem.share(4096)
        os.close(mem.dup_fd())
        m2 = shm.alloc(4096)
        with m2.map(R) as info:
            bytes(info.data)
        small = memfd(10)
        with pytest.raises(mediamem.BeyondFileError):
            fd_alloc.alloc(small, 4096)
        os.close(small)  # refused: still the caller's
        del mem, s, m2, info
    for _ in range(50):
        tx, rx = mediamem.ipc.pair()
        m = shm.alloc(4096)
        tx.send_frame([m])
        f = rx.recv()
        del f
        rx.flush()
        tx.wait_release()
        tx.close()
        del rx, tx, m


def test_calls_from_many_threads(shm, no_fd_leak):
    shared = shm.alloc(1 << 16)
    sysmem = Gst.Allocator.find(None).alloc(4096)
    errors, unexpected = [], []
    barrier = threading.Barrier(8)

    def worker(n):
        barrier.wait()
        for i in range(300):
            try:
                target = shared if n % 2 else sysmem
                flags = W if (i + n) % 5 == 0 else R
                with target.map(flags) as info:
                    if flags == W:
                        info.data[n] = i & 0xFF
                    else:
                        info.data[n]
                s = target.share(n, 64)
                assert GstAllocators.is_fd_memory(s) is (target is shared)
                GstAllocators.fd_memory_get_fd(s)
                s.copy()
                if i % 50 == 0:
                    tx, rx = mediamem.ipc.pair()
                    tx.send_frame([shm.alloc(4096)])
                    rx.recv()
                    tx.close()
                    rx.close()
            except mediamem.Error as e:  # lock conflicts between threads
                errors.append(e.kind)
            except BaseException as e:  # anything else is a bug
                unexpected.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert unexpected == []
    assert set(errors) <= {"LockConflict", "Aliased", "Shared"}
    assert shared.lock_state == 0 and sysmem.lock_state == 0


def test_a_blocked_receiver_does_not_hold_the_interpreter():
    a, b = socket.socketpair()
    rx = mediamem.Receiver(b)
    got = []
    t = threading.Thread(target=lambda: got.append(rx.recv()))
    t.start()
    # recv() waits with the GIL released: this thread runs, and closing the
    # peer ends the wait
    tx = mediamem.Sender(a)
    tx.send_eos()
    t.join(timeout=30)
    assert not t.is_alive() and got == [None]
    tx.close()
    rx.close()
    a.close()
    b.close()




# Truncating the file under a mapping: in a child process, so that a
# regression (a SIGBUS) kills the child, not the test run.
TRUNCATE = """
import os, sys, mediamem
keep = sys.argv[1] == "keep"
fd = os.memfd_create("t")  # not sealed: anyone with the number can shrink it
os.ftruncate(fd, 8192)
mem = mediamem.FdAllocator().alloc(fd, 8192, mediamem.FdMemoryFlags.KEEP_MAPPED if keep else 0)
with mem.map(mediamem.MapFlags.READ) as info:
    os.ftruncate(fd, 0)
    print("read", info.data[5000], bytes(info.data[-3:]))
try:
    with mem.map(mediamem.MapFlags.READ) as info:
        print("again", info.data[0])
except mediamem.TruncatedError as e:
    print("raised", e.kind)
"""


@pytest.mark.parametrize("mode", ["keep", "plain"])
def test_a_file_truncated_under_its_mapping_does_not_kill_the_interpreter(mode):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", TRUNCATE, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, (out.returncode, out.stderr)
    lines = out.stdout.splitlines()
    assert lines[0] == "read 0 b'\\x00\\x00\\x00'"
    # kept mapped: the guard's hit is remembered; otherwise a new mapping
    # of the now empty file reads zeros under its own guard
    assert lines[1] == ("raised Truncated" if mode == "keep" else "again 0")


def test_sealed_memfds_and_shm_need_no_guard(shm):
    import fcntl

    fd = memfd(4096)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    mem = mediamem.FdAllocator().alloc(fd, 4096)
    with mem.map(W) as info:
        info.data[0] = 1
    with pytest.raises(OSError):
        os.ftruncate(fd, 0)  # the seal holds
