"""Process-level performance settings that gfmkit applies only when asked.

glibc serves allocations above its mmap threshold (which it never raises above 32 MiB) with fresh
``mmap`` calls and returns them on ``free``; PaiNN's per-layer edge tensors for a batch of 16
periodic 32-atom cells are 32-64 MiB, so every such operation page-faults new memory (measured here:
inference 1.4x slower in float32, up to 4x in float64). :func:`tune_allocator` keeps freed memory in
the heap instead (like jemalloc with decay disabled). It is process-wide: the CLI's training and
benchmarks call it; in a notebook call it yourself if you train large batches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def tune_allocator() -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc only).

    Returns True when the setting is active (also when a ``GLIBC_TUNABLES`` environment did it),
    False on other C libraries, where nothing changes.
    """
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    if os.name != "posix" or not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    _applied = bool(ok)
    return _applied
