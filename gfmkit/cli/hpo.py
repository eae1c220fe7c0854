"""``gfmkit hpo``: a DeepHyper search over a training config, every trial a real training run."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from gfmkit.cli.common import (
    CLIError,
    non_negative_int,
    positive_int,
    print_table,
    save_results,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hpo",
        help="DeepHyper hyperparameter search",
        description="Search the keys of SPACE.yaml (dotted config keys -> [low, high], [low, high, log-uniform] or "
        "{choices: [...]}) around CONFIG.yaml with DeepHyper's Bayesian optimisation; each trial trains in "
        "--out/trials/ and reports its best validation loss. Writes hpo.csv, hpo.png and best_config.yaml into "
        "--out. Running again with a larger --max-evals continues the search; --table only reads it.",
    )
    p.add_argument("config", type=Path, nargs="?", metavar="CONFIG.yaml")
    p.add_argument("space", type=Path, nargs="?", metavar="SPACE.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/hpo"), help="search directory (default runs/hpo)")
    p.add_argument("--max-evals", type=positive_int, default=10, help="trials in the search directory when done (default 10)")
    p.add_argument("--method", choices=["thread", "process"], default="thread", help="DeepHyper evaluator")
    p.add_argument("--workers", type=positive_int, default=1, help="trials at a time (default 1)")
    p.add_argument("--initial-points", type=positive_int, help="random trials before the surrogate model steers")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--table", action="store_true", help="only read the search in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gfmkit.files import atomic_write_text
    from gfmkit.hpo import best_config, hpo_table, run_hpo
    from gfmkit.viz.hpo import hpo_figure

    try:
        if args.table:
            table = hpo_table(args.out)
        elif args.config is None or args.space is None:
            raise CLIError("give CONFIG.yaml and SPACE.yaml (or --table to read a search)")
        else:
            space = yaml.safe_load(args.space.read_text())
            if not isinstance(space, dict):
                raise CLIError(f"{args.space}: a search space is a mapping of config keys")
            table = run_hpo(args.config, space, args.out, max_evals=args.max_evals, method=args.method,
                            workers=args.workers, seed=args.seed, initial_points=args.initial_points)
        best = best_config(args.out)
        save_results(args.out, {"hpo.csv": table}, "hpo.png", hpo_figure(table))
        atomic_write_text(args.out / "best_config.yaml", yaml.safe_dump(best, sort_keys=False))
    except (OSError, ValueError, RuntimeError, yaml.YAMLError) as exc:
        raise CLIError(str(exc)) from None
    print_table(table.drop(columns=["run_dir"]))
    print(f"table, figure and best_config.yaml in {args.out}")
    return 0
