"""Screening sources read a group of structures at a time, never whole: (ext)xyz files and ASE databases.

:class:`XYZFrames` scans an (ext)xyz file once when opened, recording where each frame starts (the atom
count line says how many lines follow, so the scan reads lines but parses nothing else), and later reads
the :data:`GROUP` frames around the one asked for with one seek and one ``ase.io.read``. A count line
that is not a number, or a frame cut short, is an error at open naming the file, the structure and the
line; a frame that ``ase.io`` cannot parse is an error naming the file and the structure when it is read.
:class:`DatabaseRows` reads an ASE database (SQLite, LMDB) by row groups (``select(offset, limit)``, the
order of ``gfmkit data ingest``). Both keep only the last group in memory, and reopen their file in a
DataLoader worker.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms

from gfmkit.config import ConfigError

#: Structures read together (one seek and one parse, or one database query).
GROUP = 64
#: ase.io formats read frame by frame through an index.
XYZ_FORMATS = ("extxyz", "xyz")


def atoms_arrays(atoms: Atoms) -> dict[str, np.ndarray]:
    """``numbers``, ``positions``, ``cell`` (zero when not periodic) and ``pbc`` of ``atoms``."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    return {"numbers": atoms.numbers, "positions": atoms.positions,
            "cell": atoms.cell[:] if pbc.any() else np.zeros((3, 3)), "pbc": pbc}


def read_grouped(cache: dict[int, list], index: int, count: int, read: Callable[[int, int], list]) -> Any:
    """Item ``index`` of ``count``, read together with the rest of its :data:`GROUP` by ``read(first,
    stop)``; ``cache`` keeps the last group read (sequential access reads each group once)."""
    group = index // GROUP
    if group not in cache:
        first = group * GROUP
        made = read(first, min(first + GROUP, count))
        cache.clear()
        cache[group] = made
    return cache[group][index % GROUP]


class _Grouped:
    """Structures read :data:`GROUP` at a time by ``_read_group(first, stop)``; the last group is kept."""

    spec: str

    def __init__(self) -> None:
        self._group: dict[int, list[Atoms]] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def _read_group(self, first: int, stop: int) -> list[Atoms]:
        raise NotImplementedError

    def atoms(self, index: int) -> Atoms:
        if not 0 <= index < len(self):
            raise IndexError(f"structure {index} out of range for {self.spec} ({len(self)} structures)")
        return read_grouped(self._group, index, len(self), self._read_group).copy()

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        return atoms_arrays(self.atoms(index))

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker reads its own groups
        return {k: v for k, v in self.__dict__.items() if k != "_group"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._group = {}


class XYZFrames(_Grouped):
    """An (ext)xyz file as a screening source, frames read on demand (see the module doc)."""

    def __init__(self, path: str | os.PathLike, format: str = "extxyz"):
        super().__init__()
        self.path, self.format, self.spec = Path(path), format, str(path)
        self.offsets = frame_offsets(self.path)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _text(self, first: int, stop: int) -> io.StringIO:
        """Frames ``[first, stop)`` as they stand in the file."""
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[first]))
            return io.StringIO(f.read(int(self.offsets[stop] - self.offsets[first])).decode())

    def _read_group(self, first: int, stop: int) -> list[Atoms]:
        try:
            frames = ase.io.read(self._text(first, stop), index=":", format=self.format)
        except Exception:  # noqa: BLE001 - find the frame that fails, and name it
            frames = [self._read_one(first + k) for k in range(stop - first)]
        if len(frames) != stop - first:
            raise ConfigError(f"{self.path}: structures {first}-{stop - 1} read as {len(frames)} frames")
        return frames

    def _read_one(self, index: int) -> Atoms:
        try:
            return ase.io.read(self._text(index, index + 1), format=self.format)
        except Exception as exc:  # noqa: BLE001 - reported with the file and the structure
            raise ConfigError(f"{self.path}: structure {index} cannot be read ({exc})") from None


def frame_offsets(path: Path) -> np.ndarray:
    """Byte offsets where each frame of an (ext)xyz file starts, and the file's end (int64, frames + 1).
    Blank lines between frames are skipped; a count line that is not a number or a frame with fewer lines
    than its count says is a ConfigError naming the file, the structure and the line."""
    starts: list[int] = []
    line_number = 0
    with open(path, "rb") as f:
        while True:
            start = f.tell()
            line = f.readline()
            line_number += 1
            if not line:
                break
            if not line.strip():
                continue
            try:
                count = int(line.split()[0])
                if count < 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{path}: structure {len(starts)} (line {line_number}): expected the number of "
                                  f"atoms, found {line.decode(errors='replace').strip()[:60]!r}") from None
            starts.append(start)
            for k in range(count + 1):  # the comment line, then one line per atom
                if not f.readline():
                    raise ConfigError(f"{path}: structure {len(starts) - 1} (line {line_number}) announces {count} "
                                      f"atoms but the file ends after {max(k - 1, 0)}")
            line_number += count + 1
        end = f.tell()
    if not starts:
        raise ConfigError(f"{path}: no structures (empty file)")
    return np.array(starts + [end], dtype=np.int64)


class DatabaseRows(_Grouped):
    """An ASE database (SQLite ``.db``, LMDB ``.aselmdb``) as a screening source, rows read by groups."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path, self.spec = Path(path), str(path)
        with ase.db.connect(str(self.path), serial=True) as db:
            self.count = db.count()

    def __len__(self) -> int:
        return self.count

    def _read_group(self, first: int, stop: int) -> list[Atoms]:
        with ase.db.connect(str(self.path), serial=True) as db:
            rows = list(db.select(offset=first, limit=stop - first))
        if len(rows) != stop - first:
            raise ConfigError(f"{self.path}: rows {first}-{stop - 1} are gone (the database changed while screened)")
        return [row.toatoms() for row in rows]


def is_xyz(path: Path) -> str | None:
    """The ase.io format of ``path`` when it is one of :data:`XYZ_FORMATS` and not compressed (a
    compressed file cannot be entered at a frame: it is read whole), else None."""
    from ase.io.formats import filetype, get_compression

    if get_compression(str(path))[1] is not None:
        return None
    try:
        kind = filetype(str(path), guess=True)
    except Exception:  # noqa: BLE001 - not ours to judge: ase.io says why when it reads the file
        return None
    return kind if kind in XYZ_FORMATS else None
