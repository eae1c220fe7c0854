"""Multi-objective search (gfmkit.hpo): error and throughput of every trial, precision and loss weights in the
space, the Pareto front checked independently of DeepHyper, the best-config rule, the shipped space, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli

from gfmkit.hpo import (
    best_config,
    best_trial,
    check_space,
    default_space,
    pareto_table,
    run_hpo,
    trainings,
)
from gfmkit.hpo.objectives import check_objectives, validation_errors

SPACE = {"model.hidden": {"choices": [8, 16]}, "precision": {"choices": ["fp64", "fp32", "bf16-autocast"]},
         "loss.forces": [1.0, 10.0, "log-uniform"]}


def tiny(demo_dir: Path) -> dict:
    return {"data": {"stores": [str(demo_dir)]}, "model": {"hidden": 16, "layers": 1, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8},
            "sampler": {"batch_size": 8}, "max_steps": 4, "validate_every": 4, "checkpoint_every": 4, "progress": False,
            "device": "cpu"}


def dominated(costs: np.ndarray, i: int) -> bool:
    """Whether some other row is at least as good on every column and better on one (minimisation)."""
    others = np.delete(costs, i, axis=0)
    return bool(((others <= costs[i]).all(axis=1) & (others < costs[i]).any(axis=1)).any())


def check_front(table: pd.DataFrame) -> None:
    """The table's Pareto flags, checked pair by pair: flagged rows are not dominated, the others are."""
    done = table[table["status"] == "done"]
    costs = np.column_stack([done["val_error"], -done["throughput"]])
    flags = [dominated(costs, i) for i in range(len(done))]
    assert list(~done["pareto"].astype(bool)) == flags
    assert done["pareto"].any()


