"""Keeping the C allocator from holding on to memory the worker has freed (glibc only).

Measured in a 10-minute soak (BENCHMARKS.md): Python's own heap stays flat, but glibc keeps
the memory of freed record batches, fetch buffers and NumPy arrays (up to 124 MB free
inside its arenas, against 50-130 MB in use). Its mmap threshold rises after the first big
buffer is freed, so later big buffers come from the arenas and are rarely returned. Fixing
the threshold sends big buffers to ``mmap`` (returned on free), and a periodic trim returns
what the arenas hold free. Elsewhere (musl, macOS) both are no-ops.

Examples
--------
>>> tune() == (_LIBC is not None)  # glibc takes both settings; elsewhere nothing is done
True

``tests/unit/test_native_memory.py`` checks what the settings do (where big blocks come
from, and that :func:`trim` returns freed memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
"""``mallopt`` parameter: free memory at the top of the heap above this is returned."""
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter: blocks at least this big are mapped (and unmapped when freed)."""
MMAP_THRESHOLD = 256 * 1024
"""Fixed, so glibc no longer raises it (up to 32 MB) after big blocks are freed."""


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def tune() -> bool:
    """Fix the mmap and trim thresholds; True when the allocator is glibc and took them."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    ok = bool(_LIBC.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)) and ok
    if not ok:
        log.debug("mallopt refused the thresholds")
    return ok


def trim() -> bool:
    """Return free arena memory to the system; True when any was returned."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False
