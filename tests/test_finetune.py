"""Fine-tuning support in the trainer (start from a pretrained checkpoint, choose heads, freeze or slow the
encoder, train on a subset of a split) and the fine-tuning study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_config

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
    """The tests' tiny config with this module's defaults: 6 steps, no EMA, batches of 8."""
    return tiny_config(stores, **{"model": None, "sampler": {"batch_size": 8}, "optimizer": {"ema_decay": None},
                                  "max_steps": 6, "validate_every": 6, "checkpoint_every": 6, "log_every": 50, **extra})


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


# -- the fine-tuning study -----------------------------------------------------------------------------

STUDY_STRATEGIES = ["scratch", "head", "full", "full+replay"]


@pytest.fixture(scope="module")
def study(pretrained, demo_dir, tmp_path_factory):
    from gfmkit.studies import run_finetune_study

    out = tmp_path_factory.mktemp("finetune") / "study"
    table = run_finetune_study(pretrained, config(downstream(demo_dir), max_steps=4), out, fractions=(0.5, 1.0),
                               strategies=STUDY_STRATEGIES, seeds=(0, 1), heads={"alloys_al": "bulk"}, max_structures=3,
                               progress=False)
    return out, table


def test_study_runs_every_strategy_fraction_and_seed_as_configured(study, pretrained, demo_dir):
    out, table = study
    assert len(table) == len(STUDY_STRATEGIES) * 2 * 2 * len(DOWNSTREAM)
    sizes = table.pivot_table(index="dataset", columns="fraction", values="train_structures", aggfunc="max")
    for dataset in DOWNSTREAM:
        full = len(Store(demo_dir / f"{dataset}.bp").split_indices("train"))
        assert sizes.loc[dataset, 1.0] == full and sizes.loc[dataset, 0.5] == int(np.ceil(full / 2))
    for strategy in STUDY_STRATEGIES:
        info = json.loads((out / f"{strategy}-0.5-s1" / "finetuned.json").read_text())
        assert info["train_split"] == "train[:0.5]" and info["seed"] == 1 and info["steps"] == 4
        assert info["sources"]["alloys_al"] == (None if strategy == "scratch" else "bulk")
        assert info["replay"] == (0.25 if strategy == "full+replay" else 0.0)
        assert info["checkpoint"] == (str(out / "scratch-s1.pt") if strategy == "scratch" else str(pretrained))
        model = load_model(out / f"{strategy}-0.5-s1" / "model.pt")
        assert model.head_names[:3] == load_model(pretrained).head_names and set(model.head_names[3:]) == set(DOWNSTREAM)
    forgetting = table.groupby("strategy")["forgetting"].agg(["min", "max"])
    assert forgetting.loc["head"].tolist() == [0.0, 0.0]  # head-only leaves the pretrained heads as they were
    assert (forgetting.loc["full"] != 0).all() and forgetting.loc["scratch"].isna().all()
    # the seeds differ: the scratch baseline's weights and the batches
    scratch = table[(table["strategy"] == "scratch") & (table["fraction"] == 1.0)]
    assert scratch.groupby("dataset")["forces_mae"].nunique().max() == 2


def test_study_tables_come_back_from_cell_directories_and_are_not_redone(study, pretrained, demo_dir):
    import pandas as pd

    from gfmkit.studies import finetune_table, run_finetune_study, transfer_gain
    from gfmkit.studies.finetune import spread
    from gfmkit.viz.finetune import finetune_figure

    out, table = study
    pd.testing.assert_frame_equal(finetune_table(out), table)
    gain = transfer_gain(table)
    assert list(gain.columns) == ["full", "full+replay", "head"] and len(gain) == 2 * 2  # two force datasets x two fractions
    stats = spread(table)
    assert (stats["count"] == 2).all() and (stats["max"] >= stats["min"]).all()
    figure = finetune_figure(out)
    assert len(figure.axes) == len(DOWNSTREAM) + 1 and "forgetting" in figure.axes[-1].get_title()
    before = {p.name: (p / "finetuned.json").stat().st_mtime_ns for p in out.iterdir() if p.is_dir()}
    again = run_finetune_study(pretrained, config(downstream(demo_dir), max_steps=4), out, fractions=(1.0,),
                               strategies=["full"], seeds=(0,), heads={"alloys_al": "bulk"}, max_structures=3,
                               progress=False)
    assert {p.name: (p / "finetuned.json").stat().st_mtime_ns for p in out.iterdir() if p.is_dir()} == before
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="other.*steps"):
        run_finetune_study(pretrained, config(downstream(demo_dir), max_steps=5), out, progress=False)
    with pytest.raises(ValueError, match="unknown strategies"):
        run_finetune_study(pretrained, config(downstream(demo_dir)), out, strategies=["linear"], progress=False)


def test_cli_reads_a_finished_fine_tuning_study(study):
    out, _ = study
    for form in (["finetune", "study", "--table"], ["finetune", "--table"]):  # the older form too
        result = run_cli(*form, "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert (out / "finetune.csv").is_file() and (out / "finetune.png").stat().st_size > 10_000
    bad = run_cli("finetune", "x.pt", "c.yaml", "--heads", "alloys_al")
    assert bad.returncode == 1 and "DATASET=HEAD" in bad.stderr
    bad = run_cli("finetune", "study", "x.pt")
    assert bad.returncode == 1 and "CONFIG.yaml" in bad.stderr


def test_paper_figures_find_the_fine_tuning_study(study, tmp_path):
    from gfmkit.viz.figures import regenerate

    out, _ = study
    table = regenerate(out, tmp_path, formats=("png",), progress=False)
    assert list(zip(table["kind"], table["figure"], table["error"])) == [("fine-tuning study", "finetune", None)]


def test_study_cells_are_configured_as_their_strategy_says(tmp_path):
    from gfmkit.data.ranged import split_selection
    from gfmkit.studies.finetune import cell_arguments, run_name

    settings = {"steps": 5, "batch_size": 4, "lr": 1e-3, "split": "test", "max_structures": None, "heads": {},
                "pretrain_data": None, "replay": 0.25}
    cells = {s: cell_arguments(settings, s, 0.5, 3) for s in ("scratch", "head", "lora", "last-k", "full", "full+replay")}
    assert cells["scratch"]["strategy"] == "full" and cells["scratch"]["encoder_lr_scale"] == 1.0
    assert cells["scratch"]["from_head"] == "none" and cells["scratch"]["pretrain_data"] == ()
    assert cells["full+replay"]["strategy"] == "full" and cells["full+replay"]["replay"] == 0.25
    assert all(c["seed"] == 3 and c["steps"] == 5 and c["train_split"] == "train[:0.5]" for c in cells.values())
    assert {cells[s]["strategy"] for s in ("head", "lora", "last-k")} == {"head", "lora", "last-k"}
    tiny = cell_arguments(settings, "full", 1e-05, 0)["train_split"]
    assert len(split_selection(np.zeros(50, dtype=int), tiny)) == 1
    assert run_name("full", 1.0, 0) == "full-1-s0" and run_name("full", 0.1234561, 0) != run_name("full", 0.1234564, 0)
    (tmp_path / "finetune.json").write_text(json.dumps({"strategies": ["scratch"], "fractions": [1.0], "seeds": [0]}))

    empty = run_cli("finetune", "study", "--table", "--out", str(tmp_path))
    assert empty.returncode == 1 and "no evaluated runs" in empty.stderr


def test_resume_takes_the_configs_encoder_rate_and_refuses_a_new_group_layout(pretrained, demo_dir, tmp_path):
    settings = config(downstream(demo_dir), init={"checkpoint": str(pretrained)}, optimizer={"encoder_lr_scale": 0.1},
                      schedule={"kind": "constant"}, max_steps=2)
    train(settings, tmp_path / "run")
    again = Trainer({**settings, "optimizer": {**settings["optimizer"], "encoder_lr_scale": 0.3}, "max_steps": 3},
                    tmp_path / "run", resume="auto")
    assert [g["lr_scale"] for g in again.optimizer.param_groups] == [0.3, 1.0]
    with pytest.raises(TrainingError, match="encoder_lr_scale"):
        Trainer({**settings, "optimizer": {**settings["optimizer"], "encoder_lr_scale": 0.0}, "max_steps": 3},
                tmp_path / "run", resume="auto")


def test_a_fresh_start_drops_metrics_of_a_start_that_saved_no_checkpoint(demo_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"phase": "train", "step": 99, "time": 0.0}) + "\n")
    train(config([str(demo_dir / "bulk.bp")], model=MODEL, max_steps=2, validate_every=2), run)
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps
