"""Screening sources read a group at a time: (ext)xyz by a frame index, ASE databases by row groups."""

from __future__ import annotations

import pickle

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from gfmkit.config import ConfigError
from gfmkit.data.indexed_sources import GROUP, DatabaseRows, XYZFrames, frame_offsets
from gfmkit.data.screen_source import open_source


def structures(n: int) -> list:
    """``n`` structures of varying size, periodic and not, some with labels (as other codes write them)."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", 3.6).repeat((1 + k % 3, 1, 1)) if k % 2 else molecule(("H2O", "CH4", "NH3")[k % 3])
        atoms.rattle(0.05, seed=k)
        atoms.info["tag"] = k
        if k % 4 == 1:
            atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(atoms), 3)))
        out.append(atoms)
    return out


def assert_same_arrays(source, expected, order):
    for i in order:
        a, b = source.arrays(int(i)), expected[int(i)]
        assert np.array_equal(a["numbers"], b.numbers) and np.allclose(a["positions"], b.positions, atol=1e-12)
        assert np.array_equal(a["pbc"], b.pbc)
        assert np.allclose(a["cell"], b.cell[:] if b.pbc.any() else 0.0)


@pytest.mark.parametrize("fmt", ["extxyz", "xyz"])
def test_xyz_frames_equal_what_ase_reads_in_any_order(tmp_path, fmt):
    written = structures(2 * GROUP + 7)
    path = tmp_path / f"many.{fmt}"
    ase.io.write(path, written, format=fmt)
    with open(path, "a") as f:
        f.write("\n\n")  # trailing blank lines, as some codes leave
    expected = ase.io.read(path, ":")
    source = open_source(str(path))
    assert isinstance(source, XYZFrames) and len(source) == len(written)
    order = np.random.default_rng(1).permutation(len(written))
    assert_same_arrays(source, expected, order)
    again = pickle.loads(pickle.dumps(source))  # as a DataLoader worker gets it: no group carried along
    assert "_group" not in pickle.loads(pickle.dumps(source)).__getstate__()
    assert_same_arrays(again, expected, [len(written) - 1, 0])
    assert source.atoms(5).info.get("tag") == 5 or fmt == "xyz"


def test_a_compressed_xyz_file_is_read_whole(tmp_path):
    import gzip

    from gfmkit.data.screen_source import AtomsSource

    written = structures(5)
    path = tmp_path / "few.extxyz"
    ase.io.write(path, written)
    with gzip.open(tmp_path / "few.extxyz.gz", "wb") as f:
        f.write(path.read_bytes())
    source = open_source(str(tmp_path / "few.extxyz.gz"))
    assert isinstance(source, AtomsSource) and len(source) == 5
    assert_same_arrays(source, written, range(5))


def test_xyz_count_lines_and_short_frames_are_named_at_open(tmp_path):
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, structures(3))
    lines = path.read_text().splitlines()
    second = 2 + int(lines[0])  # the count line of structure 1
    bad = lines[:second] + ["three"] + lines[second + 1:]
    path.write_text("\n".join(bad) + "\n")
    with pytest.raises(ConfigError, match=rf"bad.extxyz: structure 1 \(line {second + 1}\).*'three'"):
        frame_offsets(path)
    path.write_text("\n".join(lines[:-2]) + "\n")  # the last frame loses two atoms
    with pytest.raises(ConfigError, match="structure 2 .*announces .* atoms but the file ends"):
        open_source(str(path))
    (tmp_path / "empty.extxyz").write_text("")
    with pytest.raises(ConfigError, match="no structures"):
        frame_offsets(tmp_path / "empty.extxyz")


def test_an_unparsable_frame_is_named_when_read_and_the_others_still_read(tmp_path):
    written = structures(GROUP + 10)
    path = tmp_path / "one_bad.extxyz"
    ase.io.write(path, written)
    lines = path.read_text().splitlines()
    offsets, line = [], 0
    for atoms in written:
        offsets.append(line)
        line += len(atoms) + 2
    target = offsets[GROUP + 3] + 2  # the first atom line of structure GROUP + 3
    fields = lines[target].split()
    lines[target] = " ".join([fields[0], "1.0.0"] + fields[2:])
    path.write_text("\n".join(lines) + "\n")
    source = XYZFrames(path)
    assert len(source) == len(written)
    assert_same_arrays(source, written, range(0, GROUP, 7))
    with pytest.raises(ConfigError, match=rf"one_bad.extxyz: structure {GROUP + 3} cannot be read"):
        source.arrays(GROUP + 1)


def test_database_rows_are_read_by_groups_in_row_order(tmp_path):
    written = structures(GROUP + 5)
    path = tmp_path / "many.db"
    with ase.db.connect(path) as db:
        for atoms in written:
            db.write(atoms)
    source = open_source(str(path))
    assert isinstance(source, DatabaseRows) and len(source) == len(written)
    assert_same_arrays(source, written, [GROUP + 4, 0, GROUP, 3])
