"""A trained model in use: learning EMT Cu, checkpoints, the ASE calculator in relaxations and NVE MD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE
from training import emt_copper, fit, force_mae, graphs_of

import gfmkit
from gfmkit.models import (
    CheckpointError,
    HeadConfig,
    ModelConfig,
    MultiHeadPaiNN,
    build_model,
    save_checkpoint,
)


@pytest.mark.slow
def test_learns_emt_copper_forces():
    """Stated target: test force MAE below 0.08 eV/Å (a zero predictor: ~0.9) within 300 AdamW steps."""
    torch.manual_seed(0)
    train, test = emt_copper(64, seed=0), emt_copper(16, seed=1)
    per_atom = sum(a.get_potential_energy() for a in train) / sum(len(a) for a in train)
    config = ModelConfig(hidden=32, layers=2, n_rbf=10, cutoff=4.5, head_hidden=16)
    model = MultiHeadPaiNN(config, [HeadConfig("cu", reference_energies={"Cu": per_atom}, scale=0.5)]).float()
    train_graphs, test_graphs = graphs_of(train, 4.5, torch.float32), graphs_of(test, 4.5, torch.float32)
    zero = float(torch.cat([g.forces for g in test_graphs]).abs().mean())
    before = force_mae(model, test_graphs)
    history = fit(model, train_graphs, steps=300, lr=5e-3)
    after = force_mae(model, test_graphs)
    assert np.mean(history[-20:]) < 0.2 * np.mean(history[:20])
    assert after < 0.08 < zero and after < 0.2 * before, (before, after, zero)


def test_build_model_fits_head_statistics_from_stores(demo_stores):
    model = build_model(ModelConfig(hidden=8, layers=1, n_rbf=4, cutoff=4.0, head_hidden=4), demo_stores)
    assert model.head_names == demo_stores.registry.names
    bulk_head = model.heads[model.head_index("bulk")]
    store = demo_stores.store("bulk")
    assert bulk_head.level_of_theory == "EMT" and set(bulk_head.reference_energies) >= set(store.elements)
    assert model.heads[model.head_index("bulk_modulus")].kind == "property"
    assert model.heads[model.head_index("bulk_modulus")].pooling == "mean"
    # the references are the store's isolated-atom energies (given), not a fit
    assert bulk_head.reference_energies == pytest.approx(store.reference_energies)


def test_checkpoint_from_file_alone_and_errors(tiny_checkpoint, tmp_path):
    model = gfmkit.load_model(tiny_checkpoint)
    assert "bulk" in model.head_names and next(model.parameters()).dtype == torch.float64
    data = torch.load(tiny_checkpoint, weights_only=True)
    assert data["registry"] == model.head_names and data["gfmkit_version"] == gfmkit.__version__

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        gfmkit.load_model(truncated)
    newer = tmp_path / "newer.pt"
    torch.save({**data, "schema_version": 99}, newer)
    with pytest.raises(CheckpointError, match="newer than this gfmkit"):
        gfmkit.load_model(newer)
    older = tmp_path / "older.pt"
    legacy = {k: v for k, v in data.items() if k not in ("heads", "dtype")}
    legacy.update(schema_version=0, datasets=model.head_names)
    torch.save(legacy, older)
    migrated = gfmkit.load_model(older)  # schema 0 -> 1: heads from names, float32
    assert migrated.head_names == model.head_names
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        gfmkit.load_model(tmp_path / "missing.pt")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "gfmkit-checkpoint", "payload": Exception("code")}, evil)
    with pytest.raises(CheckpointError):
        gfmkit.load_model(evil)  # weights_only refuses arbitrary objects


def test_calculator_relaxes_a_structure(tiny_checkpoint):
    model = gfmkit.load_model(tiny_checkpoint)
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True) * (2, 1, 1)
    atoms.numbers[::3] = 79
    atoms.rattle(0.05, seed=2)
    atoms.calc = model.calculator(head="bulk")
    start = atoms.get_potential_energy()
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.isfinite(stress).all()
    # FIRE, not BFGS: BFGS (no line search, a fixed initial Hessian) stalled at fmax ~0.6 eV/Å on the
    # non-convex surface of this briefly trained model once its initial weights changed (issue #15), while
    # its forces matched finite differences and FIRE converged in < 100 steps for the old and new defaults
    assert FIRE(atoms, logfile=None).run(fmax=0.02, steps=1000)
    assert np.abs(atoms.get_forces()).max() < 0.02 and atoms.get_potential_energy() < start
    with pytest.raises(KeyError, match="no head 'nope'"):
        model.calculator(head="nope")
    with pytest.raises(ValueError, match="not an energy"):
        model.calculator(head="bulk_modulus")


@pytest.mark.slow
def test_nve_energy_drift_below_1_mev_per_atom(tiny_checkpoint):
    model = gfmkit.load_model(tiny_checkpoint)
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True) * (2, 2, 2)
    atoms.numbers[np.random.default_rng(0).random(len(atoms)) < 0.3] = 79
    atoms.calc = model.calculator(head="bulk")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
    total = []
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.attach(lambda: total.append(atoms.get_total_energy()), interval=10)
    dynamics.run(1000)
    drift = (max(total) - min(total)) / len(atoms)
    assert np.isfinite(total).all() and drift < 1e-3, f"energy drift {drift * 1e3:.3f} meV/atom"
    assert atoms.get_temperature() > 50  # the atoms really moved


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    model = MultiHeadPaiNN(ModelConfig(hidden=8, layers=1, n_rbf=4, head_hidden=4), [HeadConfig("a")])
    target = save_checkpoint(model, tmp_path / "m.pt")
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(model, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
