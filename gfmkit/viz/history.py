"""Training curves: :func:`plot_history` (loss and validation errors of a run against step) and
:class:`LiveLossPlot` (a ``train(..., callback=...)`` that redraws them in a notebook while training runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gfmkit import keys
from gfmkit.rundir import RunDir

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn, so that gfmkit.train stays light
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Validation errors drawn against step, with their line styles.
VALIDATION_ERRORS = ((keys.FORCES_MAE, "-"), (keys.ENERGY_MAE, "--"))


def history_table(source: str | os.PathLike | RunDir | pd.DataFrame) -> pd.DataFrame:
    """The metrics records of a run directory, a :class:`RunDir` or a table (returned as it is)."""
    if isinstance(source, pd.DataFrame):
        return source
    return (source if isinstance(source, RunDir) else RunDir(source)).metrics()


def plot_history(source: str | os.PathLike | RunDir | pd.DataFrame, *, ax_pairs: Sequence[Axes] | None = None) -> Figure:
    """Training loss per dataset and validation force/energy errors against step, from a run directory,
    a RunDir or a metrics table (as :func:`gfmkit.train.train` returns). A curve of one point is
    drawn as a marker inside limits around it."""
    import matplotlib.pyplot as plt

    table = history_table(source)
    if ax_pairs is None:
        fig, ax_pairs = plt.subplots(1, 2, figsize=(11, 3.8))
    else:
        fig = ax_pairs[0].figure
    left, right = ax_pairs
    left.clear()
    right.clear()
    phase = table["phase"] if "phase" in table else pd.Series(dtype=str)
    train = table[phase == "train"]
    val = table[phase == "val"]
    if len(train):
        _curve(left, train["step"], train["loss_interval"], color="k", lw=2, label="total")
        for column in sorted(c for c in train.columns if c.startswith("train/") and c.endswith("/loss")):
            series = train[["step", column]].dropna()
            _curve(left, series["step"], series[column], lw=1, label=column[len("train/") : -len("/loss")])
        left.legend(fontsize=7, ncol=2)
    left.set_xlabel("step (optimiser updates)")
    left.set_ylabel("training loss (weighted, scaled residuals)")
    for metric, style in VALIDATION_ERRORS:
        if len(val) and metric in val:
            series = val[["step", metric]].dropna()
            _curve(right, series["step"], series[metric], style=style, marker="o", ms=3,
                   label=f"val {metric} ({keys.ERROR_UNITS[metric]})")
    if len(val):
        right.legend(fontsize=7)
    for ax in (left, right):
        _open_degenerate_limits(ax)
    right.set_xlabel("step (optimiser updates)")
    right.set_ylabel(f"validation MAE ({keys.ERROR_UNITS[keys.FORCES_MAE]}, {keys.ERROR_UNITS[keys.ENERGY_MAE]})")
    fig.tight_layout()
    return fig


def _curve(ax: Axes, x: pd.Series, y: pd.Series, *, style: str = "-", **kwargs: Any) -> None:
    """Draw y against x on a log y axis; a single point as a marker."""
    if len(x) == 1:
        kwargs.setdefault("marker", "o")
        kwargs["ms"] = max(kwargs.get("ms", 0), 5)
    ax.plot(x, y, style, **kwargs)
    ax.set_yscale("log")


def _open_degenerate_limits(ax: Axes) -> None:
    """Limits around the data where all of an axis's curves share one step or one value (matplotlib
    would draw such an axis with no width)."""
    if not ax.lines:
        return
    x = np.concatenate([np.asarray(line.get_xdata(), dtype=float) for line in ax.lines])
    y = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.lines])
    x, y = np.unique(x[np.isfinite(x)]), np.unique(y[np.isfinite(y) & (y > 0)])
    if x.size == 1:
        ax.set_xlim(x[0] - 1, x[0] + 1)
    if y.size == 1:
        ax.set_ylim(y[0] / 3, y[0] * 3)


class LiveLossPlot:
    """Pass as ``train(..., callback=LiveLossPlot())`` in a notebook: the loss curves per dataset and the
    validation errors, redrawn every ``every`` records in one output area. Outside IPython it only
    collects the records (``.table()``)."""

    def __init__(self, every: int = 1):
        self.every, self.records, self._handle, self._fig = every, [], None, None

    def __call__(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))
        if record.get("phase") == "event" or len(self.records) % self.every:
            return
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        import matplotlib.pyplot as plt

        if self._fig is None:
            self._fig, self._axes = plt.subplots(1, 2, figsize=(11, 3.8))
            plt.close(self._fig)  # shown through the display handle only
        plot_history(self.table(), ax_pairs=self._axes)
        if self._handle is None:
            self._handle = display(self._fig, display_id=True)
        else:
            self._handle.update(self._fig)

    def table(self) -> pd.DataFrame:
        """Every record received so far, as a table."""
        return pd.DataFrame(self.records)
