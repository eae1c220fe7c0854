"""Models: a multi-head PaiNN (shared encoder, one head per dataset), checkpoints, ASE calculator."""

from __future__ import annotations

from gfmkit.models.adapters import EncoderAdapters
from gfmkit.models.checkpoint import (
    CheckpointError,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from gfmkit.models.config import HeadConfig, ModelConfig
from gfmkit.models.gate import HeadGate, fit_head_gate
from gfmkit.models.multihead import MultiHeadPaiNN
from gfmkit.models.predict import Prediction, predict
from gfmkit.models.statistics import heads_from_stores
from gfmkit.models.transfer import add_heads
from gfmkit.models.weighting import set_head_compositions


def build_model(config: ModelConfig, stores, *, split: str = "train", comm=None) -> MultiHeadPaiNN:
    """A model with one head per dataset of ``stores`` (a MultiStore), in registry order, with
    reference energies, scale and shift fitted on each dataset's ``split``; with ``comm``, ``stores``
    are this rank's shards and the statistics are reduced over the ranks."""
    return MultiHeadPaiNN(config, heads_from_stores(stores, max_z=config.max_z, split=split, comm=comm))


__all__ = [
    "CheckpointError",
    "EncoderAdapters",
    "HeadConfig",
    "HeadGate",
    "ModelConfig",
    "MultiHeadPaiNN",
    "Prediction",
    "add_heads",
    "build_model",
    "fit_head_gate",
    "heads_from_stores",
    "load_model",
    "predict",
    "read_checkpoint",
    "save_checkpoint",
    "set_head_compositions",
]
