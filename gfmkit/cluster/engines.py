"""ipyparallel engines started from a machine profile, driven from a notebook.

:func:`start` picks one of three ways in from the profile and the environment:

``local``
    a profile without a scheduler: MPI engines on this machine, started with the profile's
    launcher (the environment's own ``mpiexec``); the controller listens on loopback.
``allocation``
    a Slurm or PBS profile while ``SLURM_JOB_ID`` / ``PBS_JOBID`` is set (a notebook on a compute
    node of a job): engines start with the profile's launcher (``srun``, ``mpiexec``) on the
    allocated nodes; the controller runs here and listens where the profile says.
``batch``
    a Slurm or PBS profile on a login node: ipyparallel's batch launcher submits the engines as a
    job whose script is rendered from the profile (its header lines, modules, environment and
    launcher line), and the engines connect back when the job starts.

Every engine is an MPI rank (``ipengine --mpi``): :meth:`EngineCluster.run` calls a function on all
of them and returns the results in MPI rank order, so DDP training (whose ``init_distributed``
learns from the MPI environment that it runs on engines) needs no change. ``%%px`` works once the
cluster is activated (automatic inside IPython). An engine that dies fails the call with
:class:`EngineDied` naming it, instead of waiting forever; :meth:`EngineCluster.stop` ends every
process the cluster started. With ``persist=True`` the engines outlive the kernel and
:func:`attach` reconnects to them after a restart.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import pandas as pd
from ipyparallel.cluster.launcher import MPIEngineSetLauncher

from gfmkit.cluster.profiles import Profile, as_profile
from gfmkit.cluster.scripts import render_batch_script
from gfmkit.files import atomic_write_text
from gfmkit.launch import allocated_node_count, scheduler_of
from gfmkit.log import get_logger, strip_colour
from gfmkit.progress import progress_bar

log = get_logger(__name__)

CLUSTER_PREFIX = "gfmkit-"
#: Engines and threads per engine that a ``local`` cluster may use on a shared login node (a machine
#: where ``sbatch`` or ``qsub`` exists but no job is running): login nodes are shared by everyone.
LOGIN_NODE_MAX_ENGINES = 4
LOGIN_NODE_MAX_THREADS = 2
_ENGINE_COMMAND = "GFMKIT_IPENGINE_COMMAND"


class EngineDied(RuntimeError):
    """One or more engines stopped while a call was running on them."""


class ClusterNotFound(RuntimeError):
    """No running gfmkit cluster has the given id (or none is running to attach to)."""


class ProfileEngineSetLauncher(MPIEngineSetLauncher):
    """ipyparallel's MPI engine-set launcher with the profile's whole launch command in front.

    ipyparallel's own puts ``-n N`` right after ``mpi_cmd``; a profile's command already holds its
    rank counts (``srun -N 2 -n 16 ...``, ``mpiexec -n 24 -ppn 12 ...``), so nothing is inserted.
    """

    entrypoint_name = "gfmkit_profile"  # pyproject's ipyparallel.engine_launchers entry

    def find_args(self) -> list[str]:
        return list(self.mpi_cmd) + list(self.mpi_args) + list(self.program) + list(self.program_args)


def in_allocation(env: dict[str, str] | None = None) -> str | None:
    """``slurm`` or ``pbs`` when this process runs inside a job, else None (:func:`gfmkit.launch.scheduler_of`)."""
    return scheduler_of(env)


def on_login_node(env: dict[str, str] | None = None) -> bool:
    """A machine with a batch scheduler's submit command but outside any job: a shared login node."""
    import shutil

    if in_allocation(env):
        return False
    return any(shutil.which(command) for command in ("sbatch", "qsub"))


def allocated_nodes(env: dict[str, str] | None = None) -> int | None:
    """How many nodes this job holds (:func:`gfmkit.launch.allocated_node_count`)."""
    return allocated_node_count(env)


def choose_mode(profile: Profile, env: dict[str, str] | None = None) -> str:
    """``local``, ``allocation`` or ``batch`` for ``profile`` here (see the module docstring)."""
    if profile.scheduler == "none":
        return "local"
    job = in_allocation(env)
    if job is None:
        return "batch"
    if job != profile.scheduler:
        raise RuntimeError(f"profile {profile.name!r} uses {profile.scheduler}, but this process runs inside a {job} job")
    return "allocation"


