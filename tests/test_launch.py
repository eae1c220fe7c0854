"""Every component agrees on how the process was launched: gfmkit.launch, comm.world(), the trainer's
distributed set-up, the CLI, the studies and the cluster engines (issue #13)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gfmkit.comm as comm_module
import gfmkit.train.distributed as distributed
from gfmkit import launch as launch_module
from gfmkit.cli.common import rank as cli_rank
from gfmkit.cluster import engines
from gfmkit.comm import SerialComm, TorchComm, world
from gfmkit.launch import detect_launch, expand_nodelist, first_host, master_address
from gfmkit.studies.runs import open_study

#: Variables of every launcher and scheduler gfmkit knows, cleared before each case.
LAUNCH_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "PALS_", "MV2_", "SLURM_", "PBS_", "GFMKIT_MPI")
LAUNCH_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MPI_LOCALRANKID")

SLURM_JOB = {"SLURM_JOB_ID": "7", "SLURM_JOBID": "7", "SLURM_JOB_NODELIST": "nid[001-004,007]", "SLURM_NTASKS": "8",
             "SLURM_JOB_NUM_NODES": "5"}
SLURM_STEP = {**SLURM_JOB, "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NODELIST": "nid[003-004]",
              "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
JOB_NODES = ("nid001", "nid002", "nid003", "nid004", "nid007")
STEP_NODES = ("nid003", "nid004")
PBS_NODES = ("x1001c0s0b0n0", "x1001c0s0b0n1")
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node7",
            "MASTER_PORT": "1234"}


class FakeComm:
    """What mpi4py's COMM_WORLD (and its per-node split) would say."""

    def __init__(self, rank: int, size: int, node: FakeComm | None = None):
        self.rank, self.size, self.node = rank, size, node

    def Get_rank(self):  # noqa: N802
        return self.rank

    def Get_size(self):  # noqa: N802
        return self.size

    def Split_type(self, kind):  # noqa: N802
        return self.node

    def Free(self):  # noqa: N802
        pass


class FakeMPI:
    """An initialised mpi4py.MPI on an ipyparallel engine: rank 2 of 3, the first rank of its node."""

    COMM_TYPE_SHARED = "shared"
    COMM_WORLD = FakeComm(2, 3, node=FakeComm(0, 1))

    @staticmethod
    def Is_initialized():  # noqa: N802
        return True

    @staticmethod
    def Is_finalized():  # noqa: N802
        return False


