"""Several stores as one multi-dataset, with a dataset-to-head registry derived from the names.

The registry is created once from the dataset names (sorted, so argument order does not matter), then
saved with a run or checkpoint and authoritative from then on: opening with an existing registry keeps
every known name's index, and new datasets are appended after them. Nobody writes the table by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gfmkit.data.ranged import locate
from gfmkit.data.readers import open_store
from gfmkit.data.store_read import Store, StoreError
from gfmkit.data.structure import Structure
from gfmkit.files import atomic_write_text


class DatasetRegistry:
    """Ordered dataset names; a dataset's head index is its position."""

    def __init__(self, names: Iterable[str] = ()):
        self.names: list[str] = []
        self.extend(names)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> DatasetRegistry:
        """A new registry for ``names`` in sorted order."""
        return cls(sorted(set(names)))

    def extend(self, names: Iterable[str]) -> list[str]:
        """Append names not yet known (in the given order); return the ones added."""
        added = [n for n in dict.fromkeys(names) if n not in self.names]
        self.names += added
        return added

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"dataset {name!r} is not in the registry {self.names}") from None

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatasetRegistry) and other.names == self.names

    def __repr__(self) -> str:
        return f"DatasetRegistry({self.names})"

    def to_dict(self) -> dict[str, Any]:
        return {"datasets": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetRegistry:
        return cls(data["datasets"])

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetRegistry:
        return cls.from_dict(json.loads(Path(path).read_text()))


class MultiStore:
    """Stores opened together; item ``i`` is a structure of one of them, tagged with its head index."""

    def __init__(self, stores: Sequence[Store], registry: DatasetRegistry | None = None):
        names = [s.name for s in stores]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"dataset name(s) {duplicates} appear in more than one store; names must be unique")
        if registry is None:
            registry = DatasetRegistry.from_names(names)
        else:
            registry = DatasetRegistry(registry.names)
            registry.extend(sorted(set(names)))
        self.registry = registry
        self.stores = sorted(stores, key=lambda s: registry.index(s.name))
        self.head_index = np.array([registry.index(s.name) for s in self.stores], dtype=np.int64)
        self.bounds = np.concatenate([[0], np.cumsum([len(s) for s in self.stores])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(position of the store in ``self.stores``, index within that store) of global ``index``."""
        return locate(self.bounds, index)

    def __getitem__(self, index: int) -> Structure:
        k, i = self.locate(index)
        return self.stores[k][i]

    def dataset_of(self, index: int) -> int:
        """Head index of structure ``index``."""
        return int(self.head_index[self.locate(index)[0]])

    def store(self, name: str) -> Store:
        return self.stores[[s.name for s in self.stores].index(name)]

    def sizes(self) -> dict[str, int]:
        return {s.name: len(s) for s in self.stores}

    def table(self) -> pd.DataFrame:
        """One row per dataset: head index, name, level of theory, counts, targets, elements."""
        rows = []
        for head, store in zip(self.head_index, self.stores):
            info = store.info()
            rows.append(
                {
                    "head": int(head),
                    "dataset": store.name,
                    "level_of_theory": store.level_of_theory,
                    "structures": len(store),
                    "atoms": int(store.natoms.sum()),
                    "targets": ",".join(store.targets),
                    "periodic": info["periodic"],
                    "elements": " ".join(store.elements),
                }
            )
        return pd.DataFrame(rows)


def open_stores(
    paths: Iterable[str | os.PathLike], *, registry: DatasetRegistry | None = None, preload: bool = False,
    shard: tuple[int, int] | None = None,
) -> MultiStore:
    """Open stores (files, or directories holding ``*.bp`` stores) as one :class:`MultiStore`;
    ``shard=(rank, size)``: only that rank's contiguous share of each store."""
    return MultiStore([open_store(p, preload=preload, shard=shard) for p in store_paths(paths)], registry=registry)


def store_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The stores named by ``paths``: each a store, or a directory whose ``*.bp`` stores are taken in
    name order. A directory without stores is a :class:`StoreError` naming it."""
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and path.suffix != ".bp" and not (path / "md.idx").exists():
            found = sorted(path.glob("*.bp"))
            if not found:
                raise StoreError(f"{path}: a directory without stores (*.bp)")
            expanded += found
        else:
            expanded.append(path)
    return expanded
