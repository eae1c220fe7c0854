"""The built-in demo datasets: stores, sizes, determinism, levels of theory, EMT-B, bulk moduli, the\ndownstream tasks."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.calculators.emt as ase_emt
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress

from gfmkit.data import DatasetSpec, Store, StructureError, validate
from gfmkit.data.demo import (
    DEMO_DATASETS,
    MIN_STRUCTURES,
    build_demo,
    demo_specs,
    emt_lattice_constant,
    generate_structures,
)
from gfmkit.data.emt_variants import EMT_B_PARAMETERS, EMTB

SCALE = 0.05
SEED = 7
PRETRAIN = [name for name, d in DEMO_DATASETS.items() if d.role == "pretrain"]
DOWNSTREAM = [name for name, d in DEMO_DATASETS.items() if d.role == "downstream"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(output folder, table) of one small build of every demo dataset."""
    out = tmp_path_factory.mktemp("demo")
    table = build_demo(out, seed=SEED, scale=SCALE, progress=False)
    return out, table


def _stores(out: Path) -> dict[str, Store]:
    return {name: Store(out / f"{name}.bp", preload=True) for name in DEMO_DATASETS}


def _all_arrays(store: Store) -> list[dict[str, np.ndarray]]:
    return [store.arrays(i) for i in range(len(store))]


# -- descriptors ------------------------------------------------------------------------------------
def test_descriptors_roles_and_sizes():
    assert len(PRETRAIN) >= 4 and len(DOWNSTREAM) >= 3
    for name, dataset in DEMO_DATASETS.items():
        assert name == dataset.name and name == name.lower()
        assert dataset.role in ("pretrain", "downstream")
        assert dataset.description and dataset.level_of_theory
        assert dataset.size(0.05) >= MIN_STRUCTURES
        assert dataset.size(1.0) == dataset.count
    counts = [DEMO_DATASETS[n].count for n in PRETRAIN]
    assert max(counts) >= 20 * min(counts)
    assert max(counts) == DEMO_DATASETS["bulk"].count


def test_specs_and_split_seeds():
    specs = demo_specs(seed=SEED)
    assert list(specs) == list(DEMO_DATASETS)
    assert all(isinstance(s, DatasetSpec) for s in specs.values())
    assert len({s.split_seed for s in specs.values()}) == len(specs)  # one per dataset
    assert demo_specs(seed=SEED)["bulk"].split_seed == specs["bulk"].split_seed
    assert demo_specs(seed=SEED + 1)["bulk"].split_seed != specs["bulk"].split_seed
    assert specs["bulk_modulus"].targets == ["bulk_modulus"]
    assert specs["bulk_modulus"].labels.properties == {"bulk_modulus": "bulk_modulus"}
    assert specs["bulk"].reference_energies and set(specs["bulk"].reference_energies) == set(DEMO_DATASETS["bulk"].elements)
    assert list(demo_specs(datasets=["molecules"])) == ["molecules"]
    with pytest.raises(KeyError, match="unknown demo dataset"):
        demo_specs(datasets=["nope"])


# -- the built stores -------------------------------------------------------------------------------
def test_table(demo):
    out, table = demo
    assert list(table["name"]) == list(DEMO_DATASETS)
    for column in ("name", "role", "level_of_theory", "targets", "structures", "atoms", "periodicity", "elements", "path"):
        assert column in table.columns
    for row in table.itertuples():
        dataset = DEMO_DATASETS[row.name]
        assert row.role == dataset.role and row.level_of_theory == dataset.level_of_theory
        assert row.structures == dataset.size(SCALE) >= MIN_STRUCTURES
        assert Path(row.path) == out / f"{row.name}.bp" and Path(row.path).exists()


