"""Evaluation of a checkpoint on stores: the head x dataset error matrix, parity values, per-element errors.

Every head predicts every dataset (one encoder pass per batch for all heads, each head's own forces and
stress from :meth:`MultiHeadPaiNN.predict` with ``forces="each"``): the matrix shows how well a head of one level of theory transfers to another dataset, the
diagonal is each dataset's own head. Energy heads are scored on energy datasets (energy per atom,
forces and stress MAE), property heads on datasets with their property; other pairs are NaN. Parity
plots and per-element force errors use each dataset's own head. Below the heads, the matrix has rows
``weighted:overlap`` (training-free weights, always) and ``weighted:gate`` (when the model holds a fitted
gate): the composition-weighted prediction of the energy heads (:mod:`gfmkit.models.weighting`),
computed from the same pass (:func:`weighted_predictors`).

The figures are drawn by :mod:`gfmkit.viz.evaluation`; :func:`plot_history` and :class:`LiveLossPlot`
(:mod:`gfmkit.viz.history`) are importable from here too, as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.data.graphs import GraphDataset, collate
from gfmkit.data.multi import DatasetRegistry, MultiStore, open_stores
from gfmkit.files import atomic_path
from gfmkit.models import load_model, read_checkpoint
from gfmkit.models.calculator import check_store_elements
from gfmkit.models.multihead import MultiHeadPaiNN
from gfmkit.outputs import check_folder_files
from gfmkit.performance import tune_allocator
from gfmkit.precision import get_policy, precision_scope
from gfmkit.rundir import (
    ERROR_MATRIX,
    EVALUATION_FILES,
    PER_ELEMENT,
    PREDICTIONS,
    SUMMARY,
    RunDir,
)
from gfmkit.viz.evaluation import plot_error_matrix, plot_parity, plot_per_element
from gfmkit.viz.history import LiveLossPlot, plot_history

#: the error columns of the tables, and their units (spelled in :mod:`gfmkit.keys`)
METRICS = keys.ERROR_COLUMNS
UNITS = keys.ERROR_UNITS
#: the prefix of the error matrix's rows of weighted predictions
WEIGHTED = "weighted:"

__all__ = ["EVALUATION_FILES", "METRICS", "PREDICTIONS", "UNITS", "Evaluation", "LiveLossPlot", "evaluate",
           "load_run_checkpoint", "plot_error_matrix", "plot_history", "plot_parity", "plot_per_element"]


@dataclass
class Evaluation:
    """Tables and figures of :func:`evaluate`.

    ``matrix``: one row per (head, dataset) with structures and MAEs, the heads followed by the weighted
    predictions (``weighted:overlap``, ``weighted:gate``); ``pivot(metric)`` shapes it head x dataset,
    ``weighted(metric)`` puts each dataset's own head beside the weighted predictions. ``summary``: each dataset under its own head. ``per_element``: own-head force MAE per
    dataset and element. ``predictions``: own-head predicted and true values (for parity plots).
    """

    matrix: pd.DataFrame
    summary: pd.DataFrame
    per_element: pd.DataFrame
    predictions: pd.DataFrame
    figures: dict[str, Any] = field(default_factory=dict)
    out: RunDir | None = None

    def pivot(self, metric: str = keys.FORCES_MAE) -> pd.DataFrame:
        """Head x dataset table of ``metric`` (rows: heads, columns: datasets)."""
        return self.matrix.pivot(index="head", columns="dataset", values=metric)

    def weighted(self, metric: str = keys.FORCES_MAE) -> pd.DataFrame:
        """``metric`` per dataset (rows) under its own head and under each weighting (columns)."""
        own = self.summary.set_index("dataset")[metric].rename("own head")
        weighted = self.matrix[self.matrix["head"].str.startswith(WEIGHTED)]
        table = weighted.pivot(index="dataset", columns="head", values=metric)
        return pd.concat([own, table], axis=1).loc[own.index]


def _open(stores: MultiStore | str | os.PathLike | Sequence[str | os.PathLike], names: list[str]) -> MultiStore:
    if isinstance(stores, MultiStore):
        return stores
    paths = [stores] if isinstance(stores, (str, os.PathLike)) else list(stores)
    return open_stores(paths, registry=DatasetRegistry(names))


def evaluate(
    checkpoint: str | os.PathLike | MultiHeadPaiNN,
    stores: MultiStore | str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str | None = "test",
    out: str | os.PathLike | RunDir | None = None,
    batch_size: int = 16,
    precision: str = "fp64",
    device: str | torch.device = "cpu",
    max_structures: int | None = None,
    figures: bool = True,
    progress: bool = False,
    overwrite: bool = False,
) -> Evaluation:
    """Errors of every head of ``checkpoint`` on every dataset of ``stores`` (their ``split``; None =
    all structures), as tables and figures; with ``out``, also written there (CSV files and
    ``figures/*.png``). ``max_structures`` caps the structures per dataset (the first ones of the split).
    ``out`` is checked before the work: an earlier evaluation's files there are replaced only with
    ``overwrite=True``; other files in it are left alone."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tune_allocator()  # freed batch memory is reused, not page-faulted afresh (gfmkit.performance)
    if not isinstance(device, torch.device):
        from gfmkit.train.distributed import select_device

        device = select_device(device, 0)  # "cuda" without a GPU: says so (not a failed checkpoint load)
    if out is not None:
        check_folder_files(out.path if isinstance(out, RunDir) else out, EVALUATION_FILES, overwrite=overwrite)
    model = checkpoint if isinstance(checkpoint, MultiHeadPaiNN) else load_model(checkpoint, map_location=device)
    policy = get_policy(precision)
    model = model.to(device).to(policy.param_dtype).eval()
    multi = _open(stores, model.head_names)
    check_store_elements(model.config.max_z, multi)  # an element beyond max_z: the store named, not an IndexError
    dataset = GraphDataset(multi, model.config.cutoff, split=split, dtype=policy.sensitive_dtype)
    names = multi.registry.names
    dataset_of = np.array([names[h] for h in dataset.head]) if len(dataset) else np.array([], dtype=str)
    chosen = np.arange(len(dataset))
    if max_structures is not None:
        chosen = np.concatenate([np.flatnonzero(dataset_of == n)[:max_structures] for n in dict.fromkeys(dataset_of)]
                                or [np.zeros(0, np.int64)])
    props = dataset.property_names

    # accumulators: per (head, dataset) sums of absolute errors and counts
    acc: dict[tuple[str, str], np.ndarray] = {}
    parity: list[dict[str, Any]] = []
    element_rows: list[tuple[str, np.ndarray, np.ndarray]] = []
    any_energy = any(head.kind == "energy" for head in model.heads)
    weightings = ((["gate"] if model.gate is not None else []) + ["overlap"]) if any_energy else []
    iterator = range(0, len(chosen), batch_size)
    if progress:
        from gfmkit.progress import progress_bar

        iterator = progress_bar(iterator, desc="evaluate", unit="batch")
    for start in iterator:
        items = chosen[start : start + batch_size]
        batch = collate([dataset[int(k)] for k in items]).to(device)
        own_names = dataset_of[items]
        atom_graph = batch.batch
        natoms = batch.natoms.to(torch.float64)
        periodic = batch.pbc.all(dim=1)
        # one encoder pass for every head: energies, and per-head forces (and stress) of the energy heads
        want_stress = any_energy and bool((batch.stress_mask & periodic).any())
        with precision_scope(policy, device):
            every = model.predict(batch, forces="each" if any_energy else "none", stress=want_stress)
        predictors = [(head.name, head.kind, head.target, every.energies[:, h],
                       every.forces[h] if head.kind == "energy" else None,
                       every.stress[h] if head.kind == "energy" and want_stress else None)
                      for h, head in enumerate(model.heads)]
        predictors += weighted_predictors(model, batch, every, own_names, weightings)
        for head_name, kind, target, energy, forces, stress in predictors:
            energy_head = kind == "energy"
            e = energy.double()
            for name in dict.fromkeys(own_names):
                rows = torch.as_tensor(own_names == name, device=batch.z.device)
                row = acc.setdefault((head_name, name), np.zeros(8))
                if energy_head:
                    mask = rows & batch.energy_mask
                    err = ((e - batch.energy.double()) / natoms).abs()[mask]
                    row[0] += float(err.sum()); row[1] += int(mask.sum())
                    atoms = (rows & batch.forces_mask).index_select(0, atom_graph)
                    f_err = (forces.double() - batch.forces.double()).abs()[atoms]
                    row[2] += float(f_err.sum()); row[3] += f_err.numel()
                    if stress is not None:
                        smask = rows & batch.stress_mask & periodic
                        s_err = (stress.double() - batch.stress.double()).abs()[smask]
                        row[4] += float(s_err.sum()); row[5] += s_err.numel()
                elif target in props:
                    col = props.index(target)
                    mask = rows & batch.properties_mask[:, col]
                    p_err = (e - batch.properties[:, col].double()).abs()[mask]
                    row[6] += float(p_err.sum()); row[7] += int(mask.sum())
                if head_name != name:
                    continue
                # own head: parity values and per-element force errors
                sel = rows.cpu().numpy()
                if energy_head:
                    m = (rows & batch.energy_mask).cpu().numpy()
                    for true, predicted in zip((batch.energy.double() / natoms).cpu().numpy()[m], (e / natoms).cpu().numpy()[m]):
                        parity.append({"dataset": name, "quantity": keys.ENERGY_PER_ATOM, "true": true, "predicted": predicted})
                    atoms = (rows & batch.forces_mask).index_select(0, atom_graph).cpu().numpy()
                    if atoms.any():
                        true_f = batch.forces.double().cpu().numpy()[atoms]
                        pred_f = forces.double().detach().cpu().numpy()[atoms]
                        parity.extend({"dataset": name, "quantity": keys.FORCES, "true": t, "predicted": p}
                                      for t, p in zip(true_f.ravel(), pred_f.ravel()))
                        element_rows.append((name, batch.z.cpu().numpy()[atoms], np.abs(pred_f - true_f).mean(axis=1)))
                elif target in props:
                    col = props.index(target)
                    m = sel & batch.properties_mask[:, col].cpu().numpy()
                    for true, predicted in zip(batch.properties[:, col].double().cpu().numpy()[m], e.cpu().numpy()[m]):
                        parity.append({"dataset": name, "quantity": target, "true": true, "predicted": predicted})

    structures = pd.Series(dataset_of[chosen]).value_counts().to_dict() if len(chosen) else {}
    rows = []
    for (head, name), v in acc.items():
        rows.append({"head": head, "dataset": name, "structures": int(structures.get(name, 0)),
                     **{m: (v[2 * k] / v[2 * k + 1] if v[2 * k + 1] else np.nan) for k, m in enumerate(METRICS)}})
    matrix = pd.DataFrame(rows, columns=["head", "dataset", "structures", *METRICS])
    matrix = matrix.sort_values(["head", "dataset"], key=lambda c: c.str.startswith(WEIGHTED).astype(str) + c
                                if c.name == "head" else c, ignore_index=True)
    summary = matrix[matrix["head"] == matrix["dataset"]].drop(columns="head").reset_index(drop=True)
    per_element = _per_element(element_rows)
    predictions = pd.DataFrame(parity, columns=["dataset", "quantity", "true", "predicted"])
    result = Evaluation(matrix, summary, per_element, predictions)
    if figures:
        result.figures = {"error_matrix": plot_error_matrix(matrix), "parity": plot_parity(predictions),
                          "per_element_forces": plot_per_element(per_element)}
    if out is not None:
        run = out if isinstance(out, RunDir) else RunDir(out)
        # each file atomically, summary.csv last: the studies take it as "this evaluation is complete"
        tables = {ERROR_MATRIX: matrix, PER_ELEMENT: per_element, PREDICTIONS: predictions, SUMMARY: summary}
        for name in EVALUATION_FILES:  # parity data too: the figures are redrawn from the files
            with atomic_path(run.path / name) as tmp:
                tables[name].to_csv(tmp, index=False, compression="gzip" if name.endswith(".gz") else None)
        for name, fig in result.figures.items():
            run.save_figure(fig, name)
        result.out = run
    return result


def weighted_predictors(model: MultiHeadPaiNN, batch: Any, every: Any, own_names: np.ndarray,
                        weightings: Sequence[str]) -> list[tuple[str, str, str, torch.Tensor, torch.Tensor, Any]]:
    """The composition-weighted predictions of ``batch`` from the per-head ones of one pass (``every``,
    :meth:`MultiHeadPaiNN.predict` with ``forces="each"``), one per weighting ("overlap", "gate"):
    (row name ``weighted:<weighting>``, "energy", "energy", energy, forces, stress or None). Weights
    depend on composition only, so the weighted forces and stress are the weighted sums of the heads'
    (:mod:`gfmkit.models.weighting`). A structure's weighted energy carries the references of its
    dataset's head (its level of theory), or of the model's first energy head when it has none."""
    from gfmkit.models import weighting as hw
    from gfmkit.models.predict import head_weights

    if not weightings:
        return []
    energy_heads = [k for k, head in enumerate(model.heads) if head.kind == "energy"]
    counts = hw.batch_counts(model, batch)
    reference = model.readout.reference  # (heads, elements), float64
    default = model.head_index(hw.default_target(model))
    target = [model.head_index(n) if n in model.head_names and model.heads[model.head_index(n)].kind == "energy"
              else default for n in own_names]
    removed = (every.energies.double() - counts @ reference.T)[:, energy_heads]
    carried = (counts * reference[target]).sum(dim=1)
    graph_of_atom = batch.batch
    out = []
    for weighting in weightings:
        w = head_weights(model, weighting, hw.element_fractions(counts), list(range(len(model.heads))))[:, energy_heads]
        energy = (w * removed).sum(dim=1) + carried
        forces = torch.einsum("ne,enc->nc", w.index_select(0, graph_of_atom), every.forces[energy_heads].double())
        stress = None if every.stress is None else torch.einsum("be,ebij->bij", w, every.stress[energy_heads].double())
        out.append((WEIGHTED + weighting, "energy", keys.ENERGY, energy, forces, stress))
    return out


def _per_element(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=["dataset", "element", "atoms", keys.FORCES_MAE])
    frame = pd.DataFrame({"dataset": np.concatenate([[n] * len(z) for n, z, _ in rows]),
                          "z": np.concatenate([z for _, z, _ in rows]),
                          "err": np.concatenate([e for _, _, e in rows])})
    table = frame.groupby(["dataset", "z"]).agg(atoms=("err", "size"), **{keys.FORCES_MAE: ("err", "mean")}).reset_index()
    table.insert(1, "element", [chemical_symbols[int(z)] for z in table["z"]])
    return table.drop(columns="z")


def load_run_checkpoint(run_dir: str | os.PathLike | RunDir, which: str = "best") -> Path:
    """Path of a run directory's ``best`` (else ``last``) or ``last`` checkpoint, checked to be readable."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    path = run.best_checkpoint() if which == "best" else run.last_checkpoint()
    read_checkpoint(path)  # validates
    return path
