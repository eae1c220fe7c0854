"""Where gfmkit runs: machine profiles (hpc_profiles/*.yaml), batch scripts and Jupyter kernels built
from them, ipyparallel engines started from them (:func:`start`, :func:`attach`) and scaling runs.
``gfmkit cluster``, ``gfmkit kernel`` and ``gfmkit scaling`` are the command-line faces of this package.

The engine functions load lazily: importing ipyparallel takes about a second."""

from __future__ import annotations

from gfmkit.cluster.kernel import install_kernel, render_kernel_launcher
from gfmkit.cluster.profiles import (
    Launcher,
    Profile,
    available_profiles,
    find_profile,
    load_profile,
)
from gfmkit.cluster.scripts import render_batch_script, submit, submit_chain

_ENGINES = ("EngineCluster", "EngineDied", "attach", "running", "start")


def __getattr__(name: str):
    if name in _ENGINES:
        from gfmkit.cluster import engines

        return getattr(engines, name)
    raise AttributeError(f"module 'gfmkit.cluster' has no attribute {name!r}")


__all__ = [  # noqa: RUF022 - the engine names first, as _ENGINES lists them
    "EngineCluster",
    "EngineDied",
    "attach",
    "running",
    "start",
    "Launcher",
    "Profile",
    "available_profiles",
    "find_profile",
    "install_kernel",
    "load_profile",
    "render_batch_script",
    "render_kernel_launcher",
    "submit",
    "submit_chain",
]
