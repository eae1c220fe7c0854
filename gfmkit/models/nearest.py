"""Which pretrained head a new head starts from: a named one, or the one whose training composition is
closest to the new data (``nearest``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase.data import atomic_numbers

from gfmkit.models.config import HeadConfig
from gfmkit.models.transfer import check_head_mapping


def composition_distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Total variation distance (0 to 1) between two element-fraction mappings (symbol -> share)."""
    def vector(shares: Mapping[str, float]) -> np.ndarray:
        v = np.zeros(max(atomic_numbers.values()) + 1)
        for symbol, share in shares.items():
            v[atomic_numbers[symbol]] = share
        return v / v.sum() if v.sum() > 0 else v

    return 0.5 * float(np.abs(vector(a) - vector(b)).sum())


def nearest_head(new: HeadConfig, pretrained: Sequence[HeadConfig]) -> str | None:
    """The pretrained head of ``new``'s kind (and, for a property, its target where one has it) whose
    training composition is closest to ``new.composition``; None when no head is of its kind."""
    candidates = [h for h in pretrained if h.kind == new.kind]
    if new.kind == "property" and any(h.target == new.target for h in candidates):
        candidates = [h for h in candidates if h.target == new.target]
    if not candidates:
        return None
    distances = [composition_distance(new.composition, h.training_composition()) for h in candidates]
    return candidates[int(np.argmin(distances))].name


def choose_sources(new: Sequence[HeadConfig], pretrained: Sequence[HeadConfig], from_head: Any) -> dict[str, str | None]:
    """The pretrained head each new head starts from: ``from_head`` a head name (every new head from it),
    ``"nearest"`` (per new head, :func:`nearest_head`), None / ``"none"`` (fresh weights), or a mapping of
    new head names to pretrained heads (the others: nearest)."""
    names = [h.name for h in pretrained]
    if isinstance(from_head, Mapping):
        check_head_mapping("from_head", from_head, [h.name for h in new], names, "new heads of this fine-tune")
        return {h.name: from_head[h.name] if h.name in from_head else nearest_head(h, pretrained) for h in new}
    if from_head is None or from_head == "none":
        return {h.name: None for h in new}
    if from_head == "nearest":
        return {h.name: nearest_head(h, pretrained) for h in new}
    if from_head not in names:
        raise ValueError(f"--from-head {from_head!r}: the pretrained model has no such head (heads: {names}; "
                         "or 'nearest', 'none')")
    return {h.name: from_head for h in new}
