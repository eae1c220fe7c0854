"""Test support: write small ADIOS2 files in HydraGNN's ``AdiosWriter`` layout, and EMT-labelled samples.

This is independent code written from a description of the layout (HydraGNN's
``hydragnn/utils/datasets/adiosdataset.py``), not HydraGNN's own writer. Per split label, for every key:

- ``<label>/<key>``: the samples' arrays concatenated along ``vdim`` (the one axis whose size differs
  between samples, else 0); with several emulated ranks each rank writes one contiguous block;
- ``<label>/<key>/variable_dim``: attribute, int64 single value;
- ``<label>/<key>/variable_count`` / ``variable_offset``: int64 ``[ndata]`` variables, extent and
  *global* start of each sample along ``vdim``;

plus the attributes ``<label>/ndata`` (int64), ``<label>/keys`` (string array, the first sample's key
order without ``dataset_name``), and the file attributes ``total_ndata`` and ``dataset_name``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import adios2
import numpy as np
from adios2 import bindings
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

__all__ = ["emt_samples", "write_hydragnn_bp"]


def _as_array(key: str, value: Any) -> np.ndarray:
    """A sample value the way HydraGNN's writer converts it (str -> uint8 bytes, numpy scalar -> (1,))."""
    if isinstance(value, str):
        return np.frombuffer(value.encode("utf-8"), dtype=np.uint8).copy()
    if isinstance(value, (np.floating, np.integer)):
        return np.asarray(value).reshape(1)
    if not isinstance(value, np.ndarray):
        raise NotImplementedError(f"{key}: HydraGNN's writer only takes arrays, numpy scalars and str")
    if value.ndim == 0:
        raise ValueError(f"{key}: zero-dimensional arrays cannot be concatenated (HydraGNN uses shape (1,))")
    if value.dtype == bool:
        raise ValueError(f"{key}: ADIOS2 does not take bool; convert to int32 as HydraGNN's examples do")
    return value


def _vdim(arrays: Sequence[np.ndarray], key: str) -> int:
    """The axis whose size differs between samples (at most one), else 0."""
    shapes = np.array([a.shape for a in arrays])
    differ = np.flatnonzero(shapes.min(axis=0) != shapes.max(axis=0))
    if len(differ) > 1:
        raise ValueError(f"{key}: sample shapes differ along more than one axis")
    return int(differ[0]) if len(differ) else 0


