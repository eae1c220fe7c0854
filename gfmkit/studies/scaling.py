"""Strong and weak scaling of training through a machine profile.

The same training config runs at several sizes: rank counts on a ``local`` profile (here 1 and 2),
node counts on a site profile. *Strong* scaling keeps the global batch; *weak* scaling grows it with
the workers, so each rank's share stays the same. Each run is a real ``gfmkit train`` in its own run
directory, started by the profile's launcher (``mpiexec``, ``srun``) or, on a site, submitted as a
batch job; :func:`scaling_table` then reads the run directories alone:

* throughput = structures of the timed steps / wall time between the first and the last timed step
  (the first ``warmup`` steps are left out: start-up, first batches, allocator warm-up);
* speedup = throughput / throughput of the smallest run;
* efficiency = speedup / (workers / workers of the smallest run) — for weak scaling too, since the
  work per worker is fixed there, it is the same ratio of per-worker throughputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gfmkit.cluster.profiles import Profile, as_profile
from gfmkit.cluster.scripts import render_batch_script, submit
from gfmkit.config import config_to_dict
from gfmkit.files import atomic_write_text
from gfmkit.progress import progress_bar
from gfmkit.rundir import RunDir
from gfmkit.studies.registry import Ref, Study

PLAN = "scaling.json"
MODES = ("strong", "weak")


def run_throughput(run_dir: str | os.PathLike, warmup: int = 5) -> dict[str, float]:
    """Throughput and time shares of a finished training run, from its ``metrics.jsonl``.

    Only the run's last segment counts (after its last start or resume); its first ``warmup`` (at
    least 1) train records are left out, and the wall time runs from the end of the last of them to
    the end of the run. Needs records of one step each (``log_every: 1``). A
    step's ``compute_s`` includes its collectives (``comm_s``), so shares are of data + compute.
    """
    run = RunDir(run_dir)
    path = run.metrics_path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (the run has not started, or failed)")
    warmup = max(1, warmup)
    records = run.records()
    # only the last segment of a resumed run: the wall time across a stop and a resume is not throughput
    starts = [k for k, r in enumerate(records) if r.get("phase") == "event" and r.get("event") in ("start", "resume")]
    steps = [r for r in records[starts[-1] if starts else 0:] if r.get("phase") == "train"]
    if len(steps) <= warmup:
        raise ValueError(f"{path}: {len(steps)} train records, need more than {warmup} (warmup {warmup})")
    timed = steps[warmup:]
    wall = timed[-1]["time"] - steps[warmup - 1]["time"]
    structures = sum(r["structures"] for r in timed)
    n_steps = sum(r.get("steps", 1) for r in timed)
    data = sum(r.get("data_s", 0.0) for r in timed)
    compute = sum(r.get("compute_s", 0.0) for r in timed)
    comm = sum(r.get("comm_s", 0.0) for r in timed)
    busy = data + compute
    return {
        "structures_per_s": structures / wall,
        "steps_per_s": n_steps / wall,
        "structures_per_step": structures / n_steps,
        "data_share": data / busy if busy else float("nan"),
        "comm_share": comm / busy if busy else float("nan"),
        "data_ms_per_step": 1000 * data / n_steps,
        "compute_ms_per_step": 1000 * compute / n_steps,
        "collective_ms_per_step": 1000 * comm / n_steps,
        "timed_steps": n_steps,
        "structures": structures,
    }


def scaled_config(config: Mapping[str, Any], workers: int, base_workers: int, mode: str) -> dict[str, Any]:
    """``config`` for ``workers``: unchanged (strong) or with batch sizes times workers/base (weak)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = json.loads(json.dumps(dict(config)))
    out["log_every"] = 1
    if mode == "weak":
        sampler = out.setdefault("sampler", {})
        factor = workers / base_workers
        scaled = False
        for key in ("batch_size", "max_atoms", "max_edges"):
            if sampler.get(key) is not None:
                sampler[key] = max(1, round(sampler[key] * factor))
                scaled = True
        if not scaled:  # the config relies on the default batch size
            sampler["batch_size"] = max(1, round(16 * factor))
    return out


