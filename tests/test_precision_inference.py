"""Inference only: one trained model evaluated in every precision (API and `gfmkit precision CHECKPOINT`)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import run_cli
from structures import periodic_emt_structures

from gfmkit import load_model
from gfmkit.data import DatasetSpec
from gfmkit.data.ingest import convert
from gfmkit.precision import PRECISIONS, compare_precisions, peak_memory


@pytest.fixture(scope="module")
def unseen_store(tmp_path_factory):
    """A store the model never saw: EMT-labelled Cu-Pd cells written in the test."""
    path = tmp_path_factory.mktemp("unseen") / "cupd.bp"
    convert(periodic_emt_structures(6, seed=3), path, DatasetSpec(name="cupd", level_of_theory="EMT"), progress=False)
    return path


def test_one_model_in_every_precision(tiny_checkpoint, demo_stores, one_thread):
    model = load_model(tiny_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compare_precisions(model, demo_stores, max_structures=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    table = result.table.set_index("precision")
    assert list(table.index) == list(PRECISIONS)
    assert (table["structures"] == table.loc["fp64", "structures"]).all() and (table["structures_per_s"] > 0).all()
    assert table.loc["fp64", "speedup_vs_fp64"] == 1.0
    assert table["memory_measure"].nunique() == 1 and table["peak_memory_mib"].notna().all()
    # deviation from the model's own fp64 predictions: none in fp64, rounding in fp32, visible in bf16
    assert table.loc["fp64", "forces_dev"] == 0.0 and table.loc["fp64", "energy_dev"] == 0.0
    assert 0 < table.loc["fp32", "forces_dev"] < 1e-5
    for bf16 in ("bf16-autocast", "bf16-pure"):
        assert table.loc[bf16, "forces_dev"] > 100 * table.loc["fp32", "forces_dev"]
    errors = result.errors
    assert set(errors["precision"]) == set(PRECISIONS)
    assert set(errors["dataset"]) == set(demo_stores.registry.names) == set(errors["head"])
    modulus = errors[errors["dataset"] == "bulk_modulus"]
    assert modulus["forces_mae"].isna().all() and modulus["property_mae"].notna().all()


def test_the_command_on_a_checkpoint_and_a_store_it_never_saw(tiny_checkpoint, unseen_store, tmp_path, one_thread):
    args = ["precision", tiny_checkpoint, "--data", unseen_store, "--split", "all", "--precisions", "fp64,fp32,bf16-pure"]
    result = run_cli(*args, "--head", "bulk", "--out", tmp_path / "tables")
    assert result.returncode == 0, result.stderr
    assert "bf16-pure" in result.stdout and "peak RSS growth" in result.stdout
    table = pd.read_csv(tmp_path / "tables" / "inference.csv").set_index("precision")
    assert list(table.index) == ["fp64", "fp32", "bf16-pure"]
    assert (table["structures"] == 6).all() and table["energy_mae"].gt(0).all()
    assert table.loc["fp64", "forces_dev"] == 0 < table.loc["fp32", "forces_dev"] < table.loc["bf16-pure", "forces_dev"]
    errors = pd.read_csv(tmp_path / "tables" / "inference_errors.csv")
    assert set(zip(errors["dataset"], errors["head"])) == {("cupd", "bulk")}
    # no head of the store's name: a one-line error naming the heads; earlier tables are not replaced
    missing = run_cli(*args)
    assert missing.returncode == 1 and "no head of its name" in missing.stderr and "bulk" in missing.stderr
    again = run_cli(*args, "--head", "bulk", "--out", tmp_path / "tables")
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert run_cli("precision", tiny_checkpoint).returncode == 1


def test_peak_memory_sees_an_allocation():
    with peak_memory("cpu") as peak:
        block = torch.ones(64 * 2**20 // 8, dtype=torch.float64)  # 64 MiB, written
        del block
    if peak.measure == "unmeasured":
        pytest.skip("no /proc/self/clear_refs here")
    assert 60 < peak.mib < 200
