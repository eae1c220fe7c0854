"""A Jupyter kernel per machine profile: the notebook's Python starts with the profile's modules and
environment, in the Python environment gfmkit runs in.

The kernelspec is ``kernel.json`` plus ``launch.sh``; ``kernel.json`` runs ``launch.sh`` with the
profile's shell, and ``launch.sh`` loads the modules, exports the environment, puts this environment
first on PATH and execs ``python -m ipykernel_launcher -f CONNECTION_FILE``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

from gfmkit.cluster.profiles import Profile, as_profile
from gfmkit.cluster.scripts import environment_lines
from gfmkit.files import atomic_write_text

LAUNCHER_NAME = "launch.sh"
_KERNEL_NAME = re.compile(r"[a-z0-9._-]+")


def render_kernel_launcher(
    profile: Profile | str | os.PathLike,
    *,
    python: str | os.PathLike | None = None,
    prefix: str | os.PathLike | None = None,
) -> str:
    """The launcher script: profile environment, then ``exec PYTHON -m ipykernel_launcher -f "$1"``.

    ``python`` defaults to ``sys.executable`` and ``prefix`` (the environment put first on PATH) to
    ``sys.prefix``.
    """
    profile = as_profile(profile)
    python = os.fspath(python or sys.executable)
    prefix = prefix if prefix is not None else sys.prefix
    lines = [
        f"#!{profile.shell}",
        f"# Jupyter kernel for gfmkit profile {profile.label}, written by gfmkit kernel install.",
        *environment_lines(profile, activate=prefix),
        f'exec {shlex.quote(python)} -m ipykernel_launcher -f "$1"',
    ]
    return "\n".join(lines) + "\n"


def kernel_spec(profile: Profile, launcher: str | os.PathLike, display_name: str) -> dict:
    """The ``kernel.json`` content that runs ``launcher`` with the profile's shell."""
    return {
        "argv": [*shlex.split(profile.shell), os.fspath(launcher), "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"gfmkit": {"profile": profile.name, "source": str(profile.source or "")}},
    }


def install_kernel(
    profile: Profile | str | os.PathLike,
    *,
    name: str | None = None,
    display_name: str | None = None,
    user: bool = True,
    prefix: str | os.PathLike | None = None,
    python: str | os.PathLike | None = None,
) -> Path:
    """Install a kernelspec for ``profile`` and return its directory.

    ``name`` defaults to ``gfmkit-<profile>`` and ``display_name`` to ``gfmkit (<profile>)``. It goes to
    ``PREFIX/share/jupyter/kernels/<name>`` when ``prefix`` is given, else to the user's kernel
    directory (``user=True``) or the system-wide one. An existing kernel of that name is replaced.
    """
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise ImportError("gfmkit kernel install needs jupyter_client and ipykernel: pip install ipykernel") from None
    if python is None and importlib.util.find_spec("ipykernel") is None:
        raise ImportError("this environment has no ipykernel for the kernel to run: pip install ipykernel")
    profile = as_profile(profile)
    name = name or f"gfmkit-{profile.name}"
    if not _KERNEL_NAME.fullmatch(name):
        raise ValueError(f"kernel name {name!r}: use lower-case letters, digits, '.', '_' and '-'")
    display_name = display_name or f"gfmkit ({profile.name})"
    with tempfile.TemporaryDirectory(prefix="gfmkit-kernel-") as tmp:
        source = Path(tmp) / name
        source.mkdir()
        (source / LAUNCHER_NAME).write_text(render_kernel_launcher(profile, python=python))
        (source / LAUNCHER_NAME).chmod(0o755)
        # A placeholder path until the destination is known; rewritten below.
        (source / "kernel.json").write_text(json.dumps(kernel_spec(profile, LAUNCHER_NAME, display_name)))
        destination = Path(
            KernelSpecManager().install_kernel_spec(
                str(source), name, user=user and prefix is None, prefix=None if prefix is None else os.fspath(prefix)
            )
        )
    spec = kernel_spec(profile, destination / LAUNCHER_NAME, display_name)
    atomic_write_text(destination / "kernel.json", json.dumps(spec, indent=1) + "\n")
    return destination
