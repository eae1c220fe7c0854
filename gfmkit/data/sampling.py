"""How often each dataset is seen, and how draws become (global, then per-rank) batches.

The paper's datasets differ in size by orders of magnitude; a proportional draw lets the largest
dominate, a uniform one over-fits the smallest. :class:`DatasetMixer` draws one global sequence of
items from a strategy and a seed; :class:`GlobalBatchSampler` cuts it into global batches (by count
and/or budgets of atoms and edges) and gives each MPI rank its contiguous slice of every global batch.
The sequence depends only on the seed and the epoch, never on the number of ranks, so 1 rank and N
ranks see the same data in the same steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

Strategy = Literal["proportional", "uniform", "temperature", "weights"]


def dataset_probabilities(
    sizes: Sequence[int],
    strategy: Strategy = "proportional",
    *,
    temperature: float = 1.0,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Probability of drawing from each dataset.

    ``proportional``: p ~ n; ``uniform``: each dataset equally often; ``temperature``: p ~ n^(1/T)
    (T = 1 proportional, T -> inf uniform); ``weights``: p ~ the given weights.
    """
    n = np.asarray(sizes, dtype=np.float64)
    if strategy == "proportional":
        raw = n.copy()
    elif strategy == "uniform":
        raw = (n > 0).astype(np.float64)
    elif strategy == "temperature":
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        raw = np.where(n > 0, n ** (1.0 / temperature), 0.0)
    elif strategy == "weights":
        if weights is None or len(weights) != len(n):
            raise ValueError(f"strategy 'weights' needs one weight per dataset ({len(n)}), got {weights}")
        raw = np.where(n > 0, np.asarray(weights, dtype=np.float64), 0.0)
        if (raw < 0).any():
            raise ValueError("dataset weights must be non-negative")
    else:
        raise ValueError(f"unknown sampling strategy {strategy!r}; choose proportional, uniform, temperature or weights")
    if raw.sum() <= 0:
        raise ValueError("no dataset can be drawn from (all empty or zero weight)")
    return raw / raw.sum()


def draw_counts(probabilities: Sequence[float], num_samples: int) -> np.ndarray:
    """How many of ``num_samples`` draws each dataset gets: ``probabilities * num_samples`` rounded by
    largest remainders, so the counts add up to ``num_samples`` and each is within one of its share."""
    share = np.asarray(probabilities, dtype=np.float64) * num_samples
    counts = np.floor(share + 1e-9).astype(np.int64)
    short = int(num_samples - counts.sum())
    if short > 0:
        counts[np.argsort(-(share - counts), kind="stable")[:short]] += 1
    return counts


