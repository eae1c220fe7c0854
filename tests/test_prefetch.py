"""Building batches ahead (gfmkit.data.prefetch): a thread or a forked process yields what plain iteration
yields, in order; the producer's failures reach the consumer; nothing hangs or outlives the loop."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from gfmkit.data.edge_batches import ChunkBatches
from gfmkit.data.prefetch import (
    fork_available,
    pack_batch,
    pack_chunk_batch,
    process_prefetch,
    thread_prefetch,
    unpack_batch,
    unpack_chunk_batch,
)

#: items that are plain numbers: a header without arrays
AS_INT = (lambda i: ({"i": i}, []), lambda header, arrays: header["i"])
from gfmkit.data.random_source import parse_random_spec

needs_fork = pytest.mark.skipif(not fork_available(), reason="the prefetch process needs fork (Linux)")
SPEC = "random:30:2-12:Cu,Au,Al:seed=5"


def assert_same_batch(a, b):
    assert sorted(k for k, _ in a) == sorted(k for k, _ in b) and a.num_graphs == b.num_graphs
    for key, value in a:
        assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
    for name in ("_slice_dict", "_inc_dict"):
        mine, theirs = getattr(a, name), getattr(b, name)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def chunk_batches():
    return ChunkBatches(parse_random_spec(SPEC), [2, 0, 1], 10, 4.5, 400, torch.float32)


def test_a_packed_batch_unpacks_to_the_same_batch():
    for _, batch, _ in chunk_batches().each_batch():
        again = unpack_batch(*pack_batch(batch))
        assert_same_batch(again, batch)
        assert again.get_example(0).num_nodes == batch.get_example(0).num_nodes


@needs_fork
@pytest.mark.parametrize("stage", ["process", "thread"])
def test_prefetched_batches_are_the_batches_in_order(stage):
    dataset = chunk_batches()
    plain = list(dataset.each_batch())
    assert len(plain) > 3  # several batches per chunk, so the stage really runs ahead
    if stage == "process":
        ahead = process_prefetch(dataset.each_batch, pack_chunk_batch, unpack_chunk_batch, depth=2)
    else:
        ahead = thread_prefetch(dataset.each_batch(), depth=2)
    got = list(ahead)
    assert [(c, last) for c, _, last in got] == [(c, last) for c, _, last in plain]
    for (_, a, _), (_, b, _) in zip(got, plain):
        assert_same_batch(a, b)


def failing_items(at, error):
    for i in range(10):
        if i == at:
            raise error
        yield i


class Unknown(Exception):
    """An exception type the parent does not rebuild (neither builtin nor gfmkit's)."""


@needs_fork
def test_a_failure_in_the_process_is_raised_here_after_the_items_before_it():
    got = []
    with pytest.raises(ValueError, match="structure 4 is broken"):
        for item in process_prefetch(lambda: failing_items(4, ValueError("structure 4 is broken")), *AS_INT):
            got.append(item)
    assert got == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="Unknown: kept its message") as raised:  # named, with its traceback
        list(process_prefetch(lambda: failing_items(2, Unknown("kept its message")), *AS_INT))
    assert "failing_items" in str(raised.value)  # the child's traceback
    from gfmkit.config import ConfigError

    with pytest.raises(ConfigError, match="bad spec"):  # gfmkit's own exceptions keep their type
        list(process_prefetch(lambda: failing_items(0, ConfigError("bad spec")), *AS_INT))


def killed_at(at):
    for i in range(10):
        if i == at:
            os.kill(os.getpid(), signal.SIGKILL)
        yield i


@needs_fork
def test_a_killed_process_is_an_error_not_a_hang():
    started = time.monotonic()
    got = []
    with pytest.raises(RuntimeError, match="ended without finishing"):
        for item in process_prefetch(lambda: killed_at(3), *AS_INT, depth=1):
            got.append(item)
    assert got == [0, 1, 2] and time.monotonic() - started < 30


def endless():
    i = 0
    while True:
        yield i
        i += 1


@needs_fork
def test_leaving_the_loop_early_stops_the_process():
    import multiprocessing

    stream = process_prefetch(endless, *AS_INT, depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert not [p for p in multiprocessing.active_children() if p.name == "gfmkit-prefetch"]


@needs_fork
def test_the_process_stops_when_its_consumer_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "consumer.py"
    script.write_text(
        "import os, sys\n"
        "from gfmkit.data.prefetch import process_prefetch\n"
        "def endless():\n    i = 0\n    while True:\n        yield i\n        i += 1\n"
        "stream = process_prefetch(endless, lambda i: ({'i': i}, []), lambda h, a: h['i'], depth=2)\n"
        "next(stream)\n"
        "import multiprocessing\n"
        "print([p.pid for p in multiprocessing.active_children()][0], flush=True)\n"
        "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":  # ended, not yet reaped by whoever adopted it
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the prefetch process outlived its killed consumer")
