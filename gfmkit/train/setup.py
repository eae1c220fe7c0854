"""Setting up a training run: the run directory, resume state, model config, data, model, optimiser
groups and the loader (the part of :class:`gfmkit.train.trainer.Trainer` that runs before the first step)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gfmkit.comm import world
from gfmkit.config import config_to_dict, load_config
from gfmkit.data.graphs import GraphDataset, make_loader
from gfmkit.data.multi import DatasetRegistry, open_stores, store_paths
from gfmkit.data.readers import store_format
from gfmkit.data.sampling import DatasetMixer, GlobalBatchSampler
from gfmkit.data.store_read import Store
from gfmkit.log import get_logger
from gfmkit.models import build_model, load_model, read_checkpoint
from gfmkit.models.calculator import check_store_elements
from gfmkit.models.config import HeadConfig, ModelConfig
from gfmkit.models.multihead import MultiHeadPaiNN
from gfmkit.models.transfer import head_sources, transfer_weights
from gfmkit.outputs import OutputError, check_run_dir
from gfmkit.rundir import LAST_CHECKPOINT as LAST
from gfmkit.rundir import RunDir
from gfmkit.train.config import SHARD_ABOVE
from gfmkit.train.signals import ignore_stop_signals
from gfmkit.train.state import (
    seed_everything,
)

log = get_logger(__name__)


class TrainingError(RuntimeError):
    """A run cannot start or resume (occupied run directory, checkpoint without training state, ...)."""


class TrainingConfigError(TrainingError):
    """A value of the training config that the data or the model contradicts (the message names its key;
    ``gfmkit train`` adds the config file)."""


class CachedGraphs(torch.utils.data.Dataset):
    """A GraphDataset whose graphs are built once and kept (the cutoff is fixed during a run)."""

    def __init__(self, dataset: GraphDataset):
        self.dataset, self.cache = dataset, {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int):
        graph = self.cache.get(k)
        if graph is None:
            graph = self.cache[k] = self.dataset[k]
        return graph


class TrainingSetup:
    """The set-up steps of a :class:`~gfmkit.train.trainer.Trainer` (a mixin: they read and fill its state)."""

    def _check_run_dir(self, run_dir: str | os.PathLike | RunDir, *, overwrite: bool) -> None:
        """Before anything starts, rank 0 checks the run directory (a directory of other files, or a file
        in the way, is refused) and every rank learns its verdict."""
        error = None
        if self.dist.is_main:
            try:
                check_run_dir(run_dir.path if isinstance(run_dir, RunDir) else run_dir, overwrite=overwrite)
            except OutputError as exc:
                error = str(exc)
        verdict = self.dist.all_gather_object(error)[0]
        if verdict is not None:
            raise OutputError(verdict)

    def _read_resume_state(self, checkpoint: Path | None) -> dict[str, Any] | None:
        if checkpoint is None:
            return None
        state = read_checkpoint(checkpoint, map_location=self.device)
        if "training" not in state:
            raise TrainingError(f"{checkpoint}: holds weights only (no training state); resume from {LAST}")
        saved = state["training"].get("precision")
        if saved != self.policy.name:
            raise TrainingError(f"{checkpoint} was trained with precision {saved}, the config says {self.policy.name}: "
                                "resume with the same precision (or fine-tune from its weights in a new run)")
        return state

    def _model_config(self, state: dict[str, Any] | None, checkpoint: Path | None) -> ModelConfig:
        """The checkpoint's model config on resume, the pretrained model's with ``init.checkpoint``, else
        the config's own ``model`` section."""
        config = self.config
        if state is not None:
            saved = load_config(ModelConfig, state["config"], where=f"{checkpoint} (config)")
            if saved != config.model:
                log.warning("resuming with the checkpoint's model config %s (the config file says %s)", saved, config.model)
            return saved
        if config.init.checkpoint is None:
            return config.model
        pretrained = read_checkpoint(config.init.checkpoint)
        saved = load_config(ModelConfig, pretrained["config"], where=f"{config.init.checkpoint} (config)")
        if config.model not in (ModelConfig(), saved):
            differ = {k: (v, getattr(saved, k)) for k, v in config_to_dict(config.model).items()
                      if config_to_dict(getattr(saved, k)) != v}
            raise TrainingConfigError(f"model section {differ} (config, pretrained) contradicts init.checkpoint "
                                f"{config.init.checkpoint}: leave it out, the pretrained model's is used")
        return saved

    def _open_data(self, state: dict[str, Any] | None) -> None:
        """Stores (with the checkpoint's registry when resuming) and the train/val graph datasets, in the
        policy's sensitive dtype."""
        config = self.config
        registry = DatasetRegistry(state["registry"]) if state is not None and "registry" in state else None
        self.sharded = self._sharded()
        shard = (self.dist.rank, self.dist.world_size) if self.sharded else None
        self.stores = open_stores(config.data.stores, registry=registry, preload=config.data.preload, shard=shard)
        dtype = self.policy.sensitive_dtype
        cutoff = self.model_config.cutoff
        try:
            self.train_set = GraphDataset(self.stores, cutoff, split=config.data.train_split, dtype=dtype)
        except ValueError as exc:
            raise TrainingConfigError(f"data.train_split: {exc}") from None
        if len(self.train_set) == 0:
            raise TrainingError(f"no structures in split {config.data.train_split!r} of {config.data.stores}")
        self.val_set = None
        if config.data.val_split:
            val = GraphDataset(self.stores, cutoff, split=config.data.val_split, dtype=dtype,
                               property_names=self.train_set.property_names)
            self.val_set = val if len(val) else None

    def _build_model(self, state: dict[str, Any] | None, checkpoint: Path | None) -> MultiHeadPaiNN:
        """Fitted head statistics on a fresh run (started from ``init.checkpoint``'s weights if given), the
        checkpoint's heads on resume; in the policy's dtype, the encoder frozen if its learning rate is 0."""
        config = self.config
        self.head_sources: dict[str, str | None] = {}
        # an element beyond max_z: the store named (not an IndexError), before head statistics are fitted
        check_store_elements(self.model_config.max_z, self.stores)
        if state is None:
            seed_everything(config.seed)
            model = build_model(self.model_config, self.stores, split=config.data.train_split,
                                comm=world() if self.sharded else None)
        else:
            model = MultiHeadPaiNN(self.model_config,
                                   [load_config(HeadConfig, h, where=str(checkpoint)) for h in state["heads"]])
        missing = [name for name in self.stores.registry.names if name not in model.head_names]
        if missing:
            raise TrainingError(f"dataset(s) {missing} have no head in the model (heads: {model.head_names})")
        model = model.to(self.device).to(self.policy.param_dtype)
        if state is None and config.init.checkpoint is not None:  # copied in the run's dtype: no extra rounding
            pretrained = load_model(config.init.checkpoint, map_location=self.device)
            try:
                self.head_sources = head_sources(model.head_names, pretrained.head_names, config.init.heads)
                transfer_weights(model, pretrained, self.head_sources)
            except (KeyError, ValueError) as exc:
                raise TrainingError(f"init from {config.init.checkpoint}: {exc}") from None
        if config.optimizer.encoder_lr_scale == 0:
            model.encoder.requires_grad_(False)
        return model

    def _param_groups(self) -> list[dict[str, Any]]:
        """One AdamW group, or two when the encoder learns at its own rate (``lr_scale`` x the schedule's)."""
        scale = self.config.optimizer.encoder_lr_scale
        named = self.weights.named()
        encoder = [p for name, p in named.items() if name.startswith("encoder.")]
        if scale in (0.0, 1.0) or not encoder:  # frozen encoder weights are not among the optimised ones
            return [{"params": list(named.values()), "lr_scale": 1.0}]
        rest = [p for name, p in named.items() if not name.startswith("encoder.")]
        return [{"params": encoder, "lr_scale": scale}, {"params": rest, "lr_scale": 1.0}]

    def _build_loader(self) -> None:
        """The imbalance-aware global-batch sampler (this rank's slices) and the DataLoader over it."""
        config = self.config
        names = self.model.head_names
        check_dataset_names("sampler.weights", config.sampler.weights, names)
        weights = {names.index(k): v for k, v in config.sampler.weights.items()}
        if self.sharded:
            self.sampler = self._shard_sampler(weights)
        else:
            mixer = DatasetMixer(self.train_set.head, strategy=config.sampler.strategy,
                                 temperature=config.sampler.temperature, weights=weights or None,
                                 num_samples=config.sampler.samples_per_epoch, seed=config.seed)
            edges = self.train_set.edge_counts() if config.sampler.max_edges is not None else None
            self.sampler = GlobalBatchSampler(mixer, self.train_set.natoms, batch_size=config.sampler.batch_size,
                                              max_atoms=config.sampler.max_atoms, max_edges=config.sampler.max_edges,
                                              edges=edges, rank=self.dist.rank, world_size=self.dist.world_size)
        source = CachedGraphs(self.train_set) if config.data.cache_graphs else self.train_set
        self.loader = make_loader(source, self.sampler, num_workers=config.data.num_workers)
        # The loader draws its workers' base seed from this generator, not from the global torch RNG,
        # which every new iterator (each epoch, and again after a resume) would otherwise advance.
        self.loader.generator = torch.Generator().manual_seed(config.seed)
        self.loader.worker_init_fn = ignore_stop_signals


    def _sharded(self) -> bool:
        """Whether this run reads the stores sharded over the ranks (``data.distribution``)."""
        choice, size = self.config.data.distribution, self.dist.world_size
        if choice == "auto":
            if size == 1:
                return False
            total = sum(Store(p, start=0, stop=0).total for p in store_paths(self.config.data.stores)
                        if store_format(p) == "gfmkit")
            return total > SHARD_ABOVE
        return choice == "sharded" and size > 1

    def _shard_sampler(self, weights: dict[int, float]) -> GlobalBatchSampler:
        """This rank's batches from its own shards: batch_size / ranks structures a step, each dataset's
        shard drawn without replacement, as many steps on every rank."""
        config, size = self.config.sampler, self.dist.world_size
        batch = shard_batch_size(config, size)
        local = self.dist.all_gather_object(len(self.train_set))
        # every rank takes as many steps as the largest shard needs, so every structure of every shard is
        # drawn at least once an epoch; a smaller shard repeats a few (at most the shards' size difference
        # plus one batch), drawn without replacement within each dataset's pass
        wanted = config.samples_per_epoch // size if config.samples_per_epoch else max(local)
        draws = -(-wanted // batch) * batch
        mixer = DatasetMixer(self.train_set.head, strategy=config.strategy, temperature=config.temperature,
                             weights=weights or None, num_samples=draws,
                             seed=self.config.seed + 1_000_003 * self.dist.rank)
        return GlobalBatchSampler(mixer, self.train_set.natoms, batch_size=batch)


def shard_batch_size(config: Any, ranks: int) -> int:
    """Each rank's batch in sharded mode: the global ``batch_size`` split evenly (budgets of atoms or
    edges would give the ranks different step counts, so they are refused)."""
    if config.max_atoms is not None or config.max_edges is not None or config.batch_size is None:
        raise TrainingConfigError("data.distribution sharded batches by count: give sampler.batch_size, not "
                            "max_atoms/max_edges (ranks must take the same number of steps)")
    if config.batch_size % ranks:
        raise TrainingConfigError(f"data.distribution sharded: sampler.batch_size {config.batch_size} must be a "
                            f"multiple of the {ranks} ranks")
    return config.batch_size // ranks


def check_dataset_names(section: str, given: Mapping[str, float], names: list[str]) -> None:
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TrainingConfigError(f"{section} names unknown dataset(s) {unknown}; datasets: {names}")


def cpu_autocast_bf16() -> bool:
    """Whether CPU autocast really runs matmuls in bfloat16 here (no silent float32 fallback)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    except RuntimeError:
        return False
