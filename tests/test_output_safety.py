"""Never lose a user's files, never hang on a damaged store: every reproduction of the issue as a test.

Each test fails on the code before the output-path policy: the user's files must be byte-identical
afterwards, a damaged store must fail within a bounded time (pytest-timeout), and a 2-rank job whose
output is impossible must end non-zero on both ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from conftest import mpiexec, single_thread_env

from gfmkit.cli import main
from gfmkit.data import DatasetSpec, Store, StoreError
from gfmkit.data.ingest import convert
from gfmkit.data.store_check import MANIFEST
from gfmkit.files import atomic_path, stale_temporaries
from gfmkit.outputs import OutputError, check_run_dir, check_store_output, output_file

GOOD = b"the only copy of chapter 3\n"


def _frames(n: int = 4):
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        frames.append(atoms)
    return frames


@pytest.fixture
def extxyz(tmp_path) -> Path:
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _frames())
    return path


@pytest.fixture
def store(extxyz, tmp_path) -> Path:
    out = tmp_path / "first.bp"
    assert main(["data", "convert", str(extxyz), "--dataset", "first", "--level-of-theory", "EMT", "--out", str(out)]) == 0
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(path: Path, name: str) -> dict[str, str]:
    path.mkdir()
    (path / name).write_bytes(GOOD)
    return _digest(path)


def _convert_args(extxyz: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "convert", str(extxyz), "--dataset", "x", "--level-of-theory", "EMT", "--out", str(out), *extra]


# -- never replace what gfmkit did not write -----------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_never_replaces_a_users_directory(extxyz, tmp_path, capsys, overwrite):
    before = _user_folder(tmp_path / "mydata", "thesis.tex")
    code = main(_convert_args(extxyz, tmp_path / "mydata", *(["--overwrite"] if overwrite else [])))
    err = capsys.readouterr().err
    assert code == 1 and "not a gfmkit store" in err and "mydata" in err and len(err.strip().splitlines()) == 1
    assert _digest(tmp_path / "mydata") == before


def test_existing_store_needs_overwrite(extxyz, store, tmp_path, capsys):
    before = _digest(store)
    assert main(_convert_args(extxyz, store)) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _digest(store) == before and Store(store).name == "first"
    assert main(_convert_args(extxyz, store, "--overwrite")) == 0
    assert Store(store).name == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_a_file_is_never_replaced_by_a_store(extxyz, tmp_path, capsys):
    target = tmp_path / "notes.bp"
    target.write_bytes(GOOD)
    assert main(_convert_args(extxyz, target, "--overwrite")) == 1
    assert target.read_bytes() == GOOD


def test_cluster_script_into_a_directory_adds_a_file(tmp_path, capsys):
    before = _user_folder(tmp_path / "jobs", "old_job.sbatch")
    assert main(["cluster", "script", "--profile", "local", "--output", str(tmp_path / "jobs"), "--", "echo", "hi"]) == 0
    after = _digest(tmp_path / "jobs")
    assert {k: v for k, v in after.items() if k in before} == before and len(after) == 2
    # the same name again is refused, and with --overwrite replaced (a file gfmkit wrote)
    assert main(["cluster", "script", "--profile", "local", "--output", str(tmp_path / "jobs"), "--", "echo", "hi"]) == 1
    assert main(["cluster", "script", "--profile", "local", "--output", str(tmp_path / "jobs"), "--overwrite", "--",
                 "echo", "bye"]) == 0
    assert _digest(tmp_path / "jobs")["old_job.sbatch"] == before["old_job.sbatch"]


def test_data_figure_into_a_directory_adds_a_file(store, tmp_path, capsys):
    before = _user_folder(tmp_path / "figures", "paper_fig1.pdf")
    assert main(["data", "figure", str(store), "--out", str(tmp_path / "figures")]) == 0
    after = _digest(tmp_path / "figures")
    assert after["paper_fig1.pdf"] == before["paper_fig1.pdf"] and "datasets.png" in after
    assert main(["data", "figure", str(store), "--out", str(tmp_path / "figures" / "paper_fig1.pdf")]) == 1
    assert _digest(tmp_path / "figures") == after


def test_atomic_path_never_swaps_a_directory_and_a_file(tmp_path):
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "keep.pdf").write_bytes(GOOD)
    with pytest.raises(IsADirectoryError), atomic_path(folder) as tmp:
        tmp.write_text("a figure")
    assert (folder / "keep.pdf").read_bytes() == GOOD
    afile = tmp_path / "afile"
    afile.write_bytes(GOOD)
    with pytest.raises(NotADirectoryError), atomic_path(afile) as tmp:
        tmp.mkdir()
    assert afile.read_bytes() == GOOD


def test_output_policy_units(tmp_path, store):
    (tmp_path / "f").write_bytes(GOOD)
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_store_output(tmp_path / "f" / "x.bp")
    with pytest.raises(OutputError, match="exists"):
        check_store_output(store)
    assert check_store_output(store, overwrite=True) == store
    assert output_file(tmp_path, "a.png") == tmp_path / "a.png"
    (tmp_path / "d.png").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        output_file(tmp_path, "d.png", overwrite=True)


def test_run_directory_policy(tmp_path):
    user = tmp_path / "user"
    _user_folder(user, "notes.md")
    with pytest.raises(OutputError, match="not a gfmkit run directory"):
        check_run_dir(user, overwrite=True)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "run.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        (run / name).write_text("x")
    (run / "notes.md").write_bytes(GOOD)
    check_run_dir(run)  # a gfmkit run directory: usable (the trainer decides about resuming)
    assert (run / "checkpoints" / "last.pt").exists()
    check_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.md"] and (run / "notes.md").read_bytes() == GOOD


# -- damaged stores fail fast, in one line -------------------------------------------------------------
def _damage(store: Path, tmp_path: Path, how: str, *, manifest: bool) -> Path:
    import shutil

    damaged = tmp_path / f"{how}-{'m' if manifest else 'old'}.bp"
    shutil.copytree(store, damaged)
    if not manifest:
        (damaged / MANIFEST).unlink()  # a store of an older gfmkit, or another code's file
    data = damaged / "data.0"
    if how == "empty":
        data.write_bytes(b"")
    elif how == "half":
        os.truncate(data, data.stat().st_size // 2)
    elif how == "missing":
        data.unlink()
    elif how == "no-metadata":
        (damaged / "md.0").unlink()
    return damaged


@pytest.mark.timeout(60)
@pytest.mark.parametrize("manifest", [True, False])
@pytest.mark.parametrize("how", ["empty", "half", "missing", "no-metadata"])
def test_damaged_store_is_a_one_line_error(store, tmp_path, capsys, how, manifest):
    damaged = _damage(store, tmp_path, how, manifest=manifest)
    with pytest.raises(StoreError, match=str(damaged.name)):
        Store(damaged, preload=True)
    assert main(["data", "info", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert str(damaged) in err and len(err.strip().splitlines()) == 1 and "\x1b" not in err


@pytest.mark.timeout(60)
def test_evaluate_on_a_truncated_store_fails_fast(store, tiny_checkpoint, tmp_path, capsys):
    damaged = _damage(store, tmp_path, "half", manifest=True)
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(damaged), "--out", str(tmp_path / "ev")]) == 1
    assert "cut short" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


# -- output errors before work, and nothing left behind ------------------------------------------------
def test_outputs_under_a_file_are_one_line_errors(extxyz, store, tiny_checkpoint, demo_dir, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_bytes(GOOD)
    assert main(_convert_args(extxyz, afile / "x.bp")) == 1
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(store), "--out", str(afile / "ev")]) == 1
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"data": {"stores": [str(store)]}, "max_steps": 1}))
    assert main(["train", str(config), "--out", str(afile / "run")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all("afile is a file" in e for e in errors), errors
    assert afile.read_bytes() == GOOD


def test_failed_commands_leave_nothing_behind(tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "nostores"
    empty.mkdir()
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(empty), "--out", str(tmp_path / "ev")]) == 1
    assert "without stores" in capsys.readouterr().err and not (tmp_path / "ev").exists()
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"data": {"stores": [str(tmp_path / "missing.bp")]}, "max_steps": 1}))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 1
    assert "no such store" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_non_run_directory_is_refused_by_train(store, tmp_path, capsys):
    before = _user_folder(tmp_path / "thesis", "thesis.tex")
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"data": {"stores": [str(store)]}, "max_steps": 1}))
    assert main(["train", str(config), "--out", str(tmp_path / "thesis"), "--overwrite"]) == 1
    assert "not a gfmkit run directory" in capsys.readouterr().err
    assert _digest(tmp_path / "thesis") == before


# -- interrupted writes and skipped structures ---------------------------------------------------------
@pytest.mark.timeout(120)
def test_sigkilled_write_leaves_a_temporary_the_next_write_removes(extxyz, tmp_path):
    out = tmp_path / "x.bp"
    killer = f"""
