"""Scaling studies: real 1- and 2-rank training runs through the local profile, batch scripts for a
site profile, and the table read back from run directories alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import tiny_config

from gfmkit.cli import main
from gfmkit.studies.scaling import (
    plan_scaling,
    run_scaling,
    run_throughput,
    scaled_config,
    scaling_table,
)


def test_weak_scaling_grows_the_batch_and_strong_keeps_it():
    config = {"sampler": {"batch_size": 6, "max_atoms": 100}, "max_steps": 3}
    weak = scaled_config(config, 4, 1, "weak")
    assert weak["sampler"] == {"batch_size": 24, "max_atoms": 400} and weak["log_every"] == 1
    assert scaled_config(config, 4, 1, "strong")["sampler"] == config["sampler"]
    assert config["sampler"]["batch_size"] == 6  # the caller's config is not changed
    with pytest.raises(ValueError, match="mode"):
        scaled_config(config, 2, 1, "diagonal")


@pytest.mark.mpi
def test_local_weak_scaling_runs_one_and_two_ranks(demo_dir, tmp_path, capsys):
    config = tiny_config(demo_dir, max_steps=8, validate_every=100, checkpoint_every=100, precision="fp32")
    table = run_scaling(config, [1, 2], tmp_path / "weak", mode="weak", warmup=2, timeout=300)
    assert table["ranks"].tolist() == [1, 2]
    assert (table["structures_per_s"] > 0).all() and table["efficiency"].iloc[0] == pytest.approx(1.0)
    per_step = table["structures_per_step"].tolist()
    assert per_step[1] == pytest.approx(2 * per_step[0], rel=0.1)  # weak: twice the structures per step
    run = json.loads((tmp_path / "weak" / "weak-0002" / "run.json").read_text())
    assert run["world_size"] == 2 and run["torch_threads"] == 1
    # the table and figure come back from the run directories alone, through the CLI
    assert main(["scaling", "unused.yaml", "--out", str(tmp_path / "weak"), "--table", "--warmup", "2"]) == 0
    assert "efficiency" in capsys.readouterr().out
    assert (tmp_path / "weak" / "scaling.png").is_file()


def test_site_scaling_writes_one_batch_script_per_node_count(tmp_path):
    plan = plan_scaling({"max_steps": 5}, [2, 1], tmp_path, mode="strong", profile="frontier", account="abc123")
    assert plan["nodes"].tolist() == [1, 2] and plan["ranks"].tolist() == [8, 16]
    for script in plan["script"]:
        subprocess.run(["bash", "-n", script], check=True)
    text = Path(plan["script"].iloc[1]).read_text()
    assert "#SBATCH --account=abc123" in text and "srun -N 2 -n 16" in text and "gfmkit.cli train" in text
    table = scaling_table(tmp_path)
    assert table["missing"].str.contains("no metrics").all()  # nothing has run yet


def test_throughput_needs_enough_steps(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"phase": "train", "time": 1.0, "structures": 4}) + "\n")
    with pytest.raises(ValueError, match="train records"):
        run_throughput(tmp_path, warmup=2)


def test_throughput_of_a_resumed_run_counts_its_last_segment_only(tmp_path):
    def step(t):
        return {"phase": "train", "time": t, "structures": 8, "steps": 1, "data_s": 0.01, "compute_s": 0.09}

    records = [{"phase": "event", "event": "start", "time": 0.0}] + [step(0.1 * k) for k in range(1, 11)]
    records += [{"phase": "event", "event": "resume", "time": 1000.0}] + [step(1000 + 0.2 * k) for k in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    # last segment: 8 timed steps of 8 structures over 8 x 0.2 s, the stopped time left out
    assert run_throughput(tmp_path, warmup=2)["structures_per_s"] == pytest.approx(40.0)
