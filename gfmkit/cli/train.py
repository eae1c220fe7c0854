"""``gfmkit train`` and ``gfmkit evaluate``: thin layers over :func:`gfmkit.train.train` and
:func:`gfmkit.train.evaluate`.

    gfmkit train CONFIG.yaml [--resume auto|PATH] [--out RUN]
    mpiexec -n 8 gfmkit train CONFIG.yaml --out runs/big --resume auto     # same command on 8 ranks
    gfmkit evaluate CHECKPOINT --data STORE... [--split test] [--out DIR]

Also runnable as ``python -m gfmkit.cli.train train ...`` (the same subcommands).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gfmkit.cli.common import positive_int, print_table, rank
from gfmkit.keys import ERROR_COLUMNS


def add_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train a multi-head model on stores (multi-task, DDP over MPI, checkpoints)",
        description="Train from a YAML TrainConfig (unknown keys are errors). Under mpiexec/srun/torchrun every "
        "rank runs this same command. SIGTERM/SIGUSR1 make a checkpoint and a clean exit; --resume auto "
        "continues from the run directory's last checkpoint.",
    )
    train.add_argument("config", type=Path, metavar="CONFIG.yaml")
    train.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    train.add_argument("--resume", help="'auto' (the run directory's last checkpoint, if any) or a checkpoint path")
    train.add_argument("--overwrite", action="store_true",
                       help="start a new run in a gfmkit run directory that holds one (its checkpoints and metrics are replaced)")
    train.set_defaults(func=run_train)

    evaluate = sub.add_parser(
        "evaluate",
        help="head x dataset error matrix, parity plots, per-element errors",
        description="Every head of CHECKPOINT on every dataset of the stores: error matrix (energy/atom, forces, "
        "stress, property MAE), parity plots and per-element force errors, as CSV tables and PNG figures. The "
        "matrix also has rows for the composition-weighted prediction of the energy heads: weighted:overlap "
        "(training-free weights) and, when the checkpoint holds a fitted gate (gfmkit gate), weighted:gate.",
    )
    evaluate.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    evaluate.add_argument("--data", nargs="+", required=True, type=Path, metavar="STORE", help="stores or directories of stores")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    evaluate.add_argument("--out", type=Path, help="directory for tables and figures (default: next to the checkpoint)")
    evaluate.add_argument("--batch-size", type=positive_int, default=16)
    evaluate.add_argument("--precision", default="fp64", choices=["fp64", "fp32", "bf16-autocast", "bf16-pure"])
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, xpu or auto (default cpu)")
    evaluate.add_argument("--max-structures", type=positive_int, help="at most this many structures per dataset")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's files in --out")
    evaluate.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from gfmkit.train import load_train_config, train
    from gfmkit.train.setup import TrainingConfigError

    config = load_train_config(args.config)
    if args.no_progress:
        config.progress = False
    out = args.out or Path("runs") / args.config.stem
    try:
        run, metrics = train(config, out, resume=args.resume, overwrite=args.overwrite)
    except TrainingConfigError as exc:  # a config value the data or model contradicts: name the file too
        raise TrainingConfigError(f"{args.config}: {exc}") from None
    if rank() == 0:
        steps = metrics["step"].dropna() if "step" in metrics else []
        print(f"run {run.path}: stopped at step {int(steps.iloc[-1]) if len(steps) else 0} ({run.stop_reason()})")
        val = metrics[metrics["phase"] == "val"] if "phase" in metrics else metrics.iloc[0:0]
        if len(val):
            print_table(val[[c for c in ("step", "loss", *ERROR_COLUMNS) if c in val]].tail(1))
        if not run.finished():
            print(f"continue with: gfmkit train {args.config} --out {run.path} --resume auto")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from gfmkit.cli.common import CLIError
    from gfmkit.train.distributed import select_device
    from gfmkit.train.evaluate import evaluate

    if rank() != 0:
        return 0
    try:
        device = select_device(args.device, 0)
    except (RuntimeError, ValueError) as exc:  # "cuda" on a machine without one; an unknown device name
        raise CLIError(str(exc)) from None
    out = args.out or args.checkpoint.parent.parent / f"evaluate-{args.checkpoint.stem}-{args.split}"
    result = evaluate(args.checkpoint, args.data, split=None if args.split == "all" else args.split, out=out,
                      batch_size=args.batch_size, precision=args.precision, device=device,
                      max_structures=args.max_structures, overwrite=args.overwrite, progress=True)
    import matplotlib.pyplot as plt

    for fig in result.figures.values():
        plt.close(fig)
    print_table(result.summary.round(5))
    weighted = result.weighted().dropna(how="all", subset=[c for c in result.weighted().columns if c != "own head"])
    if len(weighted):
        print("forces MAE (eV/Å): own head and composition-weighted heads")
        print_table(weighted.round(5).reset_index())
    print(f"error matrix, per-element errors and figures in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gfmkit.cli.train train|evaluate ...``: the same as ``gfmkit train|evaluate ...``."""
    from gfmkit.cli import main as gfmkit_main

    return gfmkit_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
