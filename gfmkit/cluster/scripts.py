"""Batch scripts from a profile: ``#SBATCH``/``#PBS`` headers, modules, environment, launcher line.

What goes where, and why it cannot inject anything:

* the command's words, ``extra_env`` values and paths given by the caller are quoted with
  :func:`shlex.quote`: they reach the program verbatim and never run;
* account, queue, job name, wall time, array range and dependencies go into header lines, which no
  shell parses, so they cannot be quoted; they are checked against a small set of characters instead
  and a ValueError names the field;
* the profile's own environment values are trusted shell text written inside double quotes, so
  ``${SLURM_JOB_ID}`` or ``/tmp/${USER}`` expand in the job (the profile loader refuses line breaks,
  ``"`` and ``\\`` in them).

Modules are loaded only where a ``module`` command exists, so a script also runs on a machine
without environment modules (a laptop, a test).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gfmkit.cluster.profiles import (
    ENV_NAME,
    Profile,
    as_profile,
    check_header_value,
    parse_walltime,
)

_ARRAY = {
    "slurm": re.compile(r"\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?"),
    "pbs": re.compile(r"\d+-\d+(:\d+)?(%\d+)?"),
}
_ARRAY_INDEX = {"slurm": "SLURM_ARRAY_TASK_ID", "pbs": "PBS_ARRAY_INDEX"}
_SUBMIT_DIR = {"slurm": "SLURM_SUBMIT_DIR", "pbs": "PBS_O_WORKDIR"}


def environment_lines(
    profile: Profile,
    *,
    extra_env: Mapping[str, str] | None = None,
    activate: str | os.PathLike | None = None,
) -> list[str]:
    """Shell lines that load the profile's modules, export its scratch and environment, then
    ``extra_env`` (quoted), then put the Python environment at ``activate`` first on PATH."""
    lines = []
    if profile.modules:
        names = " ".join(shlex.quote(m) for m in profile.modules)
        lines += [
            "if command -v module >/dev/null 2>&1; then",
            f"    module load {names}",
            "else",
            f"    echo {shlex.quote(f'gfmkit: no module command here, not loading: {names}')} >&2",
            "fi",
        ]
    if profile.scratch is not None:
        lines.append(f'export GFMKIT_SCRATCH="{profile.scratch}"')
    lines += [f'export {name}="{value}"' for name, value in profile.env.items()]
    for name, value in (extra_env or {}).items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise ValueError(f"extra_env: {name!r} is not a valid environment variable name")
        lines.append(f"export {name}={shlex.quote(str(value))}")
    if activate is not None:
        prefix = Path(activate).absolute()
        kind = "CONDA_PREFIX" if (prefix / "conda-meta").is_dir() else "VIRTUAL_ENV"
        lines += [f"export {kind}={shlex.quote(str(prefix))}", f'export PATH={shlex.quote(str(prefix / "bin"))}:"$PATH"']
    return lines


def _job_ids(profile: Profile, depends_on: str | Sequence[str] | None) -> list[str]:
    ids = [depends_on] if isinstance(depends_on, str) else list(depends_on or [])
    if ids and profile.scheduler == "none":
        raise ValueError("depends_on needs a scheduler; the profile has none")
    return [check_header_value("depends_on", job_id) for job_id in ids]


def _header(
    profile: Profile,
    values: dict[str, int],
    *,
    job_name: str,
    account: str | None,
    queue: str | None,
    walltime: str | None,
    array: str | None,
    depends_on: list[str],
) -> list[str]:
    slurm = profile.scheduler == "slurm"
    prefix = "#SBATCH" if slurm else "#PBS"
    nodes = values["nodes"]
    lines = [f"--job-name={job_name}", f"--nodes={nodes}"] if slurm else [f"-N {job_name}", f"-l select={nodes}"]
    if walltime:
        lines.append(f"--time={walltime}" if slurm else f"-l walltime={walltime}")
    if account:
        lines.append(f"--account={account}" if slurm else f"-A {account}")
    if queue:
        option = profile.queue_option or ("--partition" if slurm else "-q")
        lines.append(f"{option}={queue}" if option.startswith("--") else f"{option} {queue}")
    if array:
        lines.append(f"--array={array}" if slurm else f"-J {array}")
    if depends_on:
        after = "afterok:" + ":".join(depends_on)
        lines.append(f"--dependency={after}" if slurm else f"-W depend={after}")
    lines += [d.format(**values) for d in profile.directives]
    out = [f"{prefix} {line}" for line in lines]
    if not account:
        out.append("# no account given: pass account=... (--account), or set `account` in the profile")
    return out


def render_batch_script(
    profile: Profile | str | os.PathLike,
    command: Sequence[str],
    nodes: int = 1,
    ranks_per_node: int | None = None,
    account: str | None = None,
    queue: str | None = None,
    walltime: str | int | None = None,
    job_name: str = "gfmkit",
    array: str | None = None,
    depends_on: str | Sequence[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    activate: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
) -> str:
    """A complete sbatch / qsub script (or, without a scheduler, a bash script) that runs ``command``
    on ``nodes`` x ``ranks_per_node`` ranks through the profile's launcher.

    Account, queue and wall time default to the profile's; ``walltime`` is ``HH:MM:SS`` or minutes.
    ``array`` (``0-9``) makes a job array, whose index the job also sees as ``$GFMKIT_ARRAY_INDEX``;
    ``depends_on`` job ids make it start after they succeed. ``activate`` puts a Python environment
    (a venv or conda prefix) first on PATH. The job runs in ``workdir``, else the directory it was
    submitted from. A value that cannot be written safely raises ValueError naming the field.
    """
    profile = as_profile(profile)
    command = list(command)
    if not command or not all(isinstance(word, str) for word in command):
        raise ValueError(f"command must be a non-empty list of strings, got {command!r}")
    values = profile.placeholders(nodes, ranks_per_node)
    ids = _job_ids(profile, depends_on)
    account = account if account is not None else profile.account
    queue = queue if queue is not None else profile.queue
    walltime = walltime if walltime is not None else profile.walltime
    for field_name, value in (("account", account), ("queue", queue), ("job_name", job_name)):
        if value is not None:
            check_header_value(field_name, value)
    if walltime is not None:
        walltime = parse_walltime(walltime)
    if array is not None and (profile.scheduler == "none" or not _ARRAY[profile.scheduler].fullmatch(array)):
        raise ValueError(f"array {array!r} is not a job array range for scheduler {profile.scheduler}")

    lines = [f"#!{profile.shell}"]
    if profile.scheduler != "none":
        lines += _header(profile, values, job_name=job_name, account=account, queue=queue, walltime=walltime,
                         array=array, depends_on=ids)
    lines += [
        f"# gfmkit: profile {profile.label}, {values['nodes']} node(s) x "
        f"{values['ranks_per_node']} rank(s), backend {profile.backend}; run with: {profile.submit_command} FILE",
        "",
        *environment_lines(profile, extra_env=extra_env, activate=activate),
    ]
    if array is not None:
        lines.append(f'export GFMKIT_ARRAY_INDEX="${{{_ARRAY_INDEX[profile.scheduler]}:-}}"')
    if workdir is not None:
        lines.append(f"cd {shlex.quote(str(Path(workdir).absolute()))} || exit 1")
    elif profile.scheduler != "none":
        lines.append(f'cd "${{{_SUBMIT_DIR[profile.scheduler]}}}" || exit 1')
    lines.append(shlex.join(profile.launch_command(nodes, ranks_per_node) + command))
    return "\n".join(lines) + "\n"


def submit(
    profile: Profile | str | os.PathLike,
    script: str | os.PathLike,
    depends_on: str | Sequence[str] | None = None,
    *,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> str:
    """Submit ``script`` with the profile's scheduler (after ``depends_on`` succeeded); returns the job id.

    Without a scheduler the script runs to its end here and the id is ``local``.
    """
    profile = as_profile(profile)
    ids = _job_ids(profile, depends_on)
    after = "afterok:" + ":".join(ids)
    if profile.scheduler == "slurm":
        argv = ["sbatch", "--parsable", *([f"--dependency={after}"] if ids else []), str(script)]
    elif profile.scheduler == "pbs":
        argv = ["qsub", *(["-W", f"depend={after}"] if ids else []), str(script)]
    else:
        run(["bash", str(script)], check=True)
        return "local"
    result = run(argv, check=True, capture_output=True, text=True)
    # sbatch --parsable prints "id[;cluster]"; qsub prints the id.
    job_id = result.stdout.strip().splitlines()[-1].split(";")[0] if result.stdout.strip() else ""
    if not job_id:
        raise RuntimeError(f"{argv[0]} printed no job id: {result.stdout!r} {result.stderr!r}")
    return job_id


def submit_chain(profile: Profile | str | os.PathLike, scripts: Sequence[str | os.PathLike], **kwargs) -> list[str]:
    """Submit ``scripts`` so that each starts after the one before succeeded; returns their job ids."""
    ids: list[str] = []
    for script in scripts:
        ids.append(submit(profile, script, ids[-1:] or None, **kwargs))
    return ids
