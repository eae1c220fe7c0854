"""Data efficiency of fine-tuning: test errors of fine-tuned models against the same architecture trained
from scratch, at several downstream training-set sizes.

    .venv/bin/python benchmarks/finetune_transfer.py [--quick] [--scale S] [--out FILE.json] [--work DIR]

Pretrains a PaiNN (64 features, 3 layers, 5 Å) on the demo's five pretraining datasets (scale 0.3;
``--quick``: 32 features, 2 layers, scale 0.05 and few steps), then runs
:func:`gfmkit.studies.run_finetune_study` on the three downstream datasets (alloys_al and cu_morse start
from the pretrained ``bulk`` head, bulk_modulus from a fresh property head) at fractions 0.1, 0.3 and 1 of
their training split, for the strategies scratch, frozen and full, every run with the same steps,
schedule, sampler and seed. Reports each cell's test MAEs, the gain scratch MAE / fine-tuned MAE, and the
wall time of each stage. The peer here is the scratch baseline in the same run (a HydraGNN fine-tuning
run would need its own training pipeline and data format). Prints one JSON document to stdout.
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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from gfmkit.data.demo import DEMO_DATASETS, build_demo
    from gfmkit.performance import tune_allocator
    from gfmkit.studies import run_finetune_study, transfer_gain
    from gfmkit.train import train

    tune_allocator()
    work = args.work or Path(tempfile.mkdtemp(prefix="gfmkit-finetune-"))
    quick = args.quick
    scale = args.scale or (0.05 if quick else 0.3)
    model = {"hidden": 32, "layers": 2, "n_rbf": 10, "cutoff": 4.5, "head_hidden": 16} if quick else \
        {"hidden": 64, "layers": 3, "n_rbf": 20, "cutoff": 5.0, "head_hidden": 32}
    pretrain_steps, finetune_steps = (60, 30) if quick else (1500, 300)
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
        {"data": {"stores": stores["downstream"]}, "sampler": {"strategy": "uniform", "batch_size": 8},
         "optimizer": {"lr": 2e-3}, "schedule": {"kind": "cosine", "warmup_steps": 20}, "precision": "fp32",
         "max_steps": finetune_steps, "validate_every": max(1, finetune_steps // 3), "checkpoint_every": finetune_steps,
         "progress": False},
        work / "study", fractions=(0.1, 0.3, 1.0), heads={"alloys_al": "bulk", "cu_morse": "bulk"}, progress=False)
    timings["study_s"] = time.perf_counter() - started
    gains = {metric: transfer_gain(table, metric) for metric in ("forces_mae", "energy_mae", "property_mae")}
    report = {
        "benchmark": "finetune_transfer",
        "quick": quick,
        "machine": {**common.machine_info(), "threads": args.threads},
        "setup": {"demo_scale": scale, "model": model, "pretrain_steps": pretrain_steps,
                  "finetune_steps": finetune_steps, "fractions": [0.1, 0.3, 1.0], "work": str(work)},
        "timings": timings,
        "results": json.loads(table.to_json(orient="records")),
        "gain_scratch_over_finetuned": {
            metric: {f"{dataset} @ {fraction:g}": row.dropna().to_dict() for (dataset, fraction), row in gain.iterrows()}
            for metric, gain in gains.items() if len(gain.columns)},
    }
    common.emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
