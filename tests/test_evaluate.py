"""Evaluation: head x dataset error matrix, parity data, per-element errors, figures; CLI; history plots."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_config

from gfmkit.data.graphs import GraphDataset, collate
from gfmkit.train.evaluate import PREDICTIONS, LiveLossPlot, evaluate, plot_history


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_error_matrix_parity_and_per_element_errors(tiny_checkpoint, demo_stores, tmp_path, one_thread):
    from gfmkit import load_model

    result = evaluate(tiny_checkpoint, demo_stores, split=None, out=tmp_path / "eval", max_structures=6)
    model = load_model(tiny_checkpoint).double()
    names = model.head_names
    matrix = result.matrix
    heads = matrix[~matrix["head"].str.startswith("weighted:")]
    assert len(heads) == len(names) ** 2 and set(heads["head"]) == set(names) == set(matrix["dataset"])
    # below the heads, the overlap-weighted prediction (the model has no gate) on every dataset
    assert list(dict.fromkeys(matrix["head"])) == sorted(names) + ["weighted:overlap"]
    pivot = result.pivot("forces_mae")
    assert list(pivot.index) == sorted(names) + ["weighted:overlap"]
    # a property head scores only its property; energy heads score nothing on the property dataset
    prop = matrix[matrix["head"] == "bulk_modulus"]
    assert prop[["energy_mae", "forces_mae"]].isna().all().all()
    assert prop.set_index("dataset")["property_mae"].notna().tolist() == [n == "bulk_modulus" for n in prop["dataset"]]
    assert matrix[(matrix["dataset"] == "bulk_modulus") & (matrix["head"] != "bulk_modulus")][METRICS_E].isna().all().all()
    # stress only where labelled (periodic datasets with stress), forces everywhere else
    assert np.isfinite(pivot.loc["bulk", "molecules"]) and math.isnan(result.pivot("stress_mae").loc["bulk", "molecules"])
    assert np.isfinite(result.pivot("stress_mae").loc["bulk", "bulk"])
    # the diagonal is each dataset under its own head, and agrees with a direct computation
    assert list(result.summary["dataset"]) == sorted(names) and (result.summary["structures"] == 6).all()
    data = GraphDataset(demo_stores, model.config.cutoff, split=None)
    head = model.head_index("molecules")
    batch = collate([data[k] for k in np.flatnonzero(data.head == head)[:6]])
    direct = float((model(batch, forces=True)["forces"] - batch.forces).abs().mean())
    assert pivot.loc["molecules", "molecules"] == pytest.approx(direct, rel=1e-9)
    own = result.summary.set_index("dataset")["forces_mae"]
    assert own["bulk"] < pivot.loc["molecules", "bulk"]  # the trained head beats a head of other chemistry
    # the weighted row agrees with model.predict's weighted forces and energy (the dataset's references)
    weighted = model.predict(batch, forces="weighted", weights="overlap", target="molecules")
    assert pivot.loc["weighted:overlap", "molecules"] == pytest.approx(
        float((weighted.forces - batch.forces).abs().mean()), rel=1e-9)
    assert result.pivot("energy_mae").loc["weighted:overlap", "molecules"] == pytest.approx(
        float(((weighted.energy - batch.energy) / batch.natoms).abs().mean()), rel=1e-9)
    assert list(result.weighted().columns) == ["own head", "weighted:overlap"]
    assert result.weighted().loc["molecules", "own head"] == pivot.loc["molecules", "molecules"]
    # parity data and per-element errors
    forces = result.predictions[result.predictions["quantity"] == "forces"]
    assert len(forces) == 3 * sum(int(data[k].natoms) for h in range(len(names)) if model.heads[h].kind == "energy"
                                  for k in np.flatnonzero(data.head == h)[:6])
    properties = {h.target for h in model.heads if h.kind == "property"}  # bulk_modulus, and other demo targets
    assert "bulk_modulus" in properties and set(result.predictions["quantity"]) == {"energy_per_atom", "forces"} | properties
    per_element = result.per_element.set_index(["dataset", "element"])
    assert per_element.loc[("molecules", "H"), "atoms"] > 0 and per_element["forces_mae"].gt(0).all()
    # files
    out = tmp_path / "eval"
    for name in ("error_matrix.csv", "summary.csv", "per_element.csv"):
        assert (out / name).stat().st_size > 0
    # the parity data is kept too (figures are redrawn from files alone), and reads back equal
    pd.testing.assert_frame_equal(pd.read_csv(out / PREDICTIONS), result.predictions, check_exact=False, rtol=1e-12)
    for name in ("error_matrix", "parity", "per_element_forces"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000


METRICS_E = ["energy_mae", "forces_mae", "stress_mae"]


def test_evaluate_and_train_commands(tiny_checkpoint, demo_dir, tmp_path, capsys, one_thread):
    from gfmkit.cli.train import main

    code = main(["evaluate", str(tiny_checkpoint), "--data", str(demo_dir), "--split", "test", "--out", str(tmp_path / "ev"),
                 "--max-structures", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "molecules" in out and (tmp_path / "ev" / "error_matrix.csv").exists()
    assert main(["evaluate", str(tmp_path / "missing.pt"), "--data", str(demo_dir)]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_config(demo_dir), "optimiser": {"lr": 1.0}}))
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'optimiser'" in err and "did you mean 'optimizer'" in err and len(err.strip().splitlines()) == 1


def test_bad_batch_size_and_missing_device_are_named(tiny_checkpoint, demo_dir, demo_stores, capsys):
    from gfmkit.cli.train import main

    with pytest.raises(SystemExit):
        main(["evaluate", str(tiny_checkpoint), "--data", str(demo_dir), "--batch-size", "0"])
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        evaluate(tiny_checkpoint, demo_stores, batch_size=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_evaluate_on_a_missing_gpu_says_so(tiny_checkpoint, demo_dir, tmp_path, capsys):
    from gfmkit.cli.train import main

    assert main(["evaluate", str(tiny_checkpoint), "--data", str(demo_dir), "--device", "cuda",
                 "--out", str(tmp_path / "ev")]) == 1
    err = capsys.readouterr().err
    assert "no cuda device is visible" in err and "corrupt" not in err and not (tmp_path / "ev").exists()


def test_history_plot_and_live_callback(demo_dir, tmp_path, one_thread):
    from gfmkit.train import train

    live = LiveLossPlot()
    run, metrics = train(tiny_config(demo_dir, max_steps=4), tmp_path / "run", callback=live)
    assert len(live.table()) == len(metrics)  # every record reached the callback
    fig = plot_history(run.path)
    left, right = fig.axes[:2]
    assert len(left.lines) >= 2 and len(right.lines) >= 1
    assert torch.isfinite(torch.tensor(left.lines[0].get_ydata())).all()
