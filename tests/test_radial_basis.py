"""Radial bases and initialisation as model options (issue #15): the bases' values, the options
recorded in checkpoints, and checkpoints from before the options loading and predicting as before."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from model_checks import a_molecule, alloy_cell, batch_of

from gfmkit.config import ConfigError, load_config
from gfmkit.models import (
    HeadConfig,
    ModelConfig,
    MultiHeadPaiNN,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from gfmkit.models.config import LEGACY
from gfmkit.models.radial import GaussianBasis, SineBasis, radial_basis

#: Written by gfmkit at commit 048b15b (before ``radial_basis`` and ``init`` existed): a float64 model
#: (8 features, 2 layers, 6 radial functions, 4 Å) and its energies, forces and stress on
#: ``batch_of(alloy_cell(0), a_molecule())``, under the checkpoint's extra key ``predictions``.
LEGACY_CHECKPOINT = Path(__file__).parent / "data" / "legacy_checkpoint_schema1.pt"


def test_gaussian_basis_is_evenly_spaced_gaussians_of_the_spacing_width():
    basis = GaussianBasis(5, 4.0)
    d = torch.tensor([0.0, 1.0, 2.5, 4.0, 7.0], dtype=torch.float64)
    values = basis(d)
    assert values.shape == (5, 5) and values.dtype == torch.float64
    # centres 0, 1, 2, 3, 4 and width 1: exp(-(d - mu)^2 / 2)
    expected = torch.exp(-0.5 * (d[:, None] - torch.arange(5.0, dtype=torch.float64)) ** 2)
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-15)
    assert torch.equal(torch.diagonal(values[[0, 1, 3]][:, [0, 1, 4]]), torch.ones(3, dtype=torch.float64))
    assert bool((values > 0).all() and (values <= 1).all())  # bounded, also at d -> 0 (sin(x)/d is not)
    assert basis(d.float()).dtype == torch.float32


def test_bessel_basis_is_sine_over_distance_and_the_factory_names_both():
    d = torch.tensor([0.7, 1.9, 3.3], dtype=torch.float64)
    values = SineBasis(4, 5.0)(d)
    n = torch.arange(1, 5, dtype=torch.float64)
    torch.testing.assert_close(values, torch.sin(n * math.pi * d[:, None] / 5.0) / d[:, None], rtol=0, atol=1e-15)
    assert isinstance(radial_basis("bessel", 4, 5.0), SineBasis)
    assert isinstance(radial_basis("gaussian", 4, 5.0), GaussianBasis)
    with pytest.raises(ValueError, match="unknown radial basis"):
        radial_basis("chebyshev", 4, 5.0)


def test_model_options_are_recorded_validated_and_change_the_model():
    config = ModelConfig()
    assert (config.radial_basis, config.init) == ("gaussian", "xavier")  # the measured defaults
    with pytest.raises(ConfigError, match="radial_basis"):
        load_config(ModelConfig, {"radial_basis": "sine"})
    heads = [HeadConfig("a")]
    small = {"hidden": 8, "layers": 1, "n_rbf": 4, "cutoff": 4.0, "head_hidden": 4}
    models = {}
    for basis in ("gaussian", "bessel"):
        torch.manual_seed(0)
        models[basis] = MultiHeadPaiNN(ModelConfig(**small, radial_basis=basis, init="torch"), heads).double()
        assert isinstance(models[basis].encoder.basis, GaussianBasis if basis == "gaussian" else SineBasis)
    # same weights (same seed, same initialisation), different basis: different energies
    batch = batch_of(alloy_cell(0))
    e = {k: m(batch, forces=False)["energy"] for k, m in models.items()}
    assert not torch.allclose(e["gaussian"], e["bessel"])


def test_xavier_initialisation_zero_biases_and_fan_bounds():
    torch.manual_seed(0)
    model = MultiHeadPaiNN(ModelConfig(hidden=16, layers=2, n_rbf=8, head_hidden=8, init="xavier", direct_forces=True),
                           [HeadConfig("a"), HeadConfig("b")])
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 + 3 * 2 * 2 - 2  # filters; per layer message (2), update_uv (1), update (2)
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert float(layer.weight.abs().max()) <= bound and float(layer.weight.abs().max()) > 0.8 * bound
        if layer.bias is not None:
            assert not layer.bias.any()
    readout = model.readout
    assert not readout.b1.any() and not readout.b2.any()
    assert float(readout.w1.abs().max()) <= math.sqrt(6 / (16 + 8))
    assert float(readout.w2.abs().max()) <= math.sqrt(6 / (8 + 1))
    # torch's default: non-zero biases, Kaiming-uniform bounds 1/sqrt(fan_in) on the filter layer
    torch.manual_seed(0)
    default = MultiHeadPaiNN(ModelConfig(hidden=16, layers=2, n_rbf=8, head_hidden=8, init="torch"), [HeadConfig("a")])
    assert default.encoder.filters.bias.abs().sum() > 0
    assert float(default.encoder.filters.weight.abs().max()) <= 1 / math.sqrt(8)


def test_checkpoint_from_before_the_options_loads_and_predicts_exactly_as_before(tmp_path):
    data = torch.load(LEGACY_CHECKPOINT, weights_only=True)
    assert data["schema_version"] == 1 and "radial_basis" not in data["config"] and "init" not in data["config"]
    model = load_model(LEGACY_CHECKPOINT)
    assert model.config.radial_basis == LEGACY["radial_basis"] == "bessel"
    assert model.config.init == LEGACY["init"] == "torch"
    assert isinstance(model.encoder.basis, SineBasis)
    out = model(batch_of(alloy_cell(0), a_molecule()), forces=True, stress=True)
    for key, expected in data["predictions"].items():
        assert torch.equal(out[key], expected), key  # bit for bit: same basis, same weights
    # saved again, it is a current checkpoint that records the options explicitly
    again = tmp_path / "again.pt"
    save_checkpoint(model, again)
    stored = torch.load(again, weights_only=True)
    assert stored["schema_version"] == 2 and stored["config"]["radial_basis"] == "bessel"
    assert torch.equal(load_model(again)(batch_of(alloy_cell(0)), forces=True)["forces"],
                       model(batch_of(alloy_cell(0)), forces=True)["forces"])


def test_new_checkpoints_keep_their_basis_through_the_migration(tmp_path):
    torch.manual_seed(1)
    model = MultiHeadPaiNN(ModelConfig(hidden=8, layers=1, n_rbf=4, cutoff=4.0, head_hidden=4), [HeadConfig("a")]).double()
    path = save_checkpoint(model, tmp_path / "new.pt")
    assert read_checkpoint(path)["config"]["radial_basis"] == "gaussian"
    batch = batch_of(alloy_cell(2))
    assert torch.equal(load_model(path)(batch, forces=True)["forces"], model(batch, forces=True)["forces"])
    # a schema-1 file that already names a basis keeps it (the migration only fills what is missing)
    data = torch.load(path, weights_only=True)
    torch.save({**data, "schema_version": 1}, tmp_path / "named.pt")
    assert load_model(tmp_path / "named.pt").config.radial_basis == "gaussian"
