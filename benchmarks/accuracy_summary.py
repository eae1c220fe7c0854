"""Pool the runs of any number of ``benchmarks/accuracy.py`` reports into one table (issue #15).

    PYTHONPATH=. python benchmarks/accuracy_summary.py benchmarks/results/accuracy-*.json [--rules last,val_loss]

Runs are grouped by dataset, steps, loss weights, model (``gfmkit[variant]`` or the peer) and checkpoint
rule (``TrainConfig.best_checkpoint``: ``last``, the final record; ``val_loss``, the lowest validation
loss, decided by gfmkit's trainer); a run found in more than one file (same dataset, steps, loss, model
and seed) counts once, from the first file given. Diverged runs are counted and left out. For each
group: n, seeds and the test MAE's mean and sd per metric (energy meV/atom, forces meV/Å, stress
meV/Å^3). Each gfmkit variant is compared with schnetpack in the same dataset, steps, loss and rule:
Welch's t of the means (positive: gfmkit's error higher) and, over the seeds both ran (same seed = same
initial-weight seed and batch order), the mean paired difference gfmkit - schnetpack, its sd, the
paired t and how many seeds gfmkit was lower. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import LR, choose  # noqa: E402 - the benchmark's own rule for the kept checkpoint

METRICS = ("energy_mae", "forces_mae", "stress_mae")
PEER = "schnetpack"
#: what the runs labelled "default" that record no model config were: the defaults before message_gain
BEFORE_THE_GAIN = "message-gain-1"


def load_runs(paths: list[Path]) -> tuple[list[dict[str, Any]], int]:
    """All runs of the reports, each once (the first file wins); and how many duplicates were dropped."""
    runs: dict[tuple, dict[str, Any]] = {}
    duplicates = 0
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            if run["name"] == "gfmkit[default]" and "model_config" not in run:  # from before the message gain
                run = {**run, "name": f"gfmkit[{BEFORE_THE_GAIN}]"}
            loss = tuple(sorted(run["loss"].items()))
            lr = run.get("lr", LR)  # reports from before --lr ran at the default
            key = (run["dataset"], run["steps"], loss, lr, run["name"], run["seed"])
            if key in runs:
                duplicates += 1
                continue
            runs[key] = {**run, "loss_key": loss, "lr": lr, "file": path.name}
    return list(runs.values()), duplicates


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def welch_t(a: list[float], b: list[float]) -> float | None:
    """Welch's t of mean(a) - mean(b); None with fewer than two values a side or no spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return (statistics.fmean(a) - statistics.fmean(b)) / se if se > 0 else None


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """a - b over the seeds in both: n, mean, sd, paired t and how many seeds a was lower."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    sd = statistics.stdev(diffs)
    return {"n": len(seeds), "mean": statistics.fmean(diffs), "sd": sd,
            "t": statistics.fmean(diffs) / (sd / math.sqrt(len(diffs))) if sd > 0 else None,
            "lower_in": sum(d < 0 for d in diffs), "differences": {s: round(d, 3) for s, d in zip(seeds, diffs)}}


def pool(runs: list[dict[str, Any]], rules: list[str]) -> dict[str, Any]:
    """The pooled rows and the gfmkit-vs-schnetpack comparisons."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["steps"], run["loss_key"], run["lr"], run["name"]), []).append(run)
    rows, values = [], {}
    for (dataset, steps, loss, lr, name), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ok = sorted((r for r in members if "diverged_at" not in r and r["records"]), key=lambda r: r["seed"])
        for rule in rules:
            tests = {r["seed"]: choose(r["records"], rule)["test"] for r in ok}
            row: dict[str, Any] = {"dataset": dataset, "steps": steps, "loss": dict(loss), "lr": lr, "model": name, "rule": rule,
                                   "n": len(ok), "diverged": len(members) - len(ok), "seeds": [r["seed"] for r in ok]}
            for metric in METRICS:
                by_seed = {seed: test[metric] for seed, test in tests.items() if metric in test}
                if by_seed:
                    row[metric] = mean_sd(list(by_seed.values()))
                    values[(dataset, steps, loss, lr, rule, name, metric)] = by_seed
            rows.append(row)
    comparisons = []
    for (dataset, steps, loss, lr, rule, name, metric), ours in sorted(values.items(), key=lambda kv: str(kv[0])):
        peer = values.get((dataset, steps, loss, lr, rule, PEER, metric))
        if not name.startswith("gfmkit") or peer is None:
            continue
        a, b = list(ours.values()), list(peer.values())
        comparisons.append({"dataset": dataset, "steps": steps, "loss": dict(loss), "lr": lr, "rule": rule, "metric": metric,
                            "gfmkit": name, "n": [len(a), len(b)],
                            "ratio_of_means": statistics.fmean(a) / statistics.fmean(b),
                            "welch_t": welch_t(a, b), "paired": paired(ours, peer)})
    return {"rows": rows, "comparisons": comparisons}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", type=Path, nargs="+", help="accuracy JSON reports")
    p.add_argument("--rules", default="last,val_loss", help="checkpoint rules, comma-separated")
    args = p.parse_args(argv)
    runs, duplicates = load_runs(args.files)
    report = {"files": [str(f) for f in args.files], "runs": len(runs), "duplicates_dropped": duplicates,
              **pool(runs, [r for r in args.rules.split(",") if r])}
    json.dump(report, sys.stdout, indent=1)
    print()
    return report


if __name__ == "__main__":
    main()
