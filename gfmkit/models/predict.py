"""Every head from one encoder pass: energies, per-head or weighted forces and stress, head weights and
the heads' disagreement (:func:`predict`, also ``model.predict``).

``forces="each"`` differentiates the K chosen heads' energies on the one graph of one pass: K
``autograd.grad`` calls that keep the graph (``per_head="loop"``, the default) or one batched
vector-Jacobian product (``per_head="batched"``, ``is_grads_batched=True``, i.e. vmap over the
backward). ``forces="weighted"`` needs one backward of the weighted energy. Which is faster where is
measured in benchmarks/multihead_speed.py (docs/multihead.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from gfmkit.models import weighting as hw

FORCE_MODES = ("none", "each", "weighted")
PER_HEAD_METHODS = ("loop", "batched")


@dataclass
class Prediction:
    """What :func:`predict` returns (tensors detached, in the batch's dtype; B structures, N atoms, K heads).

    ``energies`` (B, K): the chosen heads' totals (eV; a property head's property). ``weights`` (B, K):
    head weights (0 on property heads). ``energy`` (B,): the weighted energy, references of ``target``.
    ``forces``: (K, N, 3) per head (NaN for property heads) with ``forces="each"``, (N, 3) weighted with
    ``"weighted"``, else None; ``stress`` likewise (K, B, 3, 3) or (B, 3, 3), eV/Å^3, zeros where not
    fully periodic. ``energy_spread`` (B,): standard deviation across the chosen energy heads of the
    reference-removed energy per atom (eV/atom); ``forces_spread`` (B,), with ``forces="each"``: the
    root mean square over a structure's atoms of the per-atom force spread across heads (eV/Å).
    """

    heads: list[str]
    energies: torch.Tensor
    weights: torch.Tensor
    energy: torch.Tensor
    target: str
    natoms: torch.Tensor
    energy_spread: torch.Tensor
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    forces_spread: torch.Tensor | None = None

    def head(self, name: str) -> int:
        """Column of head ``name`` in ``energies``/``weights`` (axis 0 of per-head forces and stress)."""
        if name not in self.heads:
            raise KeyError(f"no head {name!r} in this prediction; heads: {self.heads}")
        return self.heads.index(name)


def predict(
    model: Any,
    batch: Any,
    *,
    heads: str | Sequence[str] = "all",
    forces: Literal["none", "each", "weighted"] = "none",
    stress: bool = False,
    weights: str | Mapping[str, float] | torch.Tensor | Sequence[float] = "auto",
    target: str | Mapping[str, float] | None = None,
    per_head: Literal["loop", "batched"] = "loop",
) -> Prediction:
    """Every chosen head's prediction for ``batch`` from one encoder pass.

    ``heads``: "all" or head names. ``forces``: "none", "each" (per-head forces, and with ``stress``
    per-head stress) or "weighted" (forces/stress of the weighted energy, one backward). ``weights``:
    "auto" (the model's gate when it has one, else "overlap"), "gate", "overlap", "uniform", a mapping
    head name -> weight, or an array (K,) / (B, K) over the chosen heads; they must sum to one.
    ``target``: the head whose reference energies the weighted energy carries (default: the model's
    first energy head), or a mapping element -> reference energy (eV). ``per_head``: how per-head
    forces are differentiated ("loop" or "batched": equal results, see the module doc).
    """
    if forces not in FORCE_MODES:
        raise ValueError(f"forces={forces!r}: expected one of {FORCE_MODES}")
    if per_head not in PER_HEAD_METHODS:
        raise ValueError(f"per_head={per_head!r}: expected one of {PER_HEAD_METHODS}")
    if stress and forces == "none":
        raise ValueError("stress follows the forces: ask forces='each' (per-head stress) or 'weighted'")
    chosen = hw.choose_heads(model, heads)
    names = [model.heads[k].name for k in chosen]
    if target is None:  # a model without energy heads has nothing to weight: no references
        target = hw.default_target(model) if bool(model.readout.is_energy.any()) else {}
    target_references = hw.reference_vector(model, target)
    counts = hw.batch_counts(model, batch)
    n_graphs = counts.shape[0]
    table = head_weights(model, weights, hw.element_fractions(counts), chosen)

    conservative = forces != "none" and model.direct is None
    with torch.enable_grad() if conservative or stress else torch.no_grad():
        state = model.head_pass(batch, positions=conservative, stress=stress)
        totals = state.totals[:, chosen]
        out_forces = out_stress = None
        if forces == "each":
            out_forces, out_stress = _per_head(model, batch, state, totals, chosen, stress, per_head)
        elif forces == "weighted":
            out_forces, out_stress = _weighted(model, batch, state, totals, table, chosen, stress)

    dtype = totals.dtype
    totals = totals.detach()
    removed = totals - (counts @ model.readout.reference[chosen].T).to(dtype)  # reference-removed
    energy = (table.to(dtype) * removed).sum(dim=1) + (counts @ target_references).to(dtype)
    is_energy = model.readout.is_energy[chosen]
    natoms = batch.natoms.to(dtype)
    spread = _std_over_heads((removed / natoms[:, None])[:, is_energy].T)  # (B,)
    forces_spread = None
    if forces == "each" and int(is_energy.sum()) > 0:
        graph_of_atom = state.graph_of_atom
        per_atom = _std_over_heads(out_forces[is_energy]).square().sum(dim=-1)  # (N,) summed variance
        mean = torch.zeros(n_graphs, dtype=dtype, device=per_atom.device).index_add(0, graph_of_atom, per_atom)
        forces_spread = (mean / natoms).sqrt()
    return Prediction(names, totals, table.to(dtype), energy, target if isinstance(target, str) else "custom",
                      batch.natoms, spread, out_forces, out_stress, forces_spread)


def head_weights(model: Any, weights: Any, fractions: torch.Tensor, chosen: Sequence[int]) -> torch.Tensor:
    """(B, K) float64 weights of the chosen heads: see :func:`predict`'s ``weights``."""
    n_graphs = fractions.shape[0]
    if isinstance(weights, str):
        if weights == "auto":
            weights = "gate" if model.gate is not None else "overlap"
        if weights == "gate":
            if model.gate is None:
                raise ValueError("weights='gate': this model has no gate; fit one with gfmkit.models.fit_head_gate")
            with torch.no_grad():
                table = model.gate(fractions).double()[:, list(chosen)]
            table = table * model.readout.is_energy[list(chosen)]
            return table / table.sum(dim=1, keepdim=True).clamp_min(1e-300)
        if weights == "overlap":
            return hw.overlap_weights(model, fractions, chosen)
        if weights == "uniform":
            return hw.uniform_weights(model, n_graphs, chosen).to(fractions.device)
        if weights in model.head_names:
            weights = {weights: 1.0}
        else:
            raise ValueError(f"weights={weights!r}: expected 'auto', 'gate', 'overlap', 'uniform', a head name, "
                             "a mapping head -> weight or an array")
    return hw.given_weights(model, weights, n_graphs, chosen)


def _std_over_heads(values: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over axis 0 (zeros with fewer than two heads)."""
    if values.shape[0] < 2:
        return torch.zeros_like(values[0]) if values.shape[0] else values.new_zeros(values.shape[1:])
    return values.std(dim=0, correction=0)


def _per_head(model, batch, state, totals, chosen, stress, method):
    """(K, N, 3) forces and (K, B, 3, 3) stress (or None) of each chosen head from the one graph."""
    from gfmkit.models.multihead import run_direct, strain_to_stress

    k_heads = len(chosen)
    is_energy = model.readout.is_energy[chosen]
    energy_columns = [c for c in range(k_heads) if bool(is_energy[c])]
    n_atoms = batch.z.shape[0]
    forces = totals.new_full((k_heads, n_atoms, 3), float("nan"))
    stresses = totals.new_full((k_heads, totals.shape[0], 3, 3), float("nan")) if stress else None
    if model.direct is not None:
        direct = run_direct(model.direct, state.vector_features).detach()  # (N, 3, n_heads)
        for c in energy_columns:
            forces[c] = direct[:, :, chosen[c]]
    inputs = state.inputs()
    if not inputs or not energy_columns:
        return forces, stresses
    if method == "batched":
        basis = torch.zeros(len(energy_columns), *totals.shape, dtype=totals.dtype, device=totals.device)
        for row, c in enumerate(energy_columns):
            basis[row, :, c] = 1.0
        grads = torch.autograd.grad(totals, inputs, grad_outputs=basis, is_grads_batched=True)
    else:
        per = [torch.autograd.grad(totals[:, c].sum(), inputs, retain_graph=row < len(energy_columns) - 1)
               for row, c in enumerate(energy_columns)]
        grads = [torch.stack(parts) for parts in zip(*per)]
    if state.positions is not None:
        forces[energy_columns] = -grads[0]
    if stress:
        stresses[energy_columns] = strain_to_stress(batch, grads[-1])
    return forces, stresses


def _weighted(model, batch, state, totals, table, chosen, stress):
    """(N, 3) forces and (B, 3, 3) stress (or None) of the weighted energy, from one backward. The
    references are constant in positions, so only ``sum_k w_k E_k`` is differentiated."""
    from gfmkit.models.multihead import run_direct, strain_to_stress

    w = table.to(totals.dtype)
    forces = out_stress = None
    if model.direct is not None:
        direct = run_direct(model.direct, state.vector_features).detach()[:, :, chosen]  # (N, 3, K)
        forces = (direct * w.index_select(0, state.graph_of_atom)[:, None, :]).sum(-1)
    inputs = state.inputs()
    if inputs:
        grads = torch.autograd.grad((totals * w).sum(), inputs)
        if state.positions is not None:
            forces = -grads[0]
        if stress:
            out_stress = strain_to_stress(batch, grads[-1])
    return forces, out_stress
