"""Model and head descriptions: small dataclasses, saved in every checkpoint (a checkpoint alone rebuilds
its model) and loadable from YAML with :func:`gfmkit.config.load_config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """PaiNN encoder and head sizes (reference hyperparameters of the paper: 3 layers, 128 features,
    20 radial functions, 5 Å)."""

    hidden: int = 128
    layers: int = 3
    n_rbf: int = 20
    cutoff: float = 5.0
    max_z: int = 100
    head_hidden: int = 64
    conditioning: bool = False  # per-structure charge and spin enter the initial scalar features
    direct_forces: bool = False  # forces from an equivariant linear readout of vector features (not conservative)
    # radial basis of the filters: "gaussian" or "bessel" (sin(n pi d / rc) / d, PaiNN's original);
    # see gfmkit.models.radial. A stored config without the key is a model from before the option: LEGACY.
    radial_basis: Literal["gaussian", "bessel"] = "gaussian"
    # initial weights of fresh models: "xavier" (Xavier-uniform weights, zero biases, in every linear
    # layer of encoder and heads) or "torch" (torch's defaults, gfmkit's only choice before the option)
    init: Literal["xavier", "torch"] = "xavier"
    # each head MLP's last layer starts scaled by this (0: a fresh model predicts exactly its fitted
    # references and shift). Only fresh weights depend on it: a stored model loads its own weights.
    # benchmarks/accuracy.py measured 0 and 0.1 against 1 (docs/model.md): smaller is more accurate after
    # 1000 steps and less after 300, so the default stays 1.
    head_init_scale: float = 1.0
    # cutoff that multiplies every filter: "cosine" (PaiNN's, gfmkit's only one before the option) or
    # "polynomial" (DimeNet's envelope, p = 6); see gfmkit.models.radial. Without the key: LEGACY.
    cutoff_fn: Literal["cosine", "polynomial"] = "cosine"
    # fixed factor on each message MLP's output, whose last layer is drawn divided by it: a fresh model is
    # the same function for every value (up to rounding), but under Adam that layer learns message_gain
    # times faster. benchmarks/accuracy.py measured 10 against 1 (docs/model.md). Without the key: LEGACY.
    message_gain: float = 10.0

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "n_rbf", "max_z", "head_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"model {name} must be positive, got {getattr(self, name)}")
        if self.cutoff <= 0:
            raise ValueError(f"model cutoff must be positive, got {self.cutoff}")
        if not self.message_gain > 0 or self.message_gain == float("inf"):
            raise ValueError(f"model message_gain must be positive and finite, got {self.message_gain}")
        if not self.head_init_scale >= 0:
            raise ValueError(f"model head_init_scale must be >= 0, got {self.head_init_scale}")


#: What a stored model config without these keys was built with (the behaviour before the options
#: existed): checkpoints migrate to them, so an old model loads and predicts exactly as before.
LEGACY = {"radial_basis": "bessel", "init": "torch", "cutoff_fn": "cosine", "message_gain": 1.0}


@dataclass
class HeadConfig:
    """One output head: a dataset's energy (forces, stress follow) or a graph-level property.

    ``reference_energies`` are per-element energies (eV) added to the energy head's output; they are
    fitted from the dataset's training split or given as isolated-atom energies. ``scale`` and
    ``shift`` turn the MLP's per-atom output into eV per atom (energy heads) or property units.
    """

    name: str
    kind: Literal["energy", "property"] = "energy"
    target: str = "energy"
    pooling: Literal["sum", "mean"] = "sum"
    level_of_theory: str = ""
    targets: list[str] = field(default_factory=lambda: ["energy", "forces"])
    reference_energies: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    shift: float = 0.0
    # element fractions (symbol -> share of atoms) of the training data, for the training-free head
    # weights (gfmkit.models.weighting); empty: unknown (older checkpoints), the reference elements are used
    composition: dict[str, float] = field(default_factory=dict)
    # which weight block of the stacked heads holds this head's MLP: 0 the model's own heads, k the k-th
    # group of heads added by fine-tuning (gfmkit.finetune); added blocks never change the others' values
    block: int = 0
    # the head reads the encoder with its LoRA adapters (gfmkit.models.adapters); the other heads never do
    adapted: bool = False

    def training_composition(self) -> dict[str, float]:
        """Element shares of the head's training data: :attr:`composition`, or (older checkpoints, which
        lack it) the reference elements, equally; empty when neither is known."""
        return dict(self.composition) or {symbol: 1.0 for symbol in self.reference_energies}

    def __post_init__(self) -> None:
        if self.block < 0:
            raise ValueError(f"head {self.name!r}: block must be >= 0, got {self.block}")
        if self.kind == "energy" and (self.target != "energy" or self.pooling != "sum"):
            raise ValueError(f"head {self.name!r}: an energy head has target 'energy' and sum pooling")
        if self.scale <= 0:
            raise ValueError(f"head {self.name!r}: scale must be positive, got {self.scale}")
