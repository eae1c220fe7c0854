"""Figures of an evaluation (:func:`gfmkit.train.evaluate`): the head x dataset error matrix, parity
plots and per-element force errors, from its tables or from the folder it wrote."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.rundir import ERROR_MATRIX, PER_ELEMENT, PREDICTIONS

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn, so that gfmkit.train stays light
    from matplotlib.figure import Figure


def quantity_label(quantity: str) -> str:
    """An axis label for a quantity of the predictions table, with its units: ``energy per atom (eV/atom)``."""
    return f"{quantity.replace('_', ' ')} ({keys.QUANTITY_UNITS.get(quantity, keys.PROPERTY_UNITS)})"


def error_label(metric: str) -> str:
    """An axis label for an error column, with its units: ``forces MAE (eV/Å)``."""
    return f"{metric.removesuffix('_mae').replace('_', ' ')} MAE ({keys.ERROR_UNITS[metric]})"


def plot_error_matrix(matrix: pd.DataFrame, metrics: Sequence[str] = (keys.ENERGY_MAE, keys.FORCES_MAE)) -> Figure:
    """Heat maps (log colour scale) of head x dataset errors, one panel per metric, values written in."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        table = matrix.pivot(index=keys.HEAD, columns="dataset", values=metric) if len(matrix) else pd.DataFrame()
        values = table.to_numpy(dtype=float)
        finite = values[np.isfinite(values) & (values > 0)]
        if finite.size:
            image = ax.imshow(values, cmap="viridis_r", norm=LogNorm(finite.min(), max(finite.max(), finite.min() * 1.01)))
            fig.colorbar(image, ax=ax, fraction=0.046, label=error_label(metric))
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(table.columns)), table.columns, rotation=60, ha="right")
        ax.set_yticks(range(len(table.index)), table.index)
        ax.set_xlabel("dataset")
        ax.set_ylabel("head")
        ax.set_title(error_label(metric))
    fig.tight_layout()
    return fig


def plot_parity(predictions: pd.DataFrame, max_points: int = 5000) -> Figure:
    """Predicted against true values, one panel per quantity (energy per atom, forces, properties),
    coloured by dataset, each dataset under its own head."""
    import matplotlib.pyplot as plt

    quantities = list(dict.fromkeys(predictions["quantity"])) or [keys.ENERGY_PER_ATOM]
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.5 * len(quantities), 4.2), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, quantity in zip(axes[0], quantities):
        part = predictions[predictions["quantity"] == quantity]
        if len(part) > max_points:
            part = part.iloc[np.sort(rng.choice(len(part), max_points, replace=False))]
        for name, group in part.groupby("dataset"):
            ax.scatter(group["true"], group["predicted"], s=6, alpha=0.6, label=name)
        if len(part):
            lo = float(min(part["true"].min(), part["predicted"].min()))
            hi = float(max(part["true"].max(), part["predicted"].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.legend(fontsize=7, markerscale=2)
        ax.set_xlabel(f"true {quantity_label(quantity)}")
        ax.set_ylabel(f"predicted {quantity_label(quantity)}")
        ax.set_title(quantity.replace("_", " "))
    fig.tight_layout()
    return fig


def plot_per_element(per_element: pd.DataFrame) -> Figure:
    """Own-head force MAE per element, grouped by dataset."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    if len(per_element):
        table = per_element.pivot(index="element", columns="dataset", values=keys.FORCES_MAE)
        table = table.loc[sorted(table.index, key=chemical_symbols.index)]
        width = 0.8 / max(1, len(table.columns))
        x = np.arange(len(table))
        for k, name in enumerate(table.columns):
            ax.bar(x + k * width, table[name].to_numpy(), width, label=name)
        ax.set_xticks(x + 0.4 - width / 2, table.index)
        ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("element")
    ax.set_ylabel(error_label(keys.FORCES_MAE))
    ax.set_title("Force errors per element (own head)")
    fig.tight_layout()
    return fig


def evaluation_figures(folder: str | os.PathLike) -> dict[str, Figure]:
    """The figures of the evaluation written into ``folder`` (``error_matrix``; ``per_element`` and
    ``parity`` where their files are there), from its files alone."""
    folder = Path(folder)
    figures = {"error_matrix": plot_error_matrix(pd.read_csv(folder / ERROR_MATRIX))}
    if (folder / PER_ELEMENT).is_file():
        figures["per_element"] = plot_per_element(pd.read_csv(folder / PER_ELEMENT))
    if (folder / PREDICTIONS).is_file():
        figures["parity"] = plot_parity(pd.read_csv(folder / PREDICTIONS))
    return figures
