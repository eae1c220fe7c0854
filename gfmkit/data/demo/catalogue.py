"""The demo datasets' catalogue: :class:`DemoDataset` descriptors and :data:`DEMO_DATASETS`."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from gfmkit import keys
from gfmkit.data.demo.calculators import (
    ADSORPTION_ENERGY,
    BULK_MODULUS,
    MORSE_LOT,
    SURFACE_ENERGY,
    VACANCY_ENERGY,
    adsorption_label,
    bulk_modulus_label,
    calculator_label,
    emt,
    morse,
    surface_energy_label,
    vacancy_label,
)
from gfmkit.data.demo.structures import (
    ADSORBATES,
    AL_PARTNERS,
    CLUSTER_METALS,
    METALS,
    SURFACE_METALS,
    adsorbate_structure,
    alloy_al_structure,
    bulk_modulus_structure,
    bulk_structure,
    cluster_structure,
    cu_structure,
    molecule_structure,
    slab_structure,
    surface_structure,
    vacancy_structure,
)
from gfmkit.data.emt_variants import EMTB
from gfmkit.data.spec import DatasetSpec, LabelSpec, ValidationSpec

#: Fewest structures any demo dataset gets, whatever ``scale`` (so each split is non-empty).
MIN_STRUCTURES = 10


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
            METALS + ("Al",), _EFS, bulk_structure, calculator_label(emt, _EFS), reference_calculator=emt,
        ),
        DemoDataset(
            "surfaces", "pretrain", "EMT", 300,
            "Rattled fcc(111)/(100) slabs of Cu/Ni/Pd/Pt/Au with one or two H/C/N/O adsorbates, periodic in "
            "x and y only, EMT.",
            SURFACE_METALS + ADSORBATES, _EF, surface_structure, calculator_label(emt, _EF), reference_calculator=emt,
        ),
        DemoDataset(
            "molecules", "pretrain", "EMT", 500,
            "Rattled, randomly rotated small H/C/N/O molecules of the G2 set, non-periodic, EMT.",
            ADSORBATES, _EF, molecule_structure, calculator_label(emt, _EF), reference_calculator=emt,
        ),
        DemoDataset(
            "clusters", "pretrain", "EMT", 80,
            "Icosahedral/octahedral/decahedral nanoclusters (13-55 atoms) of Cu/Ag/Au/Pt/Ni and their "
            "random alloys, rattled, non-periodic, EMT.",
            CLUSTER_METALS, _EF, cluster_structure, calculator_label(emt, _EF), reference_calculator=emt,
        ),
        DemoDataset(
            "bulk_b", "pretrain", "EMT-B", 300,
            "The same kind of bulk cells as 'bulk', labelled with EMT-B (EMT with perturbed parameters), a "
            "second level of theory for overlapping chemistry.",
            METALS + ("Al",), _EFS, bulk_structure, calculator_label(EMTB, _EFS), reference_calculator=EMTB,
        ),
        DemoDataset(
            "alloys_al", "downstream", "EMT", 200,
            "Strained and rattled binary alloys of Al with Cu, Ni, Pd or Ag (element pairs never seen in "
            "pretraining), periodic, EMT.",
            ("Al",) + AL_PARTNERS, _EFS, alloy_al_structure, calculator_label(emt, _EFS), reference_calculator=emt,
        ),
        DemoDataset(
            "cu_morse", "downstream", MORSE_LOT, 200,
            "Cu bulk cells and small Cu clusters labelled with a Morse pair potential (Girifalco-Weizer "
            "parameters), a level of theory absent from pretraining.",
            ("Cu",), _EF, cu_structure, calculator_label(morse, _EF), reference_calculator=morse,
        ),
        DemoDataset(
            "bulk_modulus", "downstream", "EMT", 150,
            "Ideal fcc cells (1, 4 or 8 atoms; Cu/Ag/Au/Ni/Pd/Pt and binaries) at their EMT equilibrium "
            "volume, with the EMT bulk modulus (GPa, Birch-Murnaghan fit over +-3 % volume) as target.",
            METALS, (BULK_MODULUS,), bulk_modulus_structure, bulk_modulus_label,
            properties={BULK_MODULUS: BULK_MODULUS},
        ),
        DemoDataset(
            "vacancy_energy", "downstream", "EMT", 100,
            "Cubic fcc 2x2x2 cells (31 atoms) of Cu/Ag/Au/Ni/Pd/Pt and binaries with one vacancy, slightly strained, "
            "with the EMT vacancy formation energy (eV, unrelaxed) as target: a defect energy.",
            METALS, (VACANCY_ENERGY,), vacancy_structure, vacancy_label, properties={VACANCY_ENERGY: VACANCY_ENERGY},
        ),
        DemoDataset(
            "surface_energy", "downstream", "EMT", 150,
            "fcc(111)/(100)/(110) slabs (3-5 layers of 2x2) of Cu/Ag/Au/Ni/Pd/Pt/Al, strained by up to 2 %, with the "
            "EMT surface energy (J/m^2, unrelaxed) as target.",
            METALS + ("Al",), (SURFACE_ENERGY,), slab_structure, surface_energy_label,
            properties={SURFACE_ENERGY: SURFACE_ENERGY},
        ),
        DemoDataset(
            "adsorption_energy", "downstream", "EMT", 150,
            "fcc(111)/(100) 2x2x3 slabs of Cu/Ni/Pd/Pt/Au and Ag (no Ag surface in pretraining) with one H/C/N/O "
            "adsorbate, with the EMT adsorption energy (eV, against the isolated atom) as target.",
            SURFACE_METALS + ("Ag",) + ADSORBATES, (ADSORPTION_ENERGY,), adsorbate_structure, adsorption_label,
            properties={ADSORPTION_ENERGY: ADSORPTION_ENERGY},
        ),
    )
}


def demo_specs(seed: int = 0, datasets: Sequence[str] | None = None) -> dict[str, DatasetSpec]:
    """The :class:`DatasetSpec` of each demo dataset (or of ``datasets``), by name, for ``seed``."""
    return {name: DEMO_DATASETS[name].spec(seed) for name in select_datasets(datasets)}


def select_datasets(datasets: Sequence[str] | str | None) -> list[str]:
    """The names of ``datasets`` in catalogue order (all when None); a KeyError names unknown ones."""
    if datasets is None:
        return list(DEMO_DATASETS)
    if isinstance(datasets, str):
        datasets = [datasets]
    unknown = [n for n in datasets if n not in DEMO_DATASETS]
    if unknown:
        raise KeyError(f"unknown demo dataset(s) {unknown}; choose from {list(DEMO_DATASETS)}")
    return [n for n in DEMO_DATASETS if n in set(datasets)]

