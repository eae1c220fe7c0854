"""The hyperparameter search (:mod:`gfmkit.hpo`) as a study of the registry: a search directory holds
``hpo.json``, its table is :func:`gfmkit.hpo.hpo_table`, its figure :func:`gfmkit.viz.hpo.hpo_figure`
(DeepHyper loads only when a search runs, matplotlib only when one is drawn)."""

from __future__ import annotations

from gfmkit.hpo.search import STUDY, hpo_table, run_hpo
from gfmkit.studies.registry import Ref, Study

REGISTRY_ENTRY = Study(
    name="hpo", title="hyperparameter search", marker=STUDY, help="DeepHyper hyperparameter search",
    run=run_hpo, table=hpo_table, figure=Ref("gfmkit.viz.hpo:hpo_figure"),
    more_figures=(("pareto", Ref("gfmkit.viz.hpo:pareto_figure")),))
