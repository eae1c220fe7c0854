"""Built-in demo datasets, generated with ASE's own calculators (no downloads).

Eight small datasets that mimic what a multi-task graph foundation model is trained on: several
pretraining sets of very different sizes, chemistry, periodicity and level of theory, and downstream
sets whose element combinations, level of theory or target the pretraining never saw.

================  ==========  ========  =======================  =============================================
name              role        LoT       targets                  structures
================  ==========  ========  =======================  =============================================
``bulk``          pretrain    EMT       energy, forces, stress   strained + rattled fcc/bcc/hcp metals, alloys
``surfaces``      pretrain    EMT       energy, forces           fcc(111)/(100) slabs with H/C/N/O adsorbates
``molecules``     pretrain    EMT       energy, forces           rattled, rotated H/C/N/O molecules (G2)
``clusters``      pretrain    EMT       energy, forces           alloyed 13-55 atom nanoclusters
``bulk_b``        pretrain    EMT-B     energy, forces, stress   like ``bulk``, second level of theory
``alloys_al``     downstream  EMT       energy, forces, stress   Al alloys (Al never alloyed in pretraining)
``cu_morse``      downstream  Morse-Cu  energy, forces           Cu bulk + clusters, Morse pair potential
``bulk_modulus``  downstream  EMT       bulk_modulus (GPa)       small fcc cells at their EOS volume
================  ==========  ========  =======================  =============================================

Structure ``k`` of a dataset depends only on ``(seed, dataset, k)`` (its own random generator and a
fresh calculator), so MPI ranks that each generate a contiguous block write the same stores as one
process, and two builds with one seed are bitwise identical.
"""

from __future__ import annotations

import os
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111, molecule
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Decahedron, Icosahedron, Octahedron
from ase.collections import g2
from ase.data import atomic_numbers, chemical_symbols, reference_states
from ase.eos import EquationOfState
from ase.units import GPa
from tqdm.auto import tqdm

from gfmkit import keys
from gfmkit.comm import SerialComm
from gfmkit.data.emt_variants import EMTB
from gfmkit.data.labels import Problem, StructureError, structure_from_atoms
from gfmkit.data.spec import DatasetSpec, LabelSpec, ValidationSpec
from gfmkit.data.store_write import write_store
from gfmkit.data.structure import Structure
from gfmkit.data.validate import validate
from gfmkit.log import get_logger
from gfmkit.outputs import agree, check_store_output

log = get_logger(__name__)

#: Fewest structures any demo dataset gets, whatever ``scale`` (so each split is non-empty).
MIN_STRUCTURES = 10

#: Transition metals of the pretraining alloys (Al is alloyed only downstream).
METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt")
SURFACE_METALS = ("Cu", "Ni", "Pd", "Pt", "Au")
CLUSTER_METALS = ("Cu", "Ag", "Au", "Pt", "Ni")
ADSORBATES = ("H", "C", "N", "O")
AL_PARTNERS = ("Cu", "Ni", "Pd", "Ag")

#: Morse parameters for Cu (Girifalco and Weizer, Phys. Rev. 114, 687 (1959)): well depth (eV),
#: minimum distance (Å) and rho0 = alpha * r0 with alpha = 1.3588 / Å. With ASE's smooth cutoff they
#: give fcc Cu a = 3.62 Å, B = 135 GPa and a cohesive energy of 3.44 eV.
CU_MORSE = {"epsilon": 0.3429, "r0": 2.866, "rho0": 1.3588 * 2.866}
MORSE_LOT = "Morse-Cu"

BULK_MODULUS = "bulk_modulus"


# ----------------------------------------------------------------------------------------------------
# Calculators and labelling
# ----------------------------------------------------------------------------------------------------
def _emt() -> Calculator:
    return EMT()


def _morse() -> Calculator:
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


def _calculator_label(factory: Callable[[], Calculator], properties: Sequence[str]) -> Callable[[Atoms], Atoms]:
    def label(atoms: Atoms) -> Atoms:
        return _labelled(atoms, factory(), properties)

    return label


