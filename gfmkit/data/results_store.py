"""The screening results store: an ADIOS2 BP directory of per-structure columns, one row per structure.

=============================  ============  =====================================================
variable                       shape         meaning
=============================  ============  =====================================================
``source_index``               (S,) int64    position of the structure in its source
``natoms``                     (S,) int64    atoms
``composition``                (S, E) int32  atoms of each element named by ``composition/elements``
``head_energy_per_atom``       (S, K) f64    each head's energy per atom (eV/atom), heads in ``heads``
``weights``                    (S, K) f64    head weights (weighted runs)
``energy``                     (S,) f64      weighted energy (eV, the target head's references)
``energy_per_atom``            (S,) f64      weighted energy per atom (eV/atom)
``disagreement``               (S,) f64      standard deviation across heads of the reference-removed
                                             energy per atom (eV/atom)
``max_force``                  (S,) f64      largest |F| of the weighted forces (eV/Å), forces on
``forces_disagreement``        (S,) f64      RMS over atoms of the per-atom force spread (eV/Å),
                                             ``forces="each"``
``atom_offset``, ``forces``    (S,), (A, 3)  per-atom weighted forces, only when asked
=============================  ============  =====================================================

Attributes: ``gfmkit/format`` = ``gfmkit-screen``, the schema version, ``gfmkit/version``,
``checkpoint``, ``heads``, ``precision``, ``weighting``, ``forces``, ``source``, ``n_structures``.
Chunk files (one per chunk of a screen) have the same layout; :func:`merge_results` joins them in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase.data import atomic_numbers
from ase.formula import Formula

from gfmkit.data.store_check import MANIFEST, check_store_files
from gfmkit.data.store_format import StoreError
from gfmkit.files import atomic_path

FORMAT = "gfmkit-screen"
SCHEMA_VERSION = 1
A_FORMAT = "gfmkit/format"
A_SCHEMA = "gfmkit/schema_version"
A_ELEMENTS = "composition/elements"
A_NSTRUCT = "n_structures"
HEAD_ENERGY = "head_energy_per_atom"
WEIGHTS = "weights"
COMPOSITION = "composition"
FORCES = "forces"
ATOM_OFFSET = "atom_offset"
#: Columns with one value per head.
PER_HEAD = (HEAD_ENERGY, WEIGHTS)
#: Per-structure columns shown first in a table, in this order.
LEADING = ("energy_per_atom", "energy", "disagreement", "max_force", "forces_disagreement")
#: Columns over atoms rather than structures.
PER_ATOM = (FORCES,)


def write_columns(path: str | os.PathLike, columns: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
    """Write ``columns`` (name -> array, first axis rows) as an ADIOS2 store at ``path``, atomically,
    with ``attrs`` and a manifest of its files."""
    return _write(path, [columns], attrs)


def merge_results(parts: Sequence[str | os.PathLike], path: str | os.PathLike, attrs: dict[str, Any]) -> Path:
    """Join the chunk stores ``parts`` in order into the results store ``path`` (atomically). Chunks are
    read one at a time, so memory holds one chunk; compositions are re-indexed to the union of elements."""
    elements = sorted({e for p in parts for e in _attributes(Path(p))[A_ELEMENTS]}, key=atomic_numbers.get)
    return _write(path, (_read_chunk(Path(p), elements) for p in parts), {**attrs, A_ELEMENTS: elements})


def _read_chunk(path: Path, elements: list[str]) -> dict[str, np.ndarray]:
    columns = read_columns(path)
    own = _attributes(path)[A_ELEMENTS]
    counts = np.zeros((len(columns["natoms"]), len(elements)), dtype=np.int32)
    counts[:, [elements.index(e) for e in own]] = columns[COMPOSITION]
    columns[COMPOSITION] = counts
    return columns


def _write(path: str | os.PathLike, blocks, attrs: dict[str, Any]) -> Path:
    """Write the column blocks one after the other into one ADIOS2 step (sizes known only at the end,
    so each block goes to its own local-array block: readers see them joined)."""
    import adios2
    from adios2 import bindings

    from gfmkit.data.store_check import write_manifest

    path = Path(path)
    with atomic_path(path) as tmp:
        adios = adios2.Adios()
        io = adios.declare_io(f"gfmkit-screen-{path.name}")
        io.set_engine("BP5")
        io.set_parameter("Profile", "Off")
        writer = io.open(str(tmp), bindings.Mode.Write)
        writer.begin_step()
        variables: dict[str, Any] = {}
        rows = atoms = 0
        for block in blocks:
            n = len(block["natoms"])
            for name, values in block.items():
                values = np.ascontiguousarray(values + atoms if name == ATOM_OFFSET else values)
                if name not in variables:
                    variables[name] = io.define_variable(name, values, [], [], list(values.shape))
                variables[name].set_selection([[0] * values.ndim, list(values.shape)])
                writer.put(variables[name], values, bindings.Mode.Sync)
            rows += n
            atoms += len(block[FORCES]) if FORCES in block else 0
            writer.perform_data_write()
        written = {A_FORMAT: FORMAT, A_SCHEMA: SCHEMA_VERSION, A_NSTRUCT: rows, "columns": sorted(variables), **attrs}
        for name, value in written.items():
            io.define_attribute(name, _attribute_value(value))
        writer.end_step()
        writer.close()
        write_manifest(tmp)
    return path


def _attribute_value(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return list(value) if value and all(isinstance(v, str) for v in value) else np.asarray(value if value else [""])
    if isinstance(value, bool):
        return str(value).lower()
    return value


def _attributes(path: Path) -> dict[str, Any]:
    import adios2

    check_store_files(path)
    with adios2.FileReader(str(path)) as reader:
        attrs = {name: reader.read_attribute(name) for name in reader.available_attributes()}
    if attrs.get(A_FORMAT) != FORMAT:
        raise StoreError(f"{path}: not a gfmkit screening results store")
    for key in (A_ELEMENTS, "heads", "columns"):
        if key in attrs:
            value = attrs[key]
            attrs[key] = [value] if isinstance(value, str) else [v for v in value if v != ""]
    return attrs


def read_columns(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The results store's columns (all, or ``names``), each its blocks joined along the rows."""
    import adios2

    path = Path(path)
    attrs = _attributes(path)
    out = {}
    with adios2.FileReader(str(path)) as reader:
        available = reader.available_variables()
        for name in names or attrs["columns"]:
            if name not in available:
                raise StoreError(f"{path}: no column {name!r}; columns: {', '.join(attrs['columns'])}")
            blocks = reader.all_blocks_info(name)[0]
            parts = [reader.read(name, block_id=int(b["BlockID"])) for b in blocks]
            out[name] = np.concatenate(parts) if parts else np.zeros(0)
    return out


