"""Machine profiles: the shipped four load, names resolve user directories first, errors name file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gfmkit.cluster.profiles import (
    SHIPPED_DIR,
    available_profiles,
    find_profile,
    load_profile,
    parse_walltime,
)
from gfmkit.config import ConfigError

MINIMAL = """
scheduler: slurm
launcher: {command: srun, args: ["-n", "{ranks}"]}
backend: nccl
gpus_per_node: 4
ranks_per_node: 4
"""


@pytest.fixture(autouse=True)
def no_user_profiles(tmp_path, monkeypatch):
    """Only the shipped profiles, whatever the machine running the tests has in its config directory."""
    monkeypatch.delenv("GFMKIT_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_profiles_load_with_their_launch_lines():
    assert {"local", "frontier", "aurora", "perlmutter"} <= set(available_profiles())
    frontier = load_profile("frontier")
    assert frontier.name == "frontier" and frontier.source == SHIPPED_DIR / "frontier.yaml"
    assert frontier.launch_command(2) == [
        "srun", "-N", "2", "-n", "16", "--ntasks-per-node=8", "-c", "7", "--gpus-per-task=1", "--gpu-bind=closest",
    ]
    aurora = load_profile("aurora")
    assert aurora.launch_command(2)[:5] == ["mpiexec", "-n", "24", "-ppn", "12"]
    assert aurora.launch_command(2)[5].startswith("--cpu-bind=list:")
    assert (aurora.scheduler, aurora.backend, aurora.gpus_per_node) == ("pbs", "xccl", 12)
    perlmutter = load_profile("perlmutter")
    assert perlmutter.launch_line(1) == "srun -N 1 -n 4 --ntasks-per-node=4 -c 32 --cpu-bind=cores --gpus-per-node=4"
    local = load_profile("local")
    assert (local.scheduler, local.backend, local.controller_ip) == ("none", "gloo", "127.0.0.1")
    # The environment's own mpiexec: next to this Python when there is one.
    assert Path(local.launch_command(1)[0]).name == "mpiexec"
    for site in (frontier, aurora, perlmutter):
        assert site.controller_ip == "*" and site.walltime == "01:00:00"


def test_ranks_per_node_changes_ranks_and_cores():
    frontier = load_profile("frontier")
    assert frontier.launch_command(3, ranks_per_node=4)[3:8] == ["-n", "12", "--ntasks-per-node=4", "-c", "14"]
    with pytest.raises(ValueError, match="nodes must be a positive integer"):
        frontier.launch_command(0)
    with pytest.raises(ValueError, match="runs on one node"):
        load_profile("local").launch_command(2)


def test_user_directories_come_before_the_shipped_profiles(tmp_path, monkeypatch):
    env_dir, config = tmp_path / "mine", tmp_path / "config"
    write(env_dir / "frontier.yaml", MINIMAL)
    write(config / "gfmkit" / "profiles" / "lab.yaml", MINIMAL)
    write(config / "gfmkit" / "profiles" / "aurora.yaml", MINIMAL)
    monkeypatch.setenv("GFMKIT_PROFILES", str(env_dir))
    assert find_profile("frontier") == env_dir / "frontier.yaml"
    assert find_profile("aurora") == config / "gfmkit" / "profiles" / "aurora.yaml"
    assert find_profile("perlmutter") == SHIPPED_DIR / "perlmutter.yaml"
    assert load_profile("lab").name == "lab"
    assert available_profiles()["frontier"] == env_dir / "frontier.yaml"
    # A path is read as it is, wherever it lies.
    assert load_profile(str(env_dir / "frontier.yaml")).launch_command(2) == ["srun", "-n", "8"]
    with pytest.raises(FileNotFoundError, match=r"no profile named 'nowhere' \(known: .*frontier.*lab"):
        find_profile("nowhere")


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda t: t + "gpu_per_node: 2\n", "unknown key 'gpu_per_node' (did you mean 'gpus_per_node'?)"),
        (lambda t: t.replace("backend: nccl\n", ""), "missing required key 'backend'"),
        (lambda t: t.replace("backend: nccl", "backend: mpi"), "key 'backend' expects one of"),
        (lambda t: t.replace('{command: srun,', '{command: srun, binding: x,'), "unknown key 'launcher.binding'"),
        (lambda t: t.replace('"{ranks}"', '"{rank}"'), "key 'launcher.args[1]': unknown placeholder {rank}"),
        (lambda t: t.replace('"{ranks}"', '"{cpus_per_rank}"'), "key 'launcher.args[1]': unknown placeholder"),
        (lambda t: t + 'env: {A: "x\\ny"}\n', "key 'env.A'"),
        (lambda t: t + 'env: {A: "say \\"hi\\""}\n', "key 'env.A'"),
        (lambda t: t + 'env: {"1A": x}\n', "key 'env.1A'"),
        (lambda t: t + "directives: [\"-C gpu\\n#SBATCH --x\"]\n", "key 'directives[0]'"),
        (lambda t: t + "account: 'a b'\n", "key 'account'"),
        (lambda t: t + "walltime: 1h\n", "key 'walltime'"),
        (lambda t: t + "modules: ['rocm 6']\n", "key 'modules[0]'"),
        (lambda t: t + "shell: bash\n", "key 'shell'"),
        (lambda t: t + "name: other\n", "key 'name' is not set in a profile"),
        (lambda t: t.replace("ranks_per_node: 4", "ranks_per_node: 0"), "key 'ranks_per_node'"),
    ],
)
def test_profile_errors_name_the_file_and_the_key(tmp_path, edit, fragment):
    path = write(tmp_path / "site.yaml", edit(MINIMAL))
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_walltime_accepts_hours_minutes_seconds_or_minutes():
    assert parse_walltime(90) == "01:30:00"
    assert parse_walltime("90") == "01:30:00"
    assert parse_walltime("1:00:00") == "01:00:00"
    assert parse_walltime("48:00:00") == "48:00:00"
    for bad in ("1h", "1:60:00", 0, "01:00", True):
        with pytest.raises(ValueError, match="walltime"):
            parse_walltime(bad)
