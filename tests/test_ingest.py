"""Structures in: every source kind, label lookup with unit conversion, every validation case."""

from __future__ import annotations

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from structures import emt_structures, periodic_emt_structures

from gfmkit.data import (
    DatasetSpec,
    LabelSpec,
    Store,
    StructureError,
    ValidationSpec,
    structure_from_atoms,
    validate,
)
from gfmkit.data.ingest import convert, read_structures

SPEC = DatasetSpec(name="emt", level_of_theory="EMT")


@pytest.mark.parametrize("suffix", ["extxyz", "traj", "db", "aselmdb"])
def test_files_and_databases_ingest_in_order(tmp_path, suffix):
    frames = emt_structures(7)
    path = tmp_path / f"frames.{suffix}"
    if suffix in ("db", "aselmdb"):
        with ase.db.connect(path) as db:
            for atoms in frames:
                db.write(atoms)
    else:
        ase.io.write(path, frames)
    report = convert(path, tmp_path / "out.bp", SPEC, progress=False)
    assert (report.read, report.kept, report.skipped) == (7, 7, [])
    if suffix in ("db", "aselmdb"):
        with ase.db.connect(path) as db:
            reference = [row.toatoms() for row in db.select()]
    else:
        reference = ase.io.read(path, ":")
    store = Store(tmp_path / "out.bp")
    # Exactly what ASE reads from the file (extxyz itself keeps only ~8 digits).
    for structure, atoms in zip(store, reference):
        assert structure.energy == atoms.get_potential_energy()
        assert structure.forces.tobytes() == atoms.get_forces().tobytes()
        assert structure.positions.tobytes() == atoms.positions.tobytes()
        assert structure.pbc.tolist() == atoms.pbc.tolist()
    for structure, atoms in zip(store, frames):
        np.testing.assert_allclose(structure.forces, atoms.get_forces(), rtol=1e-6, atol=1e-7)
    assert store.column("source_index").tolist() == list(range(7))


