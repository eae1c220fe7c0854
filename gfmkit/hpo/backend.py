"""DeepHyper's classes, imported so that the process stays usable afterwards.

DeepHyper imports mpi4py with ``mpi4py.rc.initialize = False`` and leaves MPI uninitialised. Libraries
that find mpi4py imported then call ``MPI.COMM_WORLD`` (ASE's ``ase.parallel`` does, in every
``ase.io.write``) and MPICH aborts the whole process. So MPI is initialised right after the import when
DeepHyper left it uninitialised: outside ``mpiexec`` that is a world of one process.
"""

from __future__ import annotations

import sys
from typing import Any


def deephyper() -> tuple[Any, Any, Any]:
    """``(HpProblem, CBO, Evaluator)`` of DeepHyper, with MPI initialised if DeepHyper imported it."""
    from deephyper.evaluator import Evaluator
    from deephyper.hpo import CBO, HpProblem

    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and not mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Init()
    return HpProblem, CBO, Evaluator
