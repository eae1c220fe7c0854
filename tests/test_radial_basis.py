"""Radial bases, cutoff functions and initialisation as model options (issue #15): the bases' and
cutoffs' values, the options recorded in checkpoints, and checkpoints from before the options loading
and predicting as before."""

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
from gfmkit.models.checkpoint import SCHEMA_VERSION
from gfmkit.models.config import LEGACY
from gfmkit.models.radial import (
    GaussianBasis,
    SineBasis,
    cosine_cutoff,
    cutoff_function,
    polynomial_cutoff,
    radial_basis,
)

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
    assert (config.radial_basis, config.init, config.cutoff_fn) == ("gaussian", "xavier", "cosine")  # measured
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
    gained = {id(block[2]) for block in model.encoder.message}  # stored divided by the message gain
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out)) / (model.config.message_gain if id(layer) in gained else 1.0)
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
    assert model.config.cutoff_fn == LEGACY["cutoff_fn"] == "cosine"
    assert model.config.message_gain == LEGACY["message_gain"] == 1.0
    assert isinstance(model.encoder.basis, SineBasis)
    out = model(batch_of(alloy_cell(0), a_molecule()), forces=True, stress=True)
    for key, expected in data["predictions"].items():
        assert torch.equal(out[key], expected), key  # bit for bit: same basis, same weights
    # saved again, it is a current checkpoint that records the options explicitly
    again = tmp_path / "again.pt"
    save_checkpoint(model, again)
    stored = torch.load(again, weights_only=True)
    assert stored["schema_version"] == SCHEMA_VERSION and stored["config"]["radial_basis"] == "bessel"
    assert stored["config"]["cutoff_fn"] == "cosine"
    assert torch.equal(load_model(again)(batch_of(alloy_cell(0)), forces=True)["forces"],
                       model(batch_of(alloy_cell(0)), forces=True)["forces"])


def test_new_checkpoints_keep_their_basis_through_the_migration(tmp_path):
    torch.manual_seed(1)
    model = MultiHeadPaiNN(ModelConfig(hidden=8, layers=1, n_rbf=4, cutoff=4.0, head_hidden=4, init="xavier"),
                           [HeadConfig("a")]).double()  # init: heads whose outputs are not all 0
    path = save_checkpoint(model, tmp_path / "new.pt")
    assert read_checkpoint(path)["config"]["radial_basis"] == "gaussian"
    batch = batch_of(alloy_cell(2))
    assert torch.equal(load_model(path)(batch, forces=True)["forces"], model(batch, forces=True)["forces"])
    # a schema-1 file that already names a basis keeps it (the migration only fills what is missing)
    data = torch.load(path, weights_only=True)
    torch.save({**data, "schema_version": 1}, tmp_path / "named.pt")
    assert load_model(tmp_path / "named.pt").config.radial_basis == "gaussian"


def test_polynomial_cutoff_is_dimenets_envelope_and_vanishes_smoothly_at_the_cutoff():
    d = torch.tensor([0.0, 1.0, 2.5, 3.9, 4.0, 5.5], dtype=torch.float64, requires_grad=True)
    values = polynomial_cutoff(d, 4.0)
    x = d.detach() / 4.0
    expected = torch.where(x < 1, 1 - 28 * x**6 + 48 * x**7 - 21 * x**8, torch.zeros_like(x))
    torch.testing.assert_close(values.detach(), expected, rtol=0, atol=1e-13)  # cancellation near rc
    assert values[0] == 1 and values[4] == 0 and values[5] == 0
    # the slope is -168 x^5 (1 - x)^2 / rc: with the curvature, it vanishes as d approaches rc
    (slope,) = torch.autograd.grad(values.sum(), d)
    torch.testing.assert_close(slope, torch.where(x < 1, -168 * x**5 * (1 - x) ** 2 / 4.0, 0 * x), rtol=1e-12, atol=1e-14)
    near = torch.tensor([4.0 * (1 - 1e-4)], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(polynomial_cutoff(near, 4.0).sum(), near, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), near)
    assert abs(float(slope)) < 1e-6 and abs(float(curvature)) < 1e-2  # ~ (1 - x)^2 and ~ (1 - x)
    assert polynomial_cutoff(d.detach().float(), 4.0).dtype == torch.float32
    assert cutoff_function("cosine") is cosine_cutoff and cutoff_function("polynomial") is polynomial_cutoff
    with pytest.raises(ValueError, match="unknown cutoff function"):
        cutoff_function("step")
    with pytest.raises(ConfigError, match="cutoff_fn"):
        load_config(ModelConfig, {"cutoff_fn": "smooth"})


