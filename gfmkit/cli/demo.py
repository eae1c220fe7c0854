"""``gfmkit demo``: the main job on the built-in demo data, as far as the built capabilities reach."""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import print_table, rank, setup_logging
from gfmkit.comm import world


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the main workflow on the built-in demo data (what `make demo` runs)",
        description="Builds the demo datasets (once), prints their table and writes the dataset figure "
        "into the run directory. Training and evaluation steps join as their capabilities land.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    parser.add_argument("--scale", type=float, default=1.0, help="demo dataset size multiplier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the demo data even if present")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from gfmkit.data.demo import DEMO_DATASETS, build_demo
    from gfmkit.data.multi import open_stores
    from gfmkit.rundir import RunDir
    from gfmkit.viz.data import dataset_overview

    setup_logging(args.verbose)
    run_dir = RunDir(args.out)
    data_dir = run_dir.path / "data"
    names = [d.name for d in DEMO_DATASETS]
    missing = [n for n in names if not (data_dir / f"{n}.bp").exists()]
    if args.rebuild or missing:
        build_demo(data_dir, seed=args.seed, scale=args.scale, progress=rank() == 0, comm=world())
    multi = open_stores(sorted(data_dir.glob("*.bp")))
    if rank() == 0:
        print(f"demo data in {data_dir}:")
        print_table(multi.table())
        paths = run_dir.save_figure(dataset_overview(multi.stores), "datasets")
        print(f"figure: {paths[0]}")
        print("next steps (training, evaluation) are not built yet; see the README's status table.")
    return 0
