"""Side by side: gfmkit's PaiNN against schnetpack's and HydraGNN's, energy + forces.

    bash benchmarks/setup_peers.sh /path/to/HydraGNN     # once: .venv-bench with the peers
    .venv-bench/bin/python benchmarks/model_speed.py [--quick] [--out FILE.json]

A batch of periodic 32-atom CuAu cells (random fcc 2x2x2 supercells, ~50/50 Cu/Au, rattled, a = 3.8 Å,
~1,340 edges each at 5 Å), batch 16, in float32 and float64. For each model: structures/s of inference
(energy + forces) and of a training step (MSE on energy and forces, backward through the forces with
create_graph, AdamW step); ratios gfmkit/peer and gfmkit/faster peer; matmul FLOPs per step (counted by
torch.utils.flop_counter: mm/addmm/bmm only, so a lower bound on the work) and the achieved rate against
a measured torch.matmul 2048x2048 rate in the same dtype.

Fairness: all models run in this one process, one after another, with torch.set_num_threads(2) (the
machine's cores), the same structures, the same neighbour lists (gfmkit.data.neighbours, built once,
outside the timings), the same dtype, labels, loss and optimiser, 128 features / 3 layers / 20 radial
functions / 5 Å / a 128-64-1 energy MLP (see benchmarks/peers.py for each peer's wiring and shims).
Each timing: 3 untimed warm-up calls, then the median of >= 5 timed calls, the models' calls
interleaved round-robin so that other load on the machine hits all alike (the load average at start and
end is recorded: on a shared 2-core machine, compare ratios rather than absolute rates). Peers that are
missing are reported as unavailable; so is gfmkit's model while ``gfmkit.models`` cannot be imported.

Prints one JSON document to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
from common import time_repeats

THREADS = 2
#: Fraction of the cores' time that other processes may use (at start, and during each dtype's timings)
#: before the report carries a warning. With 2 OpenMP threads and a core busy elsewhere, torch's parallel
#: regions wait on a descheduled thread and these small-op models ran 10-20x slower (1.9 s instead of
#: 0.1 s for one inference of 4 cells); OMP_WAIT_POLICY=PASSIVE in the environment avoided most of that.
BUSY_OTHERS = 0.05
EQUAL_WORK_PEERS = ("schnetpack", "hydragnn")  # all three interactions at 128 features


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (nothing to wait for on CPU)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "xpu":
        torch.xpu.synchronize()


def synced(fn, device: str, autocast: bool = False):
    """``fn`` followed by a device synchronisation; with ``autocast`` inside torch.autocast(bfloat16)."""
    kind = torch.device(device).type

    def run():
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=autocast):
            out = fn()
        synchronize(device)
        return out

    return run


def matmul_rate(dtype: torch.dtype, *, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """FLOP/s of torch.matmul on two n x n matrices (2 n^3 per product), median of ``repeats``."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    timing = time_repeats(synced(lambda: torch.matmul(a, b), device), warmup=2, repeats=repeats)
    return 2 * n**3 / timing["median_s"]


def matmul_flops(fn) -> int:
    """FLOPs of the mm/addmm/bmm/... calls of ``fn`` (torch.utils.flop_counter's formulas). A bare
    dispatch mode: FlopCounterMode's module hooks break ``autograd.grad`` inside a forward."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Counter():
        fn()
    return Counter.total


class OtherLoad:
    """CPU time that other processes used while this one ran: /proc/stat's busy time of all cores minus
    this process's own CPU time, as a fraction of (wall time x cores). Near 0 on a quiet machine."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def fraction(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        wall, busy, own = (e - s for e, s in zip(end, self.start))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "libc": " ".join(platform.libc_ver()),
        "loadavg_at_start": _loadavg(),
        "env": {k: os.environ[k] for k in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES", "OMP_NUM_THREADS",
                                           "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ},
    }