def test_cutoff_option_is_recorded_and_changes_the_model(tmp_path):
    heads = [HeadConfig("a")]
    small = {"hidden": 8, "layers": 1, "n_rbf": 4, "cutoff": 4.0, "head_hidden": 4}
    assert ModelConfig().cutoff_fn == "cosine"
    models = {}
    for kind in ("cosine", "polynomial"):
        torch.manual_seed(0)
        models[kind] = MultiHeadPaiNN(ModelConfig(**small, cutoff_fn=kind, init="xavier"), heads).double()
    batch = batch_of(alloy_cell(0))
    assert not torch.allclose(models["cosine"](batch, forces=False)["energy"], models["polynomial"](batch, forces=False)["energy"])
    path = save_checkpoint(models["polynomial"], tmp_path / "poly.pt")
    assert read_checkpoint(path)["config"]["cutoff_fn"] == "polynomial"
    loaded = load_model(path)
    assert loaded.config.cutoff_fn == "polynomial"
    assert torch.equal(loaded(batch, forces=True)["forces"], models["polynomial"](batch, forces=True)["forces"])


def test_schema_2_checkpoint_without_the_cutoff_key_loads_with_the_cosine_cutoff(tmp_path):
    torch.manual_seed(2)
    model = MultiHeadPaiNN(ModelConfig(hidden=8, layers=2, n_rbf=4, cutoff=4.0, head_hidden=4, init="xavier"),
                           [HeadConfig("a")]).double()  # init: heads whose outputs are not all 0
    data = torch.load(save_checkpoint(model, tmp_path / "new.pt"), weights_only=True)
    config = {k: v for k, v in data["config"].items() if k != "cutoff_fn"}
    torch.save({**data, "config": config, "schema_version": 2}, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.config.cutoff_fn == "cosine"
    batch = batch_of(alloy_cell(1), a_molecule())
    expected, got = model(batch, forces=True, stress=True), old(batch, forces=True, stress=True)
    for key in ("energy", "forces", "stress"):
        assert torch.equal(got[key], expected[key]), key
    # a schema-2 file that names a cutoff keeps it
    torch.save({**data, "config": {**config, "cutoff_fn": "polynomial"}, "schema_version": 2}, tmp_path / "named.pt")
    assert load_model(tmp_path / "named.pt").config.cutoff_fn == "polynomial"


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_a_scaled_head_initialisation_scales_only_the_last_layer(scale):
    heads = [HeadConfig("a", reference_energies={"H": -1.1, "C": -1.5, "O": -2.0, "Cu": -0.3, "Au": -0.2}, scale=0.7,
                        shift=0.1),
             HeadConfig("b", reference_energies={"Cu": -0.5, "Au": -0.4}, scale=1.3, shift=-0.2)]
    small = {"hidden": 8, "layers": 2, "n_rbf": 4, "cutoff": 4.0, "head_hidden": 4}
    torch.manual_seed(0)
    zero = MultiHeadPaiNN(ModelConfig(**small, head_init_scale=scale), heads)
    torch.manual_seed(0)
    xavier = MultiHeadPaiNN(ModelConfig(**small, init="xavier"), heads)
    # the same draws as scale 1 everywhere, the last layer scaled
    for (name, a), (_, b) in zip(zero.named_parameters(), xavier.named_parameters()):
        assert torch.equal(a, b * scale if name in ("readout.w2", "readout.b2") else b), name
    assert xavier.readout.w2.any()
    if scale:
        return
    zero = zero.double()
    with pytest.raises(ConfigError, match="head_init_scale"):
        load_config(ModelConfig, {"head_init_scale": -1})
    molecule, cell = a_molecule(), alloy_cell(0)
    out = zero(batch_of(molecule, cell, heads=[0, 1]), forces=True, stress=True)
    baseline = [sum(heads[0].reference_energies[s] for s in molecule.get_chemical_symbols()) + 0.1 * len(molecule),
                sum(heads[1].reference_energies[s] for s in cell.get_chemical_symbols()) - 0.2 * len(cell)]
    torch.testing.assert_close(out["energy"], torch.tensor(baseline, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not out["forces"].any() and not out["stress"].any()


def _message_gain_pair(dtype=torch.float64) -> dict[float, MultiHeadPaiNN]:
    small = {"hidden": 8, "layers": 2, "n_rbf": 4, "cutoff": 4.0, "head_hidden": 4}
    models = {}
    for gain in (1.0, 10.0):
        torch.manual_seed(3)
        models[gain] = MultiHeadPaiNN(ModelConfig(**small, message_gain=gain), [HeadConfig("a")]).to(dtype)
    return models


def test_message_gain_keeps_the_fresh_function_and_speeds_up_only_the_message_output_layer():
    assert ModelConfig().message_gain == 10.0 and LEGACY["message_gain"] == 1.0
    models = _message_gain_pair()
    stored = dict(models[10.0].named_parameters())
    for name, p in models[1.0].named_parameters():  # the same draws; the message output layers divided
        divided = name.startswith("encoder.message.") and ".2." in name
        assert torch.equal(stored[name], (p.float() / 10.0).double() if divided else p), name  # drawn in fp32
    with torch.no_grad():  # undo the fp32 rounding of the division, so the comparisons below are tight
        for ours, theirs in zip(models[1.0].encoder.message, models[10.0].encoder.message):
            ours[2].weight.copy_(10.0 * theirs[2].weight)
            ours[2].bias.copy_(10.0 * theirs[2].bias)
    batch = batch_of(alloy_cell(1), a_molecule())
    grads, outs = {}, {}
    for gain, model in models.items():
        out = model(batch, forces=True, stress=True, training=True)
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        grads[gain] = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))
        outs[gain] = out
    for key in ("energy", "forces", "stress"):  # a fresh model is the same function, up to rounding
        torch.testing.assert_close(outs[10.0][key], outs[1.0][key], rtol=1e-10, atol=1e-12)
    assert outs[1.0]["forces"].abs().max() > 1e-3  # messages are not all 0: the check above can fail
    for name, g in grads[1.0].items():  # the chain rule through the gain: that layer's gradient x 10
        factor = 10.0 if name.startswith("encoder.message.") and ".2." in name else 1.0
        torch.testing.assert_close(grads[10.0][name], factor * g, rtol=1e-9, atol=1e-12, msg=name)
    # one Adam step at the same rate moves the gained layer's effective weights (gain x stored) 10x as far
    moved = {}
    for gain, model in models.items():
        weight = model.encoder.message[0][2].weight
        before = gain * weight.detach().clone()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for p in model.parameters():
            p.grad = grads[gain][[n for n, q in model.named_parameters() if q is p][0]]
        optimizer.step()
        moved[gain] = gain * weight.detach() - before
    torch.testing.assert_close(moved[10.0], 10.0 * moved[1.0], rtol=1e-4, atol=1e-9)  # Adam's eps aside
    for bad in (0, -1, float("inf")):
        with pytest.raises(ConfigError, match="message_gain"):
            load_config(ModelConfig, {"message_gain": bad})


def test_schema_3_checkpoint_without_the_message_gain_loads_with_gain_1(tmp_path):
    model = _message_gain_pair()[1.0]
    with torch.no_grad():
        for p in model.parameters():  # trained weights: none of them the fresh draw
            p.add_(0.05 * torch.randn_like(p))
    data = torch.load(save_checkpoint(model, tmp_path / "new.pt"), weights_only=True)
    assert data["config"]["message_gain"] == 1.0
    config = {k: v for k, v in data["config"].items() if k != "message_gain"}
    torch.save({**data, "config": config, "schema_version": 3}, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.config.message_gain == 1.0
    batch = batch_of(alloy_cell(1), a_molecule())
    expected, got = model(batch, forces=True, stress=True), old(batch, forces=True, stress=True)
    for key in ("energy", "forces", "stress"):
        assert torch.equal(got[key], expected[key]), key
    # a schema-3 file that names a gain keeps it (and predicts differently with these weights)
    torch.save({**data, "config": {**config, "message_gain": 10.0}, "schema_version": 3}, tmp_path / "named.pt")
    named = load_model(tmp_path / "named.pt")
    assert named.config.message_gain == 10.0
    assert not torch.allclose(named(batch, forces=False)["energy"], expected["energy"])

