"""Training and evaluation: multi-task, imbalance-aware, multi-fidelity; 1 to N ranks; checkpoints.

``train(config, run_dir)`` trains (see :mod:`gfmkit.train.trainer`); ``evaluate(checkpoint, stores)``
gives the head x dataset error matrix, parity plots and per-element errors (:mod:`gfmkit.train.evaluate`).
"""

from __future__ import annotations

from gfmkit.train.config import (
    DataConfig,
    InitConfig,
    LossConfig,
    OptimizerConfig,
    SamplerConfig,
    ScheduleConfig,
    TrainConfig,
    load_train_config,
)
from gfmkit.train.distributed import (
    Distributed,
    Launch,
    detect_launch,
    init_distributed,
)
from gfmkit.train.evaluate import Evaluation, evaluate, plot_history
from gfmkit.train.finetune import FinetuneResult, finetune
from gfmkit.train.trainer import Trainer, TrainingError, train

__all__ = [
    "DataConfig",
    "Distributed",
    "Evaluation",
    "FinetuneResult",
    "InitConfig",
    "Launch",
    "LossConfig",
    "OptimizerConfig",
    "SamplerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "detect_launch",
    "evaluate",
    "finetune",
    "init_distributed",
    "load_train_config",
    "plot_history",
    "train",
]
