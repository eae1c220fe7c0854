"""Precision study: the same training in fp64, fp32, bf16-autocast and bf16-pure, side by side.

Every precision trains the same config (same seed, so the same initial weights, data order and
number of steps) in its own run directory ``out/<precision>``; its best checkpoint is then evaluated
on the test split twice: in fp64, which isolates what *training* in that precision did to the
model, and in its own precision, which adds the rounding of inference. Everything the tables and the
figure show is read back from the run directories alone (:func:`precision_table`,
:func:`precision_errors`, :func:`gfmkit.viz.precision.precision_figure`):

* throughput: structures per second of the timed training steps
  (:func:`gfmkit.studies.scaling.run_throughput`; the first ``warmup`` steps are left out);
* the final and best validation loss and the training loss curve (``metrics.jsonl``);
* test MAEs of each dataset under its own head (``evaluation-<precision>/summary.csv``);
* the train x inference matrix (``inference.csv``, :func:`precision_inference`,
  :func:`precision_matrix`): every trained model evaluated in every precision of the study, its errors
  against the labels and its deviation from the fp64-trained model's fp64 predictions, with the
  inference throughput and peak memory (:func:`gfmkit.precision.infer`), on the training's device.

A study that stopped part way continues where it stopped: finished runs and evaluations are kept,
an unfinished run resumes from its last checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gfmkit import keys
from gfmkit.comm import world
from gfmkit.config import config_to_dict
from gfmkit.files import atomic_path
from gfmkit.precision import (
    DEVIATIONS,
    LABEL_ERRORS,
    PRECISIONS,
    Precision,
    infer,
    inference_errors,
)
from gfmkit.progress import progress_bar
from gfmkit.rundir import SUMMARY, RunDir
from gfmkit.studies.registry import Ref, Study
from gfmkit.studies.runs import (
    evaluate_once,
    on_rank_0,
    open_study,
    read_study,
    train_to_end,
)
from gfmkit.studies.scaling import run_throughput

STUDY = "precision.json"
INFERENCE = "inference.csv"
ERROR_COLUMNS = keys.ERROR_COLUMNS


def _study(out: str | os.PathLike) -> dict[str, Any]:
    return read_study(out, STUDY, "run_precision_study or gfmkit precision CONFIG")


def _precision_names(precisions: Sequence[str]) -> list[str]:
    names = []
    for p in precisions:
        try:
            names.append(Precision(p).value)
        except ValueError:
            raise ValueError(f"unknown precision {p!r}; known: {', '.join(PRECISIONS)}") from None
    if not names:
        raise ValueError("give at least one precision")
    return list(dict.fromkeys(names))


def evaluation_dir(run_dir: str | os.PathLike, precision: str) -> Path:
    """Where a run's test evaluation in ``precision`` is written."""
    return Path(run_dir) / f"evaluation-{precision}"


def run_precision_study(
    config: Any,
    out: str | os.PathLike = "runs/precision",
    precisions: Sequence[str] = PRECISIONS,
    *,
    split: str = "test",
    max_structures: int | None = None,
    warmup: int = 5,
    progress: bool = True,
) -> pd.DataFrame:
    """Train ``config`` once per precision and evaluate each; returns :func:`precision_table`.

    ``config`` is a :class:`~gfmkit.train.TrainConfig`, a YAML path or a mapping; its ``precision`` is
    replaced per run and every step is logged (``log_every: 1``) so that throughput can be measured.
    ``max_structures`` caps the evaluated structures per dataset. Runs one after another in this
    process; under ``mpiexec`` every rank calls this, each training runs data-parallel, rank 0
    evaluates and returns the table (the other ranks an empty one).
    """
    from gfmkit.train import load_train_config

    base = config_to_dict(load_train_config(config))
    settings = {"precisions": _precision_names(precisions), "split": split, "max_structures": max_structures,
                "warmup": warmup, "config": base}
    open_study(out, STUDY, settings, grows=["precisions"], command="run_precision_study")
    main = world().rank == 0
    for precision in progress_bar(settings["precisions"], desc="precisions", unit="run", disable=not (progress and main)):
        run_dir = Path(out) / precision
        train_to_end({**base, "precision": precision, "log_every": 1, "progress": progress and base["progress"]}, run_dir)
        def evaluate_run(run_dir: Path = run_dir, precision: str = precision) -> None:
            for evaluated_in in dict.fromkeys(("fp64", precision)):
                evaluate_once(run_dir, base["data"]["stores"], evaluation_dir(run_dir, evaluated_in), split=split,
                              precision=evaluated_in, max_structures=max_structures)

        on_rank_0(evaluate_run)
    on_rank_0(lambda: _write_inference(Path(out), settings, base))
    return precision_table(out) if main else pd.DataFrame()


