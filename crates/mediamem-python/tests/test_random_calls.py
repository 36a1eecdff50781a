"""Random calls with random arguments, good and bad, in random order:
only exceptions, never a crash, a hang or a leaked fd."""

import gc
import os
import random

import numpy
import pytest

import mediamem
from mediamem import Gst, GstAllocators
from conftest import memfd, open_fds

VALUES = [
    -(2**70), -(2**63), -4097, -1, 0, 1, 2, 3, 4, 7, 63, 100, 4095, 4096, 8192,
    2**20 + 1, 2**63 - 1, 2**64, 2**70, None, "x", 1.5, b"", [], object(),
]
class Empty(Exception):
    """Nothing to pick from yet."""


ALLOWED = (mediamem.Error, TypeError, ValueError, OverflowError, BufferError, IndexError, Empty)


def value(rng):
    return rng.choice(VALUES) if rng.random() < 0.4 else rng.randrange(0, 9000)


@pytest.mark.parametrize("seed", range(4))
def test_random_calls(seed, no_fd_leak):
    rng = random.Random(seed)
    shm = mediamem.ShmAllocator.get()
    system = Gst.Allocator.find(None)
    fd_alloc, dmabuf_alloc = mediamem.FdAllocator(), mediamem.DmaBufAllocator()
    mems, infos, views = [system.alloc(4096), shm.alloc(4096)], [], []
    tx, rx = mediamem.ipc.pair(guard_unsealed=True)
    tx.set_timeout(1.0)
    rx.set_timeout(0.01)
    pool = mediamem.MemoryPool(shm, 4096, 0, 3)

    def pick(seq):
        if not seq:
            raise Empty
        return rng.choice(seq)

    def owning(alloc, *args):
        """An import of a new memfd: the memory's if it succeeds or was
        asked not to close it (DONT_CLOSE), the caller's to close otherwise."""
        fd = memfd(8192)
        try:
            mem = alloc(fd, *args)
        except BaseException:
            os.close(fd)
            raise
        if args[1:] and args[1] == 4:
            os.close(fd)
        return mem

    def some(v):
        if v is None:  # the data of an ended map
            raise Empty
        return v

    ops = [
        lambda: mems.append(system.alloc(value(rng), Gst.AllocationParams(
            flags=rng.choice([0, 2, 16, 32, 64]), align=rng.choice([0, 3, 5, 63]),
            prefix=rng.choice([0, 8, -1]), padding=rng.choice([0, 8])))),
        lambda: mems.append(shm.alloc(value(rng))),
        lambda: mems.append(owning(fd_alloc.alloc, value(rng), rng.choice([0, 1, 2, 4]))),
        lambda: mems.append(owning(dmabuf_alloc.alloc, value(rng))),
        lambda: mems.append(pool.acquire()),
        lambda: infos.append(pick(mems).map(rng.choice([1, 2, 3, 0, 4, 256 | 1, value(rng)]))),
        lambda: pick(infos).__exit__(None, None, None),
        lambda: pick(mems).unmap(pick(infos)),
        lambda: views.append(some(pick(infos).data)),
        lambda: views.append(memoryview(pick(infos))),
        lambda: views.append(numpy.frombuffer(some(pick(infos).data), dtype=numpy.uint8)),
        lambda: pick(views)[value(rng)],
        lambda: pick(views).__setitem__(value(rng), rng.randrange(256)),
        lambda: bytes(pick(views)[value(rng):value(rng)]),
        lambda: views.pop(rng.randrange(len(views))) if views else None,
        lambda: infos.pop(rng.randrange(len(infos))) if infos else None,
        lambda: mems.append(pick(mems).share(value(rng), rng.choice([-1, value(rng)]))),
        lambda: mems.append(pick(mems).copy(value(rng), rng.choice([-1, value(rng)]))),
        lambda: pick(mems).resize(rng.choice([-8, 0, 8, value(rng)]), value(rng)),
        lambda: pick(mems).is_span(pick(mems)),
        lambda: os.close(pick(mems).dup_fd()),
        lambda: mems.pop(rng.randrange(len(mems))) if len(mems) > 1 else None,
        lambda: [getattr(GstAllocators, f)(pick(mems) if rng.random() < 0.9 else value(rng))
                 for f in ("fd_memory_get_fd", "is_fd_memory", "is_dmabuf_memory",
                           "dmabuf_memory_get_fd", "is_drm_dumb_memory",
                           "drm_dumb_memory_get_handle", "is_phys_memory",
                           "phys_memory_get_phys_addr")],
        lambda: mems.append(GstAllocators.drm_dumb_memory_export_dmabuf(pick(mems))),
        lambda: tx.send_frame([pick(mems) for _ in range(rng.randrange(3))], b"m"),
        lambda: mems.extend(f.memories) if (f := rx.recv()) else None,
        lambda: tx.poll_releases(),
        lambda: rx.flush(),
        lambda: (pick(mems).get_sizes(), pick(mems).flags, pick(mems).parent, repr(pick(mems))),
    ]
    counts = {}
    for _ in range(3000):
        op = rng.randrange(len(ops))
        try:
            ops[op]()
            counts["ok"] = counts.get("ok", 0) + 1
        except ALLOWED as e:
            counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
    assert counts["ok"] > 500, counts
    del views[:], infos[:], mems[:]
    gc.collect()
    tx.close()
    rx.close()
    gc.collect()
    assert pool.outstanding == 0
