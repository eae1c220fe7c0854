"""Global batches are cut without a Python loop over items, and exactly as the greedy rule says."""

from __future__ import annotations

import numpy as np
import pytest

from gfmkit.data.sampling import DatasetMixer, GlobalBatchSampler


def greedy(sequence, natoms, edges, batch_size, max_atoms, max_edges, drop_last):
    """The rule, item by item: add items in order while the batch has fewer than batch_size and stays in
    both budgets; an item larger than a budget forms a batch of its own."""
    batches, current, atoms, edge_sum = [], [], 0, 0
    for item in sequence:
        a, e = int(natoms[item]), int(edges[item]) if edges is not None else 0
        full = ((batch_size is not None and len(current) >= batch_size)
                or (max_atoms is not None and atoms + a > max_atoms)
                or (max_edges is not None and edge_sum + e > max_edges))
        if current and full:
            batches.append(current)
            current, atoms, edge_sum = [], 0, 0
        current.append(int(item))
        atoms, edge_sum = atoms + a, edge_sum + e
    if current and not (drop_last and batch_size is not None and len(current) < batch_size):
        batches.append(current)
    return batches


@pytest.mark.parametrize("trial", range(24))
def test_cut_equals_the_greedy_rule(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(1, 300))
    natoms, groups = rng.integers(1, 80, n), rng.integers(0, 3, n)
    edges = natoms * rng.integers(5, 40, n)
    batch_size = (None, 4, 16)[trial % 3]
    max_atoms = (None, 100, 60)[(trial // 3) % 3]
    max_edges = (None, 2000)[(trial // 9) % 2]
    if batch_size is None and max_atoms is None and max_edges is None:
        batch_size = 8
    drop_last = trial % 5 == 0
    sampler = GlobalBatchSampler(DatasetMixer(groups, seed=trial), natoms, batch_size=batch_size, max_atoms=max_atoms,
                                 max_edges=max_edges, edges=edges if max_edges else None, drop_last=drop_last)
    batches = sampler.global_batches()
    expected = greedy(sampler.mixer.sequence(0), natoms, edges if max_edges else None, batch_size, max_atoms,
                      max_edges, drop_last)
    assert [b.tolist() for b in batches] == expected
    assert len(sampler) == len(expected) and [b.tolist() for b in batches[1:3]] == expected[1:3]
    assert batches[-1].tolist() == expected[-1]
