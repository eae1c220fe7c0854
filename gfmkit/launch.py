"""How this process was launched: the one place that reads launcher and scheduler variables.

:func:`detect_launch` turns the environment into a frozen :class:`Launch` (launcher, rank, world size,
local rank, whether MPI is in use, master address and port, scheduler, node list). The MPI world
(:func:`gfmkit.comm.world`), the trainer (:func:`gfmkit.train.distributed.init_distributed`), the
studies, the CLI and the ipyparallel engines (:mod:`gfmkit.cluster.engines`) all ask it, so they agree
on who is rank 0. Nothing else in gfmkit reads these variables.

Launchers, in the order they are detected (the first that matches wins):

==============  ==========================================================  ===============================
launcher        variables                                                   local rank from
==============  ==========================================================  ===============================
torchrun        ``RANK``, ``WORLD_SIZE`` (+ ``MASTER_ADDR``/``MASTER_PORT``)  ``LOCAL_RANK``
Open MPI        ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``           ``OMPI_COMM_WORLD_LOCAL_RANK``
Cray PALS       ``PALS_RANKID``, ``PMI_SIZE`` (Aurora, Polaris mpiexec)      ``PALS_LOCAL_RANKID``
MPICH / Hydra   ``PMI_RANK``, ``PMI_SIZE`` (also Intel MPI, Cray PMI)        ``MPI_LOCALRANKID``, ``PMI_LOCAL_RANK``,
                                                                            ``SLURM_LOCALID`` (srun --mpi=cray_shasta)
MVAPICH         ``MV2_COMM_WORLD_RANK``, ``MV2_COMM_WORLD_SIZE``             ``MV2_COMM_WORLD_LOCAL_RANK``
PMIx            ``PMIX_RANK`` (+ mpi4py for the size)                        ``PMIX_LOCAL_RANK``
Slurm srun      ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` in an srun step   ``SLURM_LOCALID``
mpi4py          ``mpi4py.MPI`` imported and initialised (ipyparallel MPI     shared-memory sub-communicator
                engines: launcher ``ipyparallel``), or ``GFMKIT_MPI=1``
==============  ==========================================================  ===============================

Slurm variables count only inside a job step that ``srun`` started: srun sets ``SLURM_STEP_ID`` (and
the older ``SLURM_STEPID``), ``SLURM_PROCID``, ``SLURM_LOCALID`` and ``SLURM_STEP_NUM_TASKS`` in every
task. A batch script, or a notebook in an ``salloc`` shell, sees ``SLURM_PROCID=0`` and the job's
``SLURM_NTASKS`` but no step ID, and is one process; the batch, extern and interactive steps carry
reserved IDs above ``0xfffffff0`` and are one process too. PBS starts no ranks itself (its ``mpiexec``
is one of the MPI launchers above); under PBS without MPI variables the run is one process.

``Launch.mpi`` says whether the ranks talk through MPI: ``GFMKIT_MPI=1``/``0`` forces it on or off,
else any MPI launcher's variables, or an initialised ``mpi4py.MPI`` (DeepHyper imports mpi4py without
initialising it, which does not make a serial process an MPI one), turn it on. A launch with several
ranks and no MPI (torchrun, ``srun --mpi=none``, ``GFMKIT_MPI=0``) talks through ``torch.distributed``
instead (see :mod:`gfmkit.comm`).

The scheduler is ``slurm`` (``SLURM_JOB_ID``), ``pbs`` (``PBS_JOBID``) or None; its node list is the
Slurm step's (else the job's) expanded ``*_NODELIST``, or the distinct hosts of PBS's ``PBS_NODEFILE``.

The process group's master address (:func:`master_address`) comes from rank 0 through an mpi4py
broadcast when the launch uses MPI (``MASTER_ADDR`` if set, else rank 0's host name, or 127.0.0.1
when all ranks share one host; ``MASTER_PORT`` or a free port), else from ``MASTER_ADDR`` and
``MASTER_PORT`` (torchrun), else from the scheduler's first node and port :data:`DEFAULT_PORT`.

This module imports neither torch nor mpi4py at import time.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The process group's port when neither ``MASTER_PORT`` nor MPI says one.
DEFAULT_PORT = 29500
#: Slurm's largest ordinary step ID; above it are the reserved batch, extern, interactive and pending steps.
SLURM_MAX_NORMAL_STEP_ID = 0xFFFFFFF0
#: Variables that MPI launchers set in every rank: MPICH/Hydra and Intel MPI (PMI_*), PMIx (Open MPI 5,
#: Slurm --mpi=pmix), Open MPI, Cray PALS (Aurora/Polaris mpiexec), MVAPICH.
MPI_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PALS_RANKID", "MV2_COMM_WORLD_SIZE")
#: Launchers whose ranks can reach each other through mpi4py.
MPI_LAUNCHERS = ("openmpi", "pals", "mpich", "pmix", "mvapich", "mpi4py", "ipyparallel", "slurm")


@dataclass(frozen=True)
class Launch:
    """How this process was started: launcher, rank, world size, local rank, scheduler and nodes."""

    launcher: str  # single, torchrun, openmpi, pals, mpich, pmix, mvapich, slurm, mpi4py, ipyparallel
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    scheduler: str | None = None  # slurm, pbs or None
    master_addr: str | None = None  # MASTER_ADDR, if set
    master_port: int | None = None  # MASTER_PORT, if set
    nodes: tuple[str, ...] = ()  # the Slurm step's (else job's) nodes, or PBS_NODEFILE's hosts, in order
    allocated_nodes: int | None = None  # how many nodes the job holds, if known
    mpi: bool = False  # the ranks talk through MPI (else torch.distributed when world_size > 1)

    @property
    def scheduler_host(self) -> str | None:
        """The scheduler's first node, if known."""
        return self.nodes[0] if self.nodes else None


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return None


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_host(pattern: str) -> list[str]:
    """One host pattern such as ``nid[001-003,007]`` or ``x[1-2]y[3,5]`` as host names."""
    match = re.match(r"([^\[]*)\[([^\]]*)\](.*)", pattern)
    if match is None:
        return [pattern]
    prefix, ranges, rest = match.groups()
    heads = []
    for item in ranges.split(","):
        low, _, high = item.strip().partition("-")
        if not high:
            heads.append(prefix + low)
        elif low.isdigit() and high.isdigit():
            heads.extend(prefix + str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
        else:
            heads.append(prefix + item.strip())
    return [head + tail for head in heads for tail in _expand_host(rest)]


def expand_nodelist(nodelist: str) -> tuple[str, ...]:
    """A Slurm node list such as ``nid[001-002,007],login1`` as host names, in order."""
    hosts = (host for pattern in _split_top(nodelist.strip()) for host in _expand_host(pattern))
    return tuple(dict.fromkeys(hosts))


def first_host(nodelist: str) -> str | None:
    """First host of a Slurm node list such as ``nid[001-004,007],login1`` -> ``nid001``."""
    hosts = expand_nodelist(nodelist)
    return hosts[0] if hosts else None


def scheduler_of(env: Mapping[str, str] | None = None) -> str | None:
    """``slurm`` or ``pbs`` when this process runs inside a job of that scheduler, else None."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"):
        return "slurm"
    if env.get("PBS_JOBID"):
        return "pbs"
    return None


def _pbs_hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    path = env.get("PBS_NODEFILE")
    if not path:
        return ()
    try:
        with open(path) as fh:
            return tuple(dict.fromkeys(line.strip() for line in fh if line.strip()))
    except OSError:
        return ()


def node_list(env: Mapping[str, str] | None = None, scheduler: str | None = None) -> tuple[str, ...]:
    """The nodes the scheduler gave this step (Slurm) or job (Slurm outside a step, PBS), in order."""
    env = os.environ if env is None else env
    scheduler = scheduler_of(env) if scheduler is None else scheduler
    if scheduler == "slurm":
        return expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
    if scheduler == "pbs":
        return _pbs_hosts(env)
    return ()


def allocated_node_count(env: Mapping[str, str] | None = None) -> int | None:
    """How many nodes this job holds (``SLURM_JOB_NUM_NODES``, distinct hosts of ``PBS_NODEFILE``)."""
    env = os.environ if env is None else env
    for name in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return len(_pbs_hosts(env)) or None


def _mpi_initialised(modules: Mapping[str, Any]) -> bool:
    mpi = modules.get("mpi4py.MPI")
    if mpi is None:
        return False
    initialised = getattr(mpi, "Is_initialized", lambda: True)()
    finalised = getattr(mpi, "Is_finalized", lambda: False)()
    return bool(initialised and not finalised)


def _forced_mpi(env: Mapping[str, str]) -> bool | None:
    forced = env.get("GFMKIT_MPI")
    return None if forced is None else forced not in ("0", "", "false", "no")


def uses_mpi(env: Mapping[str, str] | None = None, modules: Mapping[str, Any] | None = None) -> bool:
    """Whether the ranks talk through MPI (see the module docstring)."""
    env = os.environ if env is None else env
    modules = sys.modules if modules is None else modules
    forced = _forced_mpi(env)
    if forced is not None:
        return forced
    return any(v in env for v in MPI_LAUNCHER_VARIABLES) or _mpi_initialised(modules)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (or ``GFMKIT_MPI=1`` forces MPI)."""
    return uses_mpi()


def detect_launch(env: Mapping[str, str] | None = None, *, modules: Mapping[str, Any] | None = None,
                  collective: bool = True) -> Launch:
    """The :class:`Launch` described by ``env`` (default ``os.environ``); pure, so it is unit-testable.

    ``modules`` (default ``sys.modules``) tells whether mpi4py or ipyparallel are already imported.
    ``collective=False`` never runs an MPI collective (the node-local rank of an mpi4py-started
    process, otherwise found by splitting the world per node, is then its rank).
    """
    env = os.environ if env is None else env
    modules = sys.modules if modules is None else modules
    scheduler = scheduler_of(env)
    where = {"scheduler": scheduler, "master_addr": env.get("MASTER_ADDR") or None,
             "master_port": _int(env, "MASTER_PORT"), "nodes": node_list(env, scheduler),
             "allocated_nodes": allocated_node_count(env), "mpi": uses_mpi(env, modules)}

    def make(launcher: str, rank: int, size: int, local: int | None) -> Launch:
        if size < 1 or not 0 <= rank < size:
            raise RuntimeError(f"{launcher} launch: rank {rank} is outside a world of size {size}")
        return Launch(launcher, rank, size, rank if local is None else local, **where)

    if "RANK" in env and "WORLD_SIZE" in env:
        return make("torchrun", _int(env, "RANK") or 0, _int(env, "WORLD_SIZE") or 1, _int(env, "LOCAL_RANK"))
    if "OMPI_COMM_WORLD_RANK" in env:
        return make("openmpi", _int(env, "OMPI_COMM_WORLD_RANK") or 0, _int(env, "OMPI_COMM_WORLD_SIZE") or 1,
                    _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"))
    if "PALS_RANKID" in env:
        size = _int(env, "PMI_SIZE", "PALS_SIZE")
        if size is None:
            size = _mpi_size(modules, required="PALS")
        return make("pals", _int(env, "PALS_RANKID") or 0, size, _int(env, "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK"))
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return make("mpich", _int(env, "PMI_RANK") or 0, _int(env, "PMI_SIZE") or 1,
                    _int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID"))
    if "MV2_COMM_WORLD_RANK" in env:
        return make("mvapich", _int(env, "MV2_COMM_WORLD_RANK") or 0, _int(env, "MV2_COMM_WORLD_SIZE") or 1,
                    _int(env, "MV2_COMM_WORLD_LOCAL_RANK"))
    if "PMIX_RANK" in env:
        size = _int(env, "PMIX_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
        if size is None:
            size = _mpi_size(modules, required="PMIx")
        return make("pmix", _int(env, "PMIX_RANK") or 0, size, _int(env, "PMIX_LOCAL_RANK", "SLURM_LOCALID"))
    if "SLURM_PROCID" in env and _srun_step(env):
        return make("slurm", _int(env, "SLURM_PROCID") or 0, _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1,
                    _int(env, "SLURM_LOCALID"))
    # imported but not initialised (DeepHyper imports it so) is not an MPI launch, unless GFMKIT_MPI=1
    if _mpi_initialised(modules) or _forced_mpi(env):
        mpi = mpi_module(modules)
        launcher = "ipyparallel" if "ipyparallel" in modules else "mpi4py"
        local = _node_local_rank(mpi) if collective else None
        return make(launcher, mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size(), local)
    return Launch("single", **where)


def _node_local_rank(mpi: Any) -> int | None:
    """This rank's index among the ranks on its node (a shared-memory split; collective)."""
    kind = getattr(mpi, "COMM_TYPE_SHARED", None)
    if kind is None or mpi.COMM_WORLD.Get_size() == 1:
        return None
    node = mpi.COMM_WORLD.Split_type(kind)
    try:
        return node.Get_rank()
    finally:
        node.Free()


def _srun_step(env: Mapping[str, str]) -> bool:
    """Whether this process is a task of a step that srun launched (not the batch or interactive shell)."""
    step = _int(env, "SLURM_STEP_ID", "SLURM_STEPID")
    return step is not None and 0 <= step <= SLURM_MAX_NORMAL_STEP_ID


def mpi_module(modules: Mapping[str, Any] | None = None) -> Any:
    """``mpi4py.MPI`` (from ``modules``, default ``sys.modules``, else imported), initialised."""
    mpi = (sys.modules if modules is None else modules).get("mpi4py.MPI")
    if mpi is None:
        try:
            from mpi4py import MPI as mpi
        except ImportError:
            raise RuntimeError(
                "this process was started by an MPI launcher (or GFMKIT_MPI=1) but mpi4py is not installed: "
                "pip install 'gfmkit[mpi]'"
            ) from None
    if not getattr(mpi, "Is_initialized", lambda: True)():  # imported with mpi4py.rc.initialize = False
        mpi.Init()
    return mpi


def _mpi_size(modules: Mapping[str, Any], required: str) -> int:
    try:
        return mpi_module(modules).COMM_WORLD.Get_size()
    except RuntimeError:
        raise RuntimeError(f"{required} launch without a size variable needs mpi4py to know the world size") from None


def master_host(launch: Launch, hosts: list[str]) -> str:
    """The process group's address, chosen on rank 0 from every rank's host name: ``MASTER_ADDR`` if set,
    127.0.0.1 when all ranks share one host, else rank 0's own host (never the scheduler's first node,
    which need not be where rank 0 runs)."""
    if launch.master_addr:
        return launch.master_addr
    return "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _master_via_mpi(launch: Launch, comm: Any = None) -> tuple[str, int] | None:
    """Rank 0's address and a free port, broadcast with mpi4py over ``comm`` (default: the world; None
    when MPI is not usable here)."""
    if launch.launcher not in MPI_LAUNCHERS or not launch.mpi:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = comm or MPI.COMM_WORLD
    if comm.Get_size() != launch.world_size:
        return None
    hosts = comm.allgather(socket.gethostname())
    chosen = (master_host(launch, hosts), launch.master_port or _free_port()) if comm.Get_rank() == 0 else None
    return comm.bcast(chosen, root=0)


def master_address(launch: Launch, comm: Any = None) -> tuple[str, int]:
    """Host and port of the ``torch.distributed`` rendezvous for ``launch`` (collective under MPI, over
    ``comm``, default the world)."""
    master = _master_via_mpi(launch, comm)
    if master is not None:
        return master
    addr = launch.master_addr or launch.scheduler_host
    if addr is None:
        raise RuntimeError(
            f"{launch.launcher} launch of {launch.world_size} ranks: no master address (set MASTER_ADDR and "
            "MASTER_PORT, or install mpi4py so rank 0 can broadcast its address)"
        )
    return addr, launch.master_port or DEFAULT_PORT
