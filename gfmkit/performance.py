"""Process-level performance settings: glibc's allocator kept from handing memory back and forth, and
torch's thread count for a stretch of work (:func:`torch_threads`).

glibc serves an allocation above its mmap threshold with a fresh ``mmap`` and unmaps it on ``free``,
and hands the top of its heap back once more than the trim threshold is free there. PaiNN's per-layer
edge tensors (tens of MiB per batch, a new size for every batch) then page-fault fresh memory at every
operation. Measured on this 2-core VM (2,000 random structures, demo-sized model, 1 torch thread): a
screen took 13.9 s with glibc's defaults and 6.1 s with :func:`tune_allocator` (2.3x), the model alone
on freshly built batches 7.4 s against 3.7 s; earlier, fp32 inference 1.4x and fp64 up to 4x.

:func:`tune_allocator` raises both thresholds to 1 GiB: memory freed by one batch is reused by the
next (like jemalloc with decay disabled, or torch's CUDA caching allocator), and the process's resident
memory stays near its peak instead of shrinking between batches. gfmkit's commands (the CLI), training,
evaluation and screening call it; ``GFMKIT_TUNE_ALLOCATOR=0`` in the environment leaves the allocator
alone. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc caps the mmap threshold at 32 MiB on some versions; 1 GiB where it allows it
_THRESHOLDS = (1 << 30, 32 << 20)
_applied = False


def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap for reuse instead of returning it to the system (see the module
    doc). Idempotent; returns True when the setting is active, False on other C libraries or when
    ``GFMKIT_TUNE_ALLOCATOR=0``, where nothing changes."""
    global _applied
    if _applied:
        return True
    if os.environ.get("GFMKIT_TUNE_ALLOCATOR", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if os.name != "posix":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):  # macOS: no mallopt (musl's does nothing and returns 0)
        return False
    # the mmap threshold first: setting either one stops glibc's own adjustment of the mmap threshold
    mmap_ok = any(mallopt(_M_MMAP_THRESHOLD, value) == 1 for value in _THRESHOLDS)
    _applied = mmap_ok and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    return _applied


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` torch threads (at least 1), then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(count)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
