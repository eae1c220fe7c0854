"""Run directories: the one place a step's config, metrics, checkpoints and figures live.

Layout::

    RUN/
      config.yaml        the config the run used (exact copy, re-loadable)
      metrics.jsonl      one JSON object per line, appended as the run goes
      checkpoints/       model/optimiser state (see gfmkit.models.checkpoint)
      figures/           PNG/PDF figures, regenerated from the files above

Everything a paper figure needs is regenerated from run directories alone.
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


class RunDir:
    """A run directory. Creating the object writes nothing: each folder appears with its first file, so
    a run that failed before writing leaves no empty folders and a run without figures has no
    ``figures/``."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    def save_config(self, config: Any) -> Path:
        """Store the run's config dataclass as ``config.yaml``."""
        return save_config(config, self.config_path)

    def log_metrics(self, record: dict[str, Any] | None = None, **fields: Any) -> None:
        """Append one metrics record (a JSON line, with a wall-clock ``time`` field)."""
        row = {"time": time.time(), **(record or {}), **fields}
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}, allow_nan=True)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()

    def metrics(self) -> pd.DataFrame:
        """All metrics records as a table (empty when none were logged)."""
        if not self.metrics_path.exists():
            return pd.DataFrame()
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        return pd.DataFrame(rows)

    def save_figure(self, fig: Any, name: str, *, formats: tuple[str, ...] = ("png",), dpi: int = 150) -> list[Path]:
        """Save a matplotlib figure under ``figures/`` in each format, atomically."""
        paths = []
        for fmt in formats:
            target = self.figures / f"{name}.{fmt}"
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
            paths.append(target)
        return paths


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return value  # json writes NaN/Infinity; pandas reads them back
    if isinstance(value, Path):
        return str(value)
    return value