def measure(runners: dict[str, peers.Runner], batch: int, *, warmup: int, repeats: int, peak: float,
            device: str = "cpu", autocast: bool = False) -> dict[str, Any]:
    """Time every runner's inference, then its training step. Repeats are interleaved round-robin across
    models (model A, B, C, A, B, C, ...), so a change of machine load hits all of them alike. With
    ``autocast`` every call of every model runs inside torch.autocast(bfloat16)."""
    results: dict[str, Any] = {}
    for name, runner in runners.items():
        energy, forces = synced(runner.infer, device, autocast)()
        if not (torch.isfinite(energy).all() and torch.isfinite(forces).all()):
            raise RuntimeError(f"{name}: non-finite energy or forces")
        results[name] = {"parameters": runner.n_parameters()}
    for mode in ("inference", "training"):
        calls = {name: synced(r.infer if mode == "inference" else r.train_step, device, autocast)
                 for name, r in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for name, fn in calls.items():
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
        for name, fn in calls.items():
            median = statistics.median(times[name])
            flops = matmul_flops(fn)
            results[name][mode] = {
                "structures_per_s": batch / median,
                "median_s": median,
                "min_s": min(times[name]),
                "times_s": [round(t, 5) for t in times[name]],
                "matmul_flops": flops,
                "matmul_flop_per_s": flops / median,
                "fraction_of_matmul_rate": flops / median / peak,
            }
    for name, runner in runners.items():
        energy, forces = synced(runner.infer, device, autocast)()
        results[name]["finite_after_training"] = bool(torch.isfinite(energy).all() and torch.isfinite(forces).all())
        results[name].update(runner.info)
        log(f"  {name}: inference {results[name]['inference']['structures_per_s']:.1f}/s, "
            f"training {results[name]['training']['structures_per_s']:.1f}/s")
    return results


def ratios(models: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "structures_per_s" not in models.get("gfmkit", {}).get("inference", {}):
        return out
    for mode in ("inference", "training"):
        mine = models["gfmkit"][mode]["structures_per_s"]
        rates = {name: r[mode]["structures_per_s"] for name, r in models.items()
                 if name != "gfmkit" and isinstance(r, dict) and mode in r}
        entry = {f"gfmkit/{name}": mine / rate for name, rate in rates.items()}
        equal = {n: rates[n] for n in EQUAL_WORK_PEERS if n in rates}
        if equal:
            faster = max(equal, key=equal.get)
            entry["faster_peer"] = faster
            entry["gfmkit/faster_peer"] = mine / equal[faster]
        out[mode] = entry
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a ~30 s smoke run (batch 4, 1 warm-up, 3 repeats)")
    p.add_argument("--out", type=Path, help="also write the JSON document to this file")
    p.add_argument("--batch", type=int, default=None, help="structures per batch (16; 4 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (5; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up calls (3; 1 with --quick)")
    p.add_argument("--dtypes", default="float32,float64",
                   help="comma-separated: float32, float64, bf16-autocast (float32 weights, every model's calls "
                        "inside torch.autocast(bfloat16), as gfmkit's bf16-autocast policy)")
    p.add_argument("--threads", type=int, default=THREADS, help=f"torch threads for all models ({THREADS})")
    p.add_argument("--models", default=",".join(peers.BUILDERS),
                   help=f"comma-separated, from {','.join(peers.BUILDERS)}")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, xpu: every model and batch on it; on a GPU the "
                   "structures/s are per GPU")
    p.add_argument("--tune-allocator", action="store_true",
                   help="gfmkit.performance.tune_allocator() for the whole process (every model alike)")
    args = p.parse_args(argv)
    batch = args.batch or (4 if args.quick else 16)
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if not args.quick and repeats < 5:
        p.error("--repeats must be >= 5 outside --quick")

    torch.set_num_threads(args.threads)
    allocator_tuned = False
    if args.tune_allocator:
        from gfmkit.performance import tune_allocator

        allocator_tuned = tune_allocator()
    structures = peers.cuau_cells(batch, seed=0)
    lists = peers.neighbours(structures)
    edges = [int(ei.shape[1]) for ei, _ in lists]
    report: dict[str, Any] = {
        "benchmark": "model_speed",
        "quick": args.quick,
        "machine": machine(),
        "setup": {
            "allocator_tuned": allocator_tuned,
            "device": args.device,
            "device_name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu",
            "threads": args.threads,
            "batch": batch,
            "atoms_per_structure": len(structures[0]),
            "edges_per_structure_mean": float(np.mean(edges)),
            "edges_per_batch": int(sum(edges)),
            "hyperparameters": {"hidden": peers.HIDDEN, "layers": peers.LAYERS, "n_rbf": peers.N_RBF,
                                "cutoff": peers.CUTOFF, "head_hidden": peers.HEAD_HIDDEN},
            "training_step": f"MSE(energy) + MSE(forces), create_graph, AdamW lr {peers.LEARNING_RATE}",
            "warmup": warmup,
            "repeats": repeats,
            "statistic": "median",
            "structures": "fcc CuAu 2x2x2 conventional cells, a=3.8 A, random ~50/50, rattled 0.1 A, EMT labels",
        },
        "versions": {name: peers._version(name) for name in ("torch", "torch_geometric", "schnetpack", "vesin", "ase", "gfmkit")},
        "results": {},
    }
    report["versions"]["hydragnn_commit"] = peers.hydragnn_commit(peers.hydragnn_source())
    probe = OtherLoad()
    time.sleep(1.0)
    busy = probe.fraction()
    report["machine"]["other_processes_cpu_fraction_at_start"] = busy
    if busy is not None and busy > BUSY_OTHERS:
        report.setdefault("warnings", []).append(
            f"other processes used {100 * busy:.0f}% of the cores at start: with {args.threads} OpenMP threads on busy "
            "cores the timings can be 10x too slow; rerun on a quiet machine (OMP_WAIT_POLICY=PASSIVE, recorded under "
            "machine.env, softens the collapse)")
        log("WARNING: " + report["warnings"][-1])
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for dtype_name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        autocast = dtype_name == "bf16-autocast"
        dtype = torch.float32 if autocast else getattr(torch, dtype_name)
        others = OtherLoad()
        peak = matmul_rate(torch.bfloat16 if autocast else dtype, device=args.device)
        log(f"{dtype_name}: torch.matmul 2048x2048 {peak / 1e9:.1f} GFLOP/s")
        models: dict[str, Any] = {}
        runners: dict[str, peers.Runner] = {}
        for name in names:
            try:
                runners[name] = peers.BUILDERS[name](structures, dtype, lists=lists, device=args.device)
            except ImportError as error:
                reason = "gfmkit model not available yet" if name == "gfmkit" else f"{name} not available"
                models[name] = {"available": False, "reason": f"{reason}: {error}"}
                log(f"  {name}: {models[name]['reason']}")
        models.update(measure(runners, batch, warmup=warmup, repeats=repeats, peak=peak, device=args.device,
                              autocast=autocast))
        del runners
        busy = others.fraction()
        report["results"][dtype_name] = {"matmul_flop_per_s": peak, "models": models, "ratios": ratios(models),
                                         "other_processes_cpu_fraction": busy}
        if busy is not None and busy > BUSY_OTHERS:
            warning = (f"{dtype_name}: other processes used {100 * busy:.0f}% of the cores during the timings; "
                       "with OpenMP threads on busy cores the rates can be several times too low: rerun on a quiet machine")
            report.setdefault("warnings", []).append(warning)
            log("WARNING: " + warning)
    report["shims"] = list(dict.fromkeys(peers.SHIMS)) + (
        ["torch.utils.data.dataloader.T_co restored for schnetpack"] if "schnetpack" in sys.modules else [])
    report["machine"]["loadavg_at_end"] = _loadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