def test_vasp_and_cif_single_structures(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    ase.io.write(tmp_path / "POSCAR", atoms, format="vasp")
    ase.io.write(tmp_path / "cu.cif", atoms)
    spec = DatasetSpec(name="geo", level_of_theory="none", targets=["ok"], labels=LabelSpec(properties={"ok": "ok"}))
    # Geometry-only files lack the declared target: that is an error naming file and field.
    with pytest.raises(StructureError, match=r"POSCAR\[0\] ok: declared target is missing"):
        read_structures([tmp_path / "POSCAR", tmp_path / "cu.cif"], spec, format=None)
    frames = [ase.io.read(tmp_path / "POSCAR"), ase.io.read(tmp_path / "cu.cif")]
    for a in frames:
        a.info["ok"] = 1.0
    structures, _ = read_structures(frames, spec)
    np.testing.assert_allclose(structures[0].positions, structures[1].positions, atol=1e-6)


def test_iterable_of_atoms_and_info_array_keys_with_units():
    frames = emt_structures(3, stress=False)
    for atoms in frames:
        atoms.info["E_ha"] = atoms.get_potential_energy() / units.Hartree
        atoms.arrays["F_hb"] = atoms.get_forces() / (units.Hartree / units.Bohr)
        atoms.calc = None
    spec = DatasetSpec(
        name="qc",
        level_of_theory="wB97X",
        labels=LabelSpec(energy="E_ha", forces="F_hb", energy_unit="Hartree", forces_unit="Hartree/Bohr"),
    )
    reference = emt_structures(3, stress=False)
    structures, report = read_structures(iter(frames), spec)
    assert report.kept == 3
    for s, ref in zip(structures, reference):
        assert s.energy == pytest.approx(ref.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(s.forces, ref.get_forces(), rtol=1e-12, atol=1e-14)


def test_positions_in_bohr_are_converted():
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.set_cell(atoms.cell / units.Bohr, scale_atoms=True)
    atoms.info["e"] = 0.0
    spec = DatasetSpec(name="b", level_of_theory="x", targets=["energy"], labels=LabelSpec(energy="e", length_unit="Bohr"))
    s = structure_from_atoms(atoms, spec, "mem", 0)
    np.testing.assert_allclose(s.cell, bulk("Cu", "fcc", a=3.6).cell[:], atol=1e-12)


def test_stress_from_voigt_gpa_and_from_virial():
    atoms = periodic_emt_structures(1)[0]
    stress = atoms.get_stress(voigt=False)
    volume = atoms.get_volume()
    spec = DatasetSpec(name="s", level_of_theory="EMT", targets=["energy", "forces", "stress"])
    direct = structure_from_atoms(atoms, spec, "mem", 0)
    np.testing.assert_allclose(direct.stress, stress, rtol=1e-12)

    atoms.info["stress_gpa"] = atoms.get_stress(voigt=True) / units.GPa
    gpa = DatasetSpec(name="s", level_of_theory="EMT", targets=["energy", "forces", "stress"],
                      labels=LabelSpec(stress="stress_gpa", stress_unit="GPa"))
    np.testing.assert_allclose(structure_from_atoms(atoms, gpa, "mem", 0).stress, stress, rtol=1e-10, atol=1e-14)

    atoms.info["virial"] = (-stress * volume / units.kcal * units.mol).reshape(9)
    vir = DatasetSpec(name="s", level_of_theory="EMT", targets=["energy", "forces", "stress"],
                      labels=LabelSpec(virial="virial", energy_unit="kcal/mol"))
    # energy_unit applies to energy and virial alike: feed energy in kcal/mol too
    atoms.info["energy"] = atoms.get_potential_energy() / units.kcal * units.mol
    vir.labels.energy = "energy"
    s = structure_from_atoms(atoms, vir, "mem", 0)
    np.testing.assert_allclose(s.stress, stress, rtol=1e-10, atol=1e-14)
    assert s.energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)


def _atoms(**changes) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.info["energy"] = -1.0
    atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    for key, value in changes.items():
        if key in ("energy",):
            atoms.info[key] = value
        elif key == "forces":
            del atoms.arrays["forces"]
            atoms.info["forces"] = value  # wrong-shape arrays cannot live in atoms.arrays
        else:
            setattr(atoms, key, value)
    return atoms


def problems_of(atoms: Atoms, **validation) -> list[str]:
    spec = DatasetSpec(name="v", level_of_theory="x", validation=ValidationSpec(**validation))
    try:
        structure = structure_from_atoms(atoms, spec, "input.xyz", 4)
    except StructureError as exc:
        return [str(p) for p in exc.problems]
    return [str(p) for p in validate(structure, spec.validation, "input.xyz", 4)]


@pytest.mark.parametrize(
    "atoms, expected",
    [
        (_atoms(energy=float("nan")), "input.xyz[4] energy: not finite (nan)"),
        (_atoms(energy=float("inf")), "input.xyz[4] energy: not finite (inf)"),
        (_atoms(forces=np.zeros((2, 2))), "input.xyz[4] forces: shape (2, 2), expected (2, 3)"),
        (_atoms(forces=np.full((2, 3), np.nan)), "input.xyz[4] forces: contains NaN or inf"),
        (_atoms(numbers=[0, 29]), "input.xyz[4] numbers: unknown element with atomic number 0"),
        (_atoms(positions=[[0, 0, 0], [0.05, 0, 0]]), "input.xyz[4] pos: atoms 0 and 1 are 0.0500 Å apart"),
        (_atoms(cell=np.zeros((3, 3))), "input.xyz[4] cell: zero-volume or singular cell along periodic directions"),
        (_atoms(cell=[[1, 0, 0], [2, 0, 0], [0, 0, 3]]), "input.xyz[4] cell: zero-volume or singular cell"),
        (Atoms(), "input.xyz[4] numbers: empty structure (no atoms)"),
        (bulk("Cu"), "input.xyz[4] energy: declared target is missing"),
    ],
    ids=["nan-energy", "inf-energy", "forces-shape", "nan-forces", "unknown-element", "too-close", "zero-cell",
         "singular-cell", "empty", "missing-energy"],
)
def test_every_validation_case_names_file_index_and_field(atoms, expected):
    found = problems_of(atoms)
    assert any(p.startswith(expected) for p in found), found


def test_periodic_images_count_for_the_distance_check():
    atoms = _atoms(cell=[[0.08, 0, 0], [0, 5, 0], [0, 0, 5]], positions=[[0, 0, 0], [0.04, 2.5, 2.5]])
    assert any("pos: atoms" in p for p in problems_of(atoms))
    molecule = _atoms(pbc=False, cell=np.zeros((3, 3)))
    assert problems_of(molecule) == []


def test_allowed_elements_and_configurable_min_distance():
    atoms = _atoms()
    assert "element(s) Cu not in the allowed set" in problems_of(atoms, elements=["Au"])[0]
    assert "apart (minimum 3.0 Å)" in problems_of(atoms, min_distance=3.0)[0]


def test_skip_policy_reports_every_skipped_structure(tmp_path):
    frames = emt_structures(6, stress=False)
    frames[1].calc.results["energy"] = float("nan")
    frames[4].positions[1] = frames[4].positions[0]
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, frames)
    spec = DatasetSpec(name="m", level_of_theory="EMT", validation=ValidationSpec(policy="skip"))
    report = convert(path, tmp_path / "m.bp", spec, progress=False)
    assert (report.read, report.kept) == (6, 4)
    table = report.table()
    assert table[["index", "field"]].values.tolist() == [[1, "energy"], [4, "pos"]]
    assert (table["source"] == str(path)).all()
    assert Store(tmp_path / "m.bp").column("source_index").tolist() == [0, 2, 3, 5]
    with pytest.raises(StructureError, match=r"mixed.extxyz\[1\] energy: not finite"):
        convert(path, tmp_path / "n.bp", DatasetSpec(name="m", level_of_theory="EMT"), progress=False)
    assert not (tmp_path / "n.bp").exists()


