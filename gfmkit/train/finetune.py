"""Everyday fine-tuning: add a head for a new dataset to a foundation model and keep every head it had.

``finetune(checkpoint, data, out)`` fits the new head's statistics on the new data, starts its weights
from a pretrained head (``from_head``: a name, ``"nearest"`` by training composition, or ``"none"``),
trains for ``steps`` steps and writes ``out/model.pt``: every pretrained head plus the new one(s), which
:func:`gfmkit.load_model`, the calculator, evaluation and screening read like any checkpoint.

Strategies (what trains):

* ``head``: the new head only; the encoder is frozen. Every pretrained head predicts bit for bit as
  before (the new head's weights are a block of their own, :class:`gfmkit.models.heads.HeadBlock`).
* ``lora``: LoRA adapters on the encoder's linear maps and the new head. The adapted encoder serves
  the new head only (:mod:`gfmkit.models.adapters`): pretrained heads keep the plain encoder, bit for
  bit. ``model.merge_adapters()`` folds the adapters in for inference.
* ``last-k``: the last ``last_k`` interaction layers of the encoder (message and update blocks) and the
  new head; ``full``: the whole encoder at ``encoder_lr_scale`` (0.1) times the head's rate. Both move
  the shared encoder, so the pretrained heads change: their errors on the pretraining validation sets
  are measured before and after (``forgetting``), and ``replay`` (a fraction of every batch drawn from
  the pretraining training sets, whose heads then train too) reduces how much they forget.

A model's head gate (:mod:`gfmkit.models.gate`) weighs the heads it was fitted for only: the fine-tuned
checkpoint has none (refit it with :func:`gfmkit.models.fit_head_gate`). Fine-tuning runs on one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from gfmkit import keys
from gfmkit.comm import world
from gfmkit.data.graphs import GraphDataset, collate
from gfmkit.data.multi import DatasetRegistry, MultiStore, open_stores
from gfmkit.files import atomic_write_text
from gfmkit.models import load_model, save_checkpoint
from gfmkit.models.adapters import EncoderAdapters
from gfmkit.models.multihead import MultiHeadPaiNN
from gfmkit.models.nearest import choose_sources
from gfmkit.models.statistics import heads_from_stores
from gfmkit.models.transfer import add_heads
from gfmkit.models.weighting import set_head_compositions
from gfmkit.outputs import check_folder_files
from gfmkit.progress import progress_bar
from gfmkit.train.config import LossConfig, ScheduleConfig
from gfmkit.train.loss import HeadTable, combine, loss_parts, wants_stress
from gfmkit.train.state import Schedule

STRATEGIES = ("head", "lora", "last-k", "full")
#: encoder learning-rate factor of each strategy when none is given
ENCODER_LR_SCALE = {"last-k": 1.0, "full": 0.1}
MODEL, SETTINGS, HISTORY, TEST, FORGETTING = "model.pt", "finetuned.json", "history.csv", "test.csv", "forgetting.csv"
FILES = (MODEL, SETTINGS, HISTORY, TEST, FORGETTING)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the model, where it was saved, the new heads and where each started,
    the loss per step, the new heads' errors on the downstream ``eval_split`` and the pretrained heads'
    errors before and after on the pretraining validation sets (empty without pretraining data)."""

    model: MultiHeadPaiNN
    checkpoint: Path | None
    heads: list[str]
    sources: dict[str, str | None]
    history: pd.DataFrame
    test: pd.DataFrame
    forgetting: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)


