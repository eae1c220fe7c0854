"""Accuracy at equal budget (issue #15): gfmkit's PaiNN against schnetpack's, trained side by side.

    .venv-bench/bin/python benchmarks/accuracy.py [--quick] [--budgets 300,1000] [--seeds 0,1,2]
        [--variants default,legacy] [--energy-weight W] [--jobs 2] [--out FILE.json]

(.venv-bench: ``bash benchmarks/setup_peers.sh``, as for model_speed.py; without schnetpack only gfmkit's
variants run.) Three built-in demo datasets (gfmkit.data.demo), each with its own 80/10/10 split:

- ``alloys``: demo ``bulk`` at scale 0.1, 200 strained and rattled fcc/bcc/hcp cells (2-32 atoms) of
  Cu/Ag/Au/Ni/Pd/Pt/Al and binary alloys, periodic, EMT energy, forces and stress;
- ``molecules``: demo ``molecules`` at scale 0.4, 200 rattled, rotated H/C/N/O molecules of the G2 set,
  EMT energy and forces;
- ``surfaces``: demo ``surfaces`` at scale 0.667, 200 fcc(111)/(100) slabs of Cu/Ni/Pd/Pt/Au with one or
  two H/C/N/O adsorbates, EMT energy and forces; added after the defaults were chosen on the other two,
  as a held-out check of them.

Every model trains with one loop (:func:`train_one`), so all that differs is the model: the same
architecture (64 features, 3 interactions, 20 radial functions, 5 Å cosine cutoff, a 64 -> 32 -> 1
SiLU energy MLP summed per structure, forces and stress by autograd through a strain), the same head
statistics (per-element reference energies fitted on the training split, per-atom outputs scaled by
the force RMS and shifted, as gfmkit's heads), the same neighbour lists (gfmkit's graphs), the same
loss (gfmkit.train.loss: per-atom energy, force and stress MSE over the force-RMS scale, weighted by
``--energy-weight`` / ``--forces-weight`` / ``--stress-weight``, gfmkit's LossConfig defaults unless
given), optimiser (AdamW, lr 1e-3, gradient clip 10), schedule (cosine to 1 % of the rate), EMA (0.99),
batch size (16) and batch order (per seed), and steps. Model weights start from ``torch.manual_seed(seed)``
with each model's own initialisation. Validation every ``--validate-every`` steps (gfmkit's default
100) with the EMA weights; the test split is scored at the same points, so every rule of
``TrainConfig.best_checkpoint`` (``val_loss``: lowest validation loss, ``last``) is read off one run.

The peer: schnetpack 2.0.4's ``PaiNN`` representation (its own GaussianRBF(20, 5 Å) + CosineCutoff and
its initialisation: Xavier-uniform weights, zero biases) and the MLP of its ``Atomwise`` module; edge
vectors r_ij = pos[j] - pos[i] + shift @ cell formed as its ``PairwiseDistances`` does (inside autograd,
after the strain), energy = force-RMS x sum of atom outputs + shift x atoms + references, as gfmkit's.
Variant ``schnetpack-weights``: gfmkit's model started from schnetpack's initial weights of the same
seed (:func:`copy_schnetpack_into_gfmkit`), so the two runs differ only by floating-point rounding
(``accuracy_peer_check.py``: same loss, forces and parameter gradients to 1e-14 in float64).

Reported per dataset, budget and model: test energy MAE (meV/atom), force MAE (meV/Å), stress MAE
(meV/Å^3, alloys) of the chosen checkpoint, mean ± sd over seeds, and the training wall time (the loop
alone, without validation). The machine is shared: wall times are indicative, compare them within a run.

Prints one JSON document; writes benchmarks/results/accuracy-<date>.json unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_data, log, machine_info

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, N_RBF, CUTOFF, HEAD_HIDDEN = 64, 3, 20, 5.0, 32
BATCH, LR, GRAD_CLIP, EMA_DECAY = 16, 1e-3, 10.0, 0.99
#: name -> (demo dataset, scale): 200 structures each
DATASETS = {"alloys": ("bulk", 0.1), "molecules": ("molecules", 0.4), "surfaces": ("surfaces", 0.667)}
#: gfmkit's parametrisation of schnetpack's PaiNN: the message MLPs without a gain (the default before 2026-12-01)
SAME_AS_SCHNETPACK: dict[str, Any] = {"message_gain": 1.0}
#: gfmkit model variants: name -> ModelConfig overrides ("default": the current defaults). Results files
#: from before 2026-11-30 20:00 labelled "default" are "gaussian-xavier", the default then; files from
#: before 2026-12-01 labelled "default" are "message-gain-1". The variants measured before the message gain
#: existed pin it to 1, so their names keep meaning what was measured.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "message-gain-1": SAME_AS_SCHNETPACK,
    "legacy": {"radial_basis": "bessel", "init": "torch", "cutoff_fn": "cosine", "message_gain": 1.0},  # before issue #15
    "bessel-xavier": {"radial_basis": "bessel", "init": "xavier", **SAME_AS_SCHNETPACK},
    "gaussian-torch": {"radial_basis": "gaussian", "init": "torch", **SAME_AS_SCHNETPACK},
    "gaussian-xavier": {"radial_basis": "gaussian", "init": "xavier", **SAME_AS_SCHNETPACK},
    "polynomial-cutoff": {"cutoff_fn": "polynomial", "init": "xavier", **SAME_AS_SCHNETPACK},  # DimeNet's p = 6 envelope
    "zero-head": {"head_init_scale": 0.0, **SAME_AS_SCHNETPACK},  # each head MLP's last layer starts at zero
    "small-head": {"head_init_scale": 0.1, **SAME_AS_SCHNETPACK},  # ... at a tenth of Xavier's
    # schnetpack's parametrisation, started from schnetpack's initial weights of the same seed
    # (copy_schnetpack_into_gfmkit): the runs differ from schnetpack's only by floating-point rounding,
    # which isolates the weight draw
    "schnetpack-weights": SAME_AS_SCHNETPACK,
}
RULES = ("val_loss", "last")


# -- data ------------------------------------------------------------------------------------------


def load_split_graphs(store_path: Path) -> tuple[dict[str, list], Any]:
    """Graphs (float32, gfmkit's neighbour lists at the cutoff) of the train/val/test splits, and the
    fitted energy head of the training split."""
    from gfmkit.data.graphs import GraphDataset
    from gfmkit.data.multi import open_stores
    from gfmkit.models import heads_from_stores

    stores = open_stores([str(store_path)], preload=True)
    (head,) = heads_from_stores(stores, max_z=100, split="train")
    graphs = {}
    for split in ("train", "val", "test"):
        dataset = GraphDataset(stores, CUTOFF, split=split, dtype=torch.float32)
        graphs[split] = [dataset[k] for k in range(len(dataset))]
    return graphs, head


# -- models ----------------------------------------------------------------------------------------


def build_gfmkit(head, overrides: dict[str, Any]) -> nn.Module:
    from gfmkit.models import ModelConfig, MultiHeadPaiNN

    config = ModelConfig(hidden=HIDDEN, layers=LAYERS, n_rbf=N_RBF, cutoff=CUTOFF, head_hidden=HEAD_HIDDEN, **overrides)
    return MultiHeadPaiNN(config, [head])


class SchnetpackPotential(nn.Module):
    """schnetpack's PaiNN + Atomwise MLP with gfmkit's head statistics, called like MultiHeadPaiNN."""

    def __init__(self, head, basis: str = "gaussian"):
        super().__init__()
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from ase.data import atomic_numbers
        from peers import import_schnetpack

        spk = import_schnetpack()
        rbf = (spk.nn.radial.GaussianRBF(n_rbf=N_RBF, cutoff=CUTOFF) if basis == "gaussian"
               else spk.nn.radial.BesselRBF(n_rbf=N_RBF, cutoff=CUTOFF))
        self.representation = spk.representation.PaiNN(n_atom_basis=HIDDEN, n_interactions=LAYERS, radial_basis=rbf,
                                                       cutoff_fn=spk.nn.cutoff.CosineCutoff(CUTOFF))
        self.output = spk.atomistic.Atomwise(n_in=HIDDEN, n_hidden=HEAD_HIDDEN, n_layers=2)
        self.properties = spk.properties
        reference = torch.zeros(101, dtype=torch.float64)
        for symbol, value in head.reference_energies.items():
            reference[atomic_numbers[symbol]] = value
        self.register_buffer("reference", reference)
        self.scale, self.shift = float(head.scale), float(head.shift)

    def forward(self, batch, *, forces: bool = True, stress: bool = False, training: bool = False) -> dict[str, torch.Tensor]:
        P = self.properties
        n_graphs = int(batch.natoms.numel())
        graph_of_atom = batch.batch
        leaf = batch.pos.detach().requires_grad_(True)
        pos, cell, strain = leaf, batch.cell, None
        if stress:  # the same strain as gfmkit's model: positions and cell deformed, dE/d strain / V
            strain = torch.zeros(n_graphs, 3, 3, dtype=pos.dtype, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.bmm(pos[:, None, :], symmetric.index_select(0, graph_of_atom)).squeeze(1)
            cell = cell + torch.bmm(cell, symmetric)
        j, i = batch.edge_index[0], batch.edge_index[1]
        offsets = torch.bmm(batch.edge_shift.to(pos.dtype)[:, None, :], cell.index_select(0, graph_of_atom.index_select(0, i))).squeeze(1)
        inputs = {P.Z: batch.z, P.R: pos, P.idx_i: i, P.idx_j: j, P.offsets: offsets, P.idx_m: graph_of_atom,
                  P.n_atoms: batch.natoms, P.Rij: pos.index_select(0, j) - pos.index_select(0, i) + offsets}
        inputs = self.representation(inputs)
        per_atom = self.output.outnet(inputs["scalar_representation"]).squeeze(-1)
        per_atom = per_atom * self.scale + self.shift + self.reference.to(per_atom.dtype).index_select(0, batch.z)
        energy = torch.zeros(n_graphs, dtype=per_atom.dtype).index_add(0, graph_of_atom, per_atom)
        out = {"energy": energy}
        wrt = [leaf] + ([strain] if strain is not None else [])
        grads = torch.autograd.grad(energy.sum(), wrt, create_graph=training, retain_graph=training)
        out["forces"] = -grads[0]
        if strain is not None:
            volume = torch.abs(torch.linalg.det(batch.cell))
            periodic = batch.pbc.all(dim=1)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            out["stress"] = torch.where(periodic[:, None, None], grads[1] / safe[:, None, None], torch.zeros_like(grads[1]))
        return out if training else {k: t.detach() for k, t in out.items()}


def copy_schnetpack_into_gfmkit(spk: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Set gfmkit's weights to schnetpack's. Block orders differ: gfmkit's filters and message outputs are
    (scalar, v_j, direction), schnetpack's (scalar, direction, v_j); gfmkit's U,V mixing is (multiplier,
    normed), schnetpack's (normed, multiplier); gfmkit's update outputs (v, s*<.,.>, s), schnetpack's
    (s, v, s*<.,.>)."""
    rep, enc = spk.representation, ours.encoder

    def rows(t: torch.Tensor, order: list[int]) -> torch.Tensor:
        return torch.cat([t[k * HIDDEN:(k + 1) * HIDDEN] for k in order])

    with torch.no_grad():
        enc.embedding.weight.zero_()
        enc.embedding.weight[: rep.embedding.weight.shape[0]] = rep.embedding.weight
        layers = enc.layers
        enc.filters.weight.copy_(torch.cat([rows(rep.filter_net.weight[3 * HIDDEN * k:3 * HIDDEN * (k + 1)], [0, 2, 1]) for k in range(layers)]))
        enc.filters.bias.copy_(torch.cat([rows(rep.filter_net.bias[3 * HIDDEN * k:3 * HIDDEN * (k + 1)], [0, 2, 1]) for k in range(layers)]))
        for k in range(layers):
            net = rep.interactions[k].interatomic_context_net
            enc.message[k][0].weight.copy_(net[0].weight)
            enc.message[k][0].bias.copy_(net[0].bias)
            enc.message[k][2].weight.copy_(rows(net[1].weight, [0, 2, 1]))
            enc.message[k][2].bias.copy_(rows(net[1].bias, [0, 2, 1]))
            mix = rep.mixing[k]
            enc.update_uv[k].weight.copy_(rows(mix.mu_channel_mix.weight, [1, 0]))
            net = mix.intraatomic_context_net
            enc.update[k][0].weight.copy_(net[0].weight)
            enc.update[k][0].bias.copy_(net[0].bias)
            enc.update[k][2].weight.copy_(rows(net[1].weight, [1, 2, 0]))
            enc.update[k][2].bias.copy_(rows(net[1].bias, [1, 2, 0]))
        out = spk.output.outnet
        ours.readout.w1.copy_(out[0].weight.T)
        ours.readout.b1.copy_(out[0].bias)
        ours.readout.w2.copy_(out[1].weight)
        ours.readout.b2.copy_(out[1].bias)
        enc.divide_message_out_()  # the stored message layers are the function's divided by the model's gain


def head_table(head):
    from gfmkit.train.loss import HeadTable

    return HeadTable(is_energy=torch.tensor([True]), scale=torch.tensor([float(head.scale)], dtype=torch.float64),
                     property_column=torch.tensor([-1]), weight=torch.ones(1, dtype=torch.float64))


# -- one training run ------------------------------------------------------------------------------


def batch_order(n_train: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of BATCH training indices: shuffled epochs, one stream, the same for every model."""
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    while len(stream) < steps * BATCH:
        stream.extend(int(k) for k in rng.permutation(n_train))
    return [stream[s * BATCH : (s + 1) * BATCH] for s in range(steps)]


def evaluate(model, batches, heads, loss_config) -> dict[str, float]:
    """Loss and MAEs (energy meV/atom, forces meV/Å, stress meV/Å^3) over ``batches``."""
    from gfmkit.train.loss import absolute_errors, combine, loss_parts

    sums = counts = errors = error_counts = None
    for batch in batches:
        stress = bool(batch.stress_mask.any())
        out = model(batch, forces=True, stress=stress)
        parts = (*loss_parts(out, batch, heads, loss_config), *absolute_errors(out, batch, heads))
        if sums is None:
            sums, counts, errors, error_counts = (p.detach().clone() for p in parts)
        else:
            for total, part in zip((sums, counts, errors, error_counts), parts):
                total += part.detach()
    result = {"loss": float(combine(sums, counts, heads, loss_config))}
    for t, name in enumerate(("energy_mae", "forces_mae", "stress_mae")):
        if error_counts[0, t] > 0:
            result[name] = 1000.0 * float(errors[0, t] / error_counts[0, t])
    return result


def train_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train one model on one dataset for one budget and seed; the validation and test records."""
    from gfmkit.data.graphs import collate
    from gfmkit.models import HeadConfig
    from gfmkit.train.config import LossConfig, ScheduleConfig
    from gfmkit.train.loss import combine, loss_parts, wants_stress
    from gfmkit.train.state import EMA, Schedule

    torch.set_num_threads(task["threads"])
    from torch_geometric.data import Data

    cached = torch.load(task["graphs"], weights_only=True)  # plain tensors: graphs are stored as dicts
    graphs = {split: [Data.from_dict(g) for g in items] for split, items in cached["graphs"].items()}
    head = HeadConfig(**cached["head"])
    torch.manual_seed(task["seed"])
    if task["model"] == "schnetpack":
        model = SchnetpackPotential(head, task.get("basis", "gaussian"))
    elif task["variant"] == "schnetpack-weights":
        peer = SchnetpackPotential(head)  # first after the seed: the same draws as schnetpack's run
        model = build_gfmkit(head, VARIANTS["schnetpack-weights"])
        copy_schnetpack_into_gfmkit(peer, model)
    else:
        model = build_gfmkit(head, VARIANTS[task["variant"]])
    heads = head_table(head)
    loss_config = LossConfig(**task["loss"])
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    lr = task["lr"]
    optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    schedule = Schedule(ScheduleConfig(), lr, task["steps"])
    ema = EMA(params, EMA_DECAY)
    val = [collate(graphs["val"][k : k + 32]) for k in range(0, len(graphs["val"]), 32)]
    test = [collate(graphs["test"][k : k + 32]) for k in range(0, len(graphs["test"]), 32)]
    records, train_seconds = [], 0.0
    for step, picks in enumerate(batch_order(len(graphs["train"]), task["steps"], task["seed"])):
        started = time.perf_counter()
        batch = collate([graphs["train"][k] for k in picks])
        model.train()
        out = model(batch, forces=True, stress=wants_stress(batch, loss_config), training=True)
        sums, counts = loss_parts(out, batch, heads, loss_config)
        loss = combine(sums, counts, heads, loss_config)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), GRAD_CLIP)
        optimizer.step()
        ema.update(params)
        train_seconds += time.perf_counter() - started
        if not math.isfinite(float(loss.detach())):
            return {**task, "diverged_at": step, "train_seconds": train_seconds, "records": records}
        done = step + 1
        if done % task["validate_every"] == 0 or done == task["steps"]:
            model.eval()
            with ema.applied(model):
                records.append({"step": done, "val": evaluate(model, val, heads, loss_config),
                                "test": evaluate(model, test, heads, loss_config)})
    config = dataclasses.asdict(model.config) if task["model"] == "gfmkit" else None
    return {**task, "model_config": config, "train_seconds": train_seconds, "seconds_per_step": train_seconds / task["steps"],
            "records": records}


