"""``gfmkit demo``: the main job on the built-in demo data — build the datasets, train one multi-head
model on all of them, evaluate every head on every dataset, write tables and figures to a run dir."""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import non_negative_int, positive_int, print_table, rank
from gfmkit.comm import world


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the main workflow on the built-in demo data (what `make demo` runs)",
        description="Builds the demo datasets (once), pretrains a multi-head PaiNN on the pretraining datasets (about a "
        "minute on 2 cores), evaluates the head x dataset error matrix and writes tables and figures "
        "into the run directory. Under mpiexec every rank runs it and they train together.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    parser.add_argument("--scale", type=float, default=1.0, help="demo dataset size multiplier")
    parser.add_argument("--steps", type=positive_int, default=400, help="training steps (default 400)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the data and retrain from scratch (replacing only what an earlier demo wrote)")
    parser.set_defaults(func=run)


def demo_train_config(data_dir: Path, steps: int, seed: int):
    """The demo's recipe: pretrain a small PaiNN on the pretraining datasets (temperature sampling,
    energy + forces + stress); the downstream datasets stay unseen, for evaluation and fine-tuning."""
    from gfmkit.data.demo import DEMO_DATASETS
    from gfmkit.models import ModelConfig
    from gfmkit.train import (
        DataConfig,
        OptimizerConfig,
        SamplerConfig,
        ScheduleConfig,
        TrainConfig,
    )

    pretraining = [str(data_dir / f"{name}.bp") for name, d in DEMO_DATASETS.items() if d.role == "pretrain"]
    return TrainConfig(
        data=DataConfig(stores=pretraining),
        model=ModelConfig(hidden=64, layers=2, n_rbf=16, cutoff=5.0, head_hidden=32),
        sampler=SamplerConfig(strategy="temperature", temperature=2.0, batch_size=16),
        optimizer=OptimizerConfig(lr=3e-3, ema_decay=0.99),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=min(50, steps // 10)),
        max_steps=steps,
        validate_every=max(50, steps // 4),
        checkpoint_every=max(50, steps // 4),
        seed=seed,
        progress=rank() == 0,
    )


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from gfmkit.data.demo import DEMO_DATASETS, build_demo
    from gfmkit.data.multi import open_stores
    from gfmkit.performance import tune_allocator
    from gfmkit.rundir import RunDir
    from gfmkit.train import evaluate, train
    from gfmkit.viz.data import dataset_overview

    tune_allocator()
    root = Path(args.out)
    data_dir, train_dir = root / "data", root / "train"
    if args.rebuild or any(not (data_dir / f"{name}.bp").exists() for name in DEMO_DATASETS):
        build_demo(data_dir, seed=args.seed, scale=args.scale, progress=rank() == 0, comm=world(), overwrite=True)
    stores = open_stores([data_dir])
    summary = RunDir(root)
    if rank() == 0:
        print(f"1/3 demo data in {data_dir}:")
        print_table(stores.table())
        summary.save_figure(dataset_overview(stores.stores), "datasets")

    if rank() == 0:
        print(f"2/3 pretraining a multi-head PaiNN for {args.steps} steps -> {train_dir}")
    run_dir, metrics = train(demo_train_config(data_dir, args.steps, args.seed), train_dir,
                             resume=None if args.rebuild else "auto", overwrite=args.rebuild)

    if rank() == 0:
        print("3/3 test-split errors of each pretraining dataset under its own head "
              f"(every head on every dataset: {root / 'evaluation' / 'error_matrix.csv'}):")
        result = evaluate(run_dir.checkpoints / "best.pt", stores, split="test", out=root / "evaluation", overwrite=True)
        print_table(result.summary.round(4))
        print(f"figures: {summary.figures} and {root / 'evaluation' / 'figures'}")
    return 0
