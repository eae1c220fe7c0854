"""Hyperparameter search with DeepHyper: every trial is a real gfmkit training run.

:func:`run_hpo` hands a search space (:mod:`gfmkit.hpo.space`) to DeepHyper's centralized Bayesian
optimisation (``CBO``); each trial trains the base config with the trial's values in its own run
directory ``out/trials/trial-NNNN`` (:mod:`gfmkit.hpo.trials`) and reports its objectives
(:mod:`gfmkit.hpo.objectives`: ``loss``, ``error``, ``throughput``, ``flops``, ``params``). With one
objective DeepHyper maximises minus it; with several it gets a tuple and scalarises it with random
weights per proposal (``moo_scalarization_strategy``, Chebyshev by default), so the proposals spread
along the trade-off. A trial whose training fails or diverges is reported to DeepHyper as failed
("F") and the search goes on. Where trials run is :mod:`gfmkit.hpo.evaluators`' business (threads,
processes, MPI ranks, groups of ranks per trial).

The search keeps DeepHyper's ``results.csv`` in ``out``; calling again with a larger ``max_evals``
continues it (the surrogate refits on the finished trials), also after the search was killed: trials
that never reported are evaluated first and resume from their checkpoints (:mod:`gfmkit.hpo.trials`).
:func:`hpo_table` reads trials and run directories back, :func:`pareto_table` keeps the trials no
other trial beats on every objective, :func:`best_config` picks one (rule in :func:`best_trial`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gfmkit.comm import world
from gfmkit.config import config_to_dict
from gfmkit.hpo.evaluators import mpi_search, parse_evaluator
from gfmkit.hpo.objectives import MEASURES, OBJECTIVES, check_objectives, from_deephyper
from gfmkit.hpo.space import check_space, search_problem, set_path
from gfmkit.hpo.trials import run_trial, set_aside_unfinished, trial_dir
from gfmkit.log import get_logger
from gfmkit.studies.runs import on_rank_0, open_study, read_study

__all__ = ["best_config", "best_trial", "hpo_table", "pareto_table", "run_hpo", "run_trial", "trial_dir"]

log = get_logger(__name__)
STUDY = "hpo.json"
RESULTS = "results.csv"
COMMAND = "run_hpo or gfmkit hpo CONFIG SPACE"


def run_hpo(
    config: Any,
    space: Mapping[str, Any],
    out: str | os.PathLike = "runs/hpo",
    *,
    max_evals: int = 10,
    objectives: str | Sequence[str] = ("loss",),
    evaluator: Any = "thread",
    workers: int = 1,
    ranks_per_trial: int = 1,
    method: str | None = None,
    seed: int = 0,
    initial_points: int | None = None,
    timing_structures: int = 16,
) -> pd.DataFrame:
    """Search ``space`` around ``config`` until ``out`` holds ``max_evals`` trials; :func:`hpo_table`.

    ``config`` is a :class:`~gfmkit.train.TrainConfig`, YAML path or mapping and must validate (every
    trial trains at most its ``max_steps``; its ``val_split`` gives the errors and the timing batch).
    ``objectives``: names of :data:`gfmkit.hpo.objectives.OBJECTIVES` (a list or "error,throughput").
    ``evaluator``: ``thread`` or ``process`` (``workers`` trials at a time on this machine), ``mpi``
    (every rank of ``mpiexec -n N`` calls this; trials of ``ranks_per_trial`` ranks each), or
    ``cluster:PROFILE`` / a running :class:`gfmkit.cluster.EngineCluster` (one trial per ipyparallel
    engine at a time): see :mod:`gfmkit.hpo.evaluators`; ``method`` is the older name of ``evaluator``. ``initial_points``
    random trials come before the surrogate model steers (DeepHyper's default when None);
    ``timing_structures`` structures make the timing batch.
    """
    from gfmkit.hpo.backend import deephyper
    from gfmkit.train import load_train_config
    from gfmkit.train.config import resolve_paths

    _, CBO, Evaluator = deephyper()

    kind, where = parse_evaluator(method or evaluator)
    objectives = check_objectives(objectives)
    if max_evals < 1 or workers < 1 or ranks_per_trial < 1 or timing_structures < 1:
        raise ValueError("max_evals, workers, ranks_per_trial and timing_structures must be positive")
    comm = world()
    if kind == "mpi" and comm.size < 2:
        raise ValueError("evaluator 'mpi' runs under mpiexec -n N (N >= 2): rank 0 searches, the others train")
    if kind != "mpi" and comm.size > 1:
        raise RuntimeError(f"run_hpo under mpiexec with evaluator {kind!r}: every rank would run its own search in "
                           "the same directory; use evaluator 'mpi' (gfmkit hpo --evaluator mpi)")
    if kind != "mpi" and ranks_per_trial > 1:
        raise ValueError("trials of several ranks need the mpi evaluator (under mpiexec)")
    loaded = load_train_config(config)
    # engines may start elsewhere: relative store paths are made absolute (other evaluators keep the config as given)
    base = config_to_dict(resolve_paths(loaded, Path.cwd()) if kind == "cluster" else loaded)
    if not base["data"].get("val_split"):
        raise ValueError("the search needs a validation split (data.val_split) for its objectives")
    space = dict(space)
    check_space(base, space, objectives)
    out = Path(out).absolute()
    settings = {"config": base, "space": space, **({"objectives": list(objectives)} if objectives != ("loss",) else {})}
    open_study(out, STUDY, settings, grows=[], command=COMMAND)
    def prepare() -> tuple[list[int], list[dict[str, Any]]]:
        reported = pd.read_csv(out / RESULTS)["job_id"].tolist() if (out / RESULTS).is_file() else []
        return reported, set_aside_unfinished(out, reported, list(space)) if len(reported) < max_evals else []

    prepared: dict[str, Any] = {}
    on_rank_0(lambda: prepared.update(done=prepare()))  # an error there is raised on every rank
    reported, unfinished = comm.bcast(prepared.get("done"), root=0)
    remaining = max_evals - len(reported)
    if remaining <= 0:
        return hpo_table(out)
    run_function = functools.partial(run_trial, base={**base, "progress": False}, out=str(out), objectives=objectives,
                                     timing_structures=timing_structures)

    def make_search() -> Any:
        # a new random state on each continuation, so that the initial random points are not repeated
        return CBO(search_problem(space), random_state=seed + len(reported), log_dir=str(out), checkpoint_restart=True,
                   n_initial_points=initial_points, initial_points=unfinished or None, verbose=0)

    # DeepHyper counts the job ids of the reloaded results too; capping the ids makes max_evals exact
    # even with several trials at a time (its max_evals_strict would count from zero after a reload)
    job_cap = (max(reported) + 1 if reported else 0) + remaining
    if kind == "mpi":
        mpi_search(comm, ranks_per_trial, run_function, make_search, remaining, job_cap, **run_function.keywords)
    elif kind == "cluster":
        _engine_search(where, run_function, make_search, remaining, job_cap)
    else:
        if kind == "thread" and workers > 1:
            log.warning("%d trials at a time in threads of one process: concurrent trainings share torch's state "
                        "and were seen to diverge or crash; use evaluator 'process' (or 'mpi')", workers)
        created = Evaluator.create(run_function, method=kind, method_kwargs={"num_workers": workers})
        created.set_maximum_num_jobs_submitted(job_cap)
        make_search().search(created, max_evals=remaining)
    return hpo_table(out)


def _engine_search(cluster: Any, run_function: Any, make_search: Any, max_evals: int, job_cap: int) -> None:
    """The search with its trials on ipyparallel engines: ``cluster`` running, or a profile's name (its
    engines are started for the search and stopped after it)."""
    from gfmkit.hpo.engines import engine_evaluator

    owned = isinstance(cluster, str)
    if owned:
        from gfmkit.cluster import start

        cluster = start(cluster)
    try:
        created = engine_evaluator(run_function, cluster)
        created.set_maximum_num_jobs_submitted(job_cap)
        make_search().search(created, max_evals=max_evals)
    finally:
        if owned:
            cluster.stop()


def _objective_values(results: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """Each objective's own value per row (NaN for failed trials), from DeepHyper's objective columns."""
    columns = ["objective"] if len(objectives) == 1 else [f"objective_{i}" for i in range(len(objectives))]
    return pd.DataFrame({OBJECTIVES[name].column: from_deephyper(pd.to_numeric(results[c], errors="coerce"), name)
                         for name, c in zip(objectives, columns)})


def hpo_table(out: str | os.PathLike) -> pd.DataFrame:
    """One row per trial, in the order they finished: its values, status, every measure it recorded
    (:data:`gfmkit.hpo.objectives.MEASURES`; the searched objectives first), the best value of the first
    objective so far, ``pareto`` (with several objectives: no other finished trial is at least as good on
    every objective and better on one), and its run directory; from ``out``'s files alone."""
    out = Path(out)
    study = read_study(out, STUDY, COMMAND)
    objectives = study.get("objectives", ["loss"])
    columns = [OBJECTIVES[n].column for n in objectives]
    if not (out / RESULTS).is_file():
        return pd.DataFrame(columns=["trial", *study["space"], "status", *columns, "best_so_far", "run_dir"])
    results = pd.read_csv(out / RESULTS)
    table = pd.DataFrame({"trial": [trial_dir(out, j).name for j in results["job_id"]]})
    for key in study["space"]:
        table[key] = results[f"p:{key}"]
    values = _objective_values(results, objectives)
    table["status"] = values.notna().all(axis=1).map({True: "done", False: "failed"})
    for column in columns:
        table[column] = values[column]
    for column in (*MEASURES, "precision"):
        if column not in table and f"m:{column}" in results:
            table[column] = results[f"m:{column}"]
    table["best_so_far"] = table[columns[0]].cummin() if not OBJECTIVES[objectives[0]].maximise else table[columns[0]].cummax()
    if len(objectives) > 1:
        table["pareto"] = pareto_mask(table, objectives)
    table["run_dir"] = [str(trial_dir(out, j)) for j in results["job_id"]]
    return table


