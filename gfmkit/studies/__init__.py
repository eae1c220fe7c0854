"""Studies built on training and inference: scaling and precision (more land with fine-tuning and
screening)."""

from gfmkit.studies.precision import (
    PRECISIONS,
    loss_drift,
    precision_errors,
    precision_history,
    precision_table,
    run_precision_study,
)
from gfmkit.studies.scaling import (
    plan_scaling,
    run_scaling,
    run_throughput,
    scaling_table,
)

__all__ = [
    "PRECISIONS",
    "loss_drift",
    "plan_scaling",
    "precision_errors",
    "precision_history",
    "precision_table",
    "run_precision_study",
    "run_scaling",
    "run_throughput",
    "scaling_table",
]
