"""Evaluation of a checkpoint on stores: the head x dataset error matrix, parity plots, per-element errors.

Every head predicts every dataset (one forward per head and batch, so each head's forces and stress are
its own): the matrix shows how well a head of one level of theory transfers to another dataset, the
diagonal is each dataset's own head. Energy heads are scored on energy datasets (energy per atom,
forces and stress MAE), property heads on datasets with their property; other pairs are NaN. Parity
plots and per-element force errors use each dataset's own head.

Also here: :func:`plot_history` (loss and error curves of a run directory) and :class:`LiveLossPlot`
(a ``train(..., callback=...)`` that redraws the curves in a notebook while training runs).
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
from gfmkit.models.multihead import MultiHeadPaiNN
from gfmkit.outputs import check_folder_files
from gfmkit.precision import get_policy, precision_scope
from gfmkit.rundir import RunDir

METRICS = ("energy_mae", "forces_mae", "stress_mae", "property_mae")
UNITS = {"energy_mae": "eV/atom", "forces_mae": "eV/Å", "stress_mae": "eV/Å³", "property_mae": "property units"}


#: own-head predicted and true values of an evaluation written to ``out`` (gzip CSV)
PREDICTIONS = "predictions.csv.gz"
#: the files an evaluation writes into ``out`` (summary.csv last: it marks the evaluation complete)
EVALUATION_FILES = ("error_matrix.csv", "per_element.csv", PREDICTIONS, "summary.csv")

@dataclass
class Evaluation:
    """Tables and figures of :func:`evaluate`.

    ``matrix``: one row per (head, dataset) with structures and MAEs; ``pivot(metric)`` shapes it head x
    dataset. ``summary``: each dataset under its own head. ``per_element``: own-head force MAE per
    dataset and element. ``predictions``: own-head predicted and true values (for parity plots).
    """

    matrix: pd.DataFrame
    summary: pd.DataFrame
    per_element: pd.DataFrame
    predictions: pd.DataFrame
    figures: dict[str, Any] = field(default_factory=dict)
    out: RunDir | None = None

    def pivot(self, metric: str = "forces_mae") -> pd.DataFrame:
        """Head x dataset table of ``metric`` (rows: heads, columns: datasets)."""
        return self.matrix.pivot(index="head", columns="dataset", values=metric)


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
    if out is not None:
        check_folder_files(out.path if isinstance(out, RunDir) else out, EVALUATION_FILES, overwrite=overwrite)
    model = checkpoint if isinstance(checkpoint, MultiHeadPaiNN) else load_model(checkpoint, map_location=device)
    policy = get_policy(precision)
    model = model.to(device).to(policy.param_dtype).eval()
    multi = _open(stores, model.head_names)
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
        for h, head in enumerate(model.heads):
            probe = batch.clone()
            probe.dataset = torch.full_like(batch.dataset, h)
            energy_head = head.kind == "energy"
            with precision_scope(policy, device):
                pred = model(probe, forces=energy_head, stress=energy_head and bool((batch.stress_mask & periodic).any()))
            e = pred[keys.ENERGY].double()
            for name in dict.fromkeys(own_names):
                rows = torch.as_tensor(own_names == name, device=batch.z.device)
                row = acc.setdefault((head.name, name), np.zeros(8))
                if energy_head:
                    mask = rows & batch.energy_mask
                    err = ((e - batch.energy.double()) / natoms).abs()[mask]
                    row[0] += float(err.sum()); row[1] += int(mask.sum())
                    atoms = (rows & batch.forces_mask).index_select(0, atom_graph)
                    f_err = (pred[keys.FORCES].double() - batch.forces.double()).abs()[atoms]
                    row[2] += float(f_err.sum()); row[3] += f_err.numel()
                    if keys.STRESS in pred:
                        smask = rows & batch.stress_mask & periodic
                        s_err = (pred[keys.STRESS].double() - batch.stress.double()).abs()[smask]
                        row[4] += float(s_err.sum()); row[5] += s_err.numel()
                elif head.target in props:
                    col = props.index(head.target)
                    mask = rows & batch.properties_mask[:, col]
                    p_err = (e - batch.properties[:, col].double()).abs()[mask]
                    row[6] += float(p_err.sum()); row[7] += int(mask.sum())
                if head.name != name:
                    continue
                # own head: parity values and per-element force errors
                sel = rows.cpu().numpy()
                if energy_head:
                    m = (rows & batch.energy_mask).cpu().numpy()
                    for true, predicted in zip((batch.energy.double() / natoms).cpu().numpy()[m], (e / natoms).cpu().numpy()[m]):
                        parity.append({"dataset": name, "quantity": "energy_per_atom", "true": true, "predicted": predicted})
                    atoms = (rows & batch.forces_mask).index_select(0, atom_graph).cpu().numpy()
                    if atoms.any():
                        true_f = batch.forces.double().cpu().numpy()[atoms]
                        pred_f = pred[keys.FORCES].double().detach().cpu().numpy()[atoms]
                        parity.extend({"dataset": name, "quantity": "forces", "true": t, "predicted": p}
                                      for t, p in zip(true_f.ravel(), pred_f.ravel()))
                        element_rows.append((name, batch.z.cpu().numpy()[atoms], np.abs(pred_f - true_f).mean(axis=1)))
                elif head.target in props:
                    col = props.index(head.target)
                    m = sel & batch.properties_mask[:, col].cpu().numpy()
                    for true, predicted in zip(batch.properties[:, col].double().cpu().numpy()[m], e.cpu().numpy()[m]):
                        parity.append({"dataset": name, "quantity": head.target, "true": true, "predicted": predicted})

    structures = pd.Series(dataset_of[chosen]).value_counts().to_dict() if len(chosen) else {}
    rows = []
    for (head, name), v in acc.items():
        rows.append({"head": head, "dataset": name, "structures": int(structures.get(name, 0)),
                     **{m: (v[2 * k] / v[2 * k + 1] if v[2 * k + 1] else np.nan) for k, m in enumerate(METRICS)}})
    matrix = pd.DataFrame(rows, columns=["head", "dataset", "structures", *METRICS])
    matrix = matrix.sort_values(["head", "dataset"], ignore_index=True)
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
        for name, table in (("error_matrix.csv", matrix), ("per_element.csv", per_element),
                            (PREDICTIONS, predictions), ("summary.csv", summary)):  # parity data: figures from files
            with atomic_path(run.path / name) as tmp:
                table.to_csv(tmp, index=False, compression="gzip" if name.endswith(".gz") else None)
        for name, fig in result.figures.items():
            run.save_figure(fig, name)
        result.out = run
    return result


def _per_element(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=["dataset", "element", "atoms", "forces_mae"])
    frame = pd.DataFrame({"dataset": np.concatenate([[n] * len(z) for n, z, _ in rows]),
                          "z": np.concatenate([z for _, z, _ in rows]),
                          "err": np.concatenate([e for _, _, e in rows])})
    table = frame.groupby(["dataset", "z"]).agg(atoms=("err", "size"), forces_mae=("err", "mean")).reset_index()
    table.insert(1, "element", [chemical_symbols[int(z)] for z in table["z"]])
    return table.drop(columns="z")


# -- figures ------------------------------------------------------------------------------------------


def plot_error_matrix(matrix: pd.DataFrame, metrics: Sequence[str] = ("energy_mae", "forces_mae")):
    """Heat maps (log colour scale) of head x dataset errors, one panel per metric, values written in."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        table = matrix.pivot(index="head", columns="dataset", values=metric) if len(matrix) else pd.DataFrame()
        values = table.to_numpy(dtype=float)
        finite = values[np.isfinite(values) & (values > 0)]
        if finite.size:
            image = ax.imshow(values, cmap="viridis_r", norm=LogNorm(finite.min(), max(finite.max(), finite.min() * 1.01)))
            fig.colorbar(image, ax=ax, fraction=0.046, label=UNITS[metric])
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(table.columns)), table.columns, rotation=60, ha="right")
        ax.set_yticks(range(len(table.index)), table.index)
        ax.set_xlabel("dataset")
        ax.set_ylabel("head")
        ax.set_title(metric.replace("_", " "))
    fig.tight_layout()
    return fig


