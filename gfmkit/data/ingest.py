"""Ingest: read sources, label, validate, and write one dataset's store (serially or on MPI ranks)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gfmkit import keys
from gfmkit.comm import SerialComm
from gfmkit.data.labels import Problem, StructureError, structure_from_atoms
from gfmkit.data.sources import SourceLike, assign_units, units_of
from gfmkit.data.spec import DatasetSpec
from gfmkit.data.spill import Spill
from gfmkit.data.store_format import Block
from gfmkit.data.store_write import temporary_directory, write_spilled, write_store
from gfmkit.data.structure import Structure
from gfmkit.data.validate import validate
from gfmkit.outputs import agree, check_store_output
from gfmkit.progress import progress_bar


@dataclass
class IngestReport:
    """What ingest read, kept and skipped (with every skipped structure's reasons)."""

    dataset: str
    read: int = 0
    kept: int = 0
    skipped: list[Problem] = field(default_factory=list)
    path: Path | None = None
    source_offset: int = 0  # this rank's first input position (its share starts there)
    seconds: float = 0.0  # wall time of the whole conversion (read, validate, write)

    def table(self) -> pd.DataFrame:
        """One row per problem of a skipped structure: source, index, field, message."""
        return pd.DataFrame([vars(p) for p in self.skipped], columns=["source", "index", "field", "message"])

    def __str__(self) -> str:
        skipped = len({(p.source, p.index) for p in self.skipped})
        rate = f" in {self.seconds:.1f} s ({self.read / self.seconds:.0f} structures/s)" if self.seconds else ""
        return f"{self.dataset}: read {self.read}, kept {self.kept}, skipped {skipped}{rate}"


def read_structures(
    sources: SourceLike | Sequence[SourceLike],
    spec: DatasetSpec,
    *,
    comm: Any = None,
    format: str | None = None,
    progress: bool = False,
    sink: Callable[[list[Structure]], None] | None = None,
    chunk: int = 10_000,
) -> tuple[list[Structure], IngestReport]:
    """Read, label and validate this rank's share of ``sources`` under ``spec``.

    Returns this rank's structures (in input order) and a report that is the same on every rank. With
    ``spec.validation.policy == "fail"`` any problem on any rank raises :class:`StructureError` on every
    rank, listing the problems; with ``"skip"`` bad structures are dropped and listed in the report.
    With ``sink``, every ``chunk`` kept structures go to ``sink`` as they are read (their
    ``source_index`` counted from this rank's first input; ``report.source_offset`` is that input's
    position) and nothing is returned: memory holds one chunk.
    """
    comm = comm or SerialComm()
    local_units = assign_units(units_of(sources, format=format), comm.size)[comm.rank]
    kept: list[Structure] = []
    positions: list[int] = []  # position of each kept structure in this rank's stream of inputs
    problems: list[Problem] = []
    read = total_kept = 0
    bar = progress_bar(desc=f"read {spec.name}", unit=" structures", disable=not progress or comm.rank != 0)
    for unit in local_units:
        index = unit.start - 1
        try:
            for index, atoms in unit.read():
                position, read = read, read + 1
                bar.update()
                if isinstance(atoms, Exception):
                    problems.append(unreadable(unit.label, index, atoms))
                    continue
                structure, found = _label_and_validate(atoms, spec, unit.label, index)
                problems += found
                if not found:
                    kept.append(structure)
                    positions.append(position)
                    if sink is not None and len(kept) >= chunk:
                        total_kept += _flush(kept, positions, sink)
        except Exception as exc:  # an unreadable file must not leave other ranks waiting
            problems.append(unreadable(unit.label, index + 1, exc))
    bar.close()
    if sink is not None:
        total_kept += _flush(kept, positions, sink)
    # Every rank learns every problem, so all raise (or all report) together and none hangs.
    all_problems = [p for rank_problems in comm.allgather(problems) for p in rank_problems]
    counts = comm.allgather((read, total_kept + len(kept)))
    offset = sum(r for r, _ in counts[: comm.rank])
    for structure, position in zip(kept, positions):  # position in the whole input, whatever the rank count
        structure.source_index = offset + position
    report = IngestReport(spec.name, sum(r for r, _ in counts), sum(k for _, k in counts), all_problems)
    report.source_offset = offset
    if all_problems and spec.validation.policy == "fail":
        raise StructureError(all_problems)
    return kept, report


def _flush(kept: list[Structure], positions: list[int], sink: Callable[[list[Structure]], None]) -> int:
    """Hand the kept structures (source index = position on this rank) to ``sink``; empty both lists."""
    for structure, position in zip(kept, positions):
        structure.source_index = position
    sink(list(kept))
    count = len(kept)
    kept.clear()
    positions.clear()
    return count


def unreadable(source: str, index: int, exc: Exception) -> Problem:
    """The problem of a structure the reader could not parse, naming the field where it can tell."""
    arg = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
    if isinstance(arg, str) and re.fullmatch(r"[A-Z][a-z]{0,2}", arg):  # ase's symbol lookup
        return Problem(source, index, "numbers", f"unknown element {arg!r}")
    return Problem(source, index, "file", f"cannot be read: {exc}")


def _label_and_validate(atoms, spec: DatasetSpec, source: str, index: int) -> tuple[Structure | None, list[Problem]]:
    try:
        structure = structure_from_atoms(atoms, spec, source, index)
    except StructureError as exc:
        return None, exc.problems
    return structure, validate(structure, spec.validation, source, index)


def convert(
    sources: SourceLike | Sequence[SourceLike],
    out: str | os.PathLike,
    spec: DatasetSpec,
    *,
    comm: Any = None,
    format: str | None = None,
    progress: bool = True,
    engine: str = "BP5",
    overwrite: bool = False,
    chunk: int = 10_000,
) -> IngestReport:
    """Read, validate and write ``sources`` as the store ``out`` for dataset ``spec``, streaming: every
    ``chunk`` validated structures are spilled to disk beside ``out`` and the store is written from the
    chunks at the end, so memory holds one chunk whatever the input's size.

    Under MPI every rank calls this with the same arguments; each reads its contiguous share of the
    input and the store equals the one a single process writes. Nothing is written when validation
    fails under the ``fail`` policy. ``out`` is checked before anything is read: an existing store is
    replaced only with ``overwrite=True``, and a path that is not a gfmkit store never
    (:func:`gfmkit.outputs.check_store_output`).
    """
    comm = comm or SerialComm()
    out = Path(out)
    agree(comm, lambda: check_store_output(out, overwrite=overwrite))
    started = time.perf_counter()
    work = agree(comm, lambda: temporary_directory(out))
    try:
        spill = Spill(work / "spill", comm.rank)
        _, report = read_structures(sources, spec, comm=comm, format=format, progress=progress,
                                    sink=lambda chunk: spill.add(Block.from_structures(chunk, spec)), chunk=chunk)
    except BaseException:
        if comm.rank == 0:
            shutil.rmtree(work, ignore_errors=True)  # the spilled chunks: nothing of a failed conversion stays
        raise
    report.path = write_spilled(spill.chunks, report.source_offset, out, spec, work, comm=comm, engine=engine)
    report.seconds = time.perf_counter() - started
    return report


def convert_store(
    source: str | os.PathLike,
    out: str | os.PathLike,
    spec: DatasetSpec,
    *,
    comm: Any = None,
    progress: bool = True,
    engine: str = "BP5",
    overwrite: bool = False,
) -> IngestReport:
    """A store file (a HydraGNN ``.bp`` with its splits, or another gfmkit store) as a gfmkit store of
    dataset ``spec``: every structure validated, its split kept. Under MPI each rank reads a contiguous
    share and the result equals a serial conversion."""
    from gfmkit.data.readers import open_store

    comm = comm or SerialComm()
    agree(comm, lambda: check_store_output(out, overwrite=overwrite))
    store = open_store(source, dataset=spec.name, level_of_theory=spec.level_of_theory)
    bounds = np.linspace(0, len(store), comm.size + 1).round().astype(int)
    kept, problems = [], []
    for index in progress_bar(range(bounds[comm.rank], bounds[comm.rank + 1]), desc=f"read {spec.name}",
                              unit=" structures", disable=not progress or comm.rank != 0):
        structure = store[index]
        structure.dataset, structure.level_of_theory, structure.source_index = spec.name, spec.level_of_theory, index
        found = [Problem(str(source), index, target, "declared target is missing in the file")
                 for target in spec.targets if _label_of(structure, target) is None]
        found = found or validate(structure, spec.validation, str(source), index)
        problems += found
        if not found:
            kept.append(structure)
    all_problems = [p for rank_problems in comm.allgather(problems) for p in rank_problems]
    report = IngestReport(spec.name, len(store), len(store) - len({(p.source, p.index) for p in all_problems}), all_problems)
    if all_problems and spec.validation.policy == "fail":
        raise StructureError(all_problems)
    report.path = write_store(kept, out, spec, comm=comm, engine=engine, overwrite=overwrite, keep_splits=True)
    return report


def _label_of(structure: Structure, target: str) -> Any:
    return getattr(structure, target) if target in keys.POTENTIAL_TARGETS else structure.properties.get(target)
