"""``gfmkit finetune``: add a head for new data to a foundation model (everyday), or the transfer study.

    gfmkit finetune CHECKPOINT --data STORE... --out DIR [--task NAME] [--from-head HEAD|nearest|none]
                    [--strategy head|lora|last-k|full] [--replay FRACTION] [--steps N]
    gfmkit finetune study PRETRAINED.pt CONFIG.yaml --out DIR [--fractions ...] [--strategies ...] [--seeds ...]
    gfmkit finetune study --table --out DIR

The older form ``gfmkit finetune PRETRAINED.pt CONFIG.yaml`` still runs the study.
"""

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
    from gfmkit.studies.finetune import STRATEGIES as STUDY_STRATEGIES
    from gfmkit.train.finetune import STRATEGIES

    p = sub.add_parser(
        "finetune",
        help="add a head for new data to a pretrained model (keeping every head), or the transfer study",
        description="Everyday: gfmkit finetune CHECKPOINT --data STORE... --out DIR adds one head per dataset of the "
        "stores to CHECKPOINT, trains it (--strategy) and writes DIR/model.pt with every pretrained head plus the new "
        "one(s), the new heads' test errors (test.csv) and, with pretraining data, the pretrained heads' errors before "
        "and after (forgetting.csv). Study: gfmkit finetune study PRETRAINED.pt CONFIG.yaml fine-tunes with every "
        "strategy at several fractions of the training split and seeds, next to the same architecture trained from "
        "scratch; writes finetune.csv and finetune.png into --out (--table only reads a finished study).",
    )
    p.add_argument("args", nargs="*", metavar="CHECKPOINT | study PRETRAINED.pt CONFIG.yaml",
                   help="the checkpoint to fine-tune, or 'study' and the study's checkpoint and training config")
    p.add_argument("--out", type=Path, help="output directory (study default runs/finetune)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier fine-tune's files in --out")
    every = p.add_argument_group("everyday fine-tuning")
    every.add_argument("--data", nargs="+", type=Path, metavar="STORE", help="stores of the new dataset(s)")
    every.add_argument("--task", help="name of the new head (one dataset; default the dataset's name)")
    every.add_argument("--from-head", default="nearest", metavar="HEAD|nearest|none",
                       help="pretrained head the new head starts from (default nearest: closest training composition)")
    every.add_argument("--strategy", default="head", choices=STRATEGIES, help="what trains (default head)")
    every.add_argument("--replay", type=float, default=0.0, metavar="FRACTION",
                       help="fraction of every batch drawn from the pretraining data (last-k, full)")
    every.add_argument("--pretrain-data", nargs="+", type=Path, metavar="STORE",
                       help="pretraining stores (replay, forgetting); default those of the checkpoint's run")
    every.add_argument("--steps", type=positive_int, default=200, help="optimiser steps (default 200)")
    every.add_argument("--batch-size", type=positive_int, default=8, help="structures per step (default 8)")
    every.add_argument("--lr", type=float, default=3e-3, help="learning rate of the new head (default 3e-3)")
    every.add_argument("--encoder-lr-scale", type=float, help="encoder rate / head rate (default: full 0.1, last-k 1)")
    every.add_argument("--last-k", type=positive_int, default=1, help="encoder layers that train with last-k (default 1)")
    every.add_argument("--rank", type=positive_int, default=4, help="LoRA rank (default 4)")
    every.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    study = p.add_argument_group("study (gfmkit finetune study ...)")
    study.add_argument("--fractions", default="0.1,0.3,1", type=comma_list, help="fractions of the training split (default 0.1,0.3,1)")
    study.add_argument("--strategies", default=",".join(STUDY_STRATEGIES), type=comma_list,
                       help=f"from {','.join(STUDY_STRATEGIES)}")
    study.add_argument("--seeds", default="0,1,2", type=comma_list, help="seeds of every cell (default 0,1,2)")
    study.add_argument("--heads", default="", metavar="DATASET=HEAD,...",
                       help="pretrained head that starts each downstream dataset's head (default: nearest)")
    study.add_argument("--split", default="test", help="split the runs are evaluated on (default test)")
    study.add_argument("--max-structures", type=positive_int, help="evaluate at most this many structures per dataset")
    study.add_argument("--table", action="store_true", help="only read the finished runs in --out")
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
    positional = list(args.args)
    try:
        if positional[:1] == ["study"]:
            return run_study(args, positional[1:])
        if args.data is None and (args.table or len(positional) == 2):  # the older form of the study
            return run_study(args, positional)
        return run_everyday(args, positional)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CLIError(str(exc).strip("'\"")) from None


def run_everyday(args: argparse.Namespace, positional: list[str]) -> int:
    from gfmkit.train.finetune import finetune

    if len(positional) != 1 or args.data is None or args.out is None:
        raise CLIError("give CHECKPOINT --data STORE... --out DIR (or: gfmkit finetune study PRETRAINED.pt CONFIG.yaml)")
    result = finetune(positional[0], args.data, args.out, task=args.task, strategy=args.strategy,
                      from_head=args.from_head, steps=args.steps, replay=args.replay, pretrain_data=args.pretrain_data,
                      batch_size=args.batch_size, lr=args.lr, encoder_lr_scale=args.encoder_lr_scale,
                      last_k=args.last_k, rank=args.rank, seed=args.seed, progress=not args.no_progress,
                      overwrite=args.overwrite)
    starts = ", ".join(f"{h} from {s or 'fresh weights'}" for h, s in result.sources.items())
    print(f"new head(s): {starts}; model heads: {', '.join(result.model.head_names)}")
    print_table(result.test)
    if not result.forgetting.empty:
        print("pretrained heads on their validation sets, before and after:")
        print_table(result.forgetting)
    if result.settings.get("gate_dropped"):
        print("the checkpoint's head gate covers the old heads only and was left out: refit it (fit_head_gate)")
    print(f"fine-tuned model: {result.checkpoint}")
    return 0


def run_study(args: argparse.Namespace, positional: list[str]) -> int:
    from gfmkit.studies.finetune import finetune_table, run_finetune_study

    out = args.out or Path("runs/finetune")
    if args.table:
        table = finetune_table(out)
    elif len(positional) != 2:
        raise CLIError("give PRETRAINED.pt and CONFIG.yaml (or --table to read a finished study)")
    else:
        table = run_finetune_study(positional[0], positional[1], out, fractions=[float(f) for f in args.fractions],
                                   strategies=args.strategies, seeds=[int(s) for s in args.seeds],
                                   heads=parse_heads(args.heads), split=args.split,
                                   max_structures=args.max_structures, progress=not args.no_progress)
    if rank() != 0:
        return 0
    from gfmkit.viz.finetune import finetune_figure

    save_results(out, {"finetune.csv": table}, "finetune.png", finetune_figure(table))
    print_table(table)
    print(f"table and figure in {out}")
    return 0
