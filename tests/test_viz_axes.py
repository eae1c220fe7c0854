"""Figures moved to gfmkit.viz: units on every quantitative axis, one-point histories, readable log ticks."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from gfmkit.viz.evaluation import plot_error_matrix, plot_parity, plot_per_element
from gfmkit.viz.finetune import finetune_figure
from gfmkit.viz.history import plot_history

UNIT = re.compile(r"\([^()]*(eV/atom|eV/Å³|eV/Å|property units)[^()]*\)")  # a unit in parentheses


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def predictions() -> pd.DataFrame:
    rows = [("bulk", "energy_per_atom", -3.0, -2.9), ("bulk", "energy_per_atom", -3.2, -3.3),
            ("bulk", "forces", 0.1, 0.2), ("bulk", "forces", -0.4, -0.3),
            ("bulk_modulus", "bulk_modulus", 140.0, 150.0), ("bulk_modulus", "bulk_modulus", 90.0, 80.0)]
    return pd.DataFrame(rows, columns=["dataset", "quantity", "true", "predicted"])


def test_parity_axes_name_quantity_and_units():
    fig = plot_parity(predictions())
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert labels == [("true energy per atom (eV/atom)", "predicted energy per atom (eV/atom)"),
                      ("true forces (eV/Å)", "predicted forces (eV/Å)"),
                      ("true bulk modulus (property units)", "predicted bulk modulus (property units)")]


def test_error_matrix_and_per_element_carry_units():
    matrix = pd.DataFrame({"head": ["a", "a", "b", "b"], "dataset": ["a", "b", "a", "b"], "structures": 3,
                           "energy_mae": [0.01, 0.2, 0.3, 0.02], "forces_mae": [0.1, 0.5, 0.6, 0.2],
                           "stress_mae": np.nan, "property_mae": np.nan})
    fig = plot_error_matrix(matrix)
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert [ax.get_ylabel() for ax in colorbars] == ["energy MAE (eV/atom)", "forces MAE (eV/Å)"]
    assert [ax.get_title() for ax in fig.axes if ax not in colorbars] == ["energy MAE (eV/atom)", "forces MAE (eV/Å)"]
    per_element = pd.DataFrame({"dataset": ["a", "a"], "element": ["Cu", "H"], "atoms": [4, 2], "forces_mae": [0.1, 0.2]})
    (ax,) = plot_per_element(per_element).axes
    assert UNIT.search(ax.get_ylabel()) and ax.get_xlabel() == "element"


def history(val_steps: list[int]) -> pd.DataFrame:
    train = [{"phase": "train", "step": s, "loss_interval": 1.0 / s, "train/bulk/loss": 1.0 / s} for s in (1, 2, 3)]
    val = [{"phase": "val", "step": s, "loss": 0.5, "forces_mae": 0.2 / s, "energy_mae": 0.05 / s} for s in val_steps]
    return pd.DataFrame(train + val)


def test_history_axes_carry_units():
    left, right = plot_history(history([2, 3])).axes
    assert UNIT.search(right.get_ylabel()) and "(" in left.get_ylabel()
    assert all("step" in ax.get_xlabel() for ax in (left, right))
    assert [line.get_label() for line in right.lines] == ["val forces_mae (eV/Å)", "val energy_mae (eV/atom)"]


def test_a_single_validation_point_is_a_marker_inside_sensible_limits():
    right = plot_history(history([3])).axes[1]
    assert all(line.get_marker() not in (None, "", "None") for line in right.lines)
    (x0, x1), (y0, y1) = right.get_xlim(), right.get_ylim()
    assert x0 < 3 < x1 and x1 - x0 >= 1  # not a zero-width axis around one step
    for line in right.lines:
        (value,) = line.get_ydata()
        assert y0 < value < y1 and y1 / y0 > 2
    one_train = plot_history(pd.DataFrame([{"phase": "train", "step": 1, "loss_interval": 0.3}])).axes[0]
    assert one_train.lines[0].get_marker() not in (None, "", "None")
    assert one_train.get_xlim()[1] - one_train.get_xlim()[0] >= 1


def test_the_finetune_property_panel_has_tick_labels():
    table = pd.DataFrame({
        "strategy": ["scratch", "scratch", "full", "full"], "fraction": [0.5, 1.0, 0.5, 1.0],
        "train_structures": [10, 20, 10, 20], "dataset": "bulk_modulus", "test_structures": 5,
        "energy_mae": np.nan, "forces_mae": np.nan, "stress_mae": np.nan, "property_mae": [31.0, 24.0, 22.0, 18.0]})
    fig = finetune_figure(table)
    fig.canvas.draw()
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    shown = [t.get_text() for t in ax.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
    assert len(shown) >= 2, shown
    assert [t.get_text() for t in ax.get_xticklabels() if t.get_text()] == ["10", "20"]
    assert UNIT.search(ax.get_ylabel())
