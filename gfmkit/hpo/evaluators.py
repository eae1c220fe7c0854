"""Where a search's trials run: DeepHyper's evaluators, and the rank groups of an MPI search.

* ``thread`` / ``process``: ``workers`` trials at a time in this process's threads or in processes of
  this machine (DeepHyper's thread and process evaluators); each trial trains alone.
* ``cluster:PROFILE`` (or a running :class:`gfmkit.cluster.EngineCluster`): trials on ipyparallel engines
  started from the profile (and stopped after the search) or already running, one trial per engine at
  a time, each alone (:mod:`gfmkit.hpo.engines`).
* ``mpi``: under ``mpiexec -n N`` / ``srun`` every rank calls :func:`gfmkit.hpo.run_hpo`. Rank 0 runs
  the search (DeepHyper's ``MPICommEvaluator``); the other N-1 ranks form groups of
  ``ranks_per_trial`` consecutive ranks, each group one trial at a time: (N-1)/k trials at once. A
  group of one rank trains alone (a serial world: the trainer never joins the job's communicator); a
  group of k ranks trains each trial data-parallel on its own MPI sub-communicator and its own
  ``torch.distributed`` group, as the paper's multi-node trials. N-1 must be a multiple of k.

:func:`trial_group` tells a trial which group it runs on; :func:`group_distributed` gives the trainer
that group's place in the world (rank, size, device, process group), made once per group.
"""

from __future__ import annotations

from typing import Any

from gfmkit.log import get_logger

log = get_logger(__name__)
EVALUATORS = ("thread", "process", "mpi")

_GROUP: Any = None  # this process's trial group in an MPI search (None elsewhere)
_DIST: dict[int, Any] = {}  # id(group) -> the Distributed made for it


def trial_group() -> Any:
    """The MPI communicator this process's trials train on, or None outside an MPI search."""
    return _GROUP


def parse_evaluator(spec: Any) -> tuple[str, Any]:
    """``thread``, ``process``, ``mpi``, ``cluster:PROFILE`` or a running :class:`gfmkit.cluster.EngineCluster`
    as (kind, None / profile name / the cluster)."""
    if hasattr(spec, "client") and hasattr(spec, "n_engines"):
        return "cluster", spec
    kind, _, profile = str(spec).partition(":")
    if kind == "cluster" and profile:
        return kind, profile
    if kind not in EVALUATORS or profile:
        raise ValueError(f"evaluator must be one of {', '.join(EVALUATORS)}, cluster:PROFILE or an EngineCluster, "
                         f"got {spec!r}")
    return kind, None


def group_distributed(group: Any, device: str) -> Any:
    """The trainer's :class:`~gfmkit.train.distributed.Distributed` on ``group``: alone on this rank
    for a group of one; else a ``torch.distributed`` group of the group's ranks (rendezvous at the
    group's first rank, found through the group), made once and reused by its later trials."""
    from gfmkit.comm import join_process_group
    from gfmkit.launch import Launch, detect_launch
    from gfmkit.train.distributed import Distributed, backend_for, select_device

    local_rank = detect_launch(collective=False).local_rank
    chosen = select_device(device, local_rank)
    if group.size == 1:
        return Distributed(Launch("single", local_rank=local_rank), chosen)
    if id(group) in _DIST:
        return _DIST[id(group)]
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("a multi-rank trial needs its own torch.distributed group, but one is already open")
    launch = Launch("mpi4py", rank=group.rank, world_size=group.size, local_rank=local_rank, mpi=True)
    backend = backend_for(chosen)
    master = join_process_group(launch, backend, comm=group)  # rendezvous at the group's first rank
    _DIST[id(group)] = Distributed(launch, chosen, backend, owns_group=True, extra={"master": master})
    return _DIST[id(group)]


def split_world(comm: Any, ranks_per_trial: int) -> tuple[Any, Any]:
    """(this rank's trial group, the communicator of rank 0 and every group's first rank, or None on the
    others); collective over ``comm``."""
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    if size < 2:
        raise ValueError("the mpi evaluator needs at least 2 ranks (mpiexec -n N): rank 0 runs the search")
    if (size - 1) % ranks_per_trial:
        raise ValueError(f"{size - 1} worker ranks do not split into trials of {ranks_per_trial} ranks "
                         f"(mpiexec -n {1 + ranks_per_trial * max(1, (size - 1) // ranks_per_trial)} would)")
    color = 0 if rank == 0 else 1 + (rank - 1) // ranks_per_trial
    group = comm.Split(color, key=rank)
    lead = rank == 0 or group.Get_rank() == 0
    leaders = comm.Split(0 if lead else MPI.UNDEFINED, key=rank)
    return group, (leaders if lead else None)


def serve_group(group: Any, **trial: Any) -> None:
    """On a group's ranks after the first: train each trial the first rank announces, until it says stop."""
    from gfmkit.hpo.trials import train_trial

    while True:
        message = group.bcast(None, root=0)
        if message is None:
            return
        _, job_id, parameters = message
        train_trial(job_id, parameters, group=group, **trial)


def mpi_search(comm: Any, ranks_per_trial: int, run_function: Any, search: Any, max_evals: int, job_cap: int,
               **trial: Any) -> None:
    """Run ``search`` (made on rank 0 by ``search()``) over ``comm``'s ranks: see the module docstring.
    Every rank calls it; an error on rank 0 is raised on every rank."""
    global _GROUP
    from deephyper.evaluator import Evaluator
    from deephyper.evaluator.storage import MemoryStorage

    group, leaders = split_world(comm, ranks_per_trial)
    failure = None
    _GROUP = group if comm.Get_rank() != 0 else None
    try:
        if leaders is None:
            serve_group(group, **trial)
        else:
            # DeepHyper's default MPIWinStorage aborts under the MPICH wheel (overlapping memcpy in its
            # window); rank 0 keeps the results itself, the workers only run trials
            evaluator = Evaluator.create(run_function, method="mpicomm",
                                         method_kwargs={"comm": leaders, "storage": MemoryStorage()})
            with evaluator:
                if evaluator.is_master:
                    try:
                        evaluator.set_maximum_num_jobs_submitted(job_cap)
                        search().search(evaluator, max_evals=max_evals)
                    except Exception as exc:  # told to every rank below
                        failure = exc
            if comm.Get_rank() != 0 and group.Get_size() > 1:
                group.bcast(None, root=0)  # the search is over: the group's other ranks stop serving
    finally:
        _GROUP = None
    message = comm.bcast(failure and f"{type(failure).__name__}: {failure}", root=0)
    if message is not None:  # every rank raises, rank 0 its own error
        raise failure or RuntimeError(f"the search on rank 0 failed: {message}")
