"""Screening throughput: model-only against end-to-end `gfmkit screen`, energies against weighted forces,
fp32 against bf16-autocast, no prefetch against a prefetch thread, a prefetch process and a DataLoader worker,
1 against 2 MPI ranks (issue #17).

Random structures of the paper's kind (random compositions of the model's elements, 2-64 atoms, periodic,
``random:N:2-64``) through a multi-head PaiNN of the demo's size (hidden 64, 2 layers, cutoff 5 Å, one
head per demo dataset; untrained weights: speed does not depend on them). *Model only*: ``model.predict``
over batches built beforehand (the same edge budget). *End to end*: :func:`gfmkit.studies.screen` into a
results store: generating, graphing (vesin), batching, the model, writing chunks and the merge. The
pipeline overhead is ``1 - end_to_end / model_only`` (goal: <= 20 % on 2 cores). The in-process cases
run interleaved (one of each per round, median of the rounds); the rank cases run ``mpiexec -n 1`` and
``-n 2`` with one thread per rank and report the screen's own seconds (process start-up excluded). The
headline pair runs in fresh processes too (``fresh_processes``): the model alone against ``gfmkit screen``,
energies only, one torch thread, alternated; a long-lived benchmark process runs every case slower (the
model alone too, 503 against about 570 structures/s), so the in-process ratios mix in that ageing.

Prints one JSON document; ``--out`` (default benchmarks/results/screen_speed-<date>.json) writes it too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_data, emit, log, machine_info, parser, time_interleaved


def make_checkpoint(data_root: Path, where: Path) -> Path:
    """A demo-sized multi-head PaiNN (untrained) over the demo datasets' heads, saved as a checkpoint."""
    from gfmkit.data.multi import open_stores
    from gfmkit.models import ModelConfig, build_model, save_checkpoint

    directory, _ = demo_data(data_root, "demo_s0.1", None, 0.1)
    model = build_model(ModelConfig(hidden=64, layers=2, n_rbf=16, cutoff=5.0, head_hidden=32), open_stores([directory]))
    return save_checkpoint(model.float(), where / "model.pt")


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--structures", type=int, default=None, help="structures per case (400; 80 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process cases (1: the 2-core "
                   "machine is shared; 2 OpenMP threads on a busy core are slower than 1)")
    p.add_argument("--max-edges", type=int, default=20_000)
    p.add_argument("--chunk-size", type=int, default=64, help="structures per resumable chunk (64: every chunk "
                   "write and the merge count; gfmkit screen's default is 1024)")
    p.add_argument("--no-mpi", action="store_true", help="skip the 1- and 2-rank cases")
    p.add_argument("--cases", default=None, help="comma-separated subset of the in-process cases (all)")
    args = p.parse_args(argv)
    n = args.structures or (80 if args.quick else 400)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)

    from gfmkit.data.edge_batches import edge_batches
    from gfmkit.data.screen_source import open_source
    from gfmkit.models import load_model
    from gfmkit.studies.screen import model_elements, screen

    work = Path(tempfile.mkdtemp(prefix="screen-speed-"))
    checkpoint = make_checkpoint(args.data, work)
    model = load_model(checkpoint).float().eval()
    spec = f"random:{n}:2-64:seed=1"
    source = open_source(spec, elements=model_elements(model))
    started = time.perf_counter()
    batches = edge_batches(source, 0, n, model.config.cutoff, args.max_edges, torch.float32)
    graph_seconds = time.perf_counter() - started
    atoms = sum(int(b.natoms.sum()) for b in batches)
    edges = sum(int(b.edge_index.shape[1]) for b in batches)
    log(f"{n} structures, {atoms / n:.1f} atoms and {edges / n:.0f} edges per structure, {len(batches)} batches; "
        f"generating + graphing {graph_seconds:.2f} s")
    heads = [h.name for h in model.heads if h.kind == "energy"]

    def model_only(forces="none", precision="fp32"):
        from gfmkit.precision import precision_scope

        def run():
            with precision_scope(precision):
                for batch in batches:
                    model.predict(batch, heads=heads, forces=forces, weights="overlap")
        return run

    count = iter(range(10**6))

    def end_to_end(**options):
        def run():
            screen(checkpoint, spec, work / f"r{next(count)}.bp", weighting="overlap", max_edges=args.max_edges,
                   chunk_size=args.chunk_size, progress=False, **options)
        return run

    cases = {
        "model_energy_fp32": model_only(),
        "screen_energy_fp32": end_to_end(prefetch=False),
        "screen_energy_fp32_1worker": end_to_end(workers=1),
        "screen_energy_fp32_thread": end_to_end(prefetch="thread"),
        "screen_energy_fp32_process": end_to_end(prefetch="process"),
        "model_weighted_forces_fp32": model_only("weighted"),
        "screen_weighted_forces_fp32": end_to_end(forces="weighted", prefetch=False),
        "screen_weighted_forces_fp32_thread": end_to_end(forces="weighted", prefetch="thread"),
        "screen_weighted_forces_fp32_process": end_to_end(forces="weighted", prefetch="process"),
        "model_energy_bf16": model_only(precision="bf16-autocast"),
        "screen_energy_bf16": end_to_end(precision="bf16-autocast", prefetch=False),
    }
    if args.quick:
        cases = {k: v for k, v in cases.items() if "bf16" not in k and "worker" not in k}
    if args.cases:
        cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
    log(f"timing {len(cases)} cases interleaved, {repeats} round(s)")
    timings = time_interleaved(cases, repeats=repeats, warmup=1 if not args.quick else 0)
    rates = {name: n / t["median_s"] for name, t in timings.items()}
    report = {
        "benchmark": "screen_speed", "issue": 17, "machine": machine_info(),
        "setup": {"structures": n, "source": spec, "atoms_per_structure": atoms / n, "edges_per_structure": edges / n,
                  "max_edges": args.max_edges, "chunk_size": args.chunk_size, "batches": len(batches), "threads": args.threads, "repeats": repeats,
                  "model": "PaiNN hidden 64, 2 layers, cutoff 5, heads " + ",".join(heads), "weighting": "overlap"},
        "seconds": timings,
        "structures_per_s": {k: round(v, 2) for k, v in rates.items()},
        "ratios": {},
    }
    ratio = report["ratios"]
    pairs = {  # ratio name: (numerator case, denominator case); "overhead" ratios are 1 - a / b
        "pipeline_overhead_energy": ("screen_energy_fp32", "model_energy_fp32"),
        "pipeline_overhead_energy_thread": ("screen_energy_fp32_thread", "model_energy_fp32"),
        "pipeline_overhead_weighted_forces": ("screen_weighted_forces_fp32", "model_weighted_forces_fp32"),
        "pipeline_overhead_energy_process": ("screen_energy_fp32_process", "model_energy_fp32"),
        "pipeline_overhead_weighted_forces_thread": ("screen_weighted_forces_fp32_thread", "model_weighted_forces_fp32"),
        "pipeline_overhead_weighted_forces_process": ("screen_weighted_forces_fp32_process",
                                                      "model_weighted_forces_fp32"),
        "weighted_forces_over_energy_screen": ("screen_weighted_forces_fp32", "screen_energy_fp32"),
        "bf16_over_fp32_model": ("model_energy_bf16", "model_energy_fp32"),
        "bf16_over_fp32_screen": ("screen_energy_bf16", "screen_energy_fp32"),
        "one_worker_over_none_screen": ("screen_energy_fp32_1worker", "screen_energy_fp32"),
        "thread_over_none_screen": ("screen_energy_fp32_thread", "screen_energy_fp32"),
        "process_over_thread_screen": ("screen_energy_fp32_process", "screen_energy_fp32_thread"),
    }
    for name, (a, b) in pairs.items():
        if a in rates and b in rates:
            ratio[name] = 1 - rates[a] / rates[b] if name.startswith("pipeline") else rates[a] / rates[b]
    ratio["goal_pipeline_overhead_at_most"] = 0.20
    report["fresh_processes"] = fresh_cases(checkpoint, spec, work, args.max_edges, args.chunk_size, repeats)
    ratio["pipeline_overhead_energy_fresh_processes"] = report["fresh_processes"]["pipeline_overhead"]
    if not args.no_mpi:
        report["ranks"] = rank_cases(checkpoint, spec, work, args.max_edges, args.chunk_size)
        ranks = report["ranks"]
        ratio["two_over_one_rank_total"] = ranks["2"]["structures_per_s"] / ranks["1"]["structures_per_s"]
    report["notes"] = ("2-core machine shared with other work (see load_average): absolute numbers are noisy, "
                       "compare the ratios; bf16-autocast on a CPU without bf16 matmul units is not expected to help")
    return report


