"""Start a model from a trained one (fine-tuning): the shared encoder, and each head from a chosen
pretrained head or freshly initialised.

A new dataset usually starts best from the head of the most similar pretraining dataset (same level of
theory, related chemistry); a dataset the pretrained model already had keeps its own head by default.
Fitted statistics (per-element reference energies, scale, shift) always stay the new model's: they
are fitted on the fine-tuning data, so a head moved to another level of theory gets that theory's
references.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from gfmkit.models.config import HeadConfig
from gfmkit.models.multihead import MultiHeadPaiNN


def check_head_mapping(what: str, chosen: Mapping[str, str], heads: Sequence[str], pretrained: Sequence[str],
                       heads_are: str) -> None:
    """Raise a ValueError naming ``what`` when ``chosen`` (new head -> pretrained head) names a head that is
    not one of ``heads`` (which are ``heads_are``) or maps to one the pretrained model lacks."""
    unknown = sorted(set(chosen) - set(heads))
    if unknown:
        raise ValueError(f"{what} names {unknown}, which are not {heads_are} ({list(heads)})")
    missing = sorted({source for source in chosen.values() if source not in pretrained})
    if missing:
        raise ValueError(f"{what} maps to {missing}, which the pretrained model lacks (its heads: {list(pretrained)})")


def head_sources(heads: Sequence[str], pretrained: Sequence[str], chosen: Mapping[str, str]) -> dict[str, str | None]:
    """For every new head, the pretrained head that initialises it: ``chosen[head]`` if given, else the
    pretrained head of the same name, else None (fresh weights)."""
    check_head_mapping("init.heads", chosen, heads, pretrained, "datasets of this run")
    return {name: chosen.get(name, name if name in pretrained else None) for name in heads}


@torch.no_grad()
def transfer_weights(model: MultiHeadPaiNN, source: MultiHeadPaiNN, sources: Mapping[str, str | None]) -> None:
    """Copy ``source``'s encoder into ``model``, and the MLP weights of head ``sources[name]`` of
    ``source`` into each head ``name`` of ``model`` that has one (also its direct-force row)."""
    if model.config != source.config:
        raise ValueError(f"model configs differ: {model.config} vs the pretrained {source.config}")
    model.encoder.load_state_dict(source.encoder.state_dict())
    copy_heads(model, source, sources)


@torch.no_grad()
def copy_heads(model: MultiHeadPaiNN, source: MultiHeadPaiNN, sources: Mapping[str, str | None]) -> None:
    """Copy the MLP weights of head ``sources[name]`` of ``source`` into each head ``name`` of ``model``
    that has one (also its direct-force row); the heads' kinds must agree."""
    for k, head in enumerate(model.heads):
        name = sources.get(head.name)
        if name is None:
            continue
        j = source.head_index(name)
        if source.heads[j].kind != head.kind:
            raise ValueError(f"head {head.name!r} ({head.kind}) cannot start from pretrained head {name!r} "
                             f"({source.heads[j].kind})")
        for new, old in zip(model.readout.head(k), source.readout.head(j)):
            new.copy_(old)
        if model.direct is not None:
            model.direct.weight[k] = source.direct.weight[j]


@torch.no_grad()
def add_heads(model: MultiHeadPaiNN, heads: Sequence[HeadConfig], *, adapted: bool = False,
              sources: Mapping[str, str | None] | None = None) -> MultiHeadPaiNN:
    """A new model: ``model``'s encoder, adapters and every head as they are, plus ``heads`` (fitted
    statistics included) in a new weight block, each started from pretrained head ``sources[name]``
    (None: fresh weights). ``adapted``: the new heads read the LoRA-adapted encoder. Every existing
    head predicts bit for bit what it did. A head gate is not carried over (it weighs the old heads
    only: refit it with :func:`gfmkit.models.fit_head_gate`)."""
    if model.direct is not None:
        raise ValueError("heads cannot be added to a model with direct forces (its force readout is one matrix)")
    block = max(h.block for h in model.heads) + 1
    added = [dataclasses.replace(h, block=block, adapted=adapted) for h in heads]
    new = MultiHeadPaiNN(model.config, [*model.heads, *added])
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("gate.")}
    fresh = new.state_dict()
    for key in ("reference", "scale", "shift"):  # the old heads' rows as they were, the new ones fitted
        name = f"readout.{key}"
        state[name] = torch.cat([state[name], fresh[name][len(model.heads):]])
    for key in ("is_energy", "is_mean"):
        state[f"readout.{key}"] = fresh[f"readout.{key}"]
    prefix = f"readout.added.{block - 1}."
    state.update({k: v for k, v in fresh.items() if k.startswith(prefix)})
    new = new.to(next(model.parameters()).dtype)
    new.load_state_dict(state)  # rebuilds the LoRA adapters from their saved weights, when there are any
    copy_heads(new, model, {h.name: (sources or {}).get(h.name) for h in added})
    return new.to(model.readout.reference.device)
