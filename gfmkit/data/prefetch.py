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
  about 0.55 MB per batch of 20,000 edges), not as torch shared-memory tensors: each tensor storage
  handed over by torch's reductions costs a shared-memory file and a file-descriptor transfer, which
  made a DataLoader worker slower than no prefetch at all. It needs ``fork`` (Linux): the child
  inherits the source and the model-free iterable as they are, nothing is pickled; where fork is not
  the platform's way (:func:`fork_available`), use the thread. Forking costs about 30 ms per GB the
  parent has mapped (8 ms for a fresh 220 MB screening process), once per screen. A child whose parent
  dies (killed) stops by itself.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
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


#: What crosses the pipe for one item: a JSON-able header and numpy arrays (no pickle: gfmkit unpickles nothing).
Packed = tuple[dict[str, Any], list[np.ndarray]]


def process_prefetch(make_items: Callable[[], Iterable[Any]], pack: Callable[[Any], Packed],
                     unpack: Callable[[dict[str, Any], list[np.ndarray]], Any], depth: int = 4) -> Iterator[Any]:
    """The items of ``make_items()``, produced by a forked child process at most ``depth`` ahead.

    ``pack`` turns an item into a JSON-able header and numpy arrays (in the child), ``unpack`` back
    (here). The child runs with one torch thread and writes each item from its only thread (a queue's
    feeder thread would wait for the GIL between pipe writes: 1.3 ms per batch measured) into a pipe
    widened to hold a batch: a JSON header, then the arrays' bytes in one message. An exception in the
    child is raised here: as its own type where that is a builtin or a gfmkit exception, else as a
    RuntimeError naming it, with its traceback. A child that dies without one (killed) is a
    RuntimeError, never a hang. Leaving the loop early stops the child.
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
    ended = "the prefetch process ended without finishing (exit code {})"
    try:
        while True:
            if not reader.poll(POLL_S):
                if not child.is_alive() and not reader.poll(0):
                    raise RuntimeError(ended.format(child.exitcode))
                continue
            try:
                meta = json.loads(reader.recv_bytes())
                arrays = _receive_arrays(reader, meta["arrays"])
            except EOFError:
                raise RuntimeError(ended.format(child.exitcode)) from None
            credit.release()
            if meta["kind"] == "error":
                raise _rebuilt(meta["header"])
            if meta["kind"] == "done":
                return
            yield unpack(meta["header"], arrays)
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


def _layout(shapes: list[tuple[str, list[int]]]) -> tuple[list[int], int]:
    """Byte offsets of arrays of these (dtype, shape) laid end to end, each at a multiple of 8; total size."""
    offsets, end = [], 0
    for dtype, shape in shapes:
        offsets.append(end)
        end += -(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize // 8) * 8
    return offsets, end


def _joined(arrays: list[np.ndarray]) -> bytearray:
    """The arrays' bytes at the offsets of :func:`_layout`, in one buffer."""
    offsets, size = _layout([(str(a.dtype), list(a.shape)) for a in arrays])
    buffer = bytearray(size)
    view = np.frombuffer(buffer, dtype=np.uint8)
    for offset, array in zip(offsets, arrays):
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        view[offset:offset + raw.size] = raw
    return buffer


def _receive_arrays(reader: Any, shapes: list[tuple[str, list[int]]]) -> list[np.ndarray]:
    offsets, size = _layout(shapes)
    buffer = bytearray(max(size, 1))
    reader.recv_bytes_into(buffer)
    return [np.frombuffer(buffer, dtype=np.dtype(dtype), count=int(np.prod(shape, dtype=np.int64)),
                          offset=offset).reshape(shape) for (dtype, shape), offset in zip(shapes, offsets)]


def _produce(make_items: Callable[[], Iterable[Any]], pack: Callable[[Any], Packed], writer: Any, credit: Any,
             stop: Any) -> None:
    torch.set_num_threads(1)
    parent = os.getppid()

    def send(kind: str, header: Any = None, arrays: list[np.ndarray] = ()) -> bool:
        while not credit.acquire(timeout=POLL_S):
            if stop.is_set() or os.getppid() != parent:  # the consumer left, or died (killed)
                return False
        meta = json.dumps({"kind": kind, "header": header, "arrays": [(str(a.dtype), list(a.shape)) for a in arrays]})
        payload = _joined(list(arrays))  # before anything is sent: a failure here leaves no half-sent item
        writer.send_bytes(meta.encode())
        writer.send_bytes(payload)
        return not stop.is_set()

    try:
        for item in make_items():
            if not send("item", *pack(item)):
                return
        send("done")
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, unless it has left
        if not stop.is_set():
            with contextlib.suppress(OSError):
                send("error", {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
                               "traceback": "".join(traceback.format_exception(exc)).rstrip()})


def _rebuilt(error: dict[str, str]) -> Exception:
    """The child's exception: its own type where that is a builtin or gfmkit's, else a RuntimeError."""
    import builtins

    module, _, name = error["type"].rpartition(".")
    kind = (getattr(builtins, name, None) if module == "builtins"
            else getattr(sys.modules.get(module), name, None) if module.split(".")[0] == "gfmkit" else None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        with contextlib.suppress(Exception):
            return kind(error["message"])
    return RuntimeError(f"{name}: {error['message']} (in the prefetch process)\n{error['traceback']}")


def pack_batch(batch: Batch) -> Packed:
    """A PyG ``Batch`` (as :func:`gfmkit.data.graphs.collate` makes it) as a header and numpy arrays: its
    fields, then its slice and increment bookkeeping, each joined into one array (fewer, larger pieces)."""
    fields = [key for key, _ in batch]
    books = {name: getattr(batch, name) for name in ("_slice_dict", "_inc_dict")}
    header = {"fields": fields, "graphs": int(batch.num_graphs),
              **{name: [[key, int(value.numel())] for key, value in book.items()] for name, book in books.items()}}
    arrays = [batch[key].numpy() for key in fields] + [
        np.concatenate([value.reshape(-1).numpy() for value in book.values()]) if book else np.zeros(0, np.int64)
        for book in books.values()]
    return header, arrays


def unpack_batch(header: dict[str, Any], arrays: list[np.ndarray]) -> Batch:
    """The ``Batch`` :func:`pack_batch` packed (its tensors share the arrays' memory)."""
    out = Batch(_base_cls=Data)
    for key, value in zip(header["fields"], arrays):
        out[key] = torch.from_numpy(value)
    out._num_graphs = header["graphs"]
    for name, joined in zip(("_slice_dict", "_inc_dict"), arrays[len(header["fields"]):]):
        pieces = torch.from_numpy(joined).split([size for _, size in header[name]])
        setattr(out, name, {key: piece for (key, _), piece in zip(header[name], pieces)})
    return out


def pack_chunk_batch(item: tuple[int, Batch, bool]) -> Packed:
    """A ``(chunk, batch, last)`` item of :meth:`gfmkit.data.edge_batches.ChunkBatches.each_batch`, packed."""
    chunk, batch, last = item
    header, arrays = pack_batch(batch)
    return {**header, "chunk": int(chunk), "last": bool(last)}, arrays


def unpack_chunk_batch(header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[int, Batch, bool]:
    """The ``(chunk, batch, last)`` item :func:`pack_chunk_batch` packed."""
    return header["chunk"], unpack_batch(header, arrays), header["last"]
