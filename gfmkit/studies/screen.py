"""Screening: stream any source through every head of a model into a results store (``gfmkit screen``).

:func:`screen` reads or makes the source's structures, graphs them (vesin) and batches them by an edge
budget, runs ``model.predict`` once per batch (every head from one encoder pass; weighted energy,
disagreement and, when asked, weighted or per-head forces), and writes one row per structure into an
ADIOS2 results store (:mod:`gfmkit.data.results_store`).

Work proceeds in chunks of ``chunk_size`` structures. Each finished chunk is written, atomically, as its
own small store ``chunk-<index>.bp`` in a hidden work folder beside the output (``.<name>.screen-work``),
with the screen's settings in ``settings.json``. A screen started again with the same settings skips
the finished chunks, so one killed (even by SIGKILL) resumes where it stopped. When every chunk is
done rank 0 merges them in chunk order into the results store (atomically) and removes the work folder.
A chunk's batches and its rows depend only on the chunk, so the results store is the same, bit for
bit, whatever the number of ranks and however often the screen was resumed.

Under ``mpiexec``/``srun`` (or on ipyparallel MPI engines) the unfinished chunks are split into
contiguous runs, one per rank. A rank that fails logs its message and aborts the job (``MPI_Abort``),
so no rank waits forever. Every rank returns the same summary: structures, seconds and structures/s per
rank and in total, and the share of time spent waiting for data, in the model and writing.

The directory of a results store gets ``screen.json`` (the study's marker): every results store
screened into it, with its summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gfmkit._version import __version__
from gfmkit.comm import world
from gfmkit.config import ConfigError
from gfmkit.data import results_store as rs
from gfmkit.data.edge_batches import ChunkBatches, chunk_loader
from gfmkit.data.prefetch import (
    fork_available,
    pack_chunk_batch,
    process_prefetch,
    thread_prefetch,
    unpack_chunk_batch,
)
from gfmkit.data.screen_source import open_source
from gfmkit.files import atomic_write_text
from gfmkit.log import get_logger
from gfmkit.outputs import OutputError, agree, check_store_output
from gfmkit.performance import torch_threads, tune_allocator
from gfmkit.progress import progress_bar
from gfmkit.studies.registry import Ref, Study

log = get_logger(__name__)

STUDY = "screen.json"
WEIGHTINGS = ("auto", "gate", "overlap", "uniform", "none")
FORCES = ("none", "weighted", "each")
PRECISIONS = ("fp64", "fp32", "bf16-autocast")
PREFETCH = ("auto", "process", "thread", "off")
SETTINGS = "settings.json"
DEFAULT_MAX_EDGES = 50_000
DEFAULT_CHUNK = 1024


def work_dir(out: str | os.PathLike) -> Path:
    """The hidden folder beside the results store ``out`` where its chunks are kept until the merge."""
    out = Path(out)
    return out.parent / f".{out.name}.screen-work"


def chunk_path(work: Path, chunk: int) -> Path:
    """Where chunk ``chunk``'s rows are kept."""
    return work / f"chunk-{chunk:09d}.bp"


