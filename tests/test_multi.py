"""Several stores as one: the dataset registry is derived from names, recorded and authoritative."""

from __future__ import annotations

import json

import ase.io
import pytest
from conftest import run_cli
from structures import emt_structures

from gfmkit.data import DatasetSpec, structure_from_atoms, write_store
from gfmkit.data.multi import DatasetRegistry, open_stores


@pytest.fixture(scope="module")
def three_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    frames = emt_structures(9, stress=False)
    paths = {}
    for name, (lo, hi) in {"zeta": (0, 2), "alpha": (2, 7), "mid": (7, 9)}.items():
        spec = DatasetSpec(name=name, level_of_theory=f"EMT-{name}")
        structures = [structure_from_atoms(a, spec, "mem", i) for i, a in enumerate(frames[lo:hi])]
        paths[name] = write_store(structures, root / f"{name}.bp", spec)
    return root, paths, frames


def test_registry_is_sorted_names_and_independent_of_argument_order(three_stores):
    root, paths, frames = three_stores
    a = open_stores([paths["zeta"], paths["alpha"], paths["mid"]])
    b = open_stores([root])
    assert a.registry.names == b.registry.names == ["alpha", "mid", "zeta"]
    assert len(a) == 9 and a.sizes() == {"alpha": 5, "mid": 2, "zeta": 2}
    assert [a.dataset_of(i) for i in range(9)] == [0] * 5 + [1] * 2 + [2] * 2
    assert a[5].dataset == "mid" and a[0].dataset == "alpha"
    table = a.table()
    assert table["head"].tolist() == [0, 1, 2] and table["structures"].tolist() == [5, 2, 2]


def test_saved_registry_stays_authoritative_and_new_datasets_append(three_stores, tmp_path):
    root, paths, _ = three_stores
    first = open_stores([paths["zeta"], paths["mid"]])
    assert first.registry.names == ["mid", "zeta"]
    saved = first.registry.save(tmp_path / "datasets.json")
    later = open_stores([root], registry=DatasetRegistry.load(saved))
    assert later.registry.names == ["mid", "zeta", "alpha"]  # known indices kept, new one appended
    assert later.store("alpha") is later.stores[2] and later.dataset_of(len(later) - 1) == 2
    assert json.loads(saved.read_text()) == {"datasets": ["mid", "zeta"]}


def test_duplicate_dataset_names_are_refused(three_stores):
    _, paths, _ = three_stores
    with pytest.raises(ValueError, match=r"\['alpha'\] appear in more than one store"):
        open_stores([paths["alpha"], paths["alpha"]])


def gfmkit(*args: str):
    return run_cli(*args)


def test_cli_info_and_figure(three_stores, tmp_path):
    root, paths, _ = three_stores
    proc = gfmkit("data", "info", str(paths["alpha"]), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["structures"] == 5 and info["level_of_theory"] == "EMT-alpha" and info["targets"] == ["energy", "forces"]
    table = gfmkit("data", "info", *map(str, paths.values()))
    assert table.returncode == 0 and "alpha" in table.stdout and "train/val/test" in table.stdout
    figure = gfmkit("data", "figure", str(root), "--out", str(tmp_path / "datasets.png"))
    assert figure.returncode == 0, figure.stderr
    assert (tmp_path / "datasets.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_convert_bad_input_is_one_line_and_leaves_no_store(tmp_path):
    frames = emt_structures(4, stress=False)
    frames[2].calc.results["forces"] = frames[2].calc.results["forces"][:, :2]
    ase.io.write(tmp_path / "in.extxyz", frames)
    out = tmp_path / "x.bp"
    proc = gfmkit("data", "convert", str(tmp_path / "in.extxyz"), "--dataset", "x", "--level-of-theory", "EMT", "--out", str(out))
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "in.extxyz[2] forces" in lines[0] and "no store was written" in lines[0]
    assert not out.exists()
    missing = gfmkit("data", "convert", str(tmp_path / "nope.xyz"), "--dataset", "x", "--level-of-theory", "E", "--out", str(out))
    assert missing.returncode == 1 and "nope.xyz: no such file" in missing.stderr
    config = tmp_path / "spec.yaml"
    config.write_text("name: x\nlevel_of_theory: EMT\nlabels: {enrgy: E}\n")
    typo = gfmkit("data", "convert", str(tmp_path / "in.extxyz"), "--config", str(config), "--out", str(out))
    assert typo.returncode == 1 and "unknown key 'labels.enrgy' (did you mean 'energy'?)" in typo.stderr
    assert not out.exists()


def test_cli_convert_skip_policy_writes_report(tmp_path):
    frames = emt_structures(4, stress=False)
    frames[1].calc.results["energy"] = float("inf")
    ase.io.write(tmp_path / "in.extxyz", frames)
    proc = gfmkit("data", "convert", str(tmp_path / "in.extxyz"), "--dataset", "x", "--level-of-theory", "EMT",
                  "--on-error", "skip", "--report", str(tmp_path / "skipped.csv"), "--out", str(tmp_path / "x.bp"))
    assert proc.returncode == 0, proc.stderr
    assert "read 4, kept 3, skipped 1" in proc.stdout
    assert "energy" in (tmp_path / "skipped.csv").read_text()
