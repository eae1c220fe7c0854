"""ipyparallel engines from profiles: a local MPI cluster, DDP training on it, an engine that dies,
reattaching, and the Slurm/PBS paths through stand-in schedulers that run the rendered scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import tiny_config

from gfmkit.cluster import engines
from gfmkit.cluster.profiles import load_profile

pytestmark = pytest.mark.cluster

FAKE_SUBMIT = """#!/bin/bash
# stand-in {name}: runs the job script in a session of its own and prints a job id (that session's id)
script="${{@: -1}}"
setsid bash "$script" > "$script.out" 2>&1 < /dev/null &
echo "{answer}"
"""
FAKE_CANCEL = """#!/bin/bash
# stand-in scancel/qdel: ends the job's session
for id in "$@"; do kill -TERM -- "-${id%%.*}" 2>/dev/null; done
exit 0
"""
FAKE_LAUNCHER = '''#!{python}
"""stand-in srun / PALS mpiexec: keeps the rank count (-n N, --ntasks=N) and starts the program with
the real mpiexec; every other option is recorded and dropped."""
import os, sys
args, n, k = sys.argv[1:], 1, 0
with_value = ("-N", "-c", "-ppn", "--depth", "-d")
while k < len(args):
    a = args[k]
    if a in ("-n", "--ntasks", "-np"):
        n = int(args[k + 1]); k += 2; continue
    if a.startswith("--ntasks="):
        n = int(a.split("=", 1)[1])
    if not a.startswith("-") and (k == 0 or args[k - 1] not in with_value):
        break
    k += 1
with open(os.environ["GFMKIT_LAUNCH_LOG"], "a") as log:
    log.write(" ".join(sys.argv) + "\\n")
os.execv({mpiexec!r}, [{mpiexec!r}, "-n", str(n), *args[k:]])
'''


@pytest.fixture(autouse=True)
def ipython_dir(tmp_path, monkeypatch):
    """ipyparallel's cluster files and logs go to a fresh IPython directory, not the user's."""
    path = tmp_path / "ipython"
    monkeypatch.setenv("IPYTHONDIR", str(path))
    # engines import this module to run its functions (as they would import a user's module)
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    return path


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """sbatch/qsub/scancel/qdel/srun stand-ins first on PATH; returns (bin dir, launch log)."""
    from conftest import mpiexec

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    files = {
        "sbatch": FAKE_SUBMIT.format(name="sbatch", answer="Submitted batch job $!"),
        "qsub": FAKE_SUBMIT.format(name="qsub", answer="$!.pbs-standin"),
        "scancel": FAKE_CANCEL,
        "qdel": FAKE_CANCEL,
        "srun": FAKE_LAUNCHER.format(python=sys.executable, mpiexec=mpiexec()),
    }
    files["pals-mpiexec"] = files["srun"]
    for name, text in files.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "launch.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GFMKIT_LAUNCH_LOG", str(log))
    for name in ("SLURM_JOB_ID", "SLURM_JOBID", "PBS_JOBID"):
        monkeypatch.delenv(name, raising=False)
    return bin_dir, log


def wait_gone(pids, timeout=30.0) -> list[int]:
    """The pids still alive after ``timeout`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def engine_facts():
    import os

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return {"rank": comm.Get_rank(), "size": comm.Get_size(), "sum": comm.allreduce(comm.Get_rank() + 1),
            "threads": os.environ.get("OMP_NUM_THREADS"), "nccl_ifname": os.environ.get("NCCL_SOCKET_IFNAME"),
            "miopen": os.environ.get("MIOPEN_USER_DB_PATH"), "pid": os.getpid()}


def train_on_engine(config, run_dir):
    import torch

    from gfmkit.train import Trainer

    trainer = Trainer(config, run_dir)
    trainer.fit()
    flat = torch.cat([p.detach().flatten().double() for p in trainer.model.parameters()])
    return {"rank": trainer.dist.rank, "world": trainer.dist.world_size, "backend": trainer.dist.backend,
            "step": trainer.step, "weights": flat.tolist()}


def die_on_rank_one():
    import os

    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 1:
        os._exit(3)
    MPI.COMM_WORLD.barrier()  # rank 0 would wait here forever


def test_choose_mode_and_login_node_caps(tmp_path):
    local, frontier, aurora = load_profile("local"), load_profile("frontier"), load_profile("aurora")
    assert engines.choose_mode(local, {}) == "local"
    assert engines.choose_mode(frontier, {}) == "batch"
    assert engines.choose_mode(frontier, {"SLURM_JOB_ID": "12"}) == "allocation"
    assert engines.choose_mode(aurora, {"PBS_JOBID": "7.aurora"}) == "allocation"
    with pytest.raises(RuntimeError, match="inside a slurm job"):
        engines.choose_mode(aurora, {"SLURM_JOB_ID": "12"})
    assert engines.local_limits(2, None, cpus=8, login_node=False) == 4
    assert engines.local_limits(2, None, cpus=64, login_node=True) == engines.LOGIN_NODE_MAX_THREADS
    with pytest.raises(ValueError, match="login node allows 1 to 4"):
        engines.local_limits(8, None, cpus=64, login_node=True)
    with pytest.raises(ValueError, match="do not fit"):
        engines.local_limits(2, 3, cpus=4, login_node=False)
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x1\nx1\nx2\n")
    assert engines.allocated_nodes({"PBS_NODEFILE": str(nodefile)}) == 2
    assert engines.allocated_nodes({"SLURM_JOB_NUM_NODES": "3"}) == 3


def test_engine_template_keeps_shell_braces_for_ipyparallel():
    from IPython.utils.text import (
        EvalFormatter,  # what ipyparallel formats batch templates with
    )

    for name in ("frontier", "aurora"):
        template = engines.engine_batch_template(load_profile(name), 2, None, account="abc")
        rendered = EvalFormatter().format(template, program="ENGINE", program_args="--x 1")
        assert "ENGINE --mpi --x 1" in rendered
        assert "${SLURM_JOB_ID}" in rendered or name == "aurora"
        assert ("#PBS -V" in rendered) == (name == "aurora")
        subprocess.run(["bash", "-n"], input=rendered, text=True, check=True)


def test_local_cluster_mpi_ddp_training_and_clean_stop(demo_dir, tmp_path):
    config = tiny_config(demo_dir, max_steps=3, checkpoint_every=3, validate_every=3,
                         sampler={"batch_size": 6, "strategy": "uniform"})
    with engines.start("local", ranks_per_node=2, threads_per_engine=1) as cluster:
        assert cluster.mode == "local" and len(cluster) == 2
        facts = cluster.run(engine_facts, progress=False)
        assert [f["rank"] for f in facts] == [0, 1]
        assert all(f["size"] == 2 and f["sum"] == 3 and f["threads"] == "1" for f in facts)
        assert list(cluster.engines()["rank"]) == [0, 1]
        results = cluster.run(train_on_engine, config, str(tmp_path / "run"), progress=False)
        assert [r["world"] for r in results] == [2, 2] and [r["backend"] for r in results] == ["gloo"] * 2
        assert results[0]["step"] == 3 and results[0]["weights"] == results[1]["weights"]
        with pytest.raises(RuntimeError, match=r"rank 1\).*ZeroDivisionError"):
            cluster.run(_fail_on_rank_one, progress=False)
        pids = list(cluster.engine_pids) + [cluster.cluster.controller.process.pid, cluster.cluster.engine_set.process.pid]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert wait_gone(pids) == []
    assert engines.running().empty


def _fail_on_rank_one():
    from mpi4py import MPI

    return 1 / (1 - MPI.COMM_WORLD.Get_rank())


def test_an_engine_that_dies_is_an_error_not_a_hang():
    cluster = engines.start("local", ranks_per_node=2, threads_per_engine=1)
    try:
        started = time.monotonic()
        with pytest.raises(engines.EngineDied, match="stopped while the call was running"):
            cluster.run(die_on_rank_one, timeout=90, progress=False)
        assert time.monotonic() - started < 60
        with pytest.raises(engines.EngineDied, match="lost engines"):
            cluster.run(engine_facts)
        pids = list(cluster.engine_pids) + [cluster.cluster.controller.process.pid]
    finally:
        cluster.stop()
    assert wait_gone(pids) == []  # stop still cleans up: the surviving engine and the controller
    assert engines.running().empty


def test_reattach_after_the_kernel_is_gone(tmp_path):
    starter = textwrap.dedent("""
        from gfmkit.cluster import start
        cluster = start("local", ranks_per_node=2, threads_per_engine=1, persist=True)
        print(cluster.cluster_id)
    """)
    done = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=120, check=True)
    cluster_id = done.stdout.strip().splitlines()[-1]
    assert engines.running()["cluster_id"].tolist() == [cluster_id]
    cluster = engines.attach()
    try:
        assert cluster.cluster_id == cluster_id
        assert [f["sum"] for f in cluster.run(engine_facts, progress=False)] == [3, 3]
        pids = list(cluster.engine_pids)
    finally:
        assert engines.stop_clusters() == [cluster_id]
    assert wait_gone(pids) == []
    assert engines.running().empty


def test_slurm_engines_from_a_login_node_run_the_rendered_script(stand_ins):
    _, log = stand_ins
    with engines.start("frontier", nodes=1, ranks_per_node=2, threads_per_engine=1, account="proj_1",
                       walltime="00:10:00", timeout=90) as cluster:
        assert cluster.mode == "batch"
        facts = cluster.run(engine_facts, progress=False)
        script = Path(cluster.cluster.engine_set.batch_file).read_text()
        pids = [f["pid"] for f in facts]
    assert [f["sum"] for f in facts] == [3, 3]
    assert all(f["nccl_ifname"] == "hsn0" for f in facts)  # exported by the rendered script
    assert "#SBATCH --account=proj_1" in script and "#SBATCH --time=00:10:00" in script
    launched = log.read_text()
    assert "srun -N 1 -n 2 --ntasks-per-node=2" in launched and "--gpu-bind=closest" in launched
    assert "ipyparallel.engine --mpi" in launched
    assert wait_gone(pids) == []


def test_pbs_engines_from_a_login_node_run_the_rendered_script(stand_ins, tmp_path):
    bin_dir, log = stand_ins
    # Aurora's profile, its mpiexec (PALS) replaced by the stand-in: the pip mpich has no --cpu-bind=list
    text = (Path(load_profile("aurora").source).read_text()
            .replace("command: mpiexec", f"command: {bin_dir / 'pals-mpiexec'}"))
    profile = tmp_path / "aurora-standin.yaml"
    profile.write_text(text)
    with engines.start(str(profile), nodes=1, ranks_per_node=2, threads_per_engine=1, account="proj1",
                       timeout=90) as cluster:
        facts = cluster.run(engine_facts, progress=False)
        script = Path(cluster.cluster.engine_set.batch_file).read_text()
        pids = [f["pid"] for f in facts]
    assert [f["size"] for f in facts] == [2, 2]
    assert "#PBS -V" in script and "#PBS -l place=scatter" in script and "#PBS -l select=1" in script
    assert "-ppn 2 --cpu-bind=list:" in log.read_text()
    assert wait_gone(pids) == []


def test_engines_inside_an_allocation_use_the_profile_launcher(stand_ins, monkeypatch):
    _, log = stand_ins
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    with engines.start("frontier", ranks_per_node=2, threads_per_engine=1) as cluster:
        assert cluster.mode == "allocation"
        facts = cluster.run(engine_facts, progress=False)
        pids = list(cluster.engine_pids)
    assert [f["rank"] for f in facts] == [0, 1]
    assert all(f["nccl_ifname"] == "hsn0" and f["miopen"].endswith("-miopen-4242") for f in facts)
    assert "srun -N 1 -n 2 --ntasks-per-node=2" in log.read_text()
    assert wait_gone(pids) == []
