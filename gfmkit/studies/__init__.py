"""Studies built on training and inference: scaling (more land with precision, fine-tuning, screening)."""

from gfmkit.studies.scaling import (
    plan_scaling,
    run_scaling,
    run_throughput,
    scaling_table,
)

__all__ = ["plan_scaling", "run_scaling", "run_throughput", "scaling_table"]
