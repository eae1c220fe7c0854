"""A DeepHyper evaluator whose trials run on gfmkit's ipyparallel engines (:mod:`gfmkit.cluster`).

Every engine trains one trial at a time, alone (a serial world: engines are MPI ranks, but a trial's
trainer never joins their communicator); ipyparallel's load-balanced scheduler hands each new trial to
a free engine, so a notebook drives a search over the engines of a Slurm or PBS allocation, or of this
machine. DeepHyper imports only when a search runs, so the class is made on first use.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from gfmkit.log import get_logger

log = get_logger(__name__)


@functools.cache
def engine_evaluator_class() -> type:
    """:class:`EngineEvaluator`, a subclass of DeepHyper's ``Evaluator`` (made once, DeepHyper loaded)."""
    from deephyper.evaluator import Evaluator, JobStatus

    class EngineEvaluator(Evaluator):
        """Trials on the engines of an ipyparallel ``view`` (one trial per engine at a time)."""

        def __init__(self, run_function: Any, view: Any, num_workers: int, **kwargs: Any):
            super().__init__(run_function=run_function, num_workers=num_workers, **kwargs)
            self.view = view

        async def execute(self, job: Any) -> Any:
            from ipyparallel.error import RemoteError

            from gfmkit.hpo.trials import failure

            async with self.sem:
                job.status = JobStatus.RUNNING
                running = job.create_running_job(self._stopper)
                pending = self.view.apply_async(job.run_function, running, **self.run_function_kwargs)
                try:
                    output = await asyncio.wrap_future(pending)  # ipyparallel's AsyncResult is a Future
                except RemoteError as exc:
                    log.warning("trial %s failed on its engine: %s", job.id, exc)
                    objectives = getattr(job.run_function, "keywords", {}).get("objectives", ("loss",))
                    output = failure("F_engine_error", objectives)
                return self._update_job_when_done(job, output)

    return EngineEvaluator


def engine_evaluator(run_function: Any, cluster: Any) -> Any:
    """A DeepHyper evaluator over ``cluster`` (a :class:`gfmkit.cluster.EngineCluster`): as many trials
    at a time as it has engines."""
    view = cluster.client.load_balanced_view()
    return engine_evaluator_class()(run_function, view, cluster.n_engines)
