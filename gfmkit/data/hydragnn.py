"""Read HydraGNN-written ADIOS2 files (``.bp``, BP4 or BP5) through the same interface as :class:`Store`.

Layout read (the facts come from HydraGNN's ``hydragnn/utils/datasets/adiosdataset.py``, ``AdiosWriter``
and ``AdiosDataset``; this is an independent reader, not HydraGNN code). A file has one ADIOS2 step and
any number of *splits*, named by labels; HydraGNN's examples use ``trainset``, ``valset`` and
``testset``. For a split ``<label>`` holding ``ndata`` samples:

- attribute ``<label>/ndata``: the number of samples; attribute ``<label>/keys``: the sample fields;
- for every field ``k`` a global array ``<label>/k``: the samples' arrays concatenated along one axis,
  ``vdim``, stored as the attribute ``<label>/k/variable_dim``. It is the axis along which the samples'
  shapes differ, else 0; so ``edge_index`` of shape ``(2, E)`` is usually concatenated along axis 1, but
  along axis 0 when every sample happens to have the same ``E``. The reader always uses the attribute.
- ``<label>/k/variable_count`` and ``<label>/k/variable_offset``: int64 arrays ``[ndata]``, each
  sample's extent along ``vdim`` and its start in the *global* array. A sample is the selection
  ``start[vdim] = offset, count[vdim] = count``, full extent along every other axis, which restores its
  original shape. Arrays written by several MPI ranks are contiguous blocks in rank order, so the samples
  of a contiguous index range occupy one contiguous stretch along ``vdim``.
- file attributes ``total_ndata`` and (usually) ``dataset_name``; optionally ``pna_deg``,
  ``minmax_node_feature``, ``minmax_graph_feature``, ``energy_linear_regression_coeff``.

Values are written as they were in the sample: HydraGNN's foundation-model examples store float32
``pos (n,3)``, ``cell (3,3)`` (the identity for molecules), int32 ``pbc (3,)`` and ``natoms (1,)``,
float32 ``atomic_numbers (n,1)``, ``x (n,7)`` = ``[Z, x, y, z, fx, fy, fz]``, ``energy`` and
``energy_per_atom`` of shape ``(1,)`` or ``(1,1)``, ``forces (n,3)``, ``stress (3,3)``, ``y`` (the graph
target, usually the energy), ``edge_index (2,E)``, ``edge_attr``, ``edge_shifts``, ``graph_attr`` and
``chemical_composition (118,1)``. Strings are stored as uint8 bytes.

How gfmkit's fields are made from them (and the decisions where the file leaves room):

- ``numbers``: ``atomic_numbers``, else the first column of ``x``; rounded to integers. When taken from
  ``x``, the first sample of the split must hold integers in 1..118, or the file is refused.
- ``positions``: ``pos`` (required). ``natoms`` is its per-sample count; a stored ``natoms`` must agree.
- ``cell``: ``cell`` as stored, reshaped to 3x3; zeros for structures periodic in no direction (as in
  gfmkit's own stores, replacing the identity placeholder HydraGNN writes for molecules) and when the
  file has no ``cell``.
- ``pbc``: ``pbc`` as booleans. Without a ``pbc`` field a structure counts as periodic in all directions
  when its cell has non-zero volume and is not exactly the identity (HydraGNN's placeholder for
  molecules), otherwise as non-periodic.
- ``forces``: ``forces``; without that field, columns 4:7 of ``x`` when ``forces_from_x`` is true, ``x``
  has exactly 7 columns and columns 1:4 of the split's first sample equal its ``pos`` (so the columns do
  follow the ``[Z, x, y, z, fx, fy, fz]`` convention). Wider ``x`` (e.g. qm7x) is never used for forces.
- ``energy`` (``energy="auto"``): ``energy``, else ``energy_per_atom * natoms``, else ``y`` when it is
  one number per structure; none otherwise. ``"energy"``, ``"energy_per_atom"``, ``"y"`` or
  ``"y_per_atom"`` force a source (an error if it is missing or not one number per structure);
  ``None`` reads no energy.
- ``stress``: ``stress`` reshaped to 3x3 from 9 numbers, or from 6 in ASE's Voigt order
  (xx, yy, zz, yz, xz, xy); taken as eV/Å^3 with ASE's sign, as HydraGNN's examples write it.
- The split of every structure is its label: ``trainset`` -> ``train``, ``valset`` -> ``val``,
  ``testset`` -> ``test`` (other labels are kept as they are); ``source_index`` is its index in the split.

Per-structure fields of the opened range are read on open; per-atom fields structure by structure or
once for the range (``preload=True``), always by ADIOS2 selection. Where the Min/Max
statistics of a ``variable_count`` show one extent for every sample (cell, pbc, energy, ...) and the
global shape agrees, counts and offsets follow from the index and are not read. ``sample(i)`` returns a
structure's HydraGNN fields as stored (``edge_index``, ``edge_attr``, ...), each in its original shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adios2
import numpy as np
import pandas as pd
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.data import store_format as fmt
from gfmkit.data.ranged import RangedStore, as_list, periodicity
from gfmkit.data.store_read import StoreError
from gfmkit.data.structure import Structure

__all__ = ["HydraGNNFormatError", "HydraGNNStore"]

#: HydraGNN split labels and gfmkit's split names, in gfmkit's order.
SPLIT_LABELS = {"trainset": "train", "valset": "val", "testset": "test"}
ENERGY_MODES = ("auto", "energy", "energy_per_atom", "y", "y_per_atom")
_VOIGT = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])


class HydraGNNFormatError(StoreError):
    """A HydraGNN file cannot be read as asked: missing split or field, or an unexpected shape."""


@dataclass
class _Field:
    """One HydraGNN field of the split, with the per-sample counts and offsets of the opened range."""

    name: str  # HydraGNN key, e.g. "pos"
    var: str  # ADIOS2 variable, "<label>/<key>"
    vdim: int
    shape: list[int]  # global shape
    dtype: np.dtype
    count: np.ndarray  # (S,) extent of each sample of the range along vdim
    offset: np.ndarray  # (S,) global start along vdim
    fixed: int | None  # the extent every sample has (whole split by statistics, else this range), or None

    @property
    def sample_shape(self) -> list[int] | None:
        """The per-sample shape when every sample has the same one, else None."""
        if self.fixed is None:
            return None
        shape = list(self.shape)
        shape[self.vdim] = self.fixed
        return shape

    @property
    def sample_size(self) -> int | None:
        shape = self.sample_shape
        return None if shape is None else int(np.prod(shape))

    def span(self, i: int, j: int) -> tuple[int, int]:
        """First and one-past-last index along ``vdim`` covering samples ``[i, j)`` of the range."""
        if i >= j:
            return 0, 0
        ends = self.offset[i:j] + self.count[i:j]
        return int(self.offset[i:j].min()), int(ends.max())


class HydraGNNStore(RangedStore):
    """One split of a HydraGNN ADIOS2 file, or the contiguous range ``[start, stop)`` of it.

    Same reading interface as :class:`gfmkit.data.Store` (``len``, indexing, ``arrays``, ``atoms``,
    ``subset``, ``shard``, ``info``, ``table``); see the module docstring for the layout and how
    gfmkit's fields are made from HydraGNN's. ``split`` is a label in the file (``trainset``,
    ``valset``, ``testset``; ``train``/``val``/``test`` are accepted for them). ``dataset`` overrides the
    file's ``dataset_name`` attribute and is needed when the file has none.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        split: str = "trainset",
        start: int = 0,
        stop: int | None = None,
        preload: bool = False,
        dataset: str | None = None,
        level_of_theory: str = "unknown",
        energy: str | None = "auto",
        forces_from_x: bool = True,
    ):
        if energy not in ENERGY_MODES and energy is not None:
            raise ValueError(f"energy={energy!r}: expected one of {', '.join(ENERGY_MODES)} or None")
        self.path = Path(path)
        self._reader: Any = None
        self._pid = -1
        self._options = dict(
            dataset=dataset, level_of_theory=level_of_theory, energy=energy, forces_from_x=forces_from_x
        )
        self.attrs, self._variables = self._read_metadata()
        self.split_names = self._split_names()
        self.label = self._label(split)
        self._field_names = self._list_fields()
        self.total = int(np.asarray(self.attrs[f"{self.label}/ndata"]).ravel()[0])
        stop = self.total if stop is None else stop
        if not 0 <= start <= stop <= self.total:
            raise HydraGNNFormatError(
                f"{self.path}: range [{start}, {stop}) is outside split {self.label!r} of {self.total} structures"
            )
        self.start, self.stop = start, stop
        self.preloaded = preload
        self._name = self._dataset_name(dataset)
        self._level_of_theory = level_of_theory
        self._fields: dict[str, _Field] = {}
        # gfmkit field -> the HydraGNN field it comes from (None: not available).
        self._src, self._energy_per_atom = self._choose_sources(energy, forces_from_x)
        self._per_structure = self._read_per_structure()
        self._per_atom: dict[str, np.ndarray] = {}
        self._numbers_cache: np.ndarray | None = None
        if preload:
            self._per_atom = {k: self._read_span(self._field(k), 0, len(self)) for k in self._atom_sources()}

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def level_of_theory(self) -> str:
        return self._level_of_theory

    @property
    def fields(self) -> list[str]:
        """HydraGNN fields of the opened split, in the file's ``keys`` order."""
        return list(self._field_names)

    @property
    def targets(self) -> list[str]:
        """The labels this split provides: a subset of energy, forces, stress."""
        return [t for t in keys.POTENTIAL_TARGETS if self._src.get(t) is not None]

    @property
    def sources(self) -> dict[str, str | None]:
        """Where each gfmkit field comes from, e.g. ``{"forces": "x[:, 4:7]", "energy": "y"}``."""
        shown = {fmt.NUMBERS: "x[:, 0]", fmt.FORCES: "x[:, 4:7]"}
        out = {k: (shown[k] if v == "x" else v) for k, v in self._src.items()}
        if self._energy_per_atom:
            out[fmt.ENERGY] = f"{self._src[fmt.ENERGY]} * natoms"
        return out

    @property
    def per_atom_fields(self) -> list[str]:
        return [fmt.NUMBERS, fmt.POSITIONS] + ([fmt.FORCES] if keys.FORCES in self.targets else [])

    @property
    def reference_energies(self) -> None:
        return None

    @property
    def elements(self) -> list[str]:
        """Chemical symbols present in this range (reads the range's atomic numbers once)."""
        return [chemical_symbols[z] for z in np.flatnonzero(self._element_counts())]

    def info(self) -> dict[str, Any]:
        """Counts over the whole file; targets, elements, periodicity and energy statistics of this range."""
        counts = self._element_counts()
        present = np.flatnonzero(counts)
        sizes = {name: self._split_size(label) for label, name in SPLIT_LABELS.items()}
        sizes.update({label: self._split_size(label) for label in self.split_names if label not in SPLIT_LABELS})
        energy = self._per_structure.get(fmt.ENERGY)
        stats: dict[str, float] = {}
        if energy is not None and len(energy):
            epa = energy / self.natoms
            stats = dict(zip(fmt.STATS_ORDER, map(float, fmt.summary_stats(epa))))
        total = self.attrs.get("total_ndata")
        return {
            "dataset": self.name,
            "level_of_theory": self.level_of_theory,
            "path": str(self.path),
            "format": "hydragnn",
            "split": self.label,
            "range": [self.start, self.stop],
            "structures": int(np.asarray(total).ravel()[0]) if total is not None else sum(sizes.values()),
            "atoms": sum(self._split_atoms(label) for label in self.split_names),
            "targets": self.targets,
            "sources": self.sources,
            "fields": self.fields,
            "elements": [chemical_symbols[z] for z in present],
            "element_counts": {chemical_symbols[z]: int(counts[z]) for z in present},
            "periodic": periodicity(self._per_structure[fmt.PBC]),
            "energy_per_atom": stats,
            "split_sizes": sizes,
            "reference_energies": None,
        }

    # -- access -----------------------------------------------------------------------------------
    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """Structure ``index`` as arrays keyed by gfmkit store variable name (the fast path for loaders)."""
        i = self._normalise(index)
        out = {name: values[i] for name, values in self._per_structure.items()}
        raw = {k: self._atom_array(k, i) for k in self._atom_sources()}
        out.update(self._per_atom_arrays(raw, int(self.natoms[i])))
        return out

    def sample(self, index: int, fields: list[str] | None = None) -> dict[str, np.ndarray | str]:
        """Structure ``index`` as HydraGNN stored it: field -> array of the original shape (uint8 -> str)."""
        i = self._normalise(index)
        out: dict[str, np.ndarray | str] = {}
        for name in self.fields if fields is None else fields:
            value = self._read_span(self._field(name), i, i + 1)
            out[name] = value.tobytes().decode("utf-8") if value.dtype == np.uint8 else value
        return out

    def subset(self, start: int, stop: int, *, preload: bool | None = None) -> HydraGNNStore:
        """The contiguous sub-range ``[start, stop)`` of this range, as its own store."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"subset [{start}, {stop}) outside this range of {len(self)} structures")
        preload = self.preloaded if preload is None else preload
        start, stop = self.start + start, self.start + stop
        return HydraGNNStore(self.path, split=self.label, start=start, stop=stop, preload=preload, **self._options)

    def table(self) -> pd.DataFrame:
        """One row per structure of this range: index (in the split), natoms, energy, periodic, split."""
        frame = pd.DataFrame({"index": np.arange(self.start, self.stop), keys.NATOMS: self.natoms})
        if fmt.ENERGY in self._per_structure:
            frame[fmt.ENERGY] = self._per_structure[fmt.ENERGY]
            frame[keys.ENERGY_PER_ATOM] = frame[fmt.ENERGY] / frame[keys.NATOMS]
        frame["periodic"] = self._per_structure[fmt.PBC].all(axis=1)
        frame[keys.SPLIT] = SPLIT_LABELS.get(self.label, self.label)
        return frame

    # -- opening ----------------------------------------------------------------------------------
    def _read_metadata(self) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        attrs, variables = self._file_metadata(HydraGNNFormatError, "no such file")
        if fmt.A_FORMAT in attrs:
            raise HydraGNNFormatError(f"{self.path}: a gfmkit store, not a HydraGNN file: use gfmkit.data.Store")
        if not any(a.endswith("/ndata") for a in attrs):
            raise HydraGNNFormatError(f"{self.path}: not a HydraGNN file (no <split>/ndata attribute)")
        return attrs, variables

    def _split_names(self) -> list[str]:
        labels = [a[: -len("/ndata")] for a in self.attrs if a.endswith("/ndata")]
        return [s for s in SPLIT_LABELS if s in labels] + sorted(s for s in labels if s not in SPLIT_LABELS)

    def _label(self, split: str) -> str:
        aliases = {v: k for k, v in SPLIT_LABELS.items()}
        label = split if split in self.split_names else aliases.get(split, split)
        if label not in self.split_names:
            raise HydraGNNFormatError(
                f"{self.path}: no split {split!r}; the file has {', '.join(map(repr, self.split_names))}"
            )
        return label

    def _list_fields(self) -> list[str]:
        """Fields of the split: variables ``<label>/<k>`` with a ``variable_dim``, in ``keys`` order."""
        prefix = self.label + "/"
        present = {
            v[len(prefix) :]
            for v in self._variables
            if v.startswith(prefix) and f"{v}/variable_dim" in self.attrs and "/" not in v[len(prefix) :]
        }
        order = as_list(self.attrs.get(f"{self.label}/keys", []))
        return [k for k in order if k in present] + sorted(present.difference(order))

    def _dataset_name(self, override: str | None) -> str:
        if override is not None:
            return override
        value = self.attrs.get("dataset_name")
        if isinstance(value, (list, tuple, np.ndarray)):
            value = value[0] if len(value) else None
        if not value:
            raise HydraGNNFormatError(
                f"{self.path}: the file has no dataset_name attribute; name the dataset with dataset=..."
            )
        return str(value)

    def _error(self, message: str) -> HydraGNNFormatError:
        """An error naming the file and the split."""
        return HydraGNNFormatError(f"{self.path}: split {self.label!r} {message}")

    def _missing(self, what: str) -> HydraGNNFormatError:
        return self._error(f"has no field {what}; it has {', '.join(self.fields)}")

    def _has(self, name: str) -> bool:
        return name in self._field_names

    def _field(self, name: str) -> _Field:
        """A field with the counts and offsets of this range (from statistics where they fix them)."""
        if name in self._fields:
            return self._fields[name]
        if not self._has(name):
            raise self._missing(repr(name))
        var = f"{self.label}/{name}"
        meta = self._variables[var]
        shape = [int(x) for x in meta["Shape"].split(",")] if meta.get("Shape") else []
        vdim = int(np.asarray(self.attrs[f"{var}/variable_dim"]).ravel()[0])
        if not 0 <= vdim < max(len(shape), 1) or not shape:
            raise self._error(f"field {name!r}: variable_dim {vdim} for shape {shape}")
        count_meta = self._variables.get(f"{var}/variable_count", {})
        n = len(self)
        fixed = _fixed_count(count_meta, shape[vdim], self.total)
        if fixed is not None:
            # One extent for every sample: offsets are the global index times it (rank blocks are contiguous).
            count = np.full(n, fixed, dtype=np.int64)
            offset = np.arange(self.start, self.stop, dtype=np.int64) * fixed
        else:
            count, offset = (self._read_1d(f"{var}/variable_{s}", self.start, n) for s in ("count", "offset"))
            if n and count.min() == count.max():
                fixed = int(count[0])
            elif not n:  # no usable statistics and an empty range: ask sample 0
                fixed = int(self._read_1d(f"{var}/variable_count", 0, 1)[0])
        dtype = np.dtype(adios2.type_adios_to_numpy(meta["Type"]))
        field = _Field(name, var, vdim, shape, dtype, count, offset, fixed)
        self._fields[name] = field
        return field

    def _choose_sources(self, energy: str | None, forces_from_x: bool) -> tuple[dict[str, str | None], bool]:
        """The HydraGNN field behind each gfmkit field, and whether the energy is per atom."""
        self._per_atom_field("pos", 3, required="'pos' (positions)")
        src: dict[str, str | None] = {fmt.NUMBERS: "atomic_numbers", fmt.POSITIONS: "pos", fmt.FORCES: None}
        if self._per_atom_field("atomic_numbers", 1) is None:
            self._per_atom_field("x", None, required="'atomic_numbers' or 'x' (atomic numbers)")
            src[fmt.NUMBERS] = "x"
            self._check_x_numbers()
        if self._per_atom_field("forces", 3) is not None:
            src[fmt.FORCES] = "forces"
        elif forces_from_x and (x := self._per_atom_field("x", None)) is not None:
            if x.shape[1:] == [7] and self._x_has_positions():
                src[fmt.FORCES] = "x"
        src[fmt.ENERGY], per_atom = self._energy_source(energy)
        src[fmt.STRESS] = "stress" if self._has("stress") else None
        return src, per_atom

    def _per_atom_field(self, name: str, width: int | None, required: str | None = None) -> _Field | None:
        """A per-atom field (concatenated along axis 0, ``width`` numbers per atom), or None if absent."""
        if not self._has(name):
            if required:
                raise self._missing(required)
            return None
        field = self._field(name)
        columns = int(np.prod(field.shape[1:]))
        if field.vdim != 0 or len(field.shape) > 2 or (width is not None and columns != width):
            per_atom = "F" if width is None else width
            shape, vdim = field.shape, field.vdim
            raise self._error(f"field {name!r}: shape {shape}, variable_dim {vdim}; expected (atoms, {per_atom})")
        return field

    def _first_sample(self, name: str) -> np.ndarray:
        """Sample 0 of the split (not of the range), so every range of a file decides alike."""
        field = self._field(name)
        var, shape = field.var, list(field.shape)
        offset, count = (int(self._read_1d(f"{var}/variable_{s}", 0, 1)[0]) for s in ("offset", "count"))
        start = [0] * len(shape)
        start[field.vdim], shape[field.vdim] = offset, count
        return self._read_box(field, start, shape)

    def _check_x_numbers(self) -> None:
        z = self._first_sample("x")[:, 0]
        if not (np.allclose(z, np.rint(z), atol=1e-3) and np.all((z >= 0.5) & (z <= 118.5))):
            raise self._error("has no 'atomic_numbers' and column 0 of 'x' is not atomic numbers")

    def _x_has_positions(self) -> bool:
        x, pos = self._first_sample("x"), self._first_sample("pos")
        return x.shape[0] == pos.shape[0] and np.allclose(x[:, 1:4], pos, atol=1e-4)

    def _energy_source(self, mode: str | None) -> tuple[str | None, bool]:
        """The field the energy comes from and whether it is per atom, by the ``energy=`` mode."""
        if mode is None:
            return None, False
        if mode == "auto":
            for name in ("energy", "energy_per_atom", "y"):
                if self._has(name) and self._is_scalar(name):
                    return name, name == "energy_per_atom"
            return None, False
        name = "y" if mode == "y_per_atom" else mode
        if not self._has(name):
            raise self._missing(f"{name!r} (energy={mode!r})")
        if not self._is_scalar(name):
            raise self._error(f"field {name!r} is not one number per structure (energy={mode!r})")
        return name, mode.endswith("_per_atom")

    def _is_scalar(self, name: str) -> bool:
        return self._field(name).sample_size == 1

    def _read_per_structure(self) -> dict[str, np.ndarray]:
        n = len(self)
        natoms = self._field("pos").count.astype(np.int64)
        if self._has("natoms") and self._is_scalar("natoms"):
            stored = self._stacked("natoms").reshape(n)
            if not np.array_equal(stored, natoms):
                bad = int(np.flatnonzero(stored != natoms)[0])
                stored_n, rows = int(stored[bad]), int(natoms[bad])
                raise self._error(f"structure {self.start + bad}: 'natoms' is {stored_n} but 'pos' has {rows} rows")
        out: dict[str, np.ndarray] = {fmt.NATOMS: natoms, fmt.ATOM_OFFSET: self._field("pos").offset.copy()}
        out[fmt.CELL] = self._cells()
        out[fmt.PBC] = self._pbcs(out[fmt.CELL])
        out[fmt.CELL][~out[fmt.PBC].any(axis=1)] = 0.0  # gfmkit's contract: zero cell when not periodic
        if self._src[fmt.ENERGY] is not None:
            value = self._stacked(self._src[fmt.ENERGY]).reshape(n).astype(np.float64)
            out[fmt.ENERGY] = value * natoms if self._energy_per_atom else value
        if self._src[fmt.STRESS] is not None:
            out[fmt.STRESS] = self._stresses()
        if self.label in SPLIT_LABELS:
            out[fmt.SPLIT] = np.full(n, keys.SPLITS.index(SPLIT_LABELS[self.label]), dtype=np.uint8)
        out[fmt.SOURCE_INDEX] = np.arange(self.start, self.stop, dtype=np.int64)
        return out

    def _stacked(self, name: str) -> np.ndarray:
        """A fixed-shape field for every structure of the range, as ``(S, *sample_shape)``."""
        field = self._field(name)
        shape = field.sample_shape
        if shape is None:
            raise self._error(f"field {name!r} changes shape between structures")
        lo, _ = field.span(0, len(self))
        slab = self._read_span(field, 0, len(self))
        index = (field.offset - lo)[:, None] + np.arange(shape[field.vdim])
        return np.moveaxis(np.take(slab, index, axis=field.vdim), field.vdim, 0)

    def _cells(self) -> np.ndarray:
        n = len(self)
        if not self._has("cell"):
            return np.zeros((n, 3, 3))
        cell = _rows(self._stacked("cell"))
        if cell.shape[1] != 9:
            raise self._error(f"field 'cell' has {cell.shape[1]} numbers, not 9")
        return cell.reshape(n, 3, 3).astype(np.float64)

    def _pbcs(self, cell: np.ndarray) -> np.ndarray:
        n = len(self)
        if not self._has("pbc"):
            # Decision: no pbc field -> periodic where the cell is a real one (non-zero volume and not
            # the identity that HydraGNN's writers put in for molecules).
            real = (np.abs(np.linalg.det(cell)) > 1e-8) & ~np.all(np.isclose(cell, np.eye(3)), axis=(1, 2))
            return np.repeat(real[:, None], 3, axis=1)
        pbc = _rows(self._stacked("pbc"))
        if pbc.shape[1] not in (1, 3):
            raise self._error(f"field 'pbc' has {pbc.shape[1]} values, not 3")
        return np.broadcast_to(pbc != 0, (n, 3)).copy()

    def _stresses(self) -> np.ndarray:
        n = len(self)
        stress = _rows(self._stacked("stress")).astype(np.float64)
        if stress.shape[1] == 6:
            return stress[:, _VOIGT]
        if stress.shape[1] != 9:
            raise self._error(f"field 'stress' has {stress.shape[1]} values, not 9 or 6")
        return stress.reshape(n, 3, 3)

    # -- per-atom reading -------------------------------------------------------------------------
    def _atom_sources(self) -> list[str]:
        """HydraGNN fields that per-atom arrays come from (``x`` once even when it gives two)."""
        names = [self._src[k] for k in (fmt.NUMBERS, fmt.POSITIONS, fmt.FORCES)]
        return list(dict.fromkeys(n for n in names if n is not None))

    def _atom_array(self, name: str, i: int) -> np.ndarray:
        field = self._field(name)
        if name in self._per_atom:
            lo, _ = field.span(0, len(self))
            first = int(field.offset[i]) - lo
            return self._per_atom[name][first : first + int(field.count[i])]
        return self._read_span(field, i, i + 1)

    def _per_atom_arrays(self, raw: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """gfmkit's per-atom arrays from the HydraGNN ones of one structure (or a whole range)."""
        out = {
            fmt.NUMBERS: _numbers(raw[self._src[fmt.NUMBERS]]),
            fmt.POSITIONS: raw["pos"].reshape(n, 3).astype(np.float64),
        }
        source = self._src[fmt.FORCES]
        if source is not None:
            forces = raw["forces"] if source == "forces" else raw["x"][:, 4:7]
            out[fmt.FORCES] = forces.reshape(n, 3).astype(np.float64)
        return out

    def _element_counts(self) -> np.ndarray:
        if self._numbers_cache is None:
            name = self._src[fmt.NUMBERS]
            values = self._per_atom.get(name)
            if values is None:
                values = self._read_span(self._field(name), 0, len(self))
            self._numbers_cache = np.bincount(_numbers(values), minlength=len(chemical_symbols))
        return self._numbers_cache

    def _split_size(self, label: str) -> int:
        value = self.attrs.get(f"{label}/ndata")
        return 0 if value is None else int(np.asarray(value).ravel()[0])

    def _split_atoms(self, label: str) -> int:
        """Atoms of a whole split, from the global shape of its ``pos`` (no data read)."""
        meta = self._variables.get(f"{label}/pos")
        return int(meta["Shape"].split(",")[0]) if meta and meta.get("Shape") else 0

    # -- ADIOS2 selections ------------------------------------------------------------------------
    def _read_span(self, field: _Field, i: int, j: int) -> np.ndarray:
        """Samples ``[i, j)`` of the range: one selection along ``vdim``, full extent elsewhere."""
        lo, hi = field.span(i, j)
        start, count = [0] * len(field.shape), list(field.shape)
        start[field.vdim], count[field.vdim] = lo, hi - lo
        return self._read_box(field, start, count)

    def _read_box(self, field: _Field, start: list[int], count: list[int]) -> np.ndarray:
        if 0 in count:
            return np.zeros(count, dtype=field.dtype)
        return self.reader.read(field.var, start, count)

    def _read_1d(self, var: str, first: int, n: int) -> np.ndarray:
        if var not in self._variables:
            raise self._error(f"variable {var!r} missing")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return self.reader.read(var, [first], [n]).astype(np.int64)

    # -- internals --------------------------------------------------------------------------------
    def _structure(self, arrays: dict[str, np.ndarray]) -> Structure:
        energy = arrays.get(fmt.ENERGY)
        return Structure(
            numbers=arrays[fmt.NUMBERS].astype(np.int64),
            positions=arrays[fmt.POSITIONS],
            cell=arrays[fmt.CELL],
            pbc=arrays[fmt.PBC].astype(bool),
            energy=None if energy is None else float(energy),
            forces=arrays.get(fmt.FORCES),
            stress=arrays.get(fmt.STRESS),
            dataset=self.name,
            level_of_theory=self.level_of_theory,
            split=SPLIT_LABELS.get(self.label, self.label),
            source_index=int(arrays[fmt.SOURCE_INDEX]),
        )

    def __repr__(self) -> str:
        where = "" if (self.start, self.stop) == (0, self.total) else f"[{self.start}:{self.stop}]"
        return (
            f"HydraGNNStore({self.name!r}, {self.label}{where}, {len(self)} structures, "
            f"{self.level_of_theory}, {str(self.path)!r})"
        )


def _numbers(values: np.ndarray) -> np.ndarray:
    """Atomic numbers from ``atomic_numbers`` ``(n,)``/``(n, 1)`` or the first column of ``x``."""
    return np.rint(_rows(values)[:, 0]).astype(np.int32)


def _fixed_count(meta: dict[str, str], extent: int, ndata: int) -> int | None:
    """The count every sample has, from ``variable_count``'s Min/Max statistics, or None.

    Trusted only when the global extent agrees (``extent == ndata * count``): a file written with
    statistics off reports Min = Max = 0 whatever the counts are.
    """
    try:
        low, high = int(meta["Min"]), int(meta["Max"])
    except (KeyError, ValueError):
        return None
    return low if low == high and extent == ndata * low else None


def _rows(values: np.ndarray) -> np.ndarray:
    """``values`` as a 2-D ``(len, rest)`` array (also when empty)."""
    return values.reshape(len(values), int(np.prod(values.shape[1:])))

