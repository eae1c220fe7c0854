"""The fine-tuning figure: test error against training-set size, one line per strategy (the mean over
seeds, the band their min-max spread), and a last panel of how much each strategy made the pretrained
heads forget."""

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
STYLES = {"scratch": ("k", "o--"), "head": ("C0", "s-"), "lora": ("C2", "D-"), "last-k": ("C1", "v-"),
          "full": ("C3", "^-"), "full+replay": ("C4", "P-")}


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
    forgetting = "forgetting" in table and table["forgetting"].notna().any()
    panels = max(1, len(datasets)) + int(forgetting)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), constrained_layout=True, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = table[table["dataset"] == dataset]
        metric = headline_metric(rows)
        for strategy, curve in rows.groupby("strategy", sort=False):
            stats = curve.groupby("train_structures")[metric].agg(["mean", "min", "max"]).reset_index()
            colour, style = STYLES.get(strategy, (None, "o-"))
            line = ax.plot(stats["train_structures"], stats["mean"], style, color=colour, label=strategy)[0]
            if curve.groupby("train_structures").size().max() > 1:  # the spread over seeds
                ax.fill_between(stats["train_structures"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
        ax.set(xscale="log", yscale="log", title=dataset, xlabel="training structures",
               ylabel=f"test {metric.replace('_mae', '')} MAE ({UNITS[metric]})")
        ticks = np.unique(rows["train_structures"].dropna().astype(int))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        label_log_axis(ax.yaxis)  # a property's errors often span less than a decade
        ax.legend(frameon=False, fontsize=8)
    if forgetting:
        forgetting_panel(axes[0][-1], table)
    return fig


def forgetting_panel(ax, table: pd.DataFrame) -> None:
    """Per strategy, the pretrained heads' mean relative change of validation error at the largest
    training fraction, in percent: the mean over seeds as a bar, each seed as a dot."""
    largest = table[table["fraction"] == table["fraction"].max()].dropna(subset=["forgetting"])
    per_run = largest.groupby(["strategy", "seed"], sort=False)["forgetting"].first().reset_index()
    strategies = list(dict.fromkeys(per_run["strategy"]))
    for k, strategy in enumerate(strategies):
        values = 100 * per_run.loc[per_run["strategy"] == strategy, "forgetting"].to_numpy()
        colour = STYLES.get(strategy, ("C7", ""))[0]
        ax.bar(k, values.mean(), color=colour, alpha=0.6)
        ax.plot(np.full(len(values), k), values, "o", color=colour, markersize=3)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
    ax.set(title="forgetting (pretraining validation sets)", xlabel="strategy",
           ylabel="change of pretrained-head MAE (%)")
