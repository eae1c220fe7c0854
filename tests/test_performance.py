"""gfmkit.performance: glibc keeps freed memory for reuse once tune_allocator() ran (process-wide, so each
case runs in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CYCLES = """
import resource, sys
import numpy as np
from gfmkit.performance import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tune" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # what a batch's edge tensors do: 64 MiB allocated, written, freed
    block = np.empty(8 << 20)
    block[:] = 1.0
    del block
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_freed_memory_instead_of_faulting_it_in_again():
    tuned, tuned_faults = faults("tune")
    plain, plain_faults = faults("plain")
    assert tuned == "True" and plain == "False"
    # glibc's defaults map and fault fresh pages every cycle (huge pages or not), tuned only the first
    assert plain_faults > 4 * tuned_faults
    off, off_faults = faults("tune", GFMKIT_TUNE_ALLOCATOR="0")
    assert off == "False" and off_faults > 4 * tuned_faults
