"""Screening (gfmkit screen): random source, sources, chunked results store, resume, ranks, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import mpiexec, run_cli, single_thread_env

from gfmkit.config import ConfigError
from gfmkit.data.edge_batches import edge_batches
from gfmkit.data.random_source import MIN_DISTANCE, RandomSource, parse_random_spec
from gfmkit.data.results_store import ResultsStore, read_columns
from gfmkit.data.screen_source import open_source
from gfmkit.studies.screen import screen, screen_table, top_hits, work_dir

SPEC = "random:24:2-12:Cu,Au,Al:seed=3"


def assert_same_results(a, b):
    ca, cb = read_columns(a), read_columns(b)
    assert sorted(ca) == sorted(cb)
    for name in ca:
        assert ca[name].dtype == cb[name].dtype and np.array_equal(ca[name], cb[name]), name
    keep = ("heads", "precision", "weighting", "forces", "source", "composition/elements", "n_structures")
    assert {k: ResultsStore(a).attrs[k] for k in keep} == {k: ResultsStore(b).attrs[k] for k in keep}


# -- the random source --------------------------------------------------------------------------------
def test_random_structure_depends_only_on_seed_and_index():
    source = parse_random_spec(SPEC)
    assert (source.count, source.min_atoms, source.max_atoms, source.elements, source.seed) == (
        24, 2, 12, ("Cu", "Au", "Al"), 3)
    forward = [source.arrays(i) for i in range(24)]
    backward = [source.arrays(i) for i in reversed(range(24))][::-1]
    again = parse_random_spec(source.spec)
    for i, (a, b) in enumerate(zip(forward, backward)):
        for key in a:
            assert np.array_equal(a[key], b[key]) and np.array_equal(a[key], again.arrays(i)[key])
    other_seed = parse_random_spec("random:24:2-12:Cu,Au,Al:seed=4").arrays(0)
    assert not np.array_equal(other_seed["positions"], forward[0]["positions"][: len(other_seed["positions"])]) \
        or len(other_seed["numbers"]) != len(forward[0]["numbers"])


@pytest.mark.parametrize("attempts", [100, 3])  # 3: boxes grow often
def test_random_structures_built_together_equal_each_built_alone(monkeypatch, attempts):
    from gfmkit.data import random_source

    monkeypatch.setattr(random_source, "ATTEMPTS", attempts)
    pool = np.array([29, 79, 1])
    together = random_source.random_structures([np.random.default_rng([7, i]) for i in range(12)], 2, 40, pool, True)
    for i in (0, 5, 11):
        (alone,) = random_source.random_structures([np.random.default_rng([7, i])], 2, 40, pool, True)
        assert all(np.array_equal(alone[key], together[i][key]) for key in alone)
    source = RandomSource(70, 2, 40, ("Cu", "Au", "H"), seed=7)  # two groups, read across their border
    assert all(np.array_equal(source.arrays(i)["positions"], together[i]["positions"]) for i in (11, 3))


def test_random_structures_respect_sizes_elements_and_minimum_distance():
    from ase.data import covalent_radii

    source = parse_random_spec("random:40:2-20:Cu,Au")
    for i in range(len(source)):
        atoms = source.atoms(i)
        assert 2 <= len(atoms) <= 20 and set(atoms.get_chemical_symbols()) <= {"Cu", "Au"}
        assert atoms.pbc.all() and atoms.cell.volume > 0
        d = atoms.get_all_distances(mic=True)
        r = covalent_radii[atoms.numbers]
        limit = MIN_DISTANCE * (r[:, None] + r[None, :])
        off = ~np.eye(len(atoms), dtype=bool)
        assert (d[off] >= limit[off] - 1e-9).all()
    cluster = parse_random_spec("random:3:5-5:Cu:cluster").atoms(1)
    assert not cluster.pbc.any() and len(cluster) == 5 and np.allclose(cluster.cell[:], 0)


@pytest.mark.parametrize("spec", ["random:", "random:x", "random:10:5-2", "random:10:Xx", "random:0", "random:10:2-3:Cu:what"])
def test_malformed_random_specs_say_what_is_wrong(spec):
    with pytest.raises(ConfigError, match="random"):
        parse_random_spec(spec)


# -- sources and batches ------------------------------------------------------------------------------
def test_sources_open_stores_files_globs_and_random(demo_dir, tmp_path):
    import ase.io

    store_path = min(demo_dir.glob("*.bp"))
    store = open_source(str(store_path))
    assert len(store) > 0 and set(store.arrays(0)) >= {"numbers", "positions", "cell", "pbc"}
    structures = [RandomSource(5, 2, 4, ("Cu",), seed=1).atoms(i) for i in range(5)]
    ase.io.write(tmp_path / "a.extxyz", structures[:2])
    ase.io.write(tmp_path / "b.extxyz", structures[2:])
    files = open_source(str(tmp_path / "*.extxyz"))
    assert len(files) == 5
    for i in range(5):
        assert np.allclose(files.arrays(i)["positions"], structures[i].positions)
    assert len(open_source("random:7", elements=["Cu"])) == 7
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_source(str(tmp_path / "*.cif"))
    with pytest.raises(FileNotFoundError, match="no such"):
        open_source(str(tmp_path / "missing.extxyz"))


def test_edge_batches_keep_order_and_the_edge_budget():
    source = parse_random_spec(SPEC)
    alone = edge_batches(source, 0, 24, 4.5, 10**9)
    assert len(alone) == 1
    edges = np.diff(alone[0].ptr.numpy())  # atoms per structure, in order
    budget = 2000
    batches = edge_batches(source, 0, 24, 4.5, budget)
    assert len(batches) > 1
    assert np.array_equal(np.concatenate([np.diff(b.ptr.numpy()) for b in batches]), edges)
    for b in batches:
        assert b.edge_index.shape[1] <= budget or b.num_graphs == 1


def test_graphs_without_labels_predict_what_labelled_graphs_do(tiny_checkpoint):
    from gfmkit.data.graphs import collate, structure_graph
    from gfmkit.models import load_model

    source = parse_random_spec(SPEC)
    model = load_model(tiny_checkpoint)
    full = collate([structure_graph(source.arrays(i), 0, model.config.cutoff) for i in range(6)])
    lean = collate([structure_graph(source.arrays(i), 0, model.config.cutoff, labels=False) for i in range(6)])
    assert "forces" in full.keys() and not {"energy", "forces", "stress", "properties"} & set(lean.keys())
    heads = [h.name for h in model.heads if h.kind == "energy"]
    a = model.predict(full, heads=heads, forces="weighted", weights="overlap")
    b = model.predict(lean, heads=heads, forces="weighted", weights="overlap")
    for name in ("energies", "weights", "energy", "energy_spread", "forces"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_batches_one_at_a_time_are_the_chunks_batches_with_the_last_marked():
    from gfmkit.data.edge_batches import ChunkBatches

    source = parse_random_spec(SPEC)
    dataset = ChunkBatches(source, [3, 0, 2], 7, 4.5, 1500)  # chunk 3 is the short one (structures 21-23)
    items = list(dataset.each_batch())
    for chunk in (3, 0, 2):
        mine = [(b, last) for c, b, last in items if c == chunk]
        whole = dataset[dataset.chunks.index(chunk)][1]
        assert [last for _, last in mine] == [False] * (len(whole) - 1) + [True]
        for (b, _), w in zip(mine, whole):
            assert torch.equal(b.pos, w.pos) and torch.equal(b.edge_index, w.edge_index)
    assert [c for c, _, _ in items] == sorted([c for c, _, _ in items], key=[3, 0, 2].index)


# -- screening ----------------------------------------------------------------------------------------
def test_screen_writes_one_row_per_structure_with_attributes(tiny_checkpoint, tmp_path, one_thread):
    out = tmp_path / "r.bp"
    summary = screen(tiny_checkpoint, SPEC, out, chunk_size=10, forces="weighted", weighting="uniform",
                     save_forces=True, precision="fp64", progress=False)
    store = ResultsStore(out)
    table = store.table()
    assert len(table) == 24 and list(table["source_index"]) == list(range(24))
    source = parse_random_spec(SPEC)
    assert list(table["natoms"]) == [len(source.arrays(i)["numbers"]) for i in range(24)]
    assert table.loc[5, "formula"] == source.atoms(5).get_chemical_formula("hill")
    heads = store.heads
    assert np.allclose(table[[f"weight/{h}" for h in heads]].to_numpy(), 1 / len(heads))
    assert store.attrs["precision"] == "fp64" and store.attrs["weighting"] == "uniform"
    forces = store.forces(5)
    assert forces.shape == (table.loc[5, "natoms"], 3)
    assert np.isclose(np.linalg.norm(forces, axis=1).max(), table.loc[5, "max_force"])
    assert not work_dir(out).exists()
    assert summary.attrs["summary"]["structures"] == 24 and list(summary["rank"]) == ["0", "total"]
    assert list(screen_table(tmp_path)["results"]) == ["r.bp"]

    # the same structures alone through model.predict give the same rows
    from gfmkit.data.graphs import collate, structure_graph
    from gfmkit.models import load_model

    model = load_model(tiny_checkpoint).double().eval()
    batch = collate([structure_graph(source.arrays(7), 0, model.config.cutoff)])
    alone = model.predict(batch, heads=heads, forces="weighted", weights="uniform")
    natoms = table.loc[7, "natoms"]
    assert np.isclose(float(alone.energy[0]), table.loc[7, "energy"], rtol=1e-10, atol=1e-10)
    assert np.allclose(alone.energies[0].numpy() / natoms, table.loc[7, [f"energy_per_atom/{h}" for h in heads]].to_numpy(
        dtype=float), rtol=1e-10, atol=1e-10)
    assert np.isclose(float(alone.energy_spread[0]), table.loc[7, "disagreement"], rtol=1e-10, atol=1e-12)
    assert np.isclose(float(alone.forces.norm(dim=1).max()), table.loc[7, "max_force"], rtol=1e-10)

    hits, atoms = top_hits(out, 3, "disagreement")
    assert list(hits["disagreement"]) == sorted(table["disagreement"], reverse=True)[:3]
    assert [a.info["source_index"] for a in atoms] == list(hits["source_index"])
    assert np.allclose(atoms[0].positions, source.atoms(int(hits.loc[0, "source_index"])).positions)
    lowest, _ = top_hits(out, 2, "energy_per_atom", atoms=False)
    assert list(lowest["energy_per_atom"]) == sorted(table["energy_per_atom"])[:2]

    # the demo's report of such a screen: strict JSON (no NaN) and markdown with the headline
    import argparse
    import json

    import pandas as pd

    from gfmkit.cli.demo import write_report

    errors = pd.DataFrame({"dataset": ["bulk"], "energy_mae": [0.01], "forces_mae": [0.05], "property_mae": [np.nan]})
    numbers = write_report(tmp_path, argparse.Namespace(steps=1, seed=0), errors, summary.attrs["summary"], lowest)
    saved = json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved == json.loads(json.dumps(numbers, default=str)) and saved["screen"]["structures"] == 24
    assert [row["source_index"] for row in saved["top_hits"]] == list(lowest["source_index"])
    assert numbers["headline"] in (tmp_path / "report.md").read_text()

    info = run_cli("data", "info", out, "--json")
    assert info.returncode == 0 and '"structures": 24' in info.stdout
    with pytest.raises(ConfigError, match="predictions, not structures"):
        open_source(str(out))

    import matplotlib

    matplotlib.use("Agg")
    from gfmkit.studies.registry import study_of
    from gfmkit.viz.screen import throughput_figure

    assert study_of(tmp_path).name == "screen"
    figure = throughput_figure(tmp_path)
    assert [ax.get_title() for ax in figure.axes] == ["screening throughput", "where the time went"]


class FailingSource:
    """A random source that fails at structure ``fail_at`` (a killed or failing screen, in-process)."""

    def __init__(self, spec, fail_at):
        self.inner, self.fail_at, self.spec = parse_random_spec(spec), fail_at, parse_random_spec(spec).spec

    def __len__(self):
        return len(self.inner)

    def arrays(self, i):
        if i == self.fail_at:
            raise RuntimeError("disk gone")
        return self.inner.arrays(i)


def test_a_failed_screen_resumes_from_its_finished_chunks(tiny_checkpoint, tmp_path, one_thread):
    whole = tmp_path / "whole.bp"
    screen(tiny_checkpoint, SPEC, whole, chunk_size=5, progress=False, prefetch="thread")  # a thread graphs ahead
    out = tmp_path / "resumed.bp"
    with pytest.raises(RuntimeError, match="disk gone"):  # raised in the prefetch process, reported here
        screen(tiny_checkpoint, FailingSource(SPEC, 17), out, chunk_size=5, progress=False, prefetch=True)
    assert not out.exists() and len(list(work_dir(out).glob("chunk-*.bp"))) == 3
    summary = screen(tiny_checkpoint, SPEC, out, chunk_size=5, progress=False).attrs["summary"]
    assert summary["resumed_chunks"] == 3 and summary["screened_now"] == 24 - 15
    assert_same_results(whole, out)
    # other settings do not mix with an unfinished screen's chunks
    with pytest.raises(RuntimeError):
        screen(tiny_checkpoint, FailingSource(SPEC, 17), tmp_path / "x.bp", chunk_size=5, progress=False)
    result = run_cli("screen", tiny_checkpoint, "--source", SPEC, "--out", tmp_path / "x.bp", "--chunk-size", "6",
                     "--no-progress")
    assert result.returncode == 1 and "other settings" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("prefetch", ["process", "thread"])
def test_batches_built_ahead_give_the_same_results(tiny_checkpoint, tmp_path, one_thread, prefetch):
    from gfmkit.data.prefetch import fork_available

    if prefetch == "process" and not fork_available():
        pytest.skip("the prefetch process needs fork (Linux)")
    options = dict(chunk_size=7, max_edges=300, forces="weighted", precision="fp64", progress=False)
    plain = screen(tiny_checkpoint, SPEC, tmp_path / "plain.bp", prefetch=False, **options).attrs["summary"]
    ahead = screen(tiny_checkpoint, SPEC, tmp_path / "ahead.bp", prefetch=prefetch, **options).attrs["summary"]
    assert plain["per_rank"][0]["prefetch"] == "off" and ahead["per_rank"][0]["prefetch"] == prefetch
    assert_same_results(tmp_path / "plain.bp", tmp_path / "ahead.bp")
    assert torch.get_num_threads() == 1  # the model's threads are restored after the screen


def test_auto_prefetch_only_for_a_rank_with_two_cores_or_more(monkeypatch):
    import socket

    from gfmkit.comm import SerialComm
    from gfmkit.data.prefetch import fork_available
    from gfmkit.studies.screen import prefetch_mode, rank_cores

    cores = frozenset({0, 1, 2, 3})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores, raising=False)
    assert rank_cores(SerialComm()) == 4

    class NodeOf(SerialComm):  # ranks on this node (same mask), and on another
        def __init__(self, here, there=0):
            self.places = [(socket.gethostname(), cores)] * here + [("elsewhere", cores)] * there

        def allgather(self, obj):
            return self.places

    assert rank_cores(NodeOf(2)) == 2  # two cores each
    assert rank_cores(NodeOf(3)) < 2  # fewer than two each
    assert rank_cores(NodeOf(1, 3)) == 4  # the other ranks run on other nodes
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: frozenset({5}), raising=False)
    assert rank_cores(SerialComm()) == 1  # a rank bound to one core
    best = "process" if fork_available() else "thread"
    assert prefetch_mode("auto", 0, 2) == best and prefetch_mode(True, 0, 1) == best
    assert prefetch_mode("auto", 0, 1.5) == "off" and prefetch_mode("auto", 2, 8) == "off"  # workers build ahead
    # with forces the model pass is longer: on two cores it keeps both, from three the process pays
    assert prefetch_mode("auto", 0, 2, "weighted") == "off" and prefetch_mode("auto", 0, 3, "each") == best
    assert prefetch_mode(False, 0, 8) == "off" and prefetch_mode("thread", 0, 1) == "thread"
    with pytest.raises(ConfigError, match="prefetch"):
        screen("unused.pt", SPEC, "unused.bp", prefetch="sometimes")


@pytest.mark.parametrize("make_args, message", [
    (lambda d: ["--source", str(d / "missing.extxyz")], "no such file"),
    (lambda d: ["--source", str(d / "*.xyz")], "no file matches"),
    (lambda d: ["--source", "random:ten"], "not a whole number"),
    (lambda d: ["--source", "random:5", "--heads", "nonexistent"], "nonexistent"),
    (lambda d: ["--source", "random:5", "--weighting", "gate"], "has no gate"),
])
def test_bad_sources_give_one_line_and_leave_no_results(tiny_checkpoint, tmp_path, make_args, message):
    out = tmp_path / "r.bp"
    result = run_cli("screen", tiny_checkpoint, *make_args(tmp_path), "--out", out, "--no-progress")
    assert result.returncode == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not work_dir(out).exists()


def test_existing_outputs_are_refused_unless_gfmkit_wrote_them(tiny_checkpoint, tmp_path, one_thread):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = run_cli("screen", tiny_checkpoint, "--source", "random:3:2-4", "--out", tmp_path / "mine", "--overwrite")
    assert result.returncode == 1 and "never replaces" in result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    out = tmp_path / "r.bp"
    assert run_cli("screen", tiny_checkpoint, "--source", "random:3:2-4", "--out", out, "--no-progress").returncode == 0
    again = run_cli("screen", tiny_checkpoint, "--source", "random:3:2-4", "--out", out, "--no-progress")
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert run_cli("screen", tiny_checkpoint, "--source", "random:4:2-4", "--out", out, "--overwrite",
                   "--no-progress").returncode == 0
    assert len(ResultsStore(out)) == 4


# -- processes: ranks and SIGKILL ---------------------------------------------------------------------
SCREEN_ARGS = ["--precision", "fp64", "--forces", "weighted", "--no-progress"]


@pytest.mark.slow
@pytest.mark.mpi
def test_two_ranks_write_the_results_of_one(tiny_checkpoint, tmp_path):
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"r{n}.bp"
        proc = subprocess.run([mpiexec(), "-n", str(n), sys.executable, "-m", "gfmkit.cli", "screen", str(tiny_checkpoint),
                               *SCREEN_ARGS, "--source", "random:40:2-16:Cu,Au,Al:seed=5", "--chunk-size", "4",
                               "--out", str(out), "--summary-json"],
                              capture_output=True, text=True, timeout=300, env=single_thread_env(), cwd=tmp_path, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = out
    assert_same_results(runs[1], runs[2])
    import json

    summary = json.loads((tmp_path / "screen.json").read_text())["screens"]["r2.bp"]
    assert summary["ranks"] == 2 and [r["structures"] for r in summary["per_rank"]] == [20, 20]


@pytest.mark.slow
@pytest.mark.mpi
def test_a_failing_rank_aborts_the_job_with_its_message(tiny_checkpoint, tmp_path, run_mpi):
    result = run_mpi(f"""
