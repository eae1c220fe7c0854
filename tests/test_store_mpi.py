"""Stores written by 2 MPI ranks equal serial ones; empty ranks and bad input never hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import adios2
import ase.io
import numpy as np
import pytest
from adios2 import bindings
from conftest import mpiexec, single_thread_env
from structures import periodic_emt_structures

pytestmark = pytest.mark.mpi


def dump(path: Path) -> tuple[dict, dict]:
    """Every variable and attribute of a BP file, for content comparison."""
    with adios2.FileReader(str(path)) as reader:
        variables = {n: reader.read(n) for n in reader.available_variables()}
        attrs = {n: reader.read_attribute(n) for n in reader.available_attributes()}
    return variables, attrs


def assert_identical(a: Path, b: Path) -> None:
    va, aa = dump(a)
    vb, ab = dump(b)
    assert sorted(va) == sorted(vb) and sorted(aa) == sorted(ab)
    for name in va:
        assert va[name].dtype == vb[name].dtype and va[name].tobytes() == vb[name].tobytes(), name
    for name in aa:
        assert np.array_equal(np.asarray(aa[name]), np.asarray(ab[name])), name


@pytest.fixture(scope="module")
def frames_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "frames.extxyz"
    ase.io.write(path, periodic_emt_structures(17, seed=3))
    return path


SNIPPET = """
import ase.io
from gfmkit.comm import world
from gfmkit.data import DatasetSpec, structure_from_atoms, write_store
comm = world()
spec = DatasetSpec(name="cupd", level_of_theory="EMT", targets=["energy", "forces", "stress"])
frames = ase.io.read({frames!r}, ":")
structures = [structure_from_atoms(a, spec, "mem", i) for i, a in enumerate(frames)]
lo, hi = {bounds}[comm.rank], {bounds}[comm.rank + 1]
write_store(structures[lo:hi], {out!r}, spec, comm=comm, chunk_bytes={chunk})
emit({{"rank": comm.rank, "n": hi - lo}})
"""


def serial_store(frames_file: Path, out: Path) -> Path:
    from gfmkit.data import DatasetSpec, structure_from_atoms, write_store

    spec = DatasetSpec(name="cupd", level_of_theory="EMT", targets=["energy", "forces", "stress"])
    frames = ase.io.read(frames_file, ":")
    return write_store([structure_from_atoms(a, spec, "mem", i) for i, a in enumerate(frames)], out, spec)


@pytest.mark.parametrize("bounds, chunk", [([0, 9, 17], 64 << 20), ([0, 5, 17], 200)], ids=["one-chunk", "many-chunks"])
def test_two_rank_write_equals_serial(run_mpi, tmp_path, frames_file, bounds, chunk):
    serial = serial_store(frames_file, tmp_path / "serial.bp")
    out = tmp_path / "mpi.bp"
    result = run_mpi(SNIPPET.format(frames=str(frames_file), bounds=bounds, out=str(out), chunk=chunk))
    assert [e[0]["n"] for e in result.emitted] == [bounds[1], 17 - bounds[1]]
    assert_identical(serial, out)


@pytest.mark.parametrize("bounds", [[0, 0, 17], [0, 17, 17]], ids=["rank0-empty", "rank1-empty"])
def test_a_rank_without_structures_does_not_hang(run_mpi, tmp_path, frames_file, bounds):
    serial = serial_store(frames_file, tmp_path / "serial.bp")
    out = tmp_path / "mpi.bp"
    run_mpi(SNIPPET.format(frames=str(frames_file), bounds=bounds, out=str(out), chunk=64 << 20), timeout=120)
    assert_identical(serial, out)


def test_cli_convert_on_two_ranks_equals_serial(tmp_path, frames_file):
    # Two files so that each rank reads one.
    frames = ase.io.read(frames_file, ":")
    first, second = tmp_path / "a.extxyz", tmp_path / "b.extxyz"
    ase.io.write(first, frames[:8])
    ase.io.write(second, frames[8:])
    gfmkit = str(Path(sys.executable).parent / "gfmkit")
    args = ["data", "convert", str(first), str(second), "--dataset", "cupd", "--level-of-theory", "EMT", "--targets", "energy,forces,stress"]
    subprocess.run([gfmkit, *args, "--out", str(tmp_path / "serial.bp")], check=True, capture_output=True, env=single_thread_env())
    proc = subprocess.run(
        [mpiexec(), "-n", "2", gfmkit, *args, "--out", str(tmp_path / "mpi.bp")],
        capture_output=True, text=True, timeout=120, env=single_thread_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert_identical(tmp_path / "serial.bp", tmp_path / "mpi.bp")


def test_bad_structure_on_one_rank_fails_every_rank_without_a_store(tmp_path, frames_file):
    frames = ase.io.read(frames_file, ":")
    frames[12].positions[1] = frames[12].positions[0] + 0.01
    first, second = tmp_path / "a.extxyz", tmp_path / "b.extxyz"
    ase.io.write(first, frames[:8])
    ase.io.write(second, frames[8:])
    gfmkit = str(Path(sys.executable).parent / "gfmkit")
    proc = subprocess.run(
        [mpiexec(), "-n", "2", gfmkit, "data", "convert", str(first), str(second), "--dataset", "x",
         "--level-of-theory", "EMT", "--out", str(tmp_path / "x.bp")],
        capture_output=True, text=True, timeout=120, env=single_thread_env(),
    )
    assert proc.returncode != 0
    assert f"{second}[4] pos: atoms 0 and 1" in proc.stderr
    assert proc.stderr.count("error:") == 1  # one line, from rank 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.extxyz", "b.extxyz"]


@pytest.mark.skipif(not bindings.is_built_with_mpi, reason="this adios2 has no MPI support (the PyPI wheel)")
def test_collective_adios2_write_equals_serial(run_mpi, tmp_path, frames_file):
    serial = serial_store(frames_file, tmp_path / "serial.bp")
    out = tmp_path / "mpi.bp"
    run_mpi(SNIPPET.format(frames=str(frames_file), bounds=[0, 0, 17], out=str(out), chunk=1 << 20).replace(
        "chunk_bytes=", "parallel_io=True, chunk_bytes="))
    assert_identical(serial, out)
