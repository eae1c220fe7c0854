"""The ground everything stands on: configs, run directories, precision scopes, CLI, MPI launch."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch

from gfmkit.cli import build_parser, main
from gfmkit.comm import SerialComm, launched_by_mpi, world
from gfmkit.config import ConfigError, load_config, save_config
from gfmkit.files import atomic_path
from gfmkit.precision import get_policy, precision_scope
from gfmkit.rundir import RunDir


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass
class TrainConfig:
    name: str
    epochs: int = 3
    precision: Literal["fp32", "fp64"] = "fp32"
    optim: Optim = dataclasses.field(default_factory=Optim)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    out: Path | None = None


def test_config_loads_nested_yaml_and_round_trips(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("name: run1\nepochs: 5\noptim: {lr: 0.01, betas: [0.8, 0.9]}\nweights: {bulk: 2}\nout: runs/x\n")
    config = load_config(TrainConfig, path)
    assert config == TrainConfig("run1", 5, "fp32", Optim(0.01, (0.8, 0.9)), {"bulk": 2.0}, Path("runs/x"))
    save_config(config, tmp_path / "copy.yaml")
    assert load_config(TrainConfig, tmp_path / "copy.yaml") == config


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: a\nepoch: 3\n", "unknown key 'epoch' (did you mean 'epochs'?)"),
        ("name: a\noptim: {lr: 0.1, momentum: 0.9}\n", "unknown key 'optim.momentum'"),
        ("name: a\nepochs: three\n", "key 'epochs' expects an integer, got str 'three'"),
        ("name: a\nepochs: true\n", "key 'epochs' expects an integer"),
        ("name: a\nprecision: bf16\n", "key 'precision' expects one of 'fp32', 'fp64'"),
        ("name: a\noptim: {betas: [0.9]}\n", "key 'optim.betas' expects 2 items"),
        ("epochs: 3\n", "missing required key 'name'"),
        ("- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_config_errors_name_the_key_and_the_file(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_config_refuses_python_tags(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, path)


def test_run_dir_layout_metrics_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir(tmp_path / "run")
    assert not run.path.exists()  # folders appear with their first file: a failed start leaves nothing
    run.save_config(TrainConfig("r"))
    assert load_config(TrainConfig, run.config_path) == TrainConfig("r")
    run.log_metrics(step=1, loss=torch.tensor(0.5), dataset="bulk")
    run.log_metrics({"step": 2, "loss": float("nan")})
    table = run.metrics()
    assert list(table["step"]) == [1, 2] and table["loss"][0] == 0.5 and table["loss"].isna()[1]
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    (png,) = run.save_figure(fig, "curve")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list(run.figures.glob(".*tmp*"))


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_precision_scope_is_scoped_and_never_changes_default_dtype():
    default = torch.get_default_dtype()
    linear = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with precision_scope("bf16-autocast") as policy:
        assert policy.compute_dtype is torch.bfloat16 and policy.sensitive_dtype is torch.float32
        assert linear(x).dtype is torch.bfloat16
        with precision_scope("fp32"):
            assert linear(x).dtype is torch.float32  # an inner explicit scope turns autocast off
    assert linear(x).dtype is torch.float32
    assert torch.get_default_dtype() is default
    assert get_policy("fp64").param_dtype is torch.float64
    assert get_policy("bf16-pure").sensitive_dtype is torch.float32
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        get_policy("fp16")


def test_serial_world_outside_mpi(monkeypatch):
    for var in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PALS_RANKID", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GFMKIT_MPI", "0")
    assert not launched_by_mpi()
    comm = world()
    assert isinstance(comm, SerialComm) and comm.allgather(3) == [3] and comm.bcast("x") == "x"


def test_cli_help_lists_every_capability(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ["data", "train", "evaluate", "hpo", "precision", "finetune", "screen", "cluster", "figures", "demo"]:
        assert f"    {command}" in text
    for command in build_parser()._subparsers._group_actions[0].choices:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0


def test_console_script_runs():
    exe = Path(sys.executable).parent / "gfmkit"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("gfmkit ")


@pytest.mark.mpi
def test_mpiexec_two_ranks_allreduce(run_mpi):
    result = run_mpi(
        """
        from gfmkit.comm import world, launched_by_mpi
        comm = world()
        emit({"rank": comm.rank, "size": comm.size, "sum": comm.allreduce(comm.rank + 1), "mpi": launched_by_mpi()})
        """
    )
    assert [e[0] for e in result.emitted] == [
        {"rank": 0, "size": 2, "sum": 3, "mpi": True},
        {"rank": 1, "size": 2, "sum": 3, "mpi": True},
    ]


def test_mpi_imported_but_not_initialised_is_a_serial_process():
    code = ("import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; "
            "from gfmkit.comm import launched_by_mpi, world; print(launched_by_mpi(), world().size, MPI.Is_initialized())")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "PALS", "MV2", "GFMKIT_MPI"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.split() == ["False", "1", "False"]
