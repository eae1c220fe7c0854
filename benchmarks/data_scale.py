"""Data at scale: per-rank peak memory and time to the first training step, replicated against sharded,
1 and 2 ranks, for stores of growing size; and ingest speed and peak memory against input size.

Stores of small random structures (8 atoms in a periodic box, synthetic labels) are written directly
(no ase files) so that large sizes build fast; each training run is one step of a tiny model, started
as a fresh process (``mpiexec -n 2`` for 2 ranks), and reads its numbers from its run.json. Prints JSON
and writes benchmarks/results/data_scale-<date>.json.

    python benchmarks/data_scale.py --sizes 10000,100000,1000000 --ingest 2000,20000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def random_store(path: Path, count: int, seed: int = 0) -> None:
    """``count`` structures of 8 Cu/Au atoms in a 6 Å periodic box, labels from a smooth toy function."""
    from gfmkit.data import DatasetSpec
    from gfmkit.data.store_write import write_store
    from gfmkit.data.structure import Structure

    rng = np.random.default_rng(seed)
    spec = DatasetSpec(name="random", level_of_theory="toy", targets=["energy", "forces"])
    structures = []
    for i in range(count):
        positions = rng.uniform(0, 6.0, (8, 3))
        numbers = rng.choice([29, 79], 8)
        structures.append(Structure(numbers=numbers, positions=positions, cell=np.eye(3) * 6.0, pbc=np.ones(3, bool),
                                    energy=float(-3.0 * 8 + rng.normal()), forces=rng.normal(0, 0.3, (8, 3)),
                                    dataset="random", level_of_theory="toy", source_index=i))
    write_store(structures, path, spec, overwrite=True)


def first_step(store: Path, ranks: int, distribution: str, work: Path) -> dict:
    """One step of a tiny model in a fresh process group; run.json's time to the first step and peak RSS."""
    config = work / f"train-{distribution}-{ranks}.json"
    run = work / f"run-{distribution}-{ranks}"
    config.write_text(json.dumps({
        "data": {"stores": [str(store)], "distribution": distribution, "preload": True},
        "model": {"hidden": 8, "layers": 1, "n_rbf": 4, "cutoff": 3.0, "head_hidden": 8},
        "sampler": {"batch_size": 8, "strategy": "proportional"}, "max_steps": 1, "validate_every": 1000,
        "checkpoint_every": 1000, "precision": "fp32", "device": "cpu", "progress": False}))
    exe = [sys.executable, "-m", "gfmkit.cli", "train", str(config), "--out", str(run), "--no-progress"]
    if ranks > 1:
        exe = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *exe]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run(exe, capture_output=True, text=True, env=env, timeout=3600, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr[-500:]}
    info = json.loads((run / "run.json").read_text())
    shutil.rmtree(run, ignore_errors=True)
    return {"process_seconds": round(time.perf_counter() - started, 2), **info["first_step"]}


def random_extxyz(path: Path, count: int) -> None:
    """``count`` random 8-atom structures with synthetic labels as an extxyz file."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(1)
    frames = []
    for _ in range(count):
        atoms = Atoms(rng.choice(["Cu", "Au"], 8), positions=rng.uniform(0, 6.0, (8, 3)), cell=np.eye(3) * 6.0, pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(8, 3)))
        frames.append(atoms)
    ase.io.write(path, frames)


def ingest(count: int, work: Path) -> dict:
    """``gfmkit data convert`` of an extxyz of ``count`` structures: structures/s and peak RSS."""

    source = work / f"in-{count}.extxyz"
    subprocess.run([sys.executable, __file__, "--extxyz", str(source), str(count)], check=True)  # parent stays small
    out = work / f"in-{count}.bp"
    code = (f"import resource, time; from gfmkit.data import DatasetSpec; from gfmkit.data.ingest import convert; "
            f"t = time.perf_counter(); convert({str(source)!r}, {str(out)!r}, DatasetSpec(name='x', "
            f"level_of_theory='toy', validation={{'min_distance': 0.0}}), progress=False, overwrite=True); "
            f"print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        return {"structures": count, "error": proc.stderr[-500:]}
    seconds, rss = proc.stdout.split()
    return {"structures": count, "seconds": round(float(seconds), 2), "structures_per_s": round(count / float(seconds), 1),
            "peak_rss_mib": round(int(rss) / 1024, 1), "input_mib": round(source.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--ingest", default="2000,20000")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/data_scale-<date>.json)")
    parser.add_argument("--build", nargs=2, metavar=("STORE", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--extxyz", nargs=2, metavar=("FILE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        random_store(Path(args.build[0]), int(args.build[1]))
        return
    if args.extxyz:
        random_extxyz(Path(args.extxyz[0]), int(args.extxyz[1]))
        return
    results: dict = {"date": datetime.date.today().isoformat(), "first_step": [], "ingest": [],
                     "machine": f"{os.cpu_count()} cores", "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="gfmkit-data-scale-") as tmp:
        work = Path(tmp)
        for size in (int(s) for s in args.sizes.split(",") if s):
            store = work / f"random-{size}.bp"
            started = time.perf_counter()
            # in a child process: Linux carries a parent's peak RSS into its children's ru_maxrss, so this
            # process must stay small for the runs it starts to measure their own memory
            subprocess.run([sys.executable, __file__, "--build", str(store), str(size)], check=True)
            built = round(time.perf_counter() - started, 1)
            for distribution, ranks in (("replicated", 1), ("replicated", 2), ("sharded", 2)):
                row = {"structures": size, "distribution": distribution, "ranks": ranks, "store_build_s": built,
                       **first_step(store, ranks, distribution, work)}
                results["first_step"].append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(store, ignore_errors=True)
        for count in (int(s) for s in args.ingest.split(",") if s):
            row = ingest(count, work)
            results["ingest"].append(row)
            print(json.dumps(row), flush=True)
    out = args.out or HERE / "results" / f"data_scale-{results['date']}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
