"""The ADIOS2 store: bitwise round trip, ranges, lazy == preloaded, atomic writes, clear errors."""

from __future__ import annotations

import pickle
import shutil

import adios2
import numpy as np
import pytest
from structures import emt_structures, periodic_emt_structures

from gfmkit.data import (
    DatasetSpec,
    LabelSpec,
    Store,
    StoreError,
    structure_from_atoms,
    write_store,
)
from gfmkit.data import store_format as fmt


def _structures(frames, spec):
    return [structure_from_atoms(a, spec, "mem", i) for i, a in enumerate(frames)]


@pytest.fixture(scope="module")
def stress_data(tmp_path_factory):
    spec = DatasetSpec(name="cupd", level_of_theory="EMT", targets=["energy", "forces", "stress"])
    structures = _structures(periodic_emt_structures(23, seed=1), spec)
    path = write_store(structures, tmp_path_factory.mktemp("s") / "cupd.bp", spec)
    return spec, structures, path


def assert_same(a, b):
    assert np.array_equal(a.numbers, b.numbers)
    for name in ("positions", "cell", "forces", "stress"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or (x.tobytes() == np.asarray(y, dtype=np.float64).tobytes()), name
    assert np.array_equal(a.pbc, b.pbc)
    assert a.energy == b.energy or (a.energy is None and b.energy is None)
    assert a.properties == b.properties and a.charge == b.charge and a.spin == b.spin


def test_round_trip_is_bitwise(stress_data):
    spec, structures, path = stress_data
    store = Store(path)
    assert len(store) == len(structures) == 23
    for original, read in zip(structures, store):
        assert_same(original, read)
        assert read.dataset == "cupd" and read.level_of_theory == "EMT"


def test_attributes_describe_the_dataset(stress_data):
    spec, structures, path = stress_data
    info = Store(path).info()
    assert info["targets"] == ["energy", "forces", "stress"]
    numbers = np.concatenate([s.numbers for s in structures])
    assert info["element_counts"] == {"Pd": int((numbers == 46).sum()), "Cu": int((numbers == 29).sum())}
    assert info["atoms"] == len(numbers) and info["structures"] == 23
    epa = np.array([s.energy / len(s) for s in structures])
    assert info["energy_per_atom"]["mean"] == pytest.approx(epa.mean(), rel=1e-12)
    assert info["energy_per_atom"]["max"] == epa.max()
    assert sum(info["split_sizes"].values()) == 23 and info["split_sizes"]["val"] == 2
    assert info["schema_version"] == fmt.SCHEMA_VERSION


def test_split_is_deterministic_by_seed(tmp_path, stress_data):
    spec, structures, path = stress_data
    again = write_store(structures, tmp_path / "again.bp", spec)
    assert np.array_equal(Store(again).split, Store(path).split)
    spec.split_seed = 7
    other = write_store(structures, tmp_path / "other.bp", spec)
    spec.split_seed = 0
    assert not np.array_equal(Store(other).split, Store(path).split)
    assert np.bincount(Store(other).split).tolist() == np.bincount(Store(path).split).tolist()


def test_lazy_preloaded_ranges_and_shards_agree(stress_data):
    _, structures, path = stress_data
    lazy, preloaded = Store(path), Store(path, preload=True)
    for i in (0, 5, 22, -1):
        assert_same(lazy[i], preloaded[i])
    part = Store(path, start=7, stop=15, preload=True)
    assert len(part) == 8
    for k in range(8):
        assert_same(part[k], structures[7 + k])
    shards = [lazy.shard(r, 3) for r in range(3)]
    assert sum(len(s) for s in shards) == 23
    flat = [s for shard in shards for s in shard]
    for a, b in zip(flat, structures):
        assert_same(a, b)
    assert [len(x) for x in (lazy[3:9], lazy[::5])] == [6, 5]
    with pytest.raises(IndexError):
        lazy[23]
    with pytest.raises(StoreError, match="outside"):
        Store(path, start=20, stop=30)


def test_range_reads_use_selections_not_the_whole_file(stress_data, monkeypatch):
    _, structures, path = stress_data
    calls = []
    original = Store._read

    def spy(self, name, first, count):
        calls.append((name, first, count))
        return original(self, name, first, count)

    monkeypatch.setattr(Store, "_read", spy)
    part = Store(path, start=10, stop=12, preload=True)
    n_atoms = int(part.natoms.sum())
    assert (fmt.POSITIONS, int(part.column(fmt.ATOM_OFFSET)[0]), n_atoms) in calls
    assert all(count in (2, n_atoms) for _, _, count in calls)
    assert all(first in (10, int(part.column(fmt.ATOM_OFFSET)[0])) for _, first, _ in calls)


def test_store_survives_pickling_into_a_worker(stress_data):
    _, structures, path = stress_data
    store = Store(path)
    store[0]
    clone = pickle.loads(pickle.dumps(store))
    assert clone._reader is None
    assert_same(clone[3], structures[3])


def test_property_charge_and_spin_fields(tmp_path):
    frames = emt_structures(6, stress=False)
    for k, atoms in enumerate(frames):
        atoms.info.update(gap=1.5 + k, q=float(k % 2), mult=1.0 + k % 3)
    spec = DatasetSpec(
        name="props",
        level_of_theory="toy",
        targets=["energy", "gap"],
        labels=LabelSpec(properties={"gap": "gap"}, charge="q", spin="mult"),
    )
    structures = _structures(frames, spec)
    store = Store(write_store(structures, tmp_path / "p.bp", spec))
    for original, read in zip(structures, store):
        assert_same(original, read)
        assert read.forces is None
    assert store[2].properties == {"gap": 3.5} and store[3].charge == 1.0 and store[4].spin == 2.0
    atoms = store.atoms(1)
    assert atoms.info["gap"] == 2.5 and atoms.get_potential_energy() == structures[1].energy


def test_small_chunks_and_bp4_engine_give_the_same_store(tmp_path, stress_data):
    spec, structures, path = stress_data
    other = write_store(structures, tmp_path / "bp4.bp", spec, engine="BP4", chunk_bytes=100)
    for a, b in zip(Store(path), Store(other)):
        assert_same(a, b)


def test_failed_write_leaves_no_store_and_keeps_the_old_one(tmp_path, stress_data, monkeypatch):
    spec, structures, path = stress_data
    target = tmp_path / "x.bp"
    shutil.copytree(path, target)
    from gfmkit.data import store_write

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_write, "_write_attributes", boom)
    with pytest.raises(OSError, match="disk full"):
        write_store(structures[:3], target, spec, overwrite=True)
    assert len(Store(target)) == 23
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bp"]


