"""HydraGNNStore: reading HydraGNN-layout ADIOS2 files (written by tests/hydragnn_layout.py) into Structures."""

from __future__ import annotations

import os
import pickle

import adios2
import numpy as np
import pytest
from ase import Atoms
from hydragnn_layout import emt_samples, write_hydragnn_bp

from gfmkit.data.hydragnn import HydraGNNFormatError, HydraGNNStore
from gfmkit.data.store_read import Store, StoreError

SPLITS = {"trainset": slice(0, 6), "valset": slice(6, 9), "testset": slice(9, 12)}
NAMES = {"trainset": "train", "valset": "val", "testset": "test"}


@pytest.fixture(scope="module")
def emt() -> tuple[list[dict[str, np.ndarray]], list[Atoms]]:
    return emt_samples(12, seed=0)


@pytest.fixture(scope="module")
def emt_stress() -> tuple[list[dict[str, np.ndarray]], list[Atoms]]:
    return emt_samples(4, seed=1, periodic_only=True, stress=True)


def by_split(samples: list) -> dict[str, list]:
    return {label: samples[s] for label, s in SPLITS.items()}


def without(samples: list[dict], *names: str) -> list[dict]:
    return [{k: v for k, v in s.items() if k not in names} for s in samples]


def assert_same(store: HydraGNNStore, samples: list[dict], atoms: list[Atoms] | None = None) -> None:
    """Every structure of ``store`` equals the written sample (and the ase.Atoms it came from)."""
    assert len(store) == len(samples)
    for i, (structure, sample) in enumerate(zip(store, samples)):
        n = int(sample["natoms"][0])
        assert len(structure) == n
        np.testing.assert_array_equal(structure.numbers, sample["atomic_numbers"].ravel().astype(int))
        np.testing.assert_array_equal(structure.positions, sample["pos"].astype(np.float64))
        periodic = sample["pbc"].astype(bool)
        expected_cell = sample["cell"].astype(np.float64) if periodic.any() else np.zeros((3, 3))
        np.testing.assert_array_equal(structure.cell, expected_cell)
        np.testing.assert_array_equal(structure.pbc, periodic)
        assert structure.energy == float(sample["energy"].ravel()[0])
        np.testing.assert_array_equal(structure.forces, sample["forces"].astype(np.float64))
        assert structure.source_index == store.start + i
        if atoms is not None:
            np.testing.assert_array_equal(structure.numbers, atoms[i].numbers)
            np.testing.assert_allclose(structure.positions, atoms[i].positions, atol=1e-5)
            assert structure.energy == pytest.approx(atoms[i].get_potential_energy(), rel=1e-6, abs=1e-6)
            np.testing.assert_allclose(structure.forces, atoms[i].get_forces(), atol=1e-5)


@pytest.mark.parametrize("energy_2d", [False, True], ids=["energy(1,)", "energy(1,1)"])
@pytest.mark.parametrize("engine", ["BP4", "BP5"])
def test_round_trip_every_split(tmp_path, emt, engine, energy_2d):
    samples, atoms = emt if not energy_2d else emt_samples(12, seed=0, energy_2d=True)
    path = tmp_path / "toy.bp"
    write_hydragnn_bp(path, by_split(samples), engine=engine, dataset_name="toy")
    assert (path / "mmd.0").exists() == (engine == "BP5")  # really the engine asked for
    for label, part in SPLITS.items():
        store = HydraGNNStore(path, split=label, level_of_theory="EMT")
        assert store.name == "toy" and store.level_of_theory == "EMT"
        assert store.split_names == ["trainset", "valset", "testset"]
        assert store.targets == ["energy", "forces"]
        assert {s.split for s in store} == {NAMES[label]}
        assert {s.dataset for s in store} == {"toy"}
        assert_same(store, samples[part], atoms[part])


