"""Hyperparameter search (DeepHyper) over gfmkit training configs; every trial a real training run."""

from gfmkit.hpo.search import best_config, hpo_table, run_hpo
from gfmkit.hpo.space import check_space, search_problem, set_path

__all__ = ["best_config", "check_space", "hpo_table", "run_hpo", "search_problem", "set_path"]
