"""The fine-tuning figure: test error against training-set size, one line per strategy."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from gfmkit import keys
from gfmkit.studies.finetune import finetune_table
from gfmkit.viz.ticks import label_log_axis

UNITS = keys.ERROR_UNITS
STYLES = {"scratch": ("k", "o--"), "frozen": ("C0", "s-"), "full": ("C3", "^-")}


def headline_metric(rows: pd.DataFrame) -> str:
    """The metric a dataset's learning curve shows: forces when it has them, else energy, else its property."""
    for metric in (keys.FORCES_MAE, keys.ENERGY_MAE, keys.PROPERTY_MAE):
        if metric in rows and rows[metric].notna().any():
            return metric
    return keys.ENERGY_MAE


def finetune_figure(out: str | os.PathLike | pd.DataFrame) -> Figure:
    """Learning curves of a fine-tuning study (its directory, or :func:`finetune_table`'s table): one
    panel per downstream dataset, test MAE against that dataset's training structures (log-log)."""
    table = out if isinstance(out, pd.DataFrame) else finetune_table(out)
    if table.empty:
        raise ValueError(f"{'table' if isinstance(out, pd.DataFrame) else out}: no evaluated runs to draw yet")
    datasets = sorted(table["dataset"].unique()) if len(table) else []
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.2 * max(1, len(datasets)), 3.6),
                             constrained_layout=True, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = table[table["dataset"] == dataset]
        metric = headline_metric(rows)
        for strategy, curve in rows.groupby("strategy", sort=False):
            curve = curve.sort_values("train_structures")
            colour, style = STYLES.get(strategy, (None, "o-"))
            ax.plot(curve["train_structures"], curve[metric], style, color=colour, label=strategy)
        ax.set(xscale="log", yscale="log", title=dataset, xlabel="training structures",
               ylabel=f"test {metric.replace('_mae', '')} MAE ({UNITS[metric]})")
        ticks = np.unique(rows["train_structures"].dropna().astype(int))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        label_log_axis(ax.yaxis)  # a property's errors often span less than a decade
        ax.legend(frameon=False, fontsize=8)
    return fig