# ----------------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------------
def _fcc_volume(symbol: str) -> float:
    """Volume per atom (Å^3) of the element's fcc reference state in ASE."""
    return float(reference_states[atomic_numbers[symbol]]["a"]) ** 3 / 4.0


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A 3x3 rotation matrix drawn uniformly (from a random unit quaternion)."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rattle(atoms: Atoms, rng: np.random.Generator, low: float, high: float) -> None:
    atoms.positions += rng.normal(scale=rng.uniform(low, high), size=atoms.positions.shape)


def _decorate(n: int, elements: Sequence[str], rng: np.random.Generator) -> list[str]:
    """``n`` symbols: one element, or a random mixture in which every named element occurs."""
    if len(elements) == 1:
        return [elements[0]] * n
    counts = np.ones(len(elements), dtype=int)  # every element at least once
    counts += rng.multinomial(n - len(elements), rng.dirichlet(np.ones(len(elements))))
    symbols = np.repeat(np.asarray(elements), counts)
    return list(rng.permutation(symbols))


# Supercell repeats (n1, n2, n3) of each lattice's basis, grouped by atom count (2 to 32 atoms).
_LATTICES = (("fcc", False, 1), ("fcc", True, 4), ("bcc", False, 1), ("bcc", True, 2), ("hcp", False, 2))


@cache
def _cells_by_size(max_atoms: int) -> dict[int, list[tuple[int, tuple[int, int, int]]]]:
    sizes: dict[int, list[tuple[int, tuple[int, int, int]]]] = {}
    for index, (_, _, basis) in enumerate(_LATTICES):
        for n1 in range(1, 5):
            for n2 in range(n1, 5):
                for n3 in range(n2, 5):
                    n = basis * n1 * n2 * n3
                    if 2 <= n <= max_atoms:
                        sizes.setdefault(n, []).append((index, (n1, n2, n3)))
    return dict(sorted(sizes.items()))


def random_bulk(rng: np.random.Generator, elements: Sequence[str], *, max_atoms: int = 32) -> Atoms:
    """A strained, rattled fcc, bcc or hcp cell of 2 to ``max_atoms`` atoms of ``elements``.

    The atom count is drawn uniformly among the sizes that some lattice and supercell give, then one
    such cell; the volume per atom follows Vegard's law on ASE's fcc reference volumes, then a random
    symmetric strain (about 2 %), a volume change of -5 to +6 % and a Gaussian rattle of 0.02-0.12 Å.
    """
    sizes = _cells_by_size(max_atoms)
    choices = sizes[list(sizes)[rng.integers(len(sizes))]]
    lattice_index, repeat = choices[rng.integers(len(choices))]
    lattice, cubic, basis = _LATTICES[lattice_index]
    n = basis * int(np.prod(repeat))
    symbols = _decorate(n, elements, rng)
    volume = float(np.mean([_fcc_volume(s) for s in symbols]))
    if lattice == "fcc":
        cell = bulk("Cu", "fcc", a=(4 * volume) ** (1 / 3), cubic=cubic)
    elif lattice == "bcc":
        cell = bulk("Fe", "bcc", a=(2 * volume) ** (1 / 3), cubic=cubic)
    else:
        ratio = float(rng.uniform(1.55, 1.70))
        a = (4 * volume / (np.sqrt(3) * ratio)) ** (1 / 3)
        cell = bulk("Mg", "hcp", a=a, c=ratio * a)
    atoms = cell.repeat(tuple(int(r) for r in rng.permutation(repeat)))
    atoms.set_chemical_symbols(symbols)
    atoms.set_initial_magnetic_moments(None)
    strain = rng.normal(scale=0.02, size=(3, 3)).clip(-0.05, 0.05)
    deformation = (np.eye(3) + 0.5 * (strain + strain.T)) * rng.uniform(0.95, 1.06) ** (1 / 3)
    atoms.set_cell(atoms.cell[:] @ deformation, scale_atoms=True)
    _rattle(atoms, rng, 0.02, 0.12)
    atoms.wrap()
    return atoms


