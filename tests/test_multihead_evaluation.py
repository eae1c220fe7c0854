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
