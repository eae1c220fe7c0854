"""Write a gfmkit store from one process or many MPI ranks, atomically.

Each rank passes its own structures; the store holds them in rank order (rank 0's first), so a store
written by N ranks is identical in content to one written serially from the concatenated list.

Two parallel paths:

* ADIOS2 built with MPI (HPC sites): every rank opens the file collectively and puts its own block at
  its global offset (offsets by an exclusive scan of the counts).
* ADIOS2 without MPI (the PyPI wheel): rank 0 is the only writer. It puts its block, then receives each
  other rank's block in chunks of at most ``chunk_bytes`` and flushes every chunk to disk
  (``PerformDataWrite``), so no rank ever holds more than its own block plus one chunk.

Either way the store appears under its final name only when complete (temporary name, then rename),
and every rank agrees that its input is valid before anything is written, so a bad structure on one
rank can neither hang the others nor leave a half store behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import adios2
import numpy as np
from adios2 import bindings

from gfmkit import keys
from gfmkit._version import __version__
from gfmkit.comm import SerialComm
from gfmkit.data import store_format as fmt
from gfmkit.data.spec import DatasetSpec
from gfmkit.data.store_check import write_manifest
from gfmkit.data.structure import Structure
from gfmkit.files import remove_stale_temporaries, replace_path, temporary_sibling
from gfmkit.log import get_logger
from gfmkit.outputs import OutputError, agree, check_store_output

log = get_logger(__name__)

DEFAULT_CHUNK_BYTES = 64 << 20


def write_store(
    structures: Sequence[Structure],
    path: str | os.PathLike,
    spec: DatasetSpec,
    *,
    comm: Any = None,
    engine: str = "BP5",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    parallel_io: bool | None = None,
    overwrite: bool = False,
    keep_splits: bool = False,
) -> Path:
    """Write ``structures`` (this rank's block) as the store ``path`` for dataset ``spec``; return the path.

    Under MPI pass ``comm`` (an mpi4py communicator); every rank must call this, ranks without
    structures included. ``parallel_io`` forces (True) or forbids (False) collective ADIOS2 writes;
    by default they are used when ADIOS2 was built with MPI. An existing ``path`` is replaced only
    with ``overwrite=True`` and only if it is a gfmkit store (:func:`gfmkit.outputs.check_store_output`);
    every rank raises the same :class:`~gfmkit.outputs.OutputError` otherwise. ``keep_splits`` keeps
    each structure's own ``split`` (a converted store's) instead of drawing splits from the spec's seed.
    """
    comm = comm or SerialComm()
    path = Path(path)
    agree(comm, lambda: check_store_output(path, overwrite=overwrite))
    block = fmt.Block.from_structures(list(structures), spec)
    counts = np.array(comm.allgather((block.n_structures, block.n_atoms)), dtype=np.int64).reshape(-1, 2)
    n_structures, n_atoms = (int(x) for x in counts.sum(axis=0))
    if n_structures == 0:
        raise ValueError(f"{path}: no structures to write for dataset {spec.name!r}")

    # Global quantities, computed on rank 0 from gathered per-structure values (O(structures) memory).
    given = np.array([keys.SPLITS.index(s.split) for s in structures], dtype=np.uint8) if keep_splits else None
    gathered = comm.gather(
        (block.per_structure[fmt.NATOMS], block.per_structure.get(fmt.ENERGY), np.bincount(block.per_atom[fmt.NUMBERS], minlength=119),
         given),
        root=0,
    )
    attrs = split = None
    if comm.rank == 0:
        natoms = np.concatenate([g[0] for g in gathered])
        energy = np.concatenate([g[1] for g in gathered]) if fmt.ENERGY in block.per_structure else None
        element_counts = np.sum([g[2] for g in gathered], axis=0)
        split = (np.concatenate([g[3] for g in gathered]) if keep_splits
                 else fmt.split_codes(n_structures, spec.split_fractions, spec.split_seed))
        attrs = _attributes(spec, block, natoms, energy, element_counts, split)
    if parallel_io is None:  # collective ADIOS2 writes need an mpi4py communicator (not torchrun's TorchComm)
        parallel_io = comm.size > 1 and bool(bindings.is_built_with_mpi) and type(comm).__module__.startswith("mpi4py")
    if parallel_io and not bindings.is_built_with_mpi:
        raise RuntimeError("parallel_io=True needs ADIOS2 built with MPI; this adios2 has no MPI support")

    tmp_dir = agree(comm, lambda: temporary_directory(path))
    tmp = tmp_dir / path.name
    try:
        if comm.size == 1 or not parallel_io:
            _write_via_rank0(comm, tmp, engine, block, counts, split, attrs, chunk_bytes)
        else:
            _write_collective(comm, tmp, engine, block, counts, split, attrs)
        comm.barrier()
        if comm.rank == 0:
            write_manifest(tmp)
            replace_path(tmp, path)
    except BaseException:
        if comm.rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if comm.size > 1:
            log.error("store write failed on rank %d; aborting the MPI job so no rank hangs", comm.rank)
            comm.Abort(1)
        raise
    if comm.rank == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    comm.barrier()
    log.info("wrote %s: %d structures, %d atoms", path, n_structures, n_atoms)
    return path


def temporary_directory(path: Path) -> Path:
    """Rank 0's fresh temporary beside ``path`` (the leftovers of killed writes to it removed first)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        return temporary_sibling(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here ({exc.strerror or exc})") from None


