"""Radial pieces of PaiNN: a sine (Bessel) basis and a smooth cosine cutoff.

Both take and return the distance's dtype, which gfmkit keeps at float32 or float64 under every
precision policy (no parameters or buffers here that a ``model.to(bfloat16)`` could round).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_cutoff(distance: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi d / rc) + 1) inside the cutoff, 0 outside: value and slope vanish at rc."""
    inside = distance < cutoff
    return torch.where(inside, 0.5 * (torch.cos(distance * (math.pi / cutoff)) + 1.0), torch.zeros_like(distance))


class SineBasis(nn.Module):
    """sin(n pi d / rc) / d for n = 1..N (PaiNN's radial basis)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.n_rbf, self.cutoff = int(n_rbf), float(cutoff)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        n = torch.arange(1, self.n_rbf + 1, device=distance.device, dtype=distance.dtype)
        return torch.sin(distance[:, None] * (n * (math.pi / self.cutoff))) / distance[:, None]
