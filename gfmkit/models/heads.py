"""Output heads, stacked: every head's MLP runs on every atom in one matmul, and each structure reads
its own head's column (``[arange, head]``), so routing has no Python loop over heads and one forward
also yields every head's prediction (encoder reuse for multi-head inference).

Per head: an MLP on scalar features gives a per-atom output; ``scale * out + shift`` (+ per-element
reference energies for energy heads) is summed (energy) or averaged (``mean`` property heads) per
structure. References, scale and shift are fitted from data (not learned) and kept in float64
whatever the parameters' dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gfmkit.models.config import HeadConfig

_SENSITIVE = ("reference", "scale", "shift")


class StackedHeads(nn.Module):
    """``n`` heads of ``hidden -> head_hidden -> 1``; output (N, n) per-atom values."""

    def __init__(self, heads: list[HeadConfig], hidden: int, head_hidden: int, max_z: int):
        super().__init__()
        n = len(heads)
        if n == 0:
            raise ValueError("a model needs at least one head")
        self.n, self.head_hidden = n, head_hidden
        self.w1 = nn.Parameter(torch.empty(hidden, n * head_hidden))
        self.b1 = nn.Parameter(torch.zeros(n * head_hidden))
        self.w2 = nn.Parameter(torch.empty(n, head_hidden))
        self.b2 = nn.Parameter(torch.zeros(n))
        bound1, bound2 = 1 / math.sqrt(hidden), 1 / math.sqrt(head_hidden)
        nn.init.uniform_(self.w1, -bound1, bound1)
        nn.init.uniform_(self.w2, -bound2, bound2)
        self.register_buffer("reference", torch.zeros(n, max_z + 1, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n, dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("is_energy", torch.tensor([h.kind == "energy" for h in heads]))
        self.register_buffer("is_mean", torch.tensor([h.pooling == "mean" for h in heads]))

    @torch.no_grad()
    def xavier_(self) -> None:
        """Xavier-uniform weights of each head's two layers (the fans of one head: hidden -> head_hidden
        -> 1), zero biases."""
        for weight, fans in ((self.w1, self.w1.shape[0] + self.head_hidden), (self.w2, self.head_hidden + 1)):
            bound = math.sqrt(6.0 / fans)
            nn.init.uniform_(weight, -bound, bound)
        self.b1.zero_()
        self.b2.zero_()

    def per_atom(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(N, n): every head's per-atom contribution, in ``s``'s dtype (references included)."""
        weight = self.w1
        x = s if s.dtype == weight.dtype or torch.is_autocast_enabled() else s.to(weight.dtype)
        h = torch.nn.functional.silu(x @ self.w1 + self.b1).view(len(s), self.n, self.head_hidden)
        out = (h * self.w2.to(h.dtype)).sum(-1).to(s.dtype) + self.b2.to(s.dtype)
        out = out * self.scale.to(s.dtype) + self.shift.to(s.dtype)
        # reference energies: (N, n) gathered by atomic number, only for energy heads
        return out + self.reference.to(s.dtype).index_select(1, z).T

    def _apply(self, fn, recurse=True):
        # Keep fitted statistics in float64 on whatever device the module moves to.
        kept = {name: getattr(self, name).clone() for name in _SENSITIVE}
        super()._apply(fn, recurse)
        for name, value in kept.items():
            moved = getattr(self, name)
            setattr(self, name, value.to(device=moved.device, dtype=torch.float64))
        return self
