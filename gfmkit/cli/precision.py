"""``gfmkit precision``: one model evaluated in fp64, fp32, bf16-autocast and bf16-pure (inference only),
or, with ``study``, the same training in each precision and the train x inference matrix.

``gfmkit precision CHECKPOINT --data STORE...`` runs :func:`gfmkit.precision.compare_precisions`;
``gfmkit precision study CONFIG.yaml`` (or ``study --table``) runs or reads
:func:`gfmkit.studies.run_precision_study`. The older forms ``gfmkit precision CONFIG.yaml`` and
``gfmkit precision --table`` still run the study (with a note naming the new form).
"""

from __future__ import annotations

import argparse
import sys
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

STUDY_WORD = "study"
YAML_SUFFIXES = (".yaml", ".yml")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gfmkit.precision import PRECISIONS

    p = sub.add_parser(
        "precision",
        help="one model in fp64/fp32/bf16 (inference), or the BF16/FP32/FP64 training study",
        usage="gfmkit precision CHECKPOINT --data STORE... [options]\n"
              "       gfmkit precision study CONFIG.yaml [--out DIR] [options]\n"
              "       gfmkit precision study --table [--out DIR]",
        description="Inference only: `gfmkit precision CHECKPOINT --data STORE...` evaluates one model in each "
        "precision on the stores' --split and prints, per precision, the errors against the labels, the "
        "deviation from the same model's fp64 predictions, the throughput and the peak memory (CPU: growth "
        "of the process's peak resident set; GPU: torch.cuda.max_memory_allocated); --out DIR also writes "
        "inference.csv and inference_errors.csv. "
        "Study: `gfmkit precision study CONFIG.yaml` trains the config once per precision (same seed, "
        "batches and steps), evaluates every trained model in every precision (the train x inference "
        "matrix) and writes precision.csv, errors.csv, inference.csv, precision.png and "
        "precision_matrix.png into --out; a stopped study continues where it stopped, --table only reads "
        "the run directories; under mpiexec every run trains on all ranks.",
    )
    p.add_argument("target", nargs="*", metavar="CHECKPOINT | study CONFIG.yaml", help=argparse.SUPPRESS)
    p.add_argument("--data", nargs="+", type=Path, metavar="STORE", help="stores or directories of stores (inference)")
    p.add_argument("--out", type=Path, help="study directory (default runs/precision); for inference, where "
                   "to write the tables (default: print only)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), type=comma_list, help=f"comma-separated, from {','.join(PRECISIONS)}")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="split the models are evaluated on (default test)")
    p.add_argument("--max-structures", type=positive_int, help="evaluate at most this many structures per dataset")
    p.add_argument("--batch-size", type=positive_int, default=16, help="structures per batch (inference; default 16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto (inference; default cpu)")
    p.add_argument("--head", help="evaluate every dataset under this head (for data without a head of its name)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier inference tables in --out")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="study: first steps left out of the throughput")
    p.add_argument("--table", action="store_true", help="study: only read the finished runs in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = list(args.target)
    if target[:1] == [STUDY_WORD]:
        return run_study(args, target[1:])
    if args.table or (len(target) == 1 and Path(target[0]).suffix in YAML_SUFFIXES):
        if rank() == 0:
            print(f"note: the study is now `gfmkit precision study {' '.join(target) or '--table'}`", file=sys.stderr)
        return run_study(args, target)
    if len(target) != 1:
        raise CLIError("give one CHECKPOINT and --data STORE... (inference), or `study CONFIG.yaml` (the study)")
    return run_inference(args, Path(target[0]))


def run_inference(args: argparse.Namespace, checkpoint: Path) -> int:
    from gfmkit.outputs import check_folder_files
    from gfmkit.precision import compare_precisions
    from gfmkit.train.distributed import select_device

    if not args.data:
        raise CLIError(f"give the stores to evaluate {checkpoint} on: --data STORE...")
    if rank() != 0:
        return 0
    names = ("inference.csv", "inference_errors.csv")
    if args.out is not None:
        check_folder_files(args.out, names, overwrite=args.overwrite)
    try:
        device = select_device(args.device, 0)
        result = compare_precisions(checkpoint, args.data, args.precisions, split=None if args.split == "all" else args.split,
                                    batch_size=args.batch_size, device=device, max_structures=args.max_structures,
                                    heads=args.head, progress=not args.no_progress)
    except (ValueError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    print_table(result.table.drop(columns="memory_measure"))
    print(f"peak memory: {result.table['memory_measure'].iloc[0]}; deviations (*_dev): mean absolute difference "
          "from this model's fp64 predictions")
    if args.out is not None:
        from gfmkit.files import atomic_path

        args.out.mkdir(parents=True, exist_ok=True)
        for name, table in zip(names, (result.table, result.errors)):
            with atomic_path(args.out / name) as tmp:
                table.to_csv(tmp, index=False)
        print(f"tables in {args.out}")
    return 0


def run_study(args: argparse.Namespace, target: list[str]) -> int:
    from gfmkit.studies.precision import (
        precision_errors,
        precision_table,
        run_precision_study,
    )

    out = args.out or Path("runs/precision")
    if len(target) > 1:
        raise CLIError(f"the study takes one CONFIG.yaml, got {' '.join(target)}")
    try:
        if args.table:
            table = precision_table(out)
        elif not target:
            raise CLIError("give a training CONFIG.yaml (or --table to read a finished study)")
        else:
            table = run_precision_study(Path(target[0]), out, args.precisions,
                                        split=None if args.split == "all" else args.split,
                                        max_structures=args.max_structures, warmup=args.warmup,
                                        progress=not args.no_progress)
        if rank() != 0:
            return 0
        from gfmkit.cli.common import save_figure_file
        from gfmkit.studies.precision import precision_inference
        from gfmkit.viz.precision import precision_figure, precision_matrix_figure

        errors = precision_errors(out)
        save_results(out, {"precision.csv": table, "errors.csv": errors}, "precision.png", precision_figure(out))
        if len(precision_inference(out)):
            save_figure_file(precision_matrix_figure(out), out / "precision_matrix.png")
    except (OSError, ValueError, RuntimeError) as exc:
        raise CLIError(str(exc)) from None
    print_table(table)
    print(f"table, errors and figures in {out}")
    return 0
