"""model.predict: every head from one encoder pass; per-head forces and stress equal separate own-head
passes; the weighted head obeys the model physics (ModelTests); weights are checked."""

from __future__ import annotations

import pytest
import torch
from model_checks import ModelTests, a_molecule, alloy_cell, batch_of, small_triclinic

from gfmkit.models import HeadConfig, ModelConfig, MultiHeadPaiNN

SMALL = ModelConfig(hidden=16, layers=2, n_rbf=8, cutoff=4.0, head_hidden=8, init="xavier")  # heads not all 0
REFERENCES = {"Cu": -3.5, "Au": -3.1, "C": -7.0, "H": -1.1, "O": -4.6}


def make_heads() -> list[HeadConfig]:
    shifted = {symbol: value + 0.8 for symbol, value in REFERENCES.items()}  # a second level of theory
    return [
        HeadConfig("emt", reference_energies=REFERENCES, composition={"Cu": 0.5, "Au": 0.5}),
        HeadConfig("emt_b", level_of_theory="EMT-B", reference_energies=shifted, composition={"C": 0.3, "H": 0.5, "O": 0.2}),
        HeadConfig("third", reference_energies=REFERENCES),
        HeadConfig("modulus", kind="property", target="bulk_modulus", pooling="mean"),
    ]


def make_model(dtype=torch.float64, **config) -> MultiHeadPaiNN:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SMALL.__dict__, **config})
    return MultiHeadPaiNN(cfg, make_heads()).to(dtype)


def mixed_batch():
    """Periodic, non-periodic and a small triclinic cell in one batch, each on a different head."""
    return batch_of(alloy_cell(0), a_molecule(), small_triclinic(), alloy_cell(5, (1, 2, 1)), heads=[0, 1, 2, 3])


@pytest.mark.parametrize("direct", [False, True], ids=["conservative", "direct"])
def test_per_head_forces_and_stress_equal_separate_own_head_passes(direct):
    model = make_model(direct_forces=direct)
    batch = mixed_batch()
    out = model.predict(batch, forces="each", stress=True)
    assert out.heads == model.head_names and out.forces.shape == (4, batch.z.shape[0], 3)
    for k, head in enumerate(model.heads):
        alone = batch.clone()
        alone.dataset = torch.full_like(batch.dataset, k)
        ref = model(alone, forces=head.kind == "energy", stress=head.kind == "energy")
        torch.testing.assert_close(out.energies[:, k], ref["energy"], rtol=0, atol=1e-10)
        if head.kind == "energy":
            torch.testing.assert_close(out.forces[k], ref["forces"], rtol=0, atol=1e-10)
            torch.testing.assert_close(out.stress[k], ref["stress"], rtol=0, atol=1e-10)
        else:
            assert torch.isnan(out.forces[k]).all()
    assert (out.stress[:3, 1] == 0).all()  # the molecule is not periodic


