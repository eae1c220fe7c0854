"""Transfer to downstream tasks: learning curves of fine-tuned models against models trained from scratch.

A pretrained checkpoint and a training config for the downstream datasets go in. For every fraction
of the downstream training split (``train[:fraction]``: fixed random draws, each smaller set inside
the larger ones) and every strategy, one run trains in ``out/<strategy>-<fraction>``:

* ``scratch``: the pretrained model's architecture with fresh weights (the baseline);
* ``frozen``: the pretrained encoder, frozen; only the heads train (how much the encoder's features
  alone carry);
* ``full``: the pretrained encoder and heads all train, the encoder at ``encoder_lr_scale`` times the
  learning rate (the config's ``optimizer.encoder_lr_scale``, 1 by default).

Every run has the same steps, schedule, sampler and seed, and starts its heads as ``heads`` says
(dataset -> pretrained head; by default a dataset's own name, else fresh). Each run's best checkpoint
is evaluated on the downstream test split; :func:`finetune_table` and
:func:`gfmkit.viz.finetune.finetune_figure` read the run directories alone. A stopped study
continues where it stopped.
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
from gfmkit.config import config_to_dict
from gfmkit.progress import progress_bar
from gfmkit.rundir import RUN_INFO, SUMMARY
from gfmkit.studies.registry import Ref, Study
from gfmkit.studies.runs import (
    evaluate_once,
    on_rank_0,
    open_study,
    read_study,
    train_to_end,
)

STRATEGIES = ("scratch", "frozen", "full")
STUDY = "finetune.json"


def _study(out: str | os.PathLike) -> dict[str, Any]:
    return read_study(out, STUDY, "run_finetune_study or gfmkit finetune PRETRAINED CONFIG")


def run_name(strategy: str, fraction: float) -> str:
    """The run directory name of one (strategy, fraction) cell."""
    return f"{strategy}-{'1' if fraction == 1.0 else repr(float(fraction))}"


def run_settings(base: Mapping[str, Any], pretrained: str, model: Mapping[str, Any], strategy: str,
                 fraction: float, heads: Mapping[str, str]) -> dict[str, Any]:
    """The training config of one cell of the study."""
    settings = json.loads(json.dumps(dict(base)))
    settings["data"]["train_split"] = "train" if fraction == 1.0 else f"train[:{float(fraction)!r}]"
    if strategy == "scratch":  # the baseline trains everything at the full rate
        settings["model"] = dict(model)
        settings["init"] = {"checkpoint": None, "heads": {}}
        settings["optimizer"] = {**settings.get("optimizer", {}), "encoder_lr_scale": 1.0}
    else:
        settings.pop("model", None)
        settings["init"] = {"checkpoint": pretrained, "heads": dict(heads)}
        if strategy == "frozen":
            settings["optimizer"] = {**settings.get("optimizer", {}), "encoder_lr_scale": 0.0}
    return settings


def run_finetune_study(
    pretrained: str | os.PathLike,
    config: Any,
    out: str | os.PathLike = "runs/finetune",
    *,
    fractions: Sequence[float] = (0.1, 0.3, 1.0),
    strategies: Sequence[str] = STRATEGIES,
    heads: Mapping[str, str] | None = None,
    split: str = "test",
    max_structures: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every (strategy, fraction) cell and evaluate it; returns :func:`finetune_table`.

    ``config`` (a :class:`~gfmkit.train.TrainConfig`, YAML path or mapping) names the downstream stores
    and how to train; its ``model`` and ``init`` sections are set by the study (the pretrained model's
    architecture for every strategy). ``heads`` maps downstream datasets to the pretrained heads that
    start them (``frozen`` and ``full``). Under ``mpiexec`` every rank calls this; rank 0 evaluates
    and returns the table (the other ranks an empty one).
    """
    from gfmkit.models import read_checkpoint
    from gfmkit.train import load_train_config

    pretrained = str(Path(pretrained).absolute())
    model = read_checkpoint(pretrained)["config"]
    base = config_to_dict(load_train_config({**config_to_dict(load_train_config(config)), "model": model,
                                             "init": {"checkpoint": None, "heads": {}}}))
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    bad = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad or not fractions:
        raise ValueError(f"fractions must be in (0, 1], got {list(fractions)}")
    settings = {"pretrained": pretrained, "config": base, "heads": dict(heads or {}), "split": split,
                "max_structures": max_structures, "strategies": list(dict.fromkeys(strategies)),
                "fractions": sorted({float(f) for f in fractions})}
    study = open_study(out, STUDY, settings, grows=["strategies", "fractions"], command="run_finetune_study")
    main = world().rank == 0
    cells = [(s, f) for s in settings["strategies"] for f in settings["fractions"]]
    for strategy, fraction in progress_bar(cells, desc="fine-tuning runs", unit="run", disable=not (progress and main)):
        run_dir = Path(out) / run_name(strategy, fraction)
        train_to_end(run_settings(base, pretrained, model, strategy, fraction, study["heads"]), run_dir)
        on_rank_0(lambda run_dir=run_dir: evaluate_once(run_dir, base["data"]["stores"], run_dir / "evaluation",
                                                        split=split, max_structures=max_structures))
    return finetune_table(out) if main else pd.DataFrame()


def finetune_table(out: str | os.PathLike) -> pd.DataFrame:
    """One row per (strategy, fraction, dataset): training structures of that dataset and its test
    MAEs under its own head, from the run directories of the study in ``out``."""
    out = Path(out)
    study = _study(out)
    frames = []
    for strategy in study["strategies"]:
        for fraction in study["fractions"]:
            run_dir = out / run_name(strategy, fraction)
            summary = run_dir / "evaluation" / SUMMARY
            if not summary.is_file():
                continue
            frame = pd.read_csv(summary)
            counts = json.loads((run_dir / RUN_INFO).read_text()).get("train_structures_per_dataset", {})
            frame.insert(0, "train_structures", frame["dataset"].map(counts))
            frame.insert(0, "fraction", fraction)
            frame.insert(0, "strategy", strategy)
            frames.append(frame.rename(columns={"structures": "test_structures"}))
    if not frames:
        return pd.DataFrame(columns=["strategy", "fraction", "train_structures", "dataset"])
    return pd.concat(frames, ignore_index=True)


def transfer_gain(table: pd.DataFrame, metric: str = keys.FORCES_MAE) -> pd.DataFrame:
    """``metric`` of scratch / metric of each fine-tuning strategy, per dataset and fraction (> 1: the
    pretrained model helps)."""
    pivot = table.pivot_table(index=["dataset", "fraction"], columns="strategy", values=metric)
    if "scratch" not in pivot:
        return pd.DataFrame(index=pivot.index)
    return pivot.drop(columns="scratch").rdiv(pivot["scratch"], axis=0)


REGISTRY_ENTRY = Study(
    name="finetune", title="fine-tuning study", marker=STUDY,
    help="transfer to downstream tasks by fine-tuning (learning curves)",
    run=run_finetune_study, table=finetune_table, figure=Ref("gfmkit.viz.finetune:finetune_figure"))
