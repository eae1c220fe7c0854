"""The ``gfmkit`` command: one subcommand per capability, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gfmkit._version import __version__
from gfmkit.cli import cluster as cluster_cli
from gfmkit.cli import data as data_cli
from gfmkit.cli import demo as demo_cli
from gfmkit.cli import figures as figures_cli
from gfmkit.cli import kernel as kernel_cli
from gfmkit.cli import train as train_cli
from gfmkit.cli.common import (
    add_shared_flags,
    end_job,
    fail,
    is_user_error,
    setup_logging,
)
from gfmkit.comm import world
from gfmkit.outputs import oserror_message
from gfmkit.performance import tune_allocator
from gfmkit.progress import set_progress
from gfmkit.studies.registry import studies


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gfmkit",
        description="Train, tune, test and use multi-task atomistic graph foundation models. "
        "Every subcommand runs the same step a notebook runs with one gfmkit call.",
    )
    parser.add_argument("--version", action="version", version=f"gfmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data_cli.add_parser(sub)
    train_cli.add_parser(sub)
    importlib.import_module("gfmkit.cli.gate").add_parser(sub)
    cluster_cli.add_parser(sub)
    kernel_cli.add_parser(sub)
    for study in studies().values():  # every declared study's command lives in gfmkit.cli.<command>
        importlib.import_module(f"gfmkit.cli.{study.command}").add_parser(sub)
    figures_cli.add_parser(sub)
    demo_cli.add_parser(sub)
    add_shared_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gfmkit`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    if getattr(args, "no_progress", False):
        set_progress(False)
    tune_allocator()  # every command: freed memory is reused (gfmkit.performance; GFMKIT_TUNE_ALLOCATOR=0: off)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return fail(args.command, "interrupted", code=130)
    except Exception as exc:
        if isinstance(exc, OSError):  # a file in the way, no permission, a full disk: the path and the cause
            code = fail(args.command, oserror_message(exc))
        elif is_user_error(exc):
            code = fail(args.command, str(exc))
        else:
            code = None  # a bug: its traceback
        if world().size > 1:  # a rank that returns would wait in MPI_Finalize for ranks that wait for it
            end_job(args.command, exc, code)
        if code is None:
            raise
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
