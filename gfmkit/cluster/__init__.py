"""Where gfmkit runs: machine profiles (hpc_profiles/*.yaml), batch scripts and Jupyter kernels built
from them. ``gfmkit cluster`` and ``gfmkit kernel`` are the command-line faces of this package."""

from __future__ import annotations

from gfmkit.cluster.kernel import install_kernel, render_kernel_launcher
from gfmkit.cluster.profiles import Launcher, Profile, available_profiles, find_profile, load_profile
from gfmkit.cluster.scripts import render_batch_script, submit, submit_chain

__all__ = [
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
