"""Labels of the demo datasets: ASE calculators (EMT, EMT-B, a Morse potential for Cu) as single-point
results, and bulk moduli from an equation-of-state fit."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential
from ase.calculators.singlepoint import SinglePointCalculator
from ase.eos import EquationOfState
from ase.units import GPa

from gfmkit import keys
from gfmkit.data.demo.geometry import fcc_volume

#: Morse parameters for Cu (Girifalco and Weizer, Phys. Rev. 114, 687 (1959)): well depth (eV),
#: minimum distance (Å) and rho0 = alpha * r0 with alpha = 1.3588 / Å. With ASE's smooth cutoff they
#: give fcc Cu a = 3.62 Å, B = 135 GPa and a cohesive energy of 3.44 eV.
CU_MORSE = {"epsilon": 0.3429, "r0": 2.866, "rho0": 1.3588 * 2.866}
#: The level of theory of the Morse-labelled dataset.
MORSE_LOT = "Morse-Cu"

#: The property target of the ``bulk_modulus`` dataset (GPa), and its ``info`` key.
BULK_MODULUS = "bulk_modulus"


def emt() -> Calculator:
    """A fresh EMT calculator (the demo's main level of theory)."""
    return EMT()


def morse() -> Calculator:
    """A fresh Morse calculator with the Cu parameters :data:`CU_MORSE`."""
    return MorsePotential(**CU_MORSE)


def _labelled(atoms: Atoms, calculator: Calculator, properties: Sequence[str]) -> Atoms:
    """A copy of ``atoms`` holding ``properties`` from a fresh ``calculator`` as single-point results.

    Cell vectors along non-periodic directions are zeroed (the gfmkit convention); they never enter
    the labels, which are computed before.
    """
    work = atoms.copy()
    work.calc = calculator
    results: dict[str, Any] = {"energy": work.get_potential_energy()}
    if keys.FORCES in properties:
        results["forces"] = work.get_forces()
    if keys.STRESS in properties:
        results["stress"] = work.get_stress(voigt=True)
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:] * atoms.pbc[:, None], pbc=atoms.pbc)
    out.calc = SinglePointCalculator(out, **results)
    return out


def calculator_label(factory: Callable[[], Calculator], properties: Sequence[str]) -> Callable[[Atoms], Atoms]:
    """A dataset's ``label``: ``properties`` from a fresh calculator of ``factory`` per structure."""

    def label(atoms: Atoms) -> Atoms:
        return _labelled(atoms, factory(), properties)

    return label


@cache
def emt_lattice_constant(symbol: str) -> float:
    """EMT's equilibrium fcc lattice constant of ``symbol`` (Å), from an E(V) fit."""
    return (4 * eos_fit(bulk(symbol, "fcc", a=(4 * fcc_volume(symbol)) ** (1 / 3)), emt, spread=0.06)[0]) ** (1 / 3)


def eos_fit(atoms: Atoms, factory: Callable[[], Calculator], spread: float = 0.03, points: int = 7) -> tuple[float, float]:
    """(equilibrium volume per atom in Å^3, bulk modulus in GPa) of ``atoms`` scaled isotropically.

    Volumes span ``1 +- spread`` around the given cell; if the fitted minimum lies outside 80 % of that
    range, the fit is repeated around it.
    """
    reference = atoms.get_volume()
    for _ in range(4):
        volumes, energies = [], []
        for factor in np.linspace(1 - spread, 1 + spread, points):
            work = atoms.copy()
            work.set_cell(atoms.cell[:] * factor ** (1 / 3), scale_atoms=True)
            work.calc = factory()
            volumes.append(work.get_volume())
            energies.append(work.get_potential_energy())
        with warnings.catch_warnings():  # a minimum outside the sampled volumes is handled below
            warnings.simplefilter("ignore", UserWarning)
            v0, _, b0 = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
        if abs(v0 / reference - 1) <= 0.8 * spread:
            break
        atoms = atoms.copy()
        atoms.set_cell(atoms.cell[:] * (v0 / reference) ** (1 / 3), scale_atoms=True)
        reference = v0
    return float(v0) / len(atoms), float(b0) / GPa


def bulk_modulus_label(atoms: Atoms) -> Atoms:
    """``atoms`` scaled to its EMT equilibrium volume, with the EMT bulk modulus (GPa) in ``info``."""
    volume, modulus = eos_fit(atoms, emt)
    out = atoms.copy()
    out.set_cell(atoms.cell[:] * (volume * len(atoms) / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
    out.info[BULK_MODULUS] = modulus
    return out


#: Property targets of the graph-level downstream datasets (eV; J/m^2 for surface energies), and their ``info`` keys.
VACANCY_ENERGY = "vacancy_energy"
SURFACE_ENERGY = "surface_energy"
ADSORPTION_ENERGY = "adsorption_energy"
#: eV/Å^2 in J/m^2
EV_PER_A2 = 16.021766


def _emt_energy(atoms: Atoms) -> float:
    work = atoms.copy()
    work.calc = emt()
    return float(work.get_potential_energy())


def _plain(atoms: Atoms, info: dict[str, float]) -> Atoms:
    """``atoms`` with only the given ``info`` (no helper geometry left behind)."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:] * atoms.pbc[:, None], pbc=atoms.pbc)
    out.info.update(info)
    return out


@cache
def emt_bulk_energy(symbol: str, a: float) -> float:
    """EMT energy per atom (eV) of fcc ``symbol`` with lattice constant ``a``."""
    return _emt_energy(bulk(symbol, "fcc", a=a))


def vacancy_label(atoms: Atoms) -> Atoms:
    """The EMT vacancy formation energy (eV, unrelaxed): E(cell with vacancy) - E(perfect cell) + the
    removed element's fcc bulk energy per atom (its own EMT lattice constant)."""
    removed = atoms.info["vacancy"]
    energy = _emt_energy(atoms) - _emt_energy(atoms.info["perfect"])
    energy += emt_bulk_energy(removed, round(emt_lattice_constant(removed), 6))
    return _plain(atoms, {VACANCY_ENERGY: energy})


def surface_energy_label(slab: Atoms) -> Atoms:
    """The EMT surface energy (J/m^2, unrelaxed): (E(slab) - N E_bulk) / (2 A), with E_bulk the fcc
    energy per atom at the slab's lattice constant."""
    metal = slab.get_chemical_symbols()[0]
    area = float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))
    energy = (_emt_energy(slab) - len(slab) * emt_bulk_energy(metal, float(slab.info["a"]))) / (2 * area)
    return _plain(slab, {SURFACE_ENERGY: energy * EV_PER_A2})


@cache
def _isolated_atom(symbol: str) -> float:
    return _emt_energy(Atoms(symbol))


def adsorption_label(atoms: Atoms) -> Atoms:
    """The EMT adsorption energy (eV) of the last atom: E(slab + adsorbate) - E(slab) - E(isolated atom)."""
    energy = _emt_energy(atoms) - _emt_energy(atoms.info["slab"]) - _isolated_atom(atoms[-1].symbol)
    return _plain(atoms, {ADSORPTION_ENERGY: energy})
