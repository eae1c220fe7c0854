"""Training throughput of gfmkit.train on 1 and 2 MPI ranks, scaling efficiency, data-loading share.

    .venv/bin/python benchmarks/train_speed.py [--quick] [--out FILE.json] [--data DIR] [--repeats N]

Each case is a real ``gfmkit.train.train`` run in its own process(es), on the demo set (all 8 demo
datasets at scale 1, 3,730 structures; ``--quick``: scale 0.1), PaiNN 64 features / 2 layers / 4.5 Å
(``--hidden``/``--layers`` to change), float32, temperature sampler, global batch 16, AdamW, EMA, no
validation and no checkpoints inside the timed steps:

- ``1 rank x 1 thread``: ``python`` with OMP_NUM_THREADS=1;
- ``2 ranks x 1 thread``: ``mpiexec -n 2`` (this script launches it), each rank holding half of every
  global batch (atom-balanced slices), gradients summed with gloo;
- ``1 rank x 2 threads``: the same cores used by one process, for reference.

From each run's metrics (one record per step): throughput = structures of the timed steps / wall time
between the first and last timed step (the first ``warmup`` steps are skipped); data share = time
waiting for the next batch (read + neighbour list + collate, in the training process with the
default ``--workers 0``; with workers, the wait for their batches) / step time, on rank 0; ``collective_ms_per_step`` is rank 0's time inside the three
all-reduces of a step (counts and stop flag, gradients, loss sums), which includes waiting for the
slower rank. Scaling efficiency = 2-rank throughput / (2 x 1-rank
throughput). The cases run interleaved, one of each per round; medians over the rounds are reported.
Prints one JSON document to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from gfmkit.studies.scaling import run_throughput


def worker(config_json: str, run_dir: str) -> None:
    from gfmkit.train import train

    train(json.loads(config_json), run_dir)


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise SystemExit("no mpiexec found (pip install mpich, or load the site MPI)")
    return found


def run_case(ranks: int, threads: int, config: dict, root: Path, label: str, warmup: int) -> dict:
    run_dir = root / label
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    command = [sys.executable, __file__, "--worker", json.dumps(config), str(run_dir)]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    total = time.perf_counter() - started
    return {**run_throughput(run_dir, warmup), "process_wall_s": total}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cases", default="1rank_1thread,2ranks_1thread,1rank_2threads",
                   help="comma-separated subset of the cases (1rank_1thread, 2ranks_1thread, 1rank_2threads)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 80; --quick 25)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank (default 0: in the training process)")
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (25 if args.quick else 80)
    warmup = 5
    scale = 0.1 if args.quick else 1.0
    data_dir, generate_s = common.demo_data(args.data, f"demo_s{scale:g}", None, scale)
    config = {
        "data": {"stores": [str(data_dir)], "val_split": None, "preload": True, "num_workers": args.workers},
        "model": {"hidden": args.hidden, "layers": args.layers, "n_rbf": 16, "cutoff": 4.5, "head_hidden": 32},
        "sampler": {"strategy": "temperature", "temperature": 2.0, "batch_size": 16},
        "optimizer": {"lr": 1e-3, "ema_decay": 0.99},
        "precision": "fp32",
        "device": "cpu",
        "max_steps": steps,
        "log_every": 1,
        "checkpoint_every": 10**9,
        "validate_every": 10**9,
        "progress": False,
    }
    known = {"1rank_1thread": (1, 1), "2ranks_1thread": (2, 1), "1rank_2threads": (1, 2)}
    cases = {name: known[name] for name in args.cases.split(",")}
    root = Path(tempfile.mkdtemp(prefix="gfmkit-train-speed-"))
    document = {"benchmark": "train_speed", "issue": 6, "quick": args.quick, "machine": common.machine_info(),
                "setup": {"data": str(data_dir), "data_scale": scale, "data_generate_s": generate_s,
                          "model": config["model"], "precision": "fp32", "global_batch": 16, "steps": steps,
                          "warmup_steps": warmup, "repeats": repeats, "num_workers": args.workers}}
    results: dict[str, list[dict]] = {name: [] for name in cases}
    try:
        for round_ in range(repeats):
            for name, (ranks, threads) in cases.items():
                common.log(f"round {round_ + 1}/{repeats}: {name}")
                measured = run_case(ranks, threads, {**config, "seed": round_}, root, name, warmup)
                results[name].append(measured)
                common.log(f"  {measured['structures_per_s']:.1f} structures/s, data share {measured['data_share']:.1%}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {}
    for name, runs in results.items():
        summary[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        summary[name]["structures_per_s_all"] = [round(r["structures_per_s"], 2) for r in runs]
    document["results"] = summary
    rate = {name: s["structures_per_s"] for name, s in summary.items()}
    scaling = {}
    if "1rank_1thread" in rate and "2ranks_1thread" in rate:
        scaling["speedup_2_ranks"] = rate["2ranks_1thread"] / rate["1rank_1thread"]
        scaling["efficiency_2_ranks"] = rate["2ranks_1thread"] / (2 * rate["1rank_1thread"])
    if "1rank_2threads" in rate and "2ranks_1thread" in rate:
        scaling["two_ranks_vs_one_rank_two_threads"] = rate["2ranks_1thread"] / rate["1rank_2threads"]
    document["scaling"] = scaling
    document["data_share_goal"] = "under 10% of step time"
    common.emit(document, args.out)


if __name__ == "__main__":
    main()
