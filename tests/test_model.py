"""Every model variant passes the shared physics checks (tests/model_checks.py)."""

from __future__ import annotations

import pytest
import torch
from model_checks import CUTOFF, ModelTests, alloy_cell, batch_of

from gfmkit.models import HeadConfig, ModelConfig, MultiHeadPaiNN

HEADS = [
    HeadConfig("pbe", reference_energies={"Cu": -0.3, "Au": -0.2, "H": -1.1, "C": -1.5, "O": -2.0}, scale=0.7, shift=0.1),
    HeadConfig("r2scan", reference_energies={"Cu": -0.5, "Au": -0.4, "H": -1.0, "C": -1.3, "O": -1.9}, scale=1.3),
    HeadConfig("gap", kind="property", target="gap", pooling="mean", targets=["gap"], scale=2.0, shift=5.0),
]


def randomised(model: MultiHeadPaiNN) -> MultiHeadPaiNN:
    # Non-zero biases everywhere, so no symmetry test passes by accident of zero initial values. The
    # noise has sd 0.05 in the function's units: the message output layers are stored divided by their gain.
    gained = {id(p) for block in model.encoder.message for p in block[2].parameters()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter) / (model.config.message_gain if id(parameter) in gained else 1.0))
    return model


class TestPaiNN(ModelTests):
    """The defaults: Gaussian basis, Xavier initialisation."""

    def make_model(self, dtype):
        return randomised(MultiHeadPaiNN(ModelConfig(hidden=16, layers=2, n_rbf=8, cutoff=CUTOFF, head_hidden=8), HEADS)).to(dtype)


class TestPaiNNBessel(ModelTests):
    """The sine (Bessel) basis with torch's initialisation: gfmkit's model before issue #15."""

    def make_model(self, dtype):
        config = ModelConfig(hidden=16, layers=2, n_rbf=8, cutoff=CUTOFF, head_hidden=8, radial_basis="bessel", init="torch")
        return randomised(MultiHeadPaiNN(config, HEADS)).to(dtype)


class TestPaiNNPolynomialCutoff(ModelTests):
    """DimeNet's polynomial envelope instead of the cosine cutoff (``cutoff_fn="polynomial"``)."""

    def make_model(self, dtype):
        config = ModelConfig(hidden=16, layers=2, n_rbf=8, cutoff=CUTOFF, head_hidden=8, cutoff_fn="polynomial")
        return randomised(MultiHeadPaiNN(config, HEADS)).to(dtype)


class TestPaiNNConditioned(ModelTests):
    def make_model(self, dtype):
        config = ModelConfig(hidden=16, layers=3, n_rbf=6, cutoff=CUTOFF, head_hidden=8, conditioning=True)
        return randomised(MultiHeadPaiNN(config, HEADS)).to(dtype)


class TestPaiNNDirectForces(ModelTests):
    conservative = False

    def make_model(self, dtype):
        config = ModelConfig(hidden=16, layers=2, n_rbf=8, cutoff=CUTOFF, head_hidden=8, direct_forces=True)
        return randomised(MultiHeadPaiNN(config, HEADS)).to(dtype)


def test_property_head_is_a_mean_over_atoms():
    torch.manual_seed(0)
    model = randomised(MultiHeadPaiNN(ModelConfig(hidden=8, layers=1, n_rbf=4, cutoff=CUTOFF, head_hidden=4), HEADS)).double()
    cell = alloy_cell(0, (1, 1, 1))
    one = model(batch_of(cell, heads=[2]), forces=False)["energy"]
    two = model(batch_of(cell * (2, 1, 1), heads=[2]), forces=False)["energy"]
    torch.testing.assert_close(one, two, rtol=1e-10, atol=1e-10)  # intensive


def test_conditioning_changes_the_energy():
    from model_checks import arrays_of

    from gfmkit.data.graphs import collate, structure_graph

    torch.manual_seed(0)
    config = ModelConfig(hidden=8, layers=1, n_rbf=4, cutoff=CUTOFF, head_hidden=4, conditioning=True)
    model = randomised(MultiHeadPaiNN(config, HEADS)).double()
    atoms = alloy_cell()
    neutral = collate([structure_graph(arrays_of(atoms, charge=0.0, spin=1.0), 0, CUTOFF)])
    charged = collate([structure_graph(arrays_of(atoms, charge=1.0, spin=2.0), 0, CUTOFF)])
    assert not torch.allclose(model(neutral, forces=False)["energy"], model(charged, forces=False)["energy"])


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unique"):
        MultiHeadPaiNN(ModelConfig(), [HeadConfig("a"), HeadConfig("a")])
    with pytest.raises(ValueError, match="energy head has target"):
        HeadConfig("x", target="gap")
    with pytest.raises(ValueError, match="cutoff must be positive"):
        ModelConfig(cutoff=0)
