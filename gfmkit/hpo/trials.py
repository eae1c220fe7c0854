"""One trial of a search: a training run in ``out/trials/trial-NNNN`` and the measures of its model.

Every training a search starts appends one line to
``out/trainings.jsonl`` (trial, values, whether it resumed a checkpoint, process, time): the count of
trainings actually run, kept by the trials themselves.

A search that was killed leaves trials that never reported: :func:`set_aside_unfinished` (called before
a search continues) renames their directories ``trials/unfinished-NNNN`` and returns their values, which
the search evaluates first; the job that gets those values takes the directory back and its training
resumes from the last checkpoint (or starts again if it never wrote one), so no finished trial is
trained twice and no interrupted one is lost.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gfmkit.comm import SerialComm, use_world
from gfmkit.config import config_to_dict
from gfmkit.hpo.objectives import MEASURES, timing_lock, to_deephyper, trial_measures
from gfmkit.hpo.space import set_path
from gfmkit.log import get_logger

log = get_logger(__name__)
TRAININGS = "trainings.jsonl"
UNFINISHED = "unfinished-"


def job_index(job_id: Any) -> int:
    """DeepHyper's job id ("0.7", or 7) as its index (7)."""
    return int(str(job_id).split(".")[-1])


def trial_dir(out: str | os.PathLike, job_id: Any) -> Path:
    """The run directory of DeepHyper job ``job_id`` ("0.7" -> trials/trial-0007)."""
    return Path(out) / "trials" / f"trial-{job_index(job_id):04d}"


