"""Composition vectors, head weights and reference energies of the weighted head.

Heads of different levels of theory differ mostly by per-element offsets (their reference energies),
so a weighted prediction mixes *reference-removed* head energies and then adds the references of one
target head: ``E_w = sum_k w_k (E_k - R_k) + R_target`` with ``R_k = sum_atoms ref_k[z]``. Weights
depend on the composition (element fractions) only, never on positions, so the weighted energy's
forces and stress are conservative (``-dE_w/dx = sum_k w_k F_k``).

Training-free weights (:func:`overlap_weights`): a head's *coverage* of a structure is the share of its
atoms whose element the head's training data holds, each element counted in full once its share
of the head's training atoms reaches ``floor`` (1%) and in proportion below that::

    o_k = sum_z c(z) * min(1, p_k(z) / floor)        c: the structure's element fractions
                                                     p_k: head k's training element fractions
    w_k = o_k^sharpness / sum_j o_j^sharpness         (uniform where every o_k is 0)

``p_k`` is :attr:`HeadConfig.composition` when known (:func:`set_head_compositions` fills it from the
stores), else uniform over the elements the head has reference energies for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from gfmkit.data import store_format as fmt

#: sharpness of the overlap weights (the power of the coverage) and the element share counted in full
SHARPNESS = 4.0
FLOOR = 0.01
#: how far weights may sum from one
SUM_TOLERANCE = 1e-6


def element_counts(z: torch.Tensor, graph_of_atom: torch.Tensor, n_graphs: int, max_z: int) -> torch.Tensor:
    """(B, max_z + 1) float64 atom counts per element of each structure."""
    counts = torch.zeros(n_graphs, max_z + 1, dtype=torch.float64, device=z.device)
    return counts.index_put_((graph_of_atom, z), torch.ones_like(z, dtype=torch.float64), accumulate=True)


def element_fractions(counts: torch.Tensor) -> torch.Tensor:
    """Element fractions (rows sum to one) from :func:`element_counts`."""
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)


def batch_counts(model: Any, batch: Any) -> torch.Tensor:
    """:func:`element_counts` of a PyG batch with ``model``'s element range."""
    graph_of_atom = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(batch.z)
    return element_counts(batch.z, graph_of_atom, int(batch.natoms.numel()), model.config.max_z)


def reference_vector(model: Any, target: str | Mapping[str, float]) -> torch.Tensor:
    """(max_z + 1,) float64 per-element references of the target: a head's name, or a mapping of element
    symbol to energy (eV) for a level of theory no head has."""
    if isinstance(target, str):
        return model.readout.reference[model.head_index(target)]
    vector = torch.zeros(model.config.max_z + 1, dtype=torch.float64, device=model.readout.reference.device)
    for symbol, value in target.items():
        if symbol not in atomic_numbers:
            raise ValueError(f"target references: {symbol!r} is not an element symbol")
        vector[atomic_numbers[symbol]] = float(value)
    return vector


def default_target(model: Any) -> str:
    """The head whose references a weighted prediction adds when none is named: the model's first energy
    head (registry order; the demo's ``bulk``)."""
    for head in model.heads:
        if head.kind == "energy":
            return head.name
    raise ValueError(f"model has no energy head to weight; heads: {model.head_names}")


def choose_heads(model: Any, heads: str | Sequence[str]) -> list[int]:
    """Indices of ``heads`` ("all" or names) in the model; a name the model lacks is a KeyError naming it."""
    if isinstance(heads, str):
        if heads == "all":
            return list(range(len(model.heads)))
        heads = [heads]
    chosen = [model.head_index(name) for name in heads]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"heads named twice: {list(heads)}")
    if not chosen:
        raise ValueError("no heads chosen")
    return chosen


def head_compositions(model: Any) -> torch.Tensor:
    """(n_heads, max_z + 1) float64 training element fractions of each head (see the module doc)."""
    table = torch.zeros(len(model.heads), model.config.max_z + 1, dtype=torch.float64)
    for k, head in enumerate(model.heads):
        shares = head.training_composition()
        total = sum(shares.values())
        for symbol, share in shares.items():
            table[k, atomic_numbers[symbol]] = share / total if total > 0 else 0.0
    return table.to(model.readout.reference.device)