@pytest.fixture(scope="module")
def moo_search(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hpo-moo") / "search"
    table = run_hpo(tiny(demo_dir), SPACE, out, max_evals=4, objectives="error,throughput", initial_points=3)
    return out, table


def test_two_objectives_with_precision_in_the_space(moo_search, demo_dir):
    out, table = moo_search
    assert len(table) == 4 and (table["status"] == "done").all()
    assert list(table.columns[table.columns.get_loc("status") + 1:][:2]) == ["val_error", "throughput"]
    assert (table["throughput"] > 0).all() and (table["gflops_per_structure"] > 0).all()
    for _, row in table.iterrows():
        saved = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert (saved["precision"], saved["model"]["hidden"]) == (row["precision"], row["model.hidden"])
        assert saved["loss"]["forces"] == pytest.approx(row["loss.forces"])
        records = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        kept = [r for r in records if r.get("phase") == "val" and r.get("best")][-1]
        # the error does not depend on the trial's loss weights: the mean of per-dataset MAEs
        energy = np.mean([v for k, v in kept.items() if k.startswith("val/") and k.endswith("/energy_mae")])
        forces = np.mean([v for k, v in kept.items() if k.startswith("val/") and k.endswith("/forces_mae")])
        assert row["val_error"] == pytest.approx(energy + forces)
    check_front(table)
    front = pareto_table(out)
    assert set(front["trial"]) == set(table.loc[table["pareto"], "trial"]) and front["val_error"].is_monotonic_increasing
    knee = best_trial(table, ["error", "throughput"])
    assert knee["pareto"] and best_config(out)["precision"] == knee["precision"]
    assert [t["trial"] for t in trainings(out)] and sorted(t["trial"] for t in trainings(out)) == sorted(table["trial"])


def test_cli_writes_the_front_and_its_figure(moo_search, tmp_path):
    out, table = moo_search
    result = run_cli("hpo", "--table", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert {"hpo.csv", "hpo.png", "pareto.csv", "pareto.png", "best_config.yaml"} <= {p.name for p in out.iterdir()}
    assert len(pd.read_csv(out / "pareto.csv")) == int(table["pareto"].sum())
    from gfmkit.viz.figures import regenerate

    redrawn = regenerate(out, tmp_path / "figures", formats=("png",), progress=False)
    assert list(zip(redrawn["figure"], redrawn["error"])) == [("hpo", None), ("pareto", None)]
    bad = run_cli("hpo", str(tmp_path / "c.yaml"), "painn", "--out", str(tmp_path / "x"), "--objectives", "loss,speed")
    assert bad.returncode == 1 and "objectives must be" in bad.stderr


def test_objectives_spaces_and_errors(demo_dir):
    assert check_objectives("error, throughput") == ("error", "throughput")
    for wrong in ("", "error,error", "speed"):
        with pytest.raises(ValueError, match="objectives must be"):
            check_objectives(wrong)
    record = {"phase": "val", "val/a/energy_mae": 0.1, "val/b/energy_mae": 0.3, "val/a/forces_mae": 0.5,
              "val/b/property_mae": 9.0, "energy_mae": 7.0}
    assert validation_errors(record) == pytest.approx({"val_energy_mae": 0.2, "val_forces_mae": 0.5, "val_error": 0.7})
    space = default_space("painn")
    assert {"model.layers", "model.hidden", "model.n_rbf", "model.cutoff", "optimizer.lr", "sampler.batch_size",
            "model.head_hidden", "loss.forces", "sampler.temperature", "precision"} <= set(space)
    check_space(tiny(demo_dir), space, ["error", "throughput"])  # every shipped value is a valid config
    with pytest.raises(ValueError, match="'error' objective"):
        check_space(tiny(demo_dir), space, ["loss"])
    with pytest.raises(ValueError, match="no search space named"):
        default_space("nonesuch")
    with pytest.raises(ValueError, match="evaluator"):
        run_hpo(tiny(demo_dir), SPACE, demo_dir / "never", evaluator="slurm")


class StandInEngines:
    """What the search uses of a gfmkit EngineCluster: ``n_engines`` and a load-balanced view whose
    ``apply_async`` returns a future (as ipyparallel's AsyncResult is), here run one at a time on a thread
    (concurrent trainings in threads of one process are not safe; engines are processes); the first call
    fails the way a trial's exception on an engine does."""

    def __init__(self, n: int):
        from concurrent.futures import ThreadPoolExecutor

        self.n_engines, self.calls = n, []
        self.pool = ThreadPoolExecutor(1)
        self.client = self

    def load_balanced_view(self):
        return self

    def apply_async(self, fn, *args, **kwargs):
        from ipyparallel.error import RemoteError

        self.calls.append(dict(args[0].parameters))
        if len(self.calls) == 1:
            def fail():
                raise RemoteError("MemoryError", "the engine ran out of memory", "")

            return self.pool.submit(fail)
        return self.pool.submit(fn, *args, **kwargs)


def test_trials_on_engines(demo_dir, tmp_path):
    engines = StandInEngines(2)
    table = run_hpo(tiny(demo_dir), {"optimizer.lr": [1e-3, 1e-2, "log-uniform"]}, tmp_path / "search", max_evals=3,
                    objectives=["error", "params"], evaluator=engines, initial_points=3)
    assert len(engines.calls) == 3 and list(table["status"]).count("failed") == 1
    assert sorted(table["optimizer.lr"]) == pytest.approx(sorted(c["optimizer.lr"] for c in engines.calls))
    assert len(trainings(tmp_path / "search")) == 2


def test_a_trial_world_is_its_own_and_its_threads_only():
    import threading

    from gfmkit.comm import SerialComm, use_world, world

    outside = type(world())
    trial, seen = SerialComm(), {}
    with use_world(trial):
        assert world() is trial
        other = threading.Thread(target=lambda: seen.update(thread=type(world())))
        other.start()
        other.join()
        with use_world(None):  # None: the launch's own world again
            assert type(world()) is outside
        assert world() is trial
    assert type(world()) is outside and seen["thread"] is outside
