"""``gfmkit gate``: fit a head gate (composition -> head weights) on a checkpoint and write a new one.

:func:`gfmkit.models.fit_head_gate` with the encoder and heads frozen, on the stores' ``--split``
(default val); the gated model is written to ``--out`` (never over the input checkpoint, and over an
existing file only with ``--overwrite`` when that file is a gfmkit checkpoint). Then the gate, the
training-free overlap weights, the plain average and every single head are scored on
``--report-split`` (:func:`gfmkit.studies.multihead.head_weighting_records`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import CLIError, positive_int, print_table, rank


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gate",
        help="fit a head gate on a checkpoint and write a new checkpoint with it",
        description="Fit a head gate (an MLP from a structure's element fractions to weights over the energy "
        "heads; encoder and heads frozen) on the labelled energies of --split, write CHECKPOINT plus the gate "
        "to --out, and print the energy and force MAE of the gate, the overlap weights, the plain average, "
        "each dataset's own head and the best single head on --report-split. The new checkpoint predicts "
        "with weights='gate' (model.predict, model.calculator('weighted'), gfmkit evaluate's weighted:gate "
        "rows, gfmkit screen --weighting gate).",
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    p.add_argument("--data", nargs="+", required=True, type=Path, metavar="STORE", help="stores or directories of stores")
    p.add_argument("--out", required=True, type=Path, metavar="NEW.pt", help="the gated checkpoint (a new file)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="split the gate is fitted on (default val)")
    p.add_argument("--report-split", default="val", choices=["train", "val", "test"],
                   help="split the errors are reported on (default val, the fitted split; test: held out)")
    p.add_argument("--steps", type=positive_int, default=500, help="full-batch Adam steps (default 500)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 0.01)")
    p.add_argument("--hidden", type=positive_int, default=32, help="hidden width of the gate (default 32)")
    p.add_argument("--max-structures", type=positive_int, help="at most this many structures per dataset")
    p.add_argument("--batch-size", type=positive_int, default=16, help="structures per encoder pass (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing gfmkit checkpoint at --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gfmkit.data.multi import open_stores
    from gfmkit.models import (
        fit_head_gate,
        load_model,
        read_checkpoint,
        save_checkpoint,
    )
    from gfmkit.outputs import OutputError, output_file
    from gfmkit.studies.multihead import (
        head_weighting_records,
        summary_table,
        weighting_table,
    )

    if rank() != 0:
        return 0
    source = args.checkpoint
    model = load_model(source)
    target = output_file(args.out, f"{source.stem}-gated.pt", overwrite=args.overwrite)
    if target.resolve() == source.resolve():
        raise CLIError(f"--out {target} is the input checkpoint; write the gated model to a new file")
    if target.exists():
        read_checkpoint(target)  # only a gfmkit checkpoint is replaced (--overwrite)
    stores = open_stores(args.data)
    try:
        fit = fit_head_gate(model, stores, split=args.split, hidden=args.hidden, steps=args.steps, lr=args.lr,
                            batch_size=args.batch_size, max_structures=args.max_structures, seed=args.seed)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    record = {"source": str(source), "split": args.split, "steps": args.steps, "lr": args.lr,
              "structures": fit.structures, "first_loss": fit.losses[0], "final_loss": fit.losses[-1]}
    try:
        save_checkpoint(model, target, gate_fit=record)
    except OSError as exc:
        raise OutputError(f"{target}: {exc}") from None
    fitted = ", ".join(f"{name} {count}" for name, count in fit.structures.items())
    print(f"gate fitted on the {args.split} split ({fitted} structures): mean squared energy error "
          f"{fit.losses[0]:.3g} -> {fit.losses[-1]:.3g} (eV/atom)^2 in {args.steps} steps")
    records = head_weighting_records(model, stores, split=args.report_split, max_structures=args.max_structures,
                                     batch_size=args.batch_size)
    table = weighting_table(records)
    where = " (the split the gate was fitted on)" if args.report_split == args.split else ""
    for metric, label in (("energy_mae", "energy MAE (eV/atom)"), ("forces_mae", "forces MAE (eV/Å)")):
        print(f"{label} on the {args.report_split} split{where}:")
        print_table(summary_table(table, metric).round(5).reset_index())
    print(f"gated checkpoint: {target}")
    return 0
