"""LoRA adapters (Hu et al., ICLR 2022) on the encoder's linear maps, serving only the heads that ask.

Each adapted map ``W`` (out x in) gains a rank-``r`` update: ``y = W x + b + (alpha / r) B (A x)``, with
``A`` (r x in) drawn at random and ``B`` (out x r) zero, so a fresh adapter changes nothing. Adapters
cover every linear map of the message and update blocks (and the charge/spin MLP of conditioned
models); the radial filters, read as one fused weight, and the embedding stay shared.

Design: the adapted encoder serves only the heads marked :attr:`HeadConfig.adapted` (the heads a LoRA
fine-tune added). :meth:`MultiHeadPaiNN.head_pass` runs the plain encoder for every other head and a
second, adapted pass for those heads, so every pretrained head's predictions stay bit for bit what
they were. The adapters act through forward hooks on the encoder's own ``nn.Linear`` modules, active
only inside :meth:`EncoderAdapters.active`; :meth:`EncoderAdapters.merge` folds them into a copy of the
encoder (``W + (alpha / r) B A``) for inference, so the adapted pass costs what a plain pass costs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: encoder linear maps that are never adapted (the filters are read as one fused weight, not called)
SHARED = ("filters",)


class LoRA(nn.Module):
    """The rank-``rank`` update ``(alpha / rank) B A`` of one linear map of shape (n_out, n_in)."""

    def __init__(self, n_out: int, n_in: int, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.a = nn.Parameter(torch.empty(rank, n_in))
        self.b = nn.Parameter(torch.zeros(n_out, rank))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))  # as nn.Linear draws its weight
        self.register_buffer("scaling", torch.tensor(float(alpha) / rank, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) B (A x)`` for inputs ``x`` (..., n_in), never forming the full update."""
        return (x @ self.a.T) @ self.b.T * self.scaling.to(x.dtype)

    def delta(self) -> torch.Tensor:
        """The full weight update ``(alpha / r) B A`` (n_out, n_in)."""
        return (self.b @ self.a) * self.scaling.to(self.a.dtype)


def _key(name: str) -> str:
    return name.replace(".", "_")


def adaptable(encoder: nn.Module) -> dict[str, nn.Linear]:
    """The encoder's linear maps that adapters cover, by module name."""
    return {name: module for name, module in encoder.named_modules()
            if isinstance(module, nn.Linear) and name.split(".")[0] not in SHARED}


class EncoderAdapters(nn.Module):
    """One :class:`LoRA` per adaptable linear map of ``encoder`` (``layers[<name with _>]``)."""

    def __init__(self, encoder: nn.Module, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        targets = adaptable(encoder)
        self.layers = nn.ModuleDict({_key(name): LoRA(m.out_features, m.in_features, rank, alpha)
                                     for name, m in targets.items()})
        self.rank = rank
        self._active = False
        self._handles: list[Any] = []
        self.__dict__["merged"] = None  # a plain attribute: never saved; moved with the model (_apply)
        self._attach(targets)

    @classmethod
    def from_state_dict(cls, encoder: nn.Module, state: Any, prefix: str = "adapters.") -> EncoderAdapters:
        """Adapters shaped as a saved ``state`` (rank from the ``A`` matrices; the weights load afterwards)."""
        ranks = {v.shape[0] for k, v in state.items() if k.startswith(prefix) and k.endswith(".a")}
        if len(ranks) != 1:
            raise ValueError(f"saved adapters have ranks {sorted(ranks)}; expected one")
        return cls(encoder, rank=ranks.pop())

    def _attach(self, targets: dict[str, nn.Linear]) -> None:
        for name, module in targets.items():
            self._handles.append(module.register_forward_hook(self._hook(_key(name))))

    def _hook(self, key: str):
        def add_update(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not self._active:
                return None
            return output + self.layers[key](args[0]).to(output.dtype)

        return add_update

    def detach(self) -> None:
        """Remove the hooks from the encoder (when the adapters are taken off the model)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within this block the encoder's adapted maps add their low-rank updates."""
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def merged_state(self, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """``encoder``'s state dict with every adapted weight replaced by ``W + (alpha / r) B A``."""
        state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        for name in adaptable(encoder):
            state[f"{name}.weight"] += self.layers[_key(name)].delta().detach().to(state[f"{name}.weight"].dtype)
        return state

    @torch.no_grad()
    def merge(self, encoder: nn.Module, fresh: nn.Module) -> nn.Module:
        """Fold the adapters into ``fresh`` (an encoder shaped like ``encoder``), keep it as the adapted
        encoder and return it; :meth:`unmerge` goes back to the hooks (needed before training further)."""
        weight = next(encoder.parameters())
        fresh.to(device=weight.device, dtype=weight.dtype)  # before loading: no rounding through float32
        fresh.load_state_dict(self.merged_state(encoder))
        fresh.requires_grad_(False)
        self.__dict__["merged"] = fresh
        return fresh

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.merged is not None:  # .to(dtype/device) of the model moves the merged encoder too
            self.merged._apply(fn, recurse)
        return self

    def unmerge(self) -> None:
        """Drop the merged encoder: the adapted pass uses the hooks again."""
        self.__dict__["merged"] = None
