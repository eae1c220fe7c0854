"""Property test (issue #21): random valid structures go through ``convert`` into a store and come back
bitwise: numbers, positions, pbc, the cell of periodic structures, energy, forces and stress."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gfmkit.data import DatasetSpec, Store
from gfmkit.data.ingest import convert

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def structures(draw) -> Atoms:
    """1-6 atoms of any element 1-94 on distinct sites of a 1.5 Å grid (jittered): never too close."""
    n = draw(st.integers(1, 6))
    sites = draw(st.lists(st.tuples(*[st.integers(0, 3)] * 3), min_size=n, max_size=n, unique=True))
    jitter = draw(arrays(np.float64, (n, 3), elements=st.floats(-0.2, 0.2, width=64)))
    positions = 1.5 * np.array(sites, dtype=np.float64) + jitter
    numbers = draw(st.lists(st.integers(1, 94), min_size=n, max_size=n))
    pbc = draw(st.sampled_from([(False,) * 3, (True,) * 3, (True, True, False)]))
    cell = np.diag(draw(st.tuples(*[st.floats(8.0, 12.0, width=64)] * 3))) if any(pbc) else np.zeros((3, 3))
    if all(pbc):
        cell = cell + np.triu(draw(arrays(np.float64, (3, 3), elements=st.floats(-0.5, 0.5, width=64))), 1)
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    results = {"energy": draw(finite), "forces": draw(arrays(np.float64, (n, 3), elements=finite))}
    if all(pbc):
        results["stress"] = draw(arrays(np.float64, (6,), elements=st.floats(-1.0, 1.0, width=64)))
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(structures(), min_size=1, max_size=5), stress=st.booleans())
def test_random_valid_structures_round_trip_through_a_store(frames, stress):
    if stress:  # a dataset declaring stress holds fully periodic structures only
        frames = [a for a in frames if a.pbc.all()] or frames[:0]
    if not frames:
        return
    targets = ["energy", "forces", "stress"] if stress else ["energy", "forces"]
    spec = DatasetSpec(name="prop", level_of_theory="random", targets=targets)
    with tempfile.TemporaryDirectory() as tmp:
        report = convert(frames, Path(tmp) / "p.bp", spec, progress=False)
        assert report.kept == len(frames)
        store = Store(Path(tmp) / "p.bp")
        assert len(store) == len(frames)
        for atoms, read in zip(frames, store):
            assert read.numbers.tolist() == atoms.numbers.tolist()
            assert read.positions.tobytes() == atoms.positions.tobytes()
            assert read.pbc.tolist() == atoms.pbc.tolist()
            if atoms.pbc.all():
                assert read.cell.tobytes() == atoms.cell[:].tobytes()
            assert read.energy == atoms.calc.results["energy"]
            assert read.forces.tobytes() == atoms.calc.results["forces"].tobytes()
            if stress:
                expected = atoms.get_stress(voigt=False)
                np.testing.assert_array_equal(read.stress, expected)
