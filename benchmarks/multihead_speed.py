"""Multi-head inference: structures/s against the number of heads, naive against one encoder pass.

    .venv/bin/python benchmarks/multihead_speed.py [--quick] [--out FILE.json] [--heads 1,2,4,8,16]

The structures, hyperparameters and dtypes of model_speed.py: a batch of 16 periodic 32-atom CuAu cells
(benchmarks/peers.py ``cuau_cells``), PaiNN 128 features / 3 layers / 20 radial functions / 5 Å, a
128-64-1 MLP per head, float32 and float64. For K heads (random weights, one model per K), energy +
forces of every head:

- ``naive``: K full passes (``model(batch)`` with every structure on head k: forward + backward each);
- ``each``: ``model.predict(batch, forces="each")``: one encoder pass, per-head forces from K
  ``autograd.grad`` calls on the one graph (``per_head="loop"``, gfmkit's default);
- ``each_batched``: the same with ``per_head="batched"`` (one vmap'd vector-Jacobian product; results
  that measured it before 2026-11-30 needed the since-removed ``--vmap-shim``: an out-of-place copy of the
  encoder's backward, which now runs under vmap itself);
- ``weighted``: ``model.predict(batch, forces="weighted", weights="uniform")``: one pass, one backward;
- ``single``: ``model(batch)`` of a one-head model, the reference for "weighted at 16 heads costs <= 1.3x
  a single head".

Timings per dtype and K are interleaved (one call of each case per round, ``common.time_interleaved``),
median of ``--repeats`` after a warm-up; ratios are formed from medians of the same rounds, and also from
the fastest call of each case (``ratios_of_min_times``: on a busy shared machine the least disturbed
call; the goals are checked on the medians). Prints one
JSON document; with ``--out`` (default benchmarks/results/multihead_speed-<date>.json) writes it too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
from common import emit, log, machine_info, time_interleaved

GOALS = {"weighted_over_naive_at_8": 5.0, "each_over_naive_at_8": 1.5, "weighted_16_over_single_max": 1.3}


def build(n_heads: int, dtype: torch.dtype, structures: list, device: str):
    from gfmkit.data.graphs import collate, structure_graph
    from gfmkit.models import HeadConfig, ModelConfig, MultiHeadPaiNN

    torch.manual_seed(n_heads)
    config = ModelConfig(hidden=peers.HIDDEN, layers=peers.LAYERS, n_rbf=peers.N_RBF, cutoff=peers.CUTOFF,
                         head_hidden=peers.HEAD_HIDDEN)
    heads = [HeadConfig(name=f"head{k}", reference_energies={"Cu": -0.1 * k, "Au": 0.05 * k}) for k in range(n_heads)]
    model = MultiHeadPaiNN(config, heads).to(dtype).to(device).eval()
    graphs = [structure_graph({"numbers": a.numbers, "positions": a.positions, "cell": np.asarray(a.cell),
                               "pbc": a.pbc}, head=0, cutoff=peers.CUTOFF, dtype=dtype) for a in structures]
    return model, collate(graphs).to(device)


def cases(model, batch, n_heads: int, batched: bool) -> dict[str, Any]:
    probes = []
    for k in range(n_heads):
        probe = batch.clone()
        probe.dataset = torch.full_like(batch.dataset, k)
        probes.append(probe)
    out = {
        "naive": lambda: [model(p, forces=True) for p in probes],
        "each": lambda: model.predict(batch, forces="each"),
        "weighted": lambda: model.predict(batch, forces="weighted", weights="uniform"),
    }
    if batched:
        out["each_batched"] = lambda: model.predict(batch, forces="each", per_head="batched")
    return out


def batched_runs(model, batch) -> str | None:
    """None when ``per_head="batched"`` runs (and agrees with the loop), else why not."""
    try:
        got = model.predict(batch, forces="each", per_head="batched").forces
    except NotImplementedError as error:
        return str(error)
    want = model.predict(batch, forces="each").forces
    error = float((got - want).abs().max())
    scale = float(want.abs().max())
    return None if error <= 1e-4 * scale else f"batched forces differ from the loop by {error:.3g}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 4, heads 1,2,4,8, 1 warm-up, 3 repeats")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/multihead_speed-<date>.json)")
    p.add_argument("--heads", default=None, help="comma-separated head counts (1,2,4,8,16)")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--batch", type=int, default=None, help="structures per batch (16; 4 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds, median reported (5; 3 with --quick)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tune-allocator", action="store_true", help="gfmkit.performance.tune_allocator() first")
    p.add_argument("--cases", default=None, help="comma-separated subset of single,naive,each,each_batched,weighted (all)")
    args = p.parse_args(argv)
    wanted = None if args.cases is None else {c.strip() for c in args.cases.split(",")}
    batch_size = args.batch or (4 if args.quick else 16)
    repeats = args.repeats or (3 if args.quick else 5)
    head_counts = [int(h) for h in (args.heads or ("1,2,4,8" if args.quick else "1,2,4,8,16")).split(",")]
    torch.set_num_threads(args.threads)
    tuned = False
    if args.tune_allocator:
        from gfmkit.performance import tune_allocator

        tuned = tune_allocator()
    structures = peers.cuau_cells(batch_size, seed=0)
    edges = [int(ei.shape[1]) for ei, _ in peers.neighbours(structures)]
    report: dict[str, Any] = {
        "benchmark": "multihead_speed",
        "quick": args.quick,
        "machine": machine_info(),
        "setup": {"cases": sorted(wanted) if wanted else "all", "device": args.device, "threads": args.threads, "batch": batch_size, "atoms_per_structure": len(structures[0]),
                  "edges_per_structure_mean": float(np.mean(edges)), "heads": head_counts, "repeats": repeats,
                  "warmup": 1, "statistic": "median", "allocator_tuned": tuned,
                  "hyperparameters": {"hidden": peers.HIDDEN, "layers": peers.LAYERS, "n_rbf": peers.N_RBF,
                                      "cutoff": peers.CUTOFF, "head_hidden": peers.HEAD_HIDDEN},
                  "structures": "fcc CuAu 2x2x2 conventional cells, a=3.8 A, random ~50/50, rattled 0.1 A (model_speed.py's)"},
        "goals": GOALS,
        "results": {},
    }
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name.strip())
        single_model, single_batch = build(1, dtype, structures, args.device)
        rows = {}
        for n_heads in head_counts:
            model, batch = build(n_heads, dtype, structures, args.device)
            why = batched_runs(model, batch)
            fns = {"single": lambda m=single_model, b=single_batch: m(b, forces=True), **cases(model, batch, n_heads, why is None)}
            fns = {name: fn for name, fn in fns.items() if wanted is None or name in wanted}
            timing = time_interleaved(fns, repeats=repeats, warmup=1)
            row = {name: {"structures_per_s": batch_size / t["median_s"], **t} for name, t in timing.items()}
            median = {name: t["median_s"] for name, t in timing.items()}
            pairs = {"each_over_naive": ("naive", "each"), "weighted_over_naive": ("naive", "weighted"),
                     "weighted_cost_over_single": ("weighted", "single"), "each_batched_over_naive": ("naive", "each_batched"),
                     "each_batched_over_each": ("each", "each_batched")}
            row["ratios"] = {key: median[a] / median[b] for key, (a, b) in pairs.items() if a in median and b in median}
            fastest = {name: t["min_s"] for name, t in timing.items()}  # the least disturbed call on a shared machine
            row["ratios_of_min_times"] = {key: fastest[a] / fastest[b] for key, (a, b) in pairs.items()
                                          if a in fastest and b in fastest}
            if why is not None:
                row["each_batched"] = {"available": False, "reason": why}
            rows[str(n_heads)] = row
            log(f"{dtype_name} K={n_heads}: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items()))
        report["results"][dtype_name] = rows
    checks = {}
    for dtype_name, rows in report["results"].items():
        ratios8, ratios16 = rows.get("8", {}).get("ratios", {}), rows.get("16", {}).get("ratios", {})
        if "weighted_over_naive" in ratios8:
            checks[f"{dtype_name}: weighted >= 5x naive at 8 heads"] = ratios8["weighted_over_naive"] >= 5.0
        if "each_over_naive" in ratios8:
            checks[f"{dtype_name}: each >= 1.5x naive at 8 heads"] = ratios8["each_over_naive"] >= 1.5
        if "weighted_cost_over_single" in ratios16:
            checks[f"{dtype_name}: weighted at 16 heads <= 1.3x single"] = ratios16["weighted_cost_over_single"] <= 1.3
    report["goals_met"] = checks
    out = args.out or Path(__file__).resolve().parent / "results" / f"multihead_speed-{dt.date.today().isoformat()}.json"
    emit(report, out)
    return report


if __name__ == "__main__":
    main()
