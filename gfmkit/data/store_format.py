"""The gfmkit store layout (ADIOS2 BP, one directory per dataset), in one place.

Every variable is a global array written in one ADIOS2 step:

=====================  =============  ==========================================================
variable               shape          meaning
=====================  =============  ==========================================================
``natoms``             (S,) int64     atoms per structure (HydraGNN's ``variable_count``)
``atom_offset``        (S,) int64     first atom of each structure (HydraGNN's ``variable_offset``)
``numbers``            (A,) int32     atomic numbers, structures concatenated
``positions``          (A, 3) f64     Å
``forces``             (A, 3) f64     eV/Å (only when declared)
``energy``             (S,) f64       eV (only when declared)
``cell``               (S, 3, 3) f64  rows are lattice vectors, Å; zeros where not periodic
``pbc``                (S, 3) uint8   periodic directions
``stress``             (S, 3, 3) f64  eV/Å^3, ASE sign (only when declared)
``charge``/``spin``    (S,) f64       only when the dataset's labels name them
``property/<name>``    (S,) f64       graph-level targets of property tasks
``split``              (S,) uint8     0 train, 1 val, 2 test (deterministic from the seed)
``source_index``       (S,) int64     position of the structure in its source
=====================  =============  ==========================================================

Attributes carry the schema version, dataset name, level of theory, units, declared targets,
element counts, structure and atom counts, energy statistics, the split recipe and sizes, and
optional isolated-atom reference energies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gfmkit import keys
from gfmkit.data.spec import DatasetSpec
from gfmkit.data.structure import Structure


class StoreError(ValueError):
    """A store cannot be read: missing, not a gfmkit store, newer schema, or damaged."""


FORMAT = "gfmkit-store"
SCHEMA_VERSION = 1

NATOMS = "natoms"
ATOM_OFFSET = "atom_offset"
NUMBERS = "numbers"
POSITIONS = "positions"
FORCES = "forces"
ENERGY = "energy"
CELL = "cell"
PBC = "pbc"
STRESS = "stress"
CHARGE = "charge"
SPIN = "spin"
SPLIT = "split"
SOURCE_INDEX = "source_index"
PROPERTY_PREFIX = "property/"

UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3", "charge": "e"}

# Attribute names.
A_FORMAT = "gfmkit/format"
A_SCHEMA = "gfmkit/schema_version"
A_VERSION = "gfmkit/version"
A_DATASET = "dataset"
A_LOT = "level_of_theory"
A_DESCRIPTION = "description"
A_TARGETS = "targets"
A_FIELDS = "fields"
A_ELEMENTS = "elements"
A_ELEMENT_COUNTS = "element_counts"
A_NSTRUCT = "n_structures"
A_NATOMS = "n_atoms"
A_SPLIT_SEED = "split/seed"
A_SPLIT_FRACTIONS = "split/fractions"
A_SPLIT_SIZES = "split/sizes"
A_REF_ELEMENTS = "reference_energies/elements"
A_REF_VALUES = "reference_energies/values"
A_ENERGY_STATS = "energy/stats"  # mean, std, min, max of total energy (eV)
A_EPA_STATS = "energy_per_atom/stats"  # mean, std, min, max of energy per atom (eV/atom)
STATS_ORDER = ("mean", "std", "min", "max")


def per_structure_fields(spec: DatasetSpec) -> list[str]:
    """Per-structure variables a dataset's store holds, in write order."""
    names = [NATOMS, CELL, PBC]
    if keys.ENERGY in spec.targets:
        names.append(ENERGY)
    if keys.STRESS in spec.targets:
        names.append(STRESS)
    if spec.labels.charge is not None:
        names.append(CHARGE)
    if spec.labels.spin is not None:
        names.append(SPIN)
    names += [PROPERTY_PREFIX + p for p in spec.property_targets]
    names.append(SOURCE_INDEX)
    return names


