"""``gfmkit hpo``: a DeepHyper search over a training config, every trial a real training run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from gfmkit.cli.common import (
    CLIError,
    comma_list,
    non_negative_int,
    positive_int,
    print_table,
    rank,
    save_results,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hpo",
        help="DeepHyper hyperparameter search",
        description="Search the keys of SPACE (a YAML file of dotted config keys -> [low, high], [low, high, "
        "log-uniform] or {choices: [...]}, or the name of a space shipped with gfmkit: painn) around CONFIG.yaml "
        "with DeepHyper's Bayesian optimisation; each trial trains in --out/trials/ and reports its --objectives "
        "(loss, error, throughput, flops, params; docs/search.md). Writes hpo.csv, hpo.png and best_config.yaml "
        "into --out, and with several objectives pareto.csv and pareto.png. Running again with a larger "
        "--max-evals continues the search (also one that was killed); --table only reads it. Under "
        "mpiexec -n N use --evaluator mpi: rank 0 searches, the other ranks train trials of --ranks-per-trial ranks.",
    )
    p.add_argument("config", type=Path, nargs="?", metavar="CONFIG.yaml")
    p.add_argument("space", nargs="?", metavar="SPACE", help="SPACE.yaml, or a shipped space's name (painn)")
    p.add_argument("--out", type=Path, default=Path("runs/hpo"), help="search directory (default runs/hpo)")
    p.add_argument("--max-evals", type=positive_int, default=10, help="trials in the search directory when done (default 10)")
    p.add_argument("--objectives", type=comma_list, default=["loss"],
                   help="comma list of loss, error, throughput, flops, params (default loss)")
    p.add_argument("--evaluator", default=None, metavar="thread|process|mpi|cluster:PROFILE",
                   help="where trials run (default thread; mpi under mpiexec)")
    p.add_argument("--method", choices=["thread", "process"], help="older name of --evaluator")
    p.add_argument("--workers", type=positive_int, default=1, help="trials at a time, thread and process (default 1)")
    p.add_argument("--ranks-per-trial", type=positive_int, default=1, help="ranks of each trial, mpi (default 1)")
    p.add_argument("--initial-points", type=positive_int, help="random trials before the surrogate model steers")
    p.add_argument("--timing-structures", type=positive_int, default=16, help="structures of the timing batch (default 16)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--table", action="store_true", help="only read the search in --out")
    p.set_defaults(func=run)


def _space(text: str) -> dict:
    from gfmkit.hpo import default_space, read_space

    path = Path(text)
    return read_space(path) if path.is_file() or path.suffix in (".yaml", ".yml") else default_space(text)


def _write_outputs(out: Path, table: Any) -> None:
    from gfmkit.files import atomic_write_text
    from gfmkit.hpo import best_config, pareto_table
    from gfmkit.viz.hpo import hpo_figure, pareto_figure

    best = best_config(out)
    save_results(out, {"hpo.csv": table}, "hpo.png", hpo_figure(table))
    if "pareto" in table:
        save_results(out, {"pareto.csv": pareto_table(table)}, "pareto.png", pareto_figure(table))
    atomic_write_text(out / "best_config.yaml", yaml.safe_dump(best, sort_keys=False))


def run(args: argparse.Namespace) -> int:
    from gfmkit.hpo import hpo_table, run_hpo
    from gfmkit.studies.runs import on_rank_0

    try:
        if args.table:
            table = hpo_table(args.out)
        elif args.config is None or args.space is None:
            raise CLIError("give CONFIG.yaml and SPACE.yaml (or a shipped space: painn), or --table to read a search")
        else:
            if args.method and args.evaluator and args.method != args.evaluator:
                raise CLIError(f"--method {args.method} and --evaluator {args.evaluator} disagree; give --evaluator")
            table = run_hpo(args.config, _space(args.space), args.out, max_evals=args.max_evals,
                            objectives=args.objectives, evaluator=args.evaluator or args.method or "thread",
                            workers=args.workers, ranks_per_trial=args.ranks_per_trial, seed=args.seed,
                            initial_points=args.initial_points, timing_structures=args.timing_structures)
        on_rank_0(lambda: _write_outputs(args.out, table))
    except (OSError, ValueError, RuntimeError, yaml.YAMLError) as exc:
        raise CLIError(str(exc)) from None
    print_table(table.drop(columns=["run_dir"]))
    if rank() == 0:
        written = "hpo.csv, hpo.png" + (", pareto.csv, pareto.png" if "pareto" in table else "")
        print(f"{written} and best_config.yaml in {args.out}")
    return 0