def plan_scaling(
    config: Mapping[str, Any] | str | os.PathLike,
    sizes: Sequence[int],
    out: str | os.PathLike,
    *,
    mode: str = "strong",
    profile: Profile | str | os.PathLike = "local",
    ranks_per_node: int | None = None,
    **script: Any,
) -> pd.DataFrame:
    """Write one config (and, for a scheduler, one batch script) per size into ``out``.

    ``sizes`` are rank counts for a profile without a scheduler, node counts otherwise. ``script``
    goes to :func:`render_batch_script` (account, queue, walltime). Returns the plan as a table.
    """
    profile = as_profile(profile)
    if isinstance(config, (str, os.PathLike)):
        config = yaml.safe_load(Path(config).read_text())
    config = config_to_dict(config)
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive integers, got {sizes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        nodes, per_node = (1, size) if profile.scheduler == "none" else (size, ranks_per_node)
        values = profile.placeholders(nodes, per_node)
        name = f"{mode}-{size:04d}"
        config_path = out / f"{name}.yaml"
        atomic_write_text(config_path, yaml.safe_dump(scaled_config(config, size, sizes[0], mode), sort_keys=False))
        run_dir = out / name
        command = [sys.executable, "-m", "gfmkit.cli", "train", str(config_path.absolute()),
                   "--out", str(run_dir.absolute()), "--no-progress"]
        row = {"name": name, "workers": size, "nodes": values["nodes"], "ranks": values["ranks"],
               "config": str(config_path), "run_dir": str(run_dir), "command": command, "script": None}
        if profile.scheduler != "none":
            script_path = out / f"{name}.{profile.submit_command}"
            atomic_write_text(script_path, render_batch_script(profile, command, nodes, per_node,
                                                              job_name=f"gfmkit-{name}", **script))
            row["script"] = str(script_path)
        rows.append(row)
    plan = {"mode": mode, "profile": str(profile.source or profile.name), "scheduler": profile.scheduler, "runs": rows}
    atomic_write_text(out / PLAN, json.dumps(plan, indent=1))
    return pd.DataFrame(rows)


def run_scaling(
    config: Mapping[str, Any] | str | os.PathLike,
    sizes: Sequence[int] = (1, 2),
    out: str | os.PathLike = "runs/scaling",
    *,
    mode: str = "strong",
    profile: Profile | str | os.PathLike = "local",
    threads_per_rank: int = 1,
    warmup: int = 5,
    submit_jobs: bool = False,
    timeout: float | None = None,
    **script: Any,
) -> pd.DataFrame:
    """Plan and run a scaling study; the table of :func:`scaling_table` (or the plan, for jobs).

    On a profile without a scheduler the runs start one after another here, through the profile's
    launcher, with ``threads_per_rank`` OpenMP threads each. On a site profile the batch scripts are
    written and, with ``submit_jobs``, submitted; read the results later with :func:`scaling_table`.
    """
    profile = as_profile(profile)
    plan = plan_scaling(config, sizes, out, mode=mode, profile=profile, **script)
    if profile.scheduler != "none":
        if submit_jobs:
            plan["job"] = [submit(profile, path) for path in plan["script"]]
        return plan
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_rank), MKL_NUM_THREADS=str(threads_per_rank))
    for row in progress_bar(plan.itertuples(), total=len(plan), desc="scaling runs", unit="run"):
        command = profile.launch_command(1, row.ranks)
        command[0] = profile.launcher_path()
        result = subprocess.run(command + list(row.command), env=env, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"scaling run {row.name} ({row.ranks} ranks) failed with exit code "
                               f"{result.returncode}:\n{result.stderr[-3000:]}")
    return scaling_table(out, warmup=warmup)


def scaling_table(out: str | os.PathLike, *, warmup: int = 5) -> pd.DataFrame:
    """Throughput, speedup and efficiency of every finished run of the study in ``out``."""
    plan = json.loads((Path(out) / PLAN).read_text())
    rows = []
    for run in plan["runs"]:
        row = {"mode": plan["mode"], "workers": run["workers"], "nodes": run["nodes"], "ranks": run["ranks"]}
        try:
            row.update(run_throughput(Path(out) / Path(run["run_dir"]).name, warmup))
        except (FileNotFoundError, ValueError) as exc:
            row["missing"] = str(exc)
        rows.append(row)
    table = pd.DataFrame(rows)
    if "structures_per_s" in table:
        done = table["structures_per_s"].notna()
        if done.any():
            base = table[done].iloc[0]
            table["speedup"] = table["structures_per_s"] / base["structures_per_s"]
            table["efficiency"] = table["speedup"] / (table["workers"] / base["workers"])
    return table


REGISTRY_ENTRY = Study(
    name="scaling", title="scaling study", marker=PLAN, help="strong/weak scaling of training through an hpc profile",
    run=run_scaling, table=scaling_table, figure=Ref("gfmkit.viz.scaling:scaling_figure"))