def per_atom_fields(spec: DatasetSpec) -> list[str]:
    """Per-atom variables a dataset's store holds, in write order."""
    return [NUMBERS, POSITIONS] + ([FORCES] if keys.FORCES in spec.targets else [])


@dataclass
class Block:
    """One rank's structures as concatenated arrays (the unit a store is written from)."""

    per_structure: dict[str, np.ndarray] = field(default_factory=dict)
    per_atom: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_structures(self) -> int:
        return int(len(self.per_structure[NATOMS]))

    @property
    def n_atoms(self) -> int:
        return int(len(self.per_atom[NUMBERS]))

    @classmethod
    def from_structures(cls, structures: list[Structure], spec: DatasetSpec) -> Block:
        """Concatenate validated structures into the store's arrays (also for zero structures)."""
        s_fields, a_fields = per_structure_fields(spec), per_atom_fields(spec)
        n = len(structures)
        block = cls()
        ps = block.per_structure
        ps[NATOMS] = np.fromiter((len(s) for s in structures), dtype=np.int64, count=n)
        ps[CELL] = _stack([s.cell for s in structures], (3, 3), np.float64)
        ps[PBC] = _stack([s.pbc for s in structures], (3,), np.uint8)
        ps[SOURCE_INDEX] = np.fromiter(
            (s.source_index if s.source_index is not None else -1 for s in structures), dtype=np.int64, count=n
        )
        scalar = {ENERGY: "energy", CHARGE: "charge", SPIN: "spin"}
        for name in s_fields:
            if name in scalar:
                ps[name] = np.array([getattr(s, scalar[name]) for s in structures], dtype=np.float64).reshape(n)
            elif name == STRESS:
                ps[name] = _stack([s.stress for s in structures], (3, 3), np.float64)
            elif name.startswith(PROPERTY_PREFIX):
                key = name[len(PROPERTY_PREFIX) :]
                ps[name] = np.array([s.properties[key] for s in structures], dtype=np.float64).reshape(n)
        pa = block.per_atom
        pa[NUMBERS] = _concat([s.numbers for s in structures], (), np.int32)
        pa[POSITIONS] = _concat([s.positions for s in structures], (3,), np.float64)
        if FORCES in a_fields:
            pa[FORCES] = _concat([s.forces for s in structures], (3,), np.float64)
        block.per_structure = {k: ps[k] for k in s_fields}
        return block


def _stack(arrays: list[np.ndarray], tail: tuple[int, ...], dtype) -> np.ndarray:
    if not arrays:
        return np.zeros((0, *tail), dtype=dtype)
    return np.stack([np.asarray(a) for a in arrays]).astype(dtype, copy=False)


def _concat(arrays: list[np.ndarray], tail: tuple[int, ...], dtype) -> np.ndarray:
    if not arrays:
        return np.zeros((0, *tail), dtype=dtype)
    return np.concatenate([np.asarray(a) for a in arrays]).astype(dtype, copy=False)


def split_codes(n_structures: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Split code per structure (0 train, 1 val, 2 test): a seeded permutation cut by the fractions.

    Depends only on the total count and the seed, never on how many ranks wrote the store.
    """
    n_val = int(round(fractions[1] * n_structures))
    n_test = int(round(fractions[2] * n_structures))
    n_train = n_structures - n_val - n_test
    codes = np.empty(n_structures, dtype=np.uint8)
    order = np.random.default_rng(seed).permutation(n_structures)
    codes[order[:n_train]] = 0
    codes[order[n_train : n_train + n_val]] = 1
    codes[order[n_train + n_val :]] = 2
    return codes


def summary_stats(values: np.ndarray) -> np.ndarray:
    """mean, std, min, max (NaN when empty); a pure function of the values, so any writer agrees."""
    if len(values) == 0:
        return np.full(4, np.nan)
    values = np.asarray(values, dtype=np.float64)
    return np.array([values.mean(), values.std(), values.min(), values.max()])
