"""Building the demo stores: generate each dataset's structures (a contiguous block per MPI rank), then
the ingest path: label and validate them (:func:`gfmkit.data.ingest.read_structures`) and write one
store per dataset (:func:`gfmkit.data.store_write.write_store`)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.comm import SerialComm
from gfmkit.data.demo.catalogue import DEMO_DATASETS, DemoDataset, select_datasets
from gfmkit.data.ingest import read_structures
from gfmkit.data.labels import Problem, StructureError
from gfmkit.data.spec import DatasetSpec
from gfmkit.data.store_write import write_store
from gfmkit.data.structure import Structure
from gfmkit.log import get_logger
from gfmkit.outputs import agree, check_store_output
from gfmkit.progress import progress_bar

log = get_logger(__name__)


def generate_structures(name: str, seed: int, start: int, stop: int, *, progress: bool = False) -> list[Structure]:
    """Structures ``start`` to ``stop - 1`` of demo dataset ``name``, labelled and validated.

    Raises :class:`~gfmkit.data.StructureError` listing every problem if any structure fails to
    ingest or validate.
    """
    dataset = DEMO_DATASETS[name]
    structures, problems = _ingest_block(dataset, dataset.spec(seed), seed, start, stop, progress)
    if problems:
        raise StructureError(problems)
    return structures


def _generate_atoms(dataset: DemoDataset, seed: int, start: int, stop: int,
                    progress: bool) -> tuple[list[Atoms], list[int], list[Problem]]:
    """The labelled atoms of structures ``start`` to ``stop - 1``, their indices, and a problem for each
    structure whose calculation failed."""
    made: list[Atoms] = []
    indices: list[int] = []
    problems: list[Problem] = []
    for index in progress_bar(range(start, stop), desc=dataset.name, unit="structure", disable=not progress, leave=True):
        try:
            made.append(dataset.structure(seed, index))
        except Exception as error:  # noqa: BLE001 (a failed calculation becomes a problem every rank sees)
            problems.append(Problem(dataset.name, index, "generate", f"{type(error).__name__}: {error}"))
        else:
            indices.append(index)
    return made, indices, problems


def _ingest_block(dataset: DemoDataset, spec: DatasetSpec, seed: int, start: int, stop: int,
                  progress: bool) -> tuple[list[Structure], list[Problem]]:
    """Structures ``start`` to ``stop - 1`` through the ingest path, and every problem (by index)."""
    made, indices, problems = _generate_atoms(dataset, seed, start, stop, progress)
    # "skip": every problem comes back in the report, to be gathered from all ranks before anyone raises
    listing = dataclasses.replace(spec, validation=dataclasses.replace(spec.validation, policy="skip"))
    structures, report = read_structures(made, listing)
    for structure in structures:  # the ingest numbers the block's structures from 0
        structure.source_index = indices[structure.source_index]
    problems += [dataclasses.replace(p, source=dataset.name, index=indices[p.index]) for p in report.skipped]
    return structures, sorted(problems, key=lambda p: p.index)


def build_demo(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    scale: float = 1.0,
    datasets: Sequence[str] | None = None,
    progress: bool = True,
    comm: Any = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Generate the demo datasets and write one store per dataset as ``out_dir/<name>.bp``.

    Existing stores there are replaced only with ``overwrite=True`` (checked before anything is generated).

    ``seed`` fixes every structure and split; ``scale`` multiplies the structure counts (each dataset
    keeps at least :data:`MIN_STRUCTURES`); ``datasets`` picks a subset by name. Under MPI pass
    ``comm``: each rank generates a contiguous block of every dataset, and the stores equal those of
    one process. Every structure is read with :func:`~gfmkit.data.structure_from_atoms` and checked
    with :func:`~gfmkit.data.validate` (:func:`~gfmkit.data.read_structures`); any problem on any rank
    raises :class:`~gfmkit.data.StructureError` on every rank before the store is written.

    Returns one row per dataset: name, role, level_of_theory, targets, structures, atoms,
    periodicity, elements, path, seconds.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    comm = comm or SerialComm()
    out = Path(out_dir)
    rows = []
    names = select_datasets(datasets)
    agree(comm, lambda: [check_store_output(out / f"{name}.bp", overwrite=overwrite) for name in names])
    for name in names:
        started = time.perf_counter()
        dataset = DEMO_DATASETS[name]
        spec = dataset.spec(seed)
        n = dataset.size(scale)
        bounds = np.linspace(0, n, comm.size + 1).round().astype(int)
        start, stop = int(bounds[comm.rank]), int(bounds[comm.rank + 1])
        structures, problems = _ingest_block(dataset, spec, seed, start, stop, progress and comm.rank == 0)
        problems = [p for rank_problems in comm.allgather(problems) for p in rank_problems]
        if problems:
            raise StructureError(problems)
        path = write_store(structures, out / f"{name}.bp", spec, comm=comm, overwrite=overwrite)
        rows.append({"name": name, "role": dataset.role, keys.LEVEL_OF_THEORY: dataset.level_of_theory,
                     "targets": list(dataset.targets), "structures": n, **_composition(structures, comm),
                     "path": str(path), "seconds": round(time.perf_counter() - started, 2)})
        log.info("demo dataset %s: %d structures in %.1f s", name, n, rows[-1]["seconds"])
    return pd.DataFrame(rows)


def _composition(structures: list[Structure], comm: Any) -> dict[str, Any]:
    """Atoms, periodicity and elements of a dataset whose structures are spread over the ranks."""
    local = (
        sum(len(s) for s in structures),
        sorted({int(z) for s in structures for z in np.unique(s.numbers)}),
        sorted({_periodicity(s.pbc) for s in structures}),
    )
    gathered = comm.allgather(local)
    numbers = sorted({z for g in gathered for z in g[1]})
    kinds = {k for g in gathered for k in g[2]}
    return {"atoms": int(sum(g[0] for g in gathered)),
            "periodicity": "+".join(k for k in ("periodic", "molecular", "mixed") if k in kinds),
            "elements": [chemical_symbols[z] for z in numbers]}


def _periodicity(pbc: np.ndarray) -> str:
    if pbc.all():
        return "periodic"
    return "mixed" if pbc.any() else "molecular"