# id: (environment, an initialised mpi4py in sys.modules, expected launch, world() kind, master address)
# expected launch: launcher, rank, world size, local rank, scheduler, nodes, allocated nodes, mpi
CASES = {
    "plain process": ({}, False, ("single", 0, 1, 0, None, (), None, False), SerialComm, None),
    "MPICH Hydra mpiexec": ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"}, False,
                            ("mpich", 1, 2, 1, None, (), None, True), "mpi", None),
    "Open MPI mpirun": ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, False,
                        ("openmpi", 2, 4, 0, None, (), None, True), "mpi", None),
    "MVAPICH": ({"MV2_COMM_WORLD_RANK": "1", "MV2_COMM_WORLD_SIZE": "2", "MV2_COMM_WORLD_LOCAL_RANK": "1"}, False,
                ("mvapich", 1, 2, 1, None, (), None, True), "mpi", None),
    "PALS mpiexec in PBS": ({"PBS_JOBID": "42.pbs", "PALS_RANKID": "13", "PALS_LOCAL_RANKID": "1", "PMI_SIZE": "24",
                             "PMI_RANK": "13"}, False, ("pals", 13, 24, 1, "pbs", PBS_NODES, 2, True), "mpi", None),
    "PBS batch script": ({"PBS_JOBID": "42.pbs", "PBS_ENVIRONMENT": "PBS_BATCH"}, False,
                         ("single", 0, 1, 0, "pbs", PBS_NODES, 2, False), SerialComm, None),
    "Slurm step --mpi=cray_shasta": ({**SLURM_STEP, "PMI_RANK": "3", "PMI_SIZE": "4"}, False,
                                     ("mpich", 3, 4, 1, "slurm", STEP_NODES, 5, True), "mpi", None),
    "Slurm step --mpi=pmix": ({**SLURM_STEP, "PMIX_RANK": "3"}, False,
                              ("pmix", 3, 4, 1, "slurm", STEP_NODES, 5, True), "mpi", None),
    "Slurm step --mpi=none": (SLURM_STEP, False, ("slurm", 3, 4, 1, "slurm", STEP_NODES, 5, False), TorchComm,
                              ("nid003", 29500)),
    "Slurm batch shell": ({**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, False,
                          ("single", 0, 1, 0, "slurm", JOB_NODES, 5, False), SerialComm, None),
    "torchrun": (TORCHRUN, False, ("torchrun", 1, 2, 1, None, (), None, False), TorchComm, ("node7", 1234)),
    "torchrun in Slurm, GFMKIT_MPI=0": ({**SLURM_JOB, **TORCHRUN, "GFMKIT_MPI": "0"}, False,
                                        ("torchrun", 1, 2, 1, "slurm", JOB_NODES, 5, False), TorchComm, ("node7", 1234)),
    "mpiexec with GFMKIT_MPI=0": ({"PMI_RANK": "1", "PMI_SIZE": "2", "GFMKIT_MPI": "0", "MASTER_ADDR": "hsn0"}, False,
                                  ("mpich", 1, 2, 1, None, (), None, False), TorchComm, ("hsn0", 29500)),
    "ipyparallel MPI engine": ({}, True, ("ipyparallel", 2, 3, 0, None, (), None, True), "mpi", None),
}


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """Set up the process as if started by ``env``; world()'s MPI is a fake saying the same ranks."""

    def setup(env: dict[str, str], mpi_imported: bool) -> dict[str, object]:
        for name in list(os.environ):
            if name.startswith(LAUNCH_PREFIXES) or name in LAUNCH_NAMES:
                monkeypatch.delenv(name)
        if "PBS_JOBID" in env:
            nodefile = tmp_path / "nodefile"
            nodefile.write_text("\n".join([PBS_NODES[0]] * 2 + [PBS_NODES[1]] * 2) + "\n")
            env = {**env, "PBS_NODEFILE": str(nodefile)}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if mpi_imported:
            monkeypatch.setitem(sys.modules, "mpi4py.MPI", FakeMPI)
            monkeypatch.setitem(sys.modules, "ipyparallel", sys.modules.get("ipyparallel", object()))
        else:  # an MPI that an earlier test initialised in this process does not count here
            monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
        truth = detect_launch()
        # mpi4py's COMM_WORLD under an MPI launcher says what the launcher's variables say
        fake_world = FakeMPI.COMM_WORLD if mpi_imported else FakeComm(truth.rank, truth.world_size)
        monkeypatch.setattr(comm_module, "_mpi_world", lambda: fake_world)
        joined: list[object] = []
        monkeypatch.setattr(distributed, "join_process_group", lambda launch, backend, timeout_s: joined.append(launch) or "x:1")
        return {"fake_world": fake_world, "joined": joined}

    return setup


@pytest.mark.parametrize("case", list(CASES))
def test_every_component_agrees_on_the_launch(case, launched, tmp_path):
    env, mpi_imported, expected, kind, master = CASES[case]
    seams = launched(env, mpi_imported)
    launcher, rank, size, local, scheduler, nodes, allocated, mpi = expected

    truth = detect_launch()
    got = (truth.launcher, truth.rank, truth.world_size, truth.local_rank, truth.scheduler, truth.nodes,
           truth.allocated_nodes, truth.mpi)
    assert got == expected
    assert truth.scheduler_host == (nodes[0] if nodes else None)

    comm = world()
    if kind == "mpi":
        assert comm is seams["fake_world"]
    else:
        assert type(comm) is kind
    assert (comm.rank, comm.size) == (rank, size)
    assert cli_rank() == rank

    trainer = distributed.init_distributed("cpu")
    assert (trainer.rank, trainer.world_size, trainer.local_rank, trainer.is_main) == (rank, size, local, rank == 0)
    assert (trainer.describe()["launcher"], trainer.describe()["scheduler"], trainer.launch.nodes) == (launcher, scheduler, nodes)
    assert trainer.launch == truth
    assert len(seams["joined"]) == (size > 1)  # the trainer joins a process group only for several ranks

    assert engines.in_allocation() == scheduler
    assert engines.allocated_nodes() == allocated

    if master is not None:  # a launch without MPI meets at MASTER_ADDR:MASTER_PORT or the scheduler's first node
        assert master_address(truth) == master

    study = tmp_path / "study"
    open_study(study, "study.json", {"seed": 1, "runs": ["a"]}, ["runs"], "test")
    assert (study / "study.json").is_file() == (rank == 0)


def test_mpi_that_disagrees_with_the_launch_is_an_error(launched):
    """GFMKIT_MPI=1 under torchrun: every process is an MPI singleton, so world() refuses."""
    seams = launched({**TORCHRUN, "GFMKIT_MPI": "1"}, False)
    seams["fake_world"].rank, seams["fake_world"].size = 0, 1
    with pytest.raises(RuntimeError, match="MPI says rank 0 of 1, but the torchrun launch says rank 1 of 2"):
        world()