from gfmkit.data.random_source import parse_random_spec
from gfmkit.studies.screen import screen

class FailingSource:
    def __init__(self):
        self.inner = parse_random_spec("random:20:2-6:Cu")
        self.spec = self.inner.spec

    def __len__(self):
        return 20

    def arrays(self, i):
        if i == 15:
            raise RuntimeError("disk gone")
        return self.inner.arrays(i)

screen({str(tiny_checkpoint)!r}, FailingSource(), "r.bp", chunk_size=5, progress=False)
""", check=False, timeout=120)
    assert result.returncode != 0 and "rank 1 failed: disk gone" in result.stderr


@pytest.mark.slow
def test_a_screen_killed_by_sigkill_resumes_to_the_same_results(tiny_checkpoint, tmp_path):
    command = [sys.executable, "-m", "gfmkit.cli", "screen", str(tiny_checkpoint), *SCREEN_ARGS,
               "--source", "random:120:2-16:Cu,Au,Al:seed=6", "--chunk-size", "2"]
    env = single_thread_env()
    whole = tmp_path / "whole.bp"
    subprocess.run([*command, "--out", str(whole)], check=True, capture_output=True, env=env, cwd=tmp_path, timeout=300)
    out = tmp_path / "killed.bp"
    proc = subprocess.Popen([*command, "--out", str(out)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(work_dir(out).glob("chunk-*.bp"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(work_dir(out).glob("chunk-*.bp")))
    assert not out.exists() and 3 <= finished < 60
    resumed = subprocess.run([*command, "--out", str(out), "--summary-json"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    import json

    assert json.loads(resumed.stdout)["resumed_chunks"] >= finished
    assert_same_results(whole, out)
