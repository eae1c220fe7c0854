"""Head statistics fitted from data, not learned: per-element reference energies, scale and shift.

Reference energies come from the dataset's isolated-atom energies when the store has them, else from
a least-squares fit of total energy against composition on the training split. ``shift`` is the mean
per-atom energy left after the references; ``scale`` is the RMS of the force components (the usual
choice for potentials), or the standard deviation of the residual when a dataset has no forces.
Property heads use the property's mean (shift) and standard deviation (scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.data import store_format as fmt
from gfmkit.data.multi import MultiStore
from gfmkit.data.store_read import Store
from gfmkit.models.config import HeadConfig

MIN_SCALE = 1e-3


#: Structures per chunk when statistics stream over a store.
CHUNK = 4096


def composition_matrix(store: Store, indices: np.ndarray, max_z: int) -> np.ndarray:
    """(S, max_z + 1) atom counts per element of the given structures."""
    return np.concatenate([counts for _, counts, _ in _chunks(store, np.asarray(indices), max_z, forces=False)]
                          or [np.zeros((0, max_z + 1))])


def _atom_block(store: Any, name: str, start: int, stop: int) -> np.ndarray:
    if hasattr(store, "atom_block"):
        return store.atom_block(name, start, stop)
    return np.concatenate([store.arrays(i)[name] for i in range(start, stop)])


def _chunks(store: Any, indices: np.ndarray, max_z: int, *, forces: bool, chunk: int = CHUNK):
    """(indices, composition counts (S, max_z + 1), force components or None) per chunk of ``indices``
    (sorted), each chunk read as one contiguous block of the store and counted without a Python loop."""
    for lo in range(0, len(indices), chunk):
        part = indices[lo : lo + chunk]
        first, last = int(part[0]), int(part[-1]) + 1
        natoms = store.natoms[first:last].astype(np.int64)
        numbers = _atom_block(store, fmt.NUMBERS, first, last).astype(np.int64)
        owner = np.repeat(np.arange(last - first), natoms)
        counts = np.zeros((last - first, max_z + 1))
        np.add.at(counts, (owner, np.minimum(numbers, max_z)), 1.0)
        keep = part - first
        force_values = None
        if forces:
            mask = np.isin(owner, keep)
            force_values = _atom_block(store, fmt.FORCES, first, last)[mask].ravel()
        yield part, counts[keep], force_values


def energy_moments(store: Any, indices: np.ndarray, max_z: int, *, forces: bool) -> dict[str, np.ndarray]:
    """Additive sums over the structures ``indices`` from which an energy head's statistics follow (so
    ranks holding different structures sum theirs and get the fit of all): normal equations of the
    composition fit, the moments of the per-atom residual, and the force moments."""
    size = max_z + 1
    m = {"ata": np.zeros((size, size)), "ate": np.zeros(size), "n": np.zeros(1), "e_n": np.zeros(1),
         "c_n": np.zeros(size), "e_n2": np.zeros(1), "ce_n2": np.zeros(size), "cc_n2": np.zeros((size, size)),
         "f2": np.zeros(1), "nf": np.zeros(1)}
    energy_all = store.column(fmt.ENERGY)
    for part, counts, force_values in _chunks(store, np.sort(np.asarray(indices)), max_z, forces=forces):
        energy = energy_all[part]
        natoms = counts.sum(axis=1)
        m["ata"] += counts.T @ counts
        m["ate"] += counts.T @ energy
        m["n"] += len(part)
        m["e_n"] += (energy / natoms).sum()
        m["c_n"] += (counts / natoms[:, None]).sum(axis=0)
        m["e_n2"] += ((energy / natoms) ** 2).sum()
        m["ce_n2"] += counts.T @ (energy / natoms**2)
        m["cc_n2"] += (counts / natoms[:, None] ** 2).T @ counts
        if force_values is not None:
            m["f2"] += float((force_values**2).sum())
            m["nf"] += len(force_values)
    return m


def fit_energy_head(store: Store, *, max_z: int = 100, split: str = "train", comm: Any = None) -> HeadConfig:
    """An energy head for ``store``'s dataset with references, scale and shift from its ``split``.

    Streams over the split in chunks; with ``comm`` (MPI or any gfmkit comm), ``store`` is this rank's
    shard: each rank sums the moments of its own structures and one all-reduce gives every rank the fit
    of the whole split.
    """
    indices = store.split_indices(split) if len(store.split_indices(split)) else np.arange(len(store))
    has_forces = keys.FORCES in store.targets
    m = energy_moments(store, indices, max_z, forces=has_forces)
    if comm is not None and comm.size > 1:
        m = {k: np.asarray(comm.allreduce(v)) for k, v in m.items()}
    present = np.flatnonzero(np.diag(m["ata"]))
    given = store.reference_energies
    if given:
        reference = {symbol: float(value) for symbol, value in given.items()}
    else:
        # Least squares with a tiny ridge: exact for well-posed data, stable for collinear compositions.
        solution = np.linalg.solve(m["ata"][np.ix_(present, present)] + 1e-8 * np.eye(len(present)), m["ate"][present])
        reference = {chemical_symbols[z]: float(c) for z, c in zip(present, solution)}
    r = np.zeros(max_z + 1)
    for symbol, value in reference.items():
        r[chemical_symbols.index(symbol)] = value
    n = float(m["n"][0])
    shift = float((m["e_n"][0] - r @ m["c_n"]) / n)  # mean of (E - c.r) / N
    if has_forces:
        scale = float(np.sqrt(m["f2"][0] / m["nf"][0]))
    else:
        mean_square = (m["e_n2"][0] - 2.0 * r @ m["ce_n2"] + r @ m["cc_n2"] @ r) / n
        scale = float(np.sqrt(max(mean_square - shift**2, 0.0)))
    return HeadConfig(
        name=store.name,
        level_of_theory=store.level_of_theory,
        targets=list(store.targets),
        reference_energies=reference,
        scale=max(scale, MIN_SCALE),
        shift=shift,
    )


def fit_property_head(store: Store, target: str, *, pooling: str = "mean", split: str = "train",
                      comm: Any = None) -> HeadConfig:
    """A graph-level property head (sum or mean pooling) scaled to the property's spread; with ``comm``,
    ``store`` is this rank's shard and the moments are summed over the ranks."""
    indices = store.split_indices(split) if len(store.split_indices(split)) else np.arange(len(store))
    values = store.column(fmt.PROPERTY_PREFIX + target)[indices]
    per_atom = values / store.natoms[indices] if pooling == "sum" else values
    moments = np.array([len(per_atom), per_atom.sum(), (per_atom**2).sum()], dtype=np.float64)
    if comm is not None and comm.size > 1:
        moments = np.asarray(comm.allreduce(moments))
    n, total, squares = moments
    mean = total / n
    std = float(np.sqrt(max(squares / n - mean**2, 0.0)))
    return HeadConfig(
        name=store.name,
        kind="property",
        target=target,
        pooling=pooling,
        level_of_theory=store.level_of_theory,
        targets=[target],
        scale=max(std, MIN_SCALE),
        shift=float(mean),
    )


def heads_from_stores(stores: MultiStore, *, max_z: int = 100, split: str = "train", pooling: str = "mean",
                      comm: Any = None) -> list[HeadConfig]:
    """One head per dataset, in registry order: energy heads where energy is declared, else a property
    head on the dataset's first property target. With ``comm``, ``stores`` are this rank's shards and
    every statistic is reduced over the ranks (data no rank holds whole)."""
    heads = []
    for name in stores.registry.names:
        store = stores.store(name)
        if keys.ENERGY in store.targets:
            heads.append(fit_energy_head(store, max_z=max_z, split=split, comm=comm))
        else:
            target = next(t for t in store.targets if t not in keys.POTENTIAL_TARGETS)
            heads.append(fit_property_head(store, target, pooling=pooling, split=split, comm=comm))
    return heads
