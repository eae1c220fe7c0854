"""Building the next batches while the model runs: in a thread, or in a forked process.

Both stages take an iterable of items (for screening: ``(chunk, Batch, last)`` from
:meth:`gfmkit.data.edge_batches.ChunkBatches.each_batch`), run at most ``depth`` items ahead and raise an
exception of the producer in the consumer, at the item where it happened.

- :func:`thread_prefetch`: the producer shares the interpreter. vesin and numpy release the GIL for
  their larger work, but the many small numpy calls of structure generation hold it, and the model's
  operator dispatch then waits: on 2 cores a thread building graphs slowed the model pass by 15-20 %
  (benchmarks/screen_speed.py, docs/screening.md).
- :func:`process_prefetch`: the producer is a forked child process with an interpreter of its own, so
  the model pass is only slowed by what the two cores share (about 6 % measured). Batches cross as
  plain numpy arrays through a pipe (:func:`pack_batch` / :func:`unpack_batch`: one copy each way,
  about 1 MB per batch of 20,000 edges), not as torch shared-memory tensors: each tensor storage
  handed over by torch's reductions costs a shared-memory file and a file-descriptor transfer, which
  made a DataLoader worker slower than no prefetch at all. It needs ``fork`` (Linux): the child
  inherits the source and the model-free iterable as they are, nothing is pickled; where fork is not
  the platform's way (:func:`fork_available`), use the thread. Forking costs about 30 ms per GB the
  parent has mapped (8 ms for a fresh 220 MB screening process), once per screen. A child whose parent
  dies (killed) stops by itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data

#: Seconds between the consumer's checks that the producer process is still alive.
POLL_S = 1.0


def thread_prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` produced by a background thread, at most ``depth`` ahead."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                ahead.put((True, item))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            ahead.put((False, exc))
        ahead.put((True, done))

    worker = threading.Thread(target=produce, name="gfmkit-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = ahead.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                ahead.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def fork_available() -> bool:
    """Whether :func:`process_prefetch` can run here: ``fork`` is a start method and the platform's default
    (Linux; on macOS fork is available but unsafe with the system's frameworks)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def process_prefetch(make_items: Callable[[], Iterable[Any]], depth: int = 4,
                     pack: Callable[[Any], Any] = lambda item: item,
                     unpack: Callable[[Any], Any] = lambda item: item) -> Iterator[Any]:
    """The items of ``make_items()``, produced by a forked child process at most ``depth`` ahead.

    ``pack`` turns an item into what crosses the pipe (in the child), ``unpack`` back (here). The child
    runs with one torch thread and writes each pickled item from its only thread (a queue's feeder
    thread would wait for the GIL between pipe writes: 1.3 ms per batch measured) into a pipe widened
    to hold a batch. An exception in the child is raised here (its own type where it pickles, else a
    RuntimeError with its traceback); a child that dies without one (killed) is a RuntimeError, never a
    hang. Leaving the loop early stops the child.
    """
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    _widen(writer)
    credit = context.Semaphore(depth)  # items the child may run ahead
    stop = context.Event()
    child = context.Process(target=_produce, args=(make_items, pack, writer, credit, stop), name="gfmkit-prefetch",
                            daemon=True)
    child.start()
    writer.close()
    try:
        while True:
            if not reader.poll(POLL_S):
                if not child.is_alive() and not reader.poll(0):
                    raise RuntimeError(f"the prefetch process ended without finishing (exit code {child.exitcode})")
                continue
            try:
                kind, payload = pickle.loads(reader.recv_bytes())
            except EOFError:
                raise RuntimeError(f"the prefetch process ended without finishing (exit code {child.exitcode})") from None
            credit.release()
            if kind == "error":
                raise payload
            if kind == "done":
                return
            yield unpack(payload)
    finally:
        stop.set()
        reader.close()  # a child blocked writing gets a broken pipe
        child.join(5 * POLL_S)
        if child.is_alive():
            child.terminate()
            child.join()


def _widen(connection: Any, size: int = 1 << 20) -> None:
    """Let the pipe hold ``size`` bytes (Linux; best effort: the system's limit may be lower)."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(connection.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), size)


def _produce(make_items: Callable[[], Iterable[Any]], pack: Callable[[Any], Any], writer: Any, credit: Any,
             stop: Any) -> None:
    torch.set_num_threads(1)
    parent = os.getppid()

    def send(kind: str, payload: Any) -> bool:
        while not credit.acquire(timeout=POLL_S):
            if stop.is_set() or os.getppid() != parent:  # the consumer left, or died (killed)
                return False
        writer.send_bytes(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))
        return not stop.is_set()

    try:
        for item in make_items():
            if not send("item", pack(item)):
                return
        send("done", None)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, unless it has left
        if not stop.is_set():
            with contextlib.suppress(OSError):
                send("error", _portable(exc))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` itself where it survives pickling, else a RuntimeError carrying its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to pickle
        return RuntimeError("".join(traceback.format_exception(exc)).rstrip())


def pack_batch(batch: Batch) -> dict[str, Any]:
    """A PyG ``Batch`` (as :func:`gfmkit.data.graphs.collate` makes it) as plain numpy arrays and ints."""
    return {"fields": {key: value.numpy() for key, value in batch},
            "slices": {key: value.numpy() for key, value in batch._slice_dict.items()},
            "incs": {key: value.numpy() for key, value in batch._inc_dict.items()},
            "graphs": batch.num_graphs}


def unpack_batch(packed: dict[str, Any]) -> Batch:
    """The ``Batch`` :func:`pack_batch` packed (the arrays become its tensors, no copy)."""
    out = Batch(_base_cls=Data)
    for key, value in packed["fields"].items():
        out[key] = torch.from_numpy(value)
    out._num_graphs = packed["graphs"]
    out._slice_dict = {key: torch.from_numpy(np.asarray(v)) for key, v in packed["slices"].items()}
    out._inc_dict = {key: torch.from_numpy(np.asarray(v)) for key, v in packed["incs"].items()}
    return out
