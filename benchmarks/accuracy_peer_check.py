"""Are gfmkit's PaiNN and schnetpack's, as ``benchmarks/accuracy.py`` trains them, the same network at
the start of training? (issue #15)

    PYTHONPATH=. .venv-bench/bin/python benchmarks/accuracy_peer_check.py [--dataset molecules] [--seeds 20]

1. Parameters: per group (embedding rows of Z = 1-99, filters, message MLPs, update mixing and MLPs,
   head), the count and the sd of the initial values over ``--seeds`` seeds, for both models.
2. Same weights: schnetpack's initial weights copied into gfmkit's model (blocks reordered to gfmkit's
   layout), then in float64 on one training batch: energies, forces and the gradient of the benchmark's
   training loss (energy and force MSE, through the double backward) with respect to every parameter.
3. Initial state of each model's own initialisation (mean over seeds): the training loss and the norm
   of its gradient per parameter group (and, for gfmkit, the sd of the energy MLP's raw output).

Reads the graphs ``accuracy.py`` caches (run it once first); prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import (
    CUTOFF,
    DATASETS,
    SAME_AS_SCHNETPACK,
    SchnetpackPotential,
    build_gfmkit,
    copy_schnetpack_into_gfmkit,
    head_table,
)


def load(dataset: str, data: Path) -> tuple[Any, Any]:
    """(head, one training batch of 16) from accuracy.py's cached graphs."""
    from torch_geometric.data import Data

    from gfmkit.data.graphs import collate
    from gfmkit.models import HeadConfig

    demo, scale = DATASETS[dataset]
    cached = torch.load(data / f"accuracy_{demo}_s{scale}" / "graphs.pt", weights_only=True)
    train = [Data.from_dict(g) for g in cached["graphs"]["train"][:16]]
    return HeadConfig(**cached["head"]), collate(train)


def group(name: str) -> str:
    """The parameter group of a gfmkit or schnetpack parameter name."""
    for key, label in (("embedding", "embedding"), ("filter", "filters"), ("message", "message MLP"),
                       ("interatomic_context", "message MLP"), ("update_uv", "update mixing U,V"),
                       ("mu_channel_mix", "update mixing U,V"), ("update", "update MLP"),
                       ("intraatomic_context", "update MLP"), ("readout", "head"), ("output", "head")):
        if key in name:
            return label + (" bias" if name.endswith("bias") or name.split(".")[-1].startswith("b") else "")
    return name


def loss_and_grads(model: torch.nn.Module, batch: Any, heads: Any) -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
    from gfmkit.train.config import LossConfig
    from gfmkit.train.loss import combine, loss_parts

    config = LossConfig(energy=10.0, forces=10.0, stress=1.0)
    model.zero_grad(set_to_none=True)
    out = model(batch, forces=True, stress=False, training=True)
    loss = combine(*loss_parts(out, batch, heads, config), heads, config)
    loss.backward()
    return loss.detach(), {k: t.detach() for k, t in out.items()}, {n: p.grad.clone() for n, p in model.named_parameters()}


