"""gfmkit: train, tune, test and use multi-task atomistic graph foundation models, from a notebook."""

from __future__ import annotations

from typing import Any

from gfmkit._version import __version__

__all__ = ["__version__", "compare_precisions", "load_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import gfmkit` (and the CLI's start-up) does not import torch.
    if name == "load_model":
        from gfmkit.models import load_model

        return load_model
    if name == "compare_precisions":  # one model in fp64, fp32, bf16: errors, deviation, speed, memory
        from gfmkit.precision import compare_precisions

        return compare_precisions
    raise AttributeError(f"module 'gfmkit' has no attribute {name!r}")
