"""Machine profiles: one YAML file per machine, read strictly into a :class:`Profile`.

A profile says how a job runs on one machine: the scheduler and its header lines, how ranks are
launched, GPUs per node, modules, environment variables, the torch.distributed backend, node-local
scratch, defaults for account, queue and wall time, and where an ipyparallel controller listens.
``hpc_profiles/README.md`` documents every key.

A name (``frontier``) resolves to the first ``NAME.yaml`` found in, in order:

1. each directory of ``$GFMKIT_PROFILES`` (separated by ``os.pathsep``),
2. ``$XDG_CONFIG_HOME/gfmkit/profiles`` (default ``~/.config/gfmkit/profiles``),
3. the ``hpc_profiles/`` shipped with gfmkit,

so a user's file shadows a shipped one of the same name. A path (a value with a ``/`` or a ``.yaml`` /
``.yml`` suffix) is read as it is.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from gfmkit.config import ConfigError, load_config, read_yaml

PROFILES_ENV = "GFMKIT_PROFILES"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "hpc_profiles"
# What launcher arguments and scheduler directives may contain, as ``{name}``.
PLACEHOLDERS = ("nodes", "ranks", "ranks_per_node", "cpus_per_rank", "gpus_per_node")
SUBMIT_COMMANDS = {"none": "bash", "slurm": "sbatch", "pbs": "qsub"}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Values written into #SBATCH / #PBS lines, which no shell parses, so they cannot be quoted: only these.
HEADER_VALUE = {
    "account": re.compile(r"[A-Za-z0-9_.-]+"),
    "queue": re.compile(r"[A-Za-z0-9_.@-]+"),
    "job_name": re.compile(r"[A-Za-z0-9_.+-]+"),
    "depends_on": re.compile(r"[A-Za-z0-9_.\[\]-]+"),
}
_WALLTIME = re.compile(r"(\d+):([0-5]\d):([0-5]\d)")


def check_header_value(name: str, value: str) -> str:
    """``value`` if it is safe in a scheduler header line as field ``name``, else a ValueError naming it."""
    pattern = HEADER_VALUE[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name} {value!r} is not allowed in a batch header: use only {pattern.pattern}")
    return value


def parse_walltime(value: str | int) -> str:
    """``HH:MM:SS`` from ``HH:MM:SS``, ``H:MM:SS`` or whole minutes (an int or a string of digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str) and value.isdigit():
        minutes = int(value)
    elif isinstance(value, str) and _WALLTIME.fullmatch(value):
        hours, mins, secs = _WALLTIME.fullmatch(value).groups()
        return f"{int(hours):02d}:{mins}:{secs}"
    else:
        raise ValueError(f"walltime {value!r}: give HH:MM:SS or whole minutes")
    if minutes < 1:
        raise ValueError(f"walltime {value!r}: must be at least one minute")
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


@dataclass(frozen=True)
class Launcher:
    """How ranks start: ``command`` followed by ``args``, whose ``{nodes}``, ``{ranks}``,
    ``{ranks_per_node}``, ``{cpus_per_rank}`` and ``{gpus_per_node}`` are filled in per launch.

    ``find_in_env``: look for ``command`` next to ``sys.executable`` first, then on ``PATH`` (the
    environment's own ``mpiexec``); otherwise the command is written as given, for the job's ``PATH``.
    """

    command: str
    args: tuple[str, ...] = ()
    find_in_env: bool = False


