"""Flag types with GStreamer's bit values (``enum.IntFlag``, so they are ints)."""

import enum


class MapFlags(enum.IntFlag):
    """Flags of a map request (``Gst.MapFlags``)."""

    READ = 1
    WRITE = 2
    #: The map holds its own reference to the memory (GStreamer 1.28).
    REF_MEMORY = 256
    #: The first flag free for custom use.
    FLAG_LAST = 1 << 16


class MemoryFlags(enum.IntFlag):
    """Flags of a memory (``Gst.MemoryFlags``)."""

    #: Set on every memory (GStreamer's mini-object LOCKABLE).
    LOCKABLE = 1
    READONLY = 2
    NO_SHARE = 16
    ZERO_PREFIXED = 32
    ZERO_PADDED = 64
    PHYSICALLY_CONTIGUOUS = 128
    NOT_MAPPABLE = 256
    #: The first flag free for custom use.
    LAST = 16 << 16


class FdMemoryFlags(enum.IntFlag):
    """Flags of fd memory (``GstAllocators.FdMemoryFlags``)."""

    NONE = 0
    KEEP_MAPPED = 1
    MAP_PRIVATE = 2
    DONT_CLOSE = 4
    #: mediamem only: map under a SIGBUS guard (a truncated file reads as
    #: zeros and the next map raises TruncatedError).
    GUARD_SIGBUS = 1 << 16
