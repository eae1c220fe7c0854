"""What a training run writes and reads back: checkpoints with the full training state, run.json,
config.yaml and registry.json, and the metrics records (the part of :class:`gfmkit.train.trainer.Trainer`
that touches its run directory)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfmkit._version import __version__
from gfmkit.config import config_to_dict
from gfmkit.files import atomic_path, atomic_write_text
from gfmkit.log import get_logger
from gfmkit.models import save_checkpoint
from gfmkit.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT, RunDir
from gfmkit.train.setup import TrainingError
from gfmkit.train.state import (
    rng_state,
    set_rng_state,
)

log = get_logger(__name__)

LAST, BEST = LAST_CHECKPOINT, BEST_CHECKPOINT


class RunFiles:
    """Checkpoints, run files and metrics of a :class:`~gfmkit.train.trainer.Trainer` (a mixin)."""

    # -- checkpoints --------------------------------------------------------------------------------
    def _training_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "master": self.weights.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "sampler": {"epoch": self.epoch, "start_batch": self.batch_in_epoch},
            "best_loss": self.best_loss,
            "bad_validations": self.bad_validations,
            "last_validated_step": self.last_validated_step,
            "world_size": self.dist.world_size,
            "precision": self.policy.name,
            "config": config_to_dict(self.config),
        }

    def _save(self, path: Path, *, training_state: bool) -> None:
        """Write a checkpoint atomically (rank 0) with the EMA weights as the model's weights; every
        rank takes part (RNG states are gathered) and waits until the file is in place."""
        rngs = self.dist.all_gather_object(rng_state()) if training_state else None
        if training_state:
            self._saved_step = self.step
        if self.is_main:
            extra: dict[str, Any] = {"registry": list(self.stores.registry.names), "precision": self.policy.name,
                                     "step": self.step, "metrics": dict(self.last_validation)}
            if training_state:
                extra["training"] = {**self._training_state(), "rng": rngs}
            with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
                save_checkpoint(self.model, path, **extra)
        self.dist.barrier()

    def _resume_path(self, resume: str | os.PathLike | None) -> Path | None:
        if resume is None:
            return None
        if str(resume) == "auto":
            path = self.run.checkpoints / LAST
            return path if path.exists() else None
        path = Path(resume)
        if not path.exists():
            raise TrainingError(f"{path}: no such checkpoint to resume from")
        return path

    def _load_training_state(self, state: dict[str, Any], path: Path | None) -> None:
        tr = state["training"]
        self.model.load_state_dict(tr["model"])
        self.weights.load_state_dict(tr.get("master"))
        try:
            self.optimizer.load_state_dict(tr["optimizer"])
        except ValueError as exc:  # another number of parameter groups or of trained parameters
            raise TrainingError(f"{path}: the optimiser state does not fit this config ({exc}); was "
                                "optimizer.encoder_lr_scale changed between 0, 1 and another value?") from None
        for group, fresh in zip(self.optimizer.param_groups, self._param_groups()):
            group["lr_scale"] = fresh["lr_scale"]  # the config's, not the checkpoint's
        self.schedule.load_state_dict(tr["schedule"])
        if self.ema is not None and tr.get("ema") is not None:
            self.ema.load_state_dict(tr["ema"])
        self.step, self.epoch, self.batch_in_epoch = int(tr["step"]), int(tr["epoch"]), int(tr["batch_in_epoch"])
        self.best_loss, self.bad_validations = float(tr["best_loss"]), int(tr["bad_validations"])
        self.last_validated_step = int(tr.get("last_validated_step", -1))
        self.last_validation = dict(state.get("metrics") or {})
        self.batches_per_epoch = len(self.sampler.global_batches(self.epoch))
        rngs = tr.get("rng") or []
        if rngs:
            set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        if tr.get("world_size") != self.dist.world_size:
            log.warning("resuming a %s-rank run on %d ranks: same global batches, RNG states of rank 0",
                        tr.get("world_size"), self.dist.world_size)
        if self.is_main:
            _truncate_metrics(self.run, self.step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    # -- bookkeeping --------------------------------------------------------------------------------
    def _broadcast_parameters(self) -> None:
        if self.dist.world_size > 1:
            with torch.no_grad():
                for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                    if tensor.is_floating_point():
                        self.dist.broadcast_(tensor.data)

    def _describe(self) -> dict[str, Any]:
        return {
            "precision": self.policy.name,
            "param_dtype": _dtype_name(self.policy.param_dtype),
            "compute_dtype": _dtype_name(self.policy.compute_dtype),
            "sensitive_dtype": _dtype_name(self.policy.sensitive_dtype),
            "optimizer_dtype": _dtype_name(self.weights.dtype),
            **self.dist.describe(),
        }

    def _write_run_files(self, resumed_from: Path | None) -> None:
        self.run.save_config(self.config)
        self.stores.registry.save(self.run.path / "registry.json")
        info = {
            "gfmkit_version": __version__,
            "torch_version": torch.__version__,
            **self._describe(),
            "torch_threads": torch.get_num_threads(),
            "registry": list(self.stores.registry.names),
            "train_structures": len(self.train_set),
            "train_structures_per_dataset": dict(zip(self.stores.registry.names, map(int, np.bincount(
                self.train_set.head, minlength=len(self.stores.registry.names))))),
            "val_structures": 0 if self.val_set is None else len(self.val_set),
            "parameters": sum(p.numel() for p in self.weights.params),
            "total_steps": self.total_steps,
            "resumed_from": None if resumed_from is None else str(resumed_from),
            "initialised_from": self.config.init.checkpoint,
            "head_sources": self.head_sources or self._previous_run_info().get("head_sources", {}),
            "frozen_parameters": sum(p.numel() for p in self.model.parameters() if not p.requires_grad),
        }
        atomic_write_text(self.run.path / "run.json", json.dumps(info, indent=2))

    def _record_resources(self, key: str) -> None:
        """Every rank's peak memory (MiB) and the seconds since the trainer started, into run.json under
        ``key`` (``first_step``: what data loading and set-up cost; ``end``). A collective: every rank
        calls it at the same step."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        peaks = [round(float(x), 1) for x in self.dist.all_gather_object(peak)]
        if self.is_main:
            info = self._previous_run_info()
            info[key] = {"seconds_since_start": round(time.time() - self.started, 3), "peak_rss_mib_per_rank": peaks}
            atomic_write_text(self.run.path / "run.json", json.dumps(info, indent=2))

    def _previous_run_info(self) -> dict[str, Any]:
        path = self.run.path / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _emit(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.run.log_metrics(record)
        if record.get("phase") != "event":
            log.info("%s step %d: loss %.5g", record["phase"], record["step"], record.get("loss", float("nan")))
        if self.callback is not None:
            self.callback(record)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _truncate_metrics(run: RunDir, step: int) -> None:
    """Drop metrics records after ``step`` (written by a run that died after its last checkpoint)."""
    if not run.metrics_path.exists():
        return
    kept = []
    for line in run.metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if record.get("step") is None or record["step"] <= step:
            kept.append(line)
    with atomic_path(run.metrics_path) as tmp:
        tmp.write_text("".join(k + "\n" for k in kept))