@dataclass(frozen=True)
class Profile:
    """One machine. Load with :func:`load_profile`; every key is described in hpc_profiles/README.md."""

    scheduler: Literal["none", "slurm", "pbs"]
    launcher: Launcher
    backend: Literal["gloo", "nccl", "xccl", "ccl"]
    gpus_per_node: int
    ranks_per_node: int
    description: str = ""
    cpus_per_node: int | None = None
    directives: tuple[str, ...] = ()
    queue_option: str | None = None
    modules: tuple[str, ...] = ()
    env: dict[str, str | int] = field(default_factory=dict)
    scratch: str | None = None
    account: str | None = None
    queue: str | None = None
    walltime: str | int | None = None
    controller_ip: str = "127.0.0.1"
    controller_location: str | None = None
    shell: str = "/bin/bash"
    # Set from the file, never from YAML keys.
    name: str = field(default="", compare=False)
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def label(self) -> str:
        """``'name' from 'file'`` on one line (repr-escaped), safe in a shell comment whatever the path holds."""
        where = f" from {str(self.source)!r}" if self.source else ""
        return f"{self.name or '<unnamed>'!r}{where}"

    @property
    def submit_command(self) -> str:
        """``sbatch``, ``qsub`` or ``bash`` (no scheduler)."""
        return SUBMIT_COMMANDS[self.scheduler]

    def launcher_path(self) -> str:
        """The launcher program: as written, or (``find_in_env``) the one next to Python or on PATH."""
        command = self.launcher.command
        if self.launcher.find_in_env and "/" not in command:
            beside = Path(sys.executable).parent / command
            if beside.is_file() and os.access(beside, os.X_OK):
                return str(beside)
            return shutil.which(command) or command
        return command

    def placeholders(self, nodes: int, ranks_per_node: int | None = None) -> dict[str, int]:
        """The values of ``{nodes}``, ``{ranks}``, ... for ``nodes`` x ``ranks_per_node`` (default: profile's)."""
        rpn = self.ranks_per_node if ranks_per_node is None else ranks_per_node
        for label, value in (("nodes", nodes), ("ranks_per_node", rpn)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if self.scheduler == "none" and nodes != 1:
            raise ValueError(f"profile {self.name or '<unnamed>'} has no scheduler and runs on one node, not {nodes}")
        values = {"nodes": nodes, "ranks": nodes * rpn, "ranks_per_node": rpn, "gpus_per_node": self.gpus_per_node}
        if self.cpus_per_node is not None:
            if rpn > self.cpus_per_node:
                raise ValueError(f"{rpn} ranks per node exceed the profile's {self.cpus_per_node} CPUs per node")
            values["cpus_per_rank"] = self.cpus_per_node // rpn
        return values

    def launch_command(self, nodes: int, ranks_per_node: int | None = None) -> list[str]:
        """The launcher's words for ``nodes`` x ``ranks_per_node`` ranks, without the program to run,
        e.g. ``['srun', '-N', '2', '-n', '16', ..., '--gpu-bind=closest']``."""
        values = self.placeholders(nodes, ranks_per_node)
        return [self.launcher_path(), *(arg.format(**values) for arg in self.launcher.args)]

    def launch_line(self, nodes: int, ranks_per_node: int | None = None) -> str:
        """:meth:`launch_command` as one shell-quoted line."""
        return shlex.join(self.launch_command(nodes, ranks_per_node))


def _validate(p: Profile) -> None:
    def fail(key: str, message: str) -> NoReturn:
        raise ValueError(f"key '{key}': {message}")

    if p.gpus_per_node < 0:
        fail("gpus_per_node", "must be 0 or more")
    if p.ranks_per_node < 1:
        fail("ranks_per_node", "must be at least 1")
    if p.cpus_per_node is not None and p.cpus_per_node < p.ranks_per_node:
        fail("cpus_per_node", f"{p.cpus_per_node} is fewer than ranks_per_node ({p.ranks_per_node})")
    if not p.launcher.command.strip() or _has_break(p.launcher.command):
        fail("launcher.command", "must be a program name or path on one line")
    usable = set(PLACEHOLDERS) - ({"cpus_per_rank"} if p.cpus_per_node is None else set())
    templated = [(f"launcher.args[{i}]", a) for i, a in enumerate(p.launcher.args)]
    templated += [(f"directives[{i}]", d) for i, d in enumerate(p.directives)]
    for key, text in templated:
        if _has_break(text):
            fail(key, "must not contain a line break")
        try:
            names = {n for _, n, _, _ in string.Formatter().parse(text) if n is not None}
        except ValueError as exc:
            fail(key, f"bad placeholder in {text!r}: {exc}")
        if names - usable:
            fail(key, f"unknown placeholder {{{sorted(names - usable)[0]}}} (known: {', '.join(sorted(usable))})")
    if p.scheduler == "none" and p.directives:
        fail("directives", "a profile without a scheduler has no header lines")
    for i, module in enumerate(p.modules):
        if not module or any(c.isspace() for c in module):
            fail(f"modules[{i}]", f"{module!r} must be one module name without spaces")
    for name, value in p.env.items():
        if not ENV_NAME.fullmatch(name):
            fail(f"env.{name}", "is not a valid environment variable name")
        if isinstance(value, bool) or (not isinstance(value, int) and any(c in str(value) for c in '"\\\n\r\0')):
            fail(f"env.{name}", 'must be one line of shell text without " or \\ (it is written inside double quotes)')
    if p.scratch is not None and any(c in p.scratch for c in '"\\\n\r\0'):
        fail("scratch", 'must be one line without " or \\')
    for key in ("account", "queue"):
        value = getattr(p, key)
        if value is not None:
            _reraise(key, check_header_value, key, value)
    if p.walltime is not None:
        _reraise("walltime", parse_walltime, p.walltime)
    if p.queue_option is not None and not re.fullmatch(r"-{1,2}[A-Za-z][A-Za-z-]*", p.queue_option):
        fail("queue_option", f"{p.queue_option!r} is not an option such as --partition, --qos or -q")
    for key in ("controller_ip", "controller_location"):
        value = getattr(p, key)
        if value is not None and (not value or any(c.isspace() for c in value)):
            fail(key, "must be an address or host name without spaces")
    words = shlex.split(p.shell) if not _has_break(p.shell) else []
    if not words or not words[0].startswith("/"):
        fail("shell", f"{p.shell!r} must be an absolute path to a shell, with options, on one line")


def _reraise(key: str, check: Callable[..., Any], *args: Any) -> None:
    try:
        check(*args)
    except ValueError as exc:
        raise ValueError(f"key '{key}': {exc}") from None


def _has_break(text: str) -> bool:
    return any(c in text for c in "\n\r\0")


def profile_dirs() -> list[Path]:
    """Where names are looked up, first match wins: ``$GFMKIT_PROFILES``, the user config dir, shipped."""
    dirs = [Path(d).expanduser() for d in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if d]
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    dirs.append(Path(config_home) / "gfmkit" / "profiles")
    dirs.append(SHIPPED_DIR)
    return dirs


def available_profiles() -> dict[str, Path]:
    """Every profile name that resolves, with the file it resolves to (user files shadow shipped ones)."""
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                if _NAME.fullmatch(path.stem):
                    found.setdefault(path.stem, path)
    return found


def find_profile(name_or_path: str | os.PathLike) -> Path:
    """The file a profile name or path stands for; FileNotFoundError says where it looked."""
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no profile file {path}")
        return path
    if not _NAME.fullmatch(text):
        raise FileNotFoundError(f"{text!r} is not a profile name (letters, digits, '_', '.', '-') or a path")
    for directory in profile_dirs():
        path = directory / f"{text}.yaml"
        if path.is_file():
            return path
    known = ", ".join(sorted(available_profiles())) or "none"
    looked = ", ".join(str(d) for d in profile_dirs())
    raise FileNotFoundError(f"no profile named {text!r} (known: {known}; looked in {looked})")


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Read and validate a profile by name or path; a :class:`~gfmkit.config.ConfigError` names file and key."""
    path = find_profile(name_or_path)
    data = read_yaml(path)
    if isinstance(data, dict):
        for key in ("name", "source"):
            if key in data:
                raise ConfigError(f"{path}: key '{key}' is not set in a profile: gfmkit takes it from the file")
    profile = load_config(Profile, {} if data is None else data, where=str(path))
    return dataclasses.replace(profile, name=path.stem, source=path)


def as_profile(profile: Profile | str | os.PathLike) -> Profile:
    """``profile`` itself, or the profile a name or path stands for."""
    return profile if isinstance(profile, Profile) else load_profile(profile)
