"""The structure generator of each demo dataset: ``make(rng)`` draws one geometry (unlabelled)."""

from __future__ import annotations

from functools import cache

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc110, fcc111, molecule
from ase.collections import g2

from gfmkit.data.demo.calculators import emt_lattice_constant
from gfmkit.data.demo.geometry import (
    SMALL_CLUSTERS,
    binary_or_pure,
    decorate,
    fcc_volume,
    random_bulk,
    random_cluster,
    random_rotation,
    rattle,
)

#: Transition metals of the pretraining alloys (Al is alloyed only downstream).
METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt")
SURFACE_METALS = ("Cu", "Ni", "Pd", "Pt", "Au")
CLUSTER_METALS = ("Cu", "Ag", "Au", "Pt", "Ni")
ADSORBATES = ("H", "C", "N", "O")
AL_PARTNERS = ("Cu", "Ni", "Pd", "Ag")


def bulk_structure(rng: np.random.Generator) -> Atoms:
    """A ``bulk`` cell: a pure metal (Al included) or a binary alloy of :data:`METALS`."""
    return random_bulk(rng, binary_or_pure(rng, METALS + ("Al",), METALS, p_pure=0.4))


def alloy_al_structure(rng: np.random.Generator) -> Atoms:
    """An ``alloys_al`` cell: Al with one of :data:`AL_PARTNERS`."""
    return random_bulk(rng, ["Al", AL_PARTNERS[rng.integers(len(AL_PARTNERS))]])


def surface_structure(rng: np.random.Generator) -> Atoms:
    """A ``surfaces`` slab: fcc(111) or (100) of one of :data:`SURFACE_METALS` with one or two adsorbates."""
    metal = SURFACE_METALS[rng.integers(len(SURFACE_METALS))]
    a = (4 * fcc_volume(metal)) ** (1 / 3) * rng.uniform(0.98, 1.02)
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
    rattle(slab, rng, 0.02, 0.08)
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


def molecule_structure(rng: np.random.Generator) -> Atoms:
    """A ``molecules`` structure: a G2 molecule of H/C/N/O, rotated, scaled and rattled."""
    names = _molecule_names()
    atoms = molecule(names[rng.integers(len(names))])
    atoms.positions = (atoms.positions - atoms.positions.mean(axis=0)) @ random_rotation(rng).T
    atoms.positions *= rng.uniform(0.97, 1.04)
    rattle(atoms, rng, 0.02, 0.08)
    atoms.set_initial_magnetic_moments(None)
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    return atoms


def cluster_structure(rng: np.random.Generator) -> Atoms:
    """A ``clusters`` structure: a nanocluster of one to three of :data:`CLUSTER_METALS`."""
    n_elements = 1 + int(rng.choice(3, p=[0.3, 0.5, 0.2]))
    return random_cluster(rng, [str(s) for s in rng.choice(CLUSTER_METALS, size=n_elements, replace=False)])


def cu_structure(rng: np.random.Generator) -> Atoms:
    """A ``cu_morse`` structure: a small Cu bulk cell or a small Cu cluster."""
    if rng.random() < 0.6:
        return random_bulk(rng, ["Cu"], max_atoms=16)
    return random_cluster(rng, ["Cu"], shapes=SMALL_CLUSTERS, lattice_a=3.62)  # ~ Morse fcc Cu lattice


def bulk_modulus_structure(rng: np.random.Generator) -> Atoms:
    """An ideal fcc cell of 1, 4 or 8 atoms (pure, or a random binary of :data:`METALS`)."""
    kind = rng.choice(3, p=[0.1, 0.4, 0.5])
    elements = [METALS[rng.integers(len(METALS))]] if kind == 0 else binary_or_pure(rng, METALS, METALS, p_pure=0.1)
    n = (1, 4, 8)[kind]
    symbols = decorate(n, elements, rng)
    a = float(np.mean([emt_lattice_constant(s) for s in symbols]))
    atoms = bulk("Cu", "fcc", a=a, cubic=n > 1)
    if n == 8:
        atoms = atoms.repeat((2, 1, 1))
    atoms.set_chemical_symbols(symbols)
    return atoms




def vacancy_structure(rng: np.random.Generator) -> Atoms:
    """A ``vacancy_energy`` cell: a cubic fcc 2x2x2 supercell (32 sites) of a metal or binary alloy of
    :data:`METALS` at its Vegard (EMT) lattice constant, slightly strained, with one atom removed (the
    removed element is kept in ``info['vacancy']``)."""
    symbols = decorate(32, binary_or_pure(rng, METALS, METALS, p_pure=0.5), rng)
    a = float(np.mean([emt_lattice_constant(s) for s in symbols])) * rng.uniform(0.99, 1.01)
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    atoms.set_chemical_symbols(symbols)
    removed = int(rng.integers(len(atoms)))
    atoms.info["vacancy"] = atoms[removed].symbol
    atoms.info["perfect"] = atoms.copy()
    del atoms[removed]
    return atoms


def slab_structure(rng: np.random.Generator) -> Atoms:
    """A ``surface_energy`` slab: fcc(111), (100) or (110) of one of :data:`METALS` or Al, 3-5 layers of
    2x2, at the EMT lattice constant strained by up to 2 % (the constant in ``info['a']``)."""
    metal = (METALS + ("Al",))[rng.integers(len(METALS) + 1)]
    a = emt_lattice_constant(metal) * rng.uniform(0.98, 1.02)
    build = (fcc111, fcc100, fcc110)[rng.integers(3)]
    slab = build(metal, size=(2, 2, int(rng.integers(3, 6))), a=a, vacuum=6.0)
    slab.info["a"] = a
    return slab


def adsorbate_structure(rng: np.random.Generator) -> Atoms:
    """An ``adsorption_energy`` slab: fcc(111) or (100) of Cu/Ni/Pd/Pt/Au or Ag (a surface metal not in
    pretraining), 2x2x3, one H/C/N/O adsorbate on a random site; the clean slab is kept in
    ``info['slab']``."""
    metal = (SURFACE_METALS + ("Ag",))[rng.integers(len(SURFACE_METALS) + 1)]
    facet = ("111", "100")[rng.integers(2)]
    build, sites = (fcc111, ("ontop", "bridge", "fcc", "hcp")) if facet == "111" else (fcc100, ("ontop", "bridge", "hollow"))
    slab = build(metal, size=(2, 2, 3), a=emt_lattice_constant(metal), vacuum=6.0)
    clean = slab.copy()
    adsorbate = ADSORBATES[rng.integers(len(ADSORBATES))]
    add_adsorbate(slab, adsorbate, 1.0, sites[rng.integers(len(sites))])
    _set_bond_length(slab, rng.uniform(1.9, 2.3))
    slab.info["slab"] = clean
    return slab
