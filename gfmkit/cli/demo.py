"""``gfmkit demo``: the main job on the built-in demo data — build the datasets, train one multi-head
model on all of them, evaluate every head on every dataset, screen random structures through the weighted
model (the paper's headline, small), and write tables, figures and a short report to a run dir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gfmkit.cli.common import non_negative_int, positive_int, print_table, rank
from gfmkit.comm import world


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the main workflow on the built-in demo data (what `make demo` runs)",
        description="Builds the demo datasets (once), pretrains a multi-head PaiNN on the pretraining datasets (about a "
        "minute on 2 cores), evaluates the head x dataset error matrix, screens random structures through "
        "the weighted heads, and writes tables, figures and report.md/report.json into the run directory. "
        "Under mpiexec every rank runs it and they train together.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    parser.add_argument("--scale", type=float, default=1.0, help="demo dataset size multiplier")
    parser.add_argument("--steps", type=positive_int, default=400, help="training steps (default 400)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--screen", type=non_negative_int, default=1000, metavar="N",
                        help="random structures (2-64 atoms) to screen through the weighted model (default 1000)")
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
    from gfmkit.rundir import RunDir
    from gfmkit.train import evaluate, train
    from gfmkit.viz.data import dataset_overview

    root = Path(args.out)
    data_dir, train_dir = root / "data", root / "train"
    if args.rebuild or any(not (data_dir / f"{name}.bp").exists() for name in DEMO_DATASETS):
        build_demo(data_dir, seed=args.seed, scale=args.scale, progress=rank() == 0, comm=world(), overwrite=True)
    stores = open_stores([data_dir])
    summary = RunDir(root)
    if rank() == 0:
        print(f"1/4 demo data in {data_dir}:")
        print_table(stores.table())
        summary.save_figure(dataset_overview(stores.stores), "datasets")

    if rank() == 0:
        print(f"2/4 pretraining a multi-head PaiNN for {args.steps} steps -> {train_dir}")
    run_dir, _metrics = train(demo_train_config(data_dir, args.steps, args.seed), train_dir,
                              resume=None if args.rebuild else "auto", overwrite=args.rebuild)

    result = None
    if rank() == 0:
        print("3/4 test-split errors of each pretraining dataset under its own head "
              f"(every head on every dataset: {root / 'evaluation' / 'error_matrix.csv'}):")
        result = evaluate(run_dir.checkpoints / "best.pt", stores, split="test", out=root / "evaluation", overwrite=True)
        print_table(result.summary.round(4))
        print(f"figures: {summary.figures} and {root / 'evaluation' / 'figures'}")

    if args.screen > 0:
        from gfmkit.studies.screen import screen, top_hits
        from gfmkit.viz.screen import throughput_figure

        source = f"random:{args.screen}:2-64:seed={args.seed}"
        if rank() == 0:
            print(f"4/4 screening {args.screen} random structures (2-64 atoms of the model's elements) through the "
                  "weighted heads")
        results = root / "screen" / "random.bp"
        table = screen(run_dir.checkpoints / "best.pt", source, results, forces="weighted", overwrite=True,
                       progress=rank() == 0)
        if rank() == 0:
            print_table(table.round(3))
            summary.save_figure(throughput_figure(table.attrs["summary"]), "screen_throughput")
            hits, _ = top_hits(results, 5, "energy_per_atom", atoms=False)
            report = write_report(root, args, result.summary, table.attrs["summary"], hits)
            print(f"{report['headline']}\nreport: {root / 'report.md'}")
    return 0


def write_report(root: Path, args: argparse.Namespace, errors: Any, screened: dict[str, Any], hits: Any) -> dict[str, Any]:
    """``report.md`` (the headline, the figures, the tables) and ``report.json`` (the key numbers) in ``root``."""
    from gfmkit.files import atomic_write_text

    headline = (f"Screened {screened['structures']} random structures (2-64 atoms) through the weighted multi-head "
                f"model in {screened['seconds']:.1f} s: {screened['structures_per_s']:.0f} structures/s on "
                f"{screened['ranks']} rank(s), weighted forces on.")
    errors = errors[["dataset", *[c for c in errors.columns if c.endswith("_mae")]]].dropna(axis=1, how="all")
    top = hits[["source_index", "formula", "natoms", "energy_per_atom", "disagreement", "max_force"]]
    numbers = {
        "headline": headline, "steps": args.steps, "seed": args.seed,
        "test_errors": errors.round(5).astype(object).where(errors.notna(), None).to_dict(orient="records"),
        "screen": {k: screened[k] for k in ("structures", "seconds", "structures_per_s", "ranks", "data_share",
                                            "model_share", "write_share", "results")},
        "top_hits": top.round(5).to_dict(orient="records"),
    }
    lines = ["# gfmkit demo", "", f"**{headline}**", "",
             "![screening throughput](figures/screen_throughput.png)", "",
             "## Test-split errors, each pretraining dataset under its own head", "", _markdown(errors), "",
             "## Lowest weighted energy per atom among the screened structures", "", _markdown(top), "",
             "![datasets](figures/datasets.png)", "",
             (f"Results store: `{screened['results']}` (`gfmkit data info` reads it); evaluation tables and figures "
             "in `evaluation/`."), ""]
    atomic_write_text(root / "report.md", "\n".join(lines))
    atomic_write_text(root / "report.json", json.dumps(numbers, indent=1, default=str))
    return numbers


def _markdown(frame: Any) -> str:
    """A pandas table as a markdown table (numbers to 4 significant digits)."""
    import pandas as pd

    from gfmkit.cli.common import HEADERS

    units = {**HEADERS, "disagreement": "disagreement (eV/atom)", "max_force": "max |F| (eV/Å)"}
    rows = [["-" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
            for row in frame.itertuples(index=False)]
    header = [units.get(c, c).replace("|", "\\|") for c in frame.columns]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])
