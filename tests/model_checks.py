"""ModelTests: the physics every gfmkit model variant must obey; each variant's test class inherits it.

A variant class provides ``make_model(dtype)`` returning a model with at least two heads whose heads
0 and 1 are energy heads, and sets ``conservative`` (forces are -dE/dx).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from gfmkit.data.graphs import collate, structure_graph

CUTOFF = 4.0


def arrays_of(atoms: Atoms, charge: float = 0.0, spin: float = 1.0) -> dict:
    return {
        "numbers": atoms.numbers,
        "positions": atoms.positions,
        "cell": atoms.cell[:] if atoms.pbc.any() else np.zeros((3, 3)),
        "pbc": atoms.pbc,
        "charge": charge,
        "spin": spin,
    }


def graph(atoms: Atoms, head: int = 0, dtype=torch.float64, cutoff: float = CUTOFF):
    return structure_graph(arrays_of(atoms), head, cutoff, dtype=dtype)


def batch_of(*atoms_list: Atoms, heads=None, dtype=torch.float64):
    heads = heads or [0] * len(atoms_list)
    return collate([graph(a, h, dtype) for a, h in zip(atoms_list, heads)])


def alloy_cell(seed: int = 0, repeat=(2, 2, 1)) -> Atoms:
    """A rattled, strained triclinic CuAu cell (periodic)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7) * repeat
    atoms.numbers[rng.random(len(atoms)) < 0.5] = 79
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def small_triclinic(seed: int = 1) -> Atoms:
    """A 2-atom triclinic cell much smaller than twice the cutoff (many periodic images)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.6) * (1, 1, 2)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.08 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def a_molecule() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


class ModelTests:
    conservative = True

    def make_model(self, dtype: torch.dtype):  # pragma: no cover - provided by each variant
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def model(self):
        torch.manual_seed(0)
        return self.make_model(torch.float64)

    def predict(self, model, atoms, head=0, stress=False):
        return model(batch_of(atoms, heads=[head]), forces=True, stress=stress)

    # -- symmetry -----------------------------------------------------------------------------------
    @pytest.mark.parametrize("make", [alloy_cell, a_molecule], ids=["periodic", "molecule"])
    def test_rotation_translation_permutation(self, model, make):
        atoms = make()
        base = self.predict(model, atoms)
        assert base["forces"].abs().max() > 1e-3, "forces vanish: the model ignores positions"
        rotation = Rotation.random(random_state=7).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + np.array([0.3, -1.2, 2.0])
        moved.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
        out = self.predict(model, moved)
        torch.testing.assert_close(out["energy"], base["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out["forces"], base["forces"] @ torch.tensor(rotation.T), rtol=1e-9, atol=1e-10)
        order = np.random.default_rng(1).permutation(len(atoms))
        permuted = self.predict(model, atoms[order])
        torch.testing.assert_close(permuted["energy"], base["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(permuted["forces"], base["forces"][order], rtol=1e-10, atol=1e-10)

    def test_vector_features_rotate_with_the_structure(self, model):
        atoms = alloy_cell(2)
        rotation = Rotation.random(random_state=3).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T
        moved.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
        features = []
        for a in (atoms, moved):
            g = batch_of(a)
            j, i = g.edge_index
            vectors = g.pos[j] - g.pos[i] + torch.bmm(g.edge_shift[:, None, :], g.cell[g.batch[i]]).squeeze(1)
            condition = torch.stack([g.charge, g.spin], 1)[g.batch] if model.config.conditioning else None
            features.append(model.encoder(g.z, vectors, g.edge_index, condition))
        (s0, v0), (s1, v1) = features
        assert v0.abs().max() > 1e-4, "vector features vanish"
        torch.testing.assert_close(s1, s0, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(v1, torch.einsum("kl,nlf->nkf", torch.tensor(rotation), v0), rtol=1e-8, atol=1e-10)

    # -- derivatives ----------------------------------------------------------------------------------
    @pytest.mark.parametrize("make", [alloy_cell, a_molecule], ids=["periodic", "molecule"])
    def test_forces_are_minus_energy_gradient(self, model, make):
        if not self.conservative:
            pytest.skip("direct forces are not conservative by construction")
        atoms = make()
        forces = self.predict(model, atoms)["forces"].numpy()
        h = 1e-5
        rng = np.random.default_rng(0)
        for atom, axis in zip(rng.integers(len(atoms), size=4), rng.integers(3, size=4)):
            energies = []
            for sign in (1, -1):
                shifted = atoms.copy()
                shifted.positions[atom, axis] += sign * h
                energies.append(float(self.predict(model, shifted)["energy"]))
            numeric = -(energies[0] - energies[1]) / (2 * h)
            assert numeric == pytest.approx(forces[atom, axis], rel=1e-6, abs=1e-8)

    def test_stress_is_strain_derivative_on_a_small_triclinic_cell(self, model):
        if not self.conservative:
            pytest.skip("stress needs a conservative energy")
        atoms = small_triclinic()
        assert min(atoms.cell.lengths()) < 2 * CUTOFF
        stress = self.predict(model, atoms, stress=True)["stress"][0].numpy()
        h, volume = 1e-6, atoms.get_volume()
        for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h / (1 if a == b else 2)
                strain[b, a] += 0 if a == b else sign * h / 2
                deformed = atoms.copy()
                deformed.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
                energies.append(float(self.predict(model, deformed)["energy"]))
            numeric = (energies[0] - energies[1]) / (2 * h) / volume
            assert numeric == pytest.approx(stress[a, b], rel=1e-5, abs=1e-9)
        assert np.allclose(stress, stress.T)

    # -- batching, locality, periodicity ----------------------------------------------------------------
    def test_batch_equals_each_structure_alone(self, model):
        structures = [alloy_cell(0), a_molecule(), small_triclinic(), alloy_cell(5, (1, 2, 1))]
        heads = [0, 1, 0, 1]
        together = model(batch_of(*structures, heads=heads), forces=True, stress=True)
        start = 0
        for k, (atoms, head) in enumerate(zip(structures, heads)):
            alone = model(batch_of(atoms, heads=[head]), forces=True, stress=True)
            n = len(atoms)
            torch.testing.assert_close(together["energy"][k : k + 1], alone["energy"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(together["forces"][start : start + n], alone["forces"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(together["stress"][k : k + 1], alone["stress"], rtol=1e-10, atol=1e-12)
            start += n

    def test_isolated_atom(self, model):
        atom = Atoms("Cu", positions=[[0, 0, 0]])
        out = self.predict(model, atom)
        assert torch.isfinite(out["energy"]).all() and out["forces"].abs().max() == 0
        pair = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 30.0]])
        # beyond the cutoff, two atoms are two isolated atoms
        torch.testing.assert_close(self.predict(model, pair)["energy"], 2 * out["energy"], rtol=1e-12, atol=1e-12)

    def test_energy_is_smooth_at_the_cutoff(self, model):
        def energy(d):
            return float(self.predict(model, Atoms("CuAu", positions=[[0, 0, 0], [0, 0, d]]))["energy"])

        far = energy(CUTOFF + 1e-3)
        for delta in (1e-2, 1e-3):
            assert abs(energy(CUTOFF - delta) - far) < 50 * delta**2
        pair = Atoms("CuAu", positions=[[0, 0, 0], [0, 0, CUTOFF - 1e-3]])
        assert self.predict(model, pair)["forces"].abs().max() < 1e-3

    def test_supercell_energy_forces_and_stress(self, model):
        cell = alloy_cell(4, (1, 1, 1))
        supercell = cell * (2, 1, 1)
        one = self.predict(model, cell, stress=True)
        two = self.predict(model, supercell, stress=True)
        torch.testing.assert_close(two["energy"], 2 * one["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(two["forces"], one["forces"].repeat(2, 1), rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(two["stress"], one["stress"], rtol=1e-8, atol=1e-10)

    # -- heads ------------------------------------------------------------------------------------------
    def test_a_structure_trains_only_its_own_head(self, model):
        model.zero_grad()
        out = model(batch_of(alloy_cell(), heads=[1]), forces=True, training=True)
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        loss.backward()
        readout = model.readout
        width = readout.head_hidden
        grad_w1 = readout.w1.grad.view(readout.w1.shape[0], readout.n, width)
        assert grad_w1[:, 1].abs().max() > 0 and readout.w2.grad[1].abs().max() > 0
        others = [k for k in range(readout.n) if k != 1]
        assert grad_w1[:, others].abs().max() == 0 and readout.w2.grad[others].abs().max() == 0
        assert readout.b2.grad[others].abs().max() == 0
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.encoder.parameters())
        model.zero_grad()

    def test_every_head_from_one_encoder_pass(self, model):
        atoms = alloy_cell(3)
        out = model(batch_of(atoms, heads=[0]), forces=False, energies=True)
        for head in range(len(model.heads)):
            alone = model(batch_of(atoms, heads=[head]), forces=False)
            torch.testing.assert_close(out["energies"][:, head], alone["energy"], rtol=1e-12, atol=1e-12)

    # -- persistence and precision ------------------------------------------------------------------------
    def test_checkpoint_round_trip(self, model, tmp_path):
        from gfmkit import load_model
        from gfmkit.models import save_checkpoint

        path = save_checkpoint(model, tmp_path / "model.pt")
        again = load_model(path)
        assert again.head_names == model.head_names and again.config == model.config
        batch = batch_of(alloy_cell(), a_molecule(), heads=[0, 1])
        a, b = model(batch, stress=True), again(batch, stress=True)
        for key in a:
            assert torch.equal(a[key], b[key]), key
        data = torch.load(path, weights_only=True)
        assert data["heads"][0]["name"] == model.head_names[0]

    @pytest.mark.parametrize("precision", ["fp32", "bf16-autocast", "bf16-pure"])
    def test_lower_precisions_stay_close_and_keep_sensitive_parts_high(self, precision):
        from gfmkit.precision import get_policy, precision_scope

        torch.manual_seed(0)
        reference = self.make_model(torch.float64)
        policy = get_policy(precision)
        low = self.make_model(torch.float64)
        low.load_state_dict(reference.state_dict())
        low = low.to(policy.param_dtype)
        assert low.readout.reference.dtype == torch.float64  # fitted statistics never rounded
        atoms = alloy_cell(1)
        expected = reference(batch_of(atoms), forces=True)
        with precision_scope(policy):
            got = low(batch_of(atoms, dtype=policy.sensitive_dtype), forces=True)
        assert got["energy"].dtype == policy.sensitive_dtype
        tolerance = {"fp32": 1e-4, "bf16-autocast": 0.05, "bf16-pure": 0.05}[precision]
        scale = expected["forces"].abs().max()
        assert (got["forces"].double() - expected["forces"]).abs().max() < tolerance * max(1.0, float(scale))
        assert math.isfinite(float(got["energy"]))