def test_unreadable_file_is_a_problem_not_a_crash(tmp_path):
    bad = tmp_path / "bad.extxyz"
    bad.write_text("3\nnot an extxyz header = = =\nCu 0 0\n")
    with pytest.raises(StructureError, match=r"bad.extxyz\[0\] file: cannot be read"):
        read_structures(bad, SPEC)
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        read_structures(tmp_path / "nope.xyz", SPEC)


def test_dataset_spec_rejects_bad_declarations():
    with pytest.raises(ValueError, match="target 'gap' is neither"):
        DatasetSpec(name="x", level_of_theory="y", targets=["gap"])
    with pytest.raises(ValueError, match="must be letters"):
        DatasetSpec(name="a b", level_of_theory="y")
    with pytest.raises(ValueError, match="summing to 1"):
        DatasetSpec(name="x", level_of_theory="y", split_fractions=(0.5, 0.1, 0.1))


def test_streamed_conversion_equals_one_block(tmp_path):
    """Chunks spilled to disk and merged give the same store as one chunk holding everything."""
    from gfmkit.data import Store

    path = tmp_path / "many.extxyz"
    ase.io.write(path, emt_structures(11, stress=False))
    spec = DatasetSpec(name="m", level_of_theory="EMT")
    whole = convert(path, tmp_path / "whole.bp", spec, progress=False, chunk=100)
    chunked = convert(path, tmp_path / "chunked.bp", spec, progress=False, chunk=3)
    assert whole.kept == chunked.kept == 11
    a, b = Store(tmp_path / "whole.bp"), Store(tmp_path / "chunked.bp")
    assert a.info() | {"path": ""} == b.info() | {"path": ""}
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.forces, y.forces)
        assert (x.energy, x.source_index, x.split) == (y.energy, y.source_index, y.split)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.bp", "many.extxyz", "whole.bp"]