def test_chosen_heads_and_weighted_forces_are_the_weighted_sum_of_head_forces():
    model = make_model()
    batch = mixed_batch()
    each = model.predict(batch, heads=["emt", "third"], forces="each", stress=True, weights="uniform")
    weighted = model.predict(batch, heads=["emt", "third"], forces="weighted", stress=True, weights="uniform")
    assert each.heads == ["emt", "third"] and each.energies.shape == (4, 2)
    torch.testing.assert_close(weighted.energy, each.energy, rtol=0, atol=1e-12)
    torch.testing.assert_close(weighted.forces, each.forces.mean(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(weighted.stress, each.stress.mean(0), rtol=0, atol=1e-10)


def test_weighted_energy_mixes_reference_removed_heads_and_adds_the_target_references():
    model = make_model()
    batch = batch_of(a_molecule())
    out = model.predict(batch, weights={"emt": 0.25, "emt_b": 0.75}, target="emt_b")
    counts = torch.bincount(batch.z, minlength=101).double()
    references = counts @ model.readout.reference.T
    removed = out.energies[0, :3] - references[:3]
    expected = 0.25 * removed[0] + 0.75 * removed[1] + references[1]
    torch.testing.assert_close(out.energy[0], expected, rtol=0, atol=1e-10)
    custom = model.predict(batch, weights={"emt": 1.0}, target={"C": 0.0, "H": 0.0, "O": 0.0})
    torch.testing.assert_close(custom.energy[0], removed[0], rtol=0, atol=1e-10)
    assert custom.target == "custom"
    assert float(out.energy_spread[0]) == pytest.approx(float(removed.std(correction=0)) / len(batch.z))


def test_forces_spread_is_zero_for_identical_heads():
    model = make_model()
    with torch.no_grad():
        for p in (model.readout.w1.view(16, 4, 8), model.readout.w2):
            p[..., 2, :] = p[..., 0, :] if p.dim() == 3 else p[0]
        model.readout.b2[2] = model.readout.b2[0]
    out = model.predict(batch_of(alloy_cell(1)), heads=["emt", "third"], forces="each")
    assert float(out.forces_spread[0]) < 1e-12 and float(out.energy_spread[0]) < 1e-12
    wide = model.predict(batch_of(alloy_cell(1)), heads=["emt", "emt_b"], forces="each")
    assert float(wide.forces_spread[0]) > 0


def test_overlap_weights_follow_composition():
    model = make_model()
    out = model.predict(batch_of(alloy_cell(0), a_molecule()))
    emt, emt_b, _third, modulus = range(4)
    # emt trained on Cu/Au, emt_b on C/H/O; third has no composition: its reference elements (all five)
    assert out.weights[0, emt_b] == 0 and out.weights[1, emt] == 0
    assert float(out.weights[0, emt]) == pytest.approx(0.5) and float(out.weights[1, emt_b]) == pytest.approx(0.5)
    assert (out.weights[:, modulus] == 0).all()
    torch.testing.assert_close(out.weights.sum(1), torch.ones(2, dtype=torch.float64))


def test_weights_that_do_not_sum_to_one_or_name_a_missing_head_are_errors():
    model = make_model()
    batch = batch_of(alloy_cell(0))
    with pytest.raises(ValueError, match="sum to one; they sum to 0.9"):
        model.predict(batch, weights={"emt": 0.5, "emt_b": 0.4})
    with pytest.raises(KeyError, match="no head 'pbe'"):
        model.predict(batch, weights={"emt": 0.5, "pbe": 0.5})
    with pytest.raises(KeyError, match="no head 'pbe'"):
        model.predict(batch, heads=["emt", "pbe"])
    with pytest.raises(ValueError, match="sum to one; they sum to 1.2"):
        model.predict(batch, heads=["emt", "emt_b"], weights=[0.6, 0.6])
    with pytest.raises(ValueError, match="'modulus' predicts 'bulk_modulus', not an energy"):
        model.predict(batch, weights={"modulus": 1.0})
    with pytest.raises(ValueError, match="no gate"):
        model.predict(batch, weights="gate")
    with pytest.raises(ValueError, match="forces="):
        model.predict(batch, forces="all")
    with pytest.raises(ValueError, match="stress follows the forces"):
        model.predict(batch, stress=True)


def test_one_batched_vjp_gives_the_loops_per_head_forces_and_stress():
    model = make_model()
    batch = mixed_batch()
    loop = model.predict(batch, forces="each", stress=True)
    batched = model.predict(batch, forces="each", stress=True, per_head="batched")
    torch.testing.assert_close(batched.forces, loop.forces, rtol=0, atol=1e-10, equal_nan=True)
    torch.testing.assert_close(batched.stress, loop.stress, rtol=0, atol=1e-10, equal_nan=True)
    assert torch.isfinite(batched.forces).any()


class TestWeightedHead(ModelTests):
    """The weighted head (overlap weights, default target) through the model mixin."""

    def make_model(self, dtype):
        return make_model(dtype)

    def predict(self, model, atoms, head=0, stress=False):
        out = model.predict(batch_of(atoms, heads=[head]), forces="weighted", stress=stress)
        result = {"energy": out.energy, "forces": out.forces}
        if stress:
            result["stress"] = out.stress
        return result
