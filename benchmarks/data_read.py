"""Issue #3's read benchmark: structures/s from gfmkit ADIOS2 stores vs ``ase.io.read`` of extxyz (the peer).

Data: 10,080 demo structures (``bulk``, ``surfaces``, ``molecules``, ``clusters`` at scale 3.5: periodic
cells, slabs, molecules and nanoclusters), generated once with gfmkit's demo generators and cached
(``--data``), then written a second time as one extxyz file from ``Store.atoms(i)``, so both sides
hold the same structures and labels (energy, forces, stress where present, info keys).

Measured (median of 5 timed repeats, 3 with ``--quick``, after one warm-up, so the page cache is warm for both
sides; the cases run interleaved, one of each per round, so load from other work hits all alike):

a. ``ase.io.read(extxyz, ":")``: all structures to a list of ``ase.Atoms`` (the peer)
b. ``Store(path, preload=True)`` and ``list(store)``: open, read all, build every ``Structure``
c. ``Store(path, preload=True)`` and ``store.arrays(i)`` for all i: the DataLoader fast path
d. lazy ``Store(path)`` (``preload=False``), 1,000 random indices: ``store[i]`` and ``store.arrays(i)``
   (stores opened outside the timing; each access is its own ADIOS2 selection read)
e. ``Store(path, preload=True)`` and ``store.atoms(i)`` for all i: the same output type as (a)

b, c and e include opening the stores and reading them from disk, as (a) includes parsing the file.

Usage: ``.venv/bin/python benchmarks/data_read.py [--quick] [--out FILE.json] [--data DIR]``
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def write_extxyz(paths: list[Path], target: Path) -> float | None:
    """All structures of ``paths`` (in order) as one extxyz file via ``Store.atoms``; cached."""
    import ase.io

    from gfmkit.data.store_read import Store

    if target.exists():
        common.log(f"using cached {target}")
        return None
    started = time.perf_counter()
    frames = [store.atoms(i) for store in (Store(p, preload=True) for p in paths) for i in range(len(store))]
    partial = target.with_suffix(".extxyz.tmp")
    ase.io.write(partial, frames, format="extxyz")
    os.replace(partial, target)
    seconds = time.perf_counter() - started
    common.log(f"wrote {len(frames)} structures to {target} in {seconds:.1f} s")
    return seconds


def check_agreement(store_atoms, ase_atoms) -> bool:
    """Both readers give the same numbers, positions, cell, pbc and labels."""
    same = (
        np.array_equal(store_atoms.numbers, ase_atoms.numbers)
        and np.allclose(store_atoms.positions, ase_atoms.positions)
        and np.allclose(store_atoms.cell[:], ase_atoms.cell[:])
        and np.array_equal(store_atoms.pbc, ase_atoms.pbc)
    )
    same = same and np.isclose(store_atoms.get_potential_energy(), ase_atoms.get_potential_energy())
    same = same and np.allclose(store_atoms.get_forces(), ase_atoms.get_forces())
    if "stress" in store_atoms.calc.results:
        same = same and np.allclose(store_atoms.get_stress(voigt=False), ase_atoms.get_stress(voigt=False))
    return bool(same)


def main() -> None:
    args = common.parser(__doc__.split("\n")[0]).parse_args()
    repeats = max(3, args.repeats or (3 if args.quick else 5))
    n_random = 200 if args.quick else 1000

    import ase.io

    from gfmkit.data.multi import MultiStore
    from gfmkit.data.store_read import Store

    info = common.machine_info()
    paths, generate_s = common.mixed_data(args.data, args.quick)
    xyz = paths[0].parent / "mixed.extxyz"
    extxyz_write_s = write_extxyz(paths, xyz)

    lazy = [Store(p) for p in paths]
    n = sum(len(s) for s in lazy)
    natoms = int(sum(int(s.natoms.sum()) for s in lazy))
    per_dataset = {s.name: len(s) for s in lazy}
    common.log(f"{n} structures, {natoms} atoms: {per_dataset}")

    def ase_read():
        frames = ase.io.read(xyz, ":", format="extxyz")
        assert len(frames) == n
        return frames

    def open_preloaded():
        return [Store(p, preload=True) for p in paths]

    def store_structures():
        out = [s for store in open_preloaded() for s in store]
        assert len(out) == n

    def store_arrays():
        out = [store.arrays(i) for store in open_preloaded() for i in range(len(store))]
        assert len(out) == n

    def store_atoms():
        out = [store.atoms(i) for store in open_preloaded() for i in range(len(store))]
        assert len(out) == n

    multi = MultiStore(lazy)
    indices = np.random.default_rng(0).choice(n, size=n_random, replace=False)
    located = [multi.locate(int(i)) for i in indices]

    def lazy_random_structures():
        for k, i in located:
            multi.stores[k][i]

    def lazy_random_arrays():
        for k, i in located:
            multi.stores[k].arrays(i)

    cases = [
        ("a_ase_read_extxyz", ase_read, n, "ase.io.read(extxyz, ':') -> list of ase.Atoms (peer)"),
        ("b_store_preload_structures", store_structures, n, "Store(preload=True), list(store) -> Structure"),
        ("c_store_preload_arrays", store_arrays, n, "Store(preload=True), arrays(i) for all i (loader path)"),
        ("d_store_lazy_random_structures", lazy_random_structures, n_random, f"lazy Store, store[i] at {n_random} random i"),
        ("d_store_lazy_random_arrays", lazy_random_arrays, n_random, f"lazy Store, arrays(i) at {n_random} random i"),
        ("e_store_preload_atoms", store_atoms, n, "Store(preload=True), atoms(i) for all i -> ase.Atoms"),
        ("open_preload_only", open_preloaded, n, "Store(preload=True) of every store, nothing else"),
    ]
    common.log(f"timing {len(cases)} cases, interleaved, 1 warm-up + {repeats} repeats")
    measured = common.time_interleaved({name: fn for name, fn, _, _ in cases}, repeats=repeats, warmup=1)
    timings = {}
    for name, _, count, what in cases:
        t = measured[name]
        timings[name] = {"what": what, "structures": count, **t, "structures_per_s": round(common.rate(t, count), 1)}
        common.log(f"  {name}: {timings[name]['structures_per_s']:.0f} structures/s (median {t['median_s']:.3f} s)")

    peer = timings["a_ase_read_extxyz"]["structures_per_s"]
    for entry in timings.values():
        entry["ratio_vs_ase_read"] = round(entry["structures_per_s"] / peer, 2)

    frames = ase_read()
    preloaded = open_preloaded()
    order = [(k, i) for k, store in enumerate(preloaded) for i in range(len(store))]
    sample = np.random.default_rng(1).choice(n, size=min(n, 50), replace=False)
    agree = all(check_agreement(preloaded[order[j][0]].atoms(order[j][1]), frames[j]) for j in sample)

    document = {
        "benchmark": "data_read",
        "issue": 3,
        "quick": args.quick,
        "machine": info,
        "data": {
            "datasets": per_dataset,
            "structures": n,
            "atoms": natoms,
            "store_paths": [str(p) for p in paths],
            "extxyz_path": str(xyz),
            "store_bytes": sum(common.disk_bytes(p) for p in paths),
            "extxyz_bytes": common.disk_bytes(xyz),
            "generate_s": None if generate_s is None else round(generate_s, 1),
            "extxyz_write_s": None if extxyz_write_s is None else round(extxyz_write_s, 1),
            "outputs_agree_on_50_samples": agree,
        },
        "repeats": repeats,
        "warmup": 1,
        "peer": "a_ase_read_extxyz",
        "results": timings,
    }
    document["data"]["size_ratio_store_vs_extxyz"] = round(document["data"]["store_bytes"] / document["data"]["extxyz_bytes"], 3)
    common.emit(document, args.out)


if __name__ == "__main__":
    main()