def local_limits(engines: int, threads: int | None, *, cpus: int | None = None, login_node: bool | None = None) -> int:
    """Threads per engine for ``engines`` local engines, after checking them against this machine.

    At most one engine per core; on a login node at most :data:`LOGIN_NODE_MAX_ENGINES` engines of
    :data:`LOGIN_NODE_MAX_THREADS` threads. ``threads`` None shares the cores out evenly.
    """
    cpus = cpus or os.cpu_count() or 1
    login_node = on_login_node() if login_node is None else login_node
    max_engines = min(cpus, LOGIN_NODE_MAX_ENGINES) if login_node else cpus
    if engines < 1 or engines > max_engines:
        where = "a shared login node" if login_node else f"this machine ({cpus} cores)"
        raise ValueError(f"{engines} local engines: {where} allows 1 to {max_engines}; "
                         "use a Slurm/PBS profile to run more engines on compute nodes")
    default = max(1, cpus // engines)
    if login_node:
        default = min(default, LOGIN_NODE_MAX_THREADS)
    threads = default if threads is None else int(threads)
    if threads < 1 or engines * threads > cpus or (login_node and threads > LOGIN_NODE_MAX_THREADS):
        raise ValueError(f"{engines} engines x {threads} threads do not fit {cpus} cores"
                         + (f" (login node: at most {LOGIN_NODE_MAX_THREADS} threads per engine)" if login_node else ""))
    return threads


def engine_batch_template(profile: Profile, nodes: int, ranks_per_node: int | None, **script: Any) -> str:
    """The profile's batch script with ipyparallel's engine command as its program, as a template
    for ipyparallel's batch launchers (braces of the script escaped for their formatter)."""
    text = render_batch_script(profile, [_ENGINE_COMMAND], nodes, ranks_per_node, **script)
    text = text.replace("{", "{{").replace("}", "}}")
    text = text.replace(_ENGINE_COMMAND, "{program} --mpi {program_args}")
    if profile.scheduler == "pbs":  # engines need the submitting environment (IPP_CONNECTION_INFO)
        first, rest = text.split("\n", 1)
        text = f"{first}\n#PBS -V\n{rest}"
    return text


def _engine_environment(profile: Profile, mode: str, threads: int | None) -> dict[str, str]:
    env: dict[str, str] = {}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if mode == "allocation":  # in batch mode the script exports these itself
        if profile.scratch is not None:
            env["GFMKIT_SCRATCH"] = os.path.expandvars(profile.scratch)
        for name, value in profile.env.items():
            value = str(value).replace("${GFMKIT_SCRATCH}", env.get("GFMKIT_SCRATCH", ""))
            env[name] = os.path.expandvars(value)
    return env


def _sidecar(profile_dir: str, cluster_id: str) -> Path:
    return Path(profile_dir) / "security" / f"{cluster_id}.gfmkit.json"


class EngineCluster:
    """A running ipyparallel cluster of MPI engines described by a profile.

    Use :func:`start` or :func:`attach` to get one. ``client`` and ``view`` (a DirectView on all
    engines in MPI rank order) are the ipyparallel objects, for anything this class does not wrap.
    """

    def __init__(self, cluster: Any, client: Any, profile: Profile, mode: str):
        self.cluster, self.client, self.profile, self.mode = cluster, client, profile, mode
        self._stopped = False
        self._broken = False  # engines died during a call: the survivors may hang in a collective
        ranks = client[:].apply_sync(_mpi_rank)
        self.ranks = dict(zip(client.ids, ranks))
        self.view = client[sorted(self.ranks, key=self.ranks.get)]
        self.view.block = True
        self.engine_pids = client[:].apply_sync(os.getpid)
        self._activate()

    # -- information ---------------------------------------------------------------------------------
    @property
    def cluster_id(self) -> str:
        return self.cluster.cluster_id

    @property
    def n_engines(self) -> int:
        return len(self.ranks)

    def __len__(self) -> int:
        return self.n_engines

    def __repr__(self) -> str:
        return f"<EngineCluster {self.cluster_id}: {self.n_engines} engines, profile {self.profile.name}, {self.mode}>"

    def engines(self) -> pd.DataFrame:
        """One row per engine: engine id, MPI rank, host, process id."""
        hosts = self.view.apply_sync(socket.gethostname)
        ids = sorted(self.ranks, key=self.ranks.get)
        return pd.DataFrame({"engine": ids, "rank": [self.ranks[i] for i in ids], "host": hosts,
                             "pid": self.view.apply_sync(os.getpid)})

    # -- running work --------------------------------------------------------------------------------
    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, progress: bool = True,
            **kwargs: Any) -> list[Any]:
        """Call ``fn(*args, **kwargs)`` on every engine at once; the results in MPI rank order.

        A bar counts engines that finished. An exception on an engine is raised here with the
        engine, its rank and its traceback; an engine that dies raises :class:`EngineDied`;
        ``timeout`` seconds without all results raises TimeoutError (the engines keep running).
        """
        self._check_usable()
        result = self.view.apply_async(fn, *args, **kwargs)
        name = getattr(fn, "__name__", "call")
        started = time.monotonic()
        with progress_bar(total=self.n_engines, desc=name, unit="engine", disable=not progress, leave=False) as bar:
            while not result.ready():
                result.wait(0.5)
                finished = sum(1 for m in result.msg_ids if m not in self.client.outstanding)
                if finished > bar.n:
                    bar.update(finished - bar.n)
                dead = self._dead_engines()
                if dead:
                    raise EngineDied(self._death_message(dead, name))
                if timeout is not None and time.monotonic() - started > timeout:
                    raise TimeoutError(f"{name} did not finish on all {self.n_engines} engines within {timeout} s")
            bar.update(self.n_engines - bar.n)
        return self._results(result, name)

    def _results(self, result: Any, name: str) -> list[Any]:
        from ipyparallel.error import CompositeError, EngineError, RemoteError

        try:
            return result.get()
        except CompositeError as exc:
            lines = []
            died = False
            for item in exc.elist:
                ename, evalue, _tb, info = item
                engine = (info or {}).get("engine_id")
                died = died or ename == "EngineError"
                lines.append(f"engine {engine} (rank {self.ranks.get(engine, '?')}): {ename}: {evalue}")
            message = f"{name} failed on {len(exc.elist)} of {self.n_engines} engines:\n  " + "\n  ".join(lines)
            if died:
                raise EngineDied(message + "\n" + self._restart_hint()) from None
            raise RuntimeError(message + "\n\n" + _first_traceback(exc)) from None
        except EngineError as exc:  # pragma: no cover - single-engine view
            raise EngineDied(f"{name}: {exc}\n{self._restart_hint()}") from None
        except RemoteError as exc:  # pragma: no cover - single-engine view
            raise RuntimeError(f"{name} failed on an engine: {exc}") from None

    def _dead_engines(self) -> list[int]:
        """Engines that stopped: the launcher process ended (local, allocation), or the hub dropped them."""
        gone = sorted(set(self.ranks) - set(self.client.ids))
        engine_set = self.cluster.engine_set if self.cluster is not None else None
        if self.mode != "batch" and _launcher_exited(engine_set):
            return gone or sorted(self.ranks)
        return gone

    def _death_message(self, dead: list[int], name: str) -> str:
        ranks = ", ".join(f"engine {e} (rank {self.ranks[e]})" for e in dead)
        output = ""
        engine_set = self.cluster.engine_set if self.cluster is not None else None
        if engine_set is not None:
            try:
                tail = engine_set.get_output(remove=False)[-2000:]
                output = f"\nlast output of the engines' launcher:\n{tail}" if tail.strip() else ""
            except Exception:  # noqa: BLE001 - best effort diagnostics only
                output = ""
        self._broken = True
        return f"{name}: {ranks} stopped while the call was running.{output}\n{self._restart_hint()}"

    def _restart_hint(self) -> str:
        return ("The other MPI ranks may be blocked in a collective: stop this cluster (cluster.stop()) "
                "and start a new one.")

    def _check_usable(self) -> None:
        if self._stopped:
            raise RuntimeError(f"cluster {self.cluster_id} was stopped; start a new one")
        if self._broken:
            raise EngineDied(f"cluster {self.cluster_id} lost engines earlier. {self._restart_hint()}")

    def _activate(self) -> None:
        """Make ``%px``/``%%px`` run on these engines when inside IPython."""
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover
            return
        if get_ipython() is not None:
            self.view.activate()

    # -- lifetime -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the engines and the controller (or cancel the engines' job) and forget the cluster."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.stop_cluster_sync()
                _sidecar(self.cluster.profile_dir, self.cluster_id).unlink(missing_ok=True)

    def __enter__(self) -> EngineCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _launcher_exited(engine_set: Any) -> bool:
    """Whether the local launcher process (mpiexec, srun) of an engine set has ended.

    Read from the process itself: ipyparallel's own state changes only while its event loop runs.
    """
    import psutil

    process = getattr(engine_set, "process", None)
    if process is None:
        return False
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _mpi_rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


