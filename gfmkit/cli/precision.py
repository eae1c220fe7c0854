"""``gfmkit precision``: the same training in fp64, fp32, bf16-autocast and bf16-pure, compared."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    from gfmkit.studies.precision import PRECISIONS

    p = sub.add_parser(
        "precision",
        help="BF16/FP32/FP64 precision study",
        description="Train one config once per precision (same seed, batches and steps), evaluate each on the "
        "test split in fp64 and in its own precision, and write a table (precision.csv), per-dataset errors "
        "(errors.csv) and a figure (precision.png) into --out. A stopped study continues where it stopped; "
        "--table only reads the run directories. Under mpiexec every run trains on all ranks.",
    )
    p.add_argument("config", type=Path, metavar="CONFIG.yaml", nargs="?", help="training config (not needed with --table)")
    p.add_argument("--out", type=Path, default=Path("runs/precision"), help="study directory (default runs/precision)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), type=comma_list, help=f"comma-separated, from {','.join(PRECISIONS)}")
    p.add_argument("--split", default="test", help="split the models are evaluated on (default test)")
    p.add_argument("--max-structures", type=positive_int, help="evaluate at most this many structures per dataset")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="first steps left out of the throughput")
    p.add_argument("--table", action="store_true", help="only read the finished runs in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gfmkit.studies.precision import (
        precision_errors,
        precision_table,
        run_precision_study,
    )

    try:
        if args.table:
            table = precision_table(args.out)
        elif args.config is None:
            raise CLIError("give a training CONFIG.yaml (or --table to read a finished study)")
        else:
            precisions = args.precisions
            table = run_precision_study(args.config, args.out, precisions, split=args.split,
                                        max_structures=args.max_structures, warmup=args.warmup,
                                        progress=not args.no_progress)
        if rank() != 0:
            return 0
        from gfmkit.viz.precision import precision_figure

        errors = precision_errors(args.out)
        save_results(args.out, {"precision.csv": table, "errors.csv": errors}, "precision.png", precision_figure(args.out))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    print_table(table)
    print(f"table, errors and figure in {args.out}")
    return 0
