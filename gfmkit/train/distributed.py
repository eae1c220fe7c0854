"""This process's place in the training world: rank, world size, local rank, device and a
``torch.distributed`` process group.

How the process was launched (launcher, rank, world size, local rank, scheduler, nodes, master
address) comes from :mod:`gfmkit.launch`, the one module that reads launcher variables; the studies,
the CLI and :func:`gfmkit.comm.world` ask the same module, so they agree on who is rank 0.

The device is this rank's ``local_rank % visible devices`` GPU (CUDA/ROCm, else Intel XPU) unless the
config names ``cpu``. The rendezvous address is :func:`gfmkit.launch.master_address`'s.
Backends: gloo on CPU, nccl on CUDA and ROCm, xccl (torch >= 2.8) else ccl (oneCCL bindings) on XPU,
else an error. ``torch.distributed`` is initialised only when the world has more than one rank; a
process group that is already open (the trainer's caller's, or :class:`gfmkit.comm.TorchComm`'s) is
reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gfmkit.comm import check_process_group, join_process_group, served_backends
from gfmkit.launch import Launch, detect_launch

__all__ = ["Distributed", "Launch", "backend_for", "detect_launch", "init_distributed", "select_device", "visible_devices"]


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
        check_process_group(launch)
        # a group with one backend per device (TorchComm's cpu:gloo,cuda:nccl) serves this device with its own
        return Distributed(launch, chosen, served_backends().get(chosen.type) or dist.get_backend())
    master = join_process_group(launch, backend, timeout_s=timeout_s)
    return Distributed(launch, chosen, backend, owns_group=True, extra={"master": master})