def test_stores_open_with_declared_targets(demo):
    out, table = demo
    for row, (name, store) in zip(table.itertuples(), _stores(out).items()):
        dataset = DEMO_DATASETS[name]
        assert store.name == name and store.level_of_theory == dataset.level_of_theory
        assert store.targets == list(dataset.targets)
        assert len(store) == row.structures and int(store.natoms.sum()) == row.atoms
        assert store.elements == row.elements and set(store.elements) <= set(dataset.elements)
        assert store.info()["periodic"] == row.periodicity
        structure = store[0]
        for target in dataset.targets:
            value = structure.label(target)
            assert value is not None and np.all(np.isfinite(value))
        assert sum(store.info()["split_sizes"].values()) == len(store)


def test_periodicity_kinds(demo):
    out, _ = demo
    kinds = set()
    for store in _stores(out).values():
        pbc = store.column("pbc")
        kinds |= {"periodic" if p.all() else "mixed" if p.any() else "molecular" for p in pbc}
        cell = store.column("cell")
        assert np.all(cell[~pbc.astype(bool)] == 0), "cell vectors along non-periodic directions are zero"
    assert kinds == {"periodic", "mixed", "molecular"}
    surfaces = _stores(out)["surfaces"].column("pbc")
    assert (surfaces == [True, True, False]).all()


def test_every_structure_passes_validation(demo):
    out, _ = demo
    specs = demo_specs(seed=SEED)
    for name, store in _stores(out).items():
        for i, structure in enumerate(store):
            assert validate(structure, specs[name].validation, name, i) == []


def test_invalid_structure_raises_and_writes_nothing(tmp_path, monkeypatch):
    dataset = DEMO_DATASETS["molecules"]

    def collapsed(rng):
        atoms = dataset.make_structure(rng)
        atoms.positions[1] = atoms.positions[0] + 0.01
        return atoms

    monkeypatch.setitem(DEMO_DATASETS, "molecules", dataclasses.replace(dataset, make_structure=collapsed))
    with pytest.raises(StructureError, match="apart"):
        build_demo(tmp_path, scale=0.01, datasets=["molecules"], progress=False)
    assert not (tmp_path / "molecules.bp").exists()


def test_arguments_are_checked(tmp_path):
    with pytest.raises(KeyError):
        build_demo(tmp_path, datasets=["bulk", "nope"], progress=False)
    with pytest.raises(ValueError):
        build_demo(tmp_path, scale=0, progress=False)


# -- determinism and rank independence ---------------------------------------------------------------
def test_same_seed_is_bitwise_identical(demo, tmp_path):
    out, _ = demo
    build_demo(tmp_path, seed=SEED, scale=SCALE, progress=False)
    for name, first in _stores(out).items():
        second = Store(tmp_path / f"{name}.bp", preload=True)
        assert len(first) == len(second)
        for a, b in zip(_all_arrays(first), _all_arrays(second)):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)


def test_other_seed_differs(demo, tmp_path):
    out, _ = demo
    names = ["molecules", "clusters", "bulk_modulus"]
    build_demo(tmp_path, seed=SEED + 1, scale=SCALE, datasets=names, progress=False)
    for name in names:
        first, second = Store(out / f"{name}.bp"), Store(tmp_path / f"{name}.bp")
        assert not all(
            a["positions"].shape == b["positions"].shape and np.array_equal(a["positions"], b["positions"])
            for a, b in zip(_all_arrays(first), _all_arrays(second))
        )


def test_blocks_equal_the_whole(demo):
    """Structure k depends only on (seed, dataset, k): contiguous blocks concatenate to the store."""
    out, _ = demo
    for name in ("molecules", "cu_morse"):
        store = Store(out / f"{name}.bp", preload=True)
        blocks = generate_structures(name, SEED, 0, 4) + generate_structures(name, SEED, 4, len(store))
        for i, structure in enumerate(blocks):
            stored = store[i]
            assert structure.source_index == stored.source_index == i
            assert np.array_equal(structure.positions, stored.positions)
            assert np.array_equal(structure.forces, stored.forces) and structure.energy == stored.energy


