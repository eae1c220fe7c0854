"""What a gfmkit hyperparameter search spends outside training: DeepHyper's proposals, trial set-up
(data opening, head fitting, model building) and evaluation bookkeeping, against the training steps.

    .venv/bin/python benchmarks/hpo_overhead.py [--quick] [--out FILE.json] [--data DIR]

A search of ``--trials`` trials (6; 3 with --quick) over learning rate, width, depth and sampler
temperature on the demo data (scale 0.3; 0.05 with --quick), each trial ``--steps`` optimiser steps
(100; 10 with --quick) of a small PaiNN. From the run directories: each trial's wall time from its first
to its last metrics record (training and validation) against the search's total wall time.
Prints one JSON document to stdout.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from gfmkit.data.demo import build_demo
    from gfmkit.hpo import run_hpo

    scale = 0.05 if args.quick else 0.3
    trials = args.trials or (3 if args.quick else 6)
    steps = args.steps or (10 if args.quick else 100)
    data = args.data / f"hpo-demo-{scale:g}"
    if not list(data.glob("*.bp")):
        build_demo(data, scale=scale, progress=False)
    config = {"data": {"stores": [str(data)]}, "model": {"hidden": 32, "layers": 2, "n_rbf": 10, "cutoff": 4.5, "head_hidden": 16},
              "sampler": {"batch_size": 8}, "max_steps": steps, "validate_every": steps, "checkpoint_every": steps}
    space = {"optimizer.lr": [1e-4, 1e-2, "log-uniform"], "model.hidden": {"choices": [16, 32, 64]}, "model.layers": [1, 3],
             "sampler.temperature": [1.0, 4.0]}
    out = Path(tempfile.mkdtemp(prefix="gfmkit-hpo-")) / "search"
    started = time.perf_counter()
    table = run_hpo(config, space, out, max_evals=trials, initial_points=min(trials, 3))
    total = time.perf_counter() - started
    spans = []
    for run_dir in table["run_dir"]:
        metrics = pd.read_json(Path(run_dir) / "metrics.jsonl", lines=True)
        spans.append(float(metrics["time"].max() - metrics["time"].min()))
    report = {
        "benchmark": "hpo_overhead",
        "quick": args.quick,
        "machine": common.machine_info(),
        "setup": {"trials": trials, "steps_per_trial": steps, "demo_scale": scale, "space": space},
        "search_wall_s": total,
        "training_wall_s": sum(spans),
        "outside_training_share": 1 - sum(spans) / total,
        "per_trial": [{"trial": t, "training_wall_s": s, "best_val_loss": float(b)}
                      for t, s, b in zip(table["trial"], spans, table["best_val_loss"])],
    }
    common.emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