def same_weights(head: Any, batch: Any, seed: int) -> dict[str, Any]:
    """Part 2, in float64 (the default dtype too: schnetpack makes its zero vector features in it)."""
    torch.manual_seed(seed)
    spk = SchnetpackPotential(head).double()
    rbf = spk.representation.radial_basis  # its centres and widths are made in float32: remade in float64
    rbf.offsets = torch.linspace(0.0, CUTOFF, len(rbf.offsets), dtype=torch.float64)
    rbf.widths = torch.full_like(rbf.offsets, float(rbf.offsets[1] - rbf.offsets[0]))
    ours = build_gfmkit(head, SAME_AS_SCHNETPACK).double()
    copy_schnetpack_into_gfmkit(spk, ours)
    b = batch.clone()
    b.pos, b.cell, b.forces, b.energy = b.pos.double(), b.cell.double(), b.forces.double(), b.energy.double()
    heads = head_table(head)
    torch.set_default_dtype(torch.float64)
    try:
        l_s, out_s, g_s = loss_and_grads(spk, b, heads)
        l_o, out_o, g_o = loss_and_grads(ours, b, heads)
    finally:
        torch.set_default_dtype(torch.float32)
    spk_grads = SchnetpackPotential(head).double()  # schnetpack's gradients moved to gfmkit's layout by the same copy
    with torch.no_grad():
        for (_, p), g in zip(spk_grads.named_parameters(), g_s.values()):
            p.copy_(g)
    as_ours = build_gfmkit(head, SAME_AS_SCHNETPACK).double()
    copy_schnetpack_into_gfmkit(spk_grads, as_ours)
    rel = {}
    for name, p in as_ours.named_parameters():
        rows = slice(0, 100) if name == "encoder.embedding.weight" else slice(None)  # row 100: no schnetpack twin
        ref, got = p.detach()[rows], g_o[name][rows]
        rel[name] = float((got - ref).norm() / ref.norm().clamp(min=1e-300))
    return {"loss": [float(l_s), float(l_o)],
            "energy_max_abs_diff": float((out_s["energy"] - out_o["energy"]).abs().max()),
            "forces_max_abs_diff": float((out_s["forces"] - out_o["forces"]).abs().max()),
            "forces_max_abs": float(out_s["forces"].abs().max()),
            "grad_rel_diff_max": max(rel.values()), "grad_rel_diff": rel}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="molecules", choices=list(DATASETS))
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("GFMKIT_BENCH_DATA", Path(tempfile.gettempdir()) / "gfmkit-bench")))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    head, batch = load(args.dataset, args.data)
    heads = head_table(head)
    report: dict[str, Any] = {"dataset": args.dataset, "seeds": args.seeds, "same_weights": same_weights(head, batch, 0)}
    for model_name in ("gfmkit", "schnetpack"):
        counts: dict[str, int] = {}
        sds: dict[str, list[float]] = {}
        grad_norms: dict[str, list[float]] = {}
        losses, out_sd = [], []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = build_gfmkit(head, SAME_AS_SCHNETPACK) if model_name == "gfmkit" else SchnetpackPotential(head)
            loss, _, grads = loss_and_grads(model, batch, heads)
            losses.append(float(loss))
            by_group: dict[str, float] = {}
            for name, param in model.named_parameters():
                g = group(name)
                values = param.detach()[1:100] if "embedding" in name else param.detach()  # rows of Z = 1-99 (schnetpack zeroes row 0)
                counts[g] = counts.get(g, 0) + values.numel() if seed == 0 else counts[g]
                sds.setdefault(g, []).append(float(values.float().std()) if values.numel() > 1 else float(values.abs()))
                by_group[g] = by_group.get(g, 0.0) + float(grads[name].norm()) ** 2
            for g, sq in by_group.items():
                grad_norms.setdefault(g, []).append(sq ** 0.5)
            with torch.no_grad():
                if model_name == "gfmkit":
                    s, _ = model.encoder(batch.z, batch.pos[batch.edge_index[0]] - batch.pos[batch.edge_index[1]], batch.edge_index)
                    raw = (model.readout.per_atom(s, batch.z) - model.readout.shift.float()
                           - model.readout.reference.float().index_select(1, batch.z).T) / model.readout.scale.float()
                    out_sd.append(float(raw.std()))
        row = {"parameters": counts, "init_sd": {g: statistics.fmean(v) for g, v in sds.items()},
               "initial_loss": {"mean": statistics.fmean(losses), "sd": statistics.stdev(losses)},
               "initial_grad_norm": {g: {"mean": statistics.fmean(v), "sd": statistics.stdev(v)} for g, v in grad_norms.items()}}
        if out_sd:
            row["raw_head_output_sd"] = statistics.fmean(out_sd)
        report[model_name] = row
    json.dump(report, sys.stdout, indent=1)
    print()
    return report


if __name__ == "__main__":
    main()
