"""What a trial is judged by: its validation error and the cost of its model, measured once it trained.

Objectives (``run_hpo(objectives=...)``, ``gfmkit hpo --objectives``), each a column of the search table:

==============  =========================  ==================================================================
objective       column                     what it is (minimised unless said)
==============  =========================  ==================================================================
``loss``        ``best_val_loss``          the lowest validation loss of the run; its scale depends on the
                                           ``loss.*`` settings, so a space with ``loss.*`` keys cannot use it
``error``       ``val_error``              validation error independent of the loss settings:
                                           ``val_energy_mae`` (eV/atom) + ``val_forces_mae`` (eV/Å), each the
                                           mean over the validation datasets of that dataset's MAE (every
                                           dataset counts alike, whatever its size), of the checkpoint the run
                                           keeps as best (``checkpoints/best.pt``); property heads do not count
``throughput``  ``throughput``             structures per second of inference (energy and forces, each
                                           structure's own head) of that checkpoint on a fixed batch, in the
                                           trial's precision and on its device; maximised
``flops``       ``gflops_per_structure``   GFLOP per structure of the same inference, counted by
                                           ``torch.utils.flop_counter`` (deterministic; blind to precision)
``params``      ``parameters``             the model's parameter count
==============  =========================  ==================================================================

Every trial records all five, whichever are searched. The timing pass runs after the trial's training,
on the first structures of the validation split (the same structures for every trial), one warm-up
call then the fastest of ``repeats`` timed calls; timing passes of one search never overlap on a node (a lock
file in the node's temporary directory), but a pass still shares the machine with trials that are training
at the time. With several trials at a time on one node the timings are noisy: search ``flops``
instead, or run one trial per node.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gfmkit import keys


@dataclass(frozen=True)
class Objective:
    name: str
    column: str
    label: str  # axis label, with units
    maximise: bool = False

    @property
    def cost_sign(self) -> int:
        """+1 for a minimised objective, -1 for a maximised one: ``cost_sign * value`` is to be minimised."""
        return -1 if self.maximise else 1


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("loss", "best_val_loss", "best validation loss"),
    Objective("error", "val_error", "validation error (eV/atom + eV/Å)"),
    Objective("throughput", "throughput", "inference throughput (structures/s)", maximise=True),
    Objective("flops", "gflops_per_structure", "inference cost (GFLOP/structure)"),
    Objective("params", "parameters", "parameters"),
)}
#: Per-trial numbers every trial records (DeepHyper metadata ``m:<name>``), beside the objectives.
MEASURES = ("best_val_loss", "val_error", "val_energy_mae", "val_forces_mae", "throughput", "gflops_per_structure",
            "parameters", "timing_structures")


def check_objectives(names: str | Sequence[str]) -> tuple[str, ...]:
    """``names`` (a sequence or a comma list) checked: known, distinct, at least one."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"objectives must be distinct names among {', '.join(OBJECTIVES)}; got {', '.join(names) or 'none'}")
    return names


def to_deephyper(measures: dict[str, float], objectives: Sequence[str]) -> float | tuple[float, ...]:
    """The value(s) DeepHyper maximises: minus each minimised objective, the maximised ones as they are."""
    values = tuple(-OBJECTIVES[n].cost_sign * measures[OBJECTIVES[n].column] for n in objectives)
    return values[0] if len(values) == 1 else values


def from_deephyper(value: float, name: str) -> float:
    """An objective's own value from DeepHyper's (the inverse of :func:`to_deephyper`)."""
    return -OBJECTIVES[name].cost_sign * value


def validation_errors(record: dict[str, Any]) -> dict[str, float]:
    """``val_energy_mae``, ``val_forces_mae`` and ``val_error`` of one validation metrics record: each the
    mean over datasets of the per-dataset MAE (NaN when no dataset has that label)."""
    out = {}
    for name, metric in (("val_energy_mae", keys.ENERGY_MAE), ("val_forces_mae", keys.FORCES_MAE)):
        per_dataset = [float(v) for k, v in record.items() if k.startswith("val/") and k.endswith(f"/{metric}")
                       and v is not None and math.isfinite(float(v))]
        out[name] = float(np.mean(per_dataset)) if per_dataset else math.nan
    parts = [v for v in out.values() if math.isfinite(v)]
    out["val_error"] = float(sum(parts)) if parts else math.nan
    return out


