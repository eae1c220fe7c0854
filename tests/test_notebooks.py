"""Every notebook in notebooks/ runs top to bottom in its fast mode (GFMKIT_FAST=1).

The notebooks run two at a time (each kernel on one thread, in a folder of its own): on the CI's two
cores that halves their share of `make test`. Each test waits for its own notebook and reports it.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
AT_ONCE = 2
ENVIRONMENT = {"GFMKIT_FAST": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _execute(path: Path, folder: Path, environment: dict[str, str]) -> Path:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    client.execute(env=environment)  # raises CellExecutionError, naming the cell, on the first failing cell
    return folder


@pytest.fixture(scope="session")
def notebook_runs(request, tmp_path_factory):
    """The selected notebooks submitted at once to a pool of AT_ONCE workers: stem -> Future of its folder."""
    environment = {**os.environ, **ENVIRONMENT}
    selected = {item.callspec.params["path"] for item in request.session.items
                if item.originalname == "test_notebook_runs" and hasattr(item, "callspec")}
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        runs: dict[str, Future] = {
            path.stem: pool.submit(_execute, path, tmp_path_factory.mktemp(path.stem), environment)
            for path in NOTEBOOKS if path in selected
        }
        yield runs
        for future in runs.values():
            future.cancel()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, notebook_runs):
    folder = notebook_runs[path.stem].result()
    assert list(folder.rglob("*.bp")), "the notebook wrote no store"
