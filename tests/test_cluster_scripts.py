"""Batch scripts and Jupyter kernels from machine profiles: valid bash, each site's launch details, and
values from the caller that reach the program verbatim without ever running."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gfmkit.cli import main
from gfmkit.cluster import (
    install_kernel,
    load_profile,
    render_batch_script,
    render_kernel_launcher,
    submit_chain,
)

SITES = ["frontier", "aurora", "perlmutter"]
# Prints its arguments and a few environment variables as JSON, to the file named by $GFMKIT_TEST_OUT.
REPORT = (
    "import json, os, sys; json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': {k: os.environ.get(k) for k in "
    "('GFMKIT_TEST', 'GFMKIT_ARRAY_INDEX', 'GFMKIT_SCRATCH', 'MIOPEN_USER_DB_PATH', 'CCL_ATL_TRANSPORT')}}, "
    "open(os.environ['GFMKIT_TEST_OUT'], 'w'))"
)


@pytest.fixture(autouse=True)
def shipped_profiles_only(tmp_path, monkeypatch):
    monkeypatch.delenv("GFMKIT_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def bash_syntax_ok(text: str, tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text(text)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def stand_ins(tmp_path: Path) -> Path:
    """A bin directory with stand-in srun/mpiexec (drop $GFMKIT_FAKE_SKIP launcher arguments, exec the rest)
    and a stand-in `module` that records what it was asked to load."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "mpiexec"):
        (bin_dir / name).write_text('#!/bin/bash\nshift "$GFMKIT_FAKE_SKIP"\nexec "$@"\n')
    (bin_dir / "module").write_text('#!/bin/bash\nprintf "%s\\n" "$@" >> "$GFMKIT_MODULE_LOG"\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("name", ["local", *SITES])
def test_every_profile_renders_a_valid_bash_script(name, tmp_path):
    site = name != "local"
    text = render_batch_script(
        name,
        ["gfmkit", "train", "train config.yaml"],
        nodes=2 if site else 1,
        account="ABC123" if site else None,
        array="0-9" if site else None,
        depends_on=["1234", "1235"] if site else None,
        extra_env={"GFMKIT_TEST": "a b"},
        activate=sys.prefix,
    )
    bash_syntax_ok(text, tmp_path)
    assert text.startswith("#!/bin/bash")
    assert text.rstrip().endswith("gfmkit train 'train config.yaml'")
    assert f"export PATH={Path(sys.prefix).absolute() / 'bin'}:" in text


def test_frontier_script_has_olcf_launch_details():
    text = render_batch_script("frontier", ["gfmkit", "train", "t.yaml"], nodes=2, account="ABC123", queue="batch",
                               walltime=90, array="0-9", depends_on="1234")
    for line in ["#SBATCH --nodes=2", "#SBATCH --account=ABC123", "#SBATCH --partition=batch", "#SBATCH --time=01:30:00",
                 "#SBATCH --array=0-9", "#SBATCH --dependency=afterok:1234", "#SBATCH --network=disable_rdzv_get",
                 'export NCCL_SOCKET_IFNAME="hsn0"', 'cd "${SLURM_SUBMIT_DIR}" || exit 1',
                 'export GFMKIT_ARRAY_INDEX="${SLURM_ARRAY_TASK_ID:-}"',
                 "srun -N 2 -n 16 --ntasks-per-node=8 -c 7 --gpus-per-task=1 --gpu-bind=closest gfmkit train t.yaml"]:
        assert line in text.splitlines()
    assert "module load PrgEnv-gnu rocm rccl-net-plugin craype-accel-amd-gfx90a" in text
    assert 'export MIOPEN_USER_DB_PATH="${GFMKIT_SCRATCH}/' in text


def test_aurora_script_has_alcf_launch_details():
    text = render_batch_script("aurora", ["gfmkit", "train", "t.yaml"], nodes=2, account="ABC", array="0-9",
                               depends_on="4321.aurora-pbs-0001")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash -l"
    for line in ["#PBS -l select=2", "#PBS -l place=scatter", "#PBS -l filesystems=flare:home", "#PBS -A ABC",
                 "#PBS -q debug", "#PBS -l walltime=01:00:00", "#PBS -J 0-9", "#PBS -W depend=afterok:4321.aurora-pbs-0001",
                 'export CCL_PROCESS_LAUNCHER="pmix"', 'export FI_MR_CACHE_MONITOR="userfaultfd"',
                 'cd "${PBS_O_WORKDIR}" || exit 1']:
        assert line in lines
    assert lines[-1].startswith("mpiexec -n 24 -ppn 12 --cpu-bind=list:4-7:")


def test_perlmutter_script_has_nersc_launch_details():
    text = render_batch_script("perlmutter", ["gfmkit", "train", "t.yaml"], nodes=3)
    lines = text.splitlines()
    for line in ["#SBATCH -C gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --qos=regular", "#SBATCH --nodes=3"]:
        assert line in lines
    assert lines[-1] == "srun -N 3 -n 12 --ntasks-per-node=4 -c 32 --cpu-bind=cores --gpus-per-node=4 gfmkit train t.yaml"
    assert any(line.startswith("# no account given") for line in lines)


@pytest.mark.parametrize("name", ["frontier", "aurora"])
def test_the_launcher_line_runs_and_user_values_stay_inert(name, tmp_path):
    bin_dir, submit_dir, pwned = stand_ins(tmp_path), tmp_path / "submit dir", tmp_path / "pwned"
    submit_dir.mkdir()
    hostile = [f"$(touch {pwned})", f"`touch {pwned}`", f"a b; touch {pwned}", "it's", '"quoted" $HOME']
    profile = load_profile(name)
    text = render_batch_script(profile, [sys.executable, "-c", REPORT, *hostile], nodes=2, account="ABC", array="0-3",
                               extra_env={"GFMKIT_TEST": f"$(touch {pwned}) x"})
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", USER="tester", SLURM_JOB_ID="77",
               SLURM_SUBMIT_DIR=str(submit_dir), PBS_O_WORKDIR=str(submit_dir), SLURM_ARRAY_TASK_ID="3",
               PBS_ARRAY_INDEX="3", GFMKIT_FAKE_SKIP=str(len(profile.launch_command(2)) - 1),
               GFMKIT_MODULE_LOG=str(tmp_path / "modules.log"), GFMKIT_TEST_OUT=str(tmp_path / "out.json"))
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["argv"] == hostile
    assert Path(report["cwd"]) == submit_dir
    assert report["env"]["GFMKIT_TEST"] == f"$(touch {pwned}) x"
    assert report["env"]["GFMKIT_ARRAY_INDEX"] == "3"
    assert not pwned.exists()
    assert (tmp_path / "modules.log").read_text().split() == ["load", *profile.modules]
    if name == "frontier":  # profile values are shell text: they expand in the job
        assert report["env"]["MIOPEN_USER_DB_PATH"] == "/tmp/tester-miopen-77"
    else:
        assert report["env"]["CCL_ATL_TRANSPORT"] == "mpi"


