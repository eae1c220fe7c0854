"""A minimal training loop for model tests on plain graph lists (the trainer lives in gfmkit.train; the
loss is its own, so model tests train on exactly what runs train on)."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from gfmkit.data.graphs import collate, structure_graph
from gfmkit.train.config import LossConfig
from gfmkit.train.loss import HeadTable, combine, loss_parts


def emt_copper(n: int, seed: int = 0, rattle: float = 0.1) -> list[Atoms]:
    """Rattled, slightly strained 8-atom fcc Cu cells with EMT energy and forces."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 * rng.uniform(0.98, 1.03), cubic=True) * (1, 1, 2)
        atoms.rattle(rattle, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    return frames


def graphs_of(frames: list[Atoms], cutoff: float, dtype=torch.float64) -> list:
    return [
        structure_graph(
            {"numbers": a.numbers, "positions": a.positions, "cell": a.cell[:], "pbc": a.pbc,
             "energy": a.get_potential_energy(), "forces": a.get_forces()},
            0, cutoff, dtype=dtype,
        )
        for a in frames
    ]


def fit(model, graphs, steps: int, *, lr: float = 3e-3, batch_size: int = 8, force_weight: float = 10.0, seed: int = 0):
    """AdamW on gfmkit's loss (per-atom energy MSE + force MSE, unnormalised); returns the loss history."""
    heads = HeadTable.from_model(model, [])
    config = LossConfig(kind="mse", energy=1.0, forces=force_weight, stress=0.0, normalise=False)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=lr / 20)
    history = []
    for _ in range(steps):
        pick = torch.randperm(len(graphs), generator=generator)[:batch_size].tolist()
        batch = collate([graphs[i] for i in pick])
        sums, counts = loss_parts(model(batch, forces=True, training=True), batch, heads, config)
        loss = combine(sums, counts, heads, config)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(float(loss.detach()))
    return history


def force_mae(model, graphs) -> float:
    batch = collate(graphs)
    return float((model(batch, forces=True)["forces"] - batch.forces).abs().mean())

