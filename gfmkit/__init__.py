"""gfmkit: train, tune, test and use multi-task atomistic graph foundation models, from a notebook."""

from __future__ import annotations

import importlib
from typing import Any

from gfmkit._version import __version__

__all__ = ["__version__", "compare_precisions", "finetune", "load_model"]

# Lazy, so that `import gfmkit` (and the CLI's start-up) does not import torch: name -> its module.
_LAZY = {
    "load_model": "gfmkit.models",  # a checkpoint as a model (calculator, predict, evaluation)
    "compare_precisions": "gfmkit.precision",  # one model in fp64, fp32, bf16: errors, deviation, speed, memory
    "finetune": "gfmkit.train.finetune",  # add a head for new data to a pretrained model, keep every head
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gfmkit' has no attribute {name!r}")
