"""Small labelled structures for data tests (ASE EMT; periodic, mixed and non-periodic)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT


def emt_structures(n: int = 12, seed: int = 0, *, stress: bool = True) -> list[Atoms]:
    """``n`` structures cycling through triclinic bulk alloys, a slab and molecules, EMT-labelled."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        kind = k % 3
        if kind == 0:
            atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1 + k % 2)
            atoms.numbers[rng.random(len(atoms)) < 0.4] = 79
            atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
        elif kind == 1:
            atoms = fcc111("Ni", (2, 2, 2), vacuum=None if stress else 5.0)
            if not stress:
                atoms.pbc = (True, True, False)
        else:
            atoms = molecule(["CH4", "H2O", "NH3"][k % 3 if k % 3 else 0])
            atoms.center(vacuum=0.0)
        atoms.rattle(0.05, seed=seed * 1000 + k)
        atoms.calc = EMT()
        atoms.get_forces()
        if atoms.pbc.all():
            atoms.get_stress()
        frames.append(atoms)
    return frames


def periodic_emt_structures(n: int = 10, seed: int = 0) -> list[Atoms]:
    """Fully periodic bulk structures with energy, forces and stress (for stores declaring stress)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6) * (1 + k % 2, 1, 2)
        atoms.numbers[rng.random(len(atoms)) < 0.3] = 46
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.02 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=seed * 1000 + k)
        atoms.calc = EMT()
        atoms.get_forces()
        atoms.get_stress()
        frames.append(atoms)
    return frames
