"""The hyperparameter-search figure: the best loss so far, and the loss against each searched value."""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gfmkit.hpo.search import hpo_table


def hpo_figure(out: str | os.PathLike | pd.DataFrame) -> Figure:
    """From a search directory (or :func:`gfmkit.hpo.hpo_table`'s table): validation loss of every
    trial and the best so far against the trial number, then one panel per searched key (log axes
    where a range spans more than a decade; categorical values as positions)."""
    table = out if isinstance(out, pd.DataFrame) else hpo_table(out)
    done = table[table["status"] == "done"] if len(table) else table
    if done.empty:
        raise ValueError(f"{'table' if isinstance(out, pd.DataFrame) else out}: no finished trial to draw yet")
    keys = list(table.columns[1:table.columns.get_loc("status")])  # the searched keys, between trial and status
    columns = 1 + len(keys)
    fig, axes = plt.subplots(1, columns, figsize=(3.6 * columns, 3.4), constrained_layout=True, squeeze=False)
    progress = axes[0][0]
    trial = np.arange(len(table))
    progress.plot(trial[done.index], done["best_val_loss"], "o", color="0.5", ms=4, label="trial")
    progress.step(trial, table["best_so_far"], where="post", color="C3", label="best so far")
    failed = table.index[table["status"] != "done"]
    if len(failed):
        progress.plot(failed, [done["best_val_loss"].max()] * len(failed), "x", color="k", label="failed")
    progress.set(xlabel="trial", ylabel="best validation loss", yscale="log", title="search")
    progress.legend(frameon=False, fontsize=8)
    for ax, key in zip(axes[0][1:], keys):
        values = done[key]
        if pd.api.types.is_numeric_dtype(values):
            ax.plot(values, done["best_val_loss"], "o", ms=4)
            positive = values[values > 0]
            if len(positive) == len(values) and positive.max() / positive.min() > 10:
                ax.set_xscale("log")
        else:
            categories = sorted(values.astype(str).unique())
            ax.plot([categories.index(v) for v in values.astype(str)], done["best_val_loss"], "o", ms=4)
            ax.set_xticks(range(len(categories)), categories)
        best = done.loc[done["best_val_loss"].idxmin()]
        ax.axvline(best[key] if pd.api.types.is_numeric_dtype(values) else categories.index(str(best[key])),
                   color="C3", lw=0.8)
        ax.set(xlabel=key, yscale="log", title=f"best: {best[key]:.3g}" if isinstance(best[key], float) and
               math.isfinite(best[key]) else f"best: {best[key]}")
    return fig
