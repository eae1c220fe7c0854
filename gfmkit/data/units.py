"""Unit conversion on ingest: everything is stored in eV, Å, eV/Å and eV/Å^3."""

from __future__ import annotations

from ase import units

ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": units.Hartree,
    "Ha": units.Hartree,
    "Ry": units.Rydberg,
    "kcal/mol": units.kcal / units.mol,
    "kJ/mol": units.kJ / units.mol,
}
LENGTH_UNITS = {"Angstrom": 1.0, "Å": 1.0, "A": 1.0, "Bohr": units.Bohr, "nm": 10.0}
PRESSURE_UNITS = {"GPa": units.GPa, "kbar": 0.1 * units.GPa, "bar": 1e-4 * units.GPa}


def energy_factor(unit: str) -> float:
    """Factor that turns ``unit`` into eV."""
    return _lookup(unit, ENERGY_UNITS, "energy")


def length_factor(unit: str) -> float:
    """Factor that turns ``unit`` into Å."""
    return _lookup(unit, LENGTH_UNITS, "length")


def forces_factor(unit: str) -> float:
    """Factor for ``energy/length`` (e.g. ``Hartree/Bohr``, ``kcal/mol/Angstrom``) into eV/Å."""
    energy, _, length = unit.rpartition("/")
    if not energy:
        raise ValueError(f"forces unit {unit!r} must read ENERGY/LENGTH, e.g. 'eV/Angstrom'")
    return energy_factor(energy) / length_factor(length)


def stress_factor(unit: str) -> float:
    """Factor for a pressure (``GPa``, ``kbar``) or ``energy/length^3`` unit into eV/Å^3."""
    if unit in PRESSURE_UNITS:
        return PRESSURE_UNITS[unit]
    energy, _, volume = unit.rpartition("/")
    if not energy or not volume.endswith("^3"):
        raise ValueError(f"stress unit {unit!r} must be GPa, kbar, bar or ENERGY/LENGTH^3, e.g. 'eV/Angstrom^3'")
    return energy_factor(energy) / length_factor(volume[:-2]) ** 3


def _lookup(unit: str, table: dict[str, float], kind: str) -> float:
    try:
        return table[unit]
    except KeyError:
        raise ValueError(f"unknown {kind} unit {unit!r}; known: {', '.join(table)}") from None
