"""Issue #4's loader benchmark: structures/s for read + neighbour list + collate, and neighbour-list cost
of vesin (gfmkit) vs ``ase.neighborlist.neighbor_list`` (the peer).

Loader throughput (cutoff 5 Å, float64 graphs, ``GraphDataset`` + ``DatasetMixer(proportional)`` +
``GlobalBatchSampler(batch_size=16)`` + ``make_loader``, stores preloaded), one epoch per timing, median
of 3 epochs after a warm-up epoch (the warm-up, which starts the persistent workers, is reported as
``first_epoch_s``). Every comparison runs interleaved (one of each per round), so load from other work on
the machine hits all alike:

i.  the demo data at scale 1: all 8 datasets (3,730 structures) through ``open_stores``
ii. the mixed 10,080-structure set of ``data_read.py`` (bulk, surfaces, molecules, clusters at scale 3.5)

each with ``num_workers`` 0 and 2 (``--workers 0,1,2`` adds others). The machine has 2 cores: with 2
workers the main process competes with them. ``stages`` splits the single-process cost: store read only
(``arrays``), read + neighbour list, read + neighbour list + ``Data`` (``dataset[k]``), and ``collate``
alone on prebuilt graphs. ``worker_ipc`` is what a worker adds per batch: pickling a ``Batch`` for the
worker queue moves every one of its tensors to shared memory, and unpickling it in the main process
receives one file descriptor per tensor.

Neighbour lists (cutoff 5 Å, full list with shifts, ms per structure, median of 5, same structures for
every library): periodic bulk cells, slabs periodic in x and y (mixed), molecules, nanoclusters, from the
demo data at scale 1. ``gfmkit`` is ``gfmkit.data.neighbours.neighbour_list`` (vesin plus sorting to
gfmkit's edge order), ``vesin_raw`` the bare vesin call, ``ase`` is ``ase.neighborlist.neighbor_list``
('ijS'), ``matscipy`` its ``neighbour_list`` when importable (not installed here). Edge sets are
checked to agree.

``--quick``: the demo data at scale 0.1, the mixed set at scale 0.35, epochs of 160 and 320 structures,
10 structures per neighbour-list kind.

Usage: ``.venv/bin/python benchmarks/graph_loading.py [--quick] [--out FILE.json] [--data DIR] [--workers 0,2]``
"""

from __future__ import annotations

import gc
import io
import pickle
import sys
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

CUTOFF = 5.0
BATCH_SIZE = 16


def loader_case(label: str, multi, worker_counts: list[int], repeats: int, limit: int | None) -> dict[str, Any]:
    """Epoch throughput of the loader over ``multi`` for each worker count, plus the stage breakdown."""
    from gfmkit.data.graphs import GraphDataset, collate, make_loader
    from gfmkit.data.neighbours import neighbour_list
    from gfmkit.data.sampling import DatasetMixer, GlobalBatchSampler

    dataset = GraphDataset(multi, CUTOFF)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    edges = []
    for k in range(n):
        a = dataset.arrays(k)
        edges.append(neighbour_list(a["positions"], a["cell"], a["pbc"], CUTOFF)[0].shape[1])
    edges = np.asarray(edges)
    out: dict[str, Any] = {
        "structures_per_epoch": n,
        "datasets": multi.sizes(),
        "atoms_per_structure": round(float(dataset.natoms[:n].mean()), 2),
        "edges_per_structure": round(float(edges.mean()), 1),
        "graph_dtype": str(dataset.dtype),
        "loader": {},
        "stages": {},
    }
    common.log(f"[{label}] {len(dataset)} structures, {out['atoms_per_structure']} atoms and "
               f"{out['edges_per_structure']} edges per structure; {n} per epoch")

    items = range(n)

    def read():
        for k in items:
            dataset.arrays(k)

    def read_nl():
        for k in items:
            a = dataset.arrays(k)
            neighbour_list(a["positions"], a["cell"], a["pbc"], CUTOFF)

    def read_graph():
        for k in items:
            dataset[k]

    # Collate alone, on prebuilt graphs in batches of BATCH_SIZE (at most 2,000 structures' worth).
    m = min(n, 2000)
    prebuilt = [[dataset[k] for k in range(i, min(i + BATCH_SIZE, m))] for i in range(0, m, BATCH_SIZE)]

    def collate_only():
        for graphs in prebuilt:
            collate(graphs)

    stages = (
        ("read", read, n),
        ("read_neighbour_list", read_nl, n),
        ("read_neighbour_list_data", read_graph, n),
        ("collate_only", collate_only, m),
    )
    measured = common.time_interleaved({name: fn for name, fn, _ in stages}, repeats=repeats, warmup=1)
    for name, _, count in stages:
        t = measured[name]
        out["stages"][name] = {
            **t,
            "structures": count,
            "structures_per_s": round(common.rate(t, count), 1),
            "us_per_structure": round(1e6 * t["median_s"] / count, 1),
        }
        common.log(f"[{label}] stage {name}: {out['stages'][name]['structures_per_s']:.0f} structures/s")

    prebuilt.clear()

    # One loader per worker count, all alive (idle persistent workers wait on their queues), epochs
    # interleaved; the warm-up epoch of each starts its workers.
    loaders, seen, first = {}, {}, {}
    for workers in worker_counts:
        mixer = DatasetMixer(dataset.head, strategy="proportional", num_samples=n, seed=0)
        sampler = GlobalBatchSampler(mixer, dataset.natoms, batch_size=BATCH_SIZE)
        loaders[workers] = make_loader(dataset, sampler, num_workers=workers)
        seen[workers] = []

    def epoch_of(workers: int):
        def epoch():
            count = 0
            for batch in loaders[workers]:
                count += batch.num_graphs
            seen[workers].append(count)

        return epoch

    epochs = {workers: epoch_of(workers) for workers in worker_counts}
    for workers, epoch in epochs.items():
        started = time.perf_counter()
        epoch()
        first[workers] = time.perf_counter() - started
    measured = common.time_interleaved(epochs, repeats=repeats, warmup=0)
    for workers in worker_counts:
        t = measured[workers]
        assert all(c == n for c in seen[workers]), seen[workers]
        batches = len(loaders[workers].batch_sampler)
        entry = {
            **t,
            "first_epoch_s": round(first[workers], 3),
            "batches_per_epoch": batches,
            "structures_per_s": round(common.rate(t, n), 1),
            "ms_per_batch": round(1e3 * t["median_s"] / batches, 3),
        }
        out["loader"][f"num_workers_{workers}"] = entry
        common.log(f"[{label}] loader num_workers={workers}: {entry['structures_per_s']:.0f} structures/s "
                   f"(first epoch {first[workers]:.2f} s)")
    loaders.clear()
    epochs.clear()
    gc.collect()

    base = out["loader"]["num_workers_0"]["structures_per_s"]
    for entry in out["loader"].values():
        entry["ratio_vs_num_workers_0"] = round(entry["structures_per_s"] / base, 2)
    for entry in out["stages"].values():
        entry["ratio_vs_loader_num_workers_0"] = round(entry["structures_per_s"] / base, 2)
    return out