def choose(records: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The record whose weights ``best.pt`` holds at the end under ``TrainConfig.best_checkpoint = rule``
    (the trainer's own decision function)."""
    from gfmkit.train.trainer import best_checkpoint_steps

    kept = best_checkpoint_steps([r["val"]["loss"] for r in records], rule)
    return [r for r, keep in zip(records, kept) if keep][-1]


# -- the report ------------------------------------------------------------------------------------


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["dataset"], r["steps"], r["name"]) for r in results}, key=lambda k: (k[0], k[1], k[2]))
    for dataset, steps, name in keys:
        runs = [r for r in results if (r["dataset"], r["steps"], r["name"]) == (dataset, steps, name)]
        row: dict[str, Any] = {"dataset": dataset, "steps": steps, "model": name, "seeds": [r["seed"] for r in runs],
                               "diverged": sum("diverged_at" in r for r in runs)}
        ok = [r for r in runs if "diverged_at" not in r]
        row["train_seconds"] = _mean_sd([r["train_seconds"] for r in ok])
        row["ms_per_step"] = _mean_sd([1000 * r["seconds_per_step"] for r in ok])
        for rule in RULES:
            kept = [choose(r["records"], rule) for r in ok]
            row[rule] = {"step": [k["step"] for k in kept]}
            for metric in ("energy_mae", "forces_mae", "stress_mae"):
                values = [k["test"][metric] for k in kept if metric in k["test"]]
                if values:
                    row[rule][metric] = _mean_sd(values)
        rows.append(row)
    return rows


