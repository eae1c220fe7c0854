"""Hyperparameter search (DeepHyper) over gfmkit training configs; every trial a real training run,
judged by one or several objectives (validation error, inference throughput, cost)."""

from gfmkit.hpo.objectives import OBJECTIVES, check_objectives
from gfmkit.hpo.search import best_config, best_trial, hpo_table, pareto_table, run_hpo
from gfmkit.hpo.space import (
           check_space,
           default_space,
           read_space,
           search_problem,
           set_path,
)
from gfmkit.hpo.trials import trainings

__all__ = ["OBJECTIVES", "best_config", "best_trial", "check_objectives", "check_space", "default_space", "hpo_table",
           "pareto_table", "read_space", "run_hpo", "search_problem", "set_path", "trainings"]