def _attributes(spec, block, natoms, energy, element_counts, split) -> dict[str, Any]:
    elements = np.flatnonzero(element_counts)
    attrs: dict[str, Any] = {
        fmt.A_FORMAT: fmt.FORMAT,
        fmt.A_SCHEMA: fmt.SCHEMA_VERSION,
        fmt.A_VERSION: __version__,
        fmt.A_DATASET: spec.name,
        fmt.A_LOT: spec.level_of_theory,
        fmt.A_DESCRIPTION: spec.description or spec.name,
        fmt.A_TARGETS: list(spec.targets),
        fmt.A_FIELDS: list(block.per_structure) + list(block.per_atom),
        fmt.A_ELEMENTS: elements.astype(np.int64),
        fmt.A_ELEMENT_COUNTS: element_counts[elements].astype(np.int64),
        fmt.A_NSTRUCT: len(natoms),
        fmt.A_NATOMS: int(natoms.sum()),
        fmt.A_SPLIT_SEED: int(spec.split_seed),
        fmt.A_SPLIT_FRACTIONS: np.asarray(spec.split_fractions, dtype=np.float64),
        fmt.A_SPLIT_SIZES: np.bincount(split, minlength=3).astype(np.int64),
    }
    attrs.update({f"units/{k}": v for k, v in fmt.UNITS.items()})
    if energy is not None:
        attrs[fmt.A_ENERGY_STATS] = fmt.summary_stats(energy)
        attrs[fmt.A_EPA_STATS] = fmt.summary_stats(energy / natoms)
    if spec.reference_energies:
        attrs[fmt.A_REF_ELEMENTS] = list(spec.reference_energies)
        attrs[fmt.A_REF_VALUES] = np.array(list(spec.reference_energies.values()), dtype=np.float64)
    return attrs


def _open(path: Path, engine: str, comm: Any = None):
    adios = adios2.Adios(comm=comm) if comm is not None else adios2.Adios()
    io = adios.declare_io(f"gfmkit-write-{path.name}")
    io.set_engine(engine)
    io.set_parameter("Profile", "Off")
    writer = io.open(str(path), bindings.Mode.Write, comm) if comm is not None else io.open(str(path), bindings.Mode.Write)
    writer.begin_step()
    return adios, io, writer


def _define(io, name: str, dtype, global_rows: int, tail: tuple[int, ...]):
    return io.define_variable(name, np.zeros(1, dtype=dtype), [global_rows, *tail], [0] * (1 + len(tail)), [0] * (1 + len(tail)))


def _put(writer, variable, rows: np.ndarray, start: int) -> None:
    if len(rows) == 0:
        return
    tail = list(rows.shape[1:])
    variable.set_selection([[start] + [0] * len(tail), [len(rows), *tail]])
    writer.put(variable, np.ascontiguousarray(rows), bindings.Mode.Sync)


