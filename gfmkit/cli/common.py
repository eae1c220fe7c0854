"""What every subcommand shares: error reporting, MPI rank, table printing."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd

from gfmkit.comm import world
from gfmkit.log import set_verbosity, strip_colour


class CLIError(Exception):
    """A problem to report in one line (file and cause) with a non-zero exit code."""


#: Errors gfmkit raises for bad input (module, class): ``gfmkit.cli.main`` reports each in one line.
#: Looked up among the modules already imported, so the CLI's start-up imports none of them.
USER_ERRORS = (
    ("gfmkit.config", "ConfigError"),
    ("gfmkit.outputs", "OutputError"),
    ("gfmkit.data.store_format", "StoreError"),
    ("gfmkit.data.hydragnn", "HydraGNNFormatError"),
    ("gfmkit.data.labels", "StructureError"),
    ("gfmkit.models.checkpoint", "CheckpointError"),
    ("gfmkit.models.calculator", "ModelInputError"),
    ("gfmkit.cluster.engines", "ClusterNotFound"),
    ("gfmkit.train.trainer", "TrainingError"),
)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is bad input to report in one line rather than a bug to show with its traceback."""
    if isinstance(exc, CLIError):
        return True
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def add_shared_flags(parser: argparse.ArgumentParser) -> None:
    """Give every leaf subcommand below ``parser`` the flags all commands share: ``-v`` and ``--no-progress``."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subparsers:
        for action in subparsers:
            for child in dict.fromkeys(action.choices.values()):
                add_shared_flags(child)
        return
    flags = {o for a in parser._actions for o in a.option_strings}
    if "--verbose" not in flags:
        parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    if "--no-progress" not in flags:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bars or lines (also GFMKIT_PROGRESS=0 or TQDM_DISABLE=1)")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def comma_list(text: str) -> list[str]:
    """An argparse type: ``a,b, c`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def rank() -> int:
    return world().rank


def fail(command: str, message: str, code: int = 1) -> int:
    """Report ``message`` on rank 0 as one line (a library's several lines and colour codes joined and
    dropped) and return the exit code."""
    if rank() == 0:
        print(f"gfmkit {command}: error: {one_line(message)}", file=sys.stderr)
    return code


def one_line(message: Any) -> str:
    """``message`` as one line: its lines joined, terminal colour codes dropped."""
    return " ".join(strip_colour(str(message)).split())


#: Under MPI, how long a rank other than 0 waits before reporting its own error: long enough for rank 0,
#: when it failed the same way, to report once and end the job first.
GRACE_S = 3.0
#: How long a failing rank waits after its last line before it ends the job: mpiexec forwards each rank's
#: output through a proxy, and lines still on their way are lost when MPI_Abort tears the job down.
FORWARD_S = 1.0


def end_job(command: str, exc: BaseException, code: int | None) -> NoReturn:
    """End the whole MPI job after ``exc`` on this rank, so that no other rank waits for it forever.

    Rank 0 has reported a user error already (``code`` given); another rank's user error is reported
    after :data:`GRACE_S` seconds, unless rank 0 ended the job by then (the same error on every rank
    gives one line). A bug (``code`` None) is reported at once with the rank and its traceback."""
    comm = world()
    if code is None:
        print(f"gfmkit {command}: error: rank {comm.rank} failed: {type(exc).__name__}: "
              f"{one_line(exc)}; aborting the job", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
    elif comm.rank != 0:
        time.sleep(GRACE_S)
        print(f"gfmkit {command}: error: rank {comm.rank}: {one_line(exc)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(FORWARD_S)
    comm.Abort(code or 1)
    raise SystemExit(code or 1)  # not reached: Abort ends the process


def setup_logging(verbose: bool) -> None:
    set_verbosity("DEBUG" if verbose else "INFO", rank=rank())


#: Column headers with units for tables printed to a terminal (the CSV files keep the plain names).
HEADERS = {
    "energy_mae": "energy MAE (eV/atom)",
    "forces_mae": "forces MAE (eV/Å)",
    "stress_mae": "stress MAE (eV/Å³)",
    "property_mae": "property MAE (property's unit)",
    "energy_per_atom": "energy (eV/atom)",
}


def print_table(frame: pd.DataFrame) -> None:
    """Print ``frame`` on rank 0, error columns headed with their units."""
    if rank() == 0:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
            print(frame.rename(columns=HEADERS).to_string(index=False))


def print_json(data: Any) -> None:
    if rank() == 0:
        print(json.dumps(data, indent=2, default=str))


def image_file(path: Path, default_name: str, *, overwrite: bool = False) -> Path:
    """Where to write one figure (:func:`gfmkit.outputs.output_file`), refused before any drawing when
    matplotlib cannot write the format its suffix names."""
    from gfmkit.outputs import OutputError, output_file
    from gfmkit.viz.figures import check_image_formats

    target = output_file(path, default_name, overwrite=overwrite)
    try:
        check_image_formats([target.suffix.lstrip(".") or "png"], str(target))
    except ValueError as exc:
        raise OutputError(str(exc)) from None
    return target


def save_figure_file(figure: Any, target: Path) -> None:
    """Write a matplotlib figure to ``target`` (from :func:`image_file`) atomically, in the format its
    suffix names, and close it."""
    import matplotlib.pyplot as plt

    from gfmkit.files import atomic_path

    with atomic_path(target) as tmp:
        figure.savefig(tmp, format=target.suffix.lstrip(".") or "png", dpi=150, bbox_inches="tight")
    plt.close(figure)


def save_results(out: Path, tables: dict[str, pd.DataFrame], figure_name: str, figure: Any) -> None:
    """Write ``tables`` (file name -> table) as CSV and ``figure`` as a PNG into ``out``, each
    atomically, and close the figure."""
    import matplotlib.pyplot as plt

    from gfmkit.files import atomic_path

    for name, table in tables.items():
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
    with atomic_path(out / figure_name) as tmp:
        figure.savefig(tmp, dpi=150, format="png")
    plt.close(figure)