def overlap_weights(model: Any, fractions: torch.Tensor, chosen: Sequence[int], *, sharpness: float = SHARPNESS,
                    floor: float = FLOOR) -> torch.Tensor:
    """(B, len(chosen)) training-free weights of the chosen heads from each structure's element fractions
    (formula in the module doc); heads that are not energy heads get 0."""
    known = (head_compositions(model)[list(chosen)] / floor).clamp(max=1.0)  # (K, Z)
    coverage = fractions.to(known.dtype) @ known.T  # (B, K)
    energy = model.readout.is_energy[list(chosen)].to(coverage.device)
    score = torch.where(energy, coverage.clamp_min(0.0) ** sharpness, torch.zeros_like(coverage))
    total = score.sum(dim=1, keepdim=True)
    uniform = energy.to(score.dtype).expand_as(score) / energy.sum().clamp_min(1)
    return torch.where(total > 0, score / total.clamp_min(1e-300), uniform)


def uniform_weights(model: Any, n_graphs: int, chosen: Sequence[int]) -> torch.Tensor:
    """(B, K) equal weights on the chosen energy heads."""
    energy = model.readout.is_energy[list(chosen)].to(torch.float64)
    return (energy / energy.sum().clamp_min(1)).expand(n_graphs, -1).clone()


def given_weights(model: Any, weights: Mapping[str, float] | torch.Tensor | np.ndarray | Sequence[float],
                  n_graphs: int, chosen: Sequence[int]) -> torch.Tensor:
    """(B, K) weights a user gave: a mapping head name -> weight (unnamed chosen heads get 0), or an
    array (K,) or (B, K) over the chosen heads. They must sum to one and sit on energy heads."""
    names = [model.heads[k].name for k in chosen]
    if isinstance(weights, Mapping):
        row = torch.zeros(len(chosen), dtype=torch.float64)
        for name, value in weights.items():
            model.head_index(name)  # a head the model lacks: KeyError naming it
            if name not in names:
                raise ValueError(f"weights name head {name!r}, which is not among the chosen heads {names}")
            row[names.index(name)] = float(value)
        table = row.expand(n_graphs, -1).clone()
    else:
        table = torch.as_tensor(np.asarray(weights, dtype=np.float64) if not torch.is_tensor(weights) else weights,
                                dtype=torch.float64)
        if table.ndim == 1:
            table = table.expand(n_graphs, -1).clone()
        if table.shape != (n_graphs, len(chosen)):
            raise ValueError(f"weights of shape {tuple(table.shape)}: expected ({len(chosen)},) or "
                             f"({n_graphs}, {len(chosen)}) over the heads {names}")
    sums = table.sum(dim=1)
    worst = int((sums - 1).abs().argmax()) if len(sums) else 0
    if len(sums) and abs(float(sums[worst]) - 1) > SUM_TOLERANCE:
        raise ValueError(f"head weights must sum to one; they sum to {float(sums[worst]):.6g}"
                         + (f" for structure {worst}" if table.shape[0] > 1 and not isinstance(weights, Mapping) else ""))
    for column, k in enumerate(chosen):
        if model.heads[k].kind != "energy" and bool((table[:, column] != 0).any()):
            raise ValueError(f"head {model.heads[k].name!r} predicts {model.heads[k].target!r}, not an energy: "
                             "it cannot be weighted")
    return table.to(model.readout.reference.device)


def set_head_compositions(model: Any, stores: Any, *, split: str = "train") -> dict[str, dict[str, float]]:
    """Fill each head's :attr:`HeadConfig.composition` (element fractions of its dataset's ``split``,
    all structures when the split is empty) from ``stores`` (a MultiStore); returns them. Heads without
    a store of their name keep theirs."""
    found = {}
    for name in stores.registry.names:
        if name not in model.head_names:
            continue
        store = stores.store(name)
        indices = store.split_indices(split)
        indices = indices if len(indices) else np.arange(len(store))
        numbers = np.concatenate([store.arrays(int(i))[fmt.NUMBERS] for i in indices]) if len(indices) else np.zeros(0, int)
        values, counts = np.unique(numbers, return_counts=True)
        shares = {chemical_symbols[int(z)]: float(c / counts.sum()) for z, c in zip(values, counts)}
        model.heads[model.head_index(name)].composition = shares
        found[name] = shares
    return found