def _global_arrays(block: fmt.Block, counts: np.ndarray, split: np.ndarray | None, rank: int):
    """(name, local rows, count column, first global row of this rank) per variable, in write order.

    The count column is 0 for per-structure and 1 for per-atom variables. ``split`` is this rank's slice
    of the split codes (None where rank 0 writes the global array itself).
    """
    s_first, a_first = int(counts[:rank, 0].sum()), int(counts[:rank, 1].sum())
    natoms = block.per_structure[fmt.NATOMS]
    offsets = a_first + np.concatenate([[0], np.cumsum(natoms)[:-1]]).astype(np.int64)[: len(natoms)]
    local_split = np.zeros(0, dtype=np.uint8) if split is None else split
    items = [(name, values, 0, s_first) for name, values in block.per_structure.items()]
    items += [(fmt.ATOM_OFFSET, offsets, 0, s_first), (fmt.SPLIT, local_split, 0, s_first)]
    items += [(name, values, 1, a_first) for name, values in block.per_atom.items()]
    return items


def _write_attributes(io, attrs: dict[str, Any]) -> None:
    for name, value in attrs.items():
        io.define_attribute(name, value)


def _write_via_rank0(comm, tmp: Path, engine: str, block, counts, split, attrs, chunk_bytes: int) -> None:
    """Rank 0 writes everything; other ranks stream their blocks to it chunk by chunk."""
    items = _global_arrays(block, counts, None, comm.rank)
    totals = counts.sum(axis=0)
    if comm.rank != 0:
        for tag, (name, values, _, _) in enumerate(items):
            if name != fmt.SPLIT:  # rank 0 holds the global split codes
                for lo, hi in _chunks(len(values), _row_bytes(values), chunk_bytes):
                    comm.Send(np.ascontiguousarray(values[lo:hi]), dest=0, tag=tag)
        return
    adios, io, writer = _open(tmp, engine)
    _write_attributes(io, attrs)
    for tag, (name, values, column, _) in enumerate(items):
        tail = values.shape[1:]
        variable = _define(io, name, values.dtype, int(totals[column]), tail)
        if name == fmt.SPLIT:
            _put(writer, variable, split, 0)
            continue
        _put(writer, variable, values, 0)
        start = int(counts[0, column])
        for source in range(1, comm.size):
            rows = int(counts[source, column])
            for lo, hi in _chunks(rows, _row_bytes(values), chunk_bytes):
                buffer = np.empty((hi - lo, *tail), dtype=values.dtype)
                comm.Recv(buffer, source=source, tag=tag)
                _put(writer, variable, buffer, start + lo)
                writer.perform_data_write()
            start += rows
    writer.end_step()
    writer.close()


def _write_collective(comm, tmp: Path, engine: str, block, counts, split, attrs) -> None:
    """Every rank puts its own block into one file opened collectively (ADIOS2 with MPI)."""
    if comm.rank == 0:
        bounds = np.concatenate([[0], np.cumsum(counts[:, 0])])
        split = [split[bounds[r] : bounds[r + 1]] for r in range(comm.size)]
    items = _global_arrays(block, counts, comm.scatter(split, root=0), comm.rank)
    totals = counts.sum(axis=0)
    adios, io, writer = _open(tmp, engine, comm)
    if comm.rank == 0:
        _write_attributes(io, attrs)
    for name, values, column, start in items:
        variable = _define(io, name, values.dtype, int(totals[column]), values.shape[1:])
        _put(writer, variable, values, start)
    writer.end_step()
    writer.close()


def _row_bytes(values: np.ndarray) -> int:
    return max(1, int(values.itemsize * np.prod(values.shape[1:], dtype=np.int64)))


