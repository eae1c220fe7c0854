"""RunDir reads what it writes: metrics, whether a run finished, its checkpoints; one spelling of run files."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
from conftest import tiny_config

from gfmkit import keys, outputs
from gfmkit.rundir import (
    BEST_CHECKPOINT,
    EVALUATION_FILES,
    LAST_CHECKPOINT,
    METRICS_FILE,
    RUN_FILES,
    RUN_INFO,
    SUMMARY,
    RunDir,
)
from gfmkit.studies import precision as precision_study
from gfmkit.train import trainer as trainer_module

evaluate_module = importlib.import_module("gfmkit.train.evaluate")  # gfmkit.train.evaluate is also the function


def test_one_spelling_of_files_and_columns():
    assert outputs.RUN_FILES is RUN_FILES and METRICS_FILE in RUN_FILES
    assert evaluate_module.EVALUATION_FILES is EVALUATION_FILES and EVALUATION_FILES[-1] == SUMMARY
    assert trainer_module.ERROR_NAMES == evaluate_module.METRICS == precision_study.ERROR_COLUMNS == keys.ERROR_COLUMNS
    assert set(keys.ERROR_UNITS) == set(keys.ERROR_COLUMNS)
    assert (trainer_module.LAST, trainer_module.BEST) == (LAST_CHECKPOINT, BEST_CHECKPOINT)
    assert not hasattr(RunDir, "METRICS")  # a file name is called one: METRICS_FILE


def test_an_empty_directory_has_no_metrics_no_stop_and_no_checkpoint(tmp_path):
    run = RunDir(tmp_path / "nothing")
    assert run.records() == [] and run.metrics().empty
    assert run.stop_reason() is None and not run.finished()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.best_checkpoint()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.last_checkpoint()
    assert not (tmp_path / "nothing").exists()  # reading creates nothing


def test_the_last_stop_decides(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics(phase="event", event="stop", reason="SIGTERM", step=1)
    assert run.stop_reason() == "SIGTERM" and not run.finished()
    run.log_metrics(phase="train", step=2)
    run.log_metrics(phase="event", event="stop", reason="early_stopping", step=3)
    assert run.stop_reason() == "early_stopping" and run.finished()
    assert [r["step"] for r in run.records()] == [1, 2, 3] and len(run.metrics()) == 3


def test_a_stopped_run_is_not_finished_until_resumed_to_its_end(demo_dir, tmp_path, one_thread):
    from gfmkit.train import Trainer, train

    config = tiny_config(demo_dir, max_steps=4, wall_time=1e-3, stop_margin=0.0)
    run, _ = train(config, tmp_path / "run")
    assert run.stop_reason() == "wall_time" and not run.finished()
    assert run.last_checkpoint() == run.checkpoints / LAST_CHECKPOINT
    Trainer({**config, "wall_time": None}, tmp_path / "run", resume="auto").fit()
    assert run.stop_reason() == "finished" and run.finished()
    assert run.best_checkpoint() == run.checkpoints / BEST_CHECKPOINT
    assert run.metrics_path == tmp_path / "run" / METRICS_FILE

    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    (copy / "checkpoints" / BEST_CHECKPOINT).unlink()  # stopped before its first validation: last.pt stands in
    assert RunDir(copy).best_checkpoint() == copy / "checkpoints" / LAST_CHECKPOINT
    assert evaluate_module.load_run_checkpoint(copy, "best") == copy / "checkpoints" / LAST_CHECKPOINT


def test_the_studies_read_runs_through_rundir(tiny_checkpoint):
    from gfmkit.studies.runs import finished, run_metrics

    run_dir = tiny_checkpoint.parent.parent
    assert finished(run_dir) and RunDir(run_dir).finished()
    assert run_metrics(run_dir).equals(RunDir(run_dir).metrics())
    assert RunDir(run_dir).best_checkpoint() == tiny_checkpoint
    assert json.loads((run_dir / RUN_INFO).read_text())  # the file the trainer writes


def test_run_json_records_peak_memory_and_time_to_the_first_step(demo_dir, tmp_path, one_thread):
    import json

    from gfmkit.train import train

    run, _ = train(tiny_config(demo_dir, max_steps=2), tmp_path / "run")
    info = json.loads((run.path / "run.json").read_text())
    first, end = info["first_step"], info["end"]
    assert 0 < first["seconds_since_start"] <= end["seconds_since_start"]
    assert len(first["peak_rss_mib_per_rank"]) == 1 and 50 < first["peak_rss_mib_per_rank"][0] <= end["peak_rss_mib_per_rank"][0]
