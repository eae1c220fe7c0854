"""Built-in demo datasets, generated with ASE's own calculators (no downloads).

Eleven small datasets that mimic what a multi-task graph foundation model is trained on: several
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
``vacancy_...``   downstream  EMT       vacancy_energy (eV)      fcc 2x2x2 metals and alloys with a vacancy
``surface_...``   downstream  EMT       surface_energy (J/m^2)   (111)/(100)/(110) slabs of seven metals
``adsorption...`` downstream  EMT       adsorption_energy (eV)   slabs (Ag included) with one H/C/N/O atom
================  ==========  ========  =======================  =============================================

The six downstream tasks span the kinds of transfer the paper's twelve do: new chemistry
(``alloys_al``), another level of theory (``cu_morse``), graph-level properties (``bulk_modulus``,
``vacancy_energy``, ``surface_energy``) and adsorption (``adsorption_energy``); the property targets
are unrelaxed EMT energies (each label a few EMT calls, so ``make demo`` stays about a minute).

Structure ``k`` of a dataset depends only on ``(seed, dataset, k)`` (its own random generator and a
fresh calculator), so MPI ranks that each generate a contiguous block write the same stores as one
process, and two builds with one seed are bitwise identical.

One concern per module: :mod:`~gfmkit.data.demo.geometry` (random cells, clusters, rotations),
:mod:`~gfmkit.data.demo.structures` (each dataset's structure generator),
:mod:`~gfmkit.data.demo.calculators` (labels: calculators, bulk moduli),
:mod:`~gfmkit.data.demo.catalogue` (:class:`DemoDataset`, :data:`DEMO_DATASETS`) and
:mod:`~gfmkit.data.demo.build` (:func:`build_demo`, through gfmkit's ingest path).
"""


from gfmkit.data.demo.build import build_demo, generate_structures
from gfmkit.data.demo.calculators import (
    ADSORPTION_ENERGY,
    BULK_MODULUS,
    CU_MORSE,
    MORSE_LOT,
    SURFACE_ENERGY,
    VACANCY_ENERGY,
    emt_lattice_constant,
)
from gfmkit.data.demo.catalogue import (
    DEMO_DATASETS,
    MIN_STRUCTURES,
    DemoDataset,
    demo_specs,
)
from gfmkit.data.demo.geometry import random_bulk, random_cluster, random_rotation
from gfmkit.data.demo.structures import (
    ADSORBATES,
    AL_PARTNERS,
    CLUSTER_METALS,
    METALS,
    SURFACE_METALS,
)

__all__ = [
    "ADSORBATES",
    "ADSORPTION_ENERGY",
    "AL_PARTNERS",
    "BULK_MODULUS",
    "CLUSTER_METALS",
    "CU_MORSE",
    "DEMO_DATASETS",
    "METALS",
    "MIN_STRUCTURES",
    "MORSE_LOT",
    "SURFACE_ENERGY",
    "SURFACE_METALS",
    "VACANCY_ENERGY",
    "DemoDataset",
    "build_demo",
    "demo_specs",
    "emt_lattice_constant",
    "generate_structures",
    "random_bulk",
    "random_cluster",
    "random_rotation",
]