def _binary_or_pure(rng: np.random.Generator, pure: Sequence[str], alloy: Sequence[str], p_pure: float) -> list[str]:
    if rng.random() < p_pure:
        return [pure[rng.integers(len(pure))]]
    return [str(s) for s in rng.choice(alloy, size=2, replace=False)]


_CLUSTER_SHAPES: tuple[tuple[Callable[..., Atoms], dict[str, int]], ...] = (
    (Icosahedron, {"noshells": 2}),  # 13
    (Icosahedron, {"noshells": 3}),  # 55
    (Octahedron, {"length": 3}),  # 19
    (Octahedron, {"length": 4, "cutoff": 1}),  # 38
    (Octahedron, {"length": 4}),  # 44
    (Octahedron, {"length": 5, "cutoff": 2}),  # 55
    (Decahedron, {"p": 2, "q": 2, "r": 0}),  # 13
    (Decahedron, {"p": 1, "q": 1, "r": 1}),  # 18
    (Decahedron, {"p": 3, "q": 1, "r": 0}),  # 23
    (Decahedron, {"p": 1, "q": 2, "r": 1}),  # 29
    (Decahedron, {"p": 3, "q": 2, "r": 0}),  # 39
    (Decahedron, {"p": 2, "q": 1, "r": 1}),  # 49
)
_SMALL_CLUSTERS = (0, 2, 6, 7, 8, 9)  # the shapes of 13 to 29 atoms


def random_cluster(
    rng: np.random.Generator, elements: Sequence[str], *, shapes: Sequence[int] | None = None, lattice_a: float | None = None
) -> Atoms:
    """An icosahedral, octahedral or decahedral cluster (13-55 atoms) of ``elements``, rattled.

    ``shapes`` restricts the shapes to indices of the internal shape table; the lattice constant is
    ``lattice_a`` (Å) or Vegard's law on ASE's fcc references, scaled by 0.97-1.03.
    """
    pool = list(range(len(_CLUSTER_SHAPES))) if shapes is None else list(shapes)
    maker, kwargs = _CLUSTER_SHAPES[pool[rng.integers(len(pool))]]
    a = lattice_a or float(np.mean([(4 * _fcc_volume(s)) ** (1 / 3) for s in elements]))
    atoms = maker("Cu", latticeconstant=a * rng.uniform(0.97, 1.03), **kwargs)
    atoms.set_chemical_symbols(_decorate(len(atoms), elements, rng))
    atoms.positions = (atoms.positions - atoms.positions.mean(axis=0)) @ random_rotation(rng).T
    _rattle(atoms, rng, 0.02, 0.10)
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    return atoms


# ----------------------------------------------------------------------------------------------------
# Per-dataset structure makers (geometry only; labels come from the dataset's ``label``)
# ----------------------------------------------------------------------------------------------------
def _bulk_structure(rng: np.random.Generator) -> Atoms:
    return random_bulk(rng, _binary_or_pure(rng, METALS + ("Al",), METALS, p_pure=0.4))


def _alloy_al_structure(rng: np.random.Generator) -> Atoms:
    return random_bulk(rng, ["Al", AL_PARTNERS[rng.integers(len(AL_PARTNERS))]])


def _surface_structure(rng: np.random.Generator) -> Atoms:
    metal = SURFACE_METALS[rng.integers(len(SURFACE_METALS))]
    a = (4 * _fcc_volume(metal)) ** (1 / 3) * rng.uniform(0.98, 1.02)
    facet = ("111", "100")[rng.integers(2)]
    size = ((2, 2, 3), (2, 2, 4), (3, 3, 3))[rng.integers(3)]
    build, sites = (fcc111, ("ontop", "bridge", "fcc", "hcp")) if facet == "111" else (fcc100, ("ontop", "bridge", "hollow"))
    n_adsorbates = 1 + int(rng.random() < 0.4)
    for _ in range(20):  # redraw adsorbate placements that come too close to each other
        slab = build(metal, size=size, a=a, vacuum=6.0)
        offsets = [(i, j) for i in range(size[0]) for j in range(size[1])]
        chosen = rng.choice(len(offsets), size=n_adsorbates, replace=False)
        for k in chosen:
            adsorbate = ADSORBATES[rng.integers(len(ADSORBATES))]
            add_adsorbate(slab, adsorbate, 1.0, sites[rng.integers(len(sites))], offset=offsets[k])
            # EMT's adsorbate-metal bonds sit near 1.8-2.2 Å (H: longer on Au, Pt): set the height for such a distance to the
            # nearest surface atom (a fixed height puts on-top atoms far too close: forces of 100+ eV/Å).
            _set_bond_length(slab, rng.uniform(2.0, 2.6) if adsorbate == "H" else rng.uniform(1.9, 2.4))
        if n_adsorbates == 1 or slab.get_distance(-1, -2, mic=True) > 1.8:
            break
    _rattle(slab, rng, 0.02, 0.08)
    return slab


