"""Multi-head loss: every structure's terms routed to its own head, masked, summed per head and term.

:func:`loss_parts` returns two (n_heads, 4) tables for a batch: ``sums`` (differentiable) and
``counts`` of the ``energy``, ``forces``, ``stress`` and ``property`` terms. The trainer sums the counts
over ranks *before* the backward pass and divides by those global counts (:func:`combine`), so N ranks
holding slices of one global batch produce exactly the gradient of one rank holding all of it, however
unevenly structures, atoms and heads are spread over the ranks.

Residuals (each divided by the head's fitted ``scale`` when ``normalise``):

- energy: (E_pred - E) / natoms, for energy heads on structures with an energy label;
- forces: each Cartesian component, for atoms of structures with forces (energy heads);
- stress: each of the 9 components times volume / natoms (an energy per atom, as the energy term),
  for fully periodic structures with a stress label;
- property: the graph-level prediction minus the head's target property (property heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gfmkit.train.config import LossConfig

TERMS = ("energy", "forces", "stress", "property")


@dataclass
class HeadTable:
    """What the loss needs per head, as tensors indexed by head (on the model's device)."""

    is_energy: torch.Tensor  # (H,) bool
    scale: torch.Tensor  # (H,) float64
    property_column: torch.Tensor  # (H,) long: column of batch.properties, -1 when none
    weight: torch.Tensor  # (H,) float64 per-dataset loss weight

    @classmethod
    def from_model(cls, model, property_names: list[str], weights: dict[str, float] | None = None) -> HeadTable:
        unknown = sorted(set(weights or {}) - set(model.head_names))
        if unknown:
            raise ValueError(f"loss.datasets names unknown dataset(s) {unknown}; heads are {model.head_names}")
        device = model.readout.scale.device
        columns = [
            property_names.index(h.target) if h.kind == "property" and h.target in property_names else -1 for h in model.heads
        ]
        return cls(
            is_energy=model.readout.is_energy.clone(),
            scale=model.readout.scale.detach().clone().double(),
            property_column=torch.tensor(columns, dtype=torch.long, device=device),
            weight=torch.tensor([float((weights or {}).get(h.name, 1.0)) for h in model.heads], dtype=torch.float64, device=device),
        )

    @property
    def n(self) -> int:
        return int(self.is_energy.numel())


def elementwise(kind: str, residual: torch.Tensor, delta: float = 0.01) -> torch.Tensor:
    """The per-element loss of ``kind`` (mse, mae, huber) of a residual."""
    if kind == "mse":
        return residual.square()
    if kind == "mae":
        return residual.abs()
    if kind == "huber":
        return torch.nn.functional.huber_loss(residual, torch.zeros_like(residual), reduction="none", delta=delta)
    raise ValueError(f"unknown loss kind {kind!r}; choose mse, mae or huber")


def wants_stress(batch, config: LossConfig) -> bool:
    """Whether the batch has a stress term to fit (so the model must compute stress)."""
    return config.stress > 0 and bool((batch.stress_mask & batch.pbc.all(dim=1)).any())


def loss_parts(
    out: dict[str, torch.Tensor], batch, heads: HeadTable, config: LossConfig, *, physical: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums, counts), each (n_heads, 4) in float64: per head and term, the summed element losses and
    how many elements (structures, force components, stress components) they cover.

    ``physical=True`` gives errors in physical units instead (no scale, stress in eV/Å^3): with
    ``kind='mae'`` the sums over counts are MAEs (energy eV/atom, forces eV/Å, stress eV/Å^3)."""
    dtype = torch.float64
    device = heads.scale.device
    n = heads.n
    d = batch.dataset
    atom_graph = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(batch.z)
    atom_head = d.index_select(0, atom_graph)
    scale = heads.scale if config.normalise and not physical else torch.ones_like(heads.scale)
    structure_scale = scale.index_select(0, d)
    is_energy = heads.is_energy.index_select(0, d)
    natoms = batch.natoms.to(dtype)
    sum_columns = [torch.zeros(n, dtype=dtype, device=device) for _ in TERMS]
    count_columns = [torch.zeros(n, dtype=dtype, device=device) for _ in TERMS]

    def add(term: int, head_of: torch.Tensor, values: torch.Tensor, count: torch.Tensor) -> None:
        sum_columns[term] = sum_columns[term].index_add(0, head_of, values.to(dtype))
        count_columns[term] = count_columns[term].index_add(0, head_of, count.to(dtype))

    energy = out["energy"].to(dtype)
    # energy per atom, energy heads
    mask = is_energy & batch.energy_mask
    residual = (energy - batch.energy.to(dtype)) / natoms / structure_scale
    add(0, d, torch.where(mask, elementwise(config.kind, residual, config.huber_delta), 0.0), mask)
    # forces, per component
    if "forces" in out:
        mask = (batch.forces_mask & is_energy).index_select(0, atom_graph)
        residual = (out["forces"].to(dtype) - batch.forces.to(dtype)) / scale.index_select(0, atom_head)[:, None]
        per_atom = elementwise(config.kind, residual, config.huber_delta).sum(dim=1)
        add(1, atom_head, torch.where(mask, per_atom, 0.0), 3 * mask)
    # stress, per component, as energy per atom
    if "stress" in out:
        mask = batch.stress_mask & batch.pbc.all(dim=1) & is_energy
        if physical:
            factor = torch.ones_like(natoms)
        else:
            factor = torch.abs(torch.linalg.det(batch.cell.to(dtype))) / natoms / structure_scale
        residual = (out["stress"].to(dtype) - batch.stress.to(dtype)) * factor[:, None, None]
        per_structure = elementwise(config.kind, residual, config.huber_delta).sum(dim=(1, 2))
        add(2, d, torch.where(mask, per_structure, 0.0), 9 * mask)
    # graph-level properties
    column = heads.property_column.index_select(0, d)
    has_column = column >= 0
    if batch.properties.shape[1] and bool(has_column.any()):
        safe = column.clamp(min=0)[:, None]
        target = batch.properties.to(dtype).gather(1, safe).squeeze(1)
        labelled = batch.properties_mask.gather(1, safe).squeeze(1)
        mask = ~is_energy & has_column & labelled
        residual = (energy - target) / structure_scale
        add(3, d, torch.where(mask, elementwise(config.kind, residual, config.huber_delta), 0.0), mask)
    return torch.stack(sum_columns, dim=1), torch.stack(count_columns, dim=1)


def absolute_errors(out: dict[str, torch.Tensor], batch, heads: HeadTable) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums of absolute errors, counts), (n_heads, 4), in physical units (see :func:`loss_parts`)."""
    return loss_parts(out, batch, heads, _MAE, physical=True)


_MAE = LossConfig(kind="mae", normalise=False)


def term_weights(config: LossConfig, device=None) -> torch.Tensor:
    return torch.tensor([config.energy, config.forces, config.stress, config.property], dtype=torch.float64, device=device)


def combine(sums: torch.Tensor, global_counts: torch.Tensor, heads: HeadTable, config: LossConfig) -> torch.Tensor:
    """The scalar loss: sum over terms of weight_t * sum_h w_h sums[h, t] / N_t, with N_t the term's
    element count over all heads and all ranks (so that the per-rank losses add up to the global one)."""
    per_term = (heads.weight[:, None] * sums).sum(dim=0)
    totals = global_counts.sum(dim=0).clamp(min=1.0)
    return (term_weights(config, sums.device) * per_term / totals).sum()
