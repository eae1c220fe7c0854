"""What the studies share: a study file beside its run directories, runs trained to their end once
(resumed if they stopped early), and test evaluations made once per run and precision."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gfmkit.comm import world
from gfmkit.files import atomic_write_text
from gfmkit.rundir import SUMMARY, RunDir


def read_study(out: str | os.PathLike, filename: str, command: str) -> dict[str, Any]:
    """The study file ``out/filename``; a clear error naming ``command`` when there is none."""
    path = Path(out) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a study directory (no such file; start one with {command})")
    return json.loads(path.read_text())


def open_study(out: str | os.PathLike, filename: str, settings: Mapping[str, Any], grows: Sequence[str],
               command: str) -> dict[str, Any]:
    """Create or continue the study in ``out``: ``settings`` must equal the stored ones except for the
    lists named in ``grows``, which are merged (new items appended). Every rank checks, rank 0 writes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = json.loads(json.dumps(dict(settings)))
    if (out / filename).is_file():
        previous = read_study(out, filename, command)
        fixed = {k for k in study if k not in grows}
        changed = sorted(k for k in fixed if previous.get(k) != study[k])
        if changed:
            raise ValueError(f"{out / filename}: holds a study with other {', '.join(changed)}; use a new directory")
        for key in grows:
            study[key] = list(dict.fromkeys(previous.get(key, []) + study[key]))
    if world().rank == 0:
        atomic_write_text(out / filename, json.dumps(study, indent=1))
    return study


def run_metrics(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's metrics as a table (empty when it has none): :meth:`gfmkit.rundir.RunDir.metrics`."""
    return RunDir(run_dir).metrics()


def finished(run_dir: str | os.PathLike) -> bool:
    """Whether the run in ``run_dir`` stopped because it was done (not by a signal or the wall time):
    :meth:`gfmkit.rundir.RunDir.finished`."""
    return RunDir(run_dir).finished()


def train_to_end(settings: Mapping[str, Any], run_dir: str | os.PathLike) -> None:
    """Train ``settings`` in ``run_dir`` unless that run already finished; resume it if it stopped early."""
    if not finished(run_dir):
        from gfmkit.train import train

        train(dict(settings), run_dir, resume="auto")


def evaluate_once(run_dir: str | os.PathLike, stores: Sequence[str], target: str | os.PathLike, *, split: str,
                  precision: str = "fp64", max_structures: int | None = None) -> Path:
    """Evaluate the run's best checkpoint into ``target`` unless that was done; the summary's path."""
    from gfmkit.train import evaluate

    summary = Path(target) / SUMMARY
    if not summary.is_file():
        evaluate(RunDir(run_dir).best_checkpoint(), list(stores), split=split, out=target, precision=precision,
                 max_structures=max_structures, figures=False, overwrite=True)  # the study's own, unfinished
    return summary


def on_rank_0(fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only while the other ranks wait for it; an error there is raised on every
    rank (instead of leaving the others blocked in the next run's collectives)."""
    comm = world()
    error = None
    if comm.rank == 0:
        try:
            fn()
        except Exception as exc:  # handed to every rank below, then raised
            error = exc
    message = comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 failed: {message}")
