"""Figures of the head-weighting study (:mod:`gfmkit.studies.multihead`): errors of each weighting per
dataset, and the heads' disagreement against the true error (scatter and reliability curve)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from gfmkit import keys
from gfmkit.viz.evaluation import error_label
from gfmkit.viz.ticks import label_log_axis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: methods in the order they are drawn
METHODS = ("gate", "overlap", "uniform", "best single head", "own")
_QUANTITIES = (("energy", "energy_spread", "energy_error", "eV/atom"), ("forces", "forces_spread", "forces_error", "eV/Å"))


def plot_weighting(table: pd.DataFrame) -> Figure:
    """Grouped bars (log scale): energy-per-atom and force MAE of each method on each dataset,
    in-distribution datasets first, unseen ones marked."""
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m in set(table["method"])]
    order = list(dict.fromkeys(zip(table["role"], table["dataset"])))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(len(methods), 1)
    for ax, metric in zip(axes, (keys.ENERGY_MAE, keys.FORCES_MAE)):
        for k, method in enumerate(methods):
            part = table[table["method"] == method].set_index(["role", "dataset"])
            values = [part[metric].get(key, np.nan) for key in order]
            ax.bar(np.arange(len(order)) + (k - (len(methods) - 1) / 2) * width, values, width, label=method)
        ax.set_xticks(range(len(order)), [f"{d}\n({r})" for r, d in order], rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        label_log_axis(ax.yaxis)
        ax.set_ylabel(error_label(metric))
        ax.set_xlabel("dataset (role)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_calibration(records: pd.DataFrame, reliability: pd.DataFrame, method: str | None = None) -> Figure:
    """Top: each structure's heads' spread against its true error (of ``method``, the calibration's by
    default), in-distribution and unseen structures apart; bottom: reliability curves (RMSE per spread
    quantile bin against the bin's mean spread; the dashed line is error = spread)."""
    import matplotlib.pyplot as plt

    methods = set(records["method"])
    method = method or ("gate" if "gate" in methods else "overlap")
    mine = records[records["method"] == method]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for column, (quantity, spread, error, unit) in enumerate(_QUANTITIES):
        top, bottom = axes[0, column], axes[1, column]
        for role, part in mine.groupby("role", sort=False):
            top.scatter(part[spread], part[error], s=8, alpha=0.6, label=role)
            if len(reliability):
                curve = reliability[(reliability["role"] == role) & (reliability["quantity"] == quantity)]
                bottom.plot(curve["mean_spread"], curve["rmse"], "o-", label=role)
        top.set_xlabel(f"{quantity} spread across heads ({unit})")
        top.set_ylabel(f"{quantity} error of '{method}' ({unit})")
        bottom.set_xlabel(f"mean {quantity} spread in bin ({unit})")
        bottom.set_ylabel(f"{quantity} RMSE in bin ({unit})")
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        lo, hi = bottom.get_xlim()
        bottom.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        for ax in (top, bottom):
            label_log_axis(ax.xaxis)
            label_log_axis(ax.yaxis)
    fig.tight_layout()
    return fig
