"""The trainer: one call from a notebook, one command in a batch job, 1 or N ranks without a change.

``train(config, run_dir)`` opens the stores, fits each head's statistics, builds the model, and runs
AdamW on the multi-head loss (gfmkit.train.loss) with the imbalance-aware sampler
(gfmkit.data.sampling). Every rank gets a contiguous slice of each global batch; the per-term element
counts are summed over ranks before the backward pass and the gradients after it, so N ranks take
exactly the step one rank would take with the whole batch. Validation, best/last checkpoints and the
saved weights use the exponential moving average (EMA) of the weights.

Gradients are summed over ranks by hand, as one flat tensor and one ``all_reduce``, instead of
wrapping the model in ``torch.nn.parallel.DistributedDataParallel``: forces are ``-dE/dx`` taken with
``create_graph=True``, so the loss back-propagates through a double backward, which DDP's
gradient-bucket hooks do not support; ranks whose slice of a batch is empty still join with zeros; and
the sum (not DDP's mean) is what the global-count normalisation needs. Gradient clipping then acts on
the global gradient. Under bf16-pure the optimiser steps on float32 master weights
(:class:`gfmkit.train.state.Weights`).

A run directory holds (see gfmkit.rundir)::

    config.yaml, run.json (precision policy, launch, devices, registry), registry.json,
    metrics.jsonl (phase train / val / event records), checkpoints/last.pt, checkpoints/best.pt

``last.pt`` carries the full training state as plain data and tensors (raw weights, float32 masters
under bf16-pure, optimiser, schedule, EMA, sampler position, every rank's RNG states, step, best
loss), so ``resume="auto"`` continues bit for bit where it stopped (tested in float64 on CPU against
an uninterrupted run, with and without DataLoader workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gfmkit import keys
from gfmkit.data.graphs import collate
from gfmkit.log import get_logger
from gfmkit.performance import tune_allocator
from gfmkit.precision import check_supported, get_policy, precision_scope
from gfmkit.rundir import RunDir
from gfmkit.train.config import TrainConfig, load_train_config, resolve_paths
from gfmkit.train.distributed import Distributed, init_distributed
from gfmkit.train.loss import (
    TERMS,
    HeadTable,
    absolute_errors,
    combine,
    loss_parts,
    term_weights,
    wants_stress,
)
from gfmkit.train.runfiles import BEST, LAST, RunFiles
from gfmkit.train.setup import (
    CachedGraphs,
    TrainingError,
    TrainingSetup,
    check_dataset_names,
    cpu_autocast_bf16,
)
from gfmkit.train.signals import StopRequest, stop_deadline
from gfmkit.train.state import (
    EMA,
    Schedule,
    Weights,
)

log = get_logger(__name__)

__all__ = ["BEST", "LAST", "CachedGraphs", "Trainer", "TrainingError", "best_checkpoint_steps", "train"]

#: Per-head validation error columns, in the order of gfmkit.train.loss.TERMS.
ERROR_NAMES = keys.ERROR_COLUMNS


# -- the trainer --------------------------------------------------------------------------------------


class Trainer(TrainingSetup, RunFiles):
    """One training run. ``Trainer(config, run_dir, resume=...).fit()`` returns the metrics table;
    :func:`train` is the one-line form. ``callback(record)`` sees every metrics record on rank 0 (the
    notebook's live loss plot uses it)."""

    def __init__(
        self,
        config: TrainConfig | str | os.PathLike | Mapping[str, Any],
        run_dir: str | os.PathLike | RunDir,
        *,
        resume: str | os.PathLike | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        dist: Distributed | None = None,
        overwrite: bool = False,
    ):
        self.started = time.time()  # the wall-time budget counts from here (data loading included)
        tune_allocator()  # freed batch memory is reused, not page-faulted afresh (gfmkit.performance)
        # config.yaml in the run directory records absolute paths, so it reloads from anywhere
        self.config = config = resolve_paths(load_train_config(config), Path.cwd())
        self.callback = callback
        self.dist = dist or init_distributed(config.device)
        self._check_run_dir(run_dir, overwrite=overwrite and resume is None)
        self._owns_dist = dist is None
        self.device = self.dist.device
        self.policy = get_policy(config.precision)
        check_supported(self.policy, self.device)
        if self.policy.autocast and self.device.type == "cpu" and not cpu_autocast_bf16():
            raise RuntimeError("precision bf16-autocast needs CPU autocast to bfloat16, which this torch lacks")
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.is_main = self.dist.is_main
        checkpoint = self._resume_path(resume)
        if checkpoint is None and (self.run.checkpoints / LAST).exists():
            raise TrainingError(f"{self.run.path} already holds a run ({LAST}); pass resume='auto' or use a new directory")
        state = self._read_resume_state(checkpoint)
        self.model_config = self._model_config(state, checkpoint)
        if self.model_config != config.model:  # config.yaml shows the architecture actually trained
            self.config = config = dataclasses.replace(config, model=self.model_config)

        self._open_data(state)
        self.model = self._build_model(state, checkpoint)
        self._broadcast_parameters()
        # fp32 masters under bf16-pure, made after the broadcast so every rank starts from rank 0's weights
        self.weights = Weights(self.model, torch.float32 if self.policy.param_dtype == torch.bfloat16 else None)
        check_dataset_names("loss.datasets", config.loss.datasets, self.model.head_names)
        self.heads = HeadTable.from_model(self.model, self.train_set.property_names, config.loss.datasets)
        self.any_forces = bool(self.heads.is_energy.any())
        self._build_loader()
        opt = config.optimizer
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=opt.lr, betas=opt.betas, eps=opt.eps,
                                           weight_decay=opt.weight_decay)
        self.batches_per_epoch = len(self.sampler)
        totals = [t for t in (config.max_steps, None if config.max_epochs is None else config.max_epochs * self.batches_per_epoch) if t]
        self.total_steps = min(totals)
        self.schedule = Schedule(config.schedule, opt.lr, self.total_steps)
        self.ema = EMA(self.weights.named(), opt.ema_decay) if opt.ema_decay is not None else None

        # counters and bookkeeping
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_loss, self.bad_validations = math.inf, 0
        self.last_validation: dict[str, float] = {}
        self.last_validated_step = -1
        self.stop_reason: str | None = None
        self._step_seconds = 0.0
        self._saved_step = -1
        self._val_batches: list | None = None
        self._reset_interval()
        if state is not None:
            self._load_training_state(state, checkpoint)
        if self.is_main:
            if state is None and self.run.metrics_path.exists():  # a run that died before its first checkpoint
                log.warning("%s: discarding the metrics of an earlier start that saved no checkpoint", self.run.path)
                self.run.metrics_path.unlink()
            self._write_run_files(resumed_from=checkpoint)

    # -- public -------------------------------------------------------------------------------------
    def fit(self) -> pd.DataFrame:
        """Train until max_steps/max_epochs, early stopping, a signal or the wall time; the metrics table."""
        config = self.config
        try:
            with StopRequest(deadline=stop_deadline(config.wall_time, self.started), margin=config.stop_margin) as stop:
                self._emit({"phase": "event", "event": "resume" if self.step else "start", "step": self.step,
                            "epoch": self.epoch, **self._describe()})
                self._loop(stop)
                self._log_interval()
                if self.val_set is not None and self.last_validated_step != self.step and self.stop_reason is None:
                    self._validate()
                if self._saved_step != self.step:
                    self._save(self.run.checkpoints / LAST, training_state=True)
                self._emit({"phase": "event", "event": "stop", "step": self.step, "epoch": self.epoch,
                            "reason": self.stop_reason or "finished", "best_val_loss": self.best_loss})
                self._record_resources("end")
        finally:
            if self._owns_dist:
                self.dist.close()
        return self.run.metrics()

    # -- the loop -----------------------------------------------------------------------------------
    def _done(self) -> bool:
        c = self.config
        return (c.max_steps is not None and self.step >= c.max_steps) or (c.max_epochs is not None and self.epoch >= c.max_epochs)

    def _loop(self, stop: StopRequest) -> None:
        from gfmkit.progress import progress_bar

        config = self.config
        show = config.progress and self.is_main
        # one bar (or one log line per interval) for the whole run: nested epoch bars left a widget per
        # epoch in notebooks and cursor codes in logs
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not show)
        first_step_recorded = False
        try:
            while not self._done() and self.stop_reason is None:
                self.sampler.load_state_dict({"epoch": self.epoch, "start_batch": self.batch_in_epoch})
                waited = time.perf_counter()
                for batch in self.loader:
                    data_seconds = time.perf_counter() - waited
                    stats = self._train_step(batch, stop)
                    self.step += 1
                    if not first_step_recorded:
                        self._record_resources("first_step")
                        first_step_recorded = True
                    self.batch_in_epoch += 1
                    self._after_step(stats, data_seconds)
                    if show:
                        bar.set_postfix(epoch=self.epoch, loss=f"{stats['loss']:.4g}", lr=f"{stats['lr']:.2e}",
                                        refresh=False)
                    bar.update(1)
                    if self._done() or self.stop_reason is not None:
                        break
                    waited = time.perf_counter()
                # the trainer's own count decides: with workers the sampler runs ahead (prefetch) and may
                # already have finished the epoch when a stop breaks the loop
                if self.batch_in_epoch >= self.batches_per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    self.batches_per_epoch = len(self.sampler.global_batches(self.epoch))
        finally:
            bar.close()

    def _train_step(self, batch, stop: StopRequest) -> dict[str, Any]:
        started = time.perf_counter()
        sums, counts, sizes = self._local_loss(batch)
        # one collective for the global counts, the stop flag (a step boundary all ranks reach) and sizes
        flag = float(stop.check(self._step_seconds))
        shared = torch.cat([counts.flatten(), torch.tensor([flag, *sizes], dtype=torch.float64, device=self.device)])
        waited = time.perf_counter()
        self.dist.allreduce_(shared)
        comm = time.perf_counter() - waited
        global_counts = shared[: counts.numel()].view_as(counts)
        if shared[-3] > 0 and self.stop_reason is None:
            self.stop_reason = stop.reason or "signal on another rank"
        lr, grad_norm, seconds = self._optimizer_step(sums, global_counts)
        comm += seconds
        waited = time.perf_counter()
        global_sums = self.dist.allreduce_(sums.detach().clone())
        comm += time.perf_counter() - waited
        loss = float(combine(global_sums, global_counts, self.heads, self.config.loss))
        seconds = time.perf_counter() - started
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "sums": global_sums, "counts": global_counts,
                "structures": float(shared[-2]), "atoms": float(shared[-1]), "compute_s": seconds, "comm_s": comm}

    def _local_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
        """This rank's (loss sums, counts) per head and term and its (structures, atoms); zeros for an
        empty slice."""
        self.model.train()
        if batch is None:
            sums = torch.zeros(self.heads.n, len(TERMS), dtype=torch.float64, device=self.device)
            return sums, torch.zeros_like(sums), (0.0, 0.0)
        batch = batch.to(self.device)
        with precision_scope(self.policy, self.device):
            out = self.model(batch, forces=self.any_forces, stress=wants_stress(batch, self.config.loss), training=True)
            sums, counts = loss_parts(out, batch, self.heads, self.config.loss)
        return sums, counts, (float(batch.natoms.numel()), float(batch.natoms.sum()))

    def _optimizer_step(self, sums: torch.Tensor, global_counts: torch.Tensor) -> tuple[float, float, float]:
        """Backward of this rank's share of the global loss, gradient sum over ranks, clipping of the
        global gradient, AdamW, EMA; returns (lr, grad norm before clipping, seconds in the all-reduce)."""
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        if sums.requires_grad:
            combine(sums, global_counts, self.heads, self.config.loss).backward()
        flat = self.weights.flat_gradients()
        waited = time.perf_counter()
        self.dist.allreduce_(flat)  # a sum: each rank's loss is already divided by the global counts
        comm = time.perf_counter() - waited
        self.weights.set_gradients(flat)
        clip = self.config.optimizer.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.weights.params, clip if clip is not None else math.inf)
        self.optimizer.step()
        self.weights.push()
        if self.ema is not None:
            self.ema.update(self.weights.named())
        return lr, float(grad_norm), comm

    def _after_step(self, stats: dict[str, Any], data_seconds: float) -> None:
        c = self.config
        acc = self._interval
        acc["sums"] += stats["sums"]
        acc["counts"] += stats["counts"]
        for key in ("structures", "atoms", "compute_s", "comm_s"):
            acc[key] += stats[key]
        acc["data_s"] += data_seconds
        acc["steps"] += 1
        # a slowly forgetting maximum of the step time: what the deadline check expects the next step to take
        self._step_seconds = max(0.9 * self._step_seconds, stats["compute_s"] + data_seconds)
        acc["last"] = stats
        last_step = self._done()
        if self.step % c.log_every == 0 or last_step or self.stop_reason is not None:
            self._log_interval()
        stopping = self.stop_reason is not None  # a signal or the deadline: save first, validate after resuming
        if self.val_set is not None and not stopping and (self.step % c.validate_every == 0 or last_step):
            self._validate()
        if self.step % c.checkpoint_every == 0 or self.stop_reason is not None:
            self._save(self.run.checkpoints / LAST, training_state=True)

    def _reset_interval(self) -> None:
        zeros = torch.zeros(self.heads.n, len(TERMS), dtype=torch.float64, device=self.device)
        self._interval = {"sums": zeros.clone(), "counts": zeros.clone(), "structures": 0.0, "atoms": 0.0,
                          "compute_s": 0.0, "comm_s": 0.0, "data_s": 0.0, "steps": 0, "last": None}

    def _log_interval(self) -> None:
        acc = self._interval
        if acc["steps"] == 0:
            return
        last = acc["last"]
        record = {"phase": "train", "step": self.step, "epoch": self.epoch, "lr": last["lr"], "loss": last["loss"],
                  "grad_norm": last["grad_norm"],
                  "loss_interval": float(combine(acc["sums"], acc["counts"], self.heads, self.config.loss)),
                  "structures": acc["structures"], "atoms": acc["atoms"], "steps": acc["steps"],
                  "data_s": acc["data_s"], "compute_s": acc["compute_s"], "comm_s": acc["comm_s"]}
        record.update(_term_table(acc["sums"], acc["counts"], "train/", self.config.loss, self.model.head_names))
        self._emit(record)
        self._reset_interval()

    # -- validation ---------------------------------------------------------------------------------
    def _validation_batches(self) -> list:
        if self._val_batches is None:
            assert self.val_set is not None
            # sharded: a rank validates its own shard; replicated: every rank's share of the one split
            mine = (list(range(len(self.val_set))) if self.sharded
                    else list(range(self.dist.rank, len(self.val_set), self.dist.world_size)))
            size = self.config.data.val_batch_size
            self._val_batches = [collate([self.val_set[k] for k in mine[i : i + size]]).to(self.device)
                                 for i in range(0, len(mine), size)]
        return self._val_batches

    def evaluate_split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global (loss sums, loss counts, absolute-error sums, error counts) of the validation split,
        with the EMA weights."""
        n = self.heads.n
        zeros = torch.zeros(n, len(TERMS), dtype=torch.float64, device=self.device)
        parts = [zeros.clone() for _ in range(4)]
        self.model.eval()
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            for batch in self._validation_batches():
                with precision_scope(self.policy, self.device):
                    out = self.model(batch, forces=self.any_forces, stress=bool(batch.stress_mask.any()))
                sums, counts = loss_parts(out, batch, self.heads, self.config.loss)
                errors, error_counts = absolute_errors(out, batch, self.heads)
                for k, value in enumerate((sums, counts, errors, error_counts)):
                    parts[k] += value.detach()
        flat = self.dist.allreduce_(torch.cat([p.flatten() for p in parts]))
        return tuple(flat.view(4, n, len(TERMS)))  # type: ignore[return-value]

    def _validate(self) -> None:
        sums, counts, errors, error_counts = self.evaluate_split()
        loss = float(combine(sums, counts, self.heads, self.config.loss))
        record: dict[str, Any] = {"phase": "val", "step": self.step, "epoch": self.epoch, "loss": loss}
        total_errors, total_counts = errors.sum(dim=0), error_counts.sum(dim=0)
        for t, name in enumerate(ERROR_NAMES):
            if total_counts[t] > 0:
                record[name] = float(total_errors[t] / total_counts[t])
        for h, head in enumerate(self.model.head_names):
            for t, name in enumerate(ERROR_NAMES):
                if error_counts[h, t] > 0:
                    record[f"val/{head}/{name}"] = float(errors[h, t] / error_counts[h, t])
        record.update(_term_table(sums, counts, "val/", self.config.loss, self.model.head_names))
        self.last_validated_step = self.step
        improved = _improves(loss, self.best_loss, self.config.schedule.threshold)
        if improved:
            self.best_loss, self.bad_validations = loss, 0
        else:
            self.bad_validations += 1
        keep = improved if self.config.best_checkpoint == "val_loss" else math.isfinite(loss)
        record["best"] = bool(keep)
        if self.schedule.on_validation(loss):
            record["lr_reduced_to"] = self.schedule.lr(self.step)
        self.last_validation = {k: v for k, v in record.items() if isinstance(v, float)}
        self._emit(record)
        if keep:
            self._save(self.run.checkpoints / BEST, training_state=False)
        patience = self.config.early_stopping_patience
        if patience is not None and self.bad_validations >= patience and self.stop_reason is None:
            self.stop_reason = "early_stopping"

def _improves(loss: float, best: float, threshold: float) -> bool:
    """Whether a validation loss beats the best so far by the relative ``threshold`` (any finite loss
    beats none)."""
    return loss < best * (1 - threshold) if math.isfinite(best) else math.isfinite(loss)


def best_checkpoint_steps(losses: list[float], rule: str, threshold: float = 1e-3) -> list[bool]:
    """For a run's validation losses in order: whether ``best.pt`` is written at each validation under
    ``TrainConfig.best_checkpoint`` = ``rule`` (the trainer's own decision, for studies of the rules)."""
    kept, best = [], math.inf
    for loss in losses:
        improved = _improves(loss, best, threshold)
        best = loss if improved else best
        kept.append(improved if rule == "val_loss" else math.isfinite(loss))
    return kept


def _term_table(sums: torch.Tensor, counts: torch.Tensor, prefix: str, config, names: list[str]) -> dict[str, float]:
    """Per-term losses over all heads and each dataset's own loss (its weighted terms over its counts)."""
    out: dict[str, float] = {}
    totals_s, totals_c = sums.sum(dim=0), counts.sum(dim=0)
    for t, term in enumerate(TERMS):
        if totals_c[t] > 0:
            out[f"{prefix}{term}"] = float(totals_s[t] / totals_c[t])
    weights = term_weights(config, sums.device)
    for h, name in enumerate(names):
        present = counts[h] > 0
        if bool(present.any()):
            out[f"{prefix}{name}/loss"] = float((weights * sums[h] / counts[h].clamp(min=1)).where(present, 0.0).sum())
    return out


def train(
    config: TrainConfig | str | os.PathLike | Mapping[str, Any],
    run_dir: str | os.PathLike | RunDir,
    resume: str | os.PathLike | None = None,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
) -> tuple[RunDir, pd.DataFrame]:
    """Train a multi-head model; returns the run directory and its metrics table.

    ``config`` is a :class:`TrainConfig`, a YAML path or a mapping (unknown keys are errors);
    ``resume`` is None (a new run; the directory must not hold one), ``"auto"`` (continue from the
    directory's ``checkpoints/last.pt`` if there is one) or a checkpoint path. ``run_dir`` must be new,
    empty or a gfmkit run directory; ``overwrite=True`` starts a new run in a gfmkit run directory,
    removing only the files its trainer wrote (:func:`gfmkit.outputs.check_run_dir`). Under ``mpiexec``,
    ``srun`` or ``torchrun`` every rank calls this and they train one model together.
    """
    trainer = Trainer(config, run_dir, resume=resume, callback=callback, overwrite=overwrite)
    return trainer.run, trainer.fit()