def model_only_child(checkpoint: str, spec: str, max_edges: int) -> None:
    """(Run in a fresh process by :func:`fresh_cases`.) Print the model's energies-only structures/s over
    batches built beforehand: one untimed pass, then the median of three."""
    import statistics

    from gfmkit.data.edge_batches import edge_batches
    from gfmkit.data.screen_source import open_source
    from gfmkit.models import load_model
    from gfmkit.performance import tune_allocator
    from gfmkit.studies.screen import model_elements

    tune_allocator()  # as gfmkit screen does
    model = load_model(checkpoint).float().eval()
    source = open_source(spec, elements=model_elements(model))
    batches = edge_batches(source, 0, len(source), model.config.cutoff, max_edges, torch.float32)
    heads = [h.name for h in model.heads if h.kind == "energy"]
    seconds = []
    for _ in range(4):
        started = time.perf_counter()
        for batch in batches:
            model.predict(batch, heads=heads, forces="none", weights="overlap")
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"structures_per_s": len(source) / statistics.median(seconds[1:])}))


def fresh_cases(checkpoint: Path, spec: str, work: Path, max_edges: int, chunk_size: int, repeats: int) -> dict:
    """The headline pair, each in a fresh process as a user runs it (a long-lived benchmark process runs
    everything slower, the model alone too): the model alone (:func:`model_only_child`) against
    ``gfmkit screen`` (its own seconds, process start-up excluded; prefetch "auto"), energies only, one
    torch thread (OMP_NUM_THREADS=1), alternated ``repeats`` times; medians."""
    import os
    import statistics

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GFMKIT_PROGRESS="0")
    model_rates, screen_rates, prefetch = [], [], None
    for k in range(repeats):
        log(f"fresh processes, round {k + 1}/{repeats}: the model alone, then gfmkit screen")
        child = subprocess.run([sys.executable, __file__, "--model-only-child", str(checkpoint), spec, str(max_edges)],
                               capture_output=True, text=True, env=env, check=True)
        model_rates.append(json.loads(child.stdout.strip().splitlines()[-1])["structures_per_s"])
        proc = subprocess.run([sys.executable, "-m", "gfmkit.cli", "screen", str(checkpoint), "--source", spec,
                               "--out", str(work / f"fresh{k}.bp"), "--weighting", "overlap", "--max-edges",
                               str(max_edges), "--chunk-size", str(chunk_size), "--summary-json", "--no-progress"],
                              capture_output=True, text=True, env=env, check=True)
        summary = json.loads(proc.stdout)
        screen_rates.append(summary["per_rank"][0]["structures_per_s"])
        prefetch = summary["per_rank"][0]["prefetch"]
    model_rate, screen_rate = statistics.median(model_rates), statistics.median(screen_rates)
    return {"model_structures_per_s": [round(r, 2) for r in model_rates],
            "screen_structures_per_s": [round(r, 2) for r in screen_rates], "prefetch": prefetch,
            "pipeline_overhead": 1 - screen_rate / model_rate}