class DatasetMixer:
    """A seeded sequence of item indices mixing datasets by a strategy.

    ``groups[k]`` is item k's dataset (e.g. ``GraphDataset.head``). An epoch of ``num_samples`` draws
    gives each dataset exactly its share (:func:`draw_counts` of :func:`dataset_probabilities`; a
    stratified draw, so a small dataset's share does not vary from epoch to epoch), takes that many of
    its items from shuffled passes over it (a new shuffle after every pass: nothing repeats before
    everything was seen) and shuffles all draws together. With the proportional strategy and the default
    ``num_samples`` every item is drawn exactly once an epoch.
    """

    def __init__(
        self,
        groups: np.ndarray,
        *,
        strategy: Strategy = "proportional",
        temperature: float = 1.0,
        weights: Mapping[int, float] | Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
    ):
        self.groups = np.asarray(groups, dtype=np.int64)
        if len(self.groups) and self.groups.min() < 0:
            raise ValueError("dataset indices (groups) must be non-negative")
        sizes = np.bincount(self.groups) if len(self.groups) else np.zeros(0, dtype=np.int64)
        self.group_ids = np.flatnonzero(sizes)
        # one stable sort (linear on the usual dataset-after-dataset layout) instead of a pass per dataset
        by_group = np.argsort(self.groups, kind="stable")
        self.members = np.split(by_group, np.cumsum(sizes[self.group_ids])[:-1])
        if isinstance(weights, Mapping):
            weights = [float(weights.get(int(g), 0.0)) for g in self.group_ids]
        self.probabilities = dataset_probabilities(
            [len(m) for m in self.members], strategy, temperature=temperature, weights=weights
        )
        self.num_samples = len(self.groups) if num_samples is None else int(num_samples)
        self.seed = seed

    def counts(self) -> np.ndarray:
        """Draws per dataset in every epoch (in the order of ``group_ids``)."""
        return draw_counts(self.probabilities, self.num_samples)

    def sequence(self, epoch: int = 0) -> np.ndarray:
        """The epoch's ``num_samples`` item indices (the same for every rank count)."""
        rng = np.random.default_rng([self.seed, epoch])
        counts = self.counts()
        # which dataset each draw comes from: exactly its count, in random order ...
        small = np.int16 if len(counts) < 2**15 else np.int32
        label = rng.permutation(np.repeat(np.arange(len(counts), dtype=small), counts))
        # ... and each dataset's draws in order along the sequence (a stable radix sort of small labels)
        positions = np.argsort(label, kind="stable")
        draws = [_passes(rng, members, count) for members, count in zip(self.members, counts)]
        out = np.empty(self.num_samples, dtype=np.int64)
        out[positions] = np.concatenate(draws) if draws else []
        return out


