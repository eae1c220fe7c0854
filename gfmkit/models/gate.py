"""A trained head gate: an MLP on a structure's element fractions with a softmax over the heads.

:func:`fit_head_gate` fits it with the encoder and heads frozen. Training target (a decision, see
docs/multihead.md): the energy per atom of labelled structures the heads did not train on (each
dataset's ``val`` split by default). For a structure of dataset d, the gate-weighted energy carries
d's own head's references (its level of theory), ``sum_k w_k (E_k - R_k) + R_d``, and the loss is the
mean squared error of that energy per atom. The frozen heads' reference-removed energies are computed
once (one encoder pass per batch), so fitting the gate itself takes seconds. The gate is a sub-module
of the model (``model.gate``): it is saved in the checkpoint with the weights and rebuilt on loading.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gfmkit.models import weighting as hw

GATE_HIDDEN = 32


class HeadGate(nn.Module):
    """``fractions (B, n_elements) -> softmax(W2 silu(W1 x + b1) + b2)`` (B, n_heads)."""

    def __init__(self, n_elements: int, n_heads: int, hidden: int = GATE_HIDDEN):
        super().__init__()
        self.hidden = nn.Linear(n_elements, hidden)
        self.out = nn.Linear(hidden, n_heads)
        nn.init.zeros_(self.out.weight)  # starts uniform
        nn.init.zeros_(self.out.bias)

    @property
    def n_heads(self) -> int:
        return self.out.out_features

    def forward(self, fractions: torch.Tensor) -> torch.Tensor:
        x = fractions.to(self.hidden.weight.dtype)
        return torch.softmax(self.out(nn.functional.silu(self.hidden(x))), dim=-1)

    @classmethod
    def from_state_dict(cls, state: Any, prefix: str = "") -> HeadGate:
        """An (untrained) gate of the sizes a state dict holds, in its dtype."""
        weight = state[prefix + "hidden.weight"]
        gate = cls(weight.shape[1], state[prefix + "out.weight"].shape[0], weight.shape[0])
        return gate.to(weight.dtype)


@dataclass
class GateFit:
    """What :func:`fit_head_gate` returns: the gate, the loss per step (squared eV/atom) and the
    structures it was fitted on per dataset."""

    gate: HeadGate
    losses: list[float]
    structures: dict[str, int]


def store_batches(model: Any, stores: Any, *, split: str | None, batch_size: int = 16,
                  max_structures: int | None = None, dtype: torch.dtype | None = None,
                  datasets: Collection[str] | None = None,
                  heads: Mapping[str, str] | None = None) -> Iterator[tuple[str, list[str], Any]]:
    """Batches of ``stores`` (a MultiStore) for ``model``: (dataset name, each structure's dataset, batch),
    one dataset at a time (only ``datasets`` when given), each structure labelled with the head ``heads``
    names for its dataset, else its dataset's head when the model has one, else head 0.
    ``max_structures`` caps each dataset (the first of its split)."""
    from gfmkit.data.graphs import GraphDataset, collate

    dtype = dtype or (torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32)
    dataset = GraphDataset(stores, model.config.cutoff, split=split, dtype=dtype)
    names = stores.registry.names
    of = np.array([names[h] for h in dataset.head]) if len(dataset) else np.array([], dtype=str)
    device = next(model.parameters()).device
    for name in dict.fromkeys(of.tolist()):
        if datasets is not None and name not in datasets:
            continue
        items = np.flatnonzero(of == name)[:max_structures]
        head_name = (heads or {}).get(name, name)
        head = model.head_names.index(head_name) if head_name in model.head_names else 0
        for start in range(0, len(items), batch_size):
            graphs = [dataset[int(k)] for k in items[start : start + batch_size]]
            batch = collate(graphs).to(device)
            batch.dataset = torch.full_like(batch.dataset, head)
            yield name, [name] * len(graphs), batch


def fit_head_gate(
    model: Any,
    stores: Any,
    *,
    split: str = "val",
    hidden: int = GATE_HIDDEN,
    steps: int = 500,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    max_structures: int | None = None,
    seed: int = 0,
) -> GateFit:
    """Fit a :class:`HeadGate` for ``model`` (encoder and heads frozen) on the energy datasets of
    ``stores`` (a MultiStore) that have a head of their name, their ``split``; attach it
    (``model.set_gate``) and record each head's training composition for overlap weights when the
    heads have none. Full-batch Adam for ``steps`` steps on the cached head energies."""
    energy_heads = [k for k, h in enumerate(model.heads) if h.kind == "energy"]
    if not any(model.heads[k].composition for k in energy_heads):
        hw.set_head_compositions(model, stores)
    fractions, removed, target, natoms, counted = [], [], [], [], {}
    model.eval()
    for name, _, batch in store_batches(model, stores, split=split, batch_size=batch_size, max_structures=max_structures):
        own = model.head_index(name) if name in model.head_names else None
        if own is None or model.heads[own].kind != "energy":
            continue
        with torch.no_grad():
            counts = hw.batch_counts(model, batch)
            totals = model.head_pass(batch, positions=False, stress=False).totals.double()
        keep = batch.energy_mask
        references = counts @ model.readout.reference.T  # (B, n_heads)
        fractions.append(hw.element_fractions(counts)[keep])
        removed.append((totals - references)[keep][:, energy_heads])
        target.append((batch.energy.double() - references[:, own])[keep])
        natoms.append(batch.natoms.double()[keep])
        counted[name] = counted.get(name, 0) + int(keep.sum())
    if not fractions:
        raise ValueError(f"no labelled energy structures of the model's heads {model.head_names} in the {split!r} split")
    fractions, removed, target, natoms = (torch.cat(x) for x in (fractions, removed, target, natoms))

    generator = torch.Generator().manual_seed(seed)
    gate = HeadGate(model.config.max_z + 1, len(model.heads), hidden).double()
    with torch.no_grad():
        bound = 1 / np.sqrt(model.config.max_z + 1)
        gate.hidden.weight.uniform_(-bound, bound, generator=generator)
    mask = torch.full((len(model.heads),), float("-inf"), dtype=torch.float64)
    mask[energy_heads] = 0.0
    optimiser = torch.optim.Adam(gate.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    device_x = fractions.cpu()
    for _ in range(steps):
        optimiser.zero_grad()
        logits = gate.out(nn.functional.silu(gate.hidden(device_x))) + mask
        w = torch.softmax(logits, dim=-1)[:, energy_heads]
        error = ((w * removed.cpu()).sum(dim=1) - target.cpu()) / natoms.cpu()
        loss = error.square().mean()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():  # property heads never get weight: a very negative bias
        gate.out.bias[[k for k in range(len(model.heads)) if k not in energy_heads]] = -1e4
    parameter = next(model.parameters())
    gate = gate.to(device=parameter.device, dtype=parameter.dtype)
    model.set_gate(gate)
    return GateFit(gate, losses, counted)