def _first_traceback(exc: Any) -> str:
    for _ename, _evalue, tb, _info in exc.elist:
        if tb:
            return strip_colour(tb if isinstance(tb, str) else "".join(tb))
    return ""


def start(
    profile: Profile | str | os.PathLike = "local",
    *,
    nodes: int | None = None,
    ranks_per_node: int | None = None,
    threads_per_engine: int | None = None,
    account: str | None = None,
    queue: str | None = None,
    walltime: str | int | None = None,
    controller_ip: str | None = None,
    persist: bool = False,
    timeout: float | None = None,
    cluster_id: str | None = None,
) -> EngineCluster:
    """Start ``nodes`` x ``ranks_per_node`` MPI engines as the profile says and connect to them.

    ``nodes`` defaults to 1 (``local``, ``batch``) or every node of the job (``allocation``);
    ``ranks_per_node`` to the profile's. ``threads_per_engine`` sets OMP/MKL threads (local default:
    the cores shared out evenly, with login-node caps; on a site: the profile's cores per rank). ``account``, ``queue`` and ``walltime`` go
    into the engines' job (``batch``). ``persist=True`` keeps the engines when this Python process
    ends, for :func:`attach`. ``timeout`` bounds the wait for every engine to connect (default 120 s;
    ``batch``: one hour, for the queue). Returns an :class:`EngineCluster` (a context manager).
    """
    profile = as_profile(profile)
    mode = choose_mode(profile)
    if nodes is None:
        nodes = (allocated_nodes() or 1) if mode == "allocation" else 1
    if profile.scheduler == "none" and nodes != 1:
        raise ValueError(f"profile {profile.name!r} has no scheduler: it runs on this machine only (nodes=1)")
    values = profile.placeholders(nodes, ranks_per_node)
    n = values["ranks"]
    if mode == "local":
        threads_per_engine = local_limits(n, threads_per_engine)
    elif threads_per_engine is None:  # on compute nodes: the cores the launcher binds to each rank
        threads_per_engine = values.get("cpus_per_rank")
    cluster_id = cluster_id or f"{CLUSTER_PREFIX}{profile.name}-{secrets.token_hex(4)}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cluster_id):
        raise ValueError(f"cluster_id {cluster_id!r}: use letters, digits, '_', '.', '-'")
    listen = controller_ip or profile.controller_ip
    location = profile.controller_location or (None if listen in ("127.0.0.1", "localhost") else socket.gethostname())
    kwargs: dict[str, Any] = {"n": n, "cluster_id": cluster_id, "controller_ip": listen, "shutdown_atexit": not persist,
                              "log_level": 30, "engine_timeout": int(timeout or (3600 if mode == "batch" else 120))}
    if location:
        kwargs["controller_location"] = location
    if mode == "batch":
        kwargs["engines"] = profile.scheduler  # ipyparallel's "slurm" / "pbs" engine-set launchers
    else:
        kwargs["engines"] = ProfileEngineSetLauncher
    cluster = ipp.Cluster(**kwargs)
    environment = _engine_environment(profile, mode, threads_per_engine)
    cluster.config.EngineLauncher.environment = environment
    if mode == "batch":
        template = engine_batch_template(profile, nodes, ranks_per_node, account=account, queue=queue,
                                         walltime=walltime, job_name=cluster_id[:64], activate=sys.prefix)
        launcher_config = cluster.config.SlurmEngineSetLauncher if profile.scheduler == "slurm" else cluster.config.PBSEngineSetLauncher
        launcher_config.batch_template = template
        # the rendered script is kept beside ipyparallel's logs, not in the working directory
        suffix = "sbatch" if profile.scheduler == "slurm" else "pbs"
        launcher_config.batch_file_name = str(Path(cluster.profile_dir) / "log" / f"{cluster_id}-engines.{suffix}")
    else:
        command = profile.launch_command(nodes, ranks_per_node)
        command[0] = profile.launcher_path()
        cluster.config.MPILauncher.mpi_cmd = command
    log.info("starting %d engines (%s, profile %s)", n, mode, profile.name)
    try:
        cluster.start_cluster_sync()
        client = cluster.connect_client_sync()
        _wait_for_engines(cluster, client, n, kwargs["engine_timeout"], mode)
    except BaseException:  # noqa: BLE001 - stop whatever started, then re-raise
        try:
            cluster.stop_cluster_sync()
        finally:
            raise
    _write_sidecar(cluster, profile, mode)
    return EngineCluster(cluster, client, profile, mode)