def screen(
    checkpoint: str | os.PathLike,
    source: Any,
    out: str | os.PathLike,
    *,
    heads: str | Sequence[str] = "all",
    weighting: str = "auto",
    forces: str = "none",
    precision: str = "fp32",
    max_edges: int = DEFAULT_MAX_EDGES,
    chunk_size: int = DEFAULT_CHUNK,
    workers: int = 0,
    prefetch: bool | str = "auto",
    save_forces: bool = False,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    comm: Any = None,
) -> pd.DataFrame:
    """Screen every structure of ``source`` with the model of ``checkpoint`` into the results store ``out``.

    ``source``: a store, files ``ase.io`` reads, a glob, a database, ``random:COUNT[:MIN-MAX][:ELEMENTS]``
    (elements default to the model's), ``ase.Atoms`` or a list of these (:mod:`gfmkit.data.screen_source`).
    ``heads``: "all" energy heads or names. ``weighting``: "auto" (the gate where the model has one, else
    overlap), "gate", "overlap", "uniform", or "none" (head energies and disagreement only).
    ``forces``: "none", "weighted" (max |F| of the weighted forces) or "each" (per-head forces too: their
    disagreement). ``precision``: "fp64", "fp32" or "bf16-autocast". ``max_edges``: edges per batch.
    ``chunk_size``: structures per chunk (the unit of resumption). ``workers``: DataLoader processes that
    build the next chunks' graphs while the model runs (0: in this process); ``prefetch``: the next
    batches are built while the model runs by a forked process ("process"), a thread ("thread"), the
    better of the two this platform has (True: the process on Linux), not at all (False, "off"), or
    "auto": as True when this rank has no workers and at least three cores of the node to itself, or two
    with ``forces="none"`` (:func:`prefetch_mode`; measured in benchmarks/screen_speed.py,
    docs/screening.md); a prefetch process leaves the model the rank's other cores. ``save_forces``: keep the
    per-atom weighted forces. Returns the summary (one row per rank and a ``total`` row); the rows are in
    :func:`screen_table`.
    """
    comm = comm or world()
    out = Path(out)
    tune_allocator()  # freed batch memory is reused, not page-faulted afresh (2.3x here; gfmkit.performance)
    started = time.perf_counter()
    _check_choices(weighting, forces, precision, save_forces, max_edges, chunk_size)
    if not (prefetch in PREFETCH or isinstance(prefetch, bool)):
        raise ConfigError(f"prefetch must be True, False or one of {', '.join(PREFETCH)}, got {prefetch!r}")
    if prefetch == "process" and not fork_available():
        raise ConfigError("prefetch='process' needs fork (Linux); use 'thread'")
    agree(comm, lambda: check_store_output(out, overwrite=overwrite))
    model, chosen, src = _agreed(comm, lambda: _open(checkpoint, source, heads, weighting, precision, device))
    settings = {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": _sha256(checkpoint),
                "source": getattr(src, "spec", str(source)), "structures": len(src), "heads": chosen,
                "weighting": weighting, "forces": forces, "precision": precision, "max_edges": int(max_edges),
                "chunk_size": int(chunk_size), "save_forces": bool(save_forces)}
    work = work_dir(out)
    done = agree(comm, lambda: _prepare_work(work, settings, overwrite))
    n_chunks = -(-len(src) // chunk_size)
    remaining = [c for c in range(n_chunks) if c not in set(done)]
    mine = remaining[len(remaining) * comm.rank // comm.size: len(remaining) * (comm.rank + 1) // comm.size]
    cores = rank_cores(comm)
    prefetch = prefetch_mode(prefetch, workers, cores, forces)
    # a prefetch process takes a core of its own and the model keeps the others: torch's OpenMP threads
    # spin, so one on the process's core slowed both (2 cores: 335 against 502 structures/s)
    threads = min(torch.get_num_threads(), max(1, int(cores) - 1)) if prefetch == "process" else torch.get_num_threads()
    with _abort_on_failure(comm), torch_threads(threads):
        stats = _run_chunks(model, src, mine, work, settings, (workers, prefetch), device, progress and comm.rank == 0)
    stats["prefetch"] = prefetch
    stats["resumed_chunks"] = len(done)
    every = comm.gather(stats, root=0)
    summary = None
    if comm.rank == 0:
        with _abort_on_failure(comm):
            merge_started = time.perf_counter()
            rs.merge_results([chunk_path(work, c) for c in range(n_chunks)], out, _attributes(settings))
            shutil.rmtree(work, ignore_errors=True)
            summary = _summary(every, time.perf_counter() - started, time.perf_counter() - merge_started, out, settings)
            _record(out, summary)
    summary = comm.bcast(summary, root=0)
    return summary_table(summary)


def prefetch_mode(prefetch: bool | str, workers: int, cores: float, forces: str = "none") -> str:
    """What builds the next batches on a rank with ``cores`` cores of its own (:func:`rank_cores`):
    "process", "thread" or "off" (see :func:`screen`). "auto" builds ahead where the rank has no
    DataLoader workers and at least three cores, or two when only energies are computed (the process
    takes a core from the model). Measured on 2 cores (docs/screening.md): energies only, a prefetch
    process and one torch thread screened 1.25x faster than two torch threads without prefetch; with
    weighted forces (a model pass 3x longer) two threads without prefetch were 1.2-1.3x faster than one
    thread and the process; with two ranks of one core each a prefetch thread cost 3 %."""
    if prefetch == "auto":
        prefetch = workers == 0 and (cores >= 3 or (cores >= 2 and forces == "none"))
    if prefetch is True:
        return "process" if fork_available() else "thread"
    return "off" if prefetch is False else str(prefetch)


def rank_cores(comm: Any) -> float:
    """The cores this rank has to itself: those of its affinity mask, split among the ranks on the same
    node that share that mask."""
    import socket

    cores = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset(range(os.cpu_count() or 1))
    here = (socket.gethostname(), cores)
    sharing = sum(place == here for place in comm.allgather(here))
    return len(cores) / sharing


def _check_choices(weighting, forces, precision, save_forces, max_edges, chunk_size) -> None:
    for name, value, allowed in (("weighting", weighting, WEIGHTINGS), ("forces", forces, FORCES),
                                 ("precision", precision, PRECISIONS)):
        if value not in allowed:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    if weighting == "none" and forces == "weighted":
        raise ConfigError("forces='weighted' needs a weighting (not 'none')")
    if save_forces and forces == "none":
        raise ConfigError("save_forces needs forces='weighted' or 'each'")
    if max_edges < 1 or chunk_size < 1:
        raise ConfigError(f"max_edges and chunk_size must be positive (got {max_edges}, {chunk_size})")


@contextlib.contextmanager
def _abort_on_failure(comm: Any) -> Iterator[None]:
    """Under MPI, a failure here prints its message and aborts the job, so no other rank waits forever."""
    try:
        yield
    except BaseException as exc:
        if comm.size > 1:
            print(f"gfmkit screen: rank {comm.rank} failed: {exc}; aborting the job", file=sys.stderr, flush=True)
            comm.Abort(1)
        raise


def _agreed(comm: Any, step: Any) -> Any:
    """``step()`` on every rank; when it fails on any rank, every rank raises (its own error, or a
    ConfigError naming the rank that failed), before any rank starts work."""
    try:
        value, error = step(), None
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        value, error = exc, str(exc)
    errors = comm.allgather(error)
    if error is not None:
        raise value
    failed = next((r for r, e in enumerate(errors) if e is not None), None)
    if failed is not None:
        raise ConfigError(f"rank {failed}: {errors[failed]}")
    return value


def _open(checkpoint, source, heads, weighting, precision, device) -> tuple[Any, list[str], Any]:
    """The model (in the precision's dtype), the chosen energy heads and the opened source."""
    from gfmkit.models import load_model

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    model = load_model(checkpoint, map_location=device).eval()
    model = model.double() if precision == "fp64" else model.float()
    if weighting == "gate" and model.gate is None:
        raise ConfigError(f"weighting 'gate': {checkpoint} has no gate (fit one with gfmkit.models.fit_head_gate, "
                          "or use 'overlap')")
    energy_heads = [h.name for h in model.heads if h.kind == "energy"]
    names = [heads] if isinstance(heads, str) else list(heads)
    names = energy_heads if heads == "all" else [n for part in names for n in str(part).split(",") if n]
    missing = [n for n in names if n not in energy_heads]
    if missing or not names:
        raise ConfigError(f"head(s) {', '.join(missing) or '(none)'} not in {checkpoint}; its energy heads: "
                          f"{', '.join(energy_heads)}")
    return model, names, open_source(source, elements=model_elements(model))


def model_elements(model: Any) -> list[str]:
    """The elements a model's heads were fitted on (their compositions, else their reference energies)."""
    from ase.data import atomic_numbers

    found = {e for h in model.heads for e in (dict(h.composition) or h.reference_energies)}
    return sorted(found, key=atomic_numbers.get)


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare_work(work: Path, settings: dict[str, Any], overwrite: bool) -> list[int]:
    """Rank 0: the work folder ready for these settings; the chunks already finished there."""
    marker = work / SETTINGS
    if marker.is_file():
        try:
            before = json.loads(marker.read_text())
        except ValueError:
            before = None
        if before != settings:
            if not overwrite:
                raise OutputError(f"{work} holds an unfinished screen with other settings; pass --overwrite "
                                  "(overwrite=True) to start afresh, or screen into another output")
            shutil.rmtree(work)
    elif work.exists():
        raise OutputError(f"{work} exists but is not a screen's work folder; remove it or choose another output")
    work.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        atomic_write_text(marker, json.dumps(settings, indent=1))
    done = []
    for path in sorted(work.glob("chunk-*.bp")):
        try:
            rs.ResultsStore(path)
            done.append(int(path.name[6:-3]))
        except (rs.StoreError, ValueError, RuntimeError):
            shutil.rmtree(path, ignore_errors=True)  # cannot be: chunks appear by rename, complete
    return done


def _run_chunks(model, src, chunks, work, settings, loading, device, show) -> dict[str, Any]:
    """Screen ``chunks`` on this rank; time spent waiting for data, in the model and writing."""
    from gfmkit.precision import precision_scope

    dtype = torch.float64 if settings["precision"] == "fp64" else torch.float32
    dataset = ChunkBatches(src, chunks, settings["chunk_size"], model.config.cutoff, settings["max_edges"], dtype)
    total = sum(np.subtract(*dataset.bounds(c)[::-1]) for c in chunks)
    times = {"data": 0.0, "model": 0.0, "write": 0.0}
    count = 0
    began = time.perf_counter()
    bar = progress_bar(total=int(total), desc="screen", unit="structure", disable=not show)
    with bar, precision_scope(settings["precision"], device):
        tick = time.perf_counter()
        workers, prefetch = loading
        if workers:
            stream = ((c, b, k == len(bs) - 1) for c, bs in chunk_loader(dataset, workers) for k, b in enumerate(bs))
        else:
            stream = batch_stream(dataset, prefetch)
        rows, first = [], None
        for chunk, batch, last in stream:
            now = time.perf_counter()
            times["data"] += now - tick
            lo, _ = dataset.bounds(chunk)
            first = lo if first is None else first
            check_batch_elements(model, batch, first, src)
            rows.append(batch_rows(model, batch.to(device), settings))
            first += int(batch.natoms.shape[0])
            tick = time.perf_counter()
            times["model"] += tick - now
            bar.update(int(batch.natoms.shape[0]))
            if not last:
                continue
            columns = _join(rows, lo)
            rs.write_columns(chunk_path(work, chunk), columns, {rs.A_ELEMENTS: columns.pop("_elements")})
            rows, first = [], None
            tock = time.perf_counter()
            times["write"] += tock - tick
            tick = tock
            count += len(columns["natoms"])
            bar.set_postfix_str(f"{count / max(tick - began, 1e-9):.1f} structures/s")
    return {"structures": count, "chunks": len(chunks), "seconds": time.perf_counter() - began, **times}


def batch_stream(dataset: ChunkBatches, prefetch: str) -> Iterator[tuple[int, Any, bool]]:
    """``dataset.each_batch()``, built ahead by a process or a thread (``prefetch``) or as asked for ("off")."""
    if prefetch == "process":
        return process_prefetch(dataset.each_batch, pack_chunk_batch, unpack_chunk_batch, depth=4)
    return thread_prefetch(dataset.each_batch(), depth=4) if prefetch == "thread" else dataset.each_batch()


def check_batch_elements(model: Any, batch: Any, first: int, source: Any) -> None:
    """Raise :class:`~gfmkit.models.calculator.ModelInputError` naming the source and the structure
    (``first`` is the batch's first structure in ``source``) when an element is beyond the model's ``max_z``."""
    from gfmkit.models.calculator import ModelInputError, check_numbers

    beyond = (batch.z > model.config.max_z) | (batch.z < 1)
    if bool(beyond.any()):
        atom = int(beyond.nonzero()[0, 0])
        try:
            check_numbers(model, batch.z[atom : atom + 1].cpu().numpy())
        except ModelInputError as exc:
            raise ModelInputError(f"{structure_name(source, first + int(batch.batch[atom]))}: {exc}") from None


def structure_name(source: Any, index: int) -> str:
    """``SPEC[i]``: the part of a (chained) source that holds structure ``index``, and its index there."""
    from gfmkit.data.ranged import locate

    while hasattr(source, "parts"):
        k, index = locate(source.bounds, index)
        source = source.parts[k]
    return f"{source.spec}[{index}]"


def batch_rows(model: Any, batch: Any, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """The results-store columns of one batch (float64 numpy arrays, plus counts of each element)."""
    weighting = settings["weighting"]
    forces = settings["forces"]
    prediction = model.predict(batch, heads=settings["heads"], forces=forces,
                               weights="uniform" if weighting == "none" else weighting)
    natoms = batch.natoms.double()
    n_graphs = int(natoms.shape[0])
    z = batch.z.long()
    counts = torch.zeros(n_graphs, 119, dtype=torch.int32, device=z.device)
    counts.index_put_((batch.batch, z), torch.ones_like(z, dtype=torch.int32), accumulate=True)
    row = {"natoms": batch.natoms.long(), "counts": counts,
           rs.HEAD_ENERGY: prediction.energies.double() / natoms[:, None],
           "disagreement": prediction.energy_spread.double()}
    if weighting != "none":
        row.update({rs.WEIGHTS: prediction.weights.double(), "energy": prediction.energy.double(),
                    "energy_per_atom": prediction.energy.double() / natoms})
    if forces != "none":
        weighted = prediction.forces.double()
        if forces == "each":  # the weights depend on composition only: the weighted forces are sum_k w_k F_k
            per_atom = prediction.weights.double()[batch.batch].T  # (K, N)
            weighted = (weighted * per_atom[:, :, None]).sum(dim=0)
            row["forces_disagreement"] = prediction.forces_spread.double()
        norms = weighted.norm(dim=1)
        row["max_force"] = torch.zeros(n_graphs, dtype=torch.float64, device=norms.device).scatter_reduce(
            0, batch.batch, norms, reduce="amax", include_self=False)
        if settings["save_forces"]:
            row[rs.FORCES] = weighted
    return {k: v.detach().cpu().numpy() for k, v in row.items()}


def _join(rows: list[dict[str, np.ndarray]], first: int) -> dict[str, np.ndarray]:
    """One chunk's columns from its batches' rows (composition over the elements present)."""
    columns = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    counts = columns.pop("counts")
    present = np.flatnonzero(counts.sum(axis=0))
    from ase.data import chemical_symbols

    out = {"source_index": np.arange(first, first + len(columns["natoms"]), dtype=np.int64), **columns,
           rs.COMPOSITION: counts[:, present].astype(np.int32), "_elements": [chemical_symbols[z] for z in present]}
    if rs.FORCES in out:
        out[rs.ATOM_OFFSET] = np.concatenate([[0], np.cumsum(out["natoms"])[:-1]]).astype(np.int64)
    return out


def _attributes(settings: dict[str, Any]) -> dict[str, Any]:
    return {"checkpoint": settings["checkpoint"], "checkpoint_sha256": settings["checkpoint_sha256"],
            "heads": settings["heads"], "precision": settings["precision"], "weighting": settings["weighting"],
            "forces": settings["forces"], "source": settings["source"], "gfmkit/version": __version__,
            "max_edges": settings["max_edges"], "chunk_size": settings["chunk_size"]}


def _summary(every: list[dict[str, Any]], seconds: float, merge: float, out: Path, settings) -> dict[str, Any]:
    count = sum(s["structures"] for s in every)
    busy = {k: sum(s[k] for s in every) for k in ("data", "model", "write")}
    spent = max(sum(busy.values()), 1e-12)
    return {
        "results": str(out), "source": settings["source"], "structures": count,
        "screened_now": count, "resumed_chunks": every[0]["resumed_chunks"], "ranks": len(every),
        "seconds": seconds, "merge_seconds": merge,
        "structures_per_s": count / max(seconds, 1e-12),
        "per_rank": [{"rank": r, "structures": s["structures"], "chunks": s["chunks"], "seconds": s["seconds"],
                      "structures_per_s": s["structures"] / max(s["seconds"], 1e-12),
                      "prefetch": s.get("prefetch", False),
                      **{f"{k}_share": s[k] / max(s["data"] + s["model"] + s["write"], 1e-12)
                         for k in ("data", "model", "write")}} for r, s in enumerate(every)],
        **{f"{k}_share": v / spent for k, v in busy.items()},
        "settings": {k: v for k, v in settings.items() if k != "checkpoint_sha256"},
        "gfmkit_version": __version__,
    }


def _record(out: Path, summary: dict[str, Any]) -> None:
    """Add the summary to ``screen.json`` in the results store's directory (the study's marker)."""
    marker = out.parent / STUDY
    screens = {}
    if marker.is_file():
        try:
            screens = json.loads(marker.read_text()).get("screens", {})
        except (ValueError, AttributeError):
            log.warning("%s is not a screen summary; not updated", marker)
            return
    screens[out.name] = summary
    atomic_write_text(marker, json.dumps({"kind": "gfmkit-screen", "screens": screens}, indent=1, default=str))


def summary_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The summary as a table: one row per rank and a ``total`` row (structures, seconds, structures/s,
    shares of time waiting for data, in the model and writing)."""
    rows = [{**r, "rank": str(r["rank"])} for r in summary["per_rank"]]
    rows.append({"rank": "total", "structures": summary["structures"],
                 "chunks": sum(r["chunks"] for r in summary["per_rank"]), "seconds": summary["seconds"],
                 "structures_per_s": summary["structures_per_s"],
                 **{f"{k}_share": summary[f"{k}_share"] for k in ("data", "model", "write")}})
    table = pd.DataFrame(rows)
    table.attrs["summary"] = summary
    return table


def screen_summary(out: str | os.PathLike) -> dict[str, Any]:
    """The summary of the results store ``out`` recorded in its directory's ``screen.json``."""
    out = Path(out)
    screens = json.loads((out.parent / STUDY).read_text())["screens"]
    if out.name not in screens:
        raise FileNotFoundError(f"{out.parent / STUDY}: no screen into {out.name}")
    return screens[out.name]


def screen_table(out: str | os.PathLike) -> pd.DataFrame:
    """The rows of a results store ``out`` (one per structure), or, for a directory holding
    ``screen.json``, one row per results store screened into it with its summary."""
    out = Path(out)
    if (out / STUDY).is_file():
        screens = json.loads((out / STUDY).read_text())["screens"]
        return pd.DataFrame([{"results": name, **{k: v for k, v in s.items()
                                                  if k != "results" and not isinstance(v, (list, dict))}}
                             for name, s in screens.items()])
    return rs.ResultsStore(out).table()


def top_hits(results: str | os.PathLike | pd.DataFrame, k: int = 10, by: str = "energy_per_atom", *,
             ascending: bool | None = None, source: Any = None, atoms: bool = True) -> tuple[pd.DataFrame, list[Any]]:
    """The ``k`` best rows by ``by`` (lowest first for energies, highest first for ``disagreement``,
    ``forces_disagreement`` and ``max_force``, unless ``ascending`` says), as a table and as ``ase.Atoms``
    rebuilt from the source (the results store's recorded source unless ``source`` is given; none when
    ``atoms`` is False)."""
    store = None if isinstance(results, pd.DataFrame) else rs.ResultsStore(results)
    table = results if store is None else store.table()
    if by not in table:
        raise ConfigError(f"by={by!r}: not a column; columns: {', '.join(table.columns)}")
    if ascending is None:
        ascending = by not in ("disagreement", "forces_disagreement", "max_force")
    hits = table.sort_values(by, ascending=ascending, kind="stable").head(k).reset_index(drop=True)
    if not atoms or (source is None and store is None):
        return hits, []
    source = store.attrs["source"] if source is None else source
    src = open_source(source.split(";") if isinstance(source, str) and ";" in source else source)
    found = []
    for _, row in hits.iterrows():
        structure = src.atoms(int(row["source_index"]))
        structure.info.update({"source_index": int(row["source_index"]), by: float(row[by])})
        found.append(structure)
    return hits, found


REGISTRY_ENTRY = Study(
    name="screen", title="screening", marker=STUDY,
    help="screen structures (stores, files, random) through every head of a model into a results store",
    run=screen, table=screen_table, figure=Ref("gfmkit.viz.screen:throughput_figure"))
