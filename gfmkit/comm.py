"""The world of ranks this process belongs to, with the (lowercase mpi4py) methods data and study code use.

:func:`world` asks :func:`gfmkit.launch.detect_launch` how the process was launched, so it agrees with
the trainer on rank and size:

* a launch that uses MPI (an MPI launcher, ipyparallel's MPI engines, ``GFMKIT_MPI=1``) gets
  ``mpi4py.MPI.COMM_WORLD``; mpi4py is imported only then, so a notebook on a login node never
  initialises MPI by accident;
* a launch with several ranks but no MPI (torchrun, ``srun --mpi=none``, ``GFMKIT_MPI=0``) gets a
  :class:`TorchComm`: the launch's rank and size, and collectives through ``torch.distributed``. It
  joins no process group until its first collective; then it uses the group the trainer has open
  (a gloo sub-group of it when its CPU backend is not gloo), else opens the default group itself
  (gloo for CPU tensors, plus nccl or xccl for the accelerator, so the trainer can reuse it) and
  keeps it until the process ends;
* a one-process launch gets a :class:`SerialComm`.

Data and training code call :func:`world` and run the same way on 1 or N ranks. Inside
``with use_world(comm):`` :func:`world` returns ``comm`` instead (in that thread or task only): a
hyperparameter-search trial trains on its own sub-communicator, or alone in a :class:`SerialComm`,
while the job's world runs the search.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime
import functools
import operator
import os
from collections.abc import Iterator
from typing import Any, Protocol

from gfmkit.launch import (
    Launch,
    detect_launch,
    launched_by_mpi,
    master_address,
    mpi_module,
)
from gfmkit.log import get_logger

__all__ = ["Comm", "SerialComm", "TorchComm", "check_process_group", "join_process_group", "launched_by_mpi",
           "served_backends", "use_world", "world"]

log = get_logger(__name__)

#: How long a collective of a :class:`TorchComm`'s own process group may wait for the other ranks.
TORCH_COMM_TIMEOUT_S = 1800.0


class Comm(Protocol):
    rank: int
    size: int

    def allgather(self, obj: Any) -> list[Any]: ...
    def bcast(self, obj: Any, root: int = 0) -> Any: ...
    def allreduce(self, obj: Any, op: Any = ...) -> Any: ...
    def barrier(self) -> None: ...


class SerialComm:
    """A world of one rank, for code that is written once for MPI."""

    rank = 0
    size = 1

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py spelling)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather(self, obj: Any, root: int = 0) -> list[Any]:
        return [obj]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allreduce(self, obj: Any, op: Any = None) -> Any:
        return obj

    def exscan(self, obj: Any, op: Any = None) -> Any:
        return None

    def barrier(self) -> None:
        return None


def _reduce(values: list[Any], op: Any) -> Any:
    """``values`` combined by ``op`` (None: sum; else a two-argument callable such as ``mpi4py.MPI.SUM``)."""
    return functools.reduce(operator.add if op is None else op, values)


class TorchComm:
    """The ranks of a launch without MPI, with mpi4py's object collectives over ``torch.distributed``."""

    def __init__(self, launch: Launch):
        self.launch = launch
        self.rank = launch.rank
        self.size = launch.world_size

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py spelling)
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        return self.size

    def allgather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=_object_group(self.launch))
        return out

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.rank == root else None
        dist.gather_object(obj, out, dst=root, group=_object_group(self.launch))
        return out

    def scatter(self, objs: list[Any] | None, root: int = 0) -> Any:
        import torch.distributed as dist

        out: list[Any] = [None]
        dist.scatter_object_list(out, list(objs) if self.rank == root else None, src=root, group=_object_group(self.launch))
        return out[0]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=root, group=_object_group(self.launch))
        return box[0]

    def allreduce(self, obj: Any, op: Any = None) -> Any:
        return _reduce(self.allgather(obj), op)

    def exscan(self, obj: Any, op: Any = None) -> Any:
        values = self.allgather(obj)
        return None if self.rank == 0 else _reduce(values[: self.rank], op)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=_object_group(self.launch))

    def Send(self, buf: Any, dest: int, tag: int = 0) -> None:  # noqa: N802
        """Send a numpy array to rank ``dest`` (mpi4py's buffer ``Send``)."""
        import numpy as np
        import torch
        import torch.distributed as dist

        dist.send(torch.from_numpy(np.ascontiguousarray(buf)), dst=dest, group=_object_group(self.launch), tag=tag)

    def Recv(self, buf: Any, source: int, tag: int = 0) -> None:  # noqa: N802
        """Receive into the contiguous numpy array ``buf`` from rank ``source`` (mpi4py's ``Recv``)."""
        import torch
        import torch.distributed as dist

        dist.recv(torch.from_numpy(buf), src=source, group=_object_group(self.launch), tag=tag)

    def Abort(self, errorcode: int = 1) -> None:  # noqa: N802
        """End this process at once; the other ranks' next collective fails instead of waiting."""
        log.error("rank %d aborts the run (exit code %d)", self.rank, errorcode)
        os._exit(errorcode)