def test_empty_dataset_is_refused(tmp_path):
    spec = DatasetSpec(name="none", level_of_theory="x")
    with pytest.raises(ValueError, match="no structures to write"):
        write_store([], tmp_path / "none.bp", spec)
    assert not (tmp_path / "none.bp").exists()


def test_unreadable_newer_and_truncated_stores_are_clear_errors(tmp_path, stress_data):
    _, structures, path = stress_data
    with pytest.raises(StoreError, match="no such store"):
        Store(tmp_path / "missing.bp")
    junk = tmp_path / "junk.bp"
    junk.mkdir()
    (junk / "md.idx").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="junk.bp"):
        Store(junk)
    newer = tmp_path / "newer.bp"
    _rewrite_attribute(path, newer, fmt.A_SCHEMA, fmt.SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer than this gfmkit"):
        Store(newer)
    truncated = tmp_path / "truncated.bp"
    _rewrite_attribute(path, truncated, None, None, drop_variable=fmt.FORCES)
    with pytest.raises(StoreError, match="truncated store, variable.*forces"):
        Store(truncated)


def _rewrite_attribute(src, dst, name, value, drop_variable=None):
    """Copy a store through ADIOS2, changing one attribute or dropping one variable."""
    with adios2.FileReader(str(src)) as reader:
        attrs = {n: reader.read_attribute(n) for n in reader.available_attributes()}
        variables = {n: reader.read(n) for n in reader.available_variables() if n != drop_variable}
    if name is not None:
        attrs[name] = value
    with adios2.Stream(str(dst), "w") as out:
        for n, v in variables.items():
            out.write(n, v, list(v.shape), [0] * v.ndim, list(v.shape))
        for n, v in attrs.items():
            out.write_attribute(n, v)
