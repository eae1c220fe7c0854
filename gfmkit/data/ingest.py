"""Ingest: read sources, label, validate, and write one dataset's store (serially or on MPI ranks)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from gfmkit.comm import SerialComm
from gfmkit.data.labels import Problem, StructureError, structure_from_atoms
from gfmkit.data.sources import SourceLike, assign_units, units_of
from gfmkit.data.spec import DatasetSpec
from gfmkit.data.store_write import write_store
from gfmkit.data.structure import Structure
from gfmkit.data.validate import validate


@dataclass
class IngestReport:
    """What ingest read, kept and skipped (with every skipped structure's reasons)."""

    dataset: str
    read: int = 0
    kept: int = 0
    skipped: list[Problem] = field(default_factory=list)
    path: Path | None = None

    def table(self) -> pd.DataFrame:
        """One row per problem of a skipped structure: source, index, field, message."""
        return pd.DataFrame([vars(p) for p in self.skipped], columns=["source", "index", "field", "message"])

    def __str__(self) -> str:
        skipped = len({(p.source, p.index) for p in self.skipped})
        return f"{self.dataset}: read {self.read}, kept {self.kept}, skipped {skipped}"


def read_structures(
    sources: SourceLike | Sequence[SourceLike],
    spec: DatasetSpec,
    *,
    comm: Any = None,
    format: str | None = None,
    progress: bool = False,
) -> tuple[list[Structure], IngestReport]:
    """Read, label and validate this rank's share of ``sources`` under ``spec``.

    Returns this rank's structures (in input order) and a report that is the same on every rank. With
    ``spec.validation.policy == "fail"`` any problem on any rank raises :class:`StructureError` on every
    rank, listing the problems; with ``"skip"`` bad structures are dropped and listed in the report.
    """
    comm = comm or SerialComm()
    local_units = assign_units(units_of(sources, format=format), comm.size)[comm.rank]
    kept: list[Structure] = []
    positions: list[int] = []  # position of each kept structure in this rank's stream of inputs
    problems: list[Problem] = []
    read = 0
    bar = tqdm(desc=f"read {spec.name}", unit=" structures", disable=not progress or comm.rank != 0)
    for unit in local_units:
        index = unit.start - 1
        try:
            for index, atoms in unit.read():
                position, read = read, read + 1
                bar.update()
                structure, found = _label_and_validate(atoms, spec, unit.label, index)
                problems += found
                if not found:
                    kept.append(structure)
                    positions.append(position)
        except Exception as exc:  # an unreadable file must not leave other ranks waiting
            problems.append(Problem(unit.label, index + 1, "file", f"cannot be read: {exc}"))
    bar.close()
    # Every rank learns every problem, so all raise (or all report) together and none hangs.
    all_problems = [p for rank_problems in comm.allgather(problems) for p in rank_problems]
    counts = comm.allgather((read, len(kept)))
    offset = sum(r for r, _ in counts[: comm.rank])
    for structure, position in zip(kept, positions):  # position in the whole input, whatever the rank count
        structure.source_index = offset + position
    report = IngestReport(spec.name, sum(r for r, _ in counts), sum(k for _, k in counts), all_problems)
    if all_problems and spec.validation.policy == "fail":
        raise StructureError(all_problems)
    return kept, report


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
) -> IngestReport:
    """Read, validate and write ``sources`` as the store ``out`` for dataset ``spec``.

    Under MPI every rank calls this with the same arguments; each reads its contiguous share of the
    input and the store equals the one a single process writes. Nothing is written when validation
    fails under the ``fail`` policy.
    """
    structures, report = read_structures(sources, spec, comm=comm, format=format, progress=progress)
    report.path = write_store(structures, out, spec, comm=comm, engine=engine)
    return report
