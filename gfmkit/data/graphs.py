"""Stores to what a model eats: one PyG ``Data`` per structure, ``Batch`` per batch.

Every ``Data`` carries the same fields whatever dataset it comes from (a batch mixes datasets), with
masks for labels a dataset lacks:

================  ============  ==============================================================
field             shape         meaning
================  ============  ==============================================================
``z``             (N,) long     atomic numbers
``pos``           (N, 3)        Å, in ``dtype`` (float64 or float32; never lower)
``cell``          (1, 3, 3)     rows are lattice vectors; zeros when not periodic
``pbc``           (1, 3) bool
``edge_index``    (2, E) long   ``[j, i]``: messages flow from neighbour j to centre i
``edge_shift``    (E, 3)        integer-valued cell shifts: r_ij = pos[j] - pos[i] + shift @ cell
``energy``        (1,)          eV (0 where missing; see ``energy_mask``)
``forces``        (N, 3)        eV/Å (0 where missing; see ``forces_mask``)
``stress``        (1, 3, 3)     eV/Å^3, ASE sign (0 where missing; see ``stress_mask``)
``charge``        (1,)          total charge (0 where the dataset has none)
``spin``          (1,)          spin multiplicity (0 = unknown)
``properties``    (1, P)        graph-level targets named by ``property_names`` (masked)
``dataset``       (1,) long     head index from the dataset registry
``natoms``        (1,) long
``*_mask``        bool          energy/forces/stress (1,), properties (1, P)
================  ============  ==============================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from gfmkit import keys
from gfmkit.data import store_format as fmt
from gfmkit.data.multi import MultiStore
from gfmkit.data.neighbours import neighbour_list
from gfmkit.data.store_read import Store


def structure_graph(
    arrays: dict[str, np.ndarray],
    head: int,
    cutoff: float,
    *,
    dtype: torch.dtype = torch.float64,
    property_names: Sequence[str] = (),
    labels: bool = True,
) -> Data:
    """A PyG ``Data`` from one structure's store arrays (``Store.arrays(i)``) and its head index;
    ``labels=False`` leaves out the label fields (energy, forces, stress, properties and their masks),
    which inference never reads."""
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"graph dtype must be float64 or float32 (positions stay >= fp32), got {dtype}")
    positions, cell, pbc = arrays[fmt.POSITIONS], arrays[fmt.CELL], np.asarray(arrays[fmt.PBC], dtype=bool)
    n = len(positions)
    edge_index, shift = neighbour_list(positions, cell, pbc, cutoff)

    real = np.float64 if dtype == torch.float64 else np.float32

    def tensor(values, shape=None) -> torch.Tensor:
        # numpy converts, torch wraps: ~4x cheaper per field than torch.as_tensor(..., dtype=...)
        out = torch.from_numpy(np.array(values, dtype=real))
        return out if shape is None else out.reshape(shape)

    def flag(value: bool) -> torch.Tensor:
        return torch.from_numpy(np.array([value]))

    charge, spin = arrays.get(fmt.CHARGE), arrays.get(fmt.SPIN)
    fields = {
        "z": torch.from_numpy(np.array(arrays[fmt.NUMBERS], dtype=np.int64)),
        "pos": tensor(positions),
        "cell": tensor(cell, (1, 3, 3)),
        "pbc": torch.from_numpy(pbc.reshape(1, 3).copy()),
        "edge_index": torch.from_numpy(edge_index),
        "edge_shift": tensor(shift),
    }
    if labels:
        energy, forces, stress = arrays.get(fmt.ENERGY), arrays.get(fmt.FORCES), arrays.get(fmt.STRESS)
        fields.update(
            energy=tensor([0.0 if energy is None else float(energy)]),
            energy_mask=flag(energy is not None),
            forces=tensor(np.zeros((n, 3)) if forces is None else forces),
            forces_mask=flag(forces is not None),
            stress=tensor(np.zeros((3, 3)) if stress is None else stress, (1, 3, 3)),
            stress_mask=flag(stress is not None),
        )
    fields.update(charge=tensor([0.0 if charge is None else float(charge)]),
                  spin=tensor([0.0 if spin is None else float(spin)]))
    if labels:
        props = [arrays.get(fmt.PROPERTY_PREFIX + name) for name in property_names]
        fields.update(
            properties=tensor([[0.0 if p is None else float(p) for p in props]], (1, len(props))),
            properties_mask=torch.from_numpy(np.array([[p is not None for p in props]], dtype=bool).reshape(1, len(props))),
        )
    fields.update(dataset=torch.from_numpy(np.array([head], dtype=np.int64)),
                  natoms=torch.from_numpy(np.array([n], dtype=np.int64)))
    return Data(**fields)


class GraphDataset(torch.utils.data.Dataset):
    """Structures of one or more stores (optionally one split) as graphs with a given cutoff.

    Item ``k`` is the ``k``-th selected structure; ``head`` and ``natoms`` give, per item, the head
    index and atom count (what samplers and budgets need without building graphs).
    """

    def __init__(
        self,
        stores: MultiStore | Store | Sequence[Store],
        cutoff: float,
        *,
        split: str | None = None,
        dtype: torch.dtype = torch.float64,
        property_names: Sequence[str] | None = None,
    ):
        if isinstance(stores, Store):
            stores = [stores]
        self.multi = stores if isinstance(stores, MultiStore) else MultiStore(list(stores))
        self.cutoff = float(cutoff)
        self.dtype = dtype
        self.split = split
        if property_names is None:
            property_names = sorted({t for s in self.multi.stores for t in s.targets if t not in keys.POTENTIAL_TARGETS})
        self.property_names = list(property_names)
        selected = []
        for k, store in enumerate(self.multi.stores):
            local = np.arange(len(store)) if split is None else store.split_indices(split)
            selected.append(self.multi.bounds[k] + local)
        self.indices = np.concatenate(selected).astype(np.int64) if selected else np.zeros(0, np.int64)
        store_of = np.searchsorted(self.multi.bounds, self.indices, side="right") - 1
        self._store_of = store_of
        self.head = self.multi.head_index[store_of]
        self.natoms = np.concatenate(
            [s.natoms if split is None else s.natoms[s.split_indices(split)] for s in self.multi.stores]
        ).astype(np.int64) if len(self.indices) else np.zeros(0, np.int64)
        self._edges: np.ndarray | None = None

    @property
    def registry(self):
        return self.multi.registry

    def __len__(self) -> int:
        return len(self.indices)

    def arrays(self, k: int) -> dict[str, np.ndarray]:
        """Store arrays of item ``k`` (see :meth:`gfmkit.data.Store.arrays`)."""
        store_pos = int(self._store_of[k])
        return self.multi.stores[store_pos].arrays(int(self.indices[k] - self.multi.bounds[store_pos]))

    def __getitem__(self, k: int) -> Data:
        return structure_graph(
            self.arrays(k), int(self.head[k]), self.cutoff, dtype=self.dtype, property_names=self.property_names
        )

    def edge_counts(self) -> np.ndarray:
        """Edges per item at this cutoff (one neighbour-list pass, cached), for edge budgets."""
        if self._edges is None:
            counts = np.empty(len(self), dtype=np.int64)
            for k in range(len(self)):
                a = self.arrays(k)
                counts[k] = neighbour_list(a[fmt.POSITIONS], a[fmt.CELL], a[fmt.PBC], self.cutoff)[0].shape[1]
            self._edges = counts
        return self._edges


def collate(graphs: list[Data]) -> Batch | None:
    """The ``Batch`` that ``Batch.from_data_list(graphs)`` makes, ``None`` for an empty list (a rank
    whose slice of a batch is empty).

    gfmkit's graphs all have the same fields, concatenated along the first dimension except
    ``edge_index`` (along the second, shifted by the atoms before it), so one ``torch.cat`` per field
    does PyG's work without its per-attribute dispatch (measured 4x faster for 16 graphs). The
    bookkeeping that ``to_data_list``/``get_example`` need (slices, increments) is set as PyG sets it.
    """
    if not graphs:
        return None
    first = graphs[0]
    in_worker = torch.utils.data.get_worker_info() is not None  # PyG writes straight into shared memory there
    # fields in storage order, as PyG keeps them (Data.keys() goes through a set: its order varies by process)
    fields = [key for key, _ in first]
    if in_worker or type(first) is not Data or any(set(g.keys()) != set(fields) for g in graphs):
        return Batch.from_data_list(graphs)
    natoms = torch.tensor([g[keys.POSITIONS].shape[0] for g in graphs])
    shift = torch.cumsum(natoms, 0) - natoms
    out = Batch(_base_cls=Data)
    slices, incs = {}, {}
    zeros = torch.zeros(len(graphs), dtype=torch.long)
    for key in fields:
        values = [g[key] for g in graphs]
        if key == keys.EDGE_INDEX:
            sizes = torch.tensor([v.shape[1] for v in values])
            value = torch.cat(values, dim=1) + torch.repeat_interleave(shift, sizes)[None, :]
            incs[key] = shift
        else:
            sizes = torch.tensor([v.shape[0] for v in values])
            value = torch.cat(values, dim=0)
            incs[key] = zeros
        out[key] = value
        slices[key] = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
    out.batch = torch.repeat_interleave(torch.arange(len(graphs)), natoms)
    out.ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(natoms, 0)])
    out._num_graphs = len(graphs)
    out._slice_dict = slices
    out._inc_dict = incs
    return out


def make_loader(
    dataset: GraphDataset, batch_sampler: torch.utils.data.Sampler, *, num_workers: int = 0, prefetch_factor: int | None = None
) -> torch.utils.data.DataLoader:
    """A DataLoader of ``Batch`` objects; workers build neighbour lists in parallel (each opens its own
    ADIOS2 handles). Yields ``None`` for an empty rank slice."""
    options = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        **options,
    )
