"""The path a newcomer walks: each defect found by trying gfmkit as a new user would, as a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from conftest import single_thread_env

from gfmkit.cli import main
from gfmkit.config import ConfigError
from gfmkit.data import DatasetSpec, Store
from gfmkit.data.ingest import convert
from gfmkit.train import load_train_config


def _write_frames(path: Path, n: int, key: str | None = None) -> None:
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        if key:
            atoms.calc = None
            atoms.info[f"{key}_energy"], atoms.arrays[f"{key}_forces"] = energy, forces
        frames.append(atoms)
    ase.io.write(path, frames)


def test_convert_expands_globs_like_the_cli(tmp_path):
    runs = tmp_path / "my_runs"
    runs.mkdir()
    _write_frames(runs / "a.extxyz", 2)
    _write_frames(runs / "b.extxyz", 3)
    report = convert([str(runs / "*.extxyz")], tmp_path / "mine.bp", DatasetSpec(name="mine", level_of_theory="EMT"),
                     progress=False)
    assert report.kept == 5 and len(Store(tmp_path / "mine.bp")) == 5
    with pytest.raises(FileNotFoundError, match="no file matches"):
        convert([str(runs / "*.xyz")], tmp_path / "none.bp", DatasetSpec(name="n", level_of_theory="EMT"), progress=False)
    assert not (tmp_path / "none.bp").exists()


def test_labels_as_a_plain_dict(tmp_path):
    _write_frames(tmp_path / "lot1.extxyz", 2, key="REF")
    spec = DatasetSpec(name="lot1", level_of_theory="PBE", labels={"energy": "REF_energy", "forces": "REF_forces"})
    assert convert(tmp_path / "lot1.extxyz", tmp_path / "lot1.bp", spec, progress=False).kept == 2
    with pytest.raises(ConfigError, match="unknown key 'enrgy'"):
        DatasetSpec(name="x", level_of_theory="PBE", labels={"enrgy": "REF_energy"})
    with pytest.raises(ConfigError, match="energy_unit.*furlong"):
        DatasetSpec(name="x", level_of_theory="PBE", labels={"energy_unit": "furlong"})


def test_data_info_takes_a_directory_of_stores(demo_dir, tmp_path, capsys):
    assert main(["data", "info", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert "bulk" in out and "molecules" in out
    (tmp_path / "empty").mkdir()
    assert main(["data", "info", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "without stores" in err and "\x1b" not in err and len(err.strip().splitlines()) == 1


def test_config_paths_are_relative_to_the_config_file(demo_dir, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    relative = os.path.relpath(demo_dir / "bulk.bp", configs)
    (configs / "train.yaml").write_text(yaml.safe_dump({"data": {"stores": [relative]}, "max_steps": 1}))
    config = load_train_config(configs / "train.yaml")
    assert Path(config.data.stores[0]) == (demo_dir / "bulk.bp").absolute()


def test_calculator_default_head(tiny_checkpoint):
    from gfmkit.models import load_model

    model = load_model(tiny_checkpoint)
    assert len(model.head_names) > 1
    with pytest.raises(ValueError, match="choose one") as info:
        model.calculator()
    assert all(h.name in str(info.value) for h in model.heads if h.kind == "energy")


@pytest.mark.slow
def test_a_logged_training_has_no_redrawn_bars(demo_dir, tmp_path):
    """stderr into a file (a batch job's log): plain progress lines, no carriage returns or cursor codes."""
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"stores": [str(demo_dir / "bulk.bp")]},
        "model": {"hidden": 16, "layers": 1, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8},
        "max_steps": 6, "validate_every": 3, "checkpoint_every": 6,
    }))
    log = tmp_path / "job.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "gfmkit.cli", "train", str(config), "--out", str(tmp_path / "run")],
                              stdout=fh, stderr=subprocess.STDOUT, env=single_thread_env(GFMKIT_PROGRESS_INTERVAL="0"),
                              timeout=300, check=False)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text and "\x1b[" not in text
    assert "train: 6/6" in text  # progress still reaches the log, one line at a time
    # evaluate has --no-progress too, and TQDM_DISABLE=1 silences progress
    evaluated = subprocess.run([sys.executable, "-m", "gfmkit.cli", "evaluate", str(tmp_path / "run/checkpoints/best.pt"),
                                "--data", str(demo_dir / "bulk.bp"), "--out", str(tmp_path / "ev"), "--no-progress"],
                               capture_output=True, text=True, env=single_thread_env(), timeout=300, check=False)
    assert evaluated.returncode == 0 and "evaluate:" not in evaluated.stderr
    assert "forces MAE (eV/Å)" in evaluated.stdout  # terminal tables carry units
    shown = subprocess.run([sys.executable, "-m", "gfmkit.cli", "evaluate", str(tmp_path / "run/checkpoints/best.pt"),
                            "--data", str(demo_dir / "bulk.bp"), "--out", str(tmp_path / "ev2")],
                           capture_output=True, text=True, env=single_thread_env(GFMKIT_PROGRESS_INTERVAL="0"),
                           timeout=300, check=False)
    assert shown.returncode == 0 and "evaluate:" in shown.stderr and "\r" not in shown.stderr


@pytest.mark.slow
def test_the_demo_log_has_no_redrawn_bars_and_no_empty_folders(tmp_path):
    log = tmp_path / "demo.log"
    out = tmp_path / "demo"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "gfmkit.cli", "demo", "--out", str(out), "--scale", "0.03",
                               "--steps", "20"], stdout=fh, stderr=subprocess.STDOUT,
                              env=single_thread_env(GFMKIT_PROGRESS_INTERVAL="0"), timeout=600, check=False)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b[" not in text
    assert "train: 20/20" in text and "forces MAE (eV/Å)" in text
    empty = [p for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert empty == []  # no checkpoints/ or figures/ folder that stays empty
