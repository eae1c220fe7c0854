"""Fine-tuning support in the trainer: start from a pretrained checkpoint, choose heads, freeze or slow the
encoder, train on a subset of a split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gfmkit.data import Store
from gfmkit.data.graphs import GraphDataset
from gfmkit.data.multi import open_stores
from gfmkit.models import load_model
from gfmkit.models.statistics import fit_energy_head
from gfmkit.train import Trainer, TrainingError, train

PRETRAIN = ["bulk", "surfaces", "molecules"]
DOWNSTREAM = ["alloys_al", "cu_morse", "bulk_modulus"]
MODEL = {"hidden": 16, "layers": 2, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8}


def config(stores: list[str], **extra) -> dict:
    base = {"data": {"stores": stores}, "sampler": {"batch_size": 8}, "optimizer": {"lr": 3e-3, "ema_decay": None},
            "precision": "fp64", "max_steps": 6, "validate_every": 6, "checkpoint_every": 6, "progress": False}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def pretrained(demo_dir, tmp_path_factory) -> Path:
    """A tiny model trained on three pretraining datasets only."""
    run, _ = train(config([str(demo_dir / f"{n}.bp") for n in PRETRAIN], model=MODEL, max_steps=20),
                   tmp_path_factory.mktemp("pretrain") / "run")
    return run.checkpoints / "last.pt"


def downstream(demo_dir) -> list[str]:
    return [str(demo_dir / f"{n}.bp") for n in DOWNSTREAM]


def head_block(model, name):
    k, width = model.head_index(name), model.readout.head_hidden
    r = model.readout
    return [r.w1[:, k * width:(k + 1) * width], r.b1[k * width:(k + 1) * width], r.w2[k], r.b2[k]]


def test_split_subsets_are_nested_fixed_draws_in_store_order(demo_dir):
    store = Store(demo_dir / "bulk.bp")
    full = store.split_indices("train")
    quarter, half = store.split_indices("train[:0.25]"), store.split_indices("train[:0.5]")
    assert len(quarter) == int(np.ceil(0.25 * len(full))) and len(half) == int(np.ceil(0.5 * len(full)))
    assert set(quarter) <= set(half) <= set(full)
    assert np.all(np.diff(quarter) > 0) and not np.array_equal(quarter, full[: len(quarter)])  # a draw, not a prefix
    assert np.array_equal(store.split_indices("train[:3]"), Store(demo_dir / "bulk.bp").split_indices("train[:3]"))
    dataset = GraphDataset(open_stores([demo_dir / "bulk.bp", demo_dir / "cu_morse.bp"]), 4.0, split="train[:3]")
    assert len(dataset) == 6
    for bad in ("training", "train[:0]", "train[:1.5]"):
        with pytest.raises(ValueError, match="split"):
            store.split_indices(bad)


def test_init_copies_the_encoder_and_the_chosen_heads(pretrained, demo_dir, tmp_path):
    source = load_model(pretrained).double()
    trainer = Trainer(config(downstream(demo_dir), init={"checkpoint": str(pretrained), "heads": {"alloys_al": "bulk"}}),
                      tmp_path / "run")
    model = trainer.model
    assert model.config == source.config
    for (name, a), b in zip(model.encoder.state_dict().items(), source.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(head_block(model, "alloys_al"), head_block(source, "bulk")):
        assert torch.equal(a, b)
    # a dataset with no pretrained namesake and no choice starts fresh
    fresh = head_block(model, "cu_morse")[0]
    assert all(not torch.equal(fresh, head_block(source, n)[0]) for n in PRETRAIN)
    # statistics are fitted on the new data, not copied with the weights
    fitted = fit_energy_head(Store(demo_dir / "alloys_al.bp"), split="train")
    head = model.heads[model.head_index("alloys_al")]
    assert head.reference_energies == fitted.reference_energies and head.scale == fitted.scale
    assert head.reference_energies != source.heads[source.head_index("bulk")].reference_energies
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["initialised_from"] == str(pretrained)
    assert info["head_sources"] == {"alloys_al": "bulk", "bulk_modulus": None, "cu_morse": None}


def test_frozen_encoder_stays_pretrained_through_training_and_resume(pretrained, demo_dir, tmp_path):
    settings = config(downstream(demo_dir), init={"checkpoint": str(pretrained), "heads": {"alloys_al": "bulk"}},
                      optimizer={"encoder_lr_scale": 0.0}, max_steps=4)
    run, _ = train(settings, tmp_path / "run")
    tuned = load_model(run.checkpoints / "last.pt")
    source = load_model(pretrained).double()
    for (name, a), b in zip(tuned.encoder.state_dict().items(), source.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(head_block(tuned, "alloys_al")[0], head_block(source, "bulk")[0])  # the heads trained
    info = json.loads((run.path / "run.json").read_text())
    assert info["frozen_parameters"] == sum(p.numel() for p in source.encoder.parameters())
    run, _ = train({**settings, "max_steps": 8}, tmp_path / "run", resume="auto")
    resumed = load_model(run.checkpoints / "last.pt")
    assert all(torch.equal(a, b) for a, b in zip(resumed.encoder.state_dict().values(), source.encoder.state_dict().values()))
    assert json.loads((run.path / "run.json").read_text())["head_sources"]["alloys_al"] == "bulk"


def test_encoder_learns_at_its_own_rate(pretrained, demo_dir, tmp_path):
    trainer = Trainer(config(downstream(demo_dir), init={"checkpoint": str(pretrained)}, optimizer={"encoder_lr_scale": 0.1},
                             schedule={"kind": "constant"}, max_steps=2), tmp_path / "run")
    trainer.fit()
    encoder, heads = trainer.optimizer.param_groups
    assert encoder["lr"] == pytest.approx(0.1 * heads["lr"]) and heads["lr"] == pytest.approx(3e-3)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in trainer.model.encoder.parameters()}


def test_bad_initialisations_are_clear_errors(pretrained, demo_dir, tmp_path):
    cases = [
        ({"init": {"checkpoint": str(pretrained)}, "model": {**MODEL, "hidden": 32}}, "contradicts init.checkpoint"),
        ({"init": {"checkpoint": str(pretrained), "heads": {"alloys_al": "nope"}}}, "lacks"),
        ({"init": {"checkpoint": str(pretrained), "heads": {"nope": "bulk"}}}, "not datasets of this run"),
        ({"init": {"checkpoint": str(pretrained), "heads": {"bulk_modulus": "bulk"}}}, "cannot start from"),
        ({"init": {"checkpoint": str(tmp_path / "missing.pt")}}, "no such checkpoint"),
        ({"data": {"train_split": "train[:0]"}}, "at least one structure"),
    ]
    for k, (extra, message) in enumerate(cases):
        with pytest.raises((TrainingError, ValueError), match=message):
            Trainer(config(downstream(demo_dir), **extra), tmp_path / f"run{k}")
    with pytest.raises(ValueError, match="init.heads needs init.checkpoint"):
        Trainer(config(downstream(demo_dir), init={"heads": {"alloys_al": "bulk"}}), tmp_path / "run_x")