def _passes(rng: np.random.Generator, members: np.ndarray, count: int) -> np.ndarray:
    """``count`` items of ``members`` from consecutive shuffled passes over them."""
    passes = -(-count // len(members)) if count else 0
    if passes <= 1:
        return rng.permutation(members)[:count]
    # many passes over a small dataset: one shuffle per row, all at once
    return rng.permuted(np.tile(members, (passes, 1)), axis=1).ravel()[:count]


class GlobalBatches(Sequence):
    """An epoch's global batches as one item sequence and batch boundaries: ``batches[k]`` is batch k's
    item indices (a view), ``len(batches)`` their number; no list of millions of small arrays."""

    def __init__(self, sequence: np.ndarray, bounds: np.ndarray):
        self.sequence, self.bounds = sequence, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(f"global batch {k} out of range ({len(self)} batches)")
        k %= len(self)
        return self.sequence[self.bounds[k] : self.bounds[k + 1]]


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Global batches from a :class:`DatasetMixer`, and this rank's slice of each.

    A global batch takes items in sequence order while it has fewer than ``batch_size`` items and stays
    within ``max_atoms`` / ``max_edges`` (an item larger than a budget forms a batch of its own). Each
    rank gets a contiguous slice, balanced by atoms; a slice may be empty when a batch has fewer items
    than ranks (``collate`` then gives ``None`` and the trainer contributes nothing but still joins the
    collective). ``state_dict`` holds the epoch and the next batch, for exact resume.
    """

    def __init__(
        self,
        mixer: DatasetMixer,
        natoms: np.ndarray,
        *,
        batch_size: int | None = None,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        edges: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        if batch_size is None and max_atoms is None and max_edges is None:
            raise ValueError("give batch_size, max_atoms or max_edges")
        if max_edges is not None and edges is None:
            raise ValueError("max_edges needs the per-item edge counts (GraphDataset.edge_counts())")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.mixer, self.natoms, self.edges = mixer, np.asarray(natoms), None if edges is None else np.asarray(edges)
        self.batch_size, self.max_atoms, self.max_edges = batch_size, max_atoms, max_edges
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch = 0, 0
        self._cache: tuple[int, GlobalBatches] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (call before each epoch, as with DistributedSampler)."""
        if epoch != self.epoch:
            self.epoch, self.start_batch = epoch, 0

    def global_batches(self, epoch: int | None = None) -> GlobalBatches:
        """All global batches (item indices) of an epoch."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._cut(self.mixer.sequence(epoch)))
        return self._cache[1]

    def _cut(self, sequence: np.ndarray) -> GlobalBatches:
        """Cut the epoch's sequence into global batches: greedy, in order, by count and budgets. Only
        the batch boundaries are computed (vectorised for a count alone, one binary search per batch with
        budgets), so an epoch of 10^8 draws is cut in seconds."""
        n = len(sequence)
        if self.max_atoms is None and self.max_edges is None:
            starts = np.arange(0, n, self.batch_size, dtype=np.int64)
        else:
            # where a batch that starts at each position would end, for all positions at once ...
            position = np.arange(n, dtype=np.int64)
            end = np.full(n, n, dtype=np.int64) if self.batch_size is None else np.minimum(position + self.batch_size, n)
            for values, budget in ((self.natoms, self.max_atoms), (self.edges, self.max_edges)):
                if budget is not None:
                    cumulative = np.concatenate([[0], np.cumsum(values[sequence], dtype=np.int64)])
                    end = np.minimum(end, np.searchsorted(cumulative, cumulative[:-1] + budget, side="right") - 1)
            following = np.maximum(end, position + 1).tolist()  # an item over a budget is a batch of its own
            # ... then the chain of batch starts from the first item (one step per batch)
            starts_list, start = [], 0
            while start < n:
                starts_list.append(start)
                start = following[start]
            starts = np.array(starts_list, dtype=np.int64)
        bounds = np.append(starts, n)
        if self.drop_last and self.batch_size is not None and len(starts) and n - starts[-1] < self.batch_size:
            bounds = bounds[:-1]
        return GlobalBatches(np.asarray(sequence, dtype=np.int64), bounds)

    def rank_slice(self, batch: np.ndarray, rank: int | None = None) -> np.ndarray:
        """Rank ``rank``'s contiguous part of a global batch, balanced by atom count."""
        rank = self.rank if rank is None else rank
        if self.world_size == 1:
            return batch
        cumulative = np.cumsum(self.natoms[batch])
        total = cumulative[-1] if len(cumulative) else 0
        # Item k goes to the rank whose share of the atoms holds the item's midpoint.
        mids = cumulative - self.natoms[batch] / 2.0
        owner = np.minimum((mids * self.world_size / max(total, 1)).astype(np.int64), self.world_size - 1)
        return batch[owner == rank]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        while self.start_batch < len(batches):
            batch = batches[self.start_batch]
            self.start_batch += 1
            yield self.rank_slice(batch).tolist()
        self.epoch, self.start_batch = self.epoch + 1, 0

    def __len__(self) -> int:
        return len(self.global_batches())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.start_batch = int(state["epoch"]), int(state["start_batch"])


def sampling_plan(
    sizes: Mapping[str, int],
    strategy: Strategy = "proportional",
    *,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
    num_samples: int | None = None,
) -> pd.DataFrame:
    """Per dataset: size, draw probability, draws per epoch (:func:`draw_counts`) and passes over it.

    ``passes`` > 1 means the dataset's structures repeat within an epoch (over-sampling), < 1 that
    some are not seen (under-sampling); ``num_samples`` defaults to the total size.
    """
    import pandas as pd

    names = list(sizes)
    n = np.array([sizes[k] for k in names], dtype=np.float64)
    w = None if weights is None else [float(weights.get(k, 0.0)) for k in names]
    p = dataset_probabilities(n, strategy, temperature=temperature, weights=w)
    draws = draw_counts(p, int(n.sum()) if num_samples is None else int(num_samples)).astype(np.float64)
    return pd.DataFrame(
        {"dataset": names, "structures": n.astype(int), "share": n / n.sum(), "probability": p,
         "draws_per_epoch": draws, "passes": np.divide(draws, n, out=np.zeros_like(n), where=n > 0)}
    )
