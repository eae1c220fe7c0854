"""Hyperparameter-search figures: the first objective's best so far and its value against each searched
key (:func:`hpo_figure`); with several objectives, the trade-off of two of them and its Pareto front,
coloured by precision (:func:`pareto_figure`)."""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gfmkit.hpo.objectives import OBJECTIVES
from gfmkit.hpo.search import first_objective, hpo_table

LABELS = {o.column: o.label for o in OBJECTIVES.values()}


def _table(out: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every trial, the finished ones) of a search directory or table; an error when none finished."""
    table = out if isinstance(out, pd.DataFrame) else hpo_table(out)
    done = table[table["status"] == "done"] if len(table) else table
    if done.empty:
        raise ValueError(f"{'table' if isinstance(out, pd.DataFrame) else out}: no finished trial to draw yet")
    return table, done


def _maximised(column: str) -> bool:
    return any(o.column == column and o.maximise for o in OBJECTIVES.values())


def _log_if_wide(ax: plt.Axes, values: pd.Series, axis: str) -> None:
    positive = values[values > 0]
    if len(positive) == len(values) and len(values) and positive.max() / positive.min() > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def hpo_figure(out: str | os.PathLike | pd.DataFrame) -> Figure:
    """From a search directory (or :func:`gfmkit.hpo.hpo_table`'s table): the first objective of every
    trial and the best so far against the trial number, then one panel per searched key (log axes
    where a range spans more than a decade; categorical values as positions)."""
    table, done = _table(out)
    y = first_objective(table)
    label = LABELS.get(y, y)
    keys = list(table.columns[1:table.columns.get_loc("status")])  # the searched keys, between trial and status
    columns = 1 + len(keys)
    fig, axes = plt.subplots(1, columns, figsize=(3.6 * columns, 3.4), constrained_layout=True, squeeze=False)
    progress = axes[0][0]
    trial = np.arange(len(table))
    progress.plot(trial[done.index], done[y], "o", color="0.5", ms=4, label="trial")
    progress.step(trial, table["best_so_far"], where="post", color="C3", label="best so far")
    failed = table.index[table["status"] != "done"]
    if len(failed):
        progress.plot(failed, [done[y].max()] * len(failed), "x", color="k", label="failed")
    progress.set(xlabel="trial", ylabel=label, title="search")
    _log_if_wide(progress, done[y], "y")
    progress.legend(frameon=False, fontsize=8)
    best = done.loc[done[y].idxmax() if _maximised(y) else done[y].idxmin()]
    for ax, key in zip(axes[0][1:], keys):
        values = done[key]
        numeric = pd.api.types.is_numeric_dtype(values)
        if numeric:
            ax.plot(values, done[y], "o", ms=4)
            _log_if_wide(ax, values, "x")
        else:
            categories = sorted(values.astype(str).unique())
            ax.plot([categories.index(v) for v in values.astype(str)], done[y], "o", ms=4)
            ax.set_xticks(range(len(categories)), categories)
        ax.axvline(best[key] if numeric else categories.index(str(best[key])), color="C3", lw=0.8)
        _log_if_wide(ax, done[y], "y")
        ax.set(xlabel=key, ylabel=label, title=f"best: {best[key]:.3g}" if isinstance(best[key], float) and
               math.isfinite(best[key]) else f"best: {best[key]}")
    return fig


def pareto_figure(out: str | os.PathLike | pd.DataFrame, x: str | None = None, y: str | None = None) -> Figure:
    """From a search with several objectives: ``y`` (default the first objective's column) against ``x``
    (default the second's) for every finished trial, coloured by precision, the Pareto-front trials
    ringed and joined by the front's staircase."""
    table, done = _table(out)
    if "pareto" not in table:
        raise ValueError("a Pareto figure needs a search with several objectives")
    objectives = [c for c in table.columns[table.columns.get_loc("status") + 1:] if c in LABELS][:2]
    y = y or objectives[0]
    x = x or objectives[1]
    fig, ax = plt.subplots(figsize=(5.2, 4.0), constrained_layout=True)
    precision = done["precision"].astype(str) if "precision" in done else pd.Series("trial", index=done.index)
    for k, name in enumerate(sorted(precision.unique())):
        rows = done[precision == name]
        ax.plot(rows[x], rows[y], "o", ms=5, color=f"C{k}", label=name)
    front = done[done["pareto"].astype(bool)].sort_values(x)
    ax.plot(front[x], front[y], "o", ms=10, mfc="none", mec="k", label="Pareto front")
    ax.step(front[x], front[y], where="pre" if _maximised(x) else "post", color="k", lw=0.8)
    _log_if_wide(ax, done[x], "x")
    _log_if_wide(ax, done[y], "y")
    ax.set(xlabel=LABELS.get(x, x), ylabel=LABELS.get(y, y), title=f"{len(front)} of {len(done)} trials on the front")
    ax.legend(frameon=False, fontsize=8, title="precision" if "precision" in done else None)
    return fig
