"""Open any store file as one dataset: a gfmkit store, or a HydraGNN-written ``.bp`` file with its splits.

A HydraGNN file holds a dataset as splits (``trainset``, ``valset``, ``testset``, ...). gfmkit reads it
as one dataset whose structures carry their split (:class:`JoinedStore`), so the same file trains,
evaluates, converts and shows in ``gfmkit data info`` like a gfmkit store. Its dataset name comes from
the file's ``dataset_name`` attribute, or from ``dataset=`` where the file has none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from gfmkit.data import store_format as fmt
from gfmkit.data.ranged import (
    RangedStore,
    adios_message,
    locate,
    periodicity,
    split_selection,
)
from gfmkit.data.store_check import check_store_files
from gfmkit.data.store_format import StoreError
from gfmkit.data.structure import Structure


def store_format(path: str | os.PathLike) -> str:
    """``"gfmkit"``, ``"screen"`` (a screening results store) or ``"hydragnn"``: who wrote the store at
    ``path`` (a StoreError when neither)."""
    import adios2

    path = Path(path)
    check_store_files(path)
    try:
        with adios2.FileReader(str(path)) as reader:
            names = set(reader.available_attributes())
            if fmt.A_FORMAT in names and reader.read_attribute(fmt.A_FORMAT) == fmt.FORMAT:
                return "gfmkit"
            if fmt.A_FORMAT in names and reader.read_attribute(fmt.A_FORMAT) == "gfmkit-screen":
                return "screen"
    except (RuntimeError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable ADIOS2 file ({adios_message(exc)})") from None
    if "total_ndata" in names or any(n.endswith("/ndata") for n in names):
        return "hydragnn"
    raise StoreError(f"{path}: neither a gfmkit store nor a HydraGNN file (no gfmkit/format or */ndata attributes)")


def open_store(path: str | os.PathLike, *, preload: bool = False, dataset: str | None = None,
               level_of_theory: str | None = None, shard: tuple[int, int] | None = None) -> Any:
    """The store at ``path`` as one dataset: a :class:`~gfmkit.data.Store`, or a HydraGNN file's splits
    joined (:class:`JoinedStore`). ``dataset`` and ``level_of_theory`` name a HydraGNN file's dataset.
    ``shard=(rank, size)`` opens only that rank's contiguous share of a gfmkit store: nothing of the
    rest is read."""
    from gfmkit.data.hydragnn import HydraGNNStore
    from gfmkit.data.store_read import Store

    kind = store_format(path)
    if shard is not None:
        if kind != "gfmkit":
            raise StoreError(f"{path}: sharded reading needs a gfmkit store; convert it first (gfmkit data convert)")
        total = Store(path, start=0, stop=0).total  # the attributes only
        bounds = np.linspace(0, total, shard[1] + 1).round().astype(int)
        return Store(path, start=int(bounds[shard[0]]), stop=int(bounds[shard[0] + 1]), preload=preload)
    if kind == "gfmkit":
        return Store(path, preload=preload)
    if kind == "screen":  # screening results: rows of predictions, no structures (``gfmkit data info``)
        from gfmkit.data.results_store import ResultsStore

        return ResultsStore(path)
    first = HydraGNNStore(path, preload=preload, dataset=dataset, level_of_theory=level_of_theory or "unknown")
    parts = [first] + [HydraGNNStore(path, split=label, preload=preload, dataset=first.name,
                                     level_of_theory=first.level_of_theory) for label in first.split_names[1:]]
    return JoinedStore([p for p in parts if len(p)] or parts[:1])


class JoinedStore:
    """Several stores of one dataset read as one, in order (a HydraGNN file's splits); each structure keeps
    its split. Offers what training, evaluation, statistics and ``data info`` ask of a store."""

    def __init__(self, parts: list[RangedStore]):
        names = {p.name for p in parts}
        if len(names) != 1:
            raise StoreError(f"{parts[0].path}: parts of one dataset carry different names {sorted(names)}")
        self.parts = parts
        self.path = Path(parts[0].path)
        self.bounds = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    # -- what a dataset says about itself -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.parts[0].name

    @property
    def level_of_theory(self) -> str:
        return self.parts[0].level_of_theory

    @property
    def targets(self) -> list[str]:
        return [t for t in self.parts[0].targets if all(t in p.targets for p in self.parts)]

    @property
    def elements(self) -> list[str]:
        present = {symbol for p in self.parts for symbol in p.info()["elements"]}
        return [s for s in chemical_symbols if s in present]

    @property
    def reference_energies(self) -> dict[str, float] | None:
        return None

    @property
    def natoms(self) -> np.ndarray:
        return np.concatenate([p.natoms for p in self.parts])

    @property
    def split(self) -> np.ndarray:
        return np.concatenate([p.split for p in self.parts])

    def split_indices(self, split: str) -> np.ndarray:
        return split_selection(self.split, split)

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([p.column(name) for p in self.parts])

    def info(self) -> dict[str, Any]:
        first = self.parts[0].info()
        pbc = np.concatenate([p.column(fmt.PBC) for p in self.parts])
        energy = self.column(fmt.ENERGY) / self.natoms if fmt.ENERGY in self.targets else None
        return {**first, "dataset": self.name, "structures": len(self), "atoms": int(self.natoms.sum()),
                "targets": self.targets, "elements": self.elements, "periodic": periodicity(pbc),
                "energy_per_atom": {} if energy is None else dict(zip(fmt.STATS_ORDER, fmt.summary_stats(energy)))}

    # -- structures -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.bounds[-1])

    def _locate(self, index: int) -> tuple[RangedStore, int]:
        k, i = locate(self.bounds, index + len(self) if index < 0 else index)
        return self.parts[k], i

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        part, i = self._locate(index)
        return part.arrays(i)

    def __getitem__(self, index: int) -> Structure:
        part, i = self._locate(index)
        return part[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def atoms(self, index: int):
        return self[index].to_atoms()

    def __repr__(self) -> str:
        return f"JoinedStore({self.name!r}, {len(self)} structures from {len(self.parts)} splits, {str(self.path)!r})"