def plot_parity(predictions: pd.DataFrame, max_points: int = 5000):
    """Predicted against true values, one panel per quantity (energy per atom, forces, properties),
    coloured by dataset, each dataset under its own head."""
    import matplotlib.pyplot as plt

    quantities = list(dict.fromkeys(predictions["quantity"])) or ["energy_per_atom"]
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.5 * len(quantities), 4.2), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, quantity in zip(axes[0], quantities):
        part = predictions[predictions["quantity"] == quantity]
        if len(part) > max_points:
            part = part.iloc[np.sort(rng.choice(len(part), max_points, replace=False))]
        for name, group in part.groupby("dataset"):
            ax.scatter(group["true"], group["predicted"], s=6, alpha=0.6, label=name)
        if len(part):
            lo = float(min(part["true"].min(), part["predicted"].min()))
            hi = float(max(part["true"].max(), part["predicted"].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.legend(fontsize=7, markerscale=2)
        ax.set_xlabel(f"true {quantity}")
        ax.set_ylabel(f"predicted {quantity}")
        ax.set_title(quantity.replace("_", " "))
    fig.tight_layout()
    return fig


def plot_per_element(per_element: pd.DataFrame):
    """Own-head force MAE per element, grouped by dataset."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    if len(per_element):
        table = per_element.pivot(index="element", columns="dataset", values="forces_mae")
        order = sorted(table.index, key=chemical_symbols.index)
        table = table.loc[order]
        width = 0.8 / max(1, len(table.columns))
        x = np.arange(len(table))
        for k, name in enumerate(table.columns):
            ax.bar(x + k * width, table[name].to_numpy(), width, label=name)
        ax.set_xticks(x + 0.4 - width / 2, table.index)
        ax.legend(fontsize=7, ncol=2)
    ax.set_ylabel("force MAE (eV/Å)")
    ax.set_title("Force errors per element (own head)")
    fig.tight_layout()
    return fig


def _history_table(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    return RunDir(source).metrics() if not isinstance(source, RunDir) else source.metrics()


def plot_history(source, *, ax_pairs=None):
    """Training loss per dataset and validation force/energy errors against step, from a run directory,
    a RunDir or a metrics table (as :func:`gfmkit.train.train` returns)."""
    import matplotlib.pyplot as plt

    table = _history_table(source)
    if ax_pairs is None:
        fig, ax_pairs = plt.subplots(1, 2, figsize=(11, 3.8))
    else:
        fig = ax_pairs[0].figure
    left, right = ax_pairs
    left.clear()
    right.clear()
    phase = table["phase"] if "phase" in table else pd.Series(dtype=str)
    train = table[phase == "train"]
    val = table[phase == "val"]
    if len(train):
        left.plot(train["step"], train["loss_interval"], color="k", lw=2, label="total")
        for column in sorted(c for c in train.columns if c.startswith("train/") and c.endswith("/loss")):
            series = train[["step", column]].dropna()
            left.plot(series["step"], series[column], lw=1, label=column[len("train/") : -len("/loss")])
        left.set_yscale("log")
        left.legend(fontsize=7, ncol=2)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    for metric, style in (("forces_mae", "-"), ("energy_mae", "--")):
        if len(val) and metric in val:
            series = val[["step", metric]].dropna()
            right.plot(series["step"], series[metric], style, marker="o", ms=3, label=f"val {metric} ({UNITS[metric]})")
    if len(val):
        right.set_yscale("log")
        right.legend(fontsize=7)
    right.set_xlabel("step")
    right.set_ylabel("validation MAE")
    fig.tight_layout()
    return fig


class LiveLossPlot:
    """Pass as ``train(..., callback=LiveLossPlot())`` in a notebook: the loss curves per dataset and the
    validation errors, redrawn every ``every`` records in one output area. Outside IPython it only
    collects the records (``.table()``)."""

    def __init__(self, every: int = 1):
        self.every, self.records, self._handle, self._fig = every, [], None, None

    def __call__(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))
        if record.get("phase") == "event" or len(self.records) % self.every:
            return
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        import matplotlib.pyplot as plt

        if self._fig is None:
            self._fig, self._axes = plt.subplots(1, 2, figsize=(11, 3.8))
            plt.close(self._fig)  # shown through the display handle only
        plot_history(self.table(), ax_pairs=self._axes)
        if self._handle is None:
            self._handle = display(self._fig, display_id=True)
        else:
            self._handle.update(self._fig)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)


def load_run_checkpoint(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Path of a run directory's ``best`` (else ``last``) checkpoint."""
    checkpoints = Path(run_dir) / "checkpoints"
    for name in (f"{which}.pt", "last.pt"):
        if (checkpoints / name).exists():
            read_checkpoint(checkpoints / name)  # validates
            return checkpoints / name
    raise FileNotFoundError(f"{run_dir}: no checkpoint under {checkpoints}")
