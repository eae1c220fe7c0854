"""Streaming structures into batches bounded by edges (memory follows edges, not structure counts).

:func:`edge_batches` graphs structures ``[start, stop)`` of a source (vesin neighbour lists through
:func:`gfmkit.data.graphs.structure_graph`) and cuts them, in order, into batches of at most
``max_edges`` edges (a structure above the budget alone is a batch of its own). :class:`ChunkBatches`
is the same per chunk as a map-style dataset, so that ``torch.utils.data.DataLoader`` workers build the
next chunks' batches while the model runs (:func:`chunk_loader`), or a thread or a forked process builds
the next batches (:meth:`ChunkBatches.each_batch` through :mod:`gfmkit.data.prefetch`). A chunk's batches
depend only on the chunk, never on which rank, worker, thread or process builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gfmkit.data.graphs import collate, structure_graph


def edge_batches(source: Any, start: int, stop: int, cutoff: float, max_edges: int,
                 dtype: torch.dtype = torch.float64) -> list[Any]:
    """Batches (PyG ``Batch``, head index 0) of structures ``[start, stop)`` of ``source``, in order,
    each with at most ``max_edges`` edges unless one structure alone has more."""
    return list(iter_edge_batches(source, start, stop, cutoff, max_edges, dtype))


def iter_edge_batches(source: Any, start: int, stop: int, cutoff: float, max_edges: int,
                      dtype: torch.dtype = torch.float64) -> Iterator[Any]:
    """:func:`edge_batches` one batch at a time, each as soon as it is complete."""
    if max_edges < 1:
        raise ValueError(f"max_edges must be positive, got {max_edges}")
    pending, edges = [], 0
    for index in range(start, stop):
        graph = structure_graph(source.arrays(index), 0, cutoff, dtype=dtype, labels=False)
        count = int(graph.edge_index.shape[1])
        if pending and edges + count > max_edges:
            yield collate(pending)
            pending, edges = [], 0
        pending.append(graph)
        edges += count
    if pending:
        yield collate(pending)


class ChunkBatches(torch.utils.data.Dataset):
    """Item ``k``: ``(chunk, batches)`` for the ``k``-th of ``chunks`` (chunk ``c`` covers structures
    ``[c * chunk_size, (c + 1) * chunk_size)`` of the source)."""

    def __init__(self, source: Any, chunks: list[int], chunk_size: int, cutoff: float, max_edges: int,
                 dtype: torch.dtype = torch.float64):
        self.source, self.chunks, self.chunk_size = source, list(chunks), int(chunk_size)
        self.cutoff, self.max_edges, self.dtype = float(cutoff), int(max_edges), dtype

    def __len__(self) -> int:
        return len(self.chunks)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """Structures ``[start, stop)`` of ``chunk``."""
        return chunk * self.chunk_size, min(len(self.source), (chunk + 1) * self.chunk_size)

    def __getitem__(self, k: int) -> tuple[int, list[Any]]:
        chunk = self.chunks[k]
        return chunk, edge_batches(self.source, *self.bounds(chunk), self.cutoff, self.max_edges, self.dtype)

    def each_batch(self) -> Iterator[tuple[int, Any, bool]]:
        """``(chunk, batch, last of its chunk)`` for every batch of every chunk, in order, each made when
        asked for: a prefetch thread then runs a batch ahead, not a chunk."""
        for chunk in self.chunks:
            batches = iter_edge_batches(self.source, *self.bounds(chunk), self.cutoff, self.max_edges, self.dtype)
            batch = next(batches)  # a chunk holds at least one structure
            for following in batches:
                yield chunk, batch, False
                batch = following
            yield chunk, batch, True


def _as_is(item: Any) -> Any:
    return item


def chunk_loader(dataset: ChunkBatches, workers: int = 0, prefetch: int = 2) -> torch.utils.data.DataLoader:
    """The chunks' batches in order; with ``workers`` > 0, built ahead by that many processes."""
    options = {"prefetch_factor": prefetch} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       collate_fn=_as_is, **options)


def chunk_ranges(n_structures: int, chunk_size: int) -> np.ndarray:
    """(n_chunks, 2) ``[start, stop)`` of every chunk of ``n_structures``."""
    starts = np.arange(0, n_structures, chunk_size, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + chunk_size, n_structures)], axis=1)
