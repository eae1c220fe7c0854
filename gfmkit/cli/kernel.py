"""``gfmkit kernel install``: a Jupyter kernel that starts with a machine profile's modules and environment.

    gfmkit kernel install --profile frontier            # "gfmkit (frontier)" in the user's kernels
    gfmkit kernel install --profile aurora --prefix "$VIRTUAL_ENV"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import CLIError
from gfmkit.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``gfmkit kernel`` and return its sub-parsers."""
    parser = sub.add_parser(
        "kernel",
        help="install a Jupyter kernel for a machine profile (its modules and environment)",
        description="Jupyter kernels that load a profile's modules, export its environment and run this Python "
        "environment's ipykernel.",
    )
    actions = parser.add_subparsers(dest="kernel_command", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="write a kernelspec (kernel.json + launch.sh)")
    install.add_argument("--profile", required=True, help="profile name or YAML path")
    install.add_argument("--name", help="kernel name (default gfmkit-<profile>)")
    install.add_argument("--display-name", help="name shown in Jupyter (default 'gfmkit (<profile>)')")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="the user's kernel directory (the default)")
    where.add_argument("--prefix", type=Path, help="PREFIX/share/jupyter/kernels, e.g. this environment's prefix")
    install.set_defaults(func=run_install)
    return actions


def run_install(args: argparse.Namespace) -> int:
    from gfmkit.cluster.kernel import install_kernel

    try:
        where = install_kernel(args.profile, name=args.name, display_name=args.display_name, prefix=args.prefix)
    except (ConfigError, FileNotFoundError, ValueError, ImportError, OSError) as exc:
        raise CLIError(str(exc)) from None
    print(f"installed kernel {where.name} in {where}")
    return 0
