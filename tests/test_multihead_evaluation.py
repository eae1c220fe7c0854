"""The head x dataset error matrix from one encoder pass per batch equals separate passes per head, and
the held-out comparison of head weightings and the disagreement calibration (gfmkit.studies.multihead)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfmkit.data.graphs import GraphDataset, collate
from gfmkit.train.evaluate import evaluate


def test_cross_head_errors_equal_separate_passes(tiny_checkpoint, demo_stores, one_thread):
    from gfmkit import load_model

    result = evaluate(tiny_checkpoint, demo_stores, split="test", max_structures=4, figures=False)
    model = load_model(tiny_checkpoint).double()
    data = GraphDataset(demo_stores, model.config.cutoff, split="test")
    for head, dataset in [("molecules", "bulk"), ("bulk", "bulk_b"), ("clusters", "surfaces")]:
        batch = collate([data[k] for k in np.flatnonzero(data.head == model.head_index(dataset))[:4]])
        batch.dataset = torch.full_like(batch.dataset, model.head_index(head))
        stress = dataset.startswith("bulk")
        out = model(batch, forces=True, stress=stress)
        row = result.matrix.set_index(["head", "dataset"]).loc[(head, dataset)]
        assert row["forces_mae"] == pytest.approx(float((out["forces"] - batch.forces).abs().mean()), rel=1e-9)
        energy = float(((out["energy"] - batch.energy) / batch.natoms).abs().mean())
        assert row["energy_mae"] == pytest.approx(energy, rel=1e-9)
        if stress:
            assert row["stress_mae"] == pytest.approx(float((out["stress"] - batch.stress).abs().mean()), rel=1e-9)


def test_head_weighting_study_tables_and_calibration(tiny_checkpoint, demo_stores, one_thread):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gfmkit import load_model
    from gfmkit.models import fit_head_gate
    from gfmkit.studies.multihead import (
        capture_share,
        compare_head_weighting,
        summary_table,
    )

    model = load_model(tiny_checkpoint).double()
    fit_head_gate(model, demo_stores, steps=50, max_structures=10)
    pretraining = ["bulk", "surfaces", "molecules", "clusters", "bulk_b"]
    study = compare_head_weighting(model, demo_stores, split=None, heads=pretraining, max_structures=6)
    records = study.records
    assert set(records["role"]) == {"in-distribution", "unseen"}
    assert set(records.loc[records["role"] == "unseen", "dataset"]) == {"alloys_al", "cu_morse"}  # no property set
    assert {"gate", "overlap", "uniform", "own", "head:bulk"} <= set(records["method"])
    # the own head equals that single head; a single head's errors match a direct own-head pass
    own = records[records["method"] == "own"].set_index(["dataset", "structure"])["energy_error"]
    bulk = records[(records["method"] == "head:bulk") & (records["dataset"] == "bulk")].set_index(["dataset", "structure"])
    assert np.allclose(own.loc["bulk"].to_numpy(), bulk["energy_error"].to_numpy())
    table = study.table
    best = table[table["method"] == "best single head"].set_index("dataset")
    singles = table[table["method"].str.startswith("head:")]
    assert best.loc["alloys_al", "energy_mae"] == singles[singles["dataset"] == "alloys_al"]["energy_mae"].min()
    assert list(summary_table(table).columns) and set(study.calibration["role"]) == {"in-distribution", "unseen"}
    assert study.calibration["spearman"].between(-1, 1).all() and len(study.reliability)
    assert capture_share(np.array([3.0, 2.0, 1.0, 0.0]), np.array([9.0, 1.0, 2.0, 0.0]), 0.25) == 1.0
    for fig in study.figures.values():
        assert all(ax.get_ylabel() and "(" in ax.get_ylabel() for ax in fig.axes)  # units on every axis
    plt.close("all")
