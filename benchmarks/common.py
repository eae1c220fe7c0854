"""Shared helpers of the benchmark scripts: timing, machine facts, cached demo data, JSON output.

Not part of gfmkit and not a test. Every script prints one JSON document to stdout and logs to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: The mixed 10,000-structure set: four pretraining demo datasets at one scale (7000 bulk, 1050 slabs,
#: 1750 molecules, 280 clusters = 10,080 structures). ``--quick`` uses a tenth of it.
MIXED_DATASETS = ("bulk", "surfaces", "molecules", "clusters")
MIXED_SCALE = 3.5
MIXED_SCALE_QUICK = 0.35


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a ~10 s smoke-test version (small data, fewer repeats)")
    p.add_argument("--out", type=Path, help="also write the JSON document to this file")
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("GFMKIT_BENCH_DATA", Path(tempfile.gettempdir()) / "gfmkit-bench")),
        help="cache directory of the generated demo data (reused by later runs; default $GFMKIT_BENCH_DATA "
        "or <tmp>/gfmkit-bench)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported; >= 3)")
    return p


def time_repeats(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; seconds (median, min, all)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": [round(t, 5) for t in times]}


def time_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int = 3, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """:func:`time_repeats` for several functions, interleaved: each round runs every function once,
    so a load change on a shared machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": [round(x, 5) for x in t]}
        for name, t in times.items()
    }


def rate(timing: dict[str, Any], count: int) -> float:
    """Items per second from the median of a :func:`time_repeats` result."""
    return count / timing["median_s"]


def machine_info() -> dict[str, Any]:
    import adios2
    import ase
    import numpy
    import torch
    import vesin

    try:
        import torch_geometric

        pyg = torch_geometric.__version__
    except ImportError:  # pragma: no cover
        pyg = None
    try:
        import matscipy

        matscipy_version = matscipy.__version__
    except ImportError:
        matscipy_version = None
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_geometric": pyg,
        "numpy": numpy.__version__,
        "ase": ase.__version__,
        "adios2": adios2.__version__,
        "vesin": vesin.__version__,
        "matscipy": matscipy_version,
    }


def _complete(directory: Path, datasets: Sequence[str], scale: float) -> bool:
    from gfmkit.data.demo import DEMO_DATASETS
    from gfmkit.data.store_read import Store, StoreError

    for name in datasets:
        path = directory / f"{name}.bp"
        if not path.exists():
            return False
        try:
            if len(Store(path)) != DEMO_DATASETS[name].size(scale):
                return False
        except StoreError:
            return False
    return True


def demo_data(root: Path, label: str, datasets: Sequence[str] | None, scale: float, seed: int = 0) -> tuple[Path, float | None]:
    """Stores of ``datasets`` (all when None) at ``scale`` under ``root/label``, generated once and cached.

    Returns the directory and the generation time in seconds (None when the cache was used).
    """
    from gfmkit.data.demo import DEMO_DATASETS, build_demo

    names = list(DEMO_DATASETS) if datasets is None else list(datasets)
    directory = root / label
    missing = [name for name in names if not _complete(directory, [name], scale)]
    if not missing:
        log(f"using cached demo data {directory}")
        return directory, None
    # only what the cache lacks (a dataset added to the demo, a store cut short): gfmkit's own stores
    log(f"generating demo data {missing} at scale {scale} into {directory} (cached for later runs)")
    started = time.perf_counter()
    build_demo(directory, seed=seed, scale=scale, datasets=missing, progress=False, overwrite=True)
    seconds = time.perf_counter() - started
    log(f"generated in {seconds:.1f} s")
    return directory, seconds


def mixed_data(root: Path, quick: bool) -> tuple[list[Path], float | None]:
    """The mixed set's store paths (in :data:`MIXED_DATASETS` order) and generation time (None if cached)."""
    scale = MIXED_SCALE_QUICK if quick else MIXED_SCALE
    directory, seconds = demo_data(root, f"mixed_s{scale}", MIXED_DATASETS, scale)
    return [directory / f"{name}.bp" for name in MIXED_DATASETS], seconds


def disk_bytes(path: Path) -> int:
    """Size of a file, or of every file under a directory (an ADIOS2 BP store is a directory)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def emit(document: dict[str, Any], out: Path | None) -> None:
    if isinstance(document.get("machine"), dict) and hasattr(os, "getloadavg"):
        document["machine"]["load_average_at_end"] = os.getloadavg()  # other work on a shared machine
    text = json.dumps(document, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        log(f"wrote {out}")
