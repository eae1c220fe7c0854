"""Head statistics stream over a store in chunks and reduce over ranks: equal to the dense fit."""

from __future__ import annotations

import numpy as np
import pytest
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.data import store_format as fmt
from gfmkit.models import statistics
from gfmkit.models.statistics import energy_moments, fit_energy_head


def dense_fit(store, max_z=100, split="train"):
    """The fit written out structure by structure (the definition the streamed fit must reproduce)."""
    indices = store.split_indices(split)
    counts = np.array([np.bincount(store.arrays(int(i))[fmt.NUMBERS], minlength=max_z + 1) for i in indices], float)
    energy = store.column(fmt.ENERGY)[indices]
    present = np.flatnonzero(counts.sum(axis=0))
    r = np.zeros(max_z + 1)
    if store.reference_energies:  # isolated-atom energies given by the dataset
        for symbol, value in store.reference_energies.items():
            r[chemical_symbols.index(symbol)] = value
        solution = r[present]
    else:
        a = counts[:, present]
        solution = np.linalg.solve(a.T @ a + 1e-8 * np.eye(len(present)), a.T @ energy)
        r[present] = solution
    residual = (energy - counts @ r) / counts.sum(axis=1)
    if keys.FORCES in store.targets:
        forces = np.concatenate([store.arrays(int(i))[fmt.FORCES].ravel() for i in indices])
        scale = np.sqrt(np.mean(forces**2))
    else:
        scale = residual.std()
    return {chemical_symbols[z]: v for z, v in zip(present, solution)}, residual.mean(), scale


class FakeRank:
    """Rank ``rank`` of two, whose all-reduce adds the other rank's moments (computed beforehand)."""

    size = 2

    def __init__(self, rank, other):
        self.rank, self._other = rank, iter(other.values())

    def allreduce(self, value):
        return value + next(self._other)


@pytest.mark.parametrize("name", ["bulk", "molecules", "bulk_b"])
def test_streamed_fit_equals_the_dense_one(demo_stores, monkeypatch, name):
    store = demo_stores.store(name)
    references, shift, scale = dense_fit(store)
    monkeypatch.setattr(statistics, "CHUNK", 7)  # many chunks, so chunk edges are exercised
    shards = [store.shard(rank, 2) for rank in range(2)]  # what each of two ranks holds
    forces = keys.FORCES in store.targets
    other = [energy_moments(s, s.split_indices("train"), 100, forces=forces) for s in shards]
    two_ranks = [fit_energy_head(shards[rank], comm=FakeRank(rank, other[1 - rank])) for rank in range(2)]
    for head in [fit_energy_head(store), *two_ranks]:
        if store.reference_energies is None:
            assert head.reference_energies.keys() == references.keys()
            for symbol, value in references.items():
                assert head.reference_energies[symbol] == pytest.approx(value, rel=1e-10, abs=1e-10)
        assert head.shift == pytest.approx(shift, rel=1e-10, abs=1e-10)
        assert head.scale == pytest.approx(max(scale, statistics.MIN_SCALE), rel=1e-10)


def test_moments_add_over_shards(demo_stores):
    store = demo_stores.store("surfaces")
    indices = store.split_indices("train")
    whole = energy_moments(store, indices, 100, forces=True)
    parts = [energy_moments(store, part, 100, forces=True) for part in np.array_split(indices, 3)]
    for key, value in whole.items():
        np.testing.assert_allclose(sum(p[key] for p in parts), value, rtol=1e-12, atol=1e-9)
