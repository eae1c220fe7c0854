"""What every store reader shares: a contiguous range ``[start, stop)`` of one ADIOS2 file.

Subclasses read their per-structure arrays of the range into ``_per_structure`` on open and provide
``arrays(i)``, ``_structure(arrays)`` and ``subset(start, stop, preload=...)``; indexing, iteration,
sharding, split selection and the per-process ADIOS2 handle live here once.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adios2
import numpy as np
from ase import Atoms

from gfmkit import keys
from gfmkit.data import store_format as fmt
from gfmkit.data.store_check import StoreDamaged, check_store_files
from gfmkit.data.structure import Structure
from gfmkit.log import strip_colour

_SPLIT = re.compile(r"^(?P<name>[a-z]+)(?:\[:(?P<limit>\d+|(?:\d*\.\d+|\d+\.?)(?:e-?\d+)?)\])?$")


def split_selection(codes: np.ndarray, split: str) -> np.ndarray:
    """Indices of the structures in ``split``, given each structure's split code.

    ``split`` is ``"train"``, ``"val"`` or ``"test"``, or a subset of one for learning curves:
    ``"train[:100]"`` (at most 100 of its structures) or ``"train[:0.25]"`` (a quarter, at least
    one). A subset is a fixed random draw from this store's split (the same for every call; each
    dataset draws its own), returned in store order, and smaller subsets lie inside larger ones.
    """
    match = _SPLIT.match(split)
    if match is None or match["name"] not in keys.SPLITS:
        raise ValueError(f"unknown split {split!r}: use {', '.join(keys.SPLITS)}, or a subset such as "
                         "train[:100] or train[:0.25]")
    indices = np.flatnonzero(codes == keys.SPLITS.index(match["name"]))
    limit = match["limit"]
    if limit is None:
        return indices
    if "." in limit or "e" in limit:
        fraction = float(limit)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"split {split!r}: a fraction must be in (0, 1]")
        count = math.ceil(fraction * len(indices))
    else:
        count = int(limit)
        if count < 1:
            raise ValueError(f"split {split!r}: a subset needs at least one structure")
    order = np.random.default_rng(0).permutation(len(indices))
    return np.sort(indices[order[:count]])


class RangedStore:
    """Base of :class:`~gfmkit.data.Store` and :class:`~gfmkit.data.HydraGNNStore`."""

    path: Path
    start: int
    stop: int
    preloaded: bool
    _per_structure: dict[str, np.ndarray]
    _reader: Any = None
    _pid: int = -1

    def arrays(self, index: int) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, start: int, stop: int, *, preload: bool | None = None) -> RangedStore:  # pragma: no cover
        raise NotImplementedError

    def _structure(self, arrays: dict[str, np.ndarray]) -> Structure:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[Structure]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int | slice) -> Structure | list[Structure]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._structure(self.arrays(index))

    def atoms(self, index: int) -> Atoms:
        """Structure ``index`` as ``ase.Atoms`` with its labels attached (SinglePointCalculator)."""
        return self[index].to_atoms()

    @property
    def natoms(self) -> np.ndarray:
        """Atoms per structure of this range."""
        return self._per_structure[fmt.NATOMS]

    @property
    def split(self) -> np.ndarray:
        """Split code per structure of this range (0 train, 1 val, 2 test)."""
        return self._per_structure[fmt.SPLIT]

    def split_indices(self, split: str) -> np.ndarray:
        """Indices (relative to this range) of the structures in ``split``: see :func:`split_selection`."""
        return split_selection(self.split, split)

    def column(self, name: str) -> np.ndarray:
        """A per-structure array of this range by store variable name (e.g. ``energy``)."""
        return self._per_structure[name]

    def shard(self, rank: int, size: int, *, preload: bool | None = None) -> RangedStore:
        """Rank ``rank``'s contiguous share of this range when ``size`` ranks split it."""
        bounds = np.linspace(0, len(self), size + 1).round().astype(int)
        return self.subset(int(bounds[rank]), int(bounds[rank + 1]), preload=preload)

    @property
    def reader(self) -> Any:
        """This process's ADIOS2 reader (a forked or spawned worker opens its own)."""
        if self._reader is None or self._pid != os.getpid():
            self._reader = adios2.FileReader(str(self.path))
            self._pid = os.getpid()
        return self._reader

    def _file_metadata(self, error: type[Exception], missing: str) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        """The file's attributes and variable metadata; a missing or unreadable file raises ``error``."""
        if not self.path.exists():
            raise error(f"{self.path}: {missing}")
        try:
            check_store_files(self.path)  # a damaged file makes ADIOS2 hang, not fail
        except StoreDamaged as exc:
            raise error(str(exc)) from None
        try:
            reader = self.reader
            names = reader.available_attributes()
            variables = reader.available_variables()
        except Exception as exc:  # ADIOS2 raises plain RuntimeError/ValueError on corrupt files
            raise error(f"{self.path}: not a readable ADIOS2 file ({adios_message(exc)})") from None
        return {name: reader.read_attribute(name) for name in names}, variables

    def _normalise(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"structure {index} out of range for {self!r}")
        return index % n

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"], state["_pid"] = None, -1
        return state


def locate(bounds: np.ndarray, index: int) -> tuple[int, int]:
    """(part, index within it) of structure ``index`` of parts laid end to end, ``bounds`` being their
    cumulative sizes from 0; an IndexError outside them."""
    if not 0 <= index < bounds[-1]:
        raise IndexError(f"structure {index} out of range ({int(bounds[-1])} structures)")
    k = int(np.searchsorted(bounds, index, side="right") - 1)
    return k, index - int(bounds[k])


def adios_message(exc: BaseException) -> str:
    """An ADIOS2 exception's text in one line, without its terminal colour codes and timestamps."""
    text = strip_colour(str(exc))
    text = re.sub(r"\x1b|\[[0-9;]*m", "", text)  # also the codes' remains when ESC was already dropped
    text = re.sub(r"\[[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ [0-9:]+ \d{4}\]", "", text)
    text = re.sub(r"^\s*(<\w+>\s*)+:\s*", "", text.replace("[ADIOS2 EXCEPTION]", ""))  # <Engine> <BP4Reader> ... :
    return " ".join(text.split())


def as_list(value: Any) -> list[Any]:
    """An ADIOS2 attribute (a scalar, a string or an array) as a list."""
    if isinstance(value, str):
        return [value]
    return list(np.atleast_1d(value).tolist())


def periodicity(pbc: np.ndarray) -> str:
    """``periodic``, ``molecular``, ``mixed`` or a ``+``-joined combination, for a (S, 3) pbc array."""
    full, none = pbc.all(axis=1), ~pbc.any(axis=1)
    kinds = [name for name, mask in (("periodic", full), ("molecular", none), ("mixed", ~full & ~none)) if mask.any()]
    return "+".join(kinds) or "none"
