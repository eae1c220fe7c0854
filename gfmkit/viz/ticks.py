"""Tick labels that a log axis keeps even when its values span less than a decade."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

if TYPE_CHECKING:
    from matplotlib.axis import Axis


def label_log_axis(axis: Axis) -> None:
    """Give a log ``axis`` labelled ticks at 1, 2 and 5 times each power of ten when its view holds
    fewer than two powers of ten (matplotlib then labels none, or one, of its ticks)."""
    low, high = sorted(axis.get_view_interval())
    if low <= 0 or not np.isfinite([low, high]).all():
        return
    decades = np.floor(np.log10(high)) - np.ceil(np.log10(low)) + 1
    if decades >= 2:
        return
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())
