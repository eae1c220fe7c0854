"""A catalogue of bad inputs (issue #21): each one is one line naming the file (and the structure and
field where there is one), a non-zero exit without a traceback, and nothing half-written.

Every case runs the real command in this process (``run_cli``); the table in docs/hardening.md lists
each with what gfmkit says. Cases covered by other test files are listed there too.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import adios2
import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import TINY_MODEL, run_cli, tiny_config
from structures import periodic_emt_structures

from gfmkit.data import store_format as fmt

pytestmark = pytest.mark.usefixtures("one_thread")


def _frames(n: int = 4):
    return periodic_emt_structures(n)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: good.extxyz (4 Cu structures) and good.bp, its store."""
    root = tmp_path_factory.mktemp("bad")
    ase.io.write(root / "good.extxyz", _frames())
    assert run_cli("data", "convert", root / "good.extxyz", "--dataset", "cu", "--level-of-theory", "EMT",
                   "--out", root / "good.bp").returncode == 0
    return root


def one_line_error(result, *needles: str) -> str:
    """Assert a clean failure: non-zero, no traceback, no colour codes, one error line holding ``needles``."""
    assert result.returncode not in (0, None), result.stdout
    assert "Traceback" not in result.stderr and not re.search(r"\x1b|\[[0-9;]+m", result.stderr), result.stderr
    lines = result.stderr.rstrip("\n").splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # the message ends the output, whole
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries gfmkit may have left in ``folder`` (there must be none)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def convert(ws: Path, out: Path, *files, **options) -> object:
    args = ["data", "convert", *[str(f) for f in files], "--out", str(out)]
    options = {"dataset": "x", "level_of_theory": "EMT", **options}
    for key, value in options.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return run_cli(*args)


def _write(path: Path, frames) -> Path:
    ase.io.write(path, frames)
    return path


def _labelled(atoms, energy=-1.0, forces=None):
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)) if forces is None else forces)
    return atoms


# -- structure files into a store ------------------------------------------------------------------------
def _bad_structures(tmp: Path, how: str) -> Path:
    """good.extxyz with its structure [1] broken in one way."""
    frames = _frames()
    bad = frames[1]
    if how == "nan-energy":
        _labelled(bad, energy=float("nan"))
    elif how == "inf-forces":
        _labelled(bad, forces=np.full((len(bad), 3), np.inf))
    elif how == "nan-positions":
        bad.positions[0, 0] = np.nan
        _labelled(bad)
    elif how == "overlapping-atoms":
        bad.positions[1] = bad.positions[0]
        _labelled(bad)
    elif how == "zero-cell":
        bad.cell[2] = 0.0
        _labelled(bad)
    elif how == "singular-cell":
        bad.cell[2] = bad.cell[0] + bad.cell[1]
        _labelled(bad)
    path = tmp / f"{how}.extxyz"
    ase.io.write(path, frames)
    return path


CASES = ("nan-energy", "inf-forces", "nan-positions", "overlapping-atoms", "zero-cell", "singular-cell")


@pytest.mark.parametrize("how, field", [
    ("nan-energy", "energy: not finite"),
    ("inf-forces", "forces: contains NaN or inf"),
    ("nan-positions", "pos"),
    ("overlapping-atoms", "pos: atoms 0 and 1 are 0.0000 Å apart"),
    ("zero-cell", "cell: zero-volume or singular"),
    ("singular-cell", "cell: zero-volume or singular"),
], ids=CASES)
def test_a_bad_structure_names_file_index_and_field(ws, tmp_path, how, field):
    path = _bad_structures(tmp_path, how)
    result = convert(ws, tmp_path / "x.bp", path)
    one_line_error(result, f"{path.name}[1] {field}", "no store was written")
    assert not (tmp_path / "x.bp").exists() and leftovers(tmp_path) == []


