"""The scaling figure: throughput and parallel efficiency against workers (ranks or nodes)."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from gfmkit.studies.scaling import scaling_table


def scaling_figure(table: pd.DataFrame | str | os.PathLike, *, unit: str | None = None) -> Figure:
    """Throughput with the ideal line (left) and efficiency (right), one series per mode.

    ``table`` is a scaling study's directory or :func:`gfmkit.studies.scaling_table`'s table (or
    several concatenated); ``unit`` labels the x axis (by default ranks when every run had one node,
    else nodes). A study directory without a finished run is a ValueError.
    """
    if not isinstance(table, pd.DataFrame):
        out, table = table, scaling_table(table)
        if "structures_per_s" not in table or table["structures_per_s"].isna().all():
            raise ValueError(f"{out}: no finished scaling run to draw yet")
    if unit is None:
        unit = "workers" if "nodes" not in table else "ranks" if (table["nodes"] == 1).all() else "nodes"
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    done = table.dropna(subset=["structures_per_s"]) if "structures_per_s" in table else table.iloc[0:0]
    for mode, rows in done.groupby("mode", sort=False):
        rows = rows.sort_values("workers")
        base = rows.iloc[0]
        line, = left.plot(rows["workers"], rows["structures_per_s"], "o-", label=f"{mode}")
        ideal = base["structures_per_s"] * rows["workers"] / base["workers"]
        left.plot(rows["workers"], ideal, ":", color=line.get_color(), label=f"{mode}, ideal")
        right.plot(rows["workers"], rows["efficiency"], "o-", color=line.get_color(), label=mode)
    left.set(xlabel=unit, ylabel="structures / s", title="training throughput")
    right.set(xlabel=unit, ylabel="efficiency", ylim=(0, 1.1), title="parallel efficiency")
    right.axhline(1.0, color="0.6", lw=0.8)
    for ax in (left, right):
        if len(done):
            ax.set_xticks(sorted(done["workers"].unique()))
            ax.legend(frameon=False)
    return fig