def _as_costs(table: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    """The objectives of ``table``'s rows as costs to minimise (maximised ones negated)."""
    return np.column_stack([OBJECTIVES[n].cost_sign * table[OBJECTIVES[n].column].to_numpy(float) for n in objectives])


def pareto_mask(table: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """True for the finished trials on the Pareto front of ``objectives`` (DeepHyper's non-dominated set;
    of trials with identical objectives, each is kept)."""
    from deephyper.skopt.moo import non_dominated_set

    done = table["status"] == "done"
    mask = pd.Series(False, index=table.index)
    if done.any():
        costs = _as_costs(table[done], objectives)
        front = costs[non_dominated_set(costs)]
        mask[done] = [bool((front == row).all(axis=1).any()) for row in costs]
    return mask


def pareto_table(out: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The Pareto-front trials of a search with several objectives, sorted by the first objective."""
    table = out if isinstance(out, pd.DataFrame) else hpo_table(out)
    if "pareto" not in table:
        raise ValueError("a Pareto front needs a search with several objectives")
    return table[table["pareto"]].sort_values(first_objective(table)).reset_index(drop=True)


def first_objective(table: pd.DataFrame) -> str:
    """The column of a search table's first objective (the first column after ``status``)."""
    return str(table.columns[table.columns.get_loc("status") + 1])


def best_trial(table: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """The trial :func:`best_config` picks. One objective: its best value. Several: the knee of the
    Pareto front, the front's trial closest (Euclidean) to the ideal point once every objective is
    scaled to [0, 1] over the finished trials (0 its best value, 1 its worst)."""
    done = table[table["status"] == "done"]
    if done.empty:
        raise ValueError("no finished trial yet")
    costs = _as_costs(done, objectives)
    if len(objectives) == 1:
        return done.iloc[int(np.argmin(costs[:, 0]))]
    front = pareto_mask(done, objectives).to_numpy()
    low, span = costs.min(axis=0), np.ptp(costs, axis=0)
    scaled = (costs - low) / np.where(span > 0, span, 1.0)
    distance = np.where(front, np.linalg.norm(scaled, axis=1), np.inf)
    return done.iloc[int(np.argmin(distance))]


def best_config(out: str | os.PathLike) -> dict[str, Any]:
    """The training config of the best finished trial (:func:`best_trial`), to train longer or fine-tune from."""
    study = read_study(out, STUDY, COMMAND)
    try:
        best = best_trial(hpo_table(out), study.get("objectives", ["loss"]))
    except ValueError:
        raise ValueError(f"{out}: no finished trial yet") from None
    return set_path(study["config"], {key: best[key] for key in study["space"]})
