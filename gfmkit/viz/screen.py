"""The screening figure: structures/s per rank of every screen recorded in a directory, and where the
time went (waiting for data, the model, writing)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from gfmkit.studies.screen import STUDY


def throughput_figure(out: str | os.PathLike | dict[str, Any]) -> Figure:
    """Left: structures/s of each rank and in total, per screen. Right: shares of the ranks' time spent
    waiting for data, in the model and writing. ``out``: a directory holding ``screen.json``, or one
    screen's summary (what :func:`gfmkit.studies.screen.screen` returns in ``.attrs["summary"]``)."""
    if isinstance(out, dict):
        screens = {Path(out["results"]).name: out}
    else:
        screens = json.loads((Path(out) / STUDY).read_text()).get("screens", {})
        if not screens:
            raise ValueError(f"{out}: no finished screen to draw yet")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    names = list(screens)
    width = 0.8 / max(1, max(len(s["per_rank"]) for s in screens.values()) + 1)
    for k, name in enumerate(names):
        summary = screens[name]
        rates = [r["structures_per_s"] for r in summary["per_rank"]] + [summary["structures_per_s"]]
        labels = [f"rank {r['rank']}" for r in summary["per_rank"]] + ["total"]
        for j, (rate, label) in enumerate(zip(rates, labels)):
            left.bar(k + (j - (len(rates) - 1) / 2) * width, rate, width, color=f"C{j}", label=label if k == 0 else None)
        shares = np.array([summary[f"{part}_share"] for part in ("data", "model", "write")])
        bottom = 0.0
        for j, (part, share) in enumerate(zip(("data", "model", "writing"), shares)):
            right.bar(k, share, 0.6, bottom=bottom, color=f"C{j + 3}", label=part if k == 0 else None)
            bottom += share
    for ax in (left, right):
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    left.set(ylabel="structures / s", title="screening throughput")
    right.set(ylabel="share of rank time", ylim=(0, 1.05), title="where the time went")
    return fig
