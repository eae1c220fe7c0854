"""Dataset statistics figure: sizes by level of theory, and which elements each dataset covers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from ase.data import atomic_numbers
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gfmkit.data.store_read import Store

if TYPE_CHECKING:
    import pandas as pd


def dataset_overview(stores: Sequence[Store]) -> Figure:
    """Three panels: structures per dataset (log scale, coloured by level of theory), element
    coverage per dataset, and element overlap between datasets (Jaccard index of element sets)."""
    names = [s.name for s in stores]
    sizes = np.array([len(s) for s in stores])
    lots = [s.level_of_theory for s in stores]
    elements = sorted({e for s in stores for e in s.elements}, key=atomic_numbers.get)
    presence = np.array([[e in s.elements for e in elements] for s in stores], dtype=float)
    sets = [set(s.elements) for s in stores]
    overlap = np.array([[len(a & b) / max(1, len(a | b)) for b in sets] for a in sets])

    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(stores) + 2.5), gridspec_kw={"width_ratios": [1, 1.4, 1]})
    palette = dict(zip(sorted(set(lots)), plt.get_cmap("tab10").colors))
    axes[0].barh(names, sizes, color=[palette[lot] for lot in lots])
    axes[0].set_xscale("log")
    axes[0].invert_yaxis()
    axes[0].set_xlabel("structures")
    axes[0].set_title("Dataset sizes")
    axes[0].set_xlim(0.5 * sizes.min(), 3 * sizes.max())
    handles = [Patch(color=colour, label=lot) for lot, colour in palette.items()]
    axes[0].legend(handles=handles, title="level of theory", fontsize=8, loc="upper center",
                   bbox_to_anchor=(0.5, -0.12), ncol=min(3, len(handles)))

    axes[1].imshow(presence, cmap="Greens", aspect="auto", vmin=0, vmax=1.3)
    axes[1].set_xticks(range(len(elements)), elements)
    axes[1].set_yticks(range(len(names)), names)
    axes[1].set_title("Elements per dataset")

    image = axes[2].imshow(overlap, cmap="viridis", vmin=0, vmax=1)
    axes[2].set_xticks(range(len(names)), names, rotation=60, ha="right")
    axes[2].set_yticks(range(len(names)), names)
    axes[2].set_title("Element overlap (Jaccard)")
    fig.colorbar(image, ax=axes[2], fraction=0.046)
    fig.tight_layout()
    return fig


def sampling_overview(plans: dict[str, pd.DataFrame]) -> Figure:
    """Draw probability per dataset under several strategies (bars), against the dataset's share."""
    names = list(next(iter(plans.values()))["dataset"])
    x = np.arange(len(names))
    width = 0.8 / len(plans)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.8))
    for k, (label, plan) in enumerate(plans.items()):
        ax.bar(x + (k - (len(plans) - 1) / 2) * width, plan["probability"], width, label=label)
    share = next(iter(plans.values()))["share"]
    ax.plot(x, share, "k_", markersize=20, mew=2, label="share of structures")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("probability a draw comes from the dataset")
    ax.legend(fontsize=8)
    ax.set_title("How often each dataset is seen")
    fig.tight_layout()
    return fig
