"""A minimal training loop for model tests (the real trainer lives in gfmkit.train)."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from gfmkit.data.graphs import collate, structure_graph


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
    """AdamW on per-atom energy MSE + force MSE; returns the loss history."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=lr / 20)
    history = []
    for _ in range(steps):
        pick = torch.randperm(len(graphs), generator=generator)[:batch_size].tolist()
        batch = collate([graphs[i] for i in pick])
        out = model(batch, forces=True, training=True)
        natoms = batch.natoms.to(out["energy"].dtype)
        loss = ((out["energy"] - batch.energy) / natoms).square().mean() + force_weight * (out["forces"] - batch.forces).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(float(loss.detach()))
    return history


def force_mae(model, graphs) -> float:
    batch = collate(graphs)
    return float((model(batch, forces=True)["forces"] - batch.forces).abs().mean())


def fit_multi(model, dataset, steps: int, *, lr: float = 3e-3, batch_size: int = 8, seed: int = 0):
    """Train a multi-head model on a GraphDataset with the temperature sampler (energy, forces and
    property losses, each masked where a dataset lacks the label)."""
    from gfmkit.data.graphs import make_loader
    from gfmkit.data.sampling import DatasetMixer, GlobalBatchSampler

    mixer = DatasetMixer(dataset.head, strategy="temperature", temperature=2.0, num_samples=steps * batch_size, seed=seed)
    loader = make_loader(dataset, GlobalBatchSampler(mixer, dataset.natoms, batch_size=batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scale = model.readout.scale
    for batch in loader:
        out = model(batch, forces=True, training=True)
        head_scale = scale.index_select(0, batch.dataset).to(out["energy"].dtype)
        is_energy = model.readout.is_energy.index_select(0, batch.dataset)
        natoms = batch.natoms.to(out["energy"].dtype)
        target = torch.where(is_energy, batch.energy, batch.properties[:, 0] if batch.properties.shape[1] else batch.energy)
        per = torch.where(is_energy, (out["energy"] - target) / natoms, out["energy"] - target) / head_scale
        atom_scale = head_scale.index_select(0, batch.batch)[:, None]
        atom_mask = batch.forces_mask.index_select(0, batch.batch)[:, None]
        loss = per.square().mean() + ((out["forces"] - batch.forces) / atom_scale).square().where(atom_mask, 0.0).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model