def finetune(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    task: str | None = None,
    strategy: str = "head",
    from_head: str | Mapping[str, str] | None = "nearest",
    steps: int = 200,
    replay: float = 0.0,
    pretrain_data: Sequence[str | os.PathLike] | None = None,
    batch_size: int = 8,
    lr: float = 3e-3,
    encoder_lr_scale: float | None = None,
    last_k: int = 1,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    train_split: str = "train",
    eval_split: str = "test",
    forgetting_split: str = "val",
    max_structures: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``checkpoint`` on the stores ``data`` (one new head per dataset; ``task`` names it when
    there is one dataset) with ``strategy`` (see the module doc) and return a :class:`FinetuneResult`;
    with ``out``, also write ``model.pt``, ``finetuned.json`` and the tables there (files of an earlier
    fine-tune are replaced only with ``overwrite``).

    ``pretrain_data``: the pretraining stores, for ``replay`` and the forgetting table; by default the
    stores of the run the checkpoint comes from (its ``config.yaml``), where they still exist.
    ``from_head``: a pretrained head name, ``"nearest"``, ``"none"``, or a mapping of new head names to
    pretrained heads (the others: nearest). ``max_structures`` caps the structures per dataset of each
    evaluation."""
    settings = _check_arguments(locals())
    if world().size > 1:
        raise ValueError("fine-tuning runs on one process: start it without mpiexec")
    if out is not None:
        check_folder_files(out, FILES, overwrite=overwrite)
    pretrained = load_model(checkpoint)
    dtype = next(pretrained.parameters()).dtype
    downstream = open_stores([data] if isinstance(data, (str, os.PathLike)) else list(data))
    names = list(downstream.registry.names)
    if task is not None and len(names) != 1:
        raise ValueError(f"task names the new head of one dataset; {len(names)} were given ({names})")
    new_names = [task] if task is not None else names
    clash = sorted(set(new_names) & set(pretrained.head_names))
    if clash:
        raise ValueError(f"the model already has head(s) {clash}; name the new head with task=... (--task)")
    if strategy == "lora" and pretrained.adapters is not None:
        raise ValueError("this model already has LoRA adapters (serving its heads "
                         f"{[h.name for h in pretrained.heads if h.adapted]}); fine-tune it with another strategy")
    torch.manual_seed(seed)
    heads = heads_from_stores(downstream, max_z=pretrained.config.max_z, split=train_split)
    set_head_compositions(types.SimpleNamespace(heads=heads, head_names=names, head_index=names.index), downstream,
                          split=train_split)
    heads = [h if h.name == new else _renamed(h, new) for h, new in zip(heads, new_names)]
    sources = choose_sources(heads, pretrained.heads, from_head)
    model = add_heads(pretrained, heads, adapted=strategy == "lora", sources=sources)
    if strategy == "lora":
        model.set_adapters(EncoderAdapters(model.encoder, rank=rank, alpha=alpha).to(dtype))
    # data: each dataset's structures tagged with the index of its head in the new model
    registry = DatasetRegistry([*pretrained.head_names, *names])
    downstream = MultiStore(downstream.stores, registry=registry)
    pretraining = _pretraining_stores(checkpoint, pretrain_data, pretrained.head_names, registry)
    if replay > 0 and pretraining is None:
        raise ValueError("replay needs the pretraining stores: pass pretrain_data (--pretrain-data)")
    history = _train(model, downstream, pretraining if replay > 0 else None, strategy=strategy,
                     steps=steps, replay=replay, batch_size=batch_size, lr=lr, last_k=last_k, seed=seed,
                     encoder_lr_scale=ENCODER_LR_SCALE.get(strategy, 0.0) if encoder_lr_scale is None else encoder_lr_scale,
                     train_split=train_split, progress=progress)
    model.eval()
    test = _new_head_errors(model, downstream, dict(zip(new_names, names)), eval_split, max_structures)
    forgetting = (forgetting_table(pretrained, model, pretraining, split=forgetting_split, max_structures=max_structures,
                                   checkpoint=checkpoint) if pretraining is not None else pd.DataFrame())
    settings.update(checkpoint=str(Path(checkpoint).absolute()), data=[str(Path(s.path).absolute()) for s in downstream.stores],
                    heads=new_names, sources=sources,
                    train_structures={s.name: int(len(s.split_indices(train_split))) for s in downstream.stores},
                    gate_dropped=pretrained.gate is not None,
                    pretrain_data=[str(s.path) for s in pretraining.stores] if pretraining is not None else None)
    path = None
    if out is not None:
        path = _write(Path(out), model, settings, history, test, forgetting)
    return FinetuneResult(model, path, new_names, sources, history, test, forgetting, settings)


def _check_arguments(given: dict[str, Any]) -> dict[str, Any]:
    """The plain-data settings of a :func:`finetune` call, after checking them."""
    if given["strategy"] not in STRATEGIES:
        raise ValueError(f"unknown strategy {given['strategy']!r}; choose from {', '.join(STRATEGIES)}")
    if not 0.0 <= given["replay"] < 1.0:
        raise ValueError(f"replay is the fraction of every batch drawn from pretraining data: in [0, 1), got {given['replay']}")
    if given["replay"] > 0 and given["strategy"] in ("head", "lora"):
        raise ValueError(f"strategy {given['strategy']!r} leaves the pretrained heads as they are: replay is for last-k and full")
    for name in ("steps", "batch_size", "last_k", "rank"):
        if int(given[name]) < 1:
            raise ValueError(f"{name} must be positive, got {given[name]}")
    if isinstance(given["from_head"], Mapping):
        given = {**given, "from_head": dict(given["from_head"])}
    keep = ("task", "strategy", "from_head", "steps", "replay", "batch_size", "lr", "encoder_lr_scale", "last_k",
            "rank", "alpha", "seed", "train_split", "eval_split", "forgetting_split", "max_structures")
    return {k: given[k] for k in keep}


def _renamed(head: Any, name: str) -> Any:
    return dataclasses.replace(head, name=name)


def _pretraining_stores(checkpoint: str | os.PathLike, given: Sequence[str | os.PathLike] | None, heads: list[str],
                        registry: DatasetRegistry) -> MultiStore | None:
    """The pretraining stores (those named, else those of the checkpoint's run directory that still
    exist), restricted to datasets the pretrained model has heads for; None when there are none."""
    if given is not None and not list(given):
        return None
    if given is None:
        config = Path(checkpoint).absolute().parent.parent / "config.yaml"
        if not config.is_file():
            return None
        stores = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("stores", [])
        given = [p for p in stores if Path(p).exists()]
        if not given:
            return None
    opened = open_stores(list(given))
    unknown = sorted(set(opened.registry.names) - set(heads))
    if unknown and len(unknown) == len(opened.registry.names):
        raise ValueError(f"pretraining data {unknown}: the model has no heads of these names (heads: {heads})")
    kept = [s for s in opened.stores if s.name in heads]
    return MultiStore(kept, registry=registry)


def trainable(model: MultiHeadPaiNN, strategy: str, *, last_k: int, replay: bool) -> tuple[list, list]:
    """(encoder parameters, head and adapter parameters) that train under ``strategy``; everything else
    is frozen. The new heads are the model's last weight block."""
    new_block = model.readout.added[-1]
    rest = list(new_block.parameters())
    encoder: list[torch.nn.Parameter] = []
    if strategy == "lora":
        rest += list(model.adapters.parameters())
    elif strategy == "last-k":
        layers = model.encoder.layers
        if not 1 <= last_k <= layers:
            raise ValueError(f"last_k must be in 1..{layers} (the encoder's layers), got {last_k}")
        for layer in range(layers - last_k, layers):
            for blocks in (model.encoder.message, model.encoder.update_uv, model.encoder.update):
                encoder += list(blocks[layer].parameters())
    elif strategy == "full":
        encoder = list(model.encoder.parameters())
    if replay and strategy in ("last-k", "full"):  # the pretrained heads fit their replayed data
        for block in model.readout.blocks()[:-1]:
            rest += list(block.parameters(recurse=False))
    chosen = {id(p) for p in encoder + rest}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return encoder, rest


def _train(model: MultiHeadPaiNN, downstream: MultiStore, pretraining: MultiStore | None, *,
           strategy: str, steps: int, replay: float, batch_size: int, lr: float, encoder_lr_scale: float, last_k: int,
           seed: int, train_split: str, progress: bool) -> pd.DataFrame:
    """AdamW with a cosine schedule on the multi-head loss; the loss per step."""
    dtype = next(model.parameters()).dtype
    stores = downstream.stores + (pretraining.stores if pretraining is not None else [])
    properties = sorted({t for s in stores for t in s.targets if t not in keys.POTENTIAL_TARGETS})
    cutoff = model.config.cutoff
    new = GraphDataset(downstream, cutoff, split=train_split, dtype=dtype, property_names=properties)
    if len(new) == 0:
        raise ValueError(f"no structures in split {train_split!r} of the fine-tuning data")
    old = (GraphDataset(pretraining, cutoff, split="train", dtype=dtype, property_names=properties)
           if pretraining is not None else None)
    encoder, rest = trainable(model, strategy, last_k=last_k, replay=old is not None)
    groups = [{"params": rest, "scale": 1.0}] + ([{"params": encoder, "scale": encoder_lr_scale}] if encoder else [])
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    schedule = Schedule(ScheduleConfig(kind="cosine", warmup_steps=0, min_lr_ratio=0.0), lr, steps)  # cosine to 0
    loss_config = LossConfig()
    table = HeadTable.from_model(model, properties)
    draws = _Draws(len(new), seed)
    n_old = min(max(1, round(batch_size * replay)), batch_size - 1) if old is not None else 0
    rng = np.random.default_rng([seed, 1])
    rows = []
    model.train()
    for step in progress_bar(range(steps), desc="fine-tune", unit="step", disable=not progress):
        graphs = [new[k] for k in draws.take(batch_size - n_old)]
        if n_old:
            graphs += [old[int(k)] for k in rng.integers(len(old), size=n_old)]
        batch = collate(graphs)
        rate = schedule.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = rate * group["scale"]
        out = model(batch, forces=bool(table.is_energy[batch.dataset].any()), stress=wants_stress(batch, loss_config),
                    training=True)
        sums, counts = loss_parts(out, batch, table, loss_config)
        loss = combine(sums, counts, table, loss_config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 10.0)
        optimizer.step()
        rows.append({"step": step + 1, "loss": float(loss.detach()), "lr": rate})
    model.requires_grad_(False)
    return pd.DataFrame(rows)


class _Draws:
    """Indices 0..n-1 in a fresh random order each pass (every structure once per pass)."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.queue = n, np.random.default_rng([seed, 0]), np.zeros(0, np.int64)

    def take(self, k: int) -> list[int]:
        while len(self.queue) < k:
            self.queue = np.concatenate([self.queue, self.rng.permutation(self.n)])
        taken, self.queue = self.queue[:k], self.queue[k:]
        return [int(i) for i in taken]


def _new_head_errors(model: MultiHeadPaiNN, stores: MultiStore, datasets: dict[str, str], split: str,
                     max_structures: int | None) -> pd.DataFrame:
    """Each new head's errors on its dataset's ``split`` (one row per head)."""
    from gfmkit.train.evaluate import evaluate

    matrix = evaluate(model, stores, split=split, figures=False, max_structures=max_structures).matrix
    rows = [matrix[(matrix["head"] == head) & (matrix["dataset"] == dataset)] for head, dataset in datasets.items()]
    return pd.concat(rows, ignore_index=True)


#: The pretrained model's errors per (checkpoint file, its size and time, stores, registry, split, cap): a study
#: fine-tunes one checkpoint in many cells, and its "before" errors are the same in every one of them.
_BEFORE: dict[tuple, pd.DataFrame] = {}
_BEFORE_KEPT = 8


def forgetting_table(before: MultiHeadPaiNN, after: MultiHeadPaiNN, stores: MultiStore, *, split: str = "val",
                     max_structures: int | None = None, checkpoint: str | os.PathLike | None = None) -> pd.DataFrame:
    """Each pretraining dataset's errors under its own head before and after fine-tuning, on ``split``:
    one row per (dataset, metric) with ``before``, ``after`` and ``change`` (after / before - 1).
    ``checkpoint``: the file ``before`` was loaded from, unchanged; its errors are then evaluated once per
    process and reused by later fine-tunes of the same file on the same stores."""
    from gfmkit.train.evaluate import METRICS, evaluate

    def errors(model: MultiHeadPaiNN) -> pd.DataFrame:
        return evaluate(model, stores, split=split, figures=False, max_structures=max_structures).summary

    key = None
    if checkpoint is not None:
        stat = Path(checkpoint).stat()
        key = (str(Path(checkpoint).resolve()), stat.st_size, stat.st_mtime_ns,
               tuple(str(Path(s.path).resolve()) for s in stores.stores), tuple(stores.registry.names), split,
               max_structures)
    if key is not None and key in _BEFORE:
        before_errors = _BEFORE[key]
    else:
        before_errors = errors(before)
        if key is not None:
            while len(_BEFORE) >= _BEFORE_KEPT:
                _BEFORE.pop(next(iter(_BEFORE)))
            _BEFORE[key] = before_errors
    merged = before_errors.merge(errors(after), on="dataset", suffixes=("_before", "_after"))
    rows = []
    for _, row in merged.iterrows():
        for metric in METRICS:
            b, a = row[f"{metric}_before"], row[f"{metric}_after"]
            if pd.notna(b) and pd.notna(a):
                rows.append({"dataset": row["dataset"], "metric": metric, "before": b, "after": a,
                             "change": a / b - 1 if b else np.nan})
    return pd.DataFrame(rows, columns=["dataset", "metric", "before", "after", "change"])


def _write(out: Path, model: MultiHeadPaiNN, settings: dict[str, Any], history: pd.DataFrame, test: pd.DataFrame,
           forgetting: pd.DataFrame) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(model, out / MODEL, finetune=json.loads(json.dumps(settings)))
    for name, frame in ((HISTORY, history), (TEST, test), (FORGETTING, forgetting)):
        atomic_write_text(out / name, frame.to_csv(index=False))
    summary = {**settings, "test": test.to_dict("records"), "forgetting": forgetting.to_dict("records")}
    atomic_write_text(out / SETTINGS, json.dumps(summary, indent=2, default=float) + "\n")
    return path


__all__ = ["FILES", "STRATEGIES", "FinetuneResult", "finetune", "forgetting_table", "trainable"]