def _write_inference(out: Path, settings: dict[str, Any], base: dict[str, Any]) -> None:
    """The train x inference matrix into ``out/inference.csv``, unless it already covers every pair."""
    from gfmkit.data.multi import open_stores
    from gfmkit.models import load_model
    from gfmkit.train.distributed import select_device

    precisions = settings["precisions"]
    wanted = {(t, e) for t in precisions for e in precisions}
    if (out / INFERENCE).is_file():
        done = pd.read_csv(out / INFERENCE)
        if wanted <= set(zip(done["trained_in"], done["evaluated_in"])):
            return
    stores = open_stores(base["data"]["stores"])
    device = select_device(str(base.get("device", "cpu")), 0)
    options = dict(split=settings["split"], max_structures=settings["max_structures"], device=device,
                   batch_size=int(base.get("sampler", {}).get("batch_size", 16)))
    models = {p: load_model(RunDir(out / p).best_checkpoint()) for p in precisions}
    reference = infer(models["fp64"], stores, "fp64", **options) if "fp64" in models else None
    frames = []
    for trained in progress_bar(precisions, desc="inference matrix", unit="model", disable=not base["progress"]):
        for evaluated in precisions:
            same = trained == evaluated == "fp64" and reference is not None
            run = reference if same else infer(models[trained], stores, evaluated, **options)
            frame = inference_errors(run, reference)
            frame.insert(0, "evaluated_in", evaluated)
            frame.insert(0, "trained_in", trained)
            frame["structures_per_s"] = run.structures_per_s
            frame["peak_memory_mib"] = run.peak_memory_mib
            frame["memory_measure"] = run.memory_measure
            frames.append(frame)
    with atomic_path(out / INFERENCE) as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)


def precision_inference(out: str | os.PathLike) -> pd.DataFrame:
    """The train x inference matrix in long form: one row per (trained in, evaluated in, dataset) with
    the MAEs against the labels, the deviations from the fp64-trained model's fp64 predictions
    (``*_dev``; NaN without an fp64 run), throughput (structures/s) and peak memory (MiB) of that
    inference; empty before the study's runs are done."""
    path = Path(out) / INFERENCE
    _study(out)
    if not path.is_file():
        return pd.DataFrame(columns=["trained_in", "evaluated_in", "dataset", "head", "structures", *LABEL_ERRORS,
                                     *DEVIATIONS, "structures_per_s", "peak_memory_mib", "memory_measure"])
    return pd.read_csv(path)


def precision_matrix(out: str | os.PathLike, metric: str = keys.FORCES_MAE) -> pd.DataFrame:
    """Trained-in x evaluated-in table of ``metric`` (an error or deviation column: the mean over
    datasets; ``structures_per_s`` or ``peak_memory_mib``: per inference), rows and columns in the
    study's order."""
    table = precision_inference(out)
    order = [p for p in _study(out)["precisions"] if p in set(table["trained_in"])]
    matrix = table.pivot_table(index="trained_in", columns="evaluated_in", values=metric, aggfunc="mean", dropna=False)
    return matrix.reindex(index=order, columns=order)