@pytest.mark.mpi
def test_two_ranks_write_the_same_stores(demo, tmp_path):
    out, _ = demo
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        pytest.skip("needs mpiexec and mpi4py")
    names = ["bulk", "cu_morse", "bulk_modulus"]
    script = tmp_path / "build.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from mpi4py import MPI
            from gfmkit.data.demo import build_demo
            build_demo({str(tmp_path / 'mpi')!r}, seed={SEED}, scale={SCALE}, datasets={names!r},
                       progress=False, comm=MPI.COMM_WORLD)
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GFMKIT_MPI": "1"}
    command = [mpiexec, "-n", "2", sys.executable, str(script)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in names:
        serial, parallel = Store(out / f"{name}.bp", preload=True), Store(tmp_path / "mpi" / f"{name}.bp", preload=True)
        assert len(serial) == len(parallel)
        for a, b in zip(_all_arrays(serial), _all_arrays(parallel)):
            for key in a:
                assert np.array_equal(a[key], b[key]), (name, key)


# -- what pretraining never sees -----------------------------------------------------------------------
def test_downstream_is_unseen_in_pretraining(demo):
    out, _ = demo
    stores = _stores(out)
    al = 13
    pretrain_numbers = [s.numbers for name in PRETRAIN for s in stores[name]]
    # More bulk geometries than the small build holds (geometry only: cheap).
    for name in ("bulk", "bulk_b"):
        dataset = DEMO_DATASETS[name]
        pretrain_numbers += [dataset.make_structure(dataset.rng(SEED, k)).numbers for k in range(400)]
    assert any(set(z) == {al} for z in pretrain_numbers), "pure Al occurs in pretraining"
    assert not any(al in z and len(set(z)) > 1 for z in pretrain_numbers), "no Al alloy in pretraining"
    for structure in stores["alloys_al"]:
        assert al in structure.numbers and len(set(structure.numbers)) == 2

    pretrain_lots = {DEMO_DATASETS[n].level_of_theory for n in PRETRAIN}
    assert DEMO_DATASETS["cu_morse"].level_of_theory not in pretrain_lots
    assert {"EMT", "EMT-B"} <= pretrain_lots
    pretrain_targets = {t for n in PRETRAIN for t in DEMO_DATASETS[n].targets}
    assert "bulk_modulus" not in pretrain_targets
    assert set(stores["cu_morse"].elements) == {"Cu"}
    assert stores["cu_morse"].info()["periodic"] == "periodic+molecular"


def test_bulk_moduli_are_plausible(demo):
    out, _ = demo
    moduli = Store(out / "bulk_modulus.bp").column("property/bulk_modulus")
    assert len(moduli) >= MIN_STRUCTURES and np.all((moduli > 50) & (moduli < 350))
    # Pure Cu with EMT (experiment: 140 GPa).
    cu = next(
        DEMO_DATASETS["bulk_modulus"].structure(SEED, k)
        for k in range(200)
        if set(DEMO_DATASETS["bulk_modulus"].make_structure(DEMO_DATASETS["bulk_modulus"].rng(SEED, k)).symbols) == {"Cu"}
    )
    assert 130 < cu.info["bulk_modulus"] < 150
    assert abs((4 * cu.get_volume() / len(cu)) ** (1 / 3) - emt_lattice_constant("Cu")) < 1e-3


def test_six_downstream_tasks_span_the_kinds_of_transfer(demo):
    """New chemistry, another level of theory, graph-level properties (bulk modulus, vacancy and surface
    energies) and adsorption, each with plausible EMT values."""
    out, _ = demo
    assert len(DOWNSTREAM) >= 6
    stores = _stores(out)
    plausible = {"vacancy_energy": (0.2, 2.5), "surface_energy": (0.2, 3.5), "adsorption_energy": (-8.0, 1.0)}
    for name, (low, high) in plausible.items():
        values = stores[name].column(f"property/{name}")
        assert len(values) >= MIN_STRUCTURES and np.all((values > low) & (values < high)), (name, values)
        assert np.std(values) > 0.05 * abs(np.mean(values))  # a target to learn, not a constant
    assert np.all(stores["vacancy_energy"].natoms == 31)
    assert not any(set(DEMO_DATASETS[n].targets) & set(plausible) for n in PRETRAIN)
    # Ag surfaces with adsorbates occur downstream only
    assert "Ag" not in DEMO_DATASETS["surfaces"].elements and "Ag" in stores["adsorption_energy"].elements
    slab = DEMO_DATASETS["surface_energy"].structure(SEED, 0)
    assert list(slab.pbc) == [True, True, False] and set(slab.info) == {"surface_energy"}


# -- EMT-B ---------------------------------------------------------------------------------------------
def _bulk_geometries(n: int) -> list:
    dataset = DEMO_DATASETS["bulk"]
    return [dataset.make_structure(np.random.default_rng([2024, k])) for k in range(n)]


def test_emt_b_is_another_level_of_theory():
    geometries = _bulk_geometries(30)
    elements = sorted({s for atoms in geometries for s in atoms.get_chemical_symbols()})
    energy_a, energy_b, forces_a, forces_b, counts = [], [], [], [], []
    for atoms in geometries:
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = EMT(), EMTB()
        energy_a.append(a.get_potential_energy())
        energy_b.append(b.get_potential_energy())
        forces_a.append(a.get_forces())
        forces_b.append(b.get_forces())
        counts.append([atoms.get_chemical_symbols().count(e) for e in elements])
    energy_a, energy_b, counts = np.array(energy_a), np.array(energy_b), np.array(counts, dtype=float)
    offsets, *_ = np.linalg.lstsq(counts, energy_b - energy_a, rcond=None)
    residual = (energy_b - energy_a - counts @ offsets) / counts.sum(axis=1)
    residual_rms = float(np.sqrt(np.mean(residual**2)))
    forces_a, forces_b = np.concatenate(forces_a), np.concatenate(forces_b)
    force_ratio = float(np.sqrt(np.mean((forces_b - forces_a) ** 2)) / np.sqrt(np.mean(forces_a**2)))
    assert residual_rms > 0.005, f"EMT-B minus EMT is almost a per-element offset ({residual_rms * 1e3:.1f} meV/atom)"
    assert force_ratio >= 0.10, f"EMT-B forces differ by only {force_ratio:.1%} of the EMT force RMS"
    assert residual_rms < 0.1 and force_ratio < 1.0  # a perturbation, not another potential altogether


def test_emt_b_forces_and_stress_are_derivatives():
    atoms = _bulk_geometries(12)[-1]
    atoms = atoms.repeat((2, 1, 1)) if len(atoms) < 4 else atoms
    atoms.calc = EMTB()
    forces = atoms.get_forces()
    step = 1e-4
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, k] += sign * step
                moved.calc = EMTB()
                shifted.append(moved.get_potential_energy())
            numeric[i, k] = -(shifted[0] - shifted[1]) / (2 * step)
    assert np.abs(forces - numeric).max() < 1e-5 * max(1.0, np.abs(forces).max())
    stress = atoms.get_stress()
    numeric_stress = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(stress - numeric_stress).max() < 1e-6


def test_emt_b_leaves_ase_emt_alone():
    table = ase_emt.parameters
    atoms = _bulk_geometries(1)[0]
    atoms.calc = EMT()
    before = atoms.get_potential_energy()
    other = atoms.copy()
    other.calc = EMTB()
    assert other.get_potential_energy() != before
    assert other.calc.name == "EMT-B" and other.calc.level_of_theory == "EMT-B"
    assert ase_emt.parameters is table and EMT_B_PARAMETERS is not table
    again = atoms.copy()
    again.calc = EMT()
    assert again.get_potential_energy() == before