def _wait_for_engines(cluster: Any, client: Any, n: int, timeout: float, mode: str) -> None:
    """Wait until ``n`` engines registered; fail at once when the engines' launcher exits first."""
    started = time.monotonic()
    with progress_bar(total=n, desc="engines", unit="engine", leave=False) as bar:
        while len(client.ids) < n:
            if len(client.ids) > bar.n:
                bar.update(len(client.ids) - bar.n)
            engine_set = cluster.engine_set
            if mode != "batch" and _launcher_exited(engine_set):
                output = engine_set.get_output(remove=False)[-3000:]
                raise RuntimeError(f"the engines' launcher exited before {n} engines connected "
                                   f"({len(client.ids)} did); its output:\n{output}")
            if time.monotonic() - started > timeout:
                hint = " (the engines' job may still wait in the queue: see squeue/qstat)" if mode == "batch" else ""
                raise TimeoutError(f"{len(client.ids)} of {n} engines connected within {timeout:.0f} s{hint}")
            time.sleep(0.2)
        bar.update(n - bar.n)


def _write_sidecar(cluster: Any, profile: Profile, mode: str) -> None:
    path = _sidecar(cluster.profile_dir, cluster.cluster_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"profile": str(profile.source or profile.name), "mode": mode,
                                        "engines": cluster.n, "started": time.time()}))


