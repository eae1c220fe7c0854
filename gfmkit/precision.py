"""Numerical precision policies, scoped by a context manager.

gfmkit never calls ``torch.set_default_dtype``: it would leak into every later notebook cell. A policy
says which dtype parameters, inputs and matmuls use; :func:`precision_scope` enables what the policy
needs (autocast for ``bf16-autocast``) only inside the ``with`` block.

Sensitive quantities (positions, edge vectors, radial basis, scatter sums, energies, reference
energies) always use :attr:`PrecisionPolicy.sensitive_dtype`, which is never below float32:
bfloat16 resolves 10 Å only to about 0.06 Å.

:func:`compare_precisions` evaluates one trained model in each precision (inference only): errors
against the labels, deviation from its own fp64 predictions, throughput and peak memory
(:func:`infer`, :func:`inference_errors`, :func:`peak_memory`).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class Precision(str, enum.Enum):
    FP64 = "fp64"
    FP32 = "fp32"
    BF16_AUTOCAST = "bf16-autocast"  # float32 parameters, bfloat16 matmuls via torch.autocast
    BF16_PURE = "bf16-pure"  # bfloat16 parameters and activations; sensitive sums stay float32


@dataclass(frozen=True)
class PrecisionPolicy:
    """Dtypes a policy implies. Build with :func:`get_policy`."""

    precision: Precision
    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    sensitive_dtype: torch.dtype

    @property
    def autocast(self) -> bool:
        return self.precision is Precision.BF16_AUTOCAST

    @property
    def name(self) -> str:
        return self.precision.value


_POLICIES = {
    Precision.FP64: (torch.float64, torch.float64, torch.float64),
    Precision.FP32: (torch.float32, torch.float32, torch.float32),
    Precision.BF16_AUTOCAST: (torch.float32, torch.bfloat16, torch.float32),
    Precision.BF16_PURE: (torch.bfloat16, torch.bfloat16, torch.float32),
}


def get_policy(precision: str | Precision | PrecisionPolicy) -> PrecisionPolicy:
    """Policy for a name such as ``"fp32"`` or ``"bf16-autocast"``."""
    if isinstance(precision, PrecisionPolicy):
        return precision
    try:
        key = Precision(precision)
    except ValueError:
        names = ", ".join(p.value for p in Precision)
        raise ValueError(f"unknown precision {precision!r}; choose one of {names}") from None
    return PrecisionPolicy(key, *_POLICIES[key])


def check_supported(policy: PrecisionPolicy, device: torch.device | str) -> None:
    """Raise if ``device`` cannot run ``policy``: no silent fallback to another precision."""
    device = torch.device(device)
    uses_bf16 = torch.bfloat16 in (policy.param_dtype, policy.compute_dtype)
    if device.type == "cuda" and uses_bf16 and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"precision {policy.name} needs bfloat16, which {torch.cuda.get_device_name(device)} lacks")
    if device.type == "mps" and policy.precision is Precision.FP64:
        raise RuntimeError("precision fp64 is not supported on Apple MPS devices")


@contextlib.contextmanager
def precision_scope(
    precision: str | Precision | PrecisionPolicy, device: torch.device | str = "cpu"
) -> Iterator[PrecisionPolicy]:
    """Run the block under ``precision`` on ``device``; nothing global survives the block."""
    policy = get_policy(precision)
    device = torch.device(device)
    check_supported(policy, device)
    if policy.autocast:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield policy
    else:
        # Autocast from an enclosing scope must not leak into an explicit fp32/fp64 block.
        with torch.autocast(device_type=device.type, enabled=False):
            yield policy


# --- one model in several precisions: inference only -------------------------------------------------
# Everything below imports data and model modules inside the functions: gfmkit.models imports this module.

#: the precisions a model can be evaluated in, fp64 first (the reference)
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
#: error columns (against the labels) and deviation columns (against reference predictions) of the tables
LABEL_ERRORS = ("energy_mae", "forces_mae", "property_mae")
DEVIATIONS = ("energy_dev", "forces_dev", "property_dev")


@dataclass
class InferenceRun:
    """Own-head predictions of one model in one precision over the chosen structures (:func:`infer`).

    Per dataset: ``values`` (predicted energy per atom, eV/atom, or the head's property) and
    ``truth``/``known`` (labels and their mask); ``forces``/``true_forces``/``known_forces`` per atom
    (eV/Å; empty for property heads). ``seconds``: time in the model (forward and forces), without
    reading and batching; ``peak_memory_mib`` and ``memory_measure``: see :func:`peak_memory`.
    """

    precision: str
    heads: dict[str, str]
    kinds: dict[str, str]
    values: dict[str, Any]
    truth: dict[str, Any]
    known: dict[str, Any]
    forces: dict[str, Any]
    true_forces: dict[str, Any]
    known_forces: dict[str, Any]
    structures: int
    seconds: float
    peak_memory_mib: float
    memory_measure: str

    @property
    def structures_per_s(self) -> float:
        return self.structures / self.seconds if self.seconds > 0 else float("nan")


class _Peak:
    """The result of :func:`peak_memory`: ``mib`` (NaN where unmeasured) and ``measure`` (how)."""

    mib: float = float("nan")
    measure: str = "unmeasured"


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def peak_memory(device: torch.device | str) -> Iterator[_Peak]:
    """Peak memory the block adds, in MiB, measured honestly per device.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at the start (tensors only, not the
    caching allocator's reserve). CPU on Linux: the process's peak resident set during the block above
    its resident set at the start; glibc's free memory is first returned (``malloc_trim``) and the
    kernel's peak counter reset (``/proc/self/clear_refs``), then ``VmHWM`` is read. This counts every
    allocation of the process (torch's, the data reader's, Python's), which is what a job's memory
    limit sees. Elsewhere NaN, ``measure="unmeasured"``.
    """
    device = torch.device(device)
    peak = _Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.mib = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        peak.measure = "cuda max_memory_allocated"
        return
    start = None
    if device.type == "cpu":
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.util.find_library("c")
            if libc:
                with contextlib.suppress(AttributeError, OSError):
                    ctypes.CDLL(libc).malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as reset:
                reset.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
            start = _status_kib("VmRSS")
        except (OSError, ValueError):
            start = None
    yield peak
    if start is not None:
        peak.mib = (_status_kib("VmHWM") - start) / 1024
        peak.measure = "peak RSS growth (VmHWM)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads finished work; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dataset_heads(model: Any, names: Sequence[str], heads: str | Mapping[str, str] | None) -> dict[str, str]:
    """The head each dataset is evaluated under: its own (by name), or as ``heads`` says."""
    chosen = {}
    for name in names:
        head = heads if isinstance(heads, str) else (heads or {}).get(name, name)
        if head not in model.head_names:
            raise ValueError(f"dataset {name!r} has no head of its name in the model; choose one with heads= "
                             f"(--head): {', '.join(model.head_names)}")
        chosen[name] = head
    return chosen


def infer(
    model: Any,
    stores: Any,
    precision: str | Precision = "fp64",
    *,
    split: str | None = "test",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    max_structures: int | None = None,
    heads: str | Mapping[str, str] | None = None,
) -> InferenceRun:
    """Predict every structure of ``stores`` (a MultiStore; its ``split``, at most ``max_structures`` per
    dataset) with ``model`` in ``precision``: energies and forces of each dataset's own head (``heads``:
    one head for all datasets, or a mapping dataset -> head), timed and with the peak memory it needed.
    ``model`` itself is not changed: a copy is cast to the precision's dtype, its weights frozen (forces
    need gradients in positions only, as in deployment). One untimed batch first warms the model up; the
    timed pass then covers every batch."""
    import copy
    import itertools
    import time

    import numpy as np

    from gfmkit.data.graphs import GraphDataset
    from gfmkit.models.gate import store_batches

    policy = get_policy(precision)
    device = torch.device(device)
    check_supported(policy, device)
    model = copy.deepcopy(model).to(device=device, dtype=policy.param_dtype).eval().requires_grad_(False)
    properties = GraphDataset(stores, model.config.cutoff, split=split).property_names
    chosen = _dataset_heads(model, stores.registry.names, heads)
    kinds = {name: model.heads[model.head_index(head)].kind for name, head in chosen.items()}
    collected: dict[str, dict[str, list]] = {}

    def run(batch: Any, name: str) -> dict[str, torch.Tensor]:
        with precision_scope(policy, device):
            return model(batch, forces=kinds[name] == "energy")

    batches = store_batches(model, stores, split=split, batch_size=batch_size, max_structures=max_structures,
                            dtype=policy.sensitive_dtype, heads=chosen)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"no structures in the {split or 'all'!r} split of {', '.join(stores.registry.names)}")
    run(first[2], first[0])  # warm-up, untimed
    seconds, structures = 0.0, 0
    with peak_memory(device) as peak:
        for name, _, batch in itertools.chain([first], batches):
            synchronize(device)
            started = time.perf_counter()
            out = run(batch, name)
            synchronize(device)
            seconds += time.perf_counter() - started
            structures += int(batch.natoms.numel())
            parts = collected.setdefault(name, {k: [] for k in ("values", "truth", "known", "forces", "true_forces",
                                                                "known_forces")})
            energy = out["energy"].double()
            if kinds[name] == "energy":
                natoms = batch.natoms.double()
                parts["values"].append(energy / natoms)
                parts["truth"].append(batch.energy.double() / natoms)
                parts["known"].append(batch.energy_mask)
                parts["forces"].append(out["forces"].double())
                parts["true_forces"].append(batch.forces.double())
                parts["known_forces"].append(batch.forces_mask.index_select(0, batch.batch))
            else:
                head = model.heads[model.head_index(chosen[name])]
                column = properties.index(head.target) if head.target in properties else None
                parts["values"].append(energy)
                parts["truth"].append(batch.properties[:, column].double() if column is not None
                                      else torch.full_like(energy, float("nan")))
                parts["known"].append(batch.properties_mask[:, column] if column is not None
                                      else torch.zeros_like(energy, dtype=torch.bool))
    arrays = {k: {} for k in ("values", "truth", "known", "forces", "true_forces", "known_forces")}
    for name, parts in collected.items():
        for key, tensors in parts.items():
            arrays[key][name] = (torch.cat(tensors).cpu().numpy() if tensors
                                 else np.zeros((0, 3)) if "forces" in key else np.zeros(0))
    return InferenceRun(policy.name, {n: chosen[n] for n in collected}, {n: kinds[n] for n in collected},
                        **arrays, structures=structures, seconds=seconds, peak_memory_mib=peak.mib,
                        memory_measure=peak.measure)


def inference_errors(run: InferenceRun, reference: InferenceRun | None = None) -> Any:
    """One row per dataset of ``run``: structures, MAEs against the labels (energy per atom, forces,
    property) and, with ``reference`` (the same structures predicted by another model or precision),
    the mean absolute deviation from its predictions (``*_dev``, same units)."""
    import numpy as np
    import pandas as pd

    def mae(a: Any, b: Any, mask: Any = None) -> float:
        diff = np.abs(a - b) if mask is None else np.abs(a - b)[mask]
        return float(diff.mean()) if diff.size else float("nan")

    rows = []
    for name, head in run.heads.items():
        energy = run.kinds[name] == "energy"
        row: dict[str, Any] = {"dataset": name, "head": head, "structures": len(run.values[name])}
        values, truth, known = run.values[name], run.truth[name], run.known[name]
        labelled = mae(values, truth, known)
        row["energy_mae"] = labelled if energy else float("nan")
        row["forces_mae"] = mae(run.forces[name], run.true_forces[name], run.known_forces[name]) if energy else float("nan")
        row["property_mae"] = float("nan") if energy else labelled
        if reference is not None and name in reference.values:
            if len(reference.values[name]) != len(values):
                raise ValueError(f"dataset {name!r}: the reference predicted {len(reference.values[name])} structures, "
                                 f"this run {len(values)}")
            deviation = mae(values, reference.values[name])
            row["energy_dev"] = deviation if energy else float("nan")
            row["forces_dev"] = mae(run.forces[name], reference.forces[name]) if energy else float("nan")
            row["property_dev"] = float("nan") if energy else deviation
        rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "head", "structures", *LABEL_ERRORS, *DEVIATIONS])


@dataclass
class PrecisionComparison:
    """What :func:`compare_precisions` returns. ``table``: one row per precision (structures, throughput,
    speedup over fp64, peak memory and how it was measured, errors and deviations from fp64 as means
    over the datasets); ``errors``: one row per (precision, dataset)."""

    table: Any
    errors: Any


def compare_precisions(
    checkpoint: Any,
    stores: Any,
    precisions: Sequence[str] = PRECISIONS,
    *,
    split: str | None = "test",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    max_structures: int | None = None,
    heads: str | Mapping[str, str] | None = None,
    progress: bool = False,
) -> PrecisionComparison:
    """Inference only: one model (a checkpoint path or a loaded model) evaluated on ``stores`` (paths
    or a MultiStore) in each of ``precisions``: errors against the labels, deviation from the same
    model's fp64 predictions, throughput and peak memory (:func:`infer`, :func:`peak_memory`).

    Every dataset is predicted by its own head unless ``heads`` names one (for data the model never saw,
    e.g. ``heads="bulk"``). The fp64 reference is computed even when fp64 is not among ``precisions``."""
    import os

    import pandas as pd

    from gfmkit.data.multi import MultiStore, open_stores
    from gfmkit.models import load_model
    from gfmkit.progress import progress_bar

    names = [get_policy(p).name for p in precisions]
    if not names:
        raise ValueError("give at least one precision")
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_model(checkpoint)
    if not isinstance(stores, MultiStore):
        paths = [stores] if isinstance(stores, (str, os.PathLike)) else list(stores)
        stores = open_stores(paths)
    options = dict(split=split, batch_size=batch_size, device=device, max_structures=max_structures, heads=heads)
    runs: dict[str, InferenceRun] = {}
    for name in progress_bar(list(dict.fromkeys(["fp64", *names])), desc="precisions", unit="precision",
                             disable=not progress):
        runs[name] = infer(model, stores, name, **options)
    reference = runs["fp64"]
    errors = pd.concat([inference_errors(runs[n], reference).assign(precision=n) for n in names], ignore_index=True)
    errors = errors[["precision", *[c for c in errors.columns if c != "precision"]]]
    rows = []
    for name in names:
        run = runs[name]
        mine = errors[errors["precision"] == name]
        rows.append({"precision": name, "structures": run.structures, "structures_per_s": run.structures_per_s,
                     "speedup_vs_fp64": run.structures_per_s / reference.structures_per_s,
                     "peak_memory_mib": run.peak_memory_mib, "memory_measure": run.memory_measure,
                     **{c: float(mine[c].mean()) for c in (*LABEL_ERRORS, *DEVIATIONS)}})
    return PrecisionComparison(pd.DataFrame(rows), errors)
