"""Output heads, stacked: every head's MLP runs on every atom in one matmul, and each structure reads
its own head's column (``[arange, head]``), so routing has no Python loop over heads and one forward
also yields every head's prediction (encoder reuse for multi-head inference).

Heads added by fine-tuning sit in their own weight blocks (:class:`HeadBlock`), so the values of the
heads a model had stay bit for bit what they were.

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


class HeadBlock(nn.Module):
    """The MLP weights of ``n`` heads of ``hidden -> head_hidden -> 1``, stacked into one matmul."""

    def __init__(self, n: int, hidden: int, head_hidden: int):
        super().__init__()
        self.n, self.head_hidden = n, head_hidden
        self.w1 = nn.Parameter(torch.empty(hidden, n * head_hidden))
        self.b1 = nn.Parameter(torch.zeros(n * head_hidden))
        self.w2 = nn.Parameter(torch.empty(n, head_hidden))
        self.b2 = nn.Parameter(torch.zeros(n))
        bound1, bound2 = 1 / math.sqrt(hidden), 1 / math.sqrt(head_hidden)
        nn.init.uniform_(self.w1, -bound1, bound1)
        nn.init.uniform_(self.w2, -bound2, bound2)

    @torch.no_grad()
    def xavier_(self) -> None:
        """Xavier-uniform weights of each head's two layers (the fans of one head: hidden -> head_hidden
        -> 1), zero biases."""
        for weight, fans in ((self.w1, self.w1.shape[0] + self.head_hidden), (self.w2, self.head_hidden + 1)):
            bound = math.sqrt(6.0 / fans)
            nn.init.uniform_(weight, -bound, bound)
        self.b1.zero_()
        self.b2.zero_()

    def mlp(self, s: torch.Tensor) -> torch.Tensor:
        """(N, n) raw MLP outputs, in ``s``'s dtype."""
        x = s if s.dtype == self.w1.dtype or torch.is_autocast_enabled() else s.to(self.w1.dtype)
        h = torch.nn.functional.silu(x @ self.w1 + self.b1).view(len(s), len(self.b2), self.head_hidden)
        return (h * self.w2.to(h.dtype)).sum(-1).to(s.dtype) + self.b2.to(s.dtype)

    def head(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of head ``k``'s (w1, b1, w2, b2) in this block."""
        cols = slice(k * self.head_hidden, (k + 1) * self.head_hidden)
        return self.w1[:, cols], self.b1[cols], self.w2[k], self.b2[k]


class StackedHeads(nn.Module):
    """Every head's MLP on every atom; output (N, n) per-atom values.

    The weights sit in blocks (:attr:`HeadConfig.block`): block 0, the model's own heads, holds its
    parameters directly (``w1``, ``b1``, ``w2``, ``b2``); heads added later by fine-tuning sit in
    ``added`` blocks, each its own matmul, so adding heads leaves the others' values bit for bit as they
    were (one wider matmul could round differently). Each block may read its own scalar features (the
    LoRA-adapted encoder's, :mod:`gfmkit.models.adapters`).
    """

    def __init__(self, heads: list[HeadConfig], hidden: int, head_hidden: int, max_z: int):
        super().__init__()
        n = len(heads)
        if n == 0:
            raise ValueError("a model needs at least one head")
        blocks = [h.block for h in heads]
        sizes = [blocks.count(b) for b in range(max(blocks) + 1)]
        if blocks != sorted(blocks) or not all(sizes):
            raise ValueError(f"head blocks must run 0, 1, ... in head order, got {blocks}")
        self.n, self.head_hidden, self.sizes = n, head_hidden, sizes
        own = HeadBlock(sizes[0], hidden, head_hidden)  # block 0's parameters keep their names: readout.w1, ...
        self.w1, self.b1, self.w2, self.b2 = own.w1, own.b1, own.w2, own.b2
        self.added = nn.ModuleList(HeadBlock(size, hidden, head_hidden) for size in sizes[1:])
        self.register_buffer("reference", torch.zeros(n, max_z + 1, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n, dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("is_energy", torch.tensor([h.kind == "energy" for h in heads]))
        self.register_buffer("is_mean", torch.tensor([h.pooling == "mean" for h in heads]))

    def blocks(self) -> list[nn.Module]:
        """Every block in head order (block 0 is this module: its parameters are ``w1``, ``b1``, ...)."""
        return [self, *self.added]

    @torch.no_grad()
    def xavier_(self) -> None:
        """Xavier-uniform weights of every block (see :meth:`HeadBlock.xavier_`), zero biases."""
        for block in self.blocks():
            HeadBlock.xavier_(block)

    @torch.no_grad()
    def scale_last_(self, factor: float) -> None:
        """Scale weights and bias of every head MLP's last layer by ``factor`` (``ModelConfig.head_init_scale``;
        0: per-atom outputs start at exactly 0, so the heads predict their fitted references and shift)."""
        for block in self.blocks():
            block.w2.mul_(factor)
            block.b2.mul_(factor)

    def head(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of the (w1, b1, w2, b2) of head ``k`` (model order), whichever block holds it."""
        for block, size in zip(self.blocks(), self.sizes):
            if k < size:
                return HeadBlock.head(block, k)
            k -= size
        raise IndexError("head index out of range")

    def per_atom(self, s: torch.Tensor | list[torch.Tensor | None], z: torch.Tensor) -> torch.Tensor:
        """(N, n): every head's per-atom contribution, in the features' dtype (references included).
        ``s``: the scalar features, or one per block (None: that block is not needed, its columns are 0)."""
        inputs = s if isinstance(s, list) else [s] * len(self.sizes)
        given = next(x for x in inputs if x is not None)
        parts = [HeadBlock.mlp(block, x) if x is not None else given.new_zeros(len(given), size)
                 for block, size, x in zip(self.blocks(), self.sizes, inputs)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        dtype = given.dtype
        out = out * self.scale.to(dtype) + self.shift.to(dtype)
        # reference energies: (N, n) gathered by atomic number, only for energy heads
        return out + self.reference.to(dtype).index_select(1, z).T

    def _apply(self, fn, recurse=True):
        # Keep fitted statistics in float64 on whatever device the module moves to.
        kept = {name: getattr(self, name).clone() for name in _SENSITIVE}
        super()._apply(fn, recurse)
        for name, value in kept.items():
            moved = getattr(self, name)
            setattr(self, name, value.to(device=moved.device, dtype=torch.float64))
        return self
