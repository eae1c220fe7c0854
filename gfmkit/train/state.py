"""What a training run carries from step to step, each with a plain-data ``state_dict`` for checkpoints:
the weights AdamW steps on (fp32 masters under bf16-pure), their moving average, the learning-rate
schedule and the RNG states.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from gfmkit.train.config import ScheduleConfig


class Weights:
    """The tensors AdamW steps on, and the model parameters they feed.

    For fp64, fp32 and bf16-autocast they are the model's own parameters. For bf16-pure they are float32
    master copies: bfloat16 keeps 8 significant bits, so an AdamW update below ~1/256 of a weight's
    size rounds away and small learning rates would freeze training. The optimiser steps on the
    masters, which are then rounded into the bfloat16 model (:meth:`push`).
    """

    def __init__(self, model: torch.nn.Module, master_dtype: torch.dtype | None = None):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.model_params = [p for _, p in named]
        self.master = master_dtype is not None
        if self.master:
            self.params = [p.detach().to(master_dtype).clone().requires_grad_(True) for p in self.model_params]
        else:
            self.params = self.model_params

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def named(self) -> dict[str, torch.Tensor]:
        """Name -> the tensor the optimiser updates (what the EMA averages)."""
        return dict(zip(self.names, self.params))

    def flat_gradients(self) -> torch.Tensor:
        """The model's gradients as one flat tensor in the optimiser's dtype (zeros where a parameter
        got none), ready for one all-reduce."""
        return torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(self.dtype) for p in self.model_params
        ])

    def set_gradients(self, flat: torch.Tensor) -> None:
        """Give each optimised tensor its slice of ``flat`` as gradient (and drop the model's)."""
        offset = 0
        for p, q in zip(self.params, self.model_params):
            n = p.numel()
            q.grad = None
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    @torch.no_grad()
    def push(self) -> None:
        """Round the masters into the model (no-op without masters)."""
        if self.master:
            for master, p in zip(self.params, self.model_params):
                p.copy_(master)

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return {name: p.detach().clone() for name, p in self.named().items()} if self.master else None

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor] | None) -> None:
        """Restore the masters (from the model's parameters when ``state`` has none)."""
        if not self.master:
            return
        for name, master, p in zip(self.names, self.params, self.model_params):
            master.copy_(state[name] if state is not None else p)


class EMA:
    """Exponential moving average of named tensors, with the usual warm-up of the decay
    (``min(decay, (1 + n) / (10 + n))`` after n updates), so early averages are not stuck at the init.
    The average keeps the tensors' dtype (float32 masters under bf16-pure)."""

    def __init__(self, weights: Mapping[str, torch.Tensor], decay: float):
        self.decay, self.updates = float(decay), 0
        self.shadow = {name: p.detach().clone() for name, p in weights.items()}

    @torch.no_grad()
    def update(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in weights.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the block with the averaged weights in ``model``; the raw weights come back after."""
        params = {name: p for name, p in model.named_parameters() if name in self.shadow}
        with torch.no_grad():
            backup = {name: p.detach().clone() for name, p in params.items()}
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


class Schedule:
    """Learning rate per step: linear warm-up, then cosine to ``min_lr_ratio`` over ``total_steps``, a
    plateau factor applied after ``patience`` validations without improvement, or constant."""

    def __init__(self, config: ScheduleConfig, base_lr: float, total_steps: int):
        self.config, self.base_lr, self.total_steps = config, base_lr, max(1, total_steps)
        self.plateau_scale, self.best, self.bad = 1.0, math.inf, 0

    def lr(self, step: int) -> float:
        """Learning rate of the step with 0-based index ``step``."""
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            factor = (step + 1) / c.warmup_steps
        elif c.kind == "cosine":
            progress = min(1.0, max(0.0, (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps)))
            factor = c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            factor = 1.0
        return self.base_lr * factor * self.plateau_scale

    def on_validation(self, loss: float) -> bool:
        """Record a validation loss; True when the plateau schedule just lowered the rate."""
        if self.config.kind != "plateau" or not math.isfinite(loss):
            return False
        if loss < self.best * (1 - self.config.threshold):
            self.best, self.bad = loss, 0
            return False
        self.bad += 1
        if self.bad >= self.config.patience:
            self.plateau_scale *= self.config.factor
            self.bad = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plateau_scale, self.best, self.bad = float(state["plateau_scale"]), float(state["best"]), int(state["bad"])


def seed_everything(seed: int) -> None:
    """Seed the torch, numpy and Python global RNGs (what :func:`rng_state` saves)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's torch, numpy and Python RNG states as plain data and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
