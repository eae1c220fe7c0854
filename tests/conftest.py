"""Shared test fixtures: an `mpiexec -n 2` runner, and demo data built once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# Test models are tiny: one thread per process avoids oversubscription when other work shares the cores
# (the MPI tests likewise run one thread per rank).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
# The demo scale the test session builds: small enough for CI, large enough for every dataset.
TEST_DEMO_SCALE = 0.05

_RANK_PRELUDE = """
import json as _json, os as _os, sys as _sys
from mpi4py import MPI as _MPI
_rank = _MPI.COMM_WORLD.rank
_out = open(_os.path.join({outdir!r}, f"rank{{_rank}}.txt"), "w", buffering=1)
_sys.stdout = _out
def emit(obj):
    print("EMIT " + _json.dumps(obj))
"""


#: The tiny model most training tests use.
TINY_MODEL = {"hidden": 16, "layers": 1, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8}


def tiny_config(stores, **top) -> dict:
    """The one training-config builder of the tests: a tiny fp64 run of 4 steps on ``stores`` (a path or a
    list of paths); each keyword replaces a top-level key, and a dict merges into a section."""
    paths = [str(p) for p in stores] if isinstance(stores, (list, tuple)) else [str(stores)]
    config = {
        "data": {"stores": paths},
        "model": dict(TINY_MODEL),
        "sampler": {"batch_size": 6},
        "optimizer": {"lr": 3e-3},
        "max_steps": 4,
        "precision": "fp64",
        "device": "cpu",
        "validate_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
    }
    for key, value in top.items():
        if value is None and key in ("model",):
            config.pop(key)  # e.g. a fine-tuning run takes the pretrained model's architecture
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def one_thread():
    """Training tests run on one thread: on a shared 2-core machine, 2 OpenMP threads with a busy
    core make small-op models 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mpiexec() -> str:
    """The venv's mpiexec (from the mpich wheel) or the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec available")
    return found


def single_thread_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class MPIResult:
    """Per-rank stdout of a snippet run under mpiexec; ``emitted[r]`` holds rank r's emit() values."""

    def __init__(self, outputs: list[str], returncode: int, stderr: str):
        self.outputs, self.returncode, self.stderr = outputs, returncode, stderr
        self.emitted = [[json.loads(line[5:]) for line in out.splitlines() if line.startswith("EMIT ")] for out in outputs]


@pytest.fixture
def run_mpi(tmp_path):
    """Run a Python snippet on 2 ranks (one thread each); it may call ``emit(obj)`` to return JSON data.

    ``run_mpi(code, n=2, timeout=120, check=True)`` returns an :class:`MPIResult`.
    """

    def run(code: str, n: int = 2, timeout: float = 120, check: bool = True, cwd: Path | None = None) -> MPIResult:
        outdir = tmp_path / f"mpi-{len(list(tmp_path.glob('mpi-*')))}"
        outdir.mkdir()
        script = outdir / "snippet.py"
        script.write_text(_RANK_PRELUDE.format(outdir=str(outdir)) + textwrap.dedent(code))
        proc = subprocess.run(
            [mpiexec(), "-n", str(n), sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=single_thread_env(),
            cwd=cwd or tmp_path,
        )
        outputs = [(outdir / f"rank{r}.txt").read_text() if (outdir / f"rank{r}.txt").exists() else "" for r in range(n)]
        result = MPIResult(outputs, proc.returncode, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"mpiexec -n {n} failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{outputs}")
        return result

    return run


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The built-in demo datasets at test scale, built once per test session."""
    from gfmkit.data.demo import build_demo

    out = tmp_path_factory.mktemp("demo")
    build_demo(out, seed=0, scale=TEST_DEMO_SCALE, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_stores(demo_dir):
    """The demo datasets opened as one multi-dataset."""
    from gfmkit.data.multi import open_stores

    return open_stores([demo_dir])


@pytest.fixture(scope="session")
def tiny_checkpoint(demo_dir, tmp_path_factory) -> Path:
    """A small multi-head model trained briefly on the demo data (all heads, float64) with gfmkit's own
    trainer, once per session; its best checkpoint."""
    from gfmkit.models import ModelConfig
    from gfmkit.train import (
        DataConfig,
        OptimizerConfig,
        SamplerConfig,
        TrainConfig,
        train,
    )

    config = TrainConfig(
        data=DataConfig(stores=[str(demo_dir)]),
        model=ModelConfig(hidden=32, layers=2, n_rbf=10, cutoff=4.5, head_hidden=16),
        sampler=SamplerConfig(strategy="temperature", temperature=2.0, batch_size=8),
        optimizer=OptimizerConfig(lr=3e-3, ema_decay=None),
        precision="fp64",
        max_steps=150,
        validate_every=150,
        checkpoint_every=150,
        progress=False,
    )
    run, _ = train(config, tmp_path_factory.mktemp("model") / "tiny")
    return run.checkpoints / "best.pt"


def pytest_collection_modifyitems(config, items):
    """Notebooks, MPI launches and cluster engines are slow by definition: `make test-fast` skips them."""
    for item in items:
        if any(item.get_closest_marker(name) for name in ("notebook", "mpi", "cluster")) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def run_cli(*args: str):
    """``gfmkit ARGS...`` in this process: (returncode, stdout, stderr), as subprocess.run gives them."""
    import contextlib
    import io
    import types

    from gfmkit.cli import main
    from gfmkit.progress import set_progress

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            set_progress(None)
            from gfmkit.log import set_verbosity

            set_verbosity("WARNING")  # drop the handler that points at this call's captured stderr
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