def _mean_sd(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": [round(v, 3) for v in values]}


def table(rows: list[dict[str, Any]], rule: str) -> str:
    lines = [f"checkpoint rule {rule}: test MAE mean ± sd (energy meV/atom, forces meV/Å, stress meV/Å^3), ms/step"]
    for row in rows:
        cells = [f"{row[rule][m]['mean']:.1f} ± {row[rule][m]['sd']:.1f}" if m in row[rule] else "-"
                 for m in ("energy_mae", "forces_mae", "stress_mae")]
        lines.append(f"  {row['dataset']:<10} {row['steps']:>5} {row['model']:<28} " + " | ".join(cells)
                     + f" | {row['ms_per_step'].get('mean', float('nan')):.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 30 steps, 1 seed, validation every 10")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--budgets", default="300,1000", help="steps per run, comma-separated")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="default", help=f"gfmkit variants, from {','.join(VARIANTS)}")
    p.add_argument("--peers", default="schnetpack", help="schnetpack, schnetpack-bessel (its BesselRBF), or none")
    p.add_argument("--energy-weight", type=float, default=None, help="loss.energy (gfmkit's LossConfig default)")
    p.add_argument("--forces-weight", type=float, default=None, help="loss.forces (gfmkit's LossConfig default)")
    p.add_argument("--stress-weight", type=float, default=None, help="loss.stress (gfmkit's LossConfig default)")
    p.add_argument("--lr", type=float, default=LR, help="peak learning rate of every model (gfmkit's default 1e-3)")
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (1 with --jobs > 1, else 2)")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("GFMKIT_BENCH_DATA", Path(tempfile.gettempdir()) / "gfmkit-bench")))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from gfmkit.train.config import LossConfig

    budgets = [30] if args.quick else [int(b) for b in args.budgets.split(",")]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    validate_every = 10 if args.quick else args.validate_every
    defaults = LossConfig()
    loss = {"energy": defaults.energy if args.energy_weight is None else args.energy_weight,
            "forces": defaults.forces if args.forces_weight is None else args.forces_weight,
            "stress": defaults.stress if args.stress_weight is None else args.stress_weight}
    peers = [peer for peer in args.peers.split(",") if peer and peer != "none"]
    unavailable = {}
    if peers:
        import importlib.util

        if importlib.util.find_spec("schnetpack") is None:
            unavailable = {peer: "schnetpack not installed (run benchmarks/setup_peers.sh)" for peer in peers}
            log(f"peers not available: {unavailable}")
            peers = []
    models = [("gfmkit", v) for v in args.variants.split(",") if v] + [(peer, None) for peer in peers]
    stores = {}
    for name in args.datasets.split(","):
        demo, scale = DATASETS[name]
        directory, _ = demo_data(args.data, f"accuracy_{demo}_s{scale}", [demo], scale)
        graphs, head = load_split_graphs(directory / f"{demo}.bp")
        stores[name] = str(directory / "graphs.pt")  # built once here; each run loads them
        plain = {split: [g.to_dict() for g in items] for split, items in graphs.items()}
        torch.save({"graphs": plain, "head": dataclasses.asdict(head)}, stores[name])
    tasks = []
    for dataset, graphs_path in stores.items():
        for steps in budgets:
            for seed in seeds:
                for model, variant in models:
                    tasks.append({"dataset": dataset, "graphs": graphs_path, "steps": steps, "seed": seed,
                                  "model": "schnetpack" if model.startswith("schnetpack") else "gfmkit",
                                  "basis": "bessel" if model == "schnetpack-bessel" else "gaussian",
                                  "variant": variant, "name": model if variant is None else f"gfmkit[{variant}]",
                                  "loss": loss, "lr": args.lr, "validate_every": validate_every, "threads": args.threads or (1 if args.jobs > 1 else 2)})
    tasks.sort(key=lambda t: -t["steps"])  # long runs first: the pool finishes together
    log(f"{len(tasks)} training runs, {args.jobs} at a time")
    started = time.perf_counter()
    machine = machine_info()
    results = []
    with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:  # a fresh process per run
        for result in pool.imap_unordered(train_one, tasks, chunksize=1):
            results.append(result)
            last = result["records"][-1]["test"] if result["records"] else {}
            log(f"  {result['name']} {result['dataset']} {result['steps']} steps seed {result['seed']}: "
                f"{result['train_seconds']:.0f} s, last test " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    rows = summarise(results)
    report = {
        "benchmark": "accuracy",
        "issue": 15,
        "quick": args.quick,
        "machine": machine,
        "versions": {"schnetpack": _version("schnetpack"), "gfmkit": _version("gfmkit")},
        "setup": {"hidden": HIDDEN, "layers": LAYERS, "n_rbf": N_RBF, "cutoff": CUTOFF, "head_hidden": HEAD_HIDDEN,
                  "batch": BATCH, "lr": args.lr, "grad_clip": GRAD_CLIP, "ema_decay": EMA_DECAY, "schedule": "cosine to 0.01 lr",
                  "loss": loss, "validate_every": validate_every, "datasets": {k: DATASETS[k] for k in stores},
                  "split": "80/10/10 (gfmkit.data.demo's split)", "variants": {v: VARIANTS[v] for _, v in models if v},
                  "jobs": args.jobs, "wall_time_note": "shared 2-core machine; runs in parallel, one thread each: wall "
                  "times are indicative"},
        "unavailable": unavailable,
        "elapsed_s": time.perf_counter() - started,
        "summary": rows,
        "runs": sorted(results, key=lambda r: (r["dataset"], r["steps"], r["name"], r["seed"])),
    }
    for rule in RULES:
        log(table(rows, rule))
    out = args.out or ROOT / "benchmarks" / "results" / f"accuracy-{dt.date.today().isoformat()}.json"
    text = json.dumps(report, indent=1)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    log(f"wrote {out}")
    return report


def _version(name: str) -> str:
    import importlib.metadata as m

    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
