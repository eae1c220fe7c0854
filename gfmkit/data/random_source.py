"""Seeded random structures for screening: ``random:COUNT[:MIN-MAX][:ELEMENTS][:cluster][:seed=S]``.

Structure ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so it is the same whatever
the number of ranks, the chunking, or the order in which structures are asked for. A structure has
MIN..MAX atoms (uniform), elements drawn uniformly from ELEMENTS, a box whose volume gives a realistic
packing density (the atoms' covalent spheres fill :data:`PACKING` of it), sides of random aspect, and
atoms placed one by one at least :data:`MIN_DISTANCE` times the sum of two covalent radii apart
(minimum image when periodic). ``cluster`` makes the box non-periodic (a finite cluster, zero cell).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

from gfmkit.config import ConfigError

#: Share of the box filled by the atoms' covalent spheres (close-packed metals: about 0.7-0.8).
PACKING = 0.6
#: Minimum distance between two atoms, as a share of the sum of their covalent radii.
MIN_DISTANCE = 0.7
#: Placement attempts per atom before the box grows by 5 %.
ATTEMPTS = 100
DEFAULT_ATOMS = (2, 64)
PREFIX = "random:"


@dataclass(frozen=True)
class RandomSource:
    """``count`` random structures (see the module doc); ``elements`` as symbols."""

    count: int
    min_atoms: int = DEFAULT_ATOMS[0]
    max_atoms: int = DEFAULT_ATOMS[1]
    elements: tuple[str, ...] = ()
    periodic: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"random source: COUNT must be at least 1, got {self.count}")
        if not 1 <= self.min_atoms <= self.max_atoms:
            raise ConfigError(f"random source: atoms {self.min_atoms}-{self.max_atoms} is not a range of positive counts")
        unknown = [e for e in self.elements if e not in atomic_numbers]
        if unknown:
            raise ConfigError(f"random source: unknown element(s) {', '.join(unknown)}")

    def __len__(self) -> int:
        return self.count

    @property
    def spec(self) -> str:
        """The source string that rebuilds this source."""
        parts = [f"{PREFIX}{self.count}", f"{self.min_atoms}-{self.max_atoms}"]
        if self.elements:
            parts.append(",".join(self.elements))
        if not self.periodic:
            parts.append("cluster")
        return ":".join(parts + [f"seed={self.seed}"])

    def with_elements(self, elements: list[str]) -> RandomSource:
        """This source with ``elements`` (used when the spec names none: the model's elements)."""
        return RandomSource(self.count, self.min_atoms, self.max_atoms, tuple(elements), self.periodic, self.seed)

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """Structure ``index`` as store arrays: ``numbers``, ``positions``, ``cell``, ``pbc``."""
        if not 0 <= index < self.count:
            raise IndexError(f"structure {index} out of range for {self.spec}")
        if not self.elements:
            raise ConfigError("random source: no elements given (ELEMENTS, or a model to take them from)")
        return random_structure(np.random.default_rng([self.seed, index]), self.min_atoms, self.max_atoms,
                                np.array([atomic_numbers[e] for e in self.elements]), self.periodic)

    def atoms(self, index: int) -> Atoms:
        """Structure ``index`` as ``ase.Atoms``."""
        a = self.arrays(index)
        return Atoms(numbers=a["numbers"], positions=a["positions"], cell=a["cell"], pbc=a["pbc"])


def random_structure(rng: np.random.Generator, min_atoms: int, max_atoms: int, numbers_pool: np.ndarray,
                     periodic: bool) -> dict[str, np.ndarray]:
    """One random structure from ``rng`` (see the module doc)."""
    n = int(rng.integers(min_atoms, max_atoms + 1))
    numbers = rng.choice(numbers_pool, size=n).astype(np.int32)
    radii = covalent_radii[numbers]
    volume = float((4.0 / 3.0 * np.pi * radii**3).sum() / PACKING)
    aspect = rng.uniform(0.8, 1.25, size=3)
    sides = aspect * (volume / aspect.prod()) ** (1.0 / 3.0)
    draws = rng.random((n, ATTEMPTS, 3))  # every draw made up front: the stream does not depend on rejections
    positions = np.zeros((n, 3))
    positions[0] = draws[0, 0] * sides
    for k in range(1, n):
        limit = (MIN_DISTANCE * (radii[k] + radii[:k])) ** 2
        while (chosen := _first_free(draws[k], sides, positions[:k], limit, periodic)) is None:
            sides, positions[:k] = sides * 1.05, positions[:k] * 1.05  # crowded: grow the box and all in it
        positions[k] = chosen
    cell = np.diag(sides) if periodic else np.zeros((3, 3))
    return {"numbers": numbers, "positions": positions, "cell": cell, "pbc": np.full(3, periodic)}


def _first_free(draws: np.ndarray, sides: np.ndarray, placed: np.ndarray, limit: np.ndarray,
                periodic: bool, block: int = 8) -> np.ndarray | None:
    """The first of the candidate ``draws`` (fractions of ``sides``) at least ``sqrt(limit)`` from every
    placed atom, tried a few at a time (the first usually fits); None when none does."""
    for lo in range(0, len(draws), block):
        trial = draws[lo : lo + block] * sides
        delta = trial[:, None, :] - placed[None, :, :]
        if periodic:
            delta -= sides * np.round(delta / sides)
        ok = (np.einsum("tkc,tkc->tk", delta, delta) >= limit).all(axis=1)
        if ok.any():
            return trial[int(np.argmax(ok))]
    return None


def parse_random_spec(spec: str) -> RandomSource:
    """The :class:`RandomSource` a ``random:COUNT[:MIN-MAX][:ELEMENTS][:cluster][:seed=S]`` string names
    (ELEMENTS: symbols separated by commas); a ConfigError saying what is wrong otherwise."""
    if not spec.startswith(PREFIX):
        raise ConfigError(f"{spec!r}: a random source starts with {PREFIX!r}")
    fields = spec[len(PREFIX):].split(":")
    usage = "expected random:COUNT[:MIN-MAX][:ELEMENTS][:cluster][:seed=S], e.g. random:1000:2-64:Cu,Au"
    if not fields[0].isdigit():
        raise ConfigError(f"{spec!r}: COUNT {fields[0]!r} is not a whole number; {usage}")
    options: dict = {"count": int(fields[0])}
    for part in fields[1:]:
        if re.fullmatch(r"\d+-\d+", part):
            low, high = (int(x) for x in part.split("-"))
            options.update(min_atoms=low, max_atoms=high)
        elif re.fullmatch(r"seed=\d+", part):
            options["seed"] = int(part[5:])
        elif part in ("cluster", "periodic"):
            options["periodic"] = part == "periodic"
        elif part and all(s in chemical_symbols[1:] for s in part.split(",")):
            options["elements"] = tuple(dict.fromkeys(part.split(",")))
        else:
            raise ConfigError(f"{spec!r}: cannot read {part!r}; {usage}")
    return RandomSource(**options)
