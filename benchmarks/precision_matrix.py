"""Does fp64 training preserve information for lower-precision inference? (issue #19)

    .venv/bin/python benchmarks/precision_matrix.py [--quick] [--steps 1000] [--scale 0.35]
        [--precisions fp64,fp32,bf16-autocast,bf16-pure] [--work DIR] [--out FILE.json]

Runs the precision study (:func:`gfmkit.studies.run_precision_study`) on the demo's mixed set (bulk,
surfaces, molecules, clusters; :data:`common.MIXED_DATASETS`): one config trained once per precision
(same seed, batches and steps), then every trained model evaluated on the test split in every
precision — the train x inference matrix of force and energy MAEs against the labels, the deviation
from the fp64-trained model's fp64 predictions, inference throughput and peak memory (CPU: growth of
the process's peak resident set).

Prints one JSON document; writes benchmarks/results/precision_matrix-<date>.json unless ``--out`` says
otherwise. The study directory (``--work``) is kept: a second call reuses its finished runs.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MIXED_DATASETS, demo_data, emit, log, machine_info, parser  # noqa: E402

MATRIX_METRICS = ("forces_mae", "energy_mae", "forces_dev", "energy_dev", "structures_per_s", "peak_memory_mib")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per precision (1000; 40 with --quick)")
    p.add_argument("--scale", type=float, default=None, help="demo scale (0.35; 0.05 with --quick)")
    p.add_argument("--precisions", default="fp64,fp32,bf16-autocast,bf16-pure")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=None, help="study directory (default <data>/precision-<steps>-<scale>)")
    args = p.parse_args(argv)
    import torch

    from gfmkit.studies.precision import (
        precision_inference,
        precision_matrix,
        run_precision_study,
    )

    torch.set_num_threads(args.threads)
    steps = args.steps or (40 if args.quick else 1000)
    scale = args.scale or (0.05 if args.quick else 0.35)
    stores, generated = demo_data(args.data, f"mixed_s{scale}", MIXED_DATASETS, scale)
    work = args.work or args.data / f"precision-{steps}-{scale}"
    config = {
        "data": {"stores": [str(stores / f"{name}.bp") for name in MIXED_DATASETS]},
        "model": {"hidden": 64, "layers": 3, "n_rbf": 20, "cutoff": 5.0, "head_hidden": 32},
        "sampler": {"strategy": "temperature", "temperature": 2.0, "batch_size": 16},
        "optimizer": {"lr": 1e-3, "grad_clip": 10.0},
        "max_steps": steps,
        "validate_every": max(1, steps // 5),
        "checkpoint_every": max(1, steps // 5),
        "device": "cpu",
        "progress": False,
    }
    log(f"study in {work}: {steps} steps per precision, scale {scale}")
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    table = run_precision_study(config, work, precisions, warmup=5, progress=False)
    inference = precision_inference(work)
    report: dict[str, Any] = {
        "benchmark": "precision_matrix",
        "quick": args.quick,
        "steps": steps,
        "scale": scale,
        "datasets": list(MIXED_DATASETS),
        "test_structures": int(inference[(inference["trained_in"] == precisions[0])
                                         & (inference["evaluated_in"] == precisions[0])]["structures"].sum()),
        "config": config,
        "data_generation_s": generated,
        "study_dir": str(work),
        "memory_measure": str(inference["memory_measure"].iloc[0]),
        "training": table.to_dict(orient="records"),
        # rows: trained in; columns: evaluated in; errors and deviations are means over the datasets
        "matrix": {metric: precision_matrix(work, metric).round(8).to_dict(orient="index") for metric in MATRIX_METRICS},
        "per_dataset": inference.drop(columns=["memory_measure"]).round(8).to_dict(orient="records"),
        "machine": machine_info(),
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"precision_matrix-{dt.date.today()}.json"
    emit(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
