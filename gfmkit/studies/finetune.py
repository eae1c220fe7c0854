"""Transfer to downstream tasks: learning curves of every fine-tuning strategy against scratch, over seeds,
and how much each strategy makes the pretrained heads forget.

A pretrained checkpoint and a training config for the downstream datasets go in (its ``data.stores``,
``max_steps``, ``sampler.batch_size``, ``optimizer.lr`` and ``seed`` are used). For every fraction of
the downstream training split (``train[:fraction]``: fixed random draws, each smaller set inside the
larger ones), every strategy and every seed, one :func:`gfmkit.train.finetune.finetune` call adds the
downstream heads to the model and trains them in ``out/<strategy>-<fraction>-s<seed>``:

* ``scratch``: the same architecture and heads with fresh weights, everything trained at the full rate
  (the baseline);
* ``head``, ``lora``, ``last-k``, ``full``: the strategies of :mod:`gfmkit.train.finetune`;
* ``full+replay``: ``full`` with a ``replay`` share (0.25) of every batch from the pretraining data.

Every cell has the same steps, batch size, learning rate and schedule; its new heads start from the
pretrained head ``heads`` names (dataset -> head), else the nearest by training composition. Each cell
records its new heads' test errors and the pretrained heads' validation errors before and after
(forgetting). :func:`finetune_table` and :func:`gfmkit.viz.finetune.finetune_figure` read the cell
directories alone (mean and spread over seeds); a stopped study continues where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gfmkit import keys
from gfmkit.comm import world
from gfmkit.progress import progress_bar
from gfmkit.studies.registry import Ref, Study
from gfmkit.studies.runs import open_study, read_study

STRATEGIES = ("scratch", "head", "lora", "last-k", "full", "full+replay")
STUDY = "finetune.json"
#: each cell's own record (gfmkit.train.finetune.SETTINGS; spelled here so reading a study imports no torch)
SETTINGS = "finetuned.json"
#: share of every batch drawn from the pretraining data in ``full+replay``
REPLAY = 0.25


def _study(out: str | os.PathLike) -> dict[str, Any]:
    return read_study(out, STUDY, "run_finetune_study or gfmkit finetune study PRETRAINED CONFIG")


def run_name(strategy: str, fraction: float, seed: int) -> str:
    """The directory name of one (strategy, fraction, seed) cell."""
    return f"{strategy}-{'1' if fraction == 1.0 else repr(float(fraction))}-s{int(seed)}"


def cell_arguments(settings: Mapping[str, Any], strategy: str, fraction: float, seed: int) -> dict[str, Any]:
    """The keyword arguments of :func:`gfmkit.train.finetune.finetune` for one cell (beside checkpoint,
    data and out)."""
    base = {"steps": settings["steps"], "batch_size": settings["batch_size"], "lr": settings["lr"], "seed": seed,
            "train_split": "train" if fraction == 1.0 else f"train[:{float(fraction)!r}]",
            "eval_split": settings["split"], "max_structures": settings["max_structures"],
            "from_head": dict(settings["heads"]) or "nearest", "pretrain_data": settings["pretrain_data"]}
    if strategy == "scratch":  # fresh weights everywhere, all trained at the full rate, nothing to forget
        return {**base, "strategy": "full", "encoder_lr_scale": 1.0, "from_head": "none", "pretrain_data": ()}
    if strategy == "full+replay":
        return {**base, "strategy": "full", "replay": settings["replay"]}
    return {**base, "strategy": strategy}


def scratch_checkpoint(pretrained: str | os.PathLike, path: str | os.PathLike, seed: int) -> Path:
    """A checkpoint of ``pretrained``'s architecture and heads with fresh weights drawn with ``seed``
    (made once: an existing ``path``, from the same pretrained model and seed, is used as it is)."""
    import torch

    from gfmkit.models import load_model, save_checkpoint
    from gfmkit.models.multihead import MultiHeadPaiNN

    if Path(path).is_file():
        return Path(path)
    model = load_model(pretrained)
    torch.manual_seed(seed)
    fresh = MultiHeadPaiNN(model.config, model.heads).to(next(model.parameters()).dtype)
    return save_checkpoint(fresh, path)


def run_finetune_study(
    pretrained: str | os.PathLike,
    config: Any,
    out: str | os.PathLike = "runs/finetune",
    *,
    fractions: Sequence[float] = (0.1, 0.3, 1.0),
    strategies: Sequence[str] = STRATEGIES,
    seeds: Sequence[int] = (0, 1, 2),
    heads: Mapping[str, str] | None = None,
    replay: float = REPLAY,
    pretrain_data: Sequence[str | os.PathLike] | None = None,
    split: str = "test",
    max_structures: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Fine-tune every (strategy, fraction, seed) cell and evaluate it; returns :func:`finetune_table`.

    ``config`` (a :class:`~gfmkit.train.TrainConfig`, YAML path or mapping) names the downstream stores
    and the budget (``max_steps``, ``sampler.batch_size``, ``optimizer.lr``). ``heads`` maps downstream
    datasets to the pretrained heads that start them (others: the nearest by composition).
    ``pretrain_data``: the pretraining stores for replay and forgetting (default: those of the
    checkpoint's run). Runs on one process."""
    from gfmkit.train import load_train_config
    from gfmkit.train.finetune import finetune

    if world().size > 1:
        raise ValueError("the fine-tuning study runs on one process: start it without mpiexec")
    pretrained = str(Path(pretrained).absolute())
    train = load_train_config(config)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    bad = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad or not fractions:
        raise ValueError(f"fractions must be in (0, 1], got {list(fractions)}")
    if not seeds:
        raise ValueError("give at least one seed")
    settings = {"pretrained": pretrained, "stores": [str(Path(s).absolute()) for s in train.data.stores],
                "steps": train.max_steps or 200, "batch_size": train.sampler.batch_size or 8, "lr": train.optimizer.lr,
                "heads": dict(heads or {}), "replay": float(replay), "split": split, "max_structures": max_structures,
                "pretrain_data": None if pretrain_data is None else [str(Path(p).absolute()) for p in pretrain_data],
                "strategies": list(dict.fromkeys(strategies)), "fractions": sorted({float(f) for f in fractions}),
                "seeds": list(dict.fromkeys(int(s) for s in seeds))}
    study = open_study(out, STUDY, settings, grows=["strategies", "fractions", "seeds"], command="run_finetune_study")
    out = Path(out)
    cells = [(s, f, seed) for s in settings["strategies"] for f in settings["fractions"] for seed in settings["seeds"]]
    for strategy, fraction, seed in progress_bar(cells, desc="fine-tuning runs", unit="run", disable=not progress):
        cell = out / run_name(strategy, fraction, seed)
        if (cell / SETTINGS).is_file():
            continue
        source = pretrained if strategy != "scratch" else scratch_checkpoint(pretrained, out / f"scratch-s{seed}.pt", seed)
        finetune(source, study["stores"], cell, progress=False, overwrite=True,
                 **cell_arguments(study, strategy, fraction, seed))
    return finetune_table(out)


