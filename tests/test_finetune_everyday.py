"""Everyday fine-tuning (gfmkit.finetune): a new head beside every pretrained one, the strategies, LoRA
adapters, forgetting and replay, the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_config

from gfmkit.data.graphs import GraphDataset, collate
from gfmkit.data.multi import DatasetRegistry, open_stores
from gfmkit.models import HeadConfig, load_model
from gfmkit.models.nearest import choose_sources, composition_distance, nearest_head
from gfmkit.train import train
from gfmkit.train.finetune import finetune

PRETRAIN = ["bulk", "surfaces", "molecules"]
MODEL = {"hidden": 16, "layers": 2, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8}


@pytest.fixture(scope="module")
def pretrained(demo_dir, tmp_path_factory) -> Path:
    """A tiny model trained on three pretraining datasets only (its run's config names their stores)."""
    settings = tiny_config([str(demo_dir / f"{n}.bp") for n in PRETRAIN], model=MODEL, sampler={"batch_size": 8},
                           optimizer={"ema_decay": None}, max_steps=100, validate_every=100, checkpoint_every=100)
    run, _ = train(settings, tmp_path_factory.mktemp("pretrain") / "run")
    return run.checkpoints / "last.pt"


@pytest.fixture(scope="module")
def tuned(pretrained, demo_dir, tmp_path_factory):
    """alloys_al fine-tuned with each strategy (8 steps), by strategy."""
    out = tmp_path_factory.mktemp("tuned")
    return {strategy: finetune(pretrained, demo_dir / "alloys_al.bp", out / strategy, strategy=strategy, steps=8,
                               max_structures=3, progress=False)
            for strategy in ("head", "lora", "full")}


def mixed_batch(demo_dir, model, datasets=(*PRETRAIN, "alloys_al")):
    """Validation structures of ``datasets`` in one batch, tagged with the model's head indices."""
    stores = open_stores([demo_dir / f"{n}.bp" for n in datasets], registry=DatasetRegistry(model.head_names))
    data = GraphDataset(stores, model.config.cutoff, split="val", dtype=torch.float64)
    return collate([data[k] for k in range(len(data))])


def outputs(model, batch, n_heads):
    """Everything the old heads predict: own-head energy, forces and stress, and every old head's energy,
    forces and stress from predict()."""
    out = model(batch, forces=True, stress=True, energies=True)
    each = model.predict(batch, heads=model.head_names[:n_heads], forces="each", stress=True)
    return [out["energy"], out["forces"], out["stress"], out["energies"][:, :n_heads], each.energies, each.forces,
            each.stress]


@pytest.mark.parametrize("strategy", ["head", "lora"])
def test_head_and_lora_leave_every_pretrained_head_bitwise_unchanged(strategy, tuned, pretrained, demo_dir):
    before = load_model(pretrained)
    after = load_model(tuned[strategy].checkpoint)
    assert after.head_names == [*before.head_names, "alloys_al"]
    batch = mixed_batch(demo_dir, after, PRETRAIN)
    n = len(before.head_names)
    for a, b in zip(outputs(before, batch, n), outputs(after, batch, n)):
        assert torch.equal(a, b)
    assert after(mixed_batch(demo_dir, after))["energy"].isfinite().all()
    # ... while the new head did learn: its weights moved away from the pretrained head it started from
    source = before.head_index(tuned[strategy].sources["alloys_al"])
    assert not torch.equal(after.readout.head(n)[0], before.readout.head(source)[0])
    assert tuned[strategy].forgetting["change"].abs().max() == 0.0  # forgetting measured, and none


def test_lora_adapters_serve_only_the_new_head_and_merge_exactly(tuned, pretrained, demo_dir):
    model = load_model(tuned["lora"].checkpoint)
    assert model.adapters is not None and [h.adapted for h in model.heads] == [False] * 3 + [True]
    assert all(layer.b.abs().max() > 0 for layer in model.adapters.layers.values())  # trained
    encoder = load_model(pretrained).encoder.state_dict()
    assert all(torch.equal(v, encoder[k]) for k, v in model.encoder.state_dict().items())  # the encoder is untouched
    batch = mixed_batch(demo_dir, model)
    new_only = collate([b for b in batch.to_data_list() if int(b.dataset) == 3])
    unmerged = [model(b, forces=True, stress=True, energies=e) for b, e in ((batch, True), (new_only, False))]
    model.merge_adapters()
    merged = [model(b, forces=True, stress=True, energies=e) for b, e in ((batch, True), (new_only, False))]
    for u, m in zip(unmerged, merged):
        for key in u:
            torch.testing.assert_close(m[key], u[key], rtol=1e-10, atol=1e-12)
    # the merged weights are W + (alpha / r) B A of each adapted map
    name = "message.0.0"
    lora = model.adapters.layers[name.replace(".", "_")]
    expected = encoder[f"{name}.weight"] + lora.scaling * lora.b @ lora.a
    torch.testing.assert_close(model.adapters.merged.state_dict()[f"{name}.weight"], expected)
    assert model.float().adapters.merged.message[0][0].weight.dtype == torch.float32  # moves with the model
    model.double()
    # the adapted head differs from the plain encoder's reading of the same head
    model.unmerge_adapters()
    plain = model.adapters
    model.set_adapters(None)
    assert not torch.allclose(model(new_only)["energy"], unmerged[1]["energy"])
    model.set_adapters(plain)


def test_a_fine_tuned_checkpoint_reloads_with_all_heads_and_works_everywhere(tuned, pretrained, demo_dir, tmp_path):
    from ase.build import bulk

    from gfmkit.data.results_store import ResultsStore
    from gfmkit.studies.screen import screen
    from gfmkit.train.evaluate import evaluate

    result = tuned["lora"]
    model = load_model(result.checkpoint)
    assert model.head_names == ["bulk", "molecules", "surfaces", "alloys_al"]
    new = model.heads[-1]
    assert (new.block, new.adapted) == (1, True) and new.composition and set(new.composition) >= {"Al"}
    atoms = bulk("Al", "fcc", a=4.05) * (2, 1, 1)
    atoms[0].symbol = "Cu"
    atoms.calc = model.calculator(head="alloys_al")
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (2, 3)
    matrix = evaluate(result.checkpoint, [demo_dir / "alloys_al.bp", demo_dir / "bulk.bp"], figures=False,
                      max_structures=2).matrix
    assert set(matrix["head"]) - {"weighted:overlap", "weighted:gate"} == set(model.head_names)
    screen(result.checkpoint, demo_dir / "alloys_al.bp", tmp_path / "screen.bp", forces="weighted", progress=False)
    screened = ResultsStore(tmp_path / "screen.bp")
    assert set(screened.heads) == set(model.head_names)
    assert len(screened.table()) == len(open_stores([demo_dir / "alloys_al.bp"]))
    # a second fine-tune on top (head only): a third weight block, every earlier head unchanged
    again = finetune(result.checkpoint, demo_dir / "cu_morse.bp", tmp_path / "again", steps=2, progress=False,
                     pretrain_data=())
    twice = load_model(again.checkpoint)
    assert [h.block for h in twice.heads] == [0, 0, 0, 1, 2] and twice.head_names[-1] == "cu_morse"
    batch = mixed_batch(demo_dir, model)
    assert torch.equal(model(batch, energies=True)["energies"], twice(batch, energies=True)["energies"][:, :4])
    assert torch.equal(model(batch, stress=True)["stress"], twice(batch, stress=True)["stress"])
    info = json.loads((tmp_path / "again" / "finetuned.json").read_text())
    assert info["strategy"] == "head" and info["heads"] == ["cu_morse"] and info["forgetting"] == []


def test_full_fine_tuning_measures_forgetting_and_replay_trains_the_old_heads(tuned, pretrained, demo_dir, tmp_path):
    full = tuned["full"]
    assert set(full.forgetting["dataset"]) == set(PRETRAIN)
    assert (full.forgetting["change"].abs() > 0).all()  # the shared encoder moved
    row = full.forgetting.iloc[0]
    assert row["change"] == pytest.approx(row["after"] / row["before"] - 1)
    before = load_model(pretrained)
    replayed = finetune(pretrained, demo_dir / "alloys_al.bp", None, strategy="last-k", replay=0.5, steps=3,
                        max_structures=2, progress=False)
    model = replayed.model
    assert not torch.equal(model.readout.w1, before.readout.w1)  # replayed data trained the pretrained heads
    first, last = (dict(model.encoder.named_parameters()), dict(before.encoder.named_parameters()))
    assert all(torch.equal(first[k], last[k]) for k in first if not k.split(".")[1:2] == ["1"])  # only layer 1 moved
    assert not torch.equal(first["message.1.0.weight"], last["message.1.0.weight"])
    assert len(replayed.forgetting)


def test_the_pretrained_start_beats_scratch_at_the_smallest_size(pretrained, demo_dir, tmp_path):
    """Same budget (30 steps, batches of 8, the same 2 alloys_al structures), fixed seeds: the fine-tuned
    model's test force error is at most 0.7 x scratch's (measured: 0.083 vs 0.17-0.21 eV/Å)."""
    from gfmkit.studies.finetune import scratch_checkpoint

    common = {"steps": 30, "seed": 0, "train_split": "train[:0.25]", "progress": False, "pretrain_data": ()}
    tuned = finetune(pretrained, demo_dir / "alloys_al.bp", None, strategy="full", **common)
    scratch = finetune(scratch_checkpoint(pretrained, tmp_path / "scratch.pt", 0), demo_dir / "alloys_al.bp", None,
                       strategy="full", encoder_lr_scale=1.0, from_head="none", **common)
    assert tuned.settings["train_structures"] == scratch.settings["train_structures"] == {"alloys_al": 2}
    assert float(tuned.test["forces_mae"][0]) < 0.7 * float(scratch.test["forces_mae"][0])


def test_nearest_head_follows_the_training_composition():
    heads = [HeadConfig("metals", composition={"Cu": 0.5, "Ni": 0.5}),
             HeadConfig("organics", composition={"C": 0.4, "H": 0.6}),
             HeadConfig("modulus", kind="property", target="bulk_modulus", pooling="mean")]
    new = HeadConfig("alloys", composition={"Cu": 0.6, "Al": 0.4})
    assert nearest_head(new, heads) == "metals"
    assert composition_distance({"Cu": 1.0}, {"Cu": 2.0}) == 0.0 and composition_distance({"H": 1}, {"Cu": 1}) == 1.0
    prop = HeadConfig("gap", kind="property", target="gap", pooling="mean")
    assert nearest_head(prop, heads) == "modulus" and nearest_head(prop, heads[:2]) is None
    assert choose_sources([new], heads, "none") == {"alloys": None}
    assert choose_sources([new], heads, {"alloys": "organics"}) == {"alloys": "organics"}
    with pytest.raises(ValueError, match="no such head"):
        choose_sources([new], heads, "nope")


def test_the_command_fine_tunes_and_refuses_bad_requests_in_one_line(pretrained, demo_dir, tmp_path):
    result = run_cli("finetune", pretrained, "--data", demo_dir / "bulk_modulus.bp", "--task", "modulus",
                     "--steps", "2", "--out", tmp_path / "ft")
    assert result.returncode == 0, result.stderr
    assert "modulus from fresh weights" in result.stdout  # no pretrained property head to start from
    assert load_model(tmp_path / "ft" / "model.pt").head_names[-1] == "modulus"
    cases = [
        (["--data", demo_dir / "bulk.bp"], "already has head"),
        (["--data", demo_dir / "alloys_al.bp", "--replay", "0.2"], "replay is for last-k and full"),
        (["--data", demo_dir / "alloys_al.bp", "--from-head", "nope"], "no such head"),
        (["--data", demo_dir / "alloys_al.bp", "--strategy", "last-k", "--last-k", "5"], "last_k must be in 1..2"),
    ]
    for k, (extra, message) in enumerate(cases):
        bad = run_cli("finetune", pretrained, *extra, "--steps", "1", "--out", tmp_path / f"bad{k}")
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    again = run_cli("finetune", pretrained, "--data", demo_dir / "bulk_modulus.bp", "--task", "modulus", "--steps", "1",
                    "--out", tmp_path / "ft")
    assert again.returncode == 1 and "overwrite" in again.stderr
    usage = run_cli("finetune", pretrained)
    assert usage.returncode == 1 and "--data" in usage.stderr


def test_the_pretrained_errors_are_evaluated_once_for_several_fine_tunes(pretrained, demo_dir, monkeypatch):
    import importlib

    evaluation, tuning = (importlib.import_module(f"gfmkit.train.{name}") for name in ("evaluate", "finetune"))

    monkeypatch.setattr(tuning, "_BEFORE", {})
    calls = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    runs = [finetune(pretrained, demo_dir / "alloys_al.bp", None, strategy="full", steps=1, seed=seed,
                     max_structures=2, progress=False) for seed in (0, 1)]
    # per fine-tune: the new head's test errors and the tuned model's pretraining errors; the pretrained
    # model's own errors only in the first
    assert len(calls) == 2 + 3
    first, second = (r.forgetting.set_index(["dataset", "metric"]) for r in runs)
    assert first["before"].equals(second["before"]) and not first["after"].equals(second["after"])