def worker_ipc(multi, repeats: int, batches: int = 20) -> dict[str, Any]:
    """What a DataLoader worker adds per batch, outside the loader: pickling a ``Batch`` for the worker
    queue moves every tensor (data, slice and increment dicts) to shared memory, and unpickling in the
    main process receives one file descriptor per tensor. Run last: the round trip leaves shared
    storages and the resource-sharer thread behind in this process."""
    from gfmkit.data.graphs import GraphDataset, collate

    dataset = GraphDataset(multi, CUTOFF)
    prebuilt = [[dataset[k] for k in range(i, i + BATCH_SIZE)] for i in range(0, batches * BATCH_SIZE, BATCH_SIZE)]
    batch = collate(prebuilt[0])
    tensors = sum(
        isinstance(v, torch.Tensor) for d in (batch.to_dict(), *batch._slice_dict.values(), *batch._inc_dict.values())
        for v in (d.values() if isinstance(d, dict) else [d])
    )

    def share_pickle():
        for graphs in prebuilt:
            buffer = io.BytesIO()
            ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(collate(graphs))

    def share_roundtrip():  # what the main process adds: unpickling re-opens every shared storage
        for graphs in prebuilt:
            buffer = io.BytesIO()
            ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(collate(graphs))
            pickle.loads(buffer.getvalue())

    def plain_collate():
        for graphs in prebuilt:
            collate(graphs)

    measured = common.time_interleaved(
        {"plain": plain_collate, "share": share_pickle, "round": share_roundtrip}, repeats=repeats, warmup=1
    )
    t_plain, t_share, t_round = measured["plain"], measured["share"], measured["round"]
    k = len(prebuilt)
    out = {
        "tensors_per_batch": int(tensors),
        "collate_ms_per_batch": round(1e3 * t_plain["median_s"] / k, 3),
        "share_pickle_ms_per_batch": round(1e3 * (t_share["median_s"] - t_plain["median_s"]) / k, 3),
        "share_unpickle_ms_per_batch": round(1e3 * (t_round["median_s"] - t_share["median_s"]) / k, 3),
        "sharing_strategy": torch.multiprocessing.get_sharing_strategy(),
    }
    common.log(f"worker ipc: {out}")
    return out


