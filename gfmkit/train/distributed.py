"""One place that turns how a process was launched into rank, world size, local rank, device and a
``torch.distributed`` process group.

Detected, in this order (the first that matches wins):

==============  ==========================================================  ===============================
launcher        variables                                                   local rank from
==============  ==========================================================  ===============================
torchrun        ``RANK``, ``WORLD_SIZE`` (+ ``MASTER_ADDR``/``MASTER_PORT``)  ``LOCAL_RANK``
Open MPI        ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``           ``OMPI_COMM_WORLD_LOCAL_RANK``
Cray PALS       ``PALS_RANKID``, ``PMI_SIZE`` (Aurora, Polaris mpiexec)      ``PALS_LOCAL_RANKID``
MPICH / Hydra   ``PMI_RANK``, ``PMI_SIZE`` (also Intel MPI, Cray PMI)        ``MPI_LOCALRANKID``, ``PMI_LOCAL_RANK``
PMIx            ``PMIX_RANK`` (+ mpi4py for the size)                        ``PMIX_LOCAL_RANK``
MVAPICH         ``MV2_COMM_WORLD_RANK``, ``MV2_COMM_WORLD_SIZE``             ``MV2_COMM_WORLD_LOCAL_RANK``
Slurm srun      ``SLURM_PROCID``, ``SLURM_NTASKS`` inside a job step         ``SLURM_LOCALID``
mpi4py          ``mpi4py.MPI`` already imported (ipyparallel MPI engines)    shared-memory sub-communicator
==============  ==========================================================  ===============================

Slurm variables count only inside a job step (``SLURM_STEP_ID`` set, as ``srun`` does): a notebook or a
batch script running in an allocation sees ``SLURM_NTASKS`` too but is one process. PBS starts no ranks
itself (its ``mpiexec`` is one of the MPI launchers above); under PBS without MPI variables the run is
one process, and ``PBS_NODEFILE``'s first host is the master address fallback.

The device is this rank's ``local_rank % visible devices`` GPU (CUDA/ROCm, else Intel XPU) unless the
config names ``cpu``. The master address and port come from rank 0 through an mpi4py broadcast when
MPI launched the job (rank 0's host, or 127.0.0.1 when all ranks share one host, and a free port),
else from ``MASTER_ADDR``/``MASTER_PORT`` (torchrun), else from Slurm's or PBS's node list. Backends:
gloo on CPU, nccl on CUDA and ROCm, xccl (torch >= 2.8) else ccl (oneCCL bindings) on XPU, else an
error. ``torch.distributed`` is initialised only when the world has more than one rank.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
from collections.abc import Mapping
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
    master_addr: str | None = None  # from the environment (torchrun, Slurm or PBS node list), if known
    master_port: int | None = None


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


def _scheduler_master(env: Mapping[str, str], scheduler: str | None) -> str | None:
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
    addr, port = env.get("MASTER_ADDR") or None, _int(env, "MASTER_PORT")
    fallback_addr = addr or _scheduler_master(env, scheduler)

    def make(launcher: str, rank: int, size: int, local: int | None) -> Launch:
        if size < 1 or not 0 <= rank < size:
            raise RuntimeError(f"{launcher} launch: rank {rank} is outside a world of size {size}")
        return Launch(launcher, rank, size, rank if local is None else local, scheduler, fallback_addr, port)

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
                    _int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK"))
    if "MV2_COMM_WORLD_RANK" in env:
        return make("mvapich", _int(env, "MV2_COMM_WORLD_RANK") or 0, _int(env, "MV2_COMM_WORLD_SIZE") or 1,
                    _int(env, "MV2_COMM_WORLD_LOCAL_RANK"))
    if "PMIX_RANK" in env:
        size = _int(env, "PMIX_SIZE", "SLURM_NTASKS")
        if size is None:
            size = _mpi_size(modules, required="PMIx")
        return make("pmix", _int(env, "PMIX_RANK") or 0, size, _int(env, "PMIX_LOCAL_RANK", "SLURM_LOCALID"))
    if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
        if step not in ("batch", "extern", "interactive", "4294967294", "4294967292", "4294967291"):
            return make("slurm", _int(env, "SLURM_PROCID") or 0, _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1,
                        _int(env, "SLURM_LOCALID"))
    if "mpi4py.MPI" in modules:
        comm = modules["mpi4py.MPI"].COMM_WORLD
        launcher = "ipyparallel" if "ipyparallel" in modules else "mpi4py"
        return make(launcher, comm.Get_rank(), comm.Get_size(), None)
    return Launch("single", 0, 1, 0, scheduler, fallback_addr, port)


def _mpi_size(modules: Mapping[str, Any], required: str) -> int:
    mpi = modules.get("mpi4py.MPI")
    if mpi is None:
        try:
            from mpi4py import MPI as mpi
        except ImportError:
            raise RuntimeError(f"{required} launch without a size variable needs mpi4py to know the world size") from None
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
    if comm.Get_rank() == 0:
        if launch.master_addr:
            addr = launch.master_addr
        elif len(set(hosts)) == 1:
            addr = "127.0.0.1"
        else:
            addr = hosts[0]
        chosen = (addr, launch.master_port or _free_port())
    else:
        chosen = None
    return comm.bcast(chosen, root=0)


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
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        if tensor.dtype == torch.bfloat16:
            wide = tensor.float()
            dist.all_reduce(wide)
            tensor.copy_(wide)
        else:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.broadcast(tensor, src)
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
        addr = launch.master_addr
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