def kept_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The validation record of the checkpoint a run keeps as best (the last one flagged ``best``)."""
    val = [r for r in records if r.get("phase") == "val"]
    best = [r for r in val if r.get("best")]
    return (best or val or [None])[-1]


def timing_lock(out: str | os.PathLike) -> Path:
    """The lock file of a search's timing passes: node-local (the temporary directory), so that passes on one
    node never overlap while other nodes' go on, and no shared file system needs to support locks."""
    digest = hashlib.sha1(str(Path(out).absolute()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"gfmkit-hpo-timing-{digest}.lock"


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the block: one timing pass at a time."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def timing_batch(model: Any, stores: Sequence[str], split: str, structures: int, dtype: Any, device: Any) -> Any:
    """The fixed batch of the timing pass: ``structures`` structures of ``split`` spread evenly over
    those of the model's energy heads, each labelled with its own head."""
    import torch

    from gfmkit.data.graphs import GraphDataset, collate
    from gfmkit.data.multi import open_stores

    multi = open_stores(stores)
    dataset = GraphDataset(multi, model.config.cutoff, split=split, dtype=dtype)
    names = multi.registry.names
    energy = {h.name: i for i, h in enumerate(model.heads) if h.kind == "energy"}
    head_of = np.array([energy.get(names[h], -1) for h in dataset.head], dtype=np.int64)
    candidates = np.flatnonzero(head_of >= 0)
    if len(candidates) == 0:
        raise ValueError(f"split {split!r} holds no structure of an energy head to time")
    chosen = candidates[np.unique(np.linspace(0, len(candidates) - 1, min(structures, len(candidates))).round().astype(int))]
    batch = collate([dataset[int(k)] for k in chosen])
    batch.dataset = torch.as_tensor(head_of[chosen], dtype=batch.dataset.dtype)
    return batch.to(device)


def inference_cost(checkpoint: str | os.PathLike, stores: Sequence[str], *, split: str, precision: str,
                   device: Any = "cpu", structures: int = 16, repeats: int = 3,
                   lock_file: str | os.PathLike | None = None) -> dict[str, float]:
    """``throughput`` (structures/s), ``gflops_per_structure`` and ``parameters`` of the model in
    ``checkpoint``: energy and forces of a fixed batch (:func:`timing_batch`) in ``precision``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gfmkit.models import load_model
    from gfmkit.precision import get_policy, precision_scope, synchronize

    policy = get_policy(precision)
    device = torch.device(device)
    model = load_model(checkpoint, map_location=device).to(policy.param_dtype).eval()
    batch = timing_batch(model, stores, split, structures, policy.sensitive_dtype, device)
    n = int(batch.natoms.numel())

    def once() -> None:
        with precision_scope(policy, device):
            model(batch, forces=True)

    with FlopCounterMode(display=False) as counter:
        once()
    flops = counter.get_total_flops()
    with exclusive(lock_file) if lock_file is not None else contextlib.nullcontext():
        once()  # warm-up
        seconds = []
        for _ in range(max(1, repeats)):
            synchronize(device)
            start = time.perf_counter()
            once()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    return {"throughput": n / min(seconds), "gflops_per_structure": flops / n / 1e9,
            "parameters": float(sum(p.numel() for p in model.parameters())), "timing_structures": float(n)}


def trial_measures(run_dir: str | os.PathLike, *, stores: Sequence[str], split: str, precision: str,
                   device: Any = "cpu", structures: int = 16, lock_file: str | os.PathLike | None = None) -> dict[str, float]:
    """Every number of :data:`MEASURES` for the finished run in ``run_dir``."""
    from gfmkit.rundir import RunDir

    run = RunDir(run_dir)
    records = run.records()
    losses = [float(r["loss"]) for r in records if r.get("phase") == "val" and r.get("loss") is not None]
    kept = kept_record(records) or {}
    out: dict[str, float] = {"best_val_loss": min(losses) if losses else math.nan, **validation_errors(kept)}
    out.update(inference_cost(Path(run.best_checkpoint()), stores, split=split, precision=precision, device=device,
                              structures=structures, lock_file=lock_file))
    return out
