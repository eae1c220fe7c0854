"""Every store reader keeps the same contract (tests/store_checks.py): gfmkit's Store and HydraGNNStore."""

from __future__ import annotations

from ase.build import bulk
from ase.calculators.emt import EMT
from hydragnn_layout import emt_samples, write_hydragnn_bp
from store_checks import StoreContract

from gfmkit.data import DatasetSpec, Store
from gfmkit.data.hydragnn import HydraGNNStore
from gfmkit.data.ingest import convert


def _emt_frames(n: int):
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms[i % 4].symbol = "Au"
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    return frames


class TestGfmkitStore(StoreContract):
    def make(self, tmp_path):
        frames = _emt_frames(10)
        convert(frames, tmp_path / "emt.bp", DatasetSpec(name="emt", level_of_theory="EMT"), progress=False)
        return Store(tmp_path / "emt.bp"), frames


class TestHydraGNNStore(StoreContract):
    def make(self, tmp_path):
        samples, atoms = emt_samples(9, seed=0)
        write_hydragnn_bp(tmp_path / "hydra.bp", {"trainset": samples[:6], "valset": samples[6:], "testset": []})
        return HydraGNNStore(tmp_path / "hydra.bp", split="trainset"), atoms[:6]

    def reopen(self, store, **kwargs):
        return HydraGNNStore(store.path, split="trainset", **kwargs)