import os, signal
from gfmkit.data import DatasetSpec
from gfmkit.data import store_write
from gfmkit.data.ingest import convert
store_write._write_attributes = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
convert({str(extxyz)!r}, {str(out)!r}, DatasetSpec(name="x", level_of_theory="EMT"), progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", killer], env=single_thread_env(), timeout=100, check=False)
    assert proc.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".x.bp.tmp-")]
    assert len(left) == 1 and not out.exists()
    assert stale_temporaries(out)[0] == left
    convert(extxyz, out, DatasetSpec(name="x", level_of_theory="EMT"), progress=False)
    assert not left[0].exists() and len(Store(out)) == 4


def test_on_error_skip_keeps_every_good_structure(tmp_path, capsys):
    source = tmp_path / "mixed.extxyz"
    blocks = []
    for i, symbol in enumerate(["H", "Xx", "H", "H"]):
        blocks.append(f"2\nProperties=species:S:1:pos:R:3 energy={1.0 + i} pbc=\"F F F\"\n{symbol} 0 0 0\nH 0 0 {0.74 + 0.01 * i}\n")
    source.write_text("".join(blocks))
    assert main(["data", "convert", str(source), "--dataset", "h2", "--level-of-theory", "x", "--targets", "energy",
                 "--on-error", "skip", "--out", str(tmp_path / "h2.bp")]) == 0
    out = capsys.readouterr().out
    assert "kept 3, skipped 1" in out and "unknown element 'Xx'" in out
    assert [s.source_index for s in Store(tmp_path / "h2.bp")] == [0, 2, 3]


# -- MPI: every rank learns of the failure -------------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_refuse_an_output_under_a_file(extxyz, tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(GOOD)
    gfmkit = str(Path(sys.executable).parent / "gfmkit")
    proc = subprocess.run([mpiexec(), "-n", "2", gfmkit, *_convert_args(extxyz, afile / "x.bp")], capture_output=True,
                          text=True, timeout=120, env=single_thread_env(), check=False)
    assert proc.returncode != 0
    assert "afile is a file" in proc.stderr and "Traceback" not in proc.stderr
    assert afile.read_bytes() == GOOD
