"""``gfmkit scaling``: the same training at several sizes through a profile; strong/weak efficiency."""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import (
    CLIError,
    comma_list,
    non_negative_int,
    positive_int,
    print_table,
    save_results,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scaling",
        help="strong/weak scaling of training through an hpc profile",
        description="Run one training config at several sizes (ranks with the local profile, nodes with a "
        "site profile) and tabulate throughput, speedup and parallel efficiency. On a site profile the "
        "batch scripts are written (and submitted with --submit); run again with --table when they finished.",
    )
    p.add_argument("config", type=Path, metavar="CONFIG.yaml")
    p.add_argument("--sizes", default="1,2", type=comma_list, help="rank counts (local) or node counts (site), comma-separated")
    p.add_argument("--mode", choices=["strong", "weak"], default="strong")
    p.add_argument("--profile", default="local")
    p.add_argument("--out", type=Path, help="study directory (default runs/scaling-<mode>)")
    p.add_argument("--threads", type=positive_int, default=1, help="OpenMP threads per rank (local)")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="first steps left out of the timing")
    p.add_argument("--account")
    p.add_argument("--queue")
    p.add_argument("--walltime")
    p.add_argument("--submit", action="store_true", help="submit the batch scripts (site profiles)")
    p.add_argument("--table", action="store_true", help="only read the finished runs in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gfmkit.cluster.profiles import load_profile
    from gfmkit.studies.scaling import run_scaling, scaling_table
    from gfmkit.viz.scaling import scaling_figure

    out = args.out or Path("runs") / f"scaling-{args.mode}"
    try:
        sizes = [int(s) for s in args.sizes]
        if args.table:
            table = scaling_table(out, warmup=args.warmup)
        else:
            profile = load_profile(args.profile)
            script = {k: v for k, v in (("account", args.account), ("queue", args.queue),
                                        ("walltime", args.walltime)) if v is not None}
            table = run_scaling(args.config, sizes, out, mode=args.mode, profile=profile, threads_per_rank=args.threads,
                                warmup=args.warmup, submit_jobs=args.submit, **script)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    if "efficiency" in table:
        fig = scaling_figure(table, unit="ranks" if (table["nodes"] == 1).all() else "nodes")
        save_results(out, {"scaling.csv": table}, "scaling.png", fig)
        print_table(table.drop(columns=[c for c in ("missing",) if c in table]).round(4))
        print(f"table and figure in {out}")
    else:
        print_table(table[[c for c in ("name", "nodes", "ranks", "script", "job") if c in table]])
        print(f"scripts in {out}; when the jobs finished: gfmkit scaling {args.config} --out {out} --table")
    return 0
