"""Data efficiency and forgetting of fine-tuning: test errors of every fine-tuning strategy against the
same architecture trained from scratch, at several downstream training-set sizes and seeds, and how much
each strategy makes the pretrained heads forget.

    .venv/bin/python benchmarks/finetune_transfer.py [--quick] [--scale S] [--steps N] [--out FILE.json] [--work DIR]

Pretrains a PaiNN (``--hidden`` 32 features, 3 layers, 5 Å) on the demo's five pretraining datasets
(scale 0.3; ``--quick``: 2 layers, scale 0.05 and few steps), then runs
:func:`gfmkit.studies.run_finetune_study` on the six downstream datasets (each new head from the nearest
pretrained head by training composition; property heads fresh) at fractions 0.1, 0.3 and 1 of their
training split, for the strategies scratch, head, lora, last-k, full and full+replay, seeds 0, 1, 2, every
cell with the same steps, batch size, learning rate and schedule. Reports each cell's test MAEs, the gain
scratch MAE / fine-tuned MAE (mean over seeds, with the spread), the pretrained heads' forgetting per
strategy, and the wall time of each stage. The peer here is the scratch baseline in the same run.
Prints one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    p.add_argument("--out", type=Path, help="also write the JSON document here")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", type=float, help="demo data scale (0.3; 0.05 with --quick)")
    p.add_argument("--hidden", type=int, default=32, help="encoder features (default 32)")
    p.add_argument("--pretrain-steps", type=int, help="pretraining steps (default 1000; 60 with --quick)")
    p.add_argument("--steps", type=int, help="steps of every fine-tuning cell (default 150; 20 with --quick)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of every cell (default 0,1,2)")
    p.add_argument("--max-structures", type=int, default=40, help="structures per dataset of each evaluation (default 40)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from gfmkit.data.demo import DEMO_DATASETS, build_demo
    from gfmkit.performance import tune_allocator
    from gfmkit.studies import run_finetune_study, transfer_gain
    from gfmkit.studies.finetune import spread
    from gfmkit.train import train

    tune_allocator()
    work = args.work or Path(tempfile.mkdtemp(prefix="gfmkit-finetune-"))
    quick = args.quick
    scale = args.scale or (0.05 if quick else 0.3)
    model = {"hidden": args.hidden, "layers": 2 if quick else 3, "n_rbf": 10 if quick else 20,
             "cutoff": 4.5 if quick else 5.0, "head_hidden": 16}
    pretrain_steps = args.pretrain_steps or (60 if quick else 1000)
    finetune_steps = args.steps or (20 if quick else 150)
    seeds = [int(s) for s in args.seeds.split(",")]
    timings = {}
    started = time.perf_counter()
    if not list((work / "data").glob("*.bp")):
        build_demo(work / "data", scale=scale, progress=False)
    timings["data_s"] = time.perf_counter() - started
    stores = {role: [str(work / "data" / f"{n}.bp") for n, d in DEMO_DATASETS.items() if d.role == role]
              for role in ("pretrain", "downstream")}
    started = time.perf_counter()
    checkpoint = work / "pretrain" / "checkpoints" / "best.pt"
    if not checkpoint.exists():
        train({"data": {"stores": stores["pretrain"]}, "model": model,
               "sampler": {"strategy": "temperature", "temperature": 2.0, "batch_size": 16},
               "optimizer": {"lr": 2e-3}, "schedule": {"kind": "cosine", "warmup_steps": 50},
               "precision": "fp32", "max_steps": pretrain_steps, "validate_every": max(1, pretrain_steps // 5),
               "checkpoint_every": pretrain_steps, "progress": False}, work / "pretrain")
    timings["pretrain_s"] = time.perf_counter() - started
    started = time.perf_counter()
    table = run_finetune_study(
        checkpoint,
        {"data": {"stores": stores["downstream"]}, "sampler": {"batch_size": 8}, "optimizer": {"lr": 2e-3},
         "max_steps": finetune_steps},
        work / "study", fractions=(0.1, 0.3, 1.0), seeds=seeds, pretrain_data=stores["pretrain"],
        max_structures=args.max_structures, progress=True)
    timings["study_s"] = time.perf_counter() - started
    metrics = ("forces_mae", "energy_mae", "property_mae")
    gains = {metric: transfer_gain(table, metric) for metric in metrics}
    largest = table[table["fraction"] == 1.0]
    forgetting = largest.groupby(["strategy", "seed"])["forgetting"].first().groupby("strategy").agg(["mean", "min", "max"])
    report = {
        "benchmark": "finetune_transfer",
        "quick": quick,
        "machine": {**common.machine_info(), "threads": args.threads},
        "setup": {"demo_scale": scale, "model": model, "pretrain_steps": pretrain_steps, "seeds": seeds,
                  "max_structures": args.max_structures, "finetune_steps": finetune_steps, "fractions": [0.1, 0.3, 1.0], "work": str(work)},
        "timings": timings,
        "results": json.loads(table.to_json(orient="records")),
        "gain_scratch_over_finetuned": {
            metric: {f"{dataset} @ {fraction:g}": row.dropna().to_dict() for (dataset, fraction), row in gain.iterrows()}
            for metric, gain in gains.items() if len(gain.columns)},
        "spread_over_seeds": {metric: json.loads(spread(table, metric).to_json(orient="records")) for metric in metrics},
        "forgetting_at_full_data": json.loads(forgetting.reset_index().to_json(orient="records")),
    }
    common.emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
