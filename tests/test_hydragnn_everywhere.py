"""HydraGNN-written files everywhere: `gfmkit data info`, conversion to a gfmkit store, training directly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config
from hydragnn_layout import emt_samples, write_hydragnn_bp

from gfmkit.cli import main
from gfmkit.data import Store
from gfmkit.data.readers import JoinedStore, open_store


@pytest.fixture
def hydragnn_file(tmp_path):
    samples, atoms = emt_samples(12, seed=0)
    path = tmp_path / "hydra.bp"
    write_hydragnn_bp(path, {"trainset": samples[:8], "valset": samples[8:10], "testset": samples[10:]},
                      dataset_name="toy")
    return path, atoms


def test_data_info_reads_a_hydragnn_file(hydragnn_file, capsys):
    path, _ = hydragnn_file
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "8/2/2" in out


def test_convert_keeps_every_structure_and_its_split(hydragnn_file, tmp_path, capsys):
    path, atoms = hydragnn_file
    out = tmp_path / "toy.bp"
    assert main(["data", "convert", str(path), "--dataset", "toy_pbe", "--level-of-theory", "EMT", "--out", str(out)]) == 0
    store, source = Store(out), open_store(path)
    assert isinstance(source, JoinedStore) and len(store) == len(source) == 12
    assert store.name == "toy_pbe" and store.level_of_theory == "EMT"
    np.testing.assert_array_equal(store.split, source.split)
    assert list(store.split) == [0] * 8 + [1] * 2 + [2] * 2
    for mine, theirs, expected in zip(store, source, atoms):
        np.testing.assert_array_equal(mine.positions, theirs.positions)
        np.testing.assert_array_equal(mine.forces, theirs.forces)
        assert mine.energy == theirs.energy == pytest.approx(expected.get_potential_energy(), rel=1e-6)


def test_training_accepts_a_hydragnn_file_directly(hydragnn_file, tmp_path, one_thread):
    from gfmkit.train import evaluate, train

    path, _ = hydragnn_file
    run, metrics = train(tiny_config(path, max_steps=2), tmp_path / "run")
    assert run.finished() and list(load_heads(run)) == ["toy"]
    result = evaluate(run.best_checkpoint(), [path], split="test")
    assert list(result.summary["dataset"]) == ["toy"] and int(result.summary["structures"].iloc[0]) == 2


def load_heads(run):
    from gfmkit.models import load_model

    return load_model(run.best_checkpoint()).head_names
