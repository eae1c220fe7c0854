"""Neighbour lists at load time (vesin), so the cutoff stays a hyperparameter.

Edges follow one convention everywhere in gfmkit: ``edge_index[0]`` is the neighbour ``j`` (message
source), ``edge_index[1]`` the centre ``i``, and the edge vector is
``r_ij = pos[j] - pos[i] + shift @ cell`` with integer cell ``shift``. Models form it inside autograd
from positions, cell and shifts, which is what forces and stress need. Periodic, mixed (e.g. slabs
with a zero or vacuum third vector) and non-periodic systems are handled, and so are cells smaller
than twice the cutoff (many periodic images).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import vesin


@lru_cache(maxsize=8)
def _finder(cutoff: float) -> vesin.NeighborList:
    return vesin.NeighborList(cutoff=cutoff, full_list=True)


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs within ``cutoff`` (Å): ``edge_index`` (2, E) int64 and ``shift`` (E, 3) int64.

    Pairs are sorted by centre, then neighbour, then shift, so the result does not depend on the
    neighbour-list algorithm.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    i, j, shift = _finder(float(cutoff)).compute(np.asarray(positions, dtype=np.float64), box, pbc, "ijS")
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    edge_index = np.stack([j[order], i[order]]).astype(np.int64)
    return edge_index, shift[order].astype(np.int64)
