"""Radial pieces of PaiNN: the radial bases a model can be built with, and the smooth cutoffs.

``ModelConfig.radial_basis`` picks the basis: ``"gaussian"`` (Gaussians on an even grid from 0 to the
cutoff, each as wide as the grid spacing) or ``"bessel"`` (sin(n pi d / rc) / d, PaiNN's original
basis, and the only one of gfmkit before the option existed: checkpoints whose config lacks the key
load with it). benchmarks/accuracy.py measured the choice of default (see the README's model section).

``ModelConfig.cutoff_fn`` picks the cutoff that multiplies every filter: ``"cosine"`` (PaiNN's, and
gfmkit's only one before the option: checkpoints whose config lacks the key load with it) or
``"polynomial"`` (DimeNet's polynomial envelope with p = 6, value and first two derivatives vanishing
at the cutoff).

Every basis and cutoff takes and returns the distance's dtype, which gfmkit keeps at float32 or float64 under every
precision policy (no parameters or buffers here that a ``model.to(bfloat16)`` could round).
"""

from __future__ import annotations

import math

import torch
from torch import nn

RADIAL_BASES = ("gaussian", "bessel")
CUTOFF_FNS = ("cosine", "polynomial")


def cosine_cutoff(distance: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi d / rc) + 1) inside the cutoff, 0 outside: value and slope vanish at rc."""
    inside = distance < cutoff
    return torch.where(inside, 0.5 * (torch.cos(distance * (math.pi / cutoff)) + 1.0), torch.zeros_like(distance))


def polynomial_cutoff(distance: torch.Tensor, cutoff: float) -> torch.Tensor:
    """DimeNet's envelope (Gasteiger et al. 2020) with p = 6: 1 - 28 x^6 + 48 x^7 - 21 x^8 for x = d / rc
    < 1, 0 outside. Value, slope and curvature vanish at rc; flatter than the cosine at short range."""
    x = distance * (1.0 / cutoff)
    x6 = (x * x * x) ** 2
    inside = distance < cutoff
    return torch.where(inside, 1.0 + x6 * (-28.0 + x * (48.0 - 21.0 * x)), torch.zeros_like(distance))


def cutoff_function(kind: str):
    """The cutoff ``kind`` (one of :data:`CUTOFF_FNS`): a function of (distance, cutoff)."""
    if kind == "cosine":
        return cosine_cutoff
    if kind == "polynomial":
        return polynomial_cutoff
    raise ValueError(f"unknown cutoff function {kind!r}; choose from {', '.join(CUTOFF_FNS)}")


class SineBasis(nn.Module):
    """sin(n pi d / rc) / d for n = 1..N (PaiNN's radial basis; ``radial_basis="bessel"``)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.n_rbf, self.cutoff = int(n_rbf), float(cutoff)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        n = torch.arange(1, self.n_rbf + 1, device=distance.device, dtype=distance.dtype)
        return torch.sin(distance[:, None] * (n * (math.pi / self.cutoff))) / distance[:, None]


class GaussianBasis(nn.Module):
    """exp(-(d - mu_k)^2 / (2 w^2)) for N centres mu_k evenly from 0 to rc, w their spacing
    (``radial_basis="gaussian"``). Bounded in (0, 1] at every distance, unlike sin(x)/d."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.n_rbf, self.cutoff = int(n_rbf), float(cutoff)
        self.width = self.cutoff / max(self.n_rbf - 1, 1)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        centres = torch.linspace(0.0, self.cutoff, self.n_rbf, device=distance.device, dtype=distance.dtype)
        return torch.exp((distance[:, None] - centres) ** 2 * (-0.5 / self.width**2))


def radial_basis(kind: str, n_rbf: int, cutoff: float) -> nn.Module:
    """The basis module ``kind`` (one of :data:`RADIAL_BASES`)."""
    if kind == "gaussian":
        return GaussianBasis(n_rbf, cutoff)
    if kind == "bessel":
        return SineBasis(n_rbf, cutoff)
    raise ValueError(f"unknown radial basis {kind!r}; choose from {', '.join(RADIAL_BASES)}")