def test_forces_of_the_wrong_shape(tmp_path):
    # extxyz cannot hold such forces: a structure built in Python (an ase database) can
    from ase.db import connect

    path = tmp_path / "shapes.db"
    with connect(path) as db:
        for i, atoms in enumerate(_frames(3)):
            if i == 2:
                atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms) - 1, 3)))
            db.write(atoms)
    one_line_error(convert(None, tmp_path / "x.bp", path), "shapes.db[2]", "forces")
    assert not (tmp_path / "x.bp").exists()


def test_an_unknown_element_names_the_numbers_field(ws, tmp_path):
    path = tmp_path / "xx.extxyz"
    path.write_text((ws / "good.extxyz").read_text().replace("\nCu ", "\nXx ", 1))
    one_line_error(convert(ws, tmp_path / "x.bp", path), "xx.extxyz[0] numbers: unknown element 'Xx'")
    assert not (tmp_path / "x.bp").exists()


def test_an_unreadable_file_is_a_file_problem(tmp_path):
    path = tmp_path / "junk.extxyz"
    path.write_text("3\nnot = an = extxyz = header\nCu 0 0\n")
    one_line_error(convert(None, tmp_path / "x.bp", path), "junk.extxyz[0] file: cannot be read")


def test_an_empty_dataset(tmp_path):
    path = tmp_path / "empty.extxyz"
    path.write_text("")
    line = one_line_error(convert(None, tmp_path / "x.bp", path), "empty.extxyz[0] file:", "empty file (no structures)")
    assert "more problems" not in line
    assert not (tmp_path / "x.bp").exists() and leftovers(tmp_path) == []


def test_every_structure_skipped_is_an_empty_dataset(ws, tmp_path):
    path = _write(tmp_path / "nan.extxyz", [_labelled(a, energy=float("nan")) for a in _frames(2)])
    one_line_error(convert(ws, tmp_path / "x.bp", path, on_error="skip"), "no structures")
    assert not (tmp_path / "x.bp").exists()


@pytest.mark.parametrize("name", ["missing.extxyz", "nomatch-*.extxyz"])
def test_a_missing_file_or_an_empty_glob(tmp_path, name):
    one_line_error(convert(None, tmp_path / "x.bp", tmp_path / name), name)
    assert not (tmp_path / "x.bp").exists()


def test_an_unknown_unit_blames_the_option(ws, tmp_path):
    line = one_line_error(convert(ws, tmp_path / "x.bp", ws / "good.extxyz", energy_unit="furlong"),
                          "energy_unit", "unknown energy unit 'furlong'")
    assert "good.extxyz[" not in line


def test_an_unknown_format_names_the_option(ws, tmp_path):
    line = one_line_error(convert(ws, tmp_path / "x.bp", ws / "good.extxyz", format="nosuchformat"),
                          "format 'nosuchformat': ase.io knows no such format")
    assert "good.extxyz[" not in line


def test_a_missing_energy_key_names_the_key(ws, tmp_path):
    one_line_error(convert(ws, tmp_path / "x.bp", ws / "good.extxyz", energy_key="dft_energy"),
                   "good.extxyz[0]", "energy")


def test_a_negative_minimum_distance_is_refused(ws, tmp_path):
    one_line_error(convert(ws, tmp_path / "x.bp", ws / "good.extxyz", min_distance=-1),
                   "validation.min_distance must be 0 or more, got -1.0")
    assert not (tmp_path / "x.bp").exists()


@pytest.mark.parametrize("args, needles", [
    (["--scale", "-1"], ["--scale: must be a number above 0, got -1"]),
    (["--scale", "nan"], ["--scale: must be a number above 0, got nan"]),
    (["--datasets", "nosuch"], ["--datasets: unknown demo dataset(s) ['nosuch']"]),
], ids=["negative-scale", "nan-scale", "unknown-dataset"])
def test_bad_demo_options(tmp_path, args, needles):
    one_line_error(run_cli("data", "demo", "--out", tmp_path / "demo", *args), *needles)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("make_args, needles", [
    (lambda ws, t: ["data", "figure", ws / "good.bp", "--out", t / "fig.txt"], ["fig.txt: matplotlib cannot write txt"]),
    (lambda ws, t: ["data", "sampling", ws / "good.bp", "--figure", t / "s.docx"], ["s.docx: matplotlib cannot write docx"]),
    (lambda ws, t: ["figures", ws, "--out", t / "figs", "--formats", "png,txt"], ["matplotlib cannot write txt"]),
], ids=["data-figure", "sampling-figure", "figures-formats"])
def test_an_image_format_matplotlib_cannot_write(ws, tmp_path, make_args, needles):
    one_line_error(run_cli(*make_args(ws, tmp_path)), *needles)
    assert list(tmp_path.iterdir()) == []


