"""Searches whose trials run on MPI ranks (gfmkit.hpo.evaluators), and a killed search that continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import single_thread_env
from test_hpo_moo import check_front

from gfmkit.hpo import hpo_table, run_hpo, trainings

SPACE = {"model.hidden": {"choices": [8, 16]}, "precision": {"choices": ["fp64", "fp32", "bf16-autocast"]},
         "loss.forces": [1.0, 10.0, "log-uniform"]}


def tiny(demo_dir: Path, **top) -> dict:
    return {"data": {"stores": [str(demo_dir)]}, "model": {"hidden": 8, "layers": 1, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8},
            "sampler": {"batch_size": 8}, "max_steps": 4, "validate_every": 4, "checkpoint_every": 4, "progress": False,
            "device": "cpu", **top}


@pytest.mark.mpi
def test_trials_on_mpi_ranks_alone_and_in_groups_of_two(demo_dir, run_mpi, tmp_path):
    # one mpiexec -n 3 job, two searches: 6 two-objective trials of one rank each (2 at a time), then 2 trials
    # of 2 ranks each (data-parallel on their own sub-communicator), the second through the command line
    config = tiny(demo_dir)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"optimizer.lr": [1e-3, 1e-2, "log-uniform"]}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.csv").write_text("not,deephyper\n1,2\n")
    result = run_mpi(f"""
    import torch
    torch.set_num_threads(1)
    from gfmkit.cli import main
    from gfmkit.hpo import run_hpo
    run_hpo({config!r}, {SPACE!r}, {str(tmp_path / "alone")!r}, max_evals=6, objectives="error,throughput",
            evaluator="mpi", initial_points=4)
    emit(main(["hpo", "config.yaml", "space.yaml", "--out", "pairs", "--max-evals", "2", "--objectives", "error,params",
               "--evaluator", "mpi", "--ranks-per-trial", "2"]))
    # failures reach every rank: 2 worker ranks do not make trials of 3; rank 0 alone cannot read results.csv
    for out, ranks in (("alone", 3), ("broken", 1)):
        try:
            run_hpo({config!r}, {SPACE!r}, out, max_evals=7, objectives="error,throughput", evaluator="mpi",
                    ranks_per_trial=ranks)
        except Exception as exc:
            emit(str(exc))
    """, n=3, timeout=240, cwd=tmp_path)
    assert [r[0] for r in result.emitted] == [0, 0, 0]  # the CLI succeeded on every rank
    for emitted in result.emitted:  # every rank raised both errors
        assert "do not split into trials of 3 ranks" in emitted[1] and "job_id" in emitted[2]
    table = hpo_table(tmp_path / "alone")
    assert len(table) == 6 and (table["status"] == "done").all() and table["trial"].is_unique
    check_front(table)
    starts = trainings(tmp_path / "alone")
    assert sorted(s["trial"] for s in starts) == sorted(table["trial"]) and {s["ranks"] for s in starts} == {1}
    assert len({s["pid"] for s in starts}) == 2  # both worker ranks trained, rank 0 only searched
    for _, row in table.iterrows():
        assert yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())["precision"] == row["precision"]

    pairs = hpo_table(tmp_path / "pairs")
    assert len(pairs) == 2 and (pairs["status"] == "done").all()
    assert {"hpo.csv", "pareto.csv", "pareto.png", "best_config.yaml"} <= {p.name for p in (tmp_path / "pairs").iterdir()}
    assert {s["ranks"] for s in trainings(tmp_path / "pairs")} == {2}
    first = Path(pairs["run_dir"].iloc[0])
    assert json.loads((first / "run.json").read_text())["world_size"] == 2
    # 2 ranks take exactly the step one rank takes: the trial's validation loss is the serial run's
    from gfmkit.train import train

    settings = yaml.safe_load((first / "config.yaml").read_text())
    _, serial = train(settings, tmp_path / "serial")
    assert pairs["best_val_loss"].iloc[0] == pytest.approx(serial.query("phase == 'val'")["loss"].min(), rel=1e-6)


@pytest.mark.slow
def test_a_killed_search_resumes_without_repeating_trials(demo_dir, tmp_path, one_thread):
    config = tiny(demo_dir, max_steps=8, validate_every=8, checkpoint_every=2)
    space = {"optimizer.lr": [1e-3, 1e-2, "log-uniform"], "precision": {"choices": ["fp64", "fp32"]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    out = tmp_path / "search"
    command = [sys.executable, "-c", "import sys; from gfmkit.cli import main; sys.exit(main())", "hpo", "config.yaml", "space.yaml", "--out", "search", "--max-evals", "3",
               "--objectives", "error,throughput", "--initial-points", "2"]
    process = subprocess.Popen(command, cwd=tmp_path, env=single_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "trials" / "trial-0001" / "checkpoints" / "last.pt").exists():  # the second trial is training
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    reported = pd.read_csv(out / "results.csv")["job_id"].tolist()
    assert reported == [0]  # the second trial was killed before it reported
    table = run_hpo(config, space, out, max_evals=3, objectives=["error", "throughput"], initial_points=2)
    assert list(table["trial"]) == ["trial-0000", "trial-0001", "trial-0002"] and (table["status"] == "done").all()
    starts = trainings(out)
    # every trial trained once, the killed one twice: the second time from its checkpoint, with its own values
    assert [(s["trial"], s["resumed"]) for s in starts] == [("trial-0000", False), ("trial-0001", False),
                                                            ("trial-0001", True), ("trial-0002", False)]
    assert starts[1]["parameters"] == starts[2]["parameters"]
    assert table.loc[1, "optimizer.lr"] == pytest.approx(starts[1]["parameters"]["optimizer.lr"])
    steps = pd.read_json(out / "trials" / "trial-0001" / "metrics.jsonl", lines=True).query("phase == 'train'")["step"]
    assert steps.is_unique and steps.max() == 8  # resumed, not restarted: no step trained twice
    assert not list((out / "trials").glob("unfinished-*")) and np.isfinite(table["val_error"]).all()
