"""The precision-study figures: loss curves, test errors and throughput of each training precision
(:func:`precision_figure`), and the train x inference matrix (:func:`precision_matrix_figure`)."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from gfmkit.studies.precision import (
    loss_drift,
    precision_errors,
    precision_history,
    precision_inference,
    precision_matrix,
    precision_table,
)


def precision_figure(out: str | os.PathLike, *, smooth: int = 10) -> Figure:
    """Four panels from a precision study's run directories (``out``) alone.

    Top left: training loss (running mean over ``smooth`` steps) and validation loss (markers)
    against step. Top right: each step's training loss relative to fp64's at the same step (same seed
    and batches, so this is the drift that the precision causes). Bottom left: test force MAE of each
    dataset under its own head, evaluated in fp64 (bars) and in the run's own precision (black
    ticks). Bottom right: training throughput, labelled with the speedup over fp64.
    """
    history, errors, table = precision_history(out), precision_errors(out), precision_table(out)
    if history.empty:
        raise ValueError(f"{out}: no training metrics to draw yet")
    fig, ((curves, drift), (bars, speed)) = plt.subplots(2, 2, figsize=(12, 7.5), constrained_layout=True)
    precisions = list(table["precision"])
    colours = {p: f"C{k}" for k, p in enumerate(precisions)}
    for precision, rows in history.groupby("precision", sort=False):
        train = rows[rows["phase"] == "train"].sort_values("step")
        val = rows[rows["phase"] == "val"]
        curves.plot(train["step"], train["loss"].rolling(smooth, min_periods=1).mean(), color=colours[precision],
                    label=precision)
        curves.plot(val["step"], val["loss"], "o", color=colours[precision], ms=4)
    curves.set(xlabel="step", ylabel="loss (lines: train, dots: validation)", yscale="log", title="training")
    curves.legend(frameon=False)

    relative = loss_drift(out)
    for precision in (p for p in precisions if p != "fp64" and p in relative):
        drift.plot(relative.index, relative[precision].clip(lower=1e-17), color=colours[precision], label=precision)
    if len(relative.columns) > 1:
        drift.legend(frameon=False)
    drift.set(xlabel="step", ylabel="|loss - loss(fp64)| / loss(fp64)", yscale="log",
              title="drift from the fp64 run (same seed and batches)")

    datasets = sorted(errors["dataset"].unique()) if len(errors) else []
    width = 0.8 / max(1, len(precisions))
    x = np.arange(len(datasets))
    for k, precision in enumerate(precisions):
        mine = errors[errors["trained_in"] == precision]
        for evaluated_in in dict.fromkeys(("fp64", precision)):
            values = mine[mine["evaluated_in"] == evaluated_in].set_index("dataset")["forces_mae"].reindex(datasets)
            position = x + (k - (len(precisions) - 1) / 2) * width
            if evaluated_in == "fp64":
                bars.bar(position, values, width, color=colours[precision], label=precision)
            elif precision != "fp64":
                bars.plot(position, values, "_", color="k", ms=10, mew=2)
    bars.set_xticks(x, datasets, rotation=30, ha="right")
    bars.set(ylabel="test force MAE (eV/Å)", title="test errors (bars: in fp64, ticks: own precision)")
    bars.legend(frameon=False, fontsize=8)

    if "structures_per_s" in table:
        rates = table["structures_per_s"]
        speed.bar(precisions, rates, color=[colours[p] for p in precisions])
        if "speedup_vs_fp64" in table:
            for k, (rate, ratio) in enumerate(zip(rates, table["speedup_vs_fp64"])):
                if np.isfinite(rate):
                    speed.annotate(f"{ratio:.2f}x", (k, rate), ha="center", va="bottom", fontsize=8)
    speed.set(ylabel="structures / s", title="training throughput")
    return fig


def precision_matrix_figure(out: str | os.PathLike) -> Figure:
    """The train x inference matrix of a precision study (``out``), from its ``inference.csv`` alone.

    Heat maps (rows: trained in, columns: evaluated in; log colour scale, values written in) of the
    test force MAE against the labels, and of the force and energy deviation from the fp64-trained
    model's fp64 predictions; bars: inference throughput per inference precision, one bar per
    trained model, labelled with the peak memory of that inference.
    """
    table = precision_inference(out)
    if table.empty:
        raise ValueError(f"{out}: no train x inference matrix yet (inference.csv); finish the study first")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), constrained_layout=True)
    panels = (("forces_mae", "force MAE vs labels (eV/Å)"), ("forces_dev", "force deviation from fp64/fp64 (eV/Å)"),
              ("energy_dev", "energy deviation from fp64/fp64 (eV/atom)"))
    for ax, (metric, label) in zip(axes.flat, panels):
        _heat_map(fig, ax, precision_matrix(out, metric), label)
    speed = axes.flat[3]
    rates = precision_matrix(out, "structures_per_s")
    memory = precision_matrix(out, "peak_memory_mib")
    width = 0.8 / max(1, len(rates.index))
    x = np.arange(len(rates.columns))
    for k, trained in enumerate(rates.index):
        position = x + (k - (len(rates.index) - 1) / 2) * width
        bars = speed.bar(position, rates.loc[trained].to_numpy(float), width, label=f"trained in {trained}")
        for bar, mib in zip(bars, memory.loc[trained].to_numpy(float)):
            if np.isfinite(mib) and np.isfinite(bar.get_height()):
                speed.annotate(f"{mib:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                               va="bottom", fontsize=6)
    speed.set_xticks(x, rates.columns, rotation=20)
    speed.set(xlabel="evaluated in", ylabel="inference throughput (structures / s)",
              title="inference speed (labels: peak memory, MiB)")
    speed.legend(frameon=False, fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig


def _heat_map(fig: Figure, ax, matrix, label: str) -> None:
    from matplotlib.colors import LogNorm

    values = matrix.to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    norm = None
    if positive.size:
        norm = LogNorm(positive.min(), max(positive.max(), positive.min() * 1.01))
        image = ax.imshow(np.where(values > 0, values, np.nan), cmap="viridis_r", norm=norm)
        fig.colorbar(image, ax=ax, label=label)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            light = v <= 0 or norm is None or norm(v) < 0.5  # the low end of viridis_r is light yellow
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8, color="k" if light else "white")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=20)
    ax.set_yticks(range(len(matrix.index)), matrix.index)
    ax.set(xlabel="evaluated in", ylabel="trained in", title=label)