def running() -> pd.DataFrame:
    """gfmkit clusters whose ipyparallel cluster files exist in the default IPython profile."""
    rows = []
    for cluster in _gfmkit_clusters().values():
        side = _sidecar(cluster.profile_dir, cluster.cluster_id)
        info = json.loads(side.read_text()) if side.is_file() else {}
        rows.append({"cluster_id": cluster.cluster_id, "profile": info.get("profile"), "mode": info.get("mode"),
                     "engines": info.get("engines"), "started": pd.to_datetime(info.get("started"), unit="s")
                     if info.get("started") else None, "cluster_file": cluster.cluster_file})
    return pd.DataFrame(rows, columns=["cluster_id", "profile", "mode", "engines", "started", "cluster_file"])


def attach(cluster_id: str | None = None, *, timeout: float = 60.0) -> EngineCluster:
    """Reconnect to a running gfmkit cluster (e.g. after a kernel restart); the newest by default.

    Only clusters started with ``persist=True`` outlive the Python process that started them.
    """
    from gfmkit.cluster.profiles import load_profile

    clusters = _gfmkit_clusters()
    if not clusters:
        raise ClusterNotFound("no running gfmkit cluster to attach to (start one with gfmkit.cluster.start(..., persist=True))")
    if cluster_id is None:
        cluster_id = max(clusters, key=lambda c: Path(clusters[c].cluster_file).stat().st_mtime)
    if cluster_id not in clusters:
        raise ClusterNotFound(f"no running gfmkit cluster {cluster_id!r}; running: {sorted(clusters)}")
    cluster = clusters[cluster_id]
    side = _sidecar(cluster.profile_dir, cluster_id)
    info = json.loads(side.read_text()) if side.is_file() else {"profile": "local", "mode": "local"}
    client = cluster.connect_client_sync()
    client.wait_for_engines(int(info.get("engines") or 1), timeout=timeout)
    return EngineCluster(cluster, client, load_profile(info["profile"]), info["mode"])


def _gfmkit_clusters() -> dict[str, Any]:
    from ipyparallel.cluster.cluster import ClusterManager

    return {c.cluster_id: c for c in ClusterManager().load_clusters().values() if c.cluster_id.startswith(CLUSTER_PREFIX)}


def stop_clusters(cluster_ids: list[str] | None = None) -> list[str]:
    """Stop running gfmkit clusters (all by default), engines and controller; returns their ids."""
    clusters = _gfmkit_clusters()
    unknown = sorted(set(cluster_ids or []) - set(clusters))
    if unknown:
        raise ClusterNotFound(f"no running gfmkit cluster {unknown}; running: {sorted(clusters)}")
    stopped = []
    for cluster_id in cluster_ids or sorted(clusters):
        cluster = clusters[cluster_id]
        cluster.stop_cluster_sync()
        _sidecar(cluster.profile_dir, cluster_id).unlink(missing_ok=True)
        stopped.append(cluster_id)
    return stopped