def test_arrays_use_store_names_and_dtypes(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", by_split(samples))
    arrays = HydraGNNStore(tmp_path / "t.bp", split="valset").arrays(1)
    assert {"numbers", "positions", "forces", "energy", "cell", "pbc", "natoms", "split", "source_index"} <= set(arrays)
    assert arrays["numbers"].dtype == np.int32 and arrays["positions"].dtype == np.float64
    assert arrays["cell"].shape == (3, 3) and arrays["pbc"].dtype == bool
    assert int(arrays["natoms"]) == len(arrays["numbers"]) == int(samples[7]["natoms"][0])
    assert int(arrays["split"]) == 1 and int(arrays["source_index"]) == 1


def test_multi_rank_file_reads_like_single_rank(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "one.bp", by_split(samples))
    write_hydragnn_bp(tmp_path / "three.bp", by_split(samples), ranks=3)
    for label in SPLITS:
        one = HydraGNNStore(tmp_path / "one.bp", split=label)
        three = HydraGNNStore(tmp_path / "three.bp", split=label, preload=True)
        assert_same(three, samples[SPLITS[label]])
        for i in range(len(one)):
            for key, value in one.arrays(i).items():
                np.testing.assert_array_equal(three.arrays(i)[key], value)


def test_file_without_statistics(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", by_split(samples), stats=False)
    assert adios2.FileReader(str(tmp_path / "t.bp")).available_variables()["trainset/cell/variable_count"]["Max"] == "0"
    for label, part in SPLITS.items():
        assert_same(HydraGNNStore(tmp_path / "t.bp", split=label), samples[part])
    assert_same(HydraGNNStore(tmp_path / "t.bp", preload=True).shard(1, 2), samples[3:6])
    assert len(HydraGNNStore(tmp_path / "t.bp").subset(3, 3)) == 0


def test_energy_from_energy_per_atom(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": without(samples, "energy")})
    store = HydraGNNStore(tmp_path / "t.bp")
    assert store.targets == ["energy", "forces"] and store.sources["energy"] == "energy_per_atom * natoms"
    for structure, sample in zip(store, samples):
        expected = float(sample["energy_per_atom"][0]) * int(sample["natoms"][0])
        assert structure.energy == pytest.approx(expected, rel=1e-12)
        assert structure.energy == pytest.approx(float(sample["energy"][0]), rel=1e-5, abs=1e-5)


def test_energy_from_y(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": without(samples, "energy", "energy_per_atom")})
    store = HydraGNNStore(tmp_path / "t.bp")
    assert store.sources["energy"] == "y"
    np.testing.assert_array_equal(store.column("energy"), [float(s["y"][0]) for s in samples])


def test_energy_mode_forces_a_source(tmp_path, emt):
    samples, _ = emt
    per_atom_y = [dict(s, y=s["energy_per_atom"].copy()) for s in samples]
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": per_atom_y})
    energies = np.array([float(s["energy"][0]) for s in samples])
    natoms = np.array([len(a) for a in emt[1]])
    y_per_atom = HydraGNNStore(tmp_path / "t.bp", energy="y_per_atom")
    assert y_per_atom.sources["energy"] == "y * natoms"
    np.testing.assert_allclose(y_per_atom.column("energy"), energies, rtol=1e-5)
    y = HydraGNNStore(tmp_path / "t.bp", energy="y")
    np.testing.assert_allclose(y.column("energy"), energies / natoms, rtol=1e-5)
    assert HydraGNNStore(tmp_path / "t.bp").sources["energy"] == "energy"  # auto prefers energy over y
    assert HydraGNNStore(tmp_path / "t.bp", energy=None).targets == ["forces"]
    assert HydraGNNStore(tmp_path / "t.bp", energy=None)[0].energy is None


def test_y_that_is_not_one_number_per_structure(tmp_path, emt):
    samples, _ = emt
    # y = [energy; forces.flatten()] (HydraGNN's multi-task packing): a different length per structure.
    samples = without(samples, "energy", "energy_per_atom")
    packed = [dict(s, y=np.concatenate([s["y"], s["forces"].ravel()])) for s in samples]
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": packed})
    assert "energy" not in HydraGNNStore(tmp_path / "t.bp").targets
    with pytest.raises(HydraGNNFormatError, match="'y' is not one number per structure"):
        HydraGNNStore(tmp_path / "t.bp", energy="y")
    with pytest.raises(HydraGNNFormatError, match="no field 'energy'"):
        HydraGNNStore(tmp_path / "t.bp", energy="energy")
    with pytest.raises(ValueError, match="energy='total'"):
        HydraGNNStore(tmp_path / "t.bp", energy="total")


def test_forces_from_x_columns(tmp_path, emt):
    samples, atoms = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": without(samples, "forces")})
    store = HydraGNNStore(tmp_path / "t.bp", preload=True)
    assert store.targets == ["energy", "forces"] and store.sources["forces"] == "x[:, 4:7]"
    for structure, sample, a in zip(store, samples, atoms):
        np.testing.assert_array_equal(structure.forces, sample["x"][:, 4:7].astype(np.float64))
        np.testing.assert_allclose(structure.forces, a.get_forces(), atol=1e-5)
    off = HydraGNNStore(tmp_path / "t.bp", forces_from_x=False)
    assert off.targets == ["energy"] and off[0].forces is None and "forces" not in off.arrays(0)


def test_forces_not_taken_from_x_that_does_not_follow_the_convention(tmp_path, emt):
    samples, _ = emt
    wide = [dict(s, x=np.concatenate([s["x"], np.zeros((len(s["pos"]), 1), np.float32)], 1)) for s in samples]
    shuffled = [dict(s, x=s["x"][:, [0, 4, 5, 6, 1, 2, 3]]) for s in samples]  # [Z, f, pos]: not the convention
    for name, variant in (("wide", wide), ("shuffled", shuffled)):
        write_hydragnn_bp(tmp_path / f"{name}.bp", {"trainset": without(variant, "forces")})
        store = HydraGNNStore(tmp_path / f"{name}.bp")
        assert store.targets == ["energy"] and store[0].forces is None


def test_numbers_from_x_when_no_atomic_numbers(tmp_path, emt):
    samples, atoms = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": without(samples, "atomic_numbers")})
    store = HydraGNNStore(tmp_path / "t.bp")
    assert store.sources["numbers"] == "x[:, 0]"
    for structure, a in zip(store, atoms):
        np.testing.assert_array_equal(structure.numbers, a.numbers)
    bad = [dict(s, x=s["x"][:, 1:]) for s in without(samples, "atomic_numbers")]  # column 0 is now x
    write_hydragnn_bp(tmp_path / "bad.bp", {"trainset": bad})
    with pytest.raises(HydraGNNFormatError, match="column 0 of 'x' is not atomic numbers"):
        HydraGNNStore(tmp_path / "bad.bp")


def test_variable_dim_1_edge_index(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": samples})
    reader = adios2.FileReader(str(tmp_path / "t.bp"))
    assert int(reader.read_attribute("trainset/edge_index/variable_dim")) == 1  # the case under test
    assert reader.available_variables()["trainset/edge_index"]["Shape"].startswith("2,")
    store = HydraGNNStore(tmp_path / "t.bp")
    assert_same(store, samples)
    for i, sample in enumerate(samples):
        raw = store.sample(i, ["edge_index", "edge_attr", "x"])
        for key in raw:
            np.testing.assert_array_equal(raw[key], sample[key])
            assert raw[key].dtype == sample[key].dtype


def test_same_edge_count_everywhere_falls_back_to_dim_0(tmp_path, emt):
    samples, _ = emt
    edges = np.array([[0, 0, 0], [0, 0, 0]], dtype=np.int64)
    same = [dict(s, edge_index=edges + i) for i, s in enumerate(samples)]
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": same})
    store = HydraGNNStore(tmp_path / "t.bp")
    assert store._field("edge_index").vdim == 0 and store._field("edge_index").shape == [2 * len(same), 3]
    for i, s in enumerate(same):
        np.testing.assert_array_equal(store.sample(i)["edge_index"], s["edge_index"])


def test_lazy_equals_preloaded(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", by_split(samples), ranks=2)
    lazy, eager = HydraGNNStore(tmp_path / "t.bp"), HydraGNNStore(tmp_path / "t.bp", preload=True)
    assert not lazy._per_atom and eager._per_atom
    for i in range(len(lazy)):
        a, b = lazy.arrays(i), eager.arrays(i)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    sub_lazy, sub_eager = lazy.subset(2, 5), eager.subset(2, 5)
    assert sub_eager.preloaded and not sub_lazy.preloaded
    for i in range(3):
        np.testing.assert_array_equal(sub_lazy.arrays(i)["positions"], sub_eager.arrays(i)["positions"])
        np.testing.assert_array_equal(sub_eager.arrays(i)["forces"], lazy.arrays(2 + i)["forces"])


def test_shard_and_subset(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", by_split(samples))
    store = HydraGNNStore(tmp_path / "t.bp", preload=True)
    second = store.shard(1, 2)
    assert (second.start, second.stop, len(second)) == (3, 6, 3)
    assert_same(second, samples[3:6])
    first = store.shard(0, 2)
    assert [s.source_index for s in first] == [0, 1, 2]
    inner = second.subset(1, 3)
    assert (inner.start, inner.stop) == (4, 6)
    assert_same(inner, samples[4:6])
    assert len(store.subset(2, 2)) == 0 and store.subset(2, 2).table().empty
    assert [s.source_index for s in store[-2:]] == [4, 5]
    with pytest.raises(IndexError):
        store[6]


def test_atoms_carry_the_labels(tmp_path, emt):
    samples, atoms = emt
    write_hydragnn_bp(tmp_path / "t.bp", by_split(samples))
    store = HydraGNNStore(tmp_path / "t.bp", split="testset")
    for i in range(len(store)):
        a, sample = store.atoms(i), samples[9 + i]
        assert isinstance(a, Atoms)
        assert a.get_potential_energy() == float(sample["energy"][0])
        np.testing.assert_array_equal(a.get_forces(), sample["forces"].astype(np.float64))
        np.testing.assert_array_equal(a.pbc, atoms[9 + i].pbc)
        assert a.info["split"] == "test" and a.info["dataset"] == "toy"


def test_stress_3x3_9_and_voigt(tmp_path, emt_stress):
    samples, atoms = emt_stress
    flat = [dict(s, stress=s["stress"].ravel()) for s in samples]
    voigt = [dict(s, stress=s["stress"].ravel()[[0, 4, 8, 5, 2, 1]]) for s in samples]
    for name, variant in (("full", samples), ("flat", flat), ("voigt", voigt)):
        write_hydragnn_bp(tmp_path / f"{name}.bp", {"trainset": variant})
        store = HydraGNNStore(tmp_path / f"{name}.bp")
        assert store.targets == ["energy", "forces", "stress"]
        for structure, sample, a in zip(store, samples, atoms):
            np.testing.assert_array_equal(structure.stress, sample["stress"].astype(np.float64))
            expected = a.get_stress(voigt=False)
            np.testing.assert_allclose(structure.to_atoms().get_stress(voigt=False), expected, atol=1e-6)


def test_pbc_absent_follows_the_cell(tmp_path, emt):
    samples, atoms = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": without(samples, "pbc")})
    store = HydraGNNStore(tmp_path / "t.bp")
    # Real cells -> periodic; HydraGNN's identity placeholder of the clusters -> not periodic.
    np.testing.assert_array_equal(store.column("pbc"), np.array([a.pbc for a in atoms]))
    write_hydragnn_bp(tmp_path / "nocell.bp", {"trainset": without(samples, "pbc", "cell")})
    store = HydraGNNStore(tmp_path / "nocell.bp")
    assert not store.column("pbc").any() and not store.column("cell").any()


def test_missing_split_names_the_available_ones(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": samples[:4], "valset": [], "testset": samples[4:6]})
    with pytest.raises(HydraGNNFormatError, match=r"no split 'valset'; the file has 'trainset', 'testset'") as err:
        HydraGNNStore(tmp_path / "t.bp", split="valset")
    assert str(tmp_path / "t.bp") in str(err.value)
    assert HydraGNNStore(tmp_path / "t.bp", split="test").label == "testset"  # gfmkit's names work too
    info = HydraGNNStore(tmp_path / "t.bp").info()
    assert info["split_sizes"] == {"train": 4, "val": 0, "test": 2}


def test_missing_dataset_name(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": samples[:3]}, dataset_name=None)
    with pytest.raises(HydraGNNFormatError, match="no dataset_name attribute; name the dataset with dataset="):
        HydraGNNStore(tmp_path / "t.bp")
    store = HydraGNNStore(tmp_path / "t.bp", dataset="mine")
    assert store.name == "mine" and store[0].dataset == "mine" and store.info()["dataset"] == "mine"
    write_hydragnn_bp(tmp_path / "named.bp", {"trainset": samples[:3]}, dataset_name="mptrj")
    assert HydraGNNStore(tmp_path / "named.bp").name == "mptrj"
    assert HydraGNNStore(tmp_path / "named.bp", dataset="other").name == "other"


def test_missing_positions_names_file_split_and_field(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"valset": without(samples[:3], "pos")})
    with pytest.raises(HydraGNNFormatError) as err:
        HydraGNNStore(tmp_path / "t.bp", split="valset")
    message = str(err.value)
    assert str(tmp_path / "t.bp") in message and "'valset'" in message and "'pos'" in message
    assert isinstance(err.value, StoreError) and isinstance(err.value, ValueError)


def test_natoms_must_agree_with_positions(tmp_path, emt):
    samples, _ = emt
    broken = [dict(s) for s in samples[:3]]
    broken[1]["natoms"] = broken[1]["natoms"] + 1
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": broken})
    with pytest.raises(HydraGNNFormatError, match="structure 1: 'natoms' is"):
        HydraGNNStore(tmp_path / "t.bp")


def test_not_a_hydragnn_file(tmp_path):
    with pytest.raises(HydraGNNFormatError, match="no such file"):
        HydraGNNStore(tmp_path / "absent.bp")
    ad = adios2.Adios()
    io = ad.declare_io("other")
    writer = io.open(str(tmp_path / "other.bp"), adios2.bindings.Mode.Write)
    io.define_attribute("something", np.array(1))
    writer.close()
    with pytest.raises(HydraGNNFormatError, match="not a HydraGNN file"):
        HydraGNNStore(tmp_path / "other.bp")


def test_gfmkit_store_points_to_hydragnn_store(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", {"trainset": samples[:2]})
    with pytest.raises(StoreError, match="HydraGNNStore"):
        Store(tmp_path / "t.bp")


def test_info_and_table(tmp_path, emt):
    samples, atoms = emt
    write_hydragnn_bp(tmp_path / "t.bp", by_split(samples), dataset_name="toy", attributes={"pna_deg": np.arange(4)})
    store = HydraGNNStore(tmp_path / "t.bp", split="valset")
    info = store.info()
    assert info["format"] == "hydragnn" and info["dataset"] == "toy" and info["path"] == str(tmp_path / "t.bp")
    assert info["structures"] == 12 and info["atoms"] == sum(len(a) for a in atoms)
    assert info["split_sizes"] == {"train": 6, "val": 3, "test": 3}
    assert info["targets"] == ["energy", "forces"]
    val_numbers = np.concatenate([a.numbers for a in atoms[6:9]])
    assert info["elements"] == [symbol for z, symbol in ((29, "Cu"), (79, "Au")) if z in val_numbers]
    assert sum(info["element_counts"].values()) == len(val_numbers)
    table = store.table()
    assert list(table.columns[:2]) == ["index", "natoms"]
    assert {"energy", "energy_per_atom", "periodic"} <= set(table.columns)
    np.testing.assert_array_equal(table["index"], [0, 1, 2])
    np.testing.assert_array_equal(table["natoms"], [len(a) for a in atoms[6:9]])
    np.testing.assert_array_equal(table["periodic"], [a.pbc.all() for a in atoms[6:9]])
    epa = [a.get_potential_energy() / len(a) for a in atoms[6:9]]
    np.testing.assert_allclose(table["energy_per_atom"], epa, rtol=1e-6)
    assert set(table["split"]) == {"val"}


def test_pickle_drops_and_reopens_the_handle(tmp_path, emt):
    samples, _ = emt
    write_hydragnn_bp(tmp_path / "t.bp", by_split(samples))
    store = HydraGNNStore(tmp_path / "t.bp")
    state = store.__getstate__()
    assert state["_reader"] is None and state["_pid"] == -1
    clone = pickle.loads(pickle.dumps(store))
    assert clone._reader is None
    np.testing.assert_array_equal(clone.arrays(4)["positions"], store.arrays(4)["positions"])
    store._pid = -2  # as if in another process: a fresh handle is opened on next use
    old = store._reader
    store.arrays(0)
    assert store._reader is not old and store._pid == os.getpid()
