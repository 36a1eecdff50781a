"""One benchmark process: the Python call overhead of three operations,
through mediamem or through PyGObject (GStreamer), with the same code.

    python3 calls.py mediamem|gi [--number N] [--repeat R]

prints one JSON object: nanoseconds per call, the median of R timings of
N calls each, per operation:

* is_fd_memory: GstAllocators.is_fd_memory(mem) on fd memory (a memfd
  wrapped by FdAllocator);
* map_read_4k: with mem.map(Gst.MapFlags.READ) as info: bytes(info.data)
  on 4 KiB of system memory (gst-python's MapInfo gives a memoryview too);
* share: mem.share(0, 4096) on 4 KiB of system memory, the share freed
  right after.
"""

import json
import os
import statistics
import sys
import timeit


def load(which):
    if which == "mediamem":
        from mediamem import Gst, GstAllocators
    else:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstAllocators", "1.0")
        from gi.repository import Gst, GstAllocators
    Gst.init(None)
    return Gst, GstAllocators


def main():
    which = sys.argv[1]
    number = int(sys.argv[sys.argv.index("--number") + 1]) if "--number" in sys.argv else 20000
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    Gst, GstAllocators = load(which)
    fd = os.memfd_create("bench")
    os.ftruncate(fd, 4096)
    fdmem = GstAllocators.FdAllocator.alloc(
        GstAllocators.FdAllocator.new(), fd, 4096, GstAllocators.FdMemoryFlags.NONE
    )
    sysmem = Gst.Allocator.find(None).alloc(4096, None)
    READ = Gst.MapFlags.READ
    is_fd_memory = GstAllocators.is_fd_memory

    assert is_fd_memory(fdmem) and not is_fd_memory(sysmem)
    with sysmem.map(READ) as info:
        assert len(bytes(info.data)) == 4096
    assert sysmem.share(0, 4096).get_sizes()[0] == 4096
    # statements timed inline by timeit's loop, the same for both
    ops = {
        "is_fd_memory": "is_fd_memory(fdmem)",
        "map_read_4k": "with sysmem.map(READ) as info:\n    bytes(info.data)",
        "share": "sysmem.share(0, 4096)",
        "empty_loop": "pass",
    }
    names = {"is_fd_memory": is_fd_memory, "fdmem": fdmem, "sysmem": sysmem, "READ": READ}
    out = {}
    for name, stmt in ops.items():
        times = timeit.repeat(stmt, globals=names, number=number, repeat=repeat)
        out[name] = statistics.median(times) / number * 1e9
    out["python"] = sys.version.split()[0]
    out["gstreamer"] = Gst.version_string() if hasattr(Gst, "version_string") else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
