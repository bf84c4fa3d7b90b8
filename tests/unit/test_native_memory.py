"""What ``stream.native_memory`` does to glibc's allocator, observed through glibc itself.

Each check runs in a fresh interpreter: the thresholds are process-wide, and glibc's dynamic
mmap threshold depends on what the process freed before.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from stream import native_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
pytestmark = pytest.mark.skipif(not GLIBC, reason="tune() and trim() act on glibc only")

# Allocates through libc's malloc and reads mallinfo2() (glibc >= 2.33): hblks is the number
# of blocks served by mmap, arena the bytes of the main heap.
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    from stream import native_memory as nm

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2

    def mapped(size):
        # True when a block of this size is served by mmap (not from the heap)
        before = libc.mallinfo2().hblks
        p = libc.malloc(size)
        inside = libc.mallinfo2().hblks - before
        libc.free(p)
        return inside == 1

    out = {}
    if sys.argv[1] == "tune":
        out["tuned"] = nm.tune()
    # glibc raises its mmap threshold to the size of a mapped block that is freed...
    libc.free(libc.malloc(4 * 1024 * 1024))
    # ...so without tune() the next big buffers come from the heap
    out["mapped_1m"] = mapped(1024 * 1024)
    out["mapped_at_threshold"] = mapped(nm.MMAP_THRESHOLD)
    out["mapped_below_threshold"] = mapped(nm.MMAP_THRESHOLD - 4096)
    # trim(): free blocks in the middle of the heap (a live block above pins its top)
    blocks = [libc.malloc(100 * 1024) for _ in range(40)]
    pin = libc.malloc(64)
    for p in blocks:
        libc.free(p)
    out["trimmed"] = nm.trim()
    out["trimmed_again"] = nm.trim()
    libc.free(pin)
    print(json.dumps(out))
""")


def probe(mode: str) -> dict[str, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return dict(json.loads(out.stdout))


def test_tune_fixes_the_mmap_threshold() -> None:
    untuned, tuned = probe("plain"), probe("tune")
    # glibc's default behaviour, which tune() exists to stop: after a big block is freed,
    # blocks of a megabyte no longer get their own mapping (nor are returned when freed)
    assert untuned["mapped_1m"] is False
    assert untuned["mapped_at_threshold"] is False
    # tune() took: the threshold stays at MMAP_THRESHOLD however big the freed block was
    assert tuned == {**tuned, "tuned": True, "mapped_1m": True, "mapped_at_threshold": True,
                     "mapped_below_threshold": False}


def test_trim_returns_free_heap_memory_and_says_so() -> None:
    for result in (probe("plain"), probe("tune")):
        assert result["trimmed"] is True  # 4 MB of freed blocks went back to the system
        assert result["trimmed_again"] is False  # nothing left to return


def test_tune_reports_glibc_taking_the_thresholds() -> None:
    assert native_memory._LIBC is not None  # found on glibc
    assert native_memory.tune() is True
