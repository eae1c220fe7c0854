"""Run directories: the one place a step's config, metrics, checkpoints and figures live.

Layout::

    RUN/
      config.yaml        the config the run used (exact copy, re-loadable)
      run.json           what the run found: datasets, structures per split, the gfmkit version
      registry.json      the dataset -> head table of the run
      metrics.jsonl      one JSON object per line, appended as the run goes
      checkpoints/       last.pt (full training state), best.pt (see gfmkit.models.checkpoint)
      figures/           PNG/PDF figures, regenerated from the files above

An evaluation (:func:`gfmkit.train.evaluate`) writes error_matrix.csv, per_element.csv,
predictions.csv.gz and, last, summary.csv into its own folder.

Every file name above is spelled here once (the constants below); :class:`RunDir` writes and reads
them. Everything a paper figure needs is regenerated from run directories alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from gfmkit.config import save_config
from gfmkit.files import atomic_path
from gfmkit.log import get_logger

log = get_logger(__name__)

# -- files of a run directory --------------------------------------------------------------------------
CONFIG = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_INFO = "run.json"
REGISTRY = "registry.json"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
#: Files (and folders) a training run writes into its run directory.
RUN_FILES = (CONFIG, METRICS_FILE, RUN_INFO, REGISTRY, CHECKPOINTS, FIGURES)

# -- files of an evaluation folder ---------------------------------------------------------------------
ERROR_MATRIX = "error_matrix.csv"
PER_ELEMENT = "per_element.csv"
#: own-head predicted and true values (gzip CSV), for parity plots
PREDICTIONS = "predictions.csv.gz"
#: each dataset under its own head; written last, it marks the evaluation complete
SUMMARY = "summary.csv"
#: the files an evaluation writes, in the order it writes them
EVALUATION_FILES = (ERROR_MATRIX, PER_ELEMENT, PREDICTIONS, SUMMARY)

#: Stop reasons of a run that ended by itself (not by a signal, the wall time or a failure).
FINISHED_REASONS = ("finished", "early_stopping")


class RunDir:
    """A run directory. Creating the object writes nothing: each folder appears with its first file, so
    a run that failed before writing leaves no empty folders and a run without figures has no
    ``figures/``."""

    CONFIG = CONFIG
    METRICS_FILE = METRICS_FILE

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def figures(self) -> Path:
        return self.path / FIGURES

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def save_config(self, config: Any) -> Path:
        """Store the run's config dataclass as ``config.yaml``."""
        return save_config(config, self.config_path)

    def log_metrics(self, record: dict[str, Any] | None = None, **fields: Any) -> None:
        """Append one metrics record (a JSON line, with a wall-clock ``time`` field)."""
        row = {"time": time.time(), **(record or {}), **fields}
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}, allow_nan=True)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a+b") as fh:
            torn = fh.tell() > 0 and _last_byte(fh) != b"\n"  # a line cut short by a killed process
            fh.write((("\n" if torn else "") + line + "\n").encode())
            fh.flush()

    def records(self) -> list[dict[str, Any]]:
        """All metrics records in the order they were logged (none when nothing was logged); a line that
        a killed process or a full disk cut short is skipped with a warning."""
        if not self.metrics_path.is_file():
            return []
        found = []
        for number, line in enumerate(self.metrics_path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                found.append(json.loads(line))
            except ValueError:
                log.warning("%s:%d: skipped a metrics line that was cut short", self.metrics_path, number)
        return found

    def metrics(self) -> pd.DataFrame:
        """All metrics records as a table (empty when none were logged)."""
        return pd.DataFrame(self.records())

    def stop_reason(self) -> str | None:
        """Why the run last stopped (``finished``, ``early_stopping``, ``wall_time``, a signal's name);
        None when it never stopped (not started, running, or killed before it could say)."""
        stops = [r for r in self.records() if r.get("phase") == "event" and r.get("event") == "stop"]
        return stops[-1].get("reason") if stops else None

    def finished(self) -> bool:
        """Whether the run's last stop was its own end (:data:`FINISHED_REASONS`), not a signal or the
        wall time: a finished run is not resumed."""
        return self.stop_reason() in FINISHED_REASONS

    def last_checkpoint(self) -> Path:
        """``checkpoints/last.pt`` (the full training state); FileNotFoundError when there is none."""
        return _existing(self.checkpoints / LAST_CHECKPOINT)

    def best_checkpoint(self) -> Path:
        """``checkpoints/best.pt``, else ``last.pt`` (a run stopped before its first validation);
        FileNotFoundError when there is neither."""
        best = self.checkpoints / BEST_CHECKPOINT
        return best if best.is_file() else _existing(self.checkpoints / LAST_CHECKPOINT)

    def save_figure(self, fig: Any, name: str, *, formats: tuple[str, ...] = ("png",), dpi: int = 150) -> list[Path]:
        """Save a matplotlib figure under ``figures/`` in each format, atomically."""
        paths = []
        for fmt in formats:
            target = self.figures / f"{name}.{fmt}"
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
            paths.append(target)
        return paths


def _existing(checkpoint: Path) -> Path:
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint.parent.parent}: no checkpoint under {checkpoint.parent}")
    return checkpoint


def _last_byte(fh: Any) -> bytes:
    """The last byte of the open binary file ``fh`` (its position is left at the end)."""
    fh.seek(-1, os.SEEK_END)
    last = fh.read(1)
    fh.seek(0, os.SEEK_END)
    return last


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return value  # json writes NaN/Infinity; pandas reads them back
    if isinstance(value, Path):
        return str(value)
    return value