def test_local_script_runs_with_the_environments_mpiexec(tmp_path):
    pwned = tmp_path / "pwned"
    hostile = [f"$(touch {pwned})", "two words"]
    text = render_batch_script("local", [sys.executable, "-c", REPORT, *hostile], ranks_per_node=1, workdir=tmp_path)
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = dict(os.environ, GFMKIT_TEST_OUT=str(tmp_path / "out.json"), OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["argv"] == hostile and Path(report["cwd"]) == tmp_path and not pwned.exists()
    assert report["env"]["GFMKIT_SCRATCH"]  # ${TMPDIR:-/tmp} expanded


def test_a_hostile_profile_path_stays_in_its_comment(tmp_path):
    pwned = tmp_path / "pwned"
    folder = tmp_path / "x\ntouch pwned\n$(touch pwned)"  # relative to the cwd the script runs in
    folder.mkdir()
    shutil.copy(load_profile("local").source, folder / "mine.yaml")
    text = render_batch_script(folder / "mine.yaml", [sys.executable, "-c", REPORT], ranks_per_node=1)
    env = dict(os.environ, GFMKIT_TEST_OUT=str(tmp_path / "out.json"))
    result = subprocess.run(["bash", "-c", text], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.json").exists() and not pwned.exists()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"account": "$(touch /tmp/gfmkit-pwned)"}, "account"),
        ({"account": "my project"}, "account"),
        ({"job_name": "my job"}, "job_name"),
        ({"queue": "batch\n#SBATCH --exclusive"}, "queue"),
        ({"depends_on": "12;rm -rf x"}, "depends_on"),
        ({"walltime": "soon"}, "walltime"),
        ({"array": "0-9 --x"}, "array"),
        ({"extra_env": {"A B": "x"}}, "extra_env"),
        ({"nodes": 0}, "nodes"),
    ],
)
def test_unsafe_header_values_are_refused_naming_the_field(kwargs, field):
    args = {"nodes": 1, **kwargs}
    with pytest.raises(ValueError, match=field):
        render_batch_script("frontier", ["true"], **args)


