"""Held-out comparison of head weightings and calibration of the heads' disagreement (issue #16).

:func:`head_weighting_records` runs one encoder pass per batch (``model.predict`` with per-head forces)
over each dataset's split and keeps, per structure, the energy-per-atom and force errors of:

- ``gate``: the trained gate's weights (when the model has one);
- ``overlap``: the training-free composition-overlap weights;
- ``uniform``: the plain average of the energy heads;
- ``head:<name>``: each single head alone;
- ``own``: the dataset's own head (pretraining datasets only).

Every method's energy carries the same target references, so heads of different levels of theory
compare on equal terms: the dataset's own head's references when the model has a head of its name,
else the dataset's isolated-atom energies from its store, else the default target head's. Weighted
forces are ``sum_k w_k F_k`` (weights depend on composition only), so all methods come from the one
pass. :func:`weighting_table` adds the best single head per dataset and metric (an oracle: picked on
the same data it is scored on). :func:`disagreement_calibration` scores the heads' spread as an
uncertainty of a method's errors: rank correlation, a reliability curve and the share of the largest
errors caught by flagging the most uncertain structures, in-distribution against unseen chemistry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from gfmkit import keys
from gfmkit.models import weighting as hw
from gfmkit.models.gate import store_batches
from gfmkit.models.predict import head_weights

IN_DISTRIBUTION, UNSEEN = "in-distribution", "unseen"
ENERGY_ERROR, FORCES_ERROR = "energy_error", "forces_error"  # per structure: |dE|/atom (eV/atom), force MAE (eV/Å)
ENERGY_SPREAD, FORCES_SPREAD = "energy_spread", "forces_spread"  # eV/atom, eV/Å
TOP_FRACTIONS = (0.05, 0.1, 0.2)


@dataclass
class HeadWeightingStudy:
    """Per-structure records, the method x dataset error table, the calibration summary and curve, and
    figures (``gfmkit.viz.multihead``)."""

    records: pd.DataFrame
    table: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    figures: dict[str, Any] = field(default_factory=dict)


def _target_references(model: Any, stores: Any, name: str, heads: Sequence[str]) -> torch.Tensor:
    if name in heads:
        return hw.reference_vector(model, name)
    given = stores.store(name).reference_energies
    return hw.reference_vector(model, dict(given) if given else hw.default_target(model))


def head_weighting_records(
    model: Any,
    stores: Any,
    *,
    split: str | None = "test",
    unseen_split: str | None = None,
    heads: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    batch_size: int = 16,
    max_structures: int | None = None,
) -> pd.DataFrame:
    """One row per (structure, method) of the energy datasets of ``stores`` (a MultiStore): dataset,
    role (in-distribution when ``heads`` holds a head of its name, else unseen), method, structure,
    natoms, energy and force errors, and the heads' spreads. ``heads``: the energy heads to weight
    (default all of the model's); ``datasets``: which to score (default all with energy labels).
    ``split`` selects the in-distribution structures; unseen datasets (no head trained on any of their
    structures) are read from ``unseen_split`` (default None: all of them are held out)."""
    heads = list(heads or [h.name for h in model.heads if h.kind == "energy"])
    chosen = hw.choose_heads(model, heads)
    methods = (["gate"] if model.gate is not None else []) + ["overlap", "uniform"]
    rows: list[dict[str, Any]] = []
    counter: dict[str, int] = {}
    model.eval()
    scored = [n for n in stores.registry.names if keys.ENERGY in stores.store(n).targets and (datasets is None or n in datasets)]
    passes = [store_batches(model, stores, split=part_split, batch_size=batch_size, max_structures=max_structures,
                            datasets=[n for n in scored if (n in heads) == (part == IN_DISTRIBUTION)])
              for part, part_split in ((IN_DISTRIBUTION, split), (UNSEEN, unseen_split))]
    for name, _, batch in (item for batches in passes for item in batches):
        role = IN_DISTRIBUTION if name in heads else UNSEEN
        out = model.predict(batch, heads=heads, forces="each", weights="uniform")
        counts = hw.batch_counts(model, batch)
        fractions = hw.element_fractions(counts)
        removed = out.energies.double() - counts @ model.readout.reference[chosen].T
        target = counts @ _target_references(model, stores, name, heads)
        natoms = batch.natoms.double()
        graph = batch.batch
        tables = {m: head_weights(model, m, fractions, chosen) for m in methods}
        for k, head in enumerate(heads):
            tables[f"head:{head}"] = torch.nn.functional.one_hot(torch.tensor(k), len(heads)).double().expand(len(natoms), -1)
        if name in heads:
            tables["own"] = tables[f"head:{name}"]
        has_forces = batch.forces_mask.index_select(0, graph)
        per_atom_forces = out.forces.double()  # (K, N, 3)
        start = counter.get(name, 0)
        counter[name] = start + len(natoms)
        for method, w in tables.items():
            energy = (w * removed).sum(1) + target
            e_err = ((energy - batch.energy.double()) / natoms).abs()
            f = (w.index_select(0, graph).T[:, :, None] * per_atom_forces).sum(0)
            f_abs = (f - batch.forces.double()).abs().mean(1) * has_forces
            f_sum = torch.zeros_like(natoms).index_add(0, graph, f_abs)
            f_err = torch.where(batch.forces_mask, f_sum / natoms, torch.full_like(natoms, float("nan")))
            for b in range(len(natoms)):
                rows.append({"dataset": name, "role": role, "method": method,
                             "structure": start + b, "natoms": int(natoms[b]),
                             ENERGY_ERROR: float(e_err[b]) if bool(batch.energy_mask[b]) else np.nan,
                             FORCES_ERROR: float(f_err[b]), ENERGY_SPREAD: float(out.energy_spread[b]),
                             FORCES_SPREAD: float(out.forces_spread[b])})
    return pd.DataFrame(rows)


def weighting_table(records: pd.DataFrame) -> pd.DataFrame:
    """Mean errors per dataset and method (``energy_mae`` eV/atom, ``forces_mae`` eV/Å), with rows
    ``best single head`` (per metric, the single head best on that dataset: an oracle) naming the head."""
    grouped = records.groupby(["dataset", "role", "method"], sort=False)
    table = grouped[[ENERGY_ERROR, FORCES_ERROR]].mean().reset_index()
    table = table.rename(columns={ENERGY_ERROR: keys.ENERGY_MAE, FORCES_ERROR: keys.FORCES_MAE})
    rows = []
    for (dataset, role), part in table.groupby(["dataset", "role"], sort=False):
        singles = part[part["method"].str.startswith("head:")]
        best = {"dataset": dataset, "role": role, "method": "best single head"}
        for metric in (keys.ENERGY_MAE, keys.FORCES_MAE):
            if singles[metric].notna().any():
                winner = singles.loc[singles[metric].idxmin()]
                best[metric] = winner[metric]
                best[f"{metric}_head"] = winner["method"].removeprefix("head:")
        rows.append(best)
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return table.sort_values(["role", "dataset"], kind="stable", ignore_index=True)


def summary_table(table: pd.DataFrame, metric: str = keys.ENERGY_MAE) -> pd.DataFrame:
    """Dataset x method table of ``metric`` for the compared methods (no single heads but the best)."""
    shown = table[~table["method"].str.startswith("head:")]
    return shown.pivot_table(index=["role", "dataset"], columns="method", values=metric, sort=False)


def capture_share(spread: np.ndarray, error: np.ndarray, fraction: float) -> float:
    """Share of the ``fraction`` largest errors that are among the ``fraction`` largest spreads."""
    n = max(1, round(fraction * len(error)))
    flagged = set(np.argsort(-spread, kind="stable")[:n].tolist())
    worst = np.argsort(-error, kind="stable")[:n]
    return float(np.mean([i in flagged for i in worst]))


def disagreement_calibration(records: pd.DataFrame, *, method: str | None = None, bins: int = 5,
                             top: Sequence[float] = TOP_FRACTIONS, by: str = "role") -> tuple[pd.DataFrame, pd.DataFrame]:
    """How well the heads' spread ranks ``method``'s errors (default: ``gate`` when recorded, else
    ``overlap``), in-distribution and unseen structures apart (``by="dataset"``: each dataset apart; the
    column keeps the name ``role``). Returns the summary (per role and
    quantity: structures, Spearman rank correlation, share of the top-x% errors caught by flagging the
    top-x% spreads, with the chance level x) and the reliability curve (per role, quantity and spread
    quantile bin: mean spread and root-mean-square error)."""
    methods = set(records["method"])
    method = method or ("gate" if "gate" in methods else "overlap")
    mine = records[records["method"] == method]
    summary, curve = [], []
    for role, part in mine.groupby(by, sort=False):
        for quantity, spread_col, error_col, unit in (("energy", ENERGY_SPREAD, ENERGY_ERROR, "eV/atom"),
                                                      ("forces", FORCES_SPREAD, FORCES_ERROR, "eV/Å")):
            valid = part[[spread_col, error_col]].dropna()
            if len(valid) < 3:
                continue
            spread, error = valid[spread_col].to_numpy(), valid[error_col].to_numpy()
            row = {"role": role, "quantity": quantity, "unit": unit, "method": method, "structures": len(valid),
                   "spearman": float(valid[spread_col].rank().corr(valid[error_col].rank()))}
            for x in top:
                row[f"caught_top_{round(100 * x)}%"] = capture_share(spread, error, x)
            summary.append(row)
            edges = np.unique(np.quantile(spread, np.linspace(0, 1, bins + 1)))
            which = np.clip(np.searchsorted(edges, spread, side="right") - 1, 0, max(len(edges) - 2, 0))
            for b in np.unique(which):
                sel = which == b
                curve.append({"role": role, "quantity": quantity, "unit": unit, "bin": int(b), "structures": int(sel.sum()),
                              "mean_spread": float(spread[sel].mean()), "rmse": float(np.sqrt(np.mean(error[sel] ** 2)))})
    return pd.DataFrame(summary), pd.DataFrame(curve)


def compare_head_weighting(model: Any, stores: Any, *, split: str | None = "test", unseen_split: str | None = None,
                           heads: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
                           batch_size: int = 16, max_structures: int | None = None, figures: bool = True) -> HeadWeightingStudy:
    """:func:`head_weighting_records`, :func:`weighting_table` and :func:`disagreement_calibration` in one
    call, with figures (:func:`gfmkit.viz.multihead.plot_weighting`, ``plot_calibration``)."""
    records = head_weighting_records(model, stores, split=split, unseen_split=unseen_split, heads=heads, datasets=datasets,
                                     batch_size=batch_size, max_structures=max_structures)
    table = weighting_table(records)
    calibration, reliability = disagreement_calibration(records)
    study = HeadWeightingStudy(records, table, calibration, reliability)
    if figures:
        from gfmkit.viz.multihead import plot_calibration, plot_weighting

        study.figures = {"head_weighting": plot_weighting(table), "disagreement": plot_calibration(records, reliability)}
    return study
