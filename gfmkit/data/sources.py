"""Where structures come from: files ``ase.io`` reads, ASE databases (SQLite, LMDB), or ``ase.Atoms``.

A source is cut into *units* (a whole file, or a row range of a database) so that MPI ranks can read
disjoint, contiguous parts of the input in order: rank order is input order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms

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

    def read(self) -> Iterator[tuple[int, Atoms]]:
        """(index within the source, atoms) for every structure of this unit, in order."""
        if self.kind == "atoms":
            yield from enumerate(self.target[self.start : self.stop], start=self.start)
        elif self.kind == "db":
            with ase.db.connect(self.target, serial=True) as db:
                limit = None if self.stop is None else self.stop - self.start
                for k, row in enumerate(db.select(offset=self.start, limit=limit)):
                    yield self.start + k, row.toatoms(add_additional_information=True)
        else:
            # parallel=False: ASE's default reads on MPI rank 0 and broadcasts, but each rank reads its own unit.
            yield from enumerate(ase.io.iread(self.target, index=":", format=self.format, parallel=False))


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
            units += _path_units(Path(source), format, db_chunk)
        else:
            units += _atoms_units(list(source), "<atoms>")
    return units


def _atoms_units(atoms: list[Atoms], label: str, chunk: int = 1000) -> list[Unit]:
    return [Unit(label, "atoms", atoms, lo, min(len(atoms), lo + chunk), cost=min(chunk, len(atoms) - lo)) for lo in range(0, len(atoms), chunk)]


def _path_units(path: Path, format: str | None, db_chunk: int) -> list[Unit]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
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
