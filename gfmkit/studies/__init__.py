"""Studies built on training and inference: scaling, precision, fine-tuning, head weighting and screening.

Each study, the hyperparameter search included, is declared once (marker file, run, table, figure, CLI
command) as a :class:`~gfmkit.studies.registry.Study`; :func:`gfmkit.studies.registry.studies` lists them.
"""

from gfmkit.studies.finetune import (
    STRATEGIES,
    finetune_table,
    run_finetune_study,
    transfer_gain,
)
from gfmkit.studies.multihead import (
    compare_head_weighting,
    disagreement_calibration,
    head_weighting_records,
    weighting_table,
)
from gfmkit.studies.precision import (
    PRECISIONS,
    loss_drift,
    precision_errors,
    precision_history,
    precision_inference,
    precision_matrix,
    precision_table,
    run_precision_study,
)
from gfmkit.studies.scaling import (
    plan_scaling,
    run_scaling,
    run_throughput,
    scaling_table,
)
from gfmkit.studies.screen import (  # gfmkit.studies.screen is the function; the module: gfmkit/studies/screen.py
    screen,
    screen_summary,
    screen_table,
    top_hits,
)

__all__ = [
    "PRECISIONS",
    "STRATEGIES",
    "compare_head_weighting",
    "disagreement_calibration",
    "finetune_table",
    "head_weighting_records",
    "loss_drift",
    "plan_scaling",
    "precision_errors",
    "precision_history",
    "precision_inference",
    "precision_matrix",
    "precision_table",
    "run_finetune_study",
    "run_precision_study",
    "run_scaling",
    "run_throughput",
    "scaling_table",
    "screen",
    "screen_summary",
    "screen_table",
    "top_hits",
    "transfer_gain",
    "weighting_table",
]
