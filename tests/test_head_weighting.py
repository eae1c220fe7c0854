"""Head weighting on the demo model: the gate (fit, checkpoint round trip), training compositions,
older checkpoints, and the weighted ASE calculator (results, forces, a relaxation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.optimize import FIRE
from model_checks import graph

from gfmkit import load_model
from gfmkit.data.graphs import collate
from gfmkit.models import HeadGate, fit_head_gate, save_checkpoint
from gfmkit.models.checkpoint import checkpoint_dict


@pytest.fixture(scope="module")
def gated(tiny_checkpoint, demo_stores):
    torch.set_num_threads(1)
    model = load_model(tiny_checkpoint).double()
    fit = fit_head_gate(model, demo_stores, steps=200, max_structures=40)
    return model, fit


def batch_of(atoms, model):
    """A batch of one structure with the model's own cutoff."""
    return collate([graph(atoms, 0, torch.float64, cutoff=model.config.cutoff)])


def alloy():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
    atoms.numbers[::2] = 13  # Al-Cu: an element pair no pretraining head saw together
    atoms.rattle(0.05, seed=1)
    return atoms


def test_gate_fits_and_weights_by_composition(gated, demo_stores):
    model, fit = gated
    assert fit.losses[-1] < fit.losses[0]
    assert set(fit.structures) <= set(model.head_names) and fit.structures
    assert model.gate is fit.gate and isinstance(model.gate, HeadGate)
    out = model.predict(batch_of(alloy(), model), weights="gate")
    torch.testing.assert_close(out.weights.sum(1), torch.ones(1, dtype=torch.float64))
    assert out.weights[0, model.head_index("bulk_modulus")] < 1e-6  # a property head gets no weight
    # fit_head_gate recorded each head's training composition (overlap weights use it)
    assert model.heads[model.head_index("molecules")].composition.keys() <= {"H", "C", "N", "O"}


def test_gate_survives_a_checkpoint_round_trip(gated, tmp_path):
    model, _ = gated
    path = save_checkpoint(model, tmp_path / "gated.pt")
    again = load_model(path)
    assert isinstance(again.gate, HeadGate)
    assert again.heads[0].composition == model.heads[0].composition
    batch = batch_of(alloy(), model)
    a = model.predict(batch, forces="weighted", weights="gate")
    b = again.predict(batch, forces="weighted", weights="gate")
    assert torch.equal(a.weights, b.weights) and torch.equal(a.energy, b.energy) and torch.equal(a.forces, b.forces)
    assert again.predict(batch).weights.equal(a.weights)  # "auto" takes the gate when there is one


def test_checkpoint_without_compositions_or_gate_still_loads(gated, tmp_path):
    model, _ = gated
    data = checkpoint_dict(model)
    for head in data["heads"]:
        del head["composition"]
    data["state_dict"] = {k: v for k, v in data["state_dict"].items() if not k.startswith("gate.")}
    torch.save(data, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.gate is None and all(h.composition == {} for h in old.heads)
    out = old.predict(batch_of(alloy(), old))  # overlap weights from the reference elements
    torch.testing.assert_close(out.weights.sum(1), torch.ones(1, dtype=torch.float64))


def test_weighted_calculator_results_forces_and_relaxation(gated):
    model, _ = gated
    calc = model.calculator("weighted")
    atoms = alloy()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    out = model.predict(batch_of(atoms, model), forces="weighted", weights="gate")
    assert energy == pytest.approx(float(out.energy[0]), abs=1e-10)
    assert set(calc.results["head_weights"]) == {h.name for h in model.heads if h.kind == "energy"}
    assert sum(calc.results["head_weights"].values()) == pytest.approx(1.0)
    assert set(calc.results["head_energies"]) == set(calc.results["head_weights"])
    assert calc.results["head_energy_spread"] >= 0 and stress.shape == (6,)
    numeric = calc.calculate_numerical_forces(atoms, d=1e-5)
    np.testing.assert_allclose(forces, numeric, atol=1e-6)
    relaxed = atoms.copy()
    relaxed.calc = model.calculator("weighted", weights="overlap")
    before = relaxed.get_potential_energy()
    FIRE(relaxed, logfile=None).run(fmax=0.05, steps=30)  # BFGS oscillates on the tiny model's rough surface
    assert relaxed.get_potential_energy() < before


def test_gate_command_writes_a_new_checkpoint_that_evaluate_weights_with(tiny_checkpoint, demo_dir, demo_stores, tmp_path,
                                                                         one_thread):
    from conftest import run_cli

    from gfmkit.data.graphs import GraphDataset
    from gfmkit.train.evaluate import evaluate

    before = tiny_checkpoint.read_bytes()
    gated = tmp_path / "gated.pt"
    args = ["gate", tiny_checkpoint, "--data", demo_dir, "--steps", "60", "--max-structures", "4"]
    result = run_cli(*args, "--out", gated)
    assert result.returncode == 0, result.stderr
    assert "best single head" in result.stdout and "gate" in result.stdout and str(gated) in result.stdout
    assert tiny_checkpoint.read_bytes() == before  # the input is never touched
    model = load_model(gated)
    assert isinstance(model.gate, HeadGate)
    refused = run_cli(*args, "--out", gated)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    same = run_cli(*args, "--out", tiny_checkpoint, "--overwrite")
    assert same.returncode == 1 and "input checkpoint" in same.stderr and tiny_checkpoint.read_bytes() == before
    # gfmkit evaluate scores the gate-weighted prediction beside the overlap-weighted one
    ev = evaluate(gated, demo_stores, split=None, max_structures=3, figures=False)
    assert list(dict.fromkeys(ev.matrix["head"]))[-2:] == ["weighted:gate", "weighted:overlap"]
    model = model.double()
    data = GraphDataset(demo_stores, model.config.cutoff, split=None)
    batch = collate([data[k] for k in np.flatnonzero(data.head == model.head_index("surfaces"))[:3]])
    direct = model.predict(batch, forces="weighted", weights="gate", target="surfaces")
    assert ev.pivot("forces_mae").loc["weighted:gate", "surfaces"] == pytest.approx(
        float((direct.forces - batch.forces).abs().mean()), rel=1e-9)