def served_backends() -> dict[str, str]:
    """Device type -> backend of the default process group (``cpu:gloo,cuda:nccl`` -> a dict)."""
    import torch.distributed as dist

    pairs = (item.split(":", 1) for item in str(dist.get_backend_config()).split(",") if ":" in item)
    return {device.strip(): backend.strip() for device, backend in pairs}


def _shared_backend() -> str:
    """gloo for CPU tensors, plus the accelerator's backend where there is one (``cpu:gloo,cuda:nccl``)."""
    import torch
    import torch.distributed as dist

    parts = ["cpu:gloo"]
    if torch.cuda.is_available() and dist.is_nccl_available():
        parts.append("cuda:nccl")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available() and getattr(dist, "is_backend_available", lambda name: False)("xccl"):
        parts.append("xpu:xccl")
    return ",".join(parts)


def check_process_group(launch: Launch) -> None:
    """Raise unless the open ``torch.distributed`` group has ``launch``'s rank and size."""
    import torch.distributed as dist

    if (dist.get_rank(), dist.get_world_size()) != (launch.rank, launch.world_size):
        raise RuntimeError(
            f"torch.distributed is already initialised as rank {dist.get_rank()}/{dist.get_world_size()}, "
            f"but the launch says {launch.rank}/{launch.world_size}"
        )


_GLOO_GROUP: tuple[Any, Any] | None = None  # (the default group it belongs to, a gloo group of all ranks)


def _object_group(launch: Launch) -> Any:
    """A process group for CPU object collectives (None: the default group), joined at first use."""
    global _GLOO_GROUP
    import torch.distributed as dist

    if not dist.is_initialized():
        join_process_group(launch, _shared_backend(), timeout_s=TORCH_COMM_TIMEOUT_S)
        atexit.unregister(_leave_process_group)  # once, however often it rejoins
        atexit.register(_leave_process_group)
    check_process_group(launch)
    if served_backends().get("cpu") == "gloo":
        return None
    default = dist.group.WORLD
    if _GLOO_GROUP is None or _GLOO_GROUP[0] is not default:
        _GLOO_GROUP = (default, dist.new_group(backend="gloo"))
    return _GLOO_GROUP[1]


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def join_process_group(launch: Launch, backend: str, *, timeout_s: float = TORCH_COMM_TIMEOUT_S,
                       comm: Any = None) -> str:
    """Open ``torch.distributed``'s default group for ``launch`` with ``backend`` (every rank of ``comm``,
    default the MPI world, calls it); returns the rendezvous ``host:port`` (see
    :func:`gfmkit.launch.master_address`)."""
    import torch.distributed as dist

    addr, port = master_address(launch, comm)
    log.info("rank %d/%d: %s process group at %s:%d", launch.rank, launch.world_size, backend, addr, port)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{addr}:{port}",
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return f"{addr}:{port}"


def _mpi_world() -> Any:
    """``mpi4py.MPI.COMM_WORLD``, MPI initialised (a seam for tests)."""
    return mpi_module().COMM_WORLD


_WORLD: contextvars.ContextVar[Any] = contextvars.ContextVar("gfmkit_world", default=None)


@contextlib.contextmanager
def use_world(comm: Any) -> Iterator[Any]:
    """Make :func:`world` return ``comm`` (an mpi4py communicator, a :class:`SerialComm`; None: the launch's
    own world) inside the block, in this thread only; the previous world comes back afterwards."""
    token = _WORLD.set(comm)
    try:
        yield comm
    finally:
        _WORLD.reset(token)


def world() -> Any:
    """This launch's ranks: ``mpi4py.MPI.COMM_WORLD`` when it uses MPI, a :class:`TorchComm` when it has
    several ranks without MPI, else a :class:`SerialComm` (see the module docstring); inside
    :func:`use_world`, the communicator given there."""
    chosen = _WORLD.get()
    if chosen is not None:
        return chosen
    launch = detect_launch(collective=False)
    if launch.mpi:
        comm = _mpi_world()
        if (comm.Get_rank(), comm.Get_size()) != (launch.rank, launch.world_size):
            raise RuntimeError(
                f"MPI says rank {comm.Get_rank()} of {comm.Get_size()}, but the {launch.launcher} launch says "
                f"rank {launch.rank} of {launch.world_size} (GFMKIT_MPI=1 without an MPI launcher?)"
            )
        return comm
    if launch.world_size > 1:
        return TorchComm(launch)
    return SerialComm()
