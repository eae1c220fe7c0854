"""What every subcommand shares: error reporting, MPI rank, table printing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from gfmkit.comm import world
from gfmkit.log import set_verbosity


class CLIError(Exception):
    """A problem to report in one line (file and cause) with a non-zero exit code."""


def rank() -> int:
    return world().rank


def fail(command: str, message: str, code: int = 1) -> int:
    if rank() == 0:
        print(f"gfmkit {command}: error: {message}", file=sys.stderr)
    return code


def setup_logging(verbose: bool) -> None:
    set_verbosity("DEBUG" if verbose else "INFO", rank=rank())


def print_table(frame: pd.DataFrame) -> None:
    if rank() == 0:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
            print(frame.to_string(index=False))


def print_json(data: Any) -> None:
    if rank() == 0:
        print(json.dumps(data, indent=2, default=str))


def save_figure_file(figure: Any, target: Path) -> None:
    """Write a matplotlib figure to ``target`` atomically, in the format its suffix names, and close it."""
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
