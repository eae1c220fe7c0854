"""One place that turns how a process was launched into rank, world size, local rank, device and a
``torch.distributed`` process group.

Detected, in this order (the first that matches wins):

==============  ==========================================================  ===============================
launcher        variables                                                   local rank from
==============  ==========================================================  ===============================
torchrun        ``RANK``, ``WORLD_SIZE`` (+ ``MASTER_ADDR``/``MASTER_PORT``)  ``LOCAL_RANK``
Open MPI        ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``           ``OMPI_COMM_WORLD_LOCAL_RANK``
Cray PALS       ``PALS_RANKID``, ``PMI_SIZE`` (Aurora, Polaris mpiexec)      ``PALS_LOCAL_RANKID``
MPICH / Hydra   ``PMI_RANK``, ``PMI_SIZE`` (also Intel MPI, Cray PMI)        ``MPI_LOCALRANKID``, ``PMI_LOCAL_RANK``,
                                                                            ``SLURM_LOCALID`` (srun --mpi=cray_shasta)
PMIx            ``PMIX_RANK`` (+ mpi4py for the size)                        ``PMIX_LOCAL_RANK``
MVAPICH         ``MV2_COMM_WORLD_RANK``, ``MV2_COMM_WORLD_SIZE``             ``MV2_COMM_WORLD_LOCAL_RANK``
Slurm srun      ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` in an srun step   ``SLURM_LOCALID``
mpi4py          ``mpi4py.MPI`` already imported (ipyparallel MPI engines)    shared-memory sub-communicator
==============  ==========================================================  ===============================

Slurm variables count only inside a job step that ``srun`` started: srun sets ``SLURM_STEP_ID`` (and
the older ``SLURM_STEPID``), ``SLURM_PROCID``, ``SLURM_LOCALID`` and ``SLURM_STEP_NUM_TASKS`` (the
step's task count) in every task. A batch script, or a notebook in an ``salloc`` shell, sees
``SLURM_PROCID=0`` and the job's ``SLURM_NTASKS`` but no step ID, and is one process; the batch,
extern and interactive steps carry reserved IDs above ``0xfffffff0`` and are one process too. PBS
starts no ranks itself (its ``mpiexec`` is one of the MPI launchers above); under PBS without MPI
variables the run is one process.

The device is this rank's ``local_rank % visible devices`` GPU (CUDA/ROCm, else Intel XPU) unless the
config names ``cpu``. The master address and port come from rank 0 through an mpi4py broadcast when
mpi4py can reach all ranks (``MASTER_ADDR`` if set, else rank 0's host name, or 127.0.0.1 when all
ranks share one host; ``MASTER_PORT`` or a free port), else from ``MASTER_ADDR``/``MASTER_PORT``
(torchrun), else from the scheduler's first host (the Slurm step's node list, PBS's ``PBS_NODEFILE``).
Backends: gloo on CPU, nccl on CUDA and ROCm, xccl (torch >= 2.8) else ccl (oneCCL bindings) on XPU,
else an error. ``torch.distributed`` is initialised only when the world has more than one rank.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gfmkit.log import get_logger

log = get_logger(__name__)

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """How this process was started: launcher, scheduler, rank, world size and local rank."""

    launcher: str  # single, torchrun, openmpi, pals, mpich, pmix, mvapich, slurm, mpi4py, ipyparallel
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    scheduler: str | None = None  # slurm, pbs or None
    master_addr: str | None = None  # MASTER_ADDR, if set
    master_port: int | None = None  # MASTER_PORT, if set
    scheduler_host: str | None = None  # first host of the Slurm step / job or of PBS_NODEFILE, if known


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return None


def first_host(nodelist: str) -> str | None:
    """First host of a Slurm node list such as ``nid[001-004,007],login1`` -> ``nid001``."""
    nodelist = nodelist.strip()
    if not nodelist:
        return None
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        return None
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _scheduler(env: Mapping[str, str]) -> str | None:
    if "SLURM_JOB_ID" in env or "SLURM_JOBID" in env:
        return "slurm"
    if "PBS_JOBID" in env:
        return "pbs"
    return None


def _scheduler_host(env: Mapping[str, str], scheduler: str | None) -> str | None:
    if scheduler == "slurm":
        return first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
    if scheduler == "pbs" and env.get("PBS_NODEFILE"):
        try:
            with open(env["PBS_NODEFILE"]) as fh:
                line = fh.readline().strip()
            return line or None
        except OSError:
            return None
    return None


def detect_launch(env: Mapping[str, str] | None = None, *, modules: Mapping[str, Any] | None = None) -> Launch:
    """The :class:`Launch` described by ``env`` (default ``os.environ``); pure, so it is unit-testable.

    ``modules`` (default ``sys.modules``) tells whether mpi4py or ipyparallel are already imported.
    """
    env = os.environ if env is None else env
    modules = sys.modules if modules is None else modules
    scheduler = _scheduler(env)
    where = {"scheduler": scheduler, "master_addr": env.get("MASTER_ADDR") or None,
             "master_port": _int(env, "MASTER_PORT"), "scheduler_host": _scheduler_host(env, scheduler)}

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
    mpi = modules.get("mpi4py.MPI")
    # imported but not initialised (DeepHyper imports it so) is not an MPI launch
    if mpi is not None and getattr(mpi, "Is_initialized", lambda: True)():
        launcher = "ipyparallel" if "ipyparallel" in modules else "mpi4py"
        return make(launcher, mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size(), _node_local_rank(mpi))
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


#: Slurm's largest ordinary step ID; above it are the reserved batch, extern, interactive and pending steps.
SLURM_MAX_NORMAL_STEP_ID = 0xFFFFFFF0


def _srun_step(env: Mapping[str, str]) -> bool:
    """Whether this process is a task of a step that srun launched (not the batch or interactive shell)."""
    step = _int(env, "SLURM_STEP_ID", "SLURM_STEPID")
    return step is not None and 0 <= step <= SLURM_MAX_NORMAL_STEP_ID


def _mpi_size(modules: Mapping[str, Any], required: str) -> int:
    mpi = modules.get("mpi4py.MPI")
    if mpi is None:
        try:
            from mpi4py import MPI as mpi
        except ImportError:
            raise RuntimeError(f"{required} launch without a size variable needs mpi4py to know the world size") from None
    if not getattr(mpi, "Is_initialized", lambda: True)():
        mpi.Init()
    return mpi.COMM_WORLD.Get_size()


def visible_devices(kind: str) -> int:
    """How many accelerators of ``kind`` (cuda or xpu) this process sees."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu.device_count() if xpu is not None and xpu.is_available() else 0
    return 0


