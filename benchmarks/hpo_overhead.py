"""What a gfmkit hyperparameter search spends outside training: DeepHyper's proposals, trial set-up
(data opening, head fitting, model building) and evaluation bookkeeping, against the training steps;
and, with ``--compare-random``, what the Bayesian search (CBO) finds against DeepHyper's RandomSearch
with the same space, budget, trials and seed.

    .venv/bin/python benchmarks/hpo_overhead.py [--quick] [--compare-random] [--out FILE.json] [--data DIR]

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
    p.add_argument("--compare-random", action="store_true", help="also run DeepHyper's RandomSearch, same budget")
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
    if args.compare_random:
        report["random_search"] = random_search(config, space, trials, out.parent / "random")
        report["cbo_best_so_far"] = table["best_so_far"].tolist()
    common.emit(report, args.out)
    return report


def random_search(config: dict, space: dict, trials: int, out: Path) -> dict:
    """DeepHyper's RandomSearch over the same space with gfmkit's own trial function (the peer)."""
    import functools

    from deephyper.hpo import RandomSearch

    from gfmkit.hpo.backend import deephyper
    from gfmkit.hpo.search import run_trial
    from gfmkit.hpo.space import search_problem

    _, _, evaluator = deephyper()
    run = functools.partial(run_trial, base={**config, "progress": False}, out=str(out))
    started = time.perf_counter()
    results = RandomSearch(search_problem(space), random_state=0, log_dir=str(out)).search(
        evaluator.create(run, method="thread", method_kwargs={"num_workers": 1}), max_evals=trials)
    loss = -pd.to_numeric(results["objective"], errors="coerce")
    return {"search_wall_s": time.perf_counter() - started, "best_val_loss": loss.tolist(),
            "best_so_far": loss.cummin().tolist()}


if __name__ == "__main__":
    main()
