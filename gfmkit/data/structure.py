"""One labelled structure, as numpy arrays (the unit every data path produces and consumes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from gfmkit import keys


@dataclass
class Structure:
    """Atomic numbers, positions (Å), cell (3x3 rows, zeros where not periodic), pbc, and labels.

    Labels are eV, eV/Å and eV/Å^3 (ASE's stress sign); ``properties`` holds graph-level scalars of
    property tasks. ``dataset``/``level_of_theory`` name where the structure belongs.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    charge: float | None = None
    spin: float | None = None
    properties: dict[str, float] = field(default_factory=dict)
    dataset: str | None = None
    level_of_theory: str | None = None
    split: str | None = None
    source_index: int | None = None

    def __len__(self) -> int:
        return int(len(self.numbers))

    @property
    def natoms(self) -> int:
        return len(self)

    def label(self, name: str) -> Any:
        """A target's value by name (energy, forces, stress or a property)."""
        if name in (keys.ENERGY, keys.FORCES, keys.STRESS, keys.CHARGE, keys.SPIN):
            return getattr(self, name)
        return self.properties.get(name)

    def to_atoms(self) -> Atoms:
        """An ``ase.Atoms`` whose calculator results hold the labels; the rest goes to ``info``."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        results: dict[str, Any] = {}
        if self.energy is not None:
            results["energy"] = self.energy
            results["free_energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            results["stress"] = self.stress
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        info = {
            keys.DATASET: self.dataset,
            keys.LEVEL_OF_THEORY: self.level_of_theory,
            keys.SPLIT: self.split,
            keys.SOURCE_INDEX: self.source_index,
            keys.CHARGE: self.charge,
            keys.SPIN: self.spin,
            **self.properties,
        }
        atoms.info.update({k: v for k, v in info.items() if v is not None})
        return atoms
