"""The MPI world, or a one-process stand-in with the same (lowercase mpi4py) methods.

mpi4py is imported only when the process was started by an MPI launcher (or when something already
imported it, as ipyparallel's MPI engines do), so a notebook on a login node never initialises MPI by
accident. Data and training code call :func:`world` and run the same way on 1 or N ranks.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

# Variables that MPI launchers set in every rank: MPICH/Hydra and Intel MPI (PMI_*), PMIx (Open MPI 5,
# Slurm --mpi=pmix), Open MPI, Cray PALS (Aurora/Polaris mpiexec), MVAPICH.
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PALS_RANKID", "MV2_COMM_WORLD_SIZE")


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


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (or ``GFMKIT_MPI=1`` forces MPI)."""
    forced = os.environ.get("GFMKIT_MPI")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    if any(v in os.environ for v in _LAUNCHER_VARIABLES):
        return True
    # MPI imported by this process (e.g. on ipyparallel MPI engines); DeepHyper imports it without
    # initialising it (mpi4py.rc.initialize = False), which does not make a serial process an MPI one
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def world() -> Any:
    """``mpi4py.MPI.COMM_WORLD`` under an MPI launcher, else a :class:`SerialComm`."""
    if launched_by_mpi():
        try:
            from mpi4py import MPI
        except ImportError:
            raise RuntimeError(
                "this process was started by an MPI launcher but mpi4py is not installed: "
                "pip install 'gfmkit[mpi]'"
            ) from None
        if not MPI.Is_initialized():  # imported with mpi4py.rc.initialize = False (DeepHyper does)
            MPI.Init()
        return MPI.COMM_WORLD
    return SerialComm()
