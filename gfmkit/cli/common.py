"""What every subcommand shares: error reporting, MPI rank, table printing."""

from __future__ import annotations

import json
import sys
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
