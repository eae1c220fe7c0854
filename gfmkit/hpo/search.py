"""Hyperparameter search with DeepHyper: every trial is a real gfmkit training run.

:func:`run_hpo` hands a search space (:mod:`gfmkit.hpo.space`) to DeepHyper's centralized Bayesian
optimisation (``CBO``); each trial trains the base config with the trial's values in its own run
directory ``out/trials/trial-NNNN`` and reports the best validation loss (DeepHyper maximises, so
the objective is its negative). A trial whose training fails or diverges is reported to DeepHyper as
failed ("F") and the search goes on. DeepHyper's evaluators decide where trials run: ``thread``
(``workers`` trials at a time in this process; 1, the default, runs them one after another) or
``process`` (``workers`` processes of this machine, each trial single-process). Trials spread over
MPI ranks or nodes (DeepHyper's ``mpicomm``, or data-parallel trials) are not supported yet: every
trial's trainer would join the job's MPI world. The search keeps DeepHyper's
``results.csv`` in ``out``; calling again with a larger ``max_evals`` continues it (the surrogate
refits on the finished trials). :func:`hpo_table` reads trials and run directories back.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from gfmkit.comm import world
from gfmkit.config import config_to_dict
from gfmkit.hpo.space import check_space, search_problem, set_path
from gfmkit.log import get_logger
from gfmkit.studies.runs import open_study, read_study, run_metrics

log = get_logger(__name__)
STUDY = "hpo.json"
RESULTS = "results.csv"
METHODS = ("thread", "process")


def trial_dir(out: str | os.PathLike, job_id: Any) -> Path:
    """The run directory of DeepHyper job ``job_id`` ("0.7" -> trials/trial-0007)."""
    return Path(out) / "trials" / f"trial-{int(str(job_id).split('.')[-1]):04d}"


def run_trial(job: Any, *, base: Mapping[str, Any], out: str) -> dict[str, Any] | str:
    """DeepHyper's run function: train the base config with the job's parameters; the objective is
    minus the best validation loss. Module-level (and given its data by ``functools.partial``) so
    that the process and MPI evaluators can send it to their workers."""
    from gfmkit.train import TrainingError, train

    run_dir = trial_dir(out, job.id)
    parameters = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(job.parameters).items()}
    settings = set_path(base, parameters)
    if (run_dir / "config.yaml").is_file() and not _same_trial(run_dir, settings):
        # a job id DeepHyper reissued after an interrupted search: never continue another trial's run
        log.warning("trial %s: %s holds a run of other values; reported as failed", job.id, run_dir)
        return "F_directory_of_another_trial"
    try:
        train(settings, run_dir, resume="auto")
    except (TrainingError, RuntimeError, ValueError) as exc:
        log.warning("trial %s failed: %s", run_dir.name, exc)
        return "F_training_failed"
    val = run_metrics(run_dir)
    val = val[val["phase"] == "val"] if "phase" in val else val.iloc[0:0]
    best = float(val["loss"].min()) if len(val) else math.nan
    if not math.isfinite(best):
        return "F_no_finite_validation_loss"
    last = val.iloc[-1]
    return {"objective": -best, "metadata": {
        "run_dir": str(run_dir), "best_val_loss": best,
        "val_forces_mae": float(last.get("forces_mae", math.nan)), "val_energy_mae": float(last.get("energy_mae", math.nan))}}


def _same_trial(run_dir: Path, settings: Mapping[str, Any]) -> bool:
    from gfmkit.train import load_train_config

    saved = config_to_dict(load_train_config(run_dir / "config.yaml"))
    wanted = config_to_dict(load_train_config(settings))
    return {k: v for k, v in saved.items() if k != "progress"} == {k: v for k, v in wanted.items() if k != "progress"}


def run_hpo(
    config: Any,
    space: Mapping[str, Any],
    out: str | os.PathLike = "runs/hpo",
    *,
    max_evals: int = 10,
    method: str = "thread",
    workers: int = 1,
    seed: int = 0,
    initial_points: int | None = None,
) -> pd.DataFrame:
    """Search ``space`` around ``config`` until ``out`` holds ``max_evals`` trials; :func:`hpo_table`.

    ``config`` is a :class:`~gfmkit.train.TrainConfig`, YAML path or mapping and must validate (every
    trial trains at most its ``max_steps``; its ``val_split`` gives the objective). ``method`` and
    ``workers`` choose DeepHyper's evaluator; ``initial_points`` random trials come before the
    surrogate model steers (DeepHyper's default when None).
    """
    from gfmkit.hpo.backend import deephyper
    from gfmkit.train import load_train_config

    _, CBO, Evaluator = deephyper()

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_evals < 1 or workers < 1:
        raise ValueError("max_evals and workers must be positive")
    if world().size > 1:
        raise RuntimeError("run_hpo under mpiexec is not supported: every rank would run its own search in the same "
                           "directory (run it in one process; trials over ranks are not built yet)")
    base = config_to_dict(load_train_config(config))
    if not base["data"].get("val_split"):
        raise ValueError("the search needs a validation split (data.val_split) for its objective")
    space = dict(space)
    check_space(base, space)
    out = Path(out).absolute()
    open_study(out, STUDY, {"config": base, "space": space}, grows=[], command="run_hpo or gfmkit hpo CONFIG SPACE")
    done = len(pd.read_csv(out / RESULTS)) if (out / RESULTS).is_file() else 0
    remaining = max_evals - done
    if remaining > 0:
        run_function = functools.partial(run_trial, base={**base, "progress": False}, out=str(out))
        evaluator = Evaluator.create(run_function, method=method, method_kwargs={"num_workers": workers})
        # a new random state on each continuation, so that the initial random points are not repeated
        search = CBO(search_problem(space), random_state=seed + done, log_dir=str(out), checkpoint_restart=True,
                     n_initial_points=initial_points, verbose=0)
        search.search(evaluator, max_evals=remaining)
    return hpo_table(out)


def hpo_table(out: str | os.PathLike) -> pd.DataFrame:
    """One row per trial, in the order they finished: its parameters, status, best validation loss,
    the best loss so far, and its run directory; from ``out``'s files alone."""
    out = Path(out)
    study = read_study(out, STUDY, "run_hpo or gfmkit hpo CONFIG SPACE")
    if not (out / RESULTS).is_file():
        return pd.DataFrame(columns=["trial", *study["space"], "status", "best_val_loss", "best_so_far", "run_dir"])
    results = pd.read_csv(out / RESULTS)
    table = pd.DataFrame({"trial": [trial_dir(out, j).name for j in results["job_id"]]})
    for key in study["space"]:
        table[key] = results[f"p:{key}"]
    objective = pd.to_numeric(results["objective"], errors="coerce")
    table["status"] = objective.notna().map({True: "done", False: "failed"})
    table["best_val_loss"] = -objective
    table["best_so_far"] = table["best_val_loss"].cummin()
    for column in ("val_forces_mae", "val_energy_mae"):
        if f"m:{column}" in results:
            table[column] = results[f"m:{column}"]
    table["run_dir"] = [str(trial_dir(out, j)) for j in results["job_id"]]
    return table


def best_config(out: str | os.PathLike) -> dict[str, Any]:
    """The training config of the best finished trial (to train longer, or to fine-tune from)."""
    table = hpo_table(out)
    done = table[table["status"] == "done"]
    if done.empty:
        raise ValueError(f"{out}: no finished trial yet")
    best = done.loc[done["best_val_loss"].idxmin()]
    study = read_study(out, STUDY, "run_hpo")
    return set_path(study["config"], {key: best[key] for key in study["space"]})