def _set_bond_length(slab: Atoms, distance: float) -> None:
    """Move the last atom (an adsorbate) along z so its nearest metal neighbour is ``distance`` away."""
    metal = np.array([symbol not in ADSORBATES for symbol in slab.get_chemical_symbols()])
    top = slab.positions[metal, 2].max()
    surface = slab.positions[metal & (slab.positions[:, 2] > top - 0.5)]
    lateral = surface[:, :2] - slab.positions[-1, :2]
    # nearest in-plane distance over periodic images of the surface layer
    images = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)]) @ slab.cell[:2, :2]
    r = np.min(np.linalg.norm(lateral[:, None, :] + images[None, :, :], axis=2))
    slab.positions[-1, 2] = top + np.sqrt(max(distance**2 - r**2, 0.7**2))


@cache
def _molecule_names() -> tuple[str, ...]:
    allowed = set(ADSORBATES)
    return tuple(n for n in g2.names if len(g2[n]) > 1 and set(g2[n].get_chemical_symbols()) <= allowed)


def _molecule_structure(rng: np.random.Generator) -> Atoms:
    names = _molecule_names()
    atoms = molecule(names[rng.integers(len(names))])
    atoms.positions = (atoms.positions - atoms.positions.mean(axis=0)) @ random_rotation(rng).T
    atoms.positions *= rng.uniform(0.97, 1.04)
    _rattle(atoms, rng, 0.02, 0.08)
    atoms.set_initial_magnetic_moments(None)
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    return atoms


def _cluster_structure(rng: np.random.Generator) -> Atoms:
    n_elements = 1 + int(rng.choice(3, p=[0.3, 0.5, 0.2]))
    return random_cluster(rng, [str(s) for s in rng.choice(CLUSTER_METALS, size=n_elements, replace=False)])


def _cu_structure(rng: np.random.Generator) -> Atoms:
    if rng.random() < 0.6:
        return random_bulk(rng, ["Cu"], max_atoms=16)
    return random_cluster(rng, ["Cu"], shapes=_SMALL_CLUSTERS, lattice_a=3.62)  # ~ Morse fcc Cu lattice


# ----------------------------------------------------------------------------------------------------
# Bulk modulus from an E(V) fit with EMT
# ----------------------------------------------------------------------------------------------------
@cache
def emt_lattice_constant(symbol: str) -> float:
    """EMT's equilibrium fcc lattice constant of ``symbol`` (Å), from an E(V) fit."""
    return (4 * _eos(bulk(symbol, "fcc", a=(4 * _fcc_volume(symbol)) ** (1 / 3)), _emt, spread=0.06)[0]) ** (1 / 3)


def _eos(atoms: Atoms, factory: Callable[[], Calculator], spread: float = 0.03, points: int = 7) -> tuple[float, float]:
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


def _bulk_modulus_structure(rng: np.random.Generator) -> Atoms:
    """An ideal fcc cell of 1, 4 or 8 atoms (pure, or a random binary of :data:`METALS`)."""
    kind = rng.choice(3, p=[0.1, 0.4, 0.5])
    elements = [METALS[rng.integers(len(METALS))]] if kind == 0 else _binary_or_pure(rng, METALS, METALS, p_pure=0.1)
    n = (1, 4, 8)[kind]
    symbols = _decorate(n, elements, rng)
    a = float(np.mean([emt_lattice_constant(s) for s in symbols]))
    atoms = bulk("Cu", "fcc", a=a, cubic=n > 1)
    if n == 8:
        atoms = atoms.repeat((2, 1, 1))
    atoms.set_chemical_symbols(symbols)
    return atoms