class ResultsStore:
    """A screening results store, read: :meth:`table` (one row per structure), ``attrs``, :meth:`info`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.attrs = _attributes(self.path)

    @property
    def heads(self) -> list[str]:
        return list(self.attrs.get("heads", []))

    @property
    def elements(self) -> list[str]:
        return list(self.attrs[A_ELEMENTS])

    def __len__(self) -> int:
        return int(self.attrs[A_NSTRUCT])

    def columns(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Raw columns (see the module doc)."""
        return read_columns(self.path, names)

    def table(self) -> pd.DataFrame:
        """One row per structure: ``source_index``, ``formula``, ``natoms``, ``energy_per_atom/<head>`` per
        head, ``weight/<head>``, and the per-structure columns (no per-atom forces)."""
        columns = self.columns([c for c in self.attrs["columns"] if c not in PER_ATOM and c != ATOM_OFFSET])
        frame = pd.DataFrame({"source_index": columns.pop("source_index"),
                              "formula": formulas(columns.pop(COMPOSITION), self.elements),
                              "natoms": columns.pop("natoms")})
        for name in LEADING:
            if name in columns:
                frame[name] = columns.pop(name)
        for name, values in columns.items():
            if name in PER_HEAD:
                label = "energy_per_atom" if name == HEAD_ENERGY else "weight"
                for k, head in enumerate(self.heads):
                    frame[f"{label}/{head}"] = values[:, k]
            else:
                frame[name] = values
        return frame

    def forces(self, row: int) -> np.ndarray:
        """Per-atom weighted forces (eV/Å) of row ``row``, where the screen kept them."""
        if FORCES not in self.attrs["columns"]:
            raise StoreError(f"{self.path}: per-atom forces were not kept (screen with save_forces=True)")
        columns = self.columns([ATOM_OFFSET, "natoms", FORCES])
        start = int(columns[ATOM_OFFSET][row])
        return columns[FORCES][start : start + int(columns["natoms"][row])]

    def info(self) -> dict[str, Any]:
        """What ``gfmkit data info`` shows (the keys a dataset's info has, plus the screen's settings)."""
        natoms = self.columns(["natoms"])["natoms"]
        frame_epa = self.columns(["energy_per_atom"])["energy_per_atom"] if "energy_per_atom" in self.attrs["columns"] else None
        stats = {} if frame_epa is None or not len(frame_epa) else {
            "mean": float(frame_epa.mean()), "std": float(frame_epa.std()), "min": float(frame_epa.min()),
            "max": float(frame_epa.max())}
        return {"dataset": "screen results", "level_of_theory": f"{self.attrs.get('weighting')} weighting",
                "path": str(self.path), "structures": len(self), "atoms": int(natoms.sum()),
                "targets": [c for c in self.attrs["columns"] if c not in ("source_index", "natoms", COMPOSITION)],
                "elements": self.elements, "periodic": "-", "energy_per_atom": stats, "split_sizes": {},
                **{k: self.attrs[k] for k in ("checkpoint", "heads", "precision", "weighting", "forces", "source",
                                              "gfmkit/version") if k in self.attrs}}

    def __repr__(self) -> str:
        return f"ResultsStore({len(self)} structures, heads {self.heads}, {str(self.path)!r})"


def formulas(counts: np.ndarray, elements: Sequence[str]) -> list[str]:
    """Hill formulas of composition rows ``counts`` (S, E) over ``elements``."""
    cache: dict[bytes, str] = {}
    out = []
    for row in np.asarray(counts):
        key = row.tobytes()
        if key not in cache:
            cache[key] = Formula.from_dict({e: int(c) for e, c in zip(elements, row) if c}).format("hill")
        out.append(cache[key])
    return out


def is_results_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a screening results store (by its attributes)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return False
    try:
        _attributes(path)
    except (StoreError, RuntimeError, ValueError):
        return False
    return True
