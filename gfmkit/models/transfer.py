"""Start a model from a trained one (fine-tuning): the shared encoder, and each head from a chosen
pretrained head or freshly initialised.

A new dataset usually starts best from the head of the most similar pretraining dataset (same level of
theory, related chemistry); a dataset the pretrained model already had keeps its own head by default.
Fitted statistics (per-element reference energies, scale, shift) always stay the new model's: they
are fitted on the fine-tuning data, so a head moved to another level of theory gets that theory's
references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gfmkit.models.multihead import MultiHeadPaiNN


def head_sources(heads: Sequence[str], pretrained: Sequence[str], chosen: Mapping[str, str]) -> dict[str, str | None]:
    """For every new head, the pretrained head that initialises it: ``chosen[head]`` if given, else the
    pretrained head of the same name, else None (fresh weights)."""
    unknown = sorted(set(chosen) - set(heads))
    if unknown:
        raise ValueError(f"init.heads names {unknown}, which are not datasets of this run ({list(heads)})")
    missing = sorted({source for source in chosen.values() if source not in pretrained})
    if missing:
        raise ValueError(f"init.heads maps to {missing}, which the pretrained model lacks (its heads: {list(pretrained)})")
    return {name: chosen.get(name, name if name in pretrained else None) for name in heads}


@torch.no_grad()
def transfer_weights(model: MultiHeadPaiNN, source: MultiHeadPaiNN, sources: Mapping[str, str | None]) -> None:
    """Copy ``source``'s encoder into ``model``, and the MLP weights of head ``sources[name]`` of
    ``source`` into each head ``name`` of ``model`` that has one (also its direct-force row)."""
    if model.config != source.config:
        raise ValueError(f"model configs differ: {model.config} vs the pretrained {source.config}")
    model.encoder.load_state_dict(source.encoder.state_dict())
    width = model.readout.head_hidden
    for k, head in enumerate(model.heads):
        name = sources.get(head.name)
        if name is None:
            continue
        j = source.head_index(name)
        if source.heads[j].kind != head.kind:
            raise ValueError(f"head {head.name!r} ({head.kind}) cannot start from pretrained head {name!r} "
                             f"({source.heads[j].kind})")
        new, old = slice(k * width, (k + 1) * width), slice(j * width, (j + 1) * width)
        model.readout.w1[:, new] = source.readout.w1[:, old]
        model.readout.b1[new] = source.readout.b1[old]
        model.readout.w2[k] = source.readout.w2[j]
        model.readout.b2[k] = source.readout.b2[j]
        if model.direct is not None:
            model.direct.weight[k] = source.direct.weight[j]