def _chunks(n: int, ranks: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, ranks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def write_hydragnn_bp(
    path: str | os.PathLike,
    samples_by_split: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    engine: str = "BP5",
    dataset_name: str | None = "toy",
    ranks: int = 1,
    attributes: Mapping[str, Any] | None = None,
    stats: bool = True,
) -> None:
    """Write ``{"trainset": [sample, ...], ...}`` as HydraGNN's ``AdiosWriter`` would, in one step.

    ``ranks`` > 1 emulates that many MPI writers: each split's samples are cut into contiguous chunks,
    each chunk is one block of every variable at its global offset, ``variable_dim`` is the maximum of
    the ranks' local choices, and ``variable_offset`` is global. ``dataset_name=None`` writes no
    ``dataset_name`` attribute unless a sample carries a ``dataset_name`` string (HydraGNN's fallback).
    ``attributes`` adds file attributes (``add_global``), e.g. ``pna_deg``. Min/Max statistics stay on
    as in HydraGNN's files (its reader relies on them); ``stats=False`` turns them off (ADIOS2 then
    reports Min = Max = 0), to check that a reader does not trust them blindly.
    """
    ad = adios2.Adios()
    io = ad.declare_io("hydragnn_layout")
    io.set_engine(engine)
    if not stats:
        io.set_parameter("StatsLevel", "0")
    writer = io.open(str(path), bindings.Mode.Write)
    total = 0
    for label, samples in samples_by_split.items():
        if not samples:
            continue  # a split without samples leaves nothing in the file
        n = len(samples)
        total += n
        if dataset_name is None and "dataset_name" in samples[0]:
            dataset_name = str(samples[0]["dataset_name"])
        keys = [k for k in samples[0] if k != "dataset_name"]
        io.define_attribute(f"{label}/ndata", np.array(n))
        io.define_attribute(f"{label}/keys", keys)
        chunks = [c for c in _chunks(n, ranks) if c[1] > c[0]]
        for key in sorted(keys):
            arrays = [_as_array(key, s[key]) for s in samples]
            vdim = max(_vdim(arrays[a:b], key) for a, b in chunks)
            blocks = [np.ascontiguousarray(np.concatenate(arrays[a:b], axis=vdim)) for a, b in chunks]
            shape = list(blocks[0].shape)
            shape[vdim] = sum(b.shape[vdim] for b in blocks)
            # One block: ConstantDims as HydraGNN defines it; several blocks from this one process need
            # movable selections (a writer-side flag only, invisible to readers).
            var = io.define_variable(f"{label}/{key}", blocks[0], shape, [0] * len(shape), shape, len(blocks) == 1)
            first = 0
            for block in blocks:
                start = [0] * len(shape)
                start[vdim] = first
                if len(blocks) > 1:
                    var.set_selection([start, list(block.shape)])
                writer.put(var, block, bindings.Mode.Sync)
                first += block.shape[vdim]
            io.define_attribute(f"{label}/{key}/variable_dim", np.array(vdim))
            count = np.array([a.shape[vdim] for a in arrays], dtype=np.int64)
            offset = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
            for suffix, values in (("variable_count", count), ("variable_offset", offset)):
                v = io.define_variable(f"{label}/{key}/{suffix}", values, [n], [0], [n], len(chunks) == 1)
                for a, b in chunks:
                    if len(chunks) > 1:
                        v.set_selection([[a], [b - a]])
                    writer.put(v, np.ascontiguousarray(values[a:b]), bindings.Mode.Sync)
    io.define_attribute("total_ndata", np.array(total))
    if dataset_name is not None:
        io.define_attribute("dataset_name", dataset_name)
    for name, value in (attributes or {}).items():
        io.define_attribute(name, value if isinstance(value, str) else np.ascontiguousarray(value))
    writer.close()


def _edges(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j, d, shift = neighbor_list("ijdS", atoms, cutoff)
    edge_index = np.stack([i, j]).astype(np.int64)
    shifts = (shift @ atoms.cell.array).astype(np.float32)
    return edge_index, d.reshape(-1, 1).astype(np.float32), shifts


def _sample(atoms: Atoms, *, stress: bool, energy_2d: bool, cutoff: float) -> dict[str, np.ndarray]:
    """One structure as HydraGNN's GFM example writers store it (float32 features, int32 pbc/natoms)."""
    n = len(atoms)
    z = atoms.numbers.astype(np.float32).reshape(n, 1)
    pos = atoms.positions.astype(np.float32)
    forces = atoms.get_forces().astype(np.float32)
    shape = (1, 1) if energy_2d else (1,)
    energy = np.full(shape, atoms.get_potential_energy(), dtype=np.float32)
    periodic = bool(atoms.pbc.any())
    cell = atoms.cell.array.astype(np.float32) if periodic else np.eye(3, dtype=np.float32)
    composition = np.zeros((118, 1), dtype=np.float32)
    np.add.at(composition[:, 0], atoms.numbers - 1, 1.0)
    edge_index, edge_attr, edge_shifts = _edges(atoms, cutoff)
    sample = {
        "natoms": np.array([n], dtype=np.int32),
        "pos": pos,
        "cell": cell,
        "pbc": atoms.pbc.astype(np.int32),
        "atomic_numbers": z,
        "chemical_composition": composition,
        "x": np.concatenate([z, pos, forces], axis=1),
        "energy": energy,
        "energy_per_atom": (energy / n).astype(np.float32),
        "forces": forces,
    }
    if stress:
        sample["stress"] = atoms.get_stress(voigt=False).astype(np.float32)
    sample.update(
        graph_attr=np.array([0.0, 1.0], dtype=np.float32),
        y=energy.copy(),
        edge_index=edge_index,
        edge_attr=edge_attr,
        edge_shifts=edge_shifts,
    )
    return sample


def emt_samples(
    n: int, seed: int = 0, *, periodic_only: bool = False, stress: bool = False, energy_2d: bool = False,
    cutoff: float = 3.0,
) -> tuple[list[dict[str, np.ndarray]], list[Atoms]]:
    """``n`` EMT-labelled samples (HydraGNN GFM-example fields) and the ``ase.Atoms`` they came from.

    Periodic rattled Cu/Au fcc cells (1, 2 or 4 atoms, random Au substitutions) alternate with small
    non-periodic Cu/Au clusters (unless ``periodic_only``). Energies are shape ``(1,)`` (``(1, 1)`` with
    ``energy_2d``, as ani1x/qm7x do). ``stress`` adds an EMT stress (3x3, ASE sign) and needs
    ``periodic_only`` (HydraGNN's writer needs every sample of a split to have the same keys).
    """
    if stress and not periodic_only:
        raise ValueError("stress needs periodic_only=True")
    rng = np.random.default_rng(seed)
    samples, structures = [], []
    for k in range(n):
        if periodic_only or k % 3 != 2:
            kind = ("primitive", "cubic", "double")[int(rng.integers(3))]
            if kind == "cubic":
                atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
            elif kind == "double":
                atoms = bulk("Cu", "fcc", a=3.61) * (2, 1, 1)
            else:
                atoms = bulk("Cu", "fcc", a=3.61)
            atoms.numbers[rng.random(len(atoms)) < 0.4] = 79
            atoms.set_cell(atoms.cell.array * (1 + 0.02 * rng.standard_normal()), scale_atoms=True)
            atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        else:
            m = int(rng.integers(3, 7))
            positions = np.cumsum(rng.normal(0.0, 0.3, (m, 3)) + [2.5, 0.0, 0.0], axis=0)
            atoms = Atoms(numbers=rng.choice([29, 79], m), positions=positions, pbc=False)
        atoms.calc = EMT()
        samples.append(_sample(atoms, stress=stress, energy_2d=energy_2d, cutoff=cutoff))
        structures.append(atoms)
    return samples, structures