def _chunks(rows: int, row_bytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    step = max(1, chunk_bytes // row_bytes)
    return [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]


def write_spilled(
    chunks: list[Path],
    source_offset: int,
    path: str | os.PathLike,
    spec: DatasetSpec,
    work: Path,
    *,
    comm: Any = None,
    engine: str = "BP5",
) -> Path:
    """Write the store ``path`` from every rank's spilled chunks (:mod:`gfmkit.data.spill`), in rank
    then chunk order, streaming one chunk at a time; ``source_offset`` is this rank's first input
    position (added to its chunks' local source indices). ``work`` is the conversion's temporary folder
    beside ``path`` (rank 0 removes it). Every rank returns the path, or raises rank 0's error."""
    comm = comm or SerialComm()
    path = Path(path)
    gathered = comm.gather((chunks, source_offset), root=0)
    outcome: tuple[str, Any] | None = None
    if comm.rank == 0:
        try:
            ordered = [(chunk, offset) for rank_chunks, offset in gathered for chunk in rank_chunks]
            _write_chunks(ordered, work / path.name, path, spec, engine)
            outcome = ("ok", None)
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it
            outcome = ("error", f"{path}: {exc}")
            error = exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    status, message = comm.bcast(outcome, root=0)
    if status == "error":
        if comm.rank == 0:
            raise error
        raise OutputError(message)
    return path


def _write_chunks(ordered: list[tuple[Path, int]], tmp: Path, path: Path, spec: DatasetSpec, engine: str) -> None:
    from gfmkit.data.spill import chunk_array, chunk_meta

    if not ordered:
        raise ValueError(f"no structures to write for dataset {spec.name!r}")
    meta = chunk_meta(ordered[0][0])
    natoms = np.concatenate([chunk_array(c, fmt.NATOMS) for c, _ in ordered]).astype(np.int64)
    energy = np.concatenate([chunk_array(c, fmt.ENERGY) for c, _ in ordered]) if fmt.ENERGY in meta["per_structure"] else None
    element_counts = np.sum([np.bincount(chunk_array(c, fmt.NUMBERS), minlength=119) for c, _ in ordered], axis=0)
    n_structures = len(natoms)
    split = fmt.split_codes(n_structures, spec.split_fractions, spec.split_seed)
    fields = fmt.Block({name: None for name in meta["per_structure"]}, {name: None for name in meta["per_atom"]})
    attrs = _attributes(spec, fields, natoms, energy, element_counts, split)
    adios, io, writer = _open(tmp, engine)
    try:
        _put_chunks(io, writer, ordered, meta, natoms, split, attrs)
    finally:
        writer.close()  # also on an error: ADIOS2 aborts the process when a writer is destroyed open
    write_manifest(tmp)
    replace_path(tmp, path)
    log.info("wrote %s: %d structures, %d atoms", path, len(natoms), int(natoms.sum()))


def _put_chunks(io, writer, ordered, meta, natoms, split, attrs) -> None:
    from gfmkit.data.spill import chunk_array, chunk_meta

    n_structures, n_atoms = len(natoms), int(natoms.sum())
    _write_attributes(io, attrs)
    structure_rows = [int(chunk_meta(c)["structures"]) for c, _ in ordered]
    atom_rows = [int(chunk_meta(c)["atoms"]) for c, _ in ordered]
    first_atoms = np.concatenate([[0], np.cumsum(atom_rows)[:-1]])
    starts = np.concatenate([[0], np.cumsum(structure_rows)[:-1]])
    names = [(n, 0) for n in meta["per_structure"]] + [(fmt.ATOM_OFFSET, 0), (fmt.SPLIT, 0)] + [(n, 1) for n in meta["per_atom"]]
    for name, column in names:
        if name == fmt.SPLIT:
            _put(writer, _define(io, name, split.dtype, n_structures, ()), split, 0)
            continue
        variable = None
        for (chunk, offset), start, first_atom in zip(ordered, starts, first_atoms):
            if name == fmt.ATOM_OFFSET:
                counts = chunk_array(chunk, fmt.NATOMS).astype(np.int64)
                values = first_atom + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            else:
                values = np.array(chunk_array(chunk, name))  # one chunk in memory, a plain array for ADIOS2
                if name == fmt.SOURCE_INDEX:
                    values = values + offset
            if variable is None:
                variable = _define(io, name, values.dtype, n_atoms if column else n_structures, values.shape[1:])
            _put(writer, variable, values, int(first_atom if column else start))
            writer.perform_data_write()  # to disk chunk by chunk: memory stays at one chunk
    writer.end_step()
