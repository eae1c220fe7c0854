"""Where structures come from: files ``ase.io`` reads, ASE databases (SQLite, LMDB), or ``ase.Atoms``.

A source is cut into *units* (a whole file, or a row range of a database) so that MPI ranks can read
disjoint, contiguous parts of the input in order: rank order is input order.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.io.formats import ioformats

DATABASE_SUFFIXES = (".db", ".aselmdb", ".lmdb")
SourceLike = str | os.PathLike | Atoms | Iterable[Atoms]


@dataclass(frozen=True)
class Unit:
    """A contiguous part of one source: a file, rows [start, stop) of a database, or in-memory atoms."""

    label: str
    kind: str  # "file", "db" or "atoms"
    target: Any
    start: int = 0
    stop: int | None = None
    cost: float = 1.0
    format: str | None = None

    def read(self) -> Iterator[tuple[int, Atoms | Exception]]:
        """(index within the source, atoms) for every structure of this unit, in order; for a structure
        of a file that cannot be parsed, (its index, the exception), and reading goes on after it."""
        if self.kind == "atoms":
            yield from enumerate(self.target[self.start : self.stop], start=self.start)
        elif self.kind == "db":
            with ase.db.connect(self.target, serial=True) as db:
                limit = None if self.stop is None else self.stop - self.start
                for k, row in enumerate(db.select(offset=self.start, limit=limit)):
                    yield self.start + k, row.toatoms(add_additional_information=True)
        else:
            yield from _read_file(self.target, self.format)


#: Consecutive unreadable structures of a file after which the rest of the file is given up.
MAX_CONSECUTIVE_FAILURES = 3


def _read_file(path: str, format: str | None) -> Iterator[tuple[int, Atoms | Exception]]:
    """Every structure of a file, restarting after one that fails to parse so that the good structures
    after a bad one are kept (ase.io's iterator ends at the first exception)."""
    if os.path.getsize(path) == 0:
        yield 0, ValueError("empty file (no structures)")
        return
    start, failures = 0, 0
    while True:
        index = start - 1
        try:
            # parallel=False: ASE's default reads on MPI rank 0 and broadcasts, but each rank reads its own unit.
            for index, atoms in enumerate(ase.io.iread(path, index=slice(start, None), format=format, parallel=False),
                                          start=start):
                failures = 0
                yield index, atoms
            return
        except Exception as exc:  # noqa: BLE001 - reported per structure by the caller
            failures = failures + 1 if index < start else 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                yield index + 1, RuntimeError(f"{exc} (the rest of the file is not read: {failures} unreadable "
                                              "structures in a row)")
                return
            yield index + 1, exc
            start = index + 2


def units_of(sources: SourceLike | Sequence[SourceLike], *, format: str | None = None, db_chunk: int = 10_000) -> list[Unit]:
    """Split the inputs into units, in input order. Files and databases must exist."""
    if isinstance(sources, Atoms):
        sources = [sources]
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = list(sources)
    if sources and all(isinstance(s, Atoms) for s in sources):
        return _atoms_units(sources, "<atoms>")
    units: list[Unit] = []
    for source in sources:
        if isinstance(source, Atoms):
            units += _atoms_units([source], "<atoms>")
        elif isinstance(source, (str, os.PathLike)):
            for path in expand_pattern(source):
                units += _path_units(path, format, db_chunk)
        else:
            units += _atoms_units(list(source), "<atoms>")
    return units


def expand_pattern(source: str | os.PathLike) -> list[Path]:
    """A path, or the sorted files a glob pattern (``runs/*.extxyz``, ``**``) matches; a pattern that
    matches nothing is a ``FileNotFoundError`` naming it."""
    path = Path(source)
    if path.exists() or not glob.has_magic(str(source)):
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
    if not matches:
        raise FileNotFoundError(f"{source}: no file matches this pattern")
    return matches


def _atoms_units(atoms: list[Atoms], label: str, chunk: int = 1000) -> list[Unit]:
    return [Unit(label, "atoms", atoms, lo, min(len(atoms), lo + chunk), cost=min(chunk, len(atoms) - lo)) for lo in range(0, len(atoms), chunk)]


def _path_units(path: Path, format: str | None, db_chunk: int) -> list[Unit]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if format is not None and format not in ioformats:
        raise ValueError(f"format {format!r}: ase.io knows no such format (`ase info --formats` lists them)")
    is_db = format in ("db", "aselmdb") or (format is None and path.suffix in DATABASE_SUFFIXES)
    if not is_db:
        return [Unit(str(path), "file", str(path), cost=float(path.stat().st_size), format=format)]
    with ase.db.connect(str(path), serial=True) as db:
        count = db.count()
    return [
        Unit(str(path), "db", str(path), lo, min(count, lo + db_chunk), cost=float(min(db_chunk, count - lo)))
        for lo in range(0, count, db_chunk)
    ]


def assign_units(units: list[Unit], size: int) -> list[list[Unit]]:
    """Contiguous runs of units per rank, balanced by cost (rank r's run precedes rank r+1's)."""
    if size == 1:
        return [units]
    costs = np.cumsum([u.cost for u in units]) if units else np.zeros(0)
    total = costs[-1] if len(costs) else 0.0
    # Unit k goes to the rank whose cost interval contains the unit's midpoint.
    mids = costs - np.array([u.cost for u in units]) / 2 if units else np.zeros(0)
    owner = np.minimum((mids / max(total, 1e-300) * size).astype(int), size - 1)
    return [[u for u, o in zip(units, owner) if o == rank] for rank in range(size)]