def plain(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Job parameters as plain Python values (numpy scalars from the sampler unwrapped)."""
    return {str(k): (v.item() if hasattr(v, "item") else v) for k, v in dict(parameters).items()}


def _same_values(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.dumps(plain(a), sort_keys=True) == json.dumps(plain(b), sort_keys=True)


def get_path(config: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a nested config (None where it is missing)."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def set_aside_unfinished(out: str | os.PathLike, reported: Sequence[int], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Rename every trial directory whose job is not in ``reported`` and whose training started (it
    holds ``config.yaml``) to ``trials/unfinished-NNNN``; return the values (of the space's ``keys``,
    read from the saved configs) of every unfinished trial, to be evaluated first."""
    import yaml

    trials = Path(out) / "trials"
    if not trials.is_dir():
        return []
    done = {int(j) for j in reported}
    for path in sorted(trials.glob("trial-*")):
        if job_index(path.name.split("-")[-1]) not in done and (path / "config.yaml").is_file():
            target = trials / f"{UNFINISHED}{path.name.split('-')[-1]}"
            while target.exists():
                target = target.with_name(target.name + "x")
            path.rename(target)
            log.info("trial %s did not report: set aside as %s, to be resumed first", path.name, target.name)
    points: list[dict[str, Any]] = []
    for path in sorted(trials.glob(f"{UNFINISHED}*")):
        saved = yaml.safe_load((path / "config.yaml").read_text())
        values = {key: get_path(saved, key) for key in keys}
        if not any(_same_values(values, p) for p in points):
            points.append(values)
    return points


def claim_directory(out: str | os.PathLike, job_id: Any, settings: Mapping[str, Any]) -> Path:
    """The job's run directory; an unfinished trial's directory of the same settings is taken over."""
    run_dir = trial_dir(out, job_id)
    if not run_dir.exists():
        for path in sorted((Path(out) / "trials").glob(f"{UNFINISHED}*")):
            try:
                if same_trial(path, settings):
                    path.rename(run_dir)  # atomic: of two jobs with these values one wins, the other starts afresh
                    log.info("trial %s resumes the unfinished trial %s", run_dir.name, path.name)
                    break
            except (FileNotFoundError, OSError):
                continue
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def record_training(out: str | os.PathLike, run_dir: Path, job_id: Any, parameters: Mapping[str, Any], ranks: int) -> None:
    """Append one line to ``out/trainings.jsonl``: a trial's training starts now."""
    record = {"trial": run_dir.name, "job_id": job_index(job_id), "parameters": plain(parameters),
              "resumed": (run_dir / "checkpoints" / "last.pt").is_file(), "ranks": ranks,
              "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    with open(Path(out) / TRAININGS, "a") as handle:  # one short append per line: atomic on local disks
        handle.write(json.dumps(record) + "\n")


def trainings(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every training start a search in ``out`` recorded (:func:`record_training`), in order."""
    path = Path(out) / TRAININGS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def same_trial(run_dir: Path, settings: Mapping[str, Any]) -> bool:
    """Whether ``run_dir`` holds a run of exactly ``settings`` (progress aside)."""
    from gfmkit.train import load_train_config

    saved = config_to_dict(load_train_config(run_dir / "config.yaml"))
    wanted = config_to_dict(load_train_config(settings))
    return {k: v for k, v in saved.items() if k != "progress"} == {k: v for k, v in wanted.items() if k != "progress"}


def failure(reason: str, objectives: Sequence[str]) -> str | tuple[str, ...]:
    """A failed trial as DeepHyper takes it: ``F_reason``, once per objective when there are several
    (a lone string first would make DeepHyper write a one-objective results.csv)."""
    return reason if len(objectives) == 1 else (reason,) * len(objectives)


def run_trial(job: Any, *, base: Mapping[str, Any], out: str, objectives: Sequence[str] = ("loss",),
              timing_structures: int = 16) -> dict[str, Any] | str | tuple[str, ...]:
    """DeepHyper's run function: train the base config with the job's values and measure the model
    (:mod:`gfmkit.hpo.objectives`). Module-level (its data bound by ``functools.partial``) so that the
    process and MPI evaluators can send it to their workers. Inside an MPI search, the trial trains on
    its own group of ranks (:mod:`gfmkit.hpo.evaluators`), never on the job's world."""
    from gfmkit.hpo.evaluators import trial_group

    group = trial_group()
    parameters = plain(job.parameters)
    if group is not None and group.size > 1:
        group.bcast(("trial", str(job.id), parameters), root=0)  # the group's other ranks train alongside
    return train_trial(str(job.id), parameters, base=base, out=out, objectives=objectives,
                       timing_structures=timing_structures, group=group)


def train_trial(job_id: str, parameters: Mapping[str, Any], *, base: Mapping[str, Any], out: str,
                objectives: Sequence[str], timing_structures: int, group: Any = None) -> dict[str, Any] | str | tuple[str, ...]:
    """Train one trial on ``group`` (None: this process alone, or the threads/processes evaluators) and,
    on its first rank, return DeepHyper's output: objectives and measures, or a failure ("F_...")."""
    from gfmkit.hpo.evaluators import group_distributed
    from gfmkit.train import TrainingError, load_train_config
    from gfmkit.train.trainer import Trainer

    group = group or SerialComm()
    lead = group.rank == 0
    settings = set_path(base, parameters)
    verdict: tuple[str, str] = ("ok", "")
    if lead:
        run_dir = claim_directory(out, job_id, settings)
        if (run_dir / "config.yaml").is_file() and not same_trial(run_dir, settings):
            log.warning("trial %s: %s holds a run of other values; reported as failed", job_id, run_dir)
            verdict = ("F_directory_of_another_trial", str(run_dir))
        else:
            record_training(out, run_dir, job_id, parameters, group.size)
            verdict = ("ok", str(run_dir))
    verdict = group.bcast(verdict, root=0)
    if verdict[0] != "ok":
        return failure(verdict[0], objectives)
    run_dir = Path(verdict[1])
    failed = None
    try:
        config = load_train_config(settings)
        with use_world(group):
            dist = group_distributed(group, config.device)
            Trainer(settings, run_dir, resume="auto", dist=dist).fit()
    except (TrainingError, RuntimeError, ValueError) as exc:
        log.warning("trial %s failed: %s", run_dir.name, exc)
        failed = "F_training_failed"
    if not lead:
        return failure(failed or "F_not_the_trial_lead", objectives)
    if failed:
        return failure(failed, objectives)
    try:
        measures = trial_measures(run_dir, stores=config.data.stores, split=str(config.data.val_split),
                                  precision=config.precision, device=dist.device, structures=timing_structures,
                                  lock_file=timing_lock(out))
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        log.warning("trial %s: no measures: %s", run_dir.name, exc)
        return failure("F_no_measures", objectives)
    if not all(math.isfinite(measures[c]) for c in ("best_val_loss", "val_error")):
        return failure("F_no_finite_validation_loss", objectives)
    return {"objective": to_deephyper(measures, objectives),
            "metadata": {"run_dir": str(run_dir), "precision": config.precision, "ranks": group.size,
                         **{k: measures[k] for k in MEASURES}}}