def test_slurm_node_lists_expand():
    assert expand_nodelist("nid[001-003,007],login1") == ("nid001", "nid002", "nid003", "nid007", "login1")
    assert expand_nodelist("x[1-2]y[3,5]") == ("x1y3", "x1y5", "x2y3", "x2y5")
    assert expand_nodelist("gpu[09-10]") == ("gpu09", "gpu10")
    assert expand_nodelist(" ") == () and first_host("") is None


def test_launcher_variables_are_read_in_one_module():
    """Only gfmkit/launch.py names launcher or scheduler variables as strings, besides two known others."""
    root = Path(launch_module.__file__).parent
    pattern = re.compile(r"""["'](PMI_\w+|PMIX_\w+|OMPI_\w+|PALS_\w+|MV2_\w+|SLURM_\w+|PBS_\w+|RANK|LOCAL_RANK|WORLD_SIZE|"""
                         r"""MASTER_ADDR|MASTER_PORT|GFMKIT_MPI)["']""")
    readers = {str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())}
    others = {
        "cluster/scripts.py",  # writes ${SLURM_ARRAY_TASK_ID} and the like into job scripts; reads nothing
        "train/signals.py",  # the job's end time (SLURM_JOB_END_TIME), not how the process was launched
    }
    assert readers - others == {"launch.py"}


# -- a torchrun-style launch of 2 processes -----------------------------------------------------------

STUDY_SCRIPT = """
import json, os, sys
from pathlib import Path

import numpy as np
import torch

from gfmkit.comm import world
from gfmkit.studies import runs
from gfmkit.train.distributed import init_distributed

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
write = runs.atomic_write_text


def counted(path, text):  # every study-file write, with the rank that made it
    with open(out / "writes.log", "a") as fh:
        fh.write(f"{rank} {Path(path).name}\\n")
    write(path, text)


runs.atomic_write_text = counted
comm = world()
result = {"comm": type(comm).__name__, "rank": comm.rank, "size": comm.size}
runs.open_study(out / "study", "study.json", {"seed": 1, "runs": ["a", "b"]}, ["runs"], "test")

trainer = init_distributed("cpu", timeout_s=60)  # as a study's training run does
result["trainer"] = [trainer.rank, trainer.world_size, trainer.local_rank, trainer.launch.launcher, trainer.owns_group]
total = torch.tensor([rank + 1.0])
trainer.allreduce_(total)
result["allreduce_"] = total.item()
result["allgather"] = comm.allgather(rank)  # on the trainer's group
trainer.close()  # as the trainer does at the end of a run

runs.on_rank_0(lambda: (out / "table.csv").open("a").write(f"{rank}\\n"))  # the comm joins a group itself
result["bcast"] = comm.bcast("from 0" if rank == 0 else None)
result["gather"] = comm.gather(rank * 10)
result["scatter"] = comm.scatter([[5], [6]] if rank == 0 else None)
result["exscan"] = comm.exscan(rank + 1)
result["allreduce"] = comm.allreduce(rank + 1)
if rank == 1:
    comm.Send(np.arange(4, dtype=np.float32), dest=0, tag=3)
else:
    buffer = np.empty(4, dtype=np.float32)
    comm.Recv(buffer, source=1, tag=3)
    result["recv"] = buffer.tolist()
try:
    runs.on_rank_0(lambda: 1 / 0)
except Exception as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
again = init_distributed("cpu", timeout_s=60)  # the next run reuses the comm's group
again.barrier()
result["reused"] = [again.owns_group, again.backend]
(out / f"result{rank}.json").write_text(json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.mpi
def test_torchrun_style_study_writes_its_files_once(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(textwrap.dedent(STUDY_SCRIPT))
    base = {k: v for k, v in os.environ.items() if not (k.startswith(LAUNCH_PREFIXES) or k in LAUNCH_NAMES)}
    base.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    assert (tmp_path / "writes.log").read_text() == "0 study.json\n"
    assert (tmp_path / "table.csv").read_text() == "0\n"
    assert json.loads((tmp_path / "study" / "study.json").read_text())["runs"] == ["a", "b"]
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2)]
    for r, result in enumerate(results):
        assert (result["comm"], result["rank"], result["size"]) == ("TorchComm", r, 2)
        assert result["trainer"] == [r, 2, r, "torchrun", True]
        assert result["allreduce_"] == 3.0 and result["allgather"] == [0, 1] and result["bcast"] == "from 0"
        assert result["scatter"] == [[5], [6]][r] and result["exscan"] == [None, 1][r] and result["allreduce"] == 3
        assert result["reused"] == [False, "gloo"]
    assert results[0]["gather"] == [0, 10] and results[1]["gather"] is None
    assert results[0]["recv"] == [0.0, 1.0, 2.0, 3.0]
    assert results[0]["error"] == "ZeroDivisionError: division by zero"
    assert results[1]["error"] == "RuntimeError: rank 0 failed: ZeroDivisionError: division by zero"
