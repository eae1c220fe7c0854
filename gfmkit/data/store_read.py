"""Read a gfmkit store: length, random access, slices, contiguous ranges; lazy or preloaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import adios2
import numpy as np
import pandas as pd
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.data import store_format as fmt
from gfmkit.data.ranged import RangedStore, as_list, periodicity
from gfmkit.data.store_format import StoreError
from gfmkit.data.structure import Structure


class Store(RangedStore):
    """A gfmkit ADIOS2 store, or the contiguous range ``[start, stop)`` of one.

    Per-structure arrays of the range are read on open; per-atom arrays are read structure by structure
    (``preload=False``) or once for the whole range (``preload=True``), always by ADIOS2 selection, so a
    rank that opens its range never reads the rest of the file. The ADIOS2 handle belongs to the
    process that opened it: a forked or spawned DataLoader worker opens its own on first use.
    """

    def __init__(self, path: str | os.PathLike, *, start: int = 0, stop: int | None = None, preload: bool = False):
        self.path = Path(path)
        self._reader: Any = None
        self._pid = -1
        self.attrs = self._read_attributes()
        total = int(self.attrs[fmt.A_NSTRUCT])
        stop = total if stop is None else stop
        if not 0 <= start <= stop <= total:
            raise StoreError(f"{self.path}: range [{start}, {stop}) is outside the store's {total} structures")
        self.start, self.stop, self.total = start, stop, total
        self.preloaded = preload
        self._per_structure = self._read_per_structure()
        self._per_atom: dict[str, np.ndarray] = {}
        if preload:
            first, last = self._atom_range(0, len(self))
            self._per_atom = {name: self._read(name, first, last - first) for name in self.per_atom_fields}

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.attrs[fmt.A_DATASET])

    @property
    def level_of_theory(self) -> str:
        return str(self.attrs[fmt.A_LOT])

    @property
    def targets(self) -> list[str]:
        return list(self.attrs[fmt.A_TARGETS])

    @property
    def per_atom_fields(self) -> list[str]:
        return [f for f in self.attrs[fmt.A_FIELDS] if f in (fmt.NUMBERS, fmt.POSITIONS, fmt.FORCES)]

    @property
    def elements(self) -> list[str]:
        return [chemical_symbols[int(z)] for z in self.attrs[fmt.A_ELEMENTS]]

    @property
    def reference_energies(self) -> dict[str, float] | None:
        if fmt.A_REF_ELEMENTS not in self.attrs:
            return None
        return dict(zip(self.attrs[fmt.A_REF_ELEMENTS], map(float, self.attrs[fmt.A_REF_VALUES])))

    def info(self) -> dict[str, Any]:
        """Counts, elements, targets, energy statistics and split sizes, as plain data."""
        a = self.attrs
        stats = dict(zip(fmt.STATS_ORDER, map(float, a[fmt.A_EPA_STATS]))) if fmt.A_EPA_STATS in a else {}
        return {
            "dataset": self.name,
            "level_of_theory": self.level_of_theory,
            "path": str(self.path),
            "structures": int(a[fmt.A_NSTRUCT]),
            "atoms": int(a[fmt.A_NATOMS]),
            "targets": self.targets,
            "elements": self.elements,
            "element_counts": dict(zip(self.elements, map(int, a[fmt.A_ELEMENT_COUNTS]))),
            "periodic": periodicity(self._per_structure[fmt.PBC]),
            "energy_per_atom": stats,
            "split_sizes": dict(zip(keys.SPLITS, map(int, a[fmt.A_SPLIT_SIZES]))),
            "split_seed": int(a[fmt.A_SPLIT_SEED]),
            "reference_energies": self.reference_energies,
            "schema_version": int(a[fmt.A_SCHEMA]),
            "gfmkit_version": str(a[fmt.A_VERSION]),
        }

    # -- access -----------------------------------------------------------------------------------
    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """Structure ``index`` as arrays keyed by store variable name (the fast path for loaders)."""
        i = self._normalise(index)
        out = {name: values[i] for name, values in self._per_structure.items()}
        first, last = self._atom_range(i, i + 1)
        if self._per_atom:
            base = self._atom_range(0, 0)[0]
            out.update({name: values[first - base : last - base] for name, values in self._per_atom.items()})
        else:
            out.update({name: self._read(name, first, last - first) for name in self.per_atom_fields})
        return out

    def atom_block(self, name: str, start: int, stop: int) -> np.ndarray:
        """The per-atom array ``name`` of structures ``[start, stop)`` of this range, concatenated (one
        ADIOS2 selection, or a slice when preloaded): the fast path for statistics over many structures."""
        first, last = self._atom_range(start, stop)
        if self._per_atom:
            base = self._atom_range(0, 0)[0]
            return self._per_atom[name][first - base : last - base]
        return self._read(name, first, last - first)

    def subset(self, start: int, stop: int, *, preload: bool | None = None) -> Store:
        """The contiguous sub-range ``[start, stop)`` of this range, as its own Store."""
        preload = self.preloaded if preload is None else preload
        return Store(self.path, start=self.start + start, stop=self.start + stop, preload=preload)

    def table(self) -> pd.DataFrame:
        """One row per structure of this range: natoms, energy, split, composition, ..."""
        data = {"index": np.arange(self.start, self.stop), keys.NATOMS: self.natoms}
        for name, values in self._per_structure.items():
            if values.ndim == 1 and name != fmt.NATOMS:
                data[name] = values
        frame = pd.DataFrame(data)
        frame[keys.SPLIT] = np.asarray(keys.SPLITS)[self.split]
        frame["periodic"] = self._per_structure[fmt.PBC].all(axis=1)
        if fmt.ENERGY in self._per_structure:
            frame[keys.ENERGY_PER_ATOM] = frame[fmt.ENERGY] / frame[keys.NATOMS]
        return frame

    # -- internals --------------------------------------------------------------------------------
    def _structure(self, arrays: dict[str, np.ndarray]) -> Structure:
        properties = {
            name[len(fmt.PROPERTY_PREFIX) :]: float(v) for name, v in arrays.items() if name.startswith(fmt.PROPERTY_PREFIX)
        }
        return Structure(
            numbers=arrays[fmt.NUMBERS].astype(np.int64),
            positions=arrays[fmt.POSITIONS],
            cell=arrays[fmt.CELL],
            pbc=arrays[fmt.PBC].astype(bool),
            energy=_optional_float(arrays.get(fmt.ENERGY)),
            forces=arrays.get(fmt.FORCES),
            stress=arrays.get(fmt.STRESS),
            charge=_optional_float(arrays.get(fmt.CHARGE)),
            spin=_optional_float(arrays.get(fmt.SPIN)),
            properties=properties,
            dataset=self.name,
            level_of_theory=self.level_of_theory,
            split=keys.SPLITS[int(arrays[fmt.SPLIT])],
            source_index=int(arrays[fmt.SOURCE_INDEX]),
        )

    def _atom_range(self, i: int, j: int) -> tuple[int, int]:
        offsets, natoms = self._per_structure[fmt.ATOM_OFFSET], self._per_structure[fmt.NATOMS]
        if i >= j:
            base = int(offsets[i]) if i < len(offsets) else (int(offsets[-1] + natoms[-1]) if len(offsets) else 0)
            return base, base
        return int(offsets[i]), int(offsets[j - 1] + natoms[j - 1])

    def _read(self, name: str, first: int, count: int) -> np.ndarray:
        shape = self._shapes[name]
        if count == 0:
            return np.zeros((0, *shape[1:]), dtype=self._dtypes[name])
        start = [first] + [0] * (len(shape) - 1)
        return self.reader.read(name, start, [count, *shape[1:]])

    def _read_attributes(self) -> dict[str, Any]:
        attrs, variables = self._file_metadata(StoreError, "no such store")
        if attrs.get(fmt.A_FORMAT) != fmt.FORMAT:
            hint = " (it looks HydraGNN-written: use gfmkit.data.HydraGNNStore)" if "total_ndata" in attrs else ""
            raise StoreError(f"{self.path}: not a gfmkit store{hint}")
        version = int(attrs[fmt.A_SCHEMA])
        if version > fmt.SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema {version} is newer than this gfmkit understands "
                f"({fmt.SCHEMA_VERSION}); upgrade gfmkit"
            )
        for key in (fmt.A_TARGETS, fmt.A_FIELDS, fmt.A_REF_ELEMENTS):
            if key in attrs:
                attrs[key] = as_list(attrs[key])
        self._shapes = {n: [int(x) for x in v["Shape"].split(",")] for n, v in variables.items() if v["Shape"]}
        self._dtypes = {n: adios2.type_adios_to_numpy(v["Type"]) for n, v in variables.items()}
        expected = set(as_list(attrs[fmt.A_FIELDS])) | {fmt.ATOM_OFFSET, fmt.SPLIT}
        missing = sorted(n for n in expected if n not in self._shapes and int(attrs[fmt.A_NSTRUCT]) > 0)
        if missing:
            raise StoreError(f"{self.path}: truncated store, variable(s) {', '.join(missing)} missing")
        return attrs

    def _read_per_structure(self) -> dict[str, np.ndarray]:
        names = [n for n in as_list(self.attrs[fmt.A_FIELDS]) if n not in self.per_atom_fields]
        names += [fmt.ATOM_OFFSET, fmt.SPLIT]
        out = {name: self._read(name, self.start, len(self)) for name in names}
        out[fmt.PBC] = out[fmt.PBC].astype(bool)
        return out

    def __repr__(self) -> str:
        where = "" if (self.start, self.stop) == (0, self.total) else f"[{self.start}:{self.stop}]"
        return f"Store({self.name!r}{where}, {len(self)} structures, {self.level_of_theory}, {str(self.path)!r})"


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)

