"""Turn an ``ase.Atoms`` into a :class:`Structure`: read the declared labels, convert units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from gfmkit import keys
from gfmkit.data.spec import DatasetSpec
from gfmkit.data.structure import Structure
from gfmkit.data.units import energy_factor, forces_factor, length_factor, stress_factor


@dataclass(frozen=True)
class Problem:
    """What is wrong with one structure: where it came from, which field, and why."""

    source: str
    index: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}[{self.index}] {self.field}: {self.message}"


class StructureError(ValueError):
    """A structure cannot be ingested; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


def structure_from_atoms(atoms: Atoms, spec: DatasetSpec, source: str, index: int) -> Structure:
    """Read the labels ``spec`` declares from ``atoms`` (calculator results or info/arrays keys).

    Raises :class:`StructureError` naming ``source``, ``index`` and the field when a declared label is
    missing or cannot be read; value checks (finite, shapes, distances) are :func:`validate`'s job.
    """
    if len(atoms) == 0:
        raise StructureError([Problem(source, index, "numbers", "empty structure (no atoms)")])
    labels = spec.labels
    problems: list[Problem] = []

    def problem(field: str, message: str) -> None:
        problems.append(Problem(source, index, field, message))

    length = length_factor(labels.length_unit)
    structure = Structure(
        numbers=np.asarray(atoms.numbers, dtype=np.int64).copy(),
        positions=np.asarray(atoms.positions, dtype=np.float64) * length,
        cell=np.asarray(atoms.cell[:], dtype=np.float64) * length,
        pbc=np.asarray(atoms.pbc, dtype=bool).copy(),
        dataset=spec.name,
        level_of_theory=spec.level_of_theory,
        source_index=index,
    )
    results = dict(getattr(atoms.calc, "results", None) or {})
    declared = set(spec.targets)

    if keys.ENERGY in declared:
        value = _lookup(atoms, results, labels.energy, keys.ENERGY, per_atom=False)
        if value is None:
            problem(keys.ENERGY, f"declared target is missing ({_where(labels.energy, 'energy')})")
        else:
            structure.energy = _scalar(value, energy_factor(labels.energy_unit), keys.ENERGY, problem)
    if keys.FORCES in declared:
        value = _lookup(atoms, results, labels.forces, keys.FORCES, per_atom=True)
        if value is None:
            problem(keys.FORCES, f"declared target is missing ({_where(labels.forces, 'forces')})")
        else:
            structure.forces = np.asarray(value, dtype=np.float64) * forces_factor(labels.forces_unit)
    if keys.STRESS in declared:
        structure.stress = _stress(atoms, results, labels, problem)
    for name in spec.property_targets:
        key = labels.properties[name]
        if key not in atoms.info:
            problem(name, f"declared target is missing (info[{key!r}])")
        else:
            structure.properties[name] = _scalar(atoms.info[key], 1.0, name, problem)
    for name, key in ((keys.CHARGE, labels.charge), (keys.SPIN, labels.spin)):
        if key is not None:
            if key not in atoms.info:
                problem(name, f"info[{key!r}] is missing")
            else:
                setattr(structure, name, _scalar(atoms.info[key], 1.0, name, problem))
    if problems:
        raise StructureError(problems)
    return structure


def _where(key: str | None, default: str) -> str:
    return f"key {key!r} in info/arrays/calculator results" if key else f"calculator results or info/arrays {default!r}"


def _lookup(atoms: Atoms, results: dict[str, Any], key: str | None, default: str, *, per_atom: bool) -> Any:
    name = key or default
    primary, secondary = (atoms.arrays, atoms.info) if per_atom else (atoms.info, atoms.arrays)
    sources = (results, primary, secondary) if key is None else (primary, results, secondary)
    for source in sources:
        if name in source:
            return source[name]
    return None


def _scalar(value: Any, factor: float, field: str, problem) -> float | None:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        problem(field, f"not a number: {value!r}")
        return None
    if array.size != 1:
        problem(field, f"expected one number, got shape {array.shape}")
        return None
    return float(array.reshape(())) * factor


def _stress(atoms: Atoms, results: dict[str, Any], labels, problem) -> np.ndarray | None:
    if labels.virial is not None:
        if labels.virial not in atoms.info:
            problem(keys.STRESS, f"declared target is missing (virial info[{labels.virial!r}])")
            return None
        virial = _as_3x3(atoms.info[labels.virial], problem)
        volume = abs(np.linalg.det(np.asarray(atoms.cell[:], dtype=np.float64) * length_factor(labels.length_unit)))
        if virial is None:
            return None
        if volume <= 0:
            problem(keys.STRESS, "a virial needs a cell with non-zero volume to become a stress")
            return None
        return -virial * energy_factor(labels.energy_unit) / volume
    value = _lookup(atoms, results, labels.stress, keys.STRESS, per_atom=False)
    if value is None:
        problem(keys.STRESS, f"declared target is missing ({_where(labels.stress, 'stress')})")
        return None
    stress = _as_3x3(value, problem)
    return None if stress is None else stress * stress_factor(labels.stress_unit)


def _as_3x3(value: Any, problem) -> np.ndarray | None:
    array = np.asarray(value, dtype=np.float64)
    if array.shape in ((3, 3), (9,)):
        return array.reshape(3, 3).copy()
    if array.shape == (6,):  # Voigt order of ASE: xx, yy, zz, yz, xz, xy
        xx, yy, zz, yz, xz, xy = array
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    problem(keys.STRESS, f"expected a 3x3, 9 or Voigt-6 array, got shape {array.shape}")
    return None
