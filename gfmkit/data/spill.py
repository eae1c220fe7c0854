"""Structures spilled to disk in chunks while they are read, so a conversion holds one chunk at a time.

A store's global arrays need their total length before ADIOS2 can define them, which is known only
after every input was read. :class:`Spill` writes each chunk of validated structures as plain ``.npy``
arrays (one folder per chunk, inside the conversion's temporary folder beside the output);
:func:`gfmkit.data.store_write.write_spilled` then streams the chunks of every rank, in input order,
into the store, reading them memory-mapped. Peak memory is one chunk of per-atom arrays plus a few
numbers per structure, whatever the input's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gfmkit.data import store_format as fmt

_META = "chunk.json"


class Spill:
    """This rank's chunks under ``folder`` (``rank-R/chunk-K/``), in the order they were added."""

    def __init__(self, folder: str | Path, rank: int = 0):
        self.folder = Path(folder) / f"rank-{rank:05d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.chunks: list[Path] = []

    def add(self, block: fmt.Block) -> None:
        """Write ``block`` (its per-structure and per-atom arrays) as the next chunk."""
        if block.n_structures == 0:
            return
        chunk = self.folder / f"chunk-{len(self.chunks):06d}"
        chunk.mkdir()
        arrays = {**block.per_structure, **block.per_atom}
        for name, values in arrays.items():
            np.save(chunk / f"{_file(name)}.npy", np.ascontiguousarray(values))
        meta = {"per_structure": list(block.per_structure), "per_atom": list(block.per_atom),
                "structures": block.n_structures, "atoms": block.n_atoms}
        (chunk / _META).write_text(json.dumps(meta))
        self.chunks.append(chunk)


def chunk_meta(chunk: Path) -> dict:
    """A chunk's field lists and counts."""
    return json.loads((chunk / _META).read_text())


def chunk_array(chunk: Path, name: str) -> np.ndarray:
    """One array of a chunk, memory-mapped (read from disk as it is used)."""
    return np.load(chunk / f"{_file(name)}.npy", mmap_mode="r")


def chunk_arrays(chunks: list[Path], name: str) -> Iterator[np.ndarray]:
    for chunk in chunks:
        yield chunk_array(chunk, name)


def _file(name: str) -> str:
    return name.replace("/", "__")  # property/<name> variables