def rank_cases(checkpoint: Path, spec: str, work: Path, max_edges: int, chunk_size: int) -> dict:
    """``gfmkit screen`` under mpiexec -n 1 and -n 2, one thread per rank; the screen's own summary."""
    import os

    from gfmkit.progress import set_progress

    set_progress(False)
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GFMKIT_PROGRESS="0")
    out = {}
    for ranks in (1, 2):
        target = work / f"ranks{ranks}.bp"
        log(f"mpiexec -n {ranks} gfmkit screen")
        proc = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "gfmkit.cli", "screen", str(checkpoint),
                               "--source", spec, "--out", str(target), "--weighting", "overlap", "--max-edges",
                               str(max_edges), "--chunk-size", str(chunk_size), "--summary-json", "--no-progress"],
                              capture_output=True, text=True, env=env, check=True)
        summary = json.loads(proc.stdout)
        out[str(ranks)] = {k: summary[k] for k in ("structures", "seconds", "structures_per_s", "data_share",
                                                    "model_share", "write_share")}
        out[str(ranks)]["per_rank_structures_per_s"] = [round(r["structures_per_s"], 2) for r in summary["per_rank"]]
        out[str(ranks)]["prefetch"] = [r.get("prefetch", False) for r in summary["per_rank"]]  # "auto" decided
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--model-only-child"]:
        model_only_child(*sys.argv[2:4], int(sys.argv[4]))
        sys.exit(0)
    args = parser("").parse_known_args()[0]
    document = main()
    default = Path(__file__).resolve().parent / "results" / f"screen_speed-{time.strftime('%Y-%m-%d')}.json"
    emit(document, args.out or default)