def _sorted_triples(i, j, shift) -> np.ndarray:
    rows = np.column_stack([np.asarray(i), np.asarray(j), np.asarray(shift)]).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def neighbour_case(store, count: int, repeats: int) -> dict[str, Any]:
    """ms per structure of each neighbour-list implementation on the first ``count`` structures."""
    import vesin
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    from gfmkit.data.neighbours import neighbour_list

    try:
        from matscipy.neighbours import neighbour_list as matscipy_neighbour_list
    except ImportError:
        matscipy_neighbour_list = None

    count = min(count, len(store))
    arrays = [store.arrays(i) for i in range(count)]
    atoms = [store.atoms(i) for i in range(count)]
    finder = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
    boxes = [np.asarray(a["cell"], np.float64) if a["pbc"].any() else np.zeros((3, 3)) for a in arrays]

    def run_gfmkit():
        for a in arrays:
            neighbour_list(a["positions"], a["cell"], a["pbc"], CUTOFF)

    def run_vesin_raw():
        for a, box in zip(arrays, boxes):
            finder.compute(a["positions"], box, a["pbc"], "ijS")

    def run_ase():
        for a in atoms:
            ase_neighbor_list("ijS", a, CUTOFF)

    def run_matscipy():
        for a in atoms:
            matscipy_neighbour_list("ijS", a, CUTOFF)

    # Same edge sets from gfmkit (edge_index = [j, i]) and ASE (i, j, S) on every structure.
    agree = True
    n_edges = []
    for a, at in zip(arrays, atoms):
        edge_index, shift = neighbour_list(a["positions"], a["cell"], a["pbc"], CUTOFF)
        i, j, s = ase_neighbor_list("ijS", at, CUTOFF)
        n_edges.append(edge_index.shape[1])
        agree = agree and np.array_equal(_sorted_triples(edge_index[1], edge_index[0], shift), _sorted_triples(i, j, s))

    pbc = np.array([a["pbc"] for a in arrays])
    out: dict[str, Any] = {
        "dataset": store.name,
        "structures": count,
        "pbc": sorted({"".join("T" if p else "F" for p in row) for row in pbc}),
        "atoms_per_structure": round(float(np.mean([len(a) for a in atoms])), 2),
        "edges_per_structure": round(float(np.mean(n_edges)), 1),
        "edges_agree_gfmkit_vs_ase": bool(agree),
        "ms_per_structure": {},
    }
    runs = [("gfmkit", run_gfmkit), ("vesin_raw", run_vesin_raw), ("ase", run_ase)]
    if matscipy_neighbour_list is not None:
        runs.append(("matscipy", run_matscipy))
    else:
        out["matscipy"] = "not installed"
    timings = common.time_interleaved(dict(runs), repeats=repeats, warmup=1)
    for name, _ in runs:
        out["ms_per_structure"][name] = round(1e3 * timings[name]["median_s"] / count, 4)
    out["times_s"] = {name: t["times_s"] for name, t in timings.items()}
    ms = out["ms_per_structure"]
    out["ase_over_gfmkit"] = round(ms["ase"] / ms["gfmkit"], 2)  # > 1: gfmkit is faster
    if "matscipy" in ms:
        out["matscipy_over_gfmkit"] = round(ms["matscipy"] / ms["gfmkit"], 2)
    out["gfmkit_over_vesin_raw"] = round(ms["gfmkit"] / ms["vesin_raw"], 2)
    common.log(f"[neighbours {store.name}] " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()))
    return out


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--workers", default="0,2", help="comma-separated num_workers values to time (default 0,2; 0 is always run)")
    args = p.parse_args()
    repeats = max(3, args.repeats or 3)
    workers = sorted({0, *(int(w) for w in args.workers.split(",") if w.strip())})

    from gfmkit.data.multi import MultiStore, open_stores
    from gfmkit.data.store_read import Store

    info = common.machine_info()
    demo_scale = 0.1 if args.quick else 1.0
    demo_dir, demo_generate_s = common.demo_data(args.data, f"demo_s{demo_scale:g}", None, demo_scale)
    mixed_paths, mixed_generate_s = common.mixed_data(args.data, args.quick)

    document: dict[str, Any] = {
        "benchmark": "graph_loading",
        "issue": 4,
        "quick": args.quick,
        "machine": info,
        "cutoff_A": CUTOFF,
        "batch_size": BATCH_SIZE,
        "repeats": repeats,
        "data": {
            "demo_dir": str(demo_dir),
            "demo_scale": demo_scale,
            "mixed_paths": [str(p) for p in mixed_paths],
            "demo_generate_s": None if demo_generate_s is None else round(demo_generate_s, 1),
            "mixed_generate_s": None if mixed_generate_s is None else round(mixed_generate_s, 1),
        },
        "peer": "ase.neighborlist.neighbor_list (neighbour lists); the loader has no external peer: "
        "num_workers 0 is the reference and stages show where its time goes",
    }

    demo = open_stores([demo_dir], preload=True)
    mixed = MultiStore([Store(p, preload=True) for p in mixed_paths])
    document["loader"] = {
        # --quick: the demo set at scale 0.1 and the 1,008-structure mixed set, 160 / 320 structures per epoch
        "demo": loader_case("demo", demo, workers, repeats, 160 if args.quick else None),
        "mixed": loader_case("mixed", mixed, workers, repeats, 320 if args.quick else None),
    }

    count = 10 if args.quick else 200
    document["neighbour_lists"] = {
        kind: neighbour_case(demo.store(name), count, max(5, repeats))  # short timings: more repeats
        for kind, name in (
            ("periodic_bulk", "bulk"),
            ("mixed_slabs", "surfaces"),
            ("molecules", "molecules"),
            ("clusters", "clusters"),
        )
    }
    document["worker_ipc"] = worker_ipc(demo, repeats, 5 if args.quick else 20)
    common.emit(document, args.out)


if __name__ == "__main__":
    main()