def precision_errors(out: str | os.PathLike) -> pd.DataFrame:
    """Test MAEs of every dataset under its own head: one row per (trained in, evaluated in, dataset)."""
    out = Path(out)
    frames = []
    for precision in _study(out)["precisions"]:
        for evaluated_in in dict.fromkeys(("fp64", precision)):
            path = evaluation_dir(out / precision, evaluated_in) / SUMMARY
            if path.is_file():
                frame = pd.read_csv(path)
                frame.insert(0, "evaluated_in", evaluated_in)
                frame.insert(0, "trained_in", precision)
                frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["trained_in", "evaluated_in", "dataset", "structures", *ERROR_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def precision_table(out: str | os.PathLike) -> pd.DataFrame:
    """One row per precision: throughput, speedup over fp64, validation losses and the test MAEs
    (mean over datasets, evaluated in fp64 and in the run's own precision), from the run directories."""
    out = Path(out)
    study = _study(out)
    errors = precision_errors(out)
    rows = []
    for precision in study["precisions"]:
        run_dir = out / precision
        row: dict[str, Any] = {"precision": precision}
        metrics = RunDir(run_dir).metrics()
        if metrics.empty:
            row["missing"] = f"{run_dir}: no metrics (not run yet)"
            rows.append(row)
            continue
        phase = metrics.get("phase", pd.Series(dtype=str))
        train = metrics[phase == "train"]
        val = metrics[phase == "val"]
        row["steps"] = int(train["step"].max()) if len(train) else 0
        try:
            throughput = run_throughput(run_dir, study["warmup"])
            row["structures_per_s"] = throughput["structures_per_s"]
        except (FileNotFoundError, ValueError) as exc:
            row["missing"] = str(exc)
        if len(val):
            row["final_val_loss"] = float(val["loss"].iloc[-1])
            row["best_val_loss"] = float(val["loss"].min())
        for evaluated_in, label in (("fp64", "fp64"), (precision, "own")):
            mine = errors[(errors["trained_in"] == precision) & (errors["evaluated_in"] == evaluated_in)]
            for column in (keys.ENERGY_MAE, keys.FORCES_MAE):
                if len(mine) and column in mine:
                    row[f"test_{column}_{label}"] = float(mine[column].mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    reference = table[table["precision"] == "fp64"]
    if len(reference) and "structures_per_s" in table:
        table["speedup_vs_fp64"] = table["structures_per_s"] / float(reference["structures_per_s"].iloc[0])
    drift = loss_drift(out)
    if len(drift.columns):
        table["train_loss_drift_median"] = table["precision"].map(drift.median())
    return table


def loss_drift(out: str | os.PathLike) -> pd.DataFrame:
    """|training loss - fp64's| / fp64's at each step (rows: step, columns: precision); empty
    without an fp64 run. The runs share seed and batches, so this is the precision's own effect."""
    train = precision_history(out)
    train = train[train["phase"] == "train"].pivot_table(index="step", columns="precision", values="loss")
    if "fp64" not in train:
        return pd.DataFrame(index=train.index)
    return train.sub(train["fp64"], axis=0).abs().div(train["fp64"], axis=0)


def precision_history(out: str | os.PathLike) -> pd.DataFrame:
    """Training and validation losses against step of every precision's run (long format:
    precision, phase ``train``/``val``, step, loss)."""
    out = Path(out)
    frames = []
    for precision in _study(out)["precisions"]:
        metrics = RunDir(out / precision).metrics()
        if metrics.empty:
            continue
        train = metrics[metrics["phase"] == "train"]
        val = metrics[metrics["phase"] == "val"]
        frames.append(pd.DataFrame({"precision": precision, "phase": "train", "step": train["step"],
                                    "loss": train["loss_interval"]}))
        frames.append(pd.DataFrame({"precision": precision, "phase": "val", "step": val["step"], "loss": val["loss"]}))
    if not frames:
        return pd.DataFrame(columns=["precision", "phase", "step", "loss"])
    return pd.concat(frames, ignore_index=True)


REGISTRY_ENTRY = Study(
    name="precision", title="precision study", marker=STUDY, help="BF16/FP32/FP64 precision study",
    run=run_precision_study, table=precision_table, figure=Ref("gfmkit.viz.precision:precision_figure"),
    more_figures=(("precision_matrix", Ref("gfmkit.viz.precision:precision_matrix_figure")),))