def select_device(preference: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU (``local_rank % visible``) if any, else CPU; ``cuda``/``xpu`` demand one."""
    kind, _, index = preference.partition(":")
    if kind == "auto":
        for candidate in ("cuda", "xpu"):
            count = visible_devices(candidate)
            if count:
                return torch.device(candidate, local_rank % count)
        return torch.device("cpu")
    if kind in ("cuda", "xpu"):
        count = visible_devices(kind)
        if count == 0:
            raise RuntimeError(f"device {preference!r} requested but no {kind} device is visible to this process")
        return torch.device(kind, int(index) if index else local_rank % count)
    return torch.device(preference)


def backend_for(device: torch.device | str, *, available=None) -> str:
    """gloo on CPU, nccl on CUDA/ROCm, xccl (else ccl) on XPU; an error where none fits.

    ``available(name) -> bool`` (default: ``torch.distributed.is_backend_available`` plus the oneCCL
    bindings for ``ccl``) is injectable for tests.
    """
    kind = torch.device(device).type
    available = available or _backend_available
    if kind == "cpu":
        wanted = ["gloo"]
    elif kind == "cuda":
        wanted = ["nccl"]
    elif kind == "xpu":
        wanted = ["xccl", "ccl"]
    else:
        raise RuntimeError(f"no distributed backend for device type {kind!r}")
    for name in wanted:
        if available(name):
            return name
    raise RuntimeError(
        f"no distributed backend for {kind}: tried {', '.join(wanted)}"
        + (" (install oneccl_bindings_for_pytorch, or torch >= 2.8 with XCCL)" if kind == "xpu" else "")
    )


def _backend_available(name: str) -> bool:
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if name == "ccl":
        try:
            import oneccl_bindings_for_pytorch  # noqa: F401
        except ImportError:
            return False
        return True
    checker = getattr(dist, "is_backend_available", None)
    if checker is not None:
        try:
            return bool(checker(name))
        except (RuntimeError, ValueError, TypeError):
            return False
    return {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available}.get(name, lambda: False)()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _master_via_mpi(launch: Launch) -> tuple[str, int] | None:
    """Rank 0's address and a free port, broadcast with mpi4py (None when MPI is not usable here)."""
    from gfmkit.comm import launched_by_mpi

    if launch.launcher not in ("openmpi", "pals", "mpich", "pmix", "mvapich", "mpi4py", "ipyparallel", "slurm"):
        return None
    if launch.launcher == "slurm" and not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != launch.world_size:
        return None
    hosts = comm.allgather(socket.gethostname())
    chosen = (master_host(launch, hosts), launch.master_port or _free_port()) if comm.Get_rank() == 0 else None
    return comm.bcast(chosen, root=0)


def master_host(launch: Launch, hosts: list[str]) -> str:
    """The process group's address, chosen on rank 0 from every rank's host name: ``MASTER_ADDR`` if set,
    127.0.0.1 when all ranks share one host, else rank 0's own host (never the scheduler's first node,
    which need not be where rank 0 runs)."""
    if launch.master_addr:
        return launch.master_addr
    return "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]


@dataclass
class Distributed:
    """This process's place in the training world, and the few collectives the trainer needs."""

    launch: Launch
    device: torch.device
    backend: str | None = None  # None when the world has one rank
    owns_group: bool = False  # this object initialised torch.distributed (and so destroys it)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def local_rank(self) -> int:
        return self.launch.local_rank

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (bfloat16 travels as float32); returns it."""
        import torch.distributed as dist

        return self._collective(tensor, dist.all_reduce)

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``tensor`` on every rank, in place (bfloat16 travels as float32); returns it."""
        import torch.distributed as dist

        return self._collective(tensor, lambda t: dist.broadcast(t, src))

    def _collective(self, tensor: torch.Tensor, op: Callable[[torch.Tensor], Any]) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        if tensor.dtype == torch.bfloat16:  # not every backend (gloo) reduces bfloat16
            wide = tensor.float()
            op(wide)
            tensor.copy_(wide)
        else:
            op(tensor)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def close(self) -> None:
        """Destroy the process group this object created (idempotent)."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def describe(self) -> dict[str, Any]:
        return {
            "launcher": self.launch.launcher,
            "scheduler": self.launch.scheduler,
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "device": str(self.device),
            "backend": self.backend,
        }


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0, env: Mapping[str, str] | None = None) -> Distributed:
    """Detect the launch, pick the device and, for more than one rank, join the process group.

    Calling it again in a process that already has a process group reuses that group.
    """
    launch = detect_launch(env)
    chosen = select_device(device, launch.local_rank)
    if launch.world_size == 1:
        return Distributed(launch, chosen)
    import torch.distributed as dist

    backend = backend_for(chosen)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    elif chosen.type == "xpu":
        torch.xpu.set_device(chosen)
    if dist.is_initialized():
        if dist.get_world_size() != launch.world_size or dist.get_rank() != launch.rank:
            raise RuntimeError(
                f"torch.distributed is already initialised as rank {dist.get_rank()}/{dist.get_world_size()}, "
                f"but the launch says {launch.rank}/{launch.world_size}"
            )
        return Distributed(launch, chosen, dist.get_backend())
    master = _master_via_mpi(launch)
    if master is None:
        addr = launch.master_addr or launch.scheduler_host
        if addr is None:
            raise RuntimeError(
                f"{launch.launcher} launch of {launch.world_size} ranks: no master address (set MASTER_ADDR and "
                "MASTER_PORT, or install mpi4py so rank 0 can broadcast its address)"
            )
        master = (addr, launch.master_port or DEFAULT_PORT)
    addr, port = master
    log.info("rank %d/%d: %s process group at %s:%d on %s", launch.rank, launch.world_size, backend, addr, port, chosen)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{addr}:{port}",
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return Distributed(launch, chosen, backend, owns_group=True, extra={"master": f"{addr}:{port}"})