def finetune_table(out: str | os.PathLike) -> pd.DataFrame:
    """One row per (strategy, fraction, seed, dataset): training structures of that dataset, its test
    MAEs under its new head, and ``forgetting``: the pretrained heads' mean relative change of their
    validation force MAE (energy where no forces; 0 = nothing forgotten, NaN = not measured)."""
    out = Path(out)
    study = _study(out)
    frames = []
    for strategy in study["strategies"]:
        for fraction in study["fractions"]:
            for seed in study.get("seeds", [0]):
                cell = out / run_name(strategy, fraction, seed)
                if not (cell / SETTINGS).is_file():
                    continue
                info = json.loads((cell / SETTINGS).read_text())
                frame = pd.DataFrame(info["test"]).drop(columns="head")
                frame.insert(0, "train_structures", frame["dataset"].map(info.get("train_structures", {})))
                frame.insert(0, "seed", seed)
                frame.insert(0, "fraction", fraction)
                frame.insert(0, "strategy", strategy)
                frame["forgetting"] = mean_forgetting(pd.DataFrame(info["forgetting"]))
                frames.append(frame.rename(columns={"structures": "test_structures"}))
    if not frames:
        return pd.DataFrame(columns=["strategy", "fraction", "seed", "train_structures", "dataset"])
    return pd.concat(frames, ignore_index=True)


def mean_forgetting(forgetting: pd.DataFrame) -> float:
    """Mean relative change (after / before - 1) of the pretrained heads' force MAE (energy MAE for a
    dataset without forces) in a forgetting table; NaN when it is empty."""
    if forgetting.empty:
        return float("nan")
    chosen = []
    for _, rows in forgetting.groupby("dataset"):
        for metric in (keys.FORCES_MAE, keys.ENERGY_MAE, keys.PROPERTY_MAE):
            if (rows["metric"] == metric).any():
                chosen.append(float(rows.loc[rows["metric"] == metric, "change"].iloc[0]))
                break
    return float(sum(chosen) / len(chosen)) if chosen else float("nan")


def transfer_gain(table: pd.DataFrame, metric: str = keys.FORCES_MAE) -> pd.DataFrame:
    """``metric`` of scratch / metric of each fine-tuning strategy (means over seeds), per dataset and
    fraction (> 1: the pretrained model helps)."""
    pivot = table.pivot_table(index=["dataset", "fraction"], columns="strategy", values=metric, aggfunc="mean")
    if "scratch" not in pivot:
        return pd.DataFrame(index=pivot.index)
    return pivot.drop(columns="scratch").rdiv(pivot["scratch"], axis=0)


def spread(table: pd.DataFrame, metric: str = keys.FORCES_MAE) -> pd.DataFrame:
    """Mean, standard deviation, min and max of ``metric`` over seeds, per (dataset, strategy, fraction)."""
    grouped = table.dropna(subset=[metric]).groupby(["dataset", "strategy", "fraction"], sort=False)
    return grouped[metric].agg(["mean", "std", "min", "max", "count"]).reset_index()


REGISTRY_ENTRY = Study(
    name="finetune", title="fine-tuning study", marker=STUDY,
    help="transfer to downstream tasks by fine-tuning (learning curves, forgetting, over seeds)",
    run=run_finetune_study, table=finetune_table, figure=Ref("gfmkit.viz.finetune:finetune_figure"))
