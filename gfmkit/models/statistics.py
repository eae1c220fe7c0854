"""Head statistics fitted from data, not learned: per-element reference energies, scale and shift.

Reference energies come from the dataset's isolated-atom energies when the store has them, else from
a least-squares fit of total energy against composition on the training split. ``shift`` is the mean
per-atom energy left after the references; ``scale`` is the RMS of the force components (the usual
choice for potentials), or the standard deviation of the residual when a dataset has no forces.
Property heads use the property's mean (shift) and standard deviation (scale).
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.data import store_format as fmt
from gfmkit.data.multi import MultiStore
from gfmkit.data.store_read import Store
from gfmkit.models.config import HeadConfig

MIN_SCALE = 1e-3


def composition_matrix(store: Store, indices: np.ndarray, max_z: int) -> np.ndarray:
    """(S, max_z + 1) atom counts per element of the given structures."""
    counts = np.zeros((len(indices), max_z + 1))
    for row, index in enumerate(indices):
        counts[row] = np.bincount(store.arrays(int(index))[fmt.NUMBERS], minlength=max_z + 1)[: max_z + 1]
    return counts


def fit_energy_head(store: Store, *, max_z: int = 100, split: str = "train") -> HeadConfig:
    """An energy head for ``store``'s dataset with references, scale and shift from its ``split``."""
    indices = store.split_indices(split) if len(store.split_indices(split)) else np.arange(len(store))
    counts = composition_matrix(store, indices, max_z)
    energy = store.column(fmt.ENERGY)[indices]
    present = np.flatnonzero(counts.sum(axis=0))
    given = store.reference_energies
    if given:
        reference = {symbol: float(value) for symbol, value in given.items()}
    else:
        # Least squares with a tiny ridge: exact for well-posed data, stable for collinear compositions.
        a = counts[:, present]
        solution = np.linalg.solve(a.T @ a + 1e-8 * np.eye(len(present)), a.T @ energy)
        reference = {chemical_symbols[z]: float(c) for z, c in zip(present, solution)}
    ref_vector = np.zeros(max_z + 1)
    for symbol, value in reference.items():
        ref_vector[chemical_symbols.index(symbol)] = value
    natoms = counts.sum(axis=1)
    residual = (energy - counts @ ref_vector) / natoms
    shift = float(residual.mean())
    if keys.FORCES in store.targets:
        forces = np.concatenate([store.arrays(int(i))[fmt.FORCES].ravel() for i in indices])
        scale = float(np.sqrt(np.mean(forces**2)))
    else:
        scale = float(residual.std())
    return HeadConfig(
        name=store.name,
        level_of_theory=store.level_of_theory,
        targets=list(store.targets),
        reference_energies=reference,
        scale=max(scale, MIN_SCALE),
        shift=shift,
    )


def fit_property_head(store: Store, target: str, *, pooling: str = "mean", split: str = "train") -> HeadConfig:
    """A graph-level property head (sum or mean pooling) scaled to the property's spread."""
    indices = store.split_indices(split) if len(store.split_indices(split)) else np.arange(len(store))
    values = store.column(fmt.PROPERTY_PREFIX + target)[indices]
    per_atom = values / store.natoms[indices] if pooling == "sum" else values
    return HeadConfig(
        name=store.name,
        kind="property",
        target=target,
        pooling=pooling,
        level_of_theory=store.level_of_theory,
        targets=[target],
        scale=max(float(per_atom.std()), MIN_SCALE),
        shift=float(per_atom.mean()),
    )


def heads_from_stores(stores: MultiStore, *, max_z: int = 100, split: str = "train", pooling: str = "mean") -> list[HeadConfig]:
    """One head per dataset, in registry order: energy heads where energy is declared, else a property
    head on the dataset's first property target."""
    heads = []
    for name in stores.registry.names:
        store = stores.store(name)
        if keys.ENERGY in store.targets:
            heads.append(fit_energy_head(store, max_z=max_z, split=split))
        else:
            target = next(t for t in store.targets if t not in keys.POTENTIAL_TARGETS)
            heads.append(fit_property_head(store, target, pooling=pooling, split=split))
    return heads
