"""Where a two-objective search's trials run, and how far its throughput objective can be trusted.

    .venv/bin/python benchmarks/hpo_evaluators.py [--quick] [--trials N] [--steps N] [--out FILE.json] [--data DIR]

1. The same search (``--trials`` trials, 6; objectives error and throughput; width, force weight and
   precision searched; ``--steps`` steps per trial, 40; 10 with --quick) through ``gfmkit hpo`` with the
   thread evaluator (one trial at a time), under ``mpiexec -n 3 --evaluator mpi`` (two 1-rank trials at a
   time) and under ``mpiexec -n 3 --evaluator mpi --ranks-per-trial 2`` (one 2-rank trial at a time): the
   command's wall time, and the search's own span (first training start to last result).
2. The timing pass of one trained trial, repeated ``--repeats`` times (7) alone and while a training runs
   in another process (what a timing pass inside concurrent trials sees): median throughput and its
   coefficient of variation.

Prints one JSON document to stdout.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SPACE = {"model.hidden": {"choices": [16, 32]}, "loss.forces": [1.0, 10.0, "log-uniform"],
         "precision": {"choices": ["fp64", "fp32", "bf16-autocast"]}}


def gfmkit_command(ranks: int) -> list[str]:
    gfmkit = [sys.executable, "-c", "import sys; from gfmkit.cli import main; sys.exit(main())"]
    if ranks == 1:
        return gfmkit
    mpiexec = Path(sys.executable).parent / "mpiexec"
    return [str(mpiexec if mpiexec.exists() else shutil.which("mpiexec")), "-n", str(ranks), *gfmkit]


def search(work: Path, name: str, ranks: int, extra: list[str], trials: int) -> dict:
    """One ``gfmkit hpo`` search in ``work/name``: wall time, span and trials."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [*gfmkit_command(ranks), "hpo", "config.yaml", "space.yaml", "--out", name, "--max-evals", str(trials),
               "--objectives", "error,throughput", "--initial-points", str(min(trials, 4)), *extra]
    common.log(f"{name}: {' '.join(command[-12:])}")
    started = time.perf_counter()
    subprocess.run(command, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    from gfmkit.hpo import hpo_table, trainings

    table = hpo_table(work / name)
    started_trainings = trainings(work / name)
    starts = [s["time"] for s in started_trainings]
    last = max(Path(r, "metrics.jsonl").stat().st_mtime for r in table["run_dir"])
    return {"evaluator": name, "ranks": ranks, "command_wall_s": wall, "search_span_s": last - min(starts),
            "trials_done": int((table["status"] == "done").sum()), "trainings": len(starts),
            "pareto_trials": int(table["pareto"].sum()), "ranks_per_trial": sorted({s["ranks"] for s in started_trainings})}


def timing_noise(work: Path, run_dir: Path, repeats: int, steps: int) -> dict:
    """The timing pass of ``run_dir``'s model alone, then while another training runs."""
    from gfmkit.hpo.objectives import inference_cost
    from gfmkit.rundir import RunDir

    config = yaml.safe_load((run_dir / "config.yaml").read_text())

    def passes() -> list[float]:
        return [inference_cost(RunDir(run_dir).best_checkpoint(), config["data"]["stores"], split="val",
                               precision=config["precision"])["throughput"] for _ in range(repeats)]

    def summary(values: list[float]) -> dict:
        return {"median_structures_per_s": statistics.median(values),
                "cv": statistics.pstdev(values) / statistics.mean(values), "values": [round(v, 1) for v in values]}

    alone = passes()
    busy = {**config, "max_steps": steps * 50, "validate_every": steps * 50, "checkpoint_every": steps * 50}
    (work / "busy.yaml").write_text(yaml.safe_dump(busy))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    other = subprocess.Popen([*gfmkit_command(1), "train", "busy.yaml", "--out", "busy"], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (work / "busy" / "metrics.jsonl").exists() and other.poll() is None:
            time.sleep(0.2)  # wait until it trains
        during = passes()
        still_training = other.poll() is None
    finally:
        other.kill()
        other.wait()
    return {"precision": config["precision"], "alone": summary(alone), "during_a_training": summary(during),
            "training_ran_throughout": still_training}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args(argv)
    steps = args.steps or (10 if args.quick else 40)
    scale = 0.05 if args.quick else 0.3
    data, _ = common.demo_data(args.data, f"hpo-demo-{scale:g}", None, scale)
    work = Path(tempfile.mkdtemp(prefix="gfmkit-hpo-evaluators-"))
    config = {"data": {"stores": [str(data)]}, "model": {"hidden": 16, "layers": 2, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8},
              "sampler": {"batch_size": 8}, "max_steps": steps, "validate_every": steps, "checkpoint_every": steps,
              "device": "cpu", "progress": False}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE))
    runs = [search(work, "thread", 1, ["--evaluator", "thread"], args.trials),
            search(work, "mpi", 3, ["--evaluator", "mpi"], args.trials),
            search(work, "mpi-2-ranks", 3, ["--evaluator", "mpi", "--ranks-per-trial", "2"], args.trials)]
    first = work / pd.read_csv(work / "thread" / "hpo.csv")["run_dir"].iloc[0]  # relative to work, as --out was
    report = {"benchmark": "hpo_evaluators", "quick": args.quick, "machine": common.machine_info(),
              "setup": {"trials": args.trials, "steps_per_trial": steps, "demo_scale": scale, "space": SPACE},
              "searches": runs, "timing_noise": timing_noise(work, first, args.repeats or 7, steps)}
    common.emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
