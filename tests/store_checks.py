"""The contract every store reader keeps (gfmkit's ``Store``, ``HydraGNNStore``, and any later reader).

A test class inherits :class:`StoreContract` and provides ``make(tmp_path)`` returning the reader and
the ``ase.Atoms`` it must give back, in order (with their calculator's energy and forces). Every reader
then gets the same checks for free: length, indexing (negative too), slices, iteration, ``atoms(i)``,
lazy == preloaded, contiguous ranges and shards that cover the store, split indices that partition it,
a pickled reader (as DataLoader workers get it) that reopens its file, and damaged files as one-line
errors within a bounded time.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from gfmkit.data.store_format import StoreError


class StoreContract:
    #: the file inside the store that holds the arrays
    DATA_FILE = "data.0"

    def make(self, tmp_path: Path):  # pragma: no cover - provided by each reader's test class
        raise NotImplementedError

    def reopen(self, store, **kwargs):
        return type(store)(store.path, **kwargs)

    # -- what every reader gives back ---------------------------------------------------------------
    def test_values_round_trip(self, tmp_path):
        store, atoms = self.make(tmp_path)
        assert len(store) == len(atoms)
        for structure, expected in zip(store, atoms):
            np.testing.assert_array_equal(structure.numbers, expected.numbers)
            np.testing.assert_allclose(structure.positions, expected.positions, atol=1e-5)
            assert structure.energy == pytest.approx(expected.get_potential_energy(), rel=1e-6, abs=1e-6)
            np.testing.assert_allclose(structure.forces, expected.get_forces(), atol=1e-5)

    def test_indexing_slices_and_atoms(self, tmp_path):
        store, atoms = self.make(tmp_path)
        n = len(store)
        np.testing.assert_array_equal(store[-1].positions, store[n - 1].positions)
        assert [s.source_index for s in store[1:3]] == [store[1].source_index, store[2].source_index]
        with pytest.raises(IndexError):
            store[n]
        first = store.atoms(0)
        np.testing.assert_allclose(first.get_forces(), store[0].forces)
        assert first.get_potential_energy() == pytest.approx(store[0].energy)

    def test_lazy_equals_preloaded(self, tmp_path):
        store, _ = self.make(tmp_path)
        preloaded = self.reopen(store, preload=True)
        for lazy, eager in zip(store, preloaded):
            np.testing.assert_array_equal(lazy.positions, eager.positions)
            np.testing.assert_array_equal(lazy.forces, eager.forces)

    def test_ranges_and_shards_cover_the_store(self, tmp_path):
        store, _ = self.make(tmp_path)
        whole = [s.source_index for s in store]
        for size in (1, 2, 3):
            shards = [store.shard(rank, size) for rank in range(size)]
            assert [s.source_index for shard in shards for s in shard] == whole
        part = store.subset(1, len(store) - 1)
        np.testing.assert_array_equal(part[0].positions, store[1].positions)

    def test_split_indices_partition_the_store(self, tmp_path):
        store, _ = self.make(tmp_path)
        indices = np.concatenate([store.split_indices(s) for s in ("train", "val", "test")])
        assert sorted(indices.tolist()) == list(range(len(store)))

    def test_a_pickled_reader_reopens_its_file(self, tmp_path):
        store, _ = self.make(tmp_path)
        copy = pickle.loads(pickle.dumps(store))
        np.testing.assert_array_equal(copy[len(copy) - 1].positions, store[len(store) - 1].positions)

    # -- damaged files ------------------------------------------------------------------------------
    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("damage", ["empty", "cut", "missing"])
    def test_damaged_files_are_one_line_errors(self, tmp_path, damage):
        store, _ = self.make(tmp_path)
        damaged = tmp_path / f"damaged-{damage}.bp"
        shutil.copytree(store.path, damaged)
        data = damaged / self.DATA_FILE
        if damage == "empty":
            data.write_bytes(b"")
        elif damage == "cut":
            os.truncate(data, data.stat().st_size // 2)
        else:
            data.unlink()
        with pytest.raises(StoreError) as info:
            reader = type(store)(damaged, preload=True)
            [reader[i] for i in range(len(reader))]
        message = str(info.value)
        assert str(damaged) in message and "\n" not in message and "\x1b" not in message
