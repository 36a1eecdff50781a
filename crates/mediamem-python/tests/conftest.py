"""Shared helpers of mediamem's Python tests."""

import gc
import os

import pytest

import mediamem

#: In the QEMU guest (`cargo xtask vm-test`) the devices must be there: a
#: test that would skip for want of one fails instead.
REQUIRE_DEVICES = bool(os.environ.get("MEDIAMEM_REQUIRE_DEVICES"))


def need(what, reason):
    """Skip (host) or fail (guest) a test that needs `what`."""
    msg = f"{what} is not available here ({reason}); it runs in the QEMU guest (cargo xtask vm-test)"
    if REQUIRE_DEVICES:
        pytest.fail(msg)
    pytest.skip(msg)


def open_fds():
    """The fds open in this process."""
    gc.collect()
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_leak():
    """Fails the test if it leaves fds open."""
    before = open_fds()
    yield
    after = open_fds()
    # listdir's own fd is closed by the time it returns
    assert after == before, f"fds leaked: {sorted(set(after) - set(before))}"


def memfd(size, name="mediamem-test"):
    """A fresh memfd of `size` bytes (the caller owns it)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd


@pytest.fixture
def system():
    return mediamem.Allocator.find(None)


@pytest.fixture
def shm():
    return mediamem.ShmAllocator.get()