# -- YAML configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needles", [
    ("name: x\nlevel_of_theory: EMT\nbogus: 1\n", ["spec.yaml", "unknown key 'bogus'"]),
    ("name: x\nlevel_of_theory: EMT\nsplit_seed: abc\n", ["spec.yaml", "split_seed"]),
    ("name: x\nlevel_of_theory: EMT\nlabels:\n\tenergy: e\n", ["spec.yaml", "at line 4, column 1", "never tabs"]),
    ("- name\n- x\n", ["spec.yaml"]),
    ("name: x\nlevel_of_theory: EMT\nlabels: [1, 2]\n", ["spec.yaml", "labels"]),
], ids=["unknown-key", "wrong-type", "tab", "not-a-mapping", "section-not-a-mapping"])
def test_a_bad_dataset_config(ws, tmp_path, text, needles):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    one_line_error(convert(ws, tmp_path / "x.bp", ws / "good.extxyz", config=spec, dataset=None, level_of_theory=None),
                   *needles)
    assert not (tmp_path / "x.bp").exists()


def _train_yaml(tmp_path: Path, config: dict | str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def _train(tmp_path: Path, config) -> object:
    return run_cli("train", _train_yaml(tmp_path, config), "--out", tmp_path / "run", "--no-progress")


@pytest.mark.parametrize("change, needles", [
    (lambda c: c.update(bogus=1), ["train.yaml", "bogus"]),
    (lambda c: c.update(max_steps="ten"), ["train.yaml", "max_steps"]),
    (lambda c: c.pop("data"), ["train.yaml", "data"]),
    (lambda c: c["sampler"].update(batch_size=0), ["train.yaml", "batch_size"]),
    (lambda c: c["model"].update(hidden=[16]), ["train.yaml", "model.hidden"]),
    (lambda c: c["sampler"].update(weights={"nosuch": 1.0}), ["train.yaml", "sampler.weights", "nosuch"]),
    (lambda c: c["data"].update(train_split="nosuch[:3]"), ["train.yaml", "data.train_split"]),
], ids=["unknown-key", "wrong-type", "missing-section", "zero-batch", "list-for-int", "unknown-weighted-dataset",
        "unknown-split"])
def test_a_bad_training_config(ws, tmp_path, change, needles):
    config = tiny_config(ws / "good.bp")
    change(config)
    one_line_error(_train(tmp_path, config), *needles)
    assert not (tmp_path / "run").exists()


def test_a_training_config_with_tabs(ws, tmp_path):
    text = yaml.safe_dump(tiny_config(ws / "good.bp")).replace("\n  ", "\n\t", 1)
    one_line_error(_train(tmp_path, text), "train.yaml", "at line", "never tabs")


def test_training_on_a_folder_without_stores(tmp_path):
    (tmp_path / "nostores").mkdir()
    one_line_error(_train(tmp_path, tiny_config(tmp_path / "nostores")), "nostores")
    assert not (tmp_path / "run").exists()


def test_training_on_a_missing_store(tmp_path):
    one_line_error(_train(tmp_path, tiny_config(tmp_path / "gone.bp")), "gone.bp")


# -- stores -----------------------------------------------------------------------------------------------
def _copy_store(ws: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.bp"
    shutil.copytree(ws / "good.bp", copy)
    return copy


def _rewrite(src: Path, dst: Path, attribute: str, value) -> Path:
    """A copy of a store through ADIOS2 with one attribute changed (and no manifest: as another tool would)."""
    with adios2.FileReader(str(src)) as reader:
        attrs = {n: reader.read_attribute(n) for n in reader.available_attributes()}
        variables = {n: reader.read(n) for n in reader.available_variables()}
    attrs[attribute] = value
    with adios2.Stream(str(dst), "w") as stream:
        for name, value in attrs.items():
            stream.write_attribute(name, value)
        for name, array in variables.items():
            stream.write(name, array, array.shape, [0] * array.ndim, array.shape)
    return dst


@pytest.mark.parametrize("damage, needles", [
    (lambda p: open(p / "data.0", "r+b").truncate(100), ["data.0 is 100 bytes"]),
    (lambda p: (p / "md.idx").unlink(), ["md.idx is missing"]),
    (lambda p: (p / "md.0").write_bytes(b""), ["md.0 is empty"]),
    (lambda p: (p / "gfmkit-store.json").write_text("{"), ["gfmkit-store.json cannot be read"]),
], ids=["data-cut-short", "metadata-missing", "metadata-empty", "manifest-corrupt"])
def test_a_damaged_store(ws, tmp_path, damage, needles):
    store = _copy_store(ws, tmp_path)
    damage(store)
    one_line_error(run_cli("data", "info", store), "copy.bp", *needles)


def test_files_that_are_not_adios2_are_refused_before_adios2_reads_them(tmp_path):
    junk = tmp_path / "junk.bp"
    junk.mkdir()
    for name in ("md.idx", "md.0", "data.0"):
        (junk / name).write_bytes(b"not adios2 at all " * 8)
    for result in (run_cli("data", "info", junk), _train(tmp_path, tiny_config(junk))):
        one_line_error(result, "junk.bp: not a readable ADIOS2 store, its md.idx does not start with an ADIOS2")


def test_an_adios2_error_is_one_line_without_colour_codes(ws, tmp_path):
    # an index table's header, then garbage: ADIOS2 itself fails (after its own 5 s wait), in colour
    junk = tmp_path / "junk.bp"
    junk.mkdir()
    (junk / "md.idx").write_bytes((ws / "good.bp" / "md.idx").read_bytes()[:64] + b"garbage " * 24)
    for name in ("md.0", "data.0"):
        (junk / name).write_bytes(b"garbage " * 24)
    line = one_line_error(run_cli("data", "info", junk), "junk.bp: damaged store, File", "junk.bp was found")
    assert "ADIOS2 EXCEPTION" not in line and "<Engine>" not in line and "[1;" not in line


def test_a_hydragnn_file_missing_a_field(tmp_path):
    from hydragnn_layout import emt_samples, write_hydragnn_bp

    samples, _ = emt_samples(3, seed=0)
    write_hydragnn_bp(tmp_path / "h.bp", {"trainset": [{k: v for k, v in s.items() if k != "pos"} for s in samples]})
    one_line_error(run_cli("data", "info", tmp_path / "h.bp"), "h.bp", "'trainset'", "'pos'")
    one_line_error(convert(None, tmp_path / "x.bp", tmp_path / "h.bp"), "h.bp", "'pos'")
    assert not (tmp_path / "x.bp").exists()


def test_a_store_of_a_newer_schema(ws, tmp_path):
    newer = _rewrite(ws / "good.bp", tmp_path / "newer.bp", fmt.A_SCHEMA, fmt.SCHEMA_VERSION + 1)
    one_line_error(run_cli("data", "info", newer), "newer.bp", "newer than this gfmkit")


def test_a_directory_that_is_not_a_store(tmp_path):
    folder = tmp_path / "notes.bp"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    one_line_error(run_cli("data", "info", folder), "notes.bp")


def test_a_file_given_as_a_store(ws):
    one_line_error(run_cli("data", "info", ws / "good.extxyz"), "good.extxyz")


def test_sampling_on_a_folder_without_stores(tmp_path):
    one_line_error(run_cli("data", "sampling", tmp_path), str(tmp_path), "without stores")


# -- outputs -----------------------------------------------------------------------------------------------
def test_an_output_directory_that_is_not_writable(ws, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores the mode bits: see the directory as any other user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real(p, mode, **kw))
    try:
        one_line_error(convert(ws, locked / "x.bp", ws / "good.extxyz"), "locked", "not writable")
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_a_full_disk_during_a_store_write(ws, tmp_path, monkeypatch):
    from gfmkit.data import store_write

    real = store_write._write_attributes

    def full(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.bp" / "data.0"))

    monkeypatch.setattr(store_write, "_write_attributes", full)
    one_line_error(convert(ws, tmp_path / "x.bp", ws / "good.extxyz"), "x.bp", "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_interrupted_convert_leaves_nothing(ws, tmp_path, monkeypatch):
    from gfmkit.data import store_write

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_write, "_write_attributes", interrupt)
    result = convert(ws, tmp_path / "x.bp", ws / "good.extxyz")
    assert result.returncode == 130 and "interrupted" in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_figures_of_a_missing_folder_leave_no_output_folder(tmp_path):
    one_line_error(run_cli("figures", tmp_path / "nothere", "--out", tmp_path / "figs"), "nothere")
    assert not (tmp_path / "figs").exists()


def test_figures_of_a_folder_with_nothing_to_draw(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli("figures", tmp_path / "empty", "--out", tmp_path / "figs"), "nothing to draw")
    assert not (tmp_path / "figs").exists()


# -- checkpoints ---------------------------------------------------------------------------------------------
def _evaluate(checkpoint: Path, ws: Path, tmp_path: Path) -> object:
    return run_cli("evaluate", checkpoint, "--data", ws / "good.bp", "--out", tmp_path / "eval", "--no-progress")


def _with_config(checkpoint: Path, **changes) -> dict:
    data = torch.load(checkpoint, weights_only=True)
    return {**data, "config": {**data["config"], **changes}}


class _Payload:
    """Pickled with code to run on load: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("make, needles", [
    (lambda p, good: p.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2]),
     ["not a readable checkpoint: the file is truncated or corrupt"]),
    (lambda p, good: p.write_text("hello, not a checkpoint"), ["not a readable checkpoint: not a file torch.save wrote"]),
    (lambda p, good: torch.save({"weights": torch.zeros(2)}, p), ["not a gfmkit checkpoint"]),
    (lambda p, good: torch.save({**torch.load(good, weights_only=True), "schema_version": 99}, p),
     ["schema 99 is newer than this gfmkit"]),
    (lambda p, good: torch.save({"format": "gfmkit-checkpoint", "x": _Payload()}, p),
     ["refused", "runs code"]),
    (lambda p, good: torch.save(_with_config(good, hidden=16), p),
     ["state dict does not match its config", "of another shape (first encoder.", "in the file"]),
], ids=["truncated", "text-file", "foreign", "newer", "pickled-code", "weights-not-matching-config"])
def test_a_bad_checkpoint(ws, tmp_path, tiny_checkpoint, make, needles):
    bad = tmp_path / "model.pt"
    make(bad, tiny_checkpoint)
    line = one_line_error(_evaluate(bad, ws, tmp_path), "model.pt", *needles)
    assert "weights_only=False" not in line and "set to `False`" not in line and "will likely succeed" not in line
    assert not (tmp_path / "eval").exists()


def test_resume_or_init_from_a_file_that_is_not_a_checkpoint(ws, tmp_path):
    bogus = tmp_path / "last.pt"
    bogus.write_text("not a checkpoint")
    path = _train_yaml(tmp_path, tiny_config(ws / "good.bp"))
    one_line_error(run_cli("train", path, "--out", tmp_path / "run", "--resume", bogus, "--no-progress"),
                   "last.pt: not a readable checkpoint")
    one_line_error(_train(tmp_path, tiny_config(ws / "good.bp", init={"checkpoint": str(bogus)}, model=None)),
                   "last.pt: not a readable checkpoint")
    assert not (tmp_path / "run").exists()


def test_screen_with_an_unknown_head(tiny_checkpoint, tmp_path):
    result = run_cli("screen", tiny_checkpoint, "--source", "random:4:2-4:Cu:seed=1", "--heads", "nosuchhead",
                     "--out", tmp_path / "r.bp", "--no-progress")
    one_line_error(result, "nosuchhead")
    assert not (tmp_path / "r.bp").exists()


@pytest.mark.parametrize("source, needles", [
    ("empty.extxyz", ["empty.extxyz", "empty file (no structures)"]),
    ("random:0", ["random source", "COUNT must be at least 1"]),
    ("nothing", ["nothing"]),
], ids=["empty-file", "no-random-structures", "empty-folder"])
def test_a_screen_source_that_yields_nothing(tiny_checkpoint, tmp_path, source, needles):
    (tmp_path / "empty.extxyz").write_text("")
    (tmp_path / "nothing").mkdir()
    arg = source if source.startswith("random") else str(tmp_path / source)
    result = run_cli("screen", tiny_checkpoint, "--source", arg, "--out", tmp_path / "r.bp", "--no-progress")
    one_line_error(result, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.extxyz", "nothing"]


def test_screen_ranked_by_a_column_it_does_not_have_keeps_its_results(tiny_checkpoint, tmp_path):
    result = run_cli("screen", tiny_checkpoint, "--source", "random:4:2-4:Cu:seed=1", "--top", "2", "--by", "nosuch",
                     "--out", tmp_path / "r.bp", "--no-progress")
    one_line_error(result, "--by: by='nosuch': not a column", "its results are in")
    from gfmkit.data.results_store import ResultsStore

    assert len(ResultsStore(tmp_path / "r.bp")) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_screen_on_a_device_this_machine_lacks(tiny_checkpoint, tmp_path):
    result = run_cli("screen", tiny_checkpoint, "--source", "random:4:2-4:Cu:seed=1", "--device", "cuda",
                     "--out", tmp_path / "r.bp", "--no-progress")
    line = one_line_error(result, "best.pt: cannot be loaded onto device 'cuda': this machine has no CUDA device")
    assert "not a readable checkpoint" not in line
    assert list(tmp_path.iterdir()) == []


def test_screen_with_an_element_above_max_z_names_the_structure(tiny_checkpoint, ws, tmp_path):
    heavy = bulk("Cu", cubic=True)
    heavy.numbers[2] = 101  # Md: beyond the model's max_z = 100
    ase.io.write(tmp_path / "heavy.extxyz", [heavy])
    result = run_cli("screen", tiny_checkpoint, "--source", ws / "good.extxyz", "--source", tmp_path / "heavy.extxyz",
                     "--out", tmp_path / "r.bp", "--no-progress")
    one_line_error(result, "heavy.extxyz[0]: atomic number 101 (Md) is outside this model's elements (1 to max_z = 100)")
    assert not (tmp_path / "r.bp").exists()


def test_screen_with_structures_larger_than_the_edge_budget(tiny_checkpoint, tmp_path):
    # each structure above --max-edges is a batch of its own: screened, not dropped, no endless loop
    result = run_cli("screen", tiny_checkpoint, "--source", "random:4:8-8:Cu:seed=1", "--max-edges", "2",
                     "--out", tmp_path / "r.bp", "--summary-json", "--no-progress")
    assert result.returncode == 0, result.stderr
    from gfmkit.data.results_store import ResultsStore

    assert len(ResultsStore(tmp_path / "r.bp")) == 4


def test_training_with_structures_larger_than_the_atom_budget(ws, tmp_path):
    config = tiny_config(ws / "good.bp", sampler={"batch_size": None, "max_atoms": 2})
    result = _train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    from gfmkit.rundir import RunDir

    train = RunDir(tmp_path / "run").metrics().query("phase == 'train'")
    assert train["step"].tolist() == [1, 2, 3, 4] and (train["structures"] == 1).all()


# -- models and the calculator -----------------------------------------------------------------------------
def _small_model(max_z: int = 20):
    from gfmkit.models import ModelConfig
    from gfmkit.models.config import HeadConfig
    from gfmkit.models.multihead import MultiHeadPaiNN

    torch.manual_seed(0)
    config = ModelConfig(**{**TINY_MODEL, "max_z": max_z})
    return MultiHeadPaiNN(config, [HeadConfig(name="al", reference_energies={"Al": -0.1}, composition={"Al": 1.0})])


def test_the_calculator_refuses_an_element_above_max_z():
    from gfmkit.models.calculator import GFMCalculator, ModelInputError

    atoms = bulk("Cu")
    atoms.calc = GFMCalculator(_small_model(max_z=20), "al")
    with pytest.raises(ModelInputError, match=r"atomic number 29 \(Cu\).*max_z = 20"):
        atoms.get_potential_energy()


def test_the_calculator_warns_about_elements_no_head_was_trained_on():
    from gfmkit.models.calculator import GFMCalculator

    atoms = bulk("Al", cubic=True)
    atoms.calc = GFMCalculator(_small_model(max_z=30), "al")
    atoms.get_potential_energy()  # trained on: no warning
    atoms.numbers[0] = 29
    with pytest.warns(UserWarning, match=r"head 'al' was not trained on Cu"):
        atoms.get_potential_energy()


def test_training_data_above_max_z_names_the_store(ws, tmp_path):
    config = tiny_config(ws / "good.bp", model={"max_z": 20})
    one_line_error(_train(tmp_path, config), "good.bp: element(s) Cu, Pd beyond the model's max_z = 20")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_evaluation_data_above_max_z_names_the_store(ws, tmp_path):
    from gfmkit.models.checkpoint import save_checkpoint

    save_checkpoint(_small_model(max_z=20), tmp_path / "small.pt")
    one_line_error(_evaluate(tmp_path / "small.pt", ws, tmp_path), "good.bp: element(s) Cu, Pd beyond the model's max_z = 20")
    assert not (tmp_path / "eval").exists()


# -- machine profiles ------------------------------------------------------------------------------------
@pytest.mark.parametrize("launcher, needles", [
    ("launcher: 7\n", ["bad.yaml", "launcher"]),
    ("launcher: {command: srun, args: ['{bogus}']}\n", ["bad.yaml", "bogus"]),
    ("launcher: {args: [-n]}\n", ["bad.yaml", "command"]),
], ids=["not-a-mapping", "unknown-placeholder", "no-command"])
def test_a_profile_with_a_bad_launcher(tmp_path, launcher, needles):
    profile = tmp_path / "bad.yaml"
    profile.write_text("scheduler: slurm\nbackend: nccl\ngpus_per_node: 4\nranks_per_node: 4\n" + launcher)
    result = run_cli("cluster", "script", "--profile", profile, "--nodes", "1", "--out", tmp_path / "job.sh",
                     "--", "gfmkit", "train", "x.yaml")
    one_line_error(result, *needles)
    assert not (tmp_path / "job.sh").exists()


def test_an_unknown_profile_name(tmp_path):
    one_line_error(run_cli("cluster", "script", "--profile", "nosuchmachine", "--nodes", "1", "--out", tmp_path / "j.sh",
                           "--", "true"), "nosuchmachine")


def test_stopping_a_cluster_that_is_not_running():
    one_line_error(run_cli("cluster", "stop", "gfmkit-nosuchcluster"), "no running gfmkit cluster ['gfmkit-nosuchcluster']")


def test_a_search_space_with_an_empty_range(ws, tmp_path):
    config = _train_yaml(tmp_path, tiny_config(ws / "good.bp"))
    space = tmp_path / "space.yaml"
    space.write_text(json.dumps({"optimizer.lr": [0.01, 0.01]}))
    one_line_error(run_cli("hpo", config, space, "--out", tmp_path / "hpo", "--max-evals", "1"), "optimizer.lr", "low < high")
    assert not (tmp_path / "hpo").exists()
