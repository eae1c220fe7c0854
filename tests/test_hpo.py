"""Hyperparameter search (gfmkit.hpo): search spaces, real DeepHyper searches over training runs, continuation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli

from gfmkit.hpo import (
    best_config,
    check_space,
    hpo_table,
    run_hpo,
    search_problem,
    set_path,
)
from gfmkit.hpo.search import run_trial

SPACE = {"optimizer.lr": [1e-4, 1e-2, "log-uniform"], "model.hidden": {"choices": [8, 16]}, "model.layers": [1, 2]}


def tiny(demo_dir: Path) -> dict:
    return {"data": {"stores": [str(demo_dir)]}, "model": {"hidden": 16, "layers": 2, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8},
            "sampler": {"batch_size": 8}, "max_steps": 6, "validate_every": 6, "checkpoint_every": 6, "progress": False}


def test_search_spaces_and_their_errors(demo_dir):
    problem = search_problem(SPACE)
    assert sorted(problem.hyperparameter_names) == sorted(SPACE)
    check_space(tiny(demo_dir), SPACE)
    bad = [
        ({"optimizer.lr": [1e-2, 1e-4]}, "low < high"),
        ({"optimizer.lr": [0.0, 1e-2, "log-uniform"]}, "must be positive"),
        ({"optimizer.lr": [1e-4, 1e-2, "normal"]}, "distribution"),
        ({"model.hidden": {"values": [8]}}, "choices"),
        ({"model.hidden": "big"}, "give \\[low, high\\]"),
    ]
    for space, message in bad:
        with pytest.raises(ValueError, match=message):
            search_problem(space)
    with pytest.raises(ValueError, match="'model.hiden'"):
        check_space(tiny(demo_dir), {"model.hiden": [8, 16]})
    with pytest.raises(ValueError, match="loss settings change the objective"):
        check_space(tiny(demo_dir), {"loss.forces": {"choices": [1.0, 10.0]}})
    with pytest.raises(ValueError, match="'model.layers' = 0"):
        check_space(tiny(demo_dir), {"model.layers": [0, 2]})
    with pytest.raises(ValueError, match="not a config section"):
        set_path({"max_steps": 5}, {"max_steps.value": 3})
    assert set_path({"a": {"b": 1}}, {"a.c": np.int64(2), "d.e": np.float64(0.5)}) == {"a": {"b": 1, "c": 2}, "d": {"e": 0.5}}


@pytest.fixture(scope="module")
def search(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hpo") / "search"
    return out, run_hpo(tiny(demo_dir), SPACE, out, max_evals=3, initial_points=2)


def test_every_trial_is_a_training_run_with_its_values(search):
    out, table = search
    assert list(table["trial"]) == ["trial-0000", "trial-0001", "trial-0002"]
    assert (table["status"] == "done").all() and np.isfinite(table["best_val_loss"]).all()
    assert (np.diff(table["best_so_far"]) <= 0).all() and table["best_so_far"].iloc[-1] == table["best_val_loss"].min()
    for _, row in table.iterrows():
        saved = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert saved["optimizer"]["lr"] == pytest.approx(row["optimizer.lr"])
        assert (saved["model"]["hidden"], saved["model"]["layers"]) == (row["model.hidden"], row["model.layers"])
        val = pd.read_json(Path(row["run_dir"]) / "metrics.jsonl", lines=True).query("phase == 'val'")
        assert row["best_val_loss"] == pytest.approx(val["loss"].min())
    best = table.loc[table["best_val_loss"].idxmin()]
    assert best_config(out)["optimizer"]["lr"] == pytest.approx(best["optimizer.lr"])


def test_the_process_stays_usable_after_a_search(search, tmp_path):
    # DeepHyper imports mpi4py without initialising MPI; ASE then calls MPI and MPICH aborted the process
    import ase.io
    from ase.build import bulk

    ase.io.write(tmp_path / "cu.extxyz", bulk("Cu"))
    assert len(ase.io.read(tmp_path / "cu.extxyz")) == 1


def test_a_search_continues_and_is_not_redone(search, demo_dir):
    out, table = search
    before = {p.name: (p / "metrics.jsonl").read_bytes() for p in (out / "trials").iterdir()}
    pd.testing.assert_frame_equal(run_hpo(tiny(demo_dir), SPACE, out, max_evals=3), table)  # nothing left to do
    more = run_hpo(tiny(demo_dir), SPACE, out, max_evals=4, initial_points=2)
    assert len(more) == 4 and more["trial"].iloc[-1] == "trial-0003"
    pd.testing.assert_frame_equal(more.iloc[:3], table)
    assert {n: (out / "trials" / n / "metrics.jsonl").read_bytes() for n in before} == before
    with pytest.raises(ValueError, match="other space"):
        run_hpo(tiny(demo_dir), {"optimizer.lr": [1e-4, 1e-2]}, out, max_evals=5)


def test_a_failing_trial_is_reported_failed(demo_dir, tmp_path, monkeypatch):
    job = SimpleNamespace(id="0.5", parameters={"data.train_split": "train[:0]"})
    assert run_trial(job, base=tiny(demo_dir), out=str(tmp_path)) == "F_training_failed"
    # a job id reissued after an interrupted search never continues another trial's run
    stale = tmp_path / "trials" / "trial-0007"
    stale.mkdir(parents=True)
    (stale / "config.yaml").write_text(yaml.safe_dump({**tiny(demo_dir), "max_steps": 3}))
    job = SimpleNamespace(id="0.7", parameters={"optimizer.lr": 1e-3})
    assert run_trial(job, base=tiny(demo_dir), out=str(tmp_path)) == "F_directory_of_another_trial"
    import gfmkit.hpo.search as search_module

    monkeypatch.setattr(search_module, "world", lambda: SimpleNamespace(size=2, rank=0))
    with pytest.raises(RuntimeError, match="mpiexec"):
        run_hpo(tiny(demo_dir), SPACE, tmp_path / "mpi", max_evals=1)
    (tmp_path / "hpo.json").write_text(json.dumps({"config": tiny(demo_dir), "space": {"data.train_split": {"choices": ["x"]}}}))
    pd.DataFrame({"p:data.train_split": ["train[:0]", "train"], "objective": ["F_training_failed", -2.0],
                  "job_id": [0, 1]}).to_csv(tmp_path / "results.csv", index=False)
    table = hpo_table(tmp_path)
    assert list(table["status"]) == ["failed", "done"] and table["best_so_far"].iloc[-1] == 2.0
    assert best_config(tmp_path)["data"]["train_split"] == "train"


def test_cli_and_paper_figure(search, tmp_path):
    from gfmkit.viz.figures import regenerate

    out, _ = search
    result = run_cli("hpo", "--table", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "hpo.png").is_file() and yaml.safe_load((out / "best_config.yaml").read_text())["max_steps"] == 6
    table = regenerate(out, tmp_path, formats=("png",), progress=False)
    assert list(zip(table["kind"], table["figure"], table["error"])) == [("hyperparameter search", "hpo", None)]
    missing = run_cli("hpo", "--out", str(tmp_path / "x"))
    assert missing.returncode == 1 and "CONFIG.yaml and SPACE.yaml" in missing.stderr
