"""``gfmkit finetune``: learning curves of fine-tuned models against models trained from scratch."""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import (
    CLIError,
    comma_list,
    positive_int,
    print_table,
    rank,
    save_results,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gfmkit.studies.finetune import STRATEGIES

    p = sub.add_parser(
        "finetune",
        help="transfer to downstream tasks by fine-tuning (learning curves)",
        description="Fine-tune a pretrained checkpoint on the downstream stores of CONFIG at several fractions of "
        "their training split, next to the same architecture trained from scratch, and evaluate every run on the "
        "test split; writes finetune.csv and finetune.png into --out. A stopped study continues where it stopped; "
        "--table only reads the run directories.",
    )
    p.add_argument("pretrained", type=Path, nargs="?", metavar="PRETRAINED.pt", help="the pretrained checkpoint")
    p.add_argument("config", type=Path, nargs="?", metavar="CONFIG.yaml", help="training config of the downstream data")
    p.add_argument("--out", type=Path, default=Path("runs/finetune"), help="study directory (default runs/finetune)")
    p.add_argument("--fractions", default="0.1,0.3,1", type=comma_list, help="fractions of the training split (default 0.1,0.3,1)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), type=comma_list, help=f"from {','.join(STRATEGIES)}")
    p.add_argument("--heads", default="", metavar="DATASET=HEAD,...",
                   help="pretrained head that starts each downstream dataset's head (default: same name, else fresh)")
    p.add_argument("--split", default="test", help="split the runs are evaluated on (default test)")
    p.add_argument("--max-structures", type=positive_int, help="evaluate at most this many structures per dataset")
    p.add_argument("--table", action="store_true", help="only read the finished runs in --out")
    p.set_defaults(func=run)


def parse_heads(text: str) -> dict[str, str]:
    heads = {}
    for item in comma_list(text):
        dataset, sep, head = item.partition("=")
        if not sep or not dataset.strip() or not head.strip():
            raise CLIError(f"--heads: {item!r} is not DATASET=HEAD")
        heads[dataset.strip()] = head.strip()
    return heads


def run(args: argparse.Namespace) -> int:
    from gfmkit.studies.finetune import finetune_table, run_finetune_study

    try:
        if args.table:
            table = finetune_table(args.out)
        elif args.pretrained is None or args.config is None:
            raise CLIError("give PRETRAINED.pt and CONFIG.yaml (or --table to read a finished study)")
        else:
            fractions = [float(f) for f in args.fractions]
            strategies = args.strategies
            table = run_finetune_study(args.pretrained, args.config, args.out, fractions=fractions,
                                       strategies=strategies, heads=parse_heads(args.heads), split=args.split,
                                       max_structures=args.max_structures, progress=not args.no_progress)
        if rank() != 0:
            return 0
        from gfmkit.viz.finetune import finetune_figure

        save_results(args.out, {"finetune.csv": table}, "finetune.png", finetune_figure(table))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    print_table(table)
    print(f"table and figure in {args.out}")
    return 0