def _bulk_modulus_label(atoms: Atoms) -> Atoms:
    volume, modulus = _eos(atoms, _emt)
    out = atoms.copy()
    out.set_cell(atoms.cell[:] * (volume * len(atoms) / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
    out.info[BULK_MODULUS] = modulus
    return out


# ----------------------------------------------------------------------------------------------------
# Dataset descriptors
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoDataset:
    """One demo dataset: what it is, how many structures it has at scale 1, how each one is made.

    ``make_structure(rng)`` draws a geometry; ``label(atoms)`` returns the labelled structure (calculator
    results as a single-point calculator, or ``info`` keys for property targets). ``generate`` does both.
    """

    name: str
    role: Literal["pretrain", "downstream"]
    level_of_theory: str
    count: int
    description: str
    elements: tuple[str, ...]
    targets: tuple[str, ...]
    make_structure: Callable[[np.random.Generator], Atoms] = field(repr=False)
    label: Callable[[Atoms], Atoms] = field(repr=False)
    properties: dict[str, str] = field(default_factory=dict)
    reference_calculator: Callable[[], Calculator] | None = field(default=None, repr=False)

    @property
    def dataset_id(self) -> int:
        """A stable number for the name (CRC-32), part of every structure's random seed."""
        return zlib.crc32(self.name.encode())

    def rng(self, seed: int, index: int) -> np.random.Generator:
        """The random generator of structure ``index`` for ``seed``."""
        return np.random.default_rng([int(seed), self.dataset_id, int(index)])

    def generate(self, rng: np.random.Generator) -> Atoms:
        """A labelled structure drawn with ``rng``."""
        return self.label(self.make_structure(rng))

    def structure(self, seed: int, index: int) -> Atoms:
        """Structure ``index`` of this dataset for ``seed``, labelled (the same on every rank and run)."""
        return self.generate(self.rng(seed, index))

    def size(self, scale: float = 1.0) -> int:
        """Structure count at ``scale`` (at least :data:`MIN_STRUCTURES`)."""
        return max(MIN_STRUCTURES, round(self.count * scale))

    def spec(self, seed: int = 0) -> DatasetSpec:
        """The dataset's :class:`DatasetSpec`, with a split seed derived from ``seed``."""
        split_seed = int(np.random.SeedSequence([int(seed), self.dataset_id, 1]).generate_state(1)[0] >> 1)
        return DatasetSpec(
            name=self.name,
            level_of_theory=self.level_of_theory,
            targets=list(self.targets),
            labels=LabelSpec(properties=dict(self.properties)),
            validation=ValidationSpec(policy="fail", elements=list(self.elements)),
            reference_energies=_reference_energies(self.elements, self.reference_calculator)
            if self.reference_calculator is not None
            else None,
            split_seed=split_seed,
            description=self.description,
        )


def _reference_energies(elements: Sequence[str], factory: Callable[[], Calculator]) -> dict[str, float]:
    """Isolated-atom energies (eV) of ``elements`` with the dataset's calculator."""
    energies = {}
    for symbol in elements:
        atom = Atoms(symbol)
        atom.calc = factory()
        energies[symbol] = float(atom.get_potential_energy())
    return energies


_EFS = (keys.ENERGY, keys.FORCES, keys.STRESS)
_EF = (keys.ENERGY, keys.FORCES)

#: The demo datasets by name, pretraining first, in build order.
DEMO_DATASETS: dict[str, DemoDataset] = {
    d.name: d
    for d in (
        DemoDataset(
            "bulk", "pretrain", "EMT", 2000,
            "Strained and rattled fcc/bcc/hcp cells (2-32 atoms) of Cu, Ag, Au, Ni, Pd, Pt, Al and binary "
            "alloys of Cu/Ag/Au/Ni/Pd/Pt (no Al alloys), periodic, EMT.",
            METALS + ("Al",), _EFS, _bulk_structure, _calculator_label(_emt, _EFS), reference_calculator=_emt,
        ),
        DemoDataset(
            "surfaces", "pretrain", "EMT", 300,
            "Rattled fcc(111)/(100) slabs of Cu/Ni/Pd/Pt/Au with one or two H/C/N/O adsorbates, periodic in "
            "x and y only, EMT.",
            SURFACE_METALS + ADSORBATES, _EF, _surface_structure, _calculator_label(_emt, _EF), reference_calculator=_emt,
        ),
        DemoDataset(
            "molecules", "pretrain", "EMT", 500,
            "Rattled, randomly rotated small H/C/N/O molecules of the G2 set, non-periodic, EMT.",
            ADSORBATES, _EF, _molecule_structure, _calculator_label(_emt, _EF), reference_calculator=_emt,
        ),
        DemoDataset(
            "clusters", "pretrain", "EMT", 80,
            "Icosahedral/octahedral/decahedral nanoclusters (13-55 atoms) of Cu/Ag/Au/Pt/Ni and their "
            "random alloys, rattled, non-periodic, EMT.",
            CLUSTER_METALS, _EF, _cluster_structure, _calculator_label(_emt, _EF), reference_calculator=_emt,
        ),
        DemoDataset(
            "bulk_b", "pretrain", "EMT-B", 300,
            "The same kind of bulk cells as 'bulk', labelled with EMT-B (EMT with perturbed parameters), a "
            "second level of theory for overlapping chemistry.",
            METALS + ("Al",), _EFS, _bulk_structure, _calculator_label(EMTB, _EFS), reference_calculator=EMTB,
        ),
        DemoDataset(
            "alloys_al", "downstream", "EMT", 200,
            "Strained and rattled binary alloys of Al with Cu, Ni, Pd or Ag (element pairs never seen in "
            "pretraining), periodic, EMT.",
            ("Al",) + AL_PARTNERS, _EFS, _alloy_al_structure, _calculator_label(_emt, _EFS), reference_calculator=_emt,
        ),
        DemoDataset(
            "cu_morse", "downstream", MORSE_LOT, 200,
            "Cu bulk cells and small Cu clusters labelled with a Morse pair potential (Girifalco-Weizer "
            "parameters), a level of theory absent from pretraining.",
            ("Cu",), _EF, _cu_structure, _calculator_label(_morse, _EF), reference_calculator=_morse,
        ),
        DemoDataset(
            "bulk_modulus", "downstream", "EMT", 150,
            "Ideal fcc cells (1, 4 or 8 atoms; Cu/Ag/Au/Ni/Pd/Pt and binaries) at their EMT equilibrium "
            "volume, with the EMT bulk modulus (GPa, Birch-Murnaghan fit over +-3 % volume) as target.",
            METALS, (BULK_MODULUS,), _bulk_modulus_structure, _bulk_modulus_label,
            properties={BULK_MODULUS: BULK_MODULUS},
        ),
    )
}


def demo_specs(seed: int = 0, datasets: Sequence[str] | None = None) -> dict[str, DatasetSpec]:
    """The :class:`DatasetSpec` of each demo dataset (or of ``datasets``), by name, for ``seed``."""
    return {name: DEMO_DATASETS[name].spec(seed) for name in _select(datasets)}


def _select(datasets: Sequence[str] | str | None) -> list[str]:
    if datasets is None:
        return list(DEMO_DATASETS)
    if isinstance(datasets, str):
        datasets = [datasets]
    unknown = [n for n in datasets if n not in DEMO_DATASETS]
    if unknown:
        raise KeyError(f"unknown demo dataset(s) {unknown}; choose from {list(DEMO_DATASETS)}")
    return [n for n in DEMO_DATASETS if n in set(datasets)]


def generate_structures(name: str, seed: int, start: int, stop: int, *, progress: bool = False) -> list[Structure]:
    """Structures ``start`` to ``stop - 1`` of demo dataset ``name``, labelled and validated.

    Raises :class:`~gfmkit.data.StructureError` listing every problem if any structure fails to
    ingest or validate.
    """
    dataset = DEMO_DATASETS[name]
    structures, problems = _generate(dataset, dataset.spec(seed), seed, start, stop, progress)
    if problems:
        raise StructureError(problems)
    return structures


def _generate(
    dataset: DemoDataset, spec: DatasetSpec, seed: int, start: int, stop: int, progress: bool
) -> tuple[list[Structure], list[Problem]]:
    structures: list[Structure] = []
    problems: list[Problem] = []
    with tqdm(total=stop - start, desc=dataset.name, unit="structure", disable=not progress, leave=True) as bar:
        for index in range(start, stop):
            try:
                structure = structure_from_atoms(dataset.structure(seed, index), spec, dataset.name, index)
            except StructureError as error:
                problems.extend(error.problems)
            except Exception as error:  # noqa: BLE001 (a failed calculation becomes a problem every rank sees)
                problems.append(Problem(dataset.name, index, "generate", f"{type(error).__name__}: {error}"))
            else:
                problems.extend(validate(structure, spec.validation, dataset.name, index))
                structures.append(structure)
            bar.update()
    return structures, problems


def build_demo(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    scale: float = 1.0,
    datasets: Sequence[str] | None = None,
    progress: bool = True,
    comm: Any = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Generate the demo datasets and write one store per dataset as ``out_dir/<name>.bp``.

    Existing stores there are replaced only with ``overwrite=True`` (checked before anything is generated).

    ``seed`` fixes every structure and split; ``scale`` multiplies the structure counts (each dataset
    keeps at least :data:`MIN_STRUCTURES`); ``datasets`` picks a subset by name. Under MPI pass
    ``comm``: each rank generates a contiguous block of every dataset, and the stores equal those of
    one process. Every structure is read with :func:`~gfmkit.data.structure_from_atoms` and checked
    with :func:`~gfmkit.data.validate`; any problem on any rank raises
    :class:`~gfmkit.data.StructureError` on every rank before the store is written.

    Returns one row per dataset: name, role, level_of_theory, targets, structures, atoms,
    periodicity, elements, path, seconds.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    comm = comm or SerialComm()
    out = Path(out_dir)
    rows = []
    names = _select(datasets)
    agree(comm, lambda: [check_store_output(out / f"{name}.bp", overwrite=overwrite) for name in names])
    for name in names:
        started = time.perf_counter()
        dataset = DEMO_DATASETS[name]
        spec = dataset.spec(seed)
        n = dataset.size(scale)
        bounds = np.linspace(0, n, comm.size + 1).round().astype(int)
        start, stop = int(bounds[comm.rank]), int(bounds[comm.rank + 1])
        structures, problems = _generate(dataset, spec, seed, start, stop, progress and comm.rank == 0)
        problems = [p for rank_problems in comm.allgather(problems) for p in rank_problems]
        if problems:
            raise StructureError(problems)
        path = write_store(structures, out / f"{name}.bp", spec, comm=comm, overwrite=overwrite)
        local = (
            sum(len(s) for s in structures),
            sorted({int(z) for s in structures for z in np.unique(s.numbers)}),
            sorted({_periodicity(s.pbc) for s in structures}),
        )
        gathered = comm.allgather(local)
        numbers = sorted({z for g in gathered for z in g[1]})
        kinds = {k for g in gathered for k in g[2]}
        rows.append(
            {
                "name": name,
                "role": dataset.role,
                keys.LEVEL_OF_THEORY: dataset.level_of_theory,
                "targets": list(dataset.targets),
                "structures": n,
                "atoms": int(sum(g[0] for g in gathered)),
                "periodicity": "+".join(k for k in ("periodic", "molecular", "mixed") if k in kinds),
                "elements": [chemical_symbols[z] for z in numbers],
                "path": str(path),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        log.info("demo dataset %s: %d structures in %.1f s", name, n, rows[-1]["seconds"])
    return pd.DataFrame(rows)


def _periodicity(pbc: np.ndarray) -> str:
    if pbc.all():
        return "periodic"
    return "mixed" if pbc.any() else "molecular"
