"""Geometry building blocks of the demo datasets: random rotations, rattles, alloy decorations,
strained bulk cells and nanoclusters (ASE's fcc reference volumes, Vegard's law)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.cluster import Decahedron, Icosahedron, Octahedron
from ase.data import atomic_numbers, reference_states


def fcc_volume(symbol: str) -> float:
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


def rattle(atoms: Atoms, rng: np.random.Generator, low: float, high: float) -> None:
    """Move every atom by Gaussian noise of one standard deviation drawn from [low, high] Å."""
    atoms.positions += rng.normal(scale=rng.uniform(low, high), size=atoms.positions.shape)


def decorate(n: int, elements: Sequence[str], rng: np.random.Generator) -> list[str]:
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
    symbols = decorate(n, elements, rng)
    volume = float(np.mean([fcc_volume(s) for s in symbols]))
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
    rattle(atoms, rng, 0.02, 0.12)
    atoms.wrap()
    return atoms


def binary_or_pure(rng: np.random.Generator, pure: Sequence[str], alloy: Sequence[str], p_pure: float) -> list[str]:
    """One element of ``pure`` with probability ``p_pure``, else two different elements of ``alloy``."""
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
#: Indices of the cluster shapes of 13 to 29 atoms (for ``random_cluster(shapes=...)``).
SMALL_CLUSTERS = (0, 2, 6, 7, 8, 9)  # the shapes of 13 to 29 atoms


def random_cluster(
    rng: np.random.Generator, elements: Sequence[str], *, shapes: Sequence[int] | None = None, lattice_a: float | None = None
) -> Atoms:
    """An icosahedral, octahedral or decahedral cluster (13-55 atoms) of ``elements``, rattled.

    ``shapes`` restricts the shapes to indices of the internal shape table; the lattice constant is
    ``lattice_a`` (Å) or Vegard's law on ASE's fcc references, scaled by 0.97-1.03.
    """
    pool = list(range(len(_CLUSTER_SHAPES))) if shapes is None else list(shapes)
    maker, kwargs = _CLUSTER_SHAPES[pool[rng.integers(len(pool))]]
    a = lattice_a or float(np.mean([(4 * fcc_volume(s)) ** (1 / 3) for s in elements]))
    atoms = maker("Cu", latticeconstant=a * rng.uniform(0.97, 1.03), **kwargs)
    atoms.set_chemical_symbols(decorate(len(atoms), elements, rng))
    atoms.positions = (atoms.positions - atoms.positions.mean(axis=0)) @ random_rotation(rng).T
    rattle(atoms, rng, 0.02, 0.10)
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    return atoms
