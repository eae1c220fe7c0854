"""Screening sources: a string (or list of them) to one indexable sequence of structures.

``SOURCE`` is a gfmkit or HydraGNN store (a ``.bp`` directory), a file ``ase.io`` reads (extxyz, CIF,
POSCAR, ...), an ASE database, a glob of any of these (``runs/*.extxyz``), or a seeded random generator
``random:COUNT[:MIN-MAX][:ELEMENTS][:cluster][:seed=S]`` (:mod:`gfmkit.data.random_source`). Several
sources are screened one after the other; structure ``i`` is the ``i``-th of them all.

Every source gives ``len()``, ``arrays(i)`` (``numbers``, ``positions``, ``cell``, ``pbc``: what
:func:`gfmkit.data.graphs.structure_graph` needs) and ``atoms(i)``. Stores and random structures are read
or made on demand, and so are (ext)xyz files and ASE databases, a group of structures at a time
(:mod:`gfmkit.data.indexed_sources`); other files ``ase.io`` reads (CIF, POSCAR, trajectories, ...) are
read whole when the source is opened (convert large ones to a store with ``gfmkit data convert``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from gfmkit.config import ConfigError
from gfmkit.data.indexed_sources import DatabaseRows, XYZFrames, atoms_arrays, is_xyz
from gfmkit.data.random_source import PREFIX, RandomSource, parse_random_spec
from gfmkit.data.ranged import locate
from gfmkit.data.sources import DATABASE_SUFFIXES, expand_pattern, units_of


class StoreSource:
    """A gfmkit or HydraGNN store as a screening source."""

    def __init__(self, path: str | os.PathLike):
        from gfmkit.data.readers import open_store

        self.path = Path(path)
        self.store = open_store(path)
        self.spec = str(path)
        if not hasattr(self.store, "arrays"):
            raise ConfigError(f"{path}: a screening results store holds predictions, not structures; screen its source")

    def __len__(self) -> int:
        return len(self.store)

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        return self.store.arrays(index)

    def atoms(self, index: int) -> Atoms:
        return self.store[index].to_atoms()

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker reopens the store
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


class AtomsSource:
    """Structures ``ase.io`` reads (files, globs, databases) or given ``ase.Atoms``, held in memory."""

    def __init__(self, atoms: Sequence[Atoms], spec: str = "<atoms>"):
        self.structures = list(atoms)
        self.spec = spec

    @classmethod
    def read(cls, path: str | os.PathLike) -> AtomsSource:
        """Every structure of a file or database; a ConfigError naming the file for one that cannot be read."""
        structures = []
        for unit in units_of(path):
            for index, item in unit.read():
                if isinstance(item, Exception):
                    raise ConfigError(f"{unit.label}: structure {index} cannot be read ({item})")
                structures.append(item)
        return cls(structures, str(path))

    def __len__(self) -> int:
        return len(self.structures)

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        return atoms_arrays(self.structures[index])

    def atoms(self, index: int) -> Atoms:
        return self.structures[index].copy()


class ChainedSource:
    """Several sources one after the other."""

    def __init__(self, parts: list[Any]):
        self.parts = parts
        self.bounds = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.spec = ";".join(p.spec for p in parts)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def _locate(self, index: int) -> tuple[Any, int]:
        k, i = locate(self.bounds, index)
        return self.parts[k], i

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        part, i = self._locate(index)
        return part.arrays(i)

    def atoms(self, index: int) -> Atoms:
        part, i = self._locate(index)
        return part.atoms(i)


def open_source(source: Any, *, elements: Sequence[str] = ()) -> Any:
    """The screening source ``source`` names (see the module doc): a string, a path, ``ase.Atoms``, a list
    of them, or a source object. ``elements`` fills in a random source that names none. A missing file or
    an empty glob is a FileNotFoundError, a malformed spec a ConfigError; an empty source is refused."""
    if isinstance(source, Atoms) or (isinstance(source, (list, tuple)) and source and all(isinstance(a, Atoms) for a in source)):
        opened: Any = AtomsSource([source] if isinstance(source, Atoms) else source)
    elif isinstance(source, (list, tuple)):
        parts = [open_source(s, elements=elements) for s in source]
        opened = parts[0] if len(parts) == 1 else ChainedSource(parts)
    elif hasattr(source, "arrays") and hasattr(source, "__len__"):
        opened = source
    else:
        opened = _open_one(str(source), elements)
    if len(opened) == 0:
        raise ConfigError(f"{getattr(opened, 'spec', source)}: the source holds no structures")
    return opened


def _open_one(text: str, elements: Sequence[str]) -> Any:
    if text.startswith(PREFIX):
        source = parse_random_spec(text)
        if not source.elements:
            source = source.with_elements(list(elements))
        return source
    parts = []
    for path in expand_pattern(text):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or store")
        parts.append(_open_path(path))
    return parts[0] if len(parts) == 1 else ChainedSource(parts)


def _open_path(path: Path) -> Any:
    if path.is_dir():
        return StoreSource(path)
    if path.suffix in DATABASE_SUFFIXES:
        return DatabaseRows(path)
    xyz = is_xyz(path)
    return XYZFrames(path, xyz) if xyz else AtomsSource.read(path)


__all__ = ["AtomsSource", "ChainedSource", "RandomSource", "StoreSource", "open_source"]
