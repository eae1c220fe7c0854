"""Check an ADIOS2 store's files before ADIOS2 reads them, so a damaged store fails fast instead of hanging.

ADIOS2's POSIX transport retries a short read forever, so reading from a data file that was cut short
(or emptied) never returns. Two checks come before any read:

* gfmkit's own stores carry a manifest (:data:`gfmkit.outputs.STORE_MANIFEST`) with every file's size at
  write time: a few ``stat`` calls tell whether a file is missing, empty or cut short.
* Other files (HydraGNN-written, or gfmkit's from before the manifest) get structural checks (metadata
  and data files present and not empty) and then a probe in a child process that reads the last row of
  every block of every variable, bounded by :data:`PROBE_TIMEOUT` seconds; a child that does not finish
  is killed and the store reported as truncated. The verdict is remembered per process for the same
  file sizes and times, so a store is probed once however often it is opened.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from gfmkit.data.store_format import StoreError

MANIFEST = "gfmkit-store.json"
BP_HEADER = b"ADIOS-BP v"
PROBE_TIMEOUT = float(os.environ.get("GFMKIT_STORE_PROBE_TIMEOUT", "10"))
_verdicts: dict[tuple, str | None] = {}  # per process: the same files, the same verdict


class StoreDamaged(StoreError):
    """A store whose files are missing, empty or cut short."""


def write_manifest(path: str | os.PathLike) -> None:
    """Record the sizes of the store's files in its manifest (called by the writer before the rename)."""
    path = Path(path)
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = path / MANIFEST
    with open(manifest, "w") as fh:
        json.dump({"format": "gfmkit-store", "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def check_store_files(path: str | os.PathLike) -> None:
    """Raise :class:`StoreDamaged` naming the store and the problem when its files cannot be read whole."""
    path = Path(path)
    if not path.exists():
        raise StoreDamaged(f"{path}: no such store")
    if not path.is_dir():
        raise StoreDamaged(f"{path}: is a file, not an ADIOS2 store (a .bp directory)")
    entries = {p.name: p for p in path.iterdir()}
    key = (str(path.resolve()), tuple(sorted((n, p.stat().st_size, p.stat().st_mtime_ns) for n, p in entries.items())))
    if key not in _verdicts:
        try:
            if MANIFEST in entries:
                _check_manifest(path, entries)
            else:
                _check_structure(path, entries)
                _probe(path)
            _verdicts[key] = None
        except StoreDamaged as exc:
            _verdicts[key] = str(exc)
    if _verdicts[key] is not None:
        raise StoreDamaged(_verdicts[key])


def _check_manifest(path: Path, entries: dict[str, Path]) -> None:
    try:
        recorded = json.loads(entries[MANIFEST].read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StoreDamaged(f"{path}: damaged store, its {MANIFEST} cannot be read") from None
    for name, size in recorded.items():
        if name not in entries:
            raise StoreDamaged(f"{path}: damaged store, {name} is missing")
        actual = entries[name].stat().st_size
        if actual != size:
            state = "empty" if actual == 0 else f"{actual} bytes"
            raise StoreDamaged(f"{path}: damaged store, {name} is {state} but was written with {size} bytes "
                               "(cut short by a full disk or an interrupted copy?)")


def _check_structure(path: Path, entries: dict[str, Path]) -> None:
    if "md.idx" not in entries or "md.0" not in entries:
        missing = "md.idx" if "md.idx" not in entries else "md.0"
        raise StoreDamaged(f"{path}: not a readable ADIOS2 store, its metadata file {missing} is missing")
    data = sorted(n for n in entries if n.startswith("data."))
    if not data:
        raise StoreDamaged(f"{path}: damaged store, its data file data.0 is missing")
    for name in ["md.idx", "md.0"]:
        if entries[name].stat().st_size == 0:
            raise StoreDamaged(f"{path}: damaged store, {name} is empty")
    with open(entries["md.idx"], "rb") as fh:  # BP4 and BP5 index tables open with this header
        if not fh.read(len(BP_HEADER)) == BP_HEADER:
            raise StoreDamaged(f"{path}: not a readable ADIOS2 store, its md.idx does not start with an ADIOS2 "
                               "index table")


def _probe(path: Path) -> None:
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_read_block_ends, args=(str(path), send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(PROBE_TIMEOUT):
            raise StoreDamaged(f"{path}: damaged store, reading its data did not finish within {PROBE_TIMEOUT:g} s "
                               "(a data file cut short?)")
        try:
            problem = receive.recv()
        except EOFError:
            problem = "the reading process died"
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        receive.close()
    if problem:
        raise StoreDamaged(f"{path}: damaged store, {problem}")


def _read_block_ends(path: str, send) -> None:
    """In a child process: read the last row of every block of every variable; send '' or the problem."""
    try:
        import adios2

        empty = [p.name for p in sorted(Path(path).glob("data.*")) if p.stat().st_size == 0]
        with adios2.FileReader(path) as reader:
            for name, meta in reader.available_variables().items():
                if not meta.get("Shape"):
                    continue
                for block in reader.all_blocks_info(name)[0]:
                    start = [int(x) for x in block["Start"].split(",")]
                    count = [int(x) for x in block["Count"].split(",")]
                    if count[0] == 0:
                        continue
                    if empty and int(block.get("WriterID", 0)) == 0 and "data.0" in empty:
                        send.send("data.0 is empty")  # where writer 0's blocks live; a read would never return
                        return
                    reader.read(name, [start[0] + count[0] - 1, *start[1:]], [1, *count[1:]])
        send.send("")
    except Exception as exc:  # noqa: BLE001 - any failure is the verdict
        from gfmkit.data.ranged import adios_message  # ranged imports this module

        send.send(adios_message(exc)[:300])
    finally:
        send.close()
