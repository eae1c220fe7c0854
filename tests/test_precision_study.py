"""The precision study: real trainings in every precision, tables and figure from run directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli, tiny_config

from gfmkit.studies import (
    PRECISIONS,
    loss_drift,
    precision_errors,
    precision_table,
    run_precision_study,
)
from gfmkit.studies.precision import STUDY, precision_inference, precision_matrix
from gfmkit.studies.runs import finished


def study_config(demo_dir: Path, steps: int = 12) -> dict:
    return tiny_config(demo_dir, model={"layers": 2}, sampler={"strategy": "temperature", "temperature": 2.0, "batch_size": 8},
                       max_steps=steps, validate_every=6, checkpoint_every=6, log_every=50, precision="fp64")


@pytest.fixture(scope="module")
def study(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "study"
    table = run_precision_study(study_config(demo_dir), out, PRECISIONS, max_structures=3, warmup=2, progress=False)
    return out, table


def test_every_precision_trains_the_same_steps_and_is_evaluated_twice(study):
    out, table = study
    assert list(table["precision"]) == list(PRECISIONS)
    assert (table["steps"] == 12).all()
    assert (table["structures_per_s"] > 0).all()
    assert table.set_index("precision").loc["fp64", "speedup_vs_fp64"] == 1.0
    for precision in PRECISIONS:
        saved = yaml.safe_load((out / precision / "config.yaml").read_text())
        assert saved["precision"] == precision
        assert (out / precision / "evaluation-fp64" / "summary.csv").is_file()
        assert (out / precision / f"evaluation-{precision}" / "summary.csv").is_file()
    errors = precision_errors(out)
    # every run evaluated in fp64 and (bf16, fp32) in its own precision, on the same datasets
    assert len(errors.groupby(["trained_in", "evaluated_in"])) == 1 + 2 * (len(PRECISIONS) - 1)
    assert errors.groupby(["trained_in", "evaluated_in"])["dataset"].apply(frozenset).nunique() == 1


def test_bf16_drifts_from_fp64_and_fp32_does_not(study):
    out, table = study
    drift = loss_drift(out)
    # the same seed and batches: fp32 follows fp64 to rounding, bf16 (8-bit mantissa) visibly departs
    assert drift["fp64"].max() == 0.0
    assert drift["fp32"].median() < 1e-5
    for precision in ("bf16-autocast", "bf16-pure"):
        assert drift[precision].median() > 100 * max(drift["fp32"].median(), 1e-12)
    assert table.set_index("precision").loc["bf16-pure", "train_loss_drift_median"] == pytest.approx(drift["bf16-pure"].median())


def test_evaluating_in_bf16_changes_predictions_and_fp32_hardly(study):
    out, _ = study
    errors = precision_errors(out).set_index(["trained_in", "evaluated_in", "dataset"])["forces_mae"].dropna()
    for precision, tolerance in (("fp32", 1e-5), ("bf16-pure", None)):
        own = errors.xs((precision, precision), level=["trained_in", "evaluated_in"])
        in_fp64 = errors.xs((precision, "fp64"), level=["trained_in", "evaluated_in"])
        if tolerance is None:
            assert not np.allclose(own, in_fp64, rtol=1e-5, atol=0)
        else:
            np.testing.assert_allclose(own, in_fp64, rtol=tolerance)


def test_every_trained_model_is_evaluated_in_every_precision(study):
    out, _ = study
    inference = precision_inference(out)
    datasets = set(precision_errors(out)["dataset"])
    pairs = inference.groupby(["trained_in", "evaluated_in"])["dataset"].apply(frozenset)
    assert set(pairs.index) == {(t, e) for t in PRECISIONS for e in PRECISIONS}
    assert (pairs == frozenset(datasets)).all()
    assert (inference["structures_per_s"] > 0).all() and inference["peak_memory_mib"].notna().all()
    deviation = precision_matrix(out, "forces_dev")
    assert list(deviation.index) == list(deviation.columns) == list(PRECISIONS)
    # the reference against itself deviates by nothing; fp32 inference of the fp64 model by rounding only,
    # bf16 inference visibly; a model trained in another precision is another model
    assert deviation.loc["fp64", "fp64"] == 0.0
    assert 0 < deviation.loc["fp64", "fp32"] < 1e-5
    assert deviation.loc["fp64", "bf16-pure"] > 100 * deviation.loc["fp64", "fp32"]
    assert deviation.loc["bf16-pure", "fp64"] > 100 * deviation.loc["fp64", "fp32"]
    # the diagonal agrees with the run's own evaluation (same structures, same precision)
    own = precision_errors(out).set_index(["trained_in", "evaluated_in", "dataset"])["forces_mae"].dropna()
    mine = inference.set_index(["trained_in", "evaluated_in", "dataset"])["forces_mae"].dropna()
    np.testing.assert_allclose(mine.loc[own.index], own, rtol=1e-3)
    from gfmkit.viz.precision import precision_matrix_figure

    fig = precision_matrix_figure(out)
    assert [ax.get_ylabel() for ax in fig.axes[:4]] == ["trained in"] * 3 + ["inference throughput (structures / s)"]
    assert len(fig.axes[3].patches) == len(PRECISIONS) ** 2


def test_tables_and_figure_come_back_from_run_directories_alone(study):
    out, table = study
    pd.testing.assert_frame_equal(precision_table(out), table)
    from gfmkit.viz.precision import precision_figure

    fig = precision_figure(out)
    curves, drift, bars, speed = fig.axes
    assert len(curves.get_legend().get_texts()) == len(PRECISIONS)
    assert len(drift.get_lines()) == len(PRECISIONS) - 1
    assert len(bars.patches) == len(PRECISIONS) * precision_errors(out)["dataset"].nunique()
    assert len(speed.patches) == len(PRECISIONS)


def test_a_second_call_keeps_finished_runs_and_evaluations(study, demo_dir):
    out, table = study
    before = {p: (out / p / "metrics.jsonl").read_bytes() for p in PRECISIONS}
    stamps = {p: (out / p / "evaluation-fp64" / "summary.csv").stat().st_mtime_ns for p in PRECISIONS}
    again = run_precision_study(study_config(demo_dir), out, ["fp32"], max_structures=3, warmup=2, progress=False)
    assert {p: (out / p / "metrics.jsonl").read_bytes() for p in PRECISIONS} == before
    assert {p: (out / p / "evaluation-fp64" / "summary.csv").stat().st_mtime_ns for p in PRECISIONS} == stamps
    assert json.loads((out / STUDY).read_text())["precisions"] == list(PRECISIONS)
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="other config"):
        run_precision_study(study_config(demo_dir, steps=13), out, ["fp32"], progress=False)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        run_precision_study(study_config(demo_dir), out, ["fp16"], progress=False)


def test_only_a_run_that_ran_to_its_end_counts_as_finished(tmp_path):
    def stopped(reason):
        (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
            {"phase": "event", "event": "start", "step": 0},
            {"phase": "train", "step": 1, "loss_interval": 1.0},
            {"phase": "event", "event": "stop", "step": 1, "reason": reason}]) + "\n")
        return finished(tmp_path)

    assert not finished(tmp_path)
    assert stopped("finished") and stopped("early_stopping")
    assert not stopped("SIGTERM") and not stopped("wall time")


def test_cli_reads_a_finished_study(study, tmp_path):
    out, table = study
    result = run_cli("precision", "--table", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "bf16-pure" in result.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "precision.csv"), table, check_dtype=False)
    assert (out / "precision.png").stat().st_size > 10_000
    assert "gfmkit precision study --table" in result.stderr  # the older form works, and names the new one
    assert (out / "precision_matrix.png").stat().st_size > 10_000
    missing = run_cli("precision", "study", "--table", "--out", str(tmp_path))
    assert missing.returncode == 1 and "not a study directory" in missing.stderr


STUDY_ON_RANKS = """
import json
from gfmkit.studies import run_precision_study
table = run_precision_study(json.loads({config!r}), {out!r}, ["fp64", "fp32"], max_structures=2, warmup=2, progress=False)
emit({{"rows": len(table), "precisions": list(table["precision"]) if len(table) else []}})
"""


@pytest.mark.mpi
def test_a_study_under_mpiexec_trains_on_all_ranks_and_rank_0_evaluates(run_mpi, demo_dir, tmp_path):
    out = tmp_path / "study"
    result = run_mpi(STUDY_ON_RANKS.format(config=json.dumps(study_config(demo_dir, steps=4)), out=str(out)), n=2,
                     timeout=240)
    (first,), (second,) = result.emitted
    assert first == {"rows": 2, "precisions": ["fp64", "fp32"]} and second == {"rows": 0, "precisions": []}
    for precision in ("fp64", "fp32"):
        assert json.loads((out / precision / "run.json").read_text())["world_size"] == 2
        assert (out / precision / "evaluation-fp64" / "summary.csv").is_file()
    assert (precision_table(out)["steps"] == 4).all()
    pairs = set(zip(precision_inference(out)["trained_in"], precision_inference(out)["evaluated_in"]))
    assert pairs == {(t, e) for t in ("fp64", "fp32") for e in ("fp64", "fp32")}


def test_paper_figures_find_the_study_and_not_its_runs(study, tmp_path):
    from gfmkit.viz.figures import regenerate

    out, _ = study
    table = regenerate(out.parent, tmp_path, formats=("pdf",), progress=False)
    assert list(zip(table["kind"], table["figure"], table["error"])) == [
        ("precision study", "precision", None), ("precision study", "precision_matrix", None)]