def test_submit_chain_makes_each_job_wait_for_the_last(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {log}\necho "$((100 + $(wc -l < {log})));cluster"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert submit_chain("frontier", ["a.sh", "b.sh", "c.sh"]) == ["101", "102", "103"]
    assert log.read_text().splitlines() == [
        "--parsable a.sh", "--parsable --dependency=afterok:101 b.sh", "--parsable --dependency=afterok:102 c.sh",
    ]


def test_cli_script_and_profiles(tmp_path, capsys):
    assert main(["cluster", "profiles"]) == 0
    table = capsys.readouterr().out
    for name in ["local", "frontier", "aurora", "perlmutter"]:
        assert name in table
    assert "GPUs/node" in table and "hpc_profiles/aurora.yaml" in table

    assert main(["cluster", "script", "--profile", "frontier", "--nodes", "2", "--account", "ABC", "--after", "7",
                 "--", "gfmkit", "train", "my config.yaml"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --dependency=afterok:7" in out
    assert out.rstrip().endswith("--gpu-bind=closest gfmkit train 'my config.yaml'")

    target = tmp_path / "jobs" / "train.sh"
    assert main(["cluster", "script", "--profile", "aurora", "--output", str(target), "--no-activate",
                 "--", "gfmkit", "train", "t.yaml"]) == 0
    assert target.read_text().startswith("#!/bin/bash -l\n#PBS") and "VIRTUAL_ENV" not in target.read_text()

    assert main(["cluster", "script", "--profile", "frontier", "--account", "a b", "--", "true"]) == 1
    assert "account 'a b'" in capsys.readouterr().err
    assert main(["cluster", "script", "--profile", "frontier"]) == 1
    assert "after '--'" in capsys.readouterr().err


def kernel_test_profile(tmp_path: Path) -> Path:
    path = tmp_path / "kernelsite.yaml"
    path.write_text(textwrap.dedent("""
        scheduler: slurm
        launcher: {command: srun}
        backend: gloo
        gpus_per_node: 0
        ranks_per_node: 1
        modules: [no-such-module]
        env: {GFMKIT_TEST: "${GFMKIT_KERNEL_HOME}/k"}
    """))
    return path


def test_kernel_install_writes_a_kernelspec_that_starts(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    profile = load_profile(kernel_test_profile(tmp_path))
    launcher = render_kernel_launcher(profile)
    bash_syntax_ok(launcher, tmp_path)
    assert launcher.rstrip().endswith('-m ipykernel_launcher -f "$1"')

    where = install_kernel(profile, prefix=tmp_path / "prefix", display_name="test kernel")
    assert where == tmp_path / "prefix" / "share" / "jupyter" / "kernels" / "gfmkit-kernelsite"
    spec = json.loads((where / "kernel.json").read_text())
    assert spec["argv"] == ["/bin/bash", str(where / "launch.sh"), "{connection_file}"]
    assert spec["display_name"] == "test kernel" and spec["metadata"]["gfmkit"]["profile"] == "kernelsite"
    bash_syntax_ok((where / "launch.sh").read_text(), tmp_path)

    specs = KernelSpecManager(kernel_dirs=[str(where.parent)])
    manager = KernelManager(kernel_name=where.name, kernel_spec_manager=specs)
    manager.start_kernel(env=dict(os.environ, GFMKIT_KERNEL_HOME="/home/x", PATH="/usr/bin:/bin"))
    try:
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        printed: list[str] = []

        def collect(msg):
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])

        code = "import os, sys; print(os.environ['GFMKIT_TEST'], sys.executable, os.environ['PATH'].split(':')[0])"
        client.execute_interactive(code, output_hook=collect, timeout=60)
        client.stop_channels()
    finally:
        manager.shutdown_kernel(now=True)
    value, executable, first_on_path = "".join(printed).split()
    assert value == "/home/x/k"
    assert Path(executable) == Path(sys.executable)
    assert Path(first_on_path) == Path(sys.prefix).absolute() / "bin"


def test_cli_kernel_install(tmp_path, capsys):
    profile = kernel_test_profile(tmp_path)
    assert main(["kernel", "install", "--profile", str(profile), "--name", "lab-k", "--prefix", str(tmp_path / "p")]) == 0
    assert "installed kernel lab-k" in capsys.readouterr().out
    assert (tmp_path / "p" / "share" / "jupyter" / "kernels" / "lab-k" / "kernel.json").is_file()
    assert main(["kernel", "install", "--profile", "local", "--name", "Bad Name", "--prefix", str(tmp_path)]) == 1
    assert "kernel name 'Bad Name'" in capsys.readouterr().err
