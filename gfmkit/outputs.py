"""One output-path policy for everything gfmkit writes: never delete or replace what gfmkit did not write.

* A store or a single output file that already exists is refused with one line naming it, unless
  ``overwrite=True`` (CLI ``--overwrite``) is given AND the path is recognisably gfmkit's own output of
  the same kind (a store gfmkit wrote; a file, for file outputs). An unrelated directory is never
  replaced, even with ``overwrite``.
* A figure or a script written into an existing directory is added to it; nothing else there is touched.
* A run directory is used when it is missing, empty, or a gfmkit run directory; one holding other files
  is refused. ``overwrite`` on a run directory removes only the files gfmkit's trainer wrote there.
* Before any work starts the parent chain is checked (a file in the way, no write permission, a full
  disk), and under MPI rank 0 checks and every rank learns the answer (:func:`agree`), so all raise
  the same :class:`OutputError` and none is left waiting.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from gfmkit.rundir import RUN_FILES

T = TypeVar("T")

#: A store's file written by gfmkit beside ADIOS2's own: its files and their sizes at write time.
STORE_MANIFEST = "gfmkit-store.json"
_ADIOS_FILE_PREFIXES = ("data.", "md.", "mmd.", "profiling.json")
#: Below this much free space a write is refused before it starts.
MIN_FREE_BYTES = 16 << 20


class OutputError(ValueError):
    """An output path gfmkit will not write to; the message names the path and says why, in one line."""


def agree(comm: Any, check: Callable[[], T]) -> T:
    """Run ``check`` on rank 0 and give every rank its result, or raise its :class:`OutputError`
    (or ``OSError``) on every rank, so that no rank goes on while another has failed."""
    if comm is None or getattr(comm, "size", 1) == 1:
        return check()
    outcome: tuple[str, Any] | None = None
    if comm.rank == 0:
        try:
            outcome = ("ok", check())
        except (OutputError, OSError) as exc:
            outcome = ("error", _one_line(exc))
    status, value = comm.bcast(outcome, root=0)
    if status == "error":
        raise OutputError(value)
    return value


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


# -- the parent chain ---------------------------------------------------------------------------------
def check_parent(path: str | os.PathLike, *, need_bytes: int = 0) -> Path:
    """Check that ``path`` can be created: its nearest existing ancestor is a writable directory with
    free space (at least ``need_bytes`` and :data:`MIN_FREE_BYTES`). Creates nothing; returns ``path``."""
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor.is_symlink():  # a dangling link in the way
            raise OutputError(f"{path}: {ancestor} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {ancestor} is not writable")
    free = shutil.disk_usage(ancestor).free
    if free < max(need_bytes, MIN_FREE_BYTES):
        raise OutputError(f"{path}: only {free / 2**20:.1f} MiB free on the disk of {ancestor}")
    return path


def remove_created(folders: Iterable[Path]) -> None:
    """Remove ``folders`` (innermost first) where they are empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


# -- stores -------------------------------------------------------------------------------------------
def is_gfmkit_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store gfmkit wrote: a directory of ADIOS2 files with gfmkit's manifest,
    or (stores of gfmkit before the manifest) one whose ADIOS2 attributes say gfmkit wrote it."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    names = [p.name for p in path.iterdir()]
    if not names or any(n != STORE_MANIFEST and not n.startswith(_ADIOS_FILE_PREFIXES) for n in names):
        return False
    if STORE_MANIFEST in names:
        try:
            return json.loads((path / STORE_MANIFEST).read_text()).get("format") == "gfmkit-store"
        except (OSError, ValueError):
            return False
    return _attributes_say_gfmkit(path)


def _attributes_say_gfmkit(path: Path) -> bool:
    from gfmkit.data.store_check import StoreDamaged, check_store_files

    try:
        check_store_files(path)
        import adios2

        from gfmkit.data import store_format as fmt

        with adios2.FileReader(str(path)) as reader:
            return fmt.A_FORMAT in reader.available_attributes() and reader.read_attribute(fmt.A_FORMAT) == fmt.FORMAT
    except (StoreDamaged, RuntimeError, ValueError):
        return False


def check_store_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse to write the store ``path`` where that would replace something it may not (see module doc)."""
    path = Path(path)
    check_parent(path)
    if path.exists() or path.is_symlink():
        if not is_gfmkit_store(path):
            what = "a file" if path.is_file() else "a directory that is not a gfmkit store"
            raise OutputError(f"{path} exists and is {what}; gfmkit never replaces it, even with --overwrite: "
                              "choose another output path")
        if not overwrite:
            raise OutputError(f"{path} exists (a gfmkit store); pass --overwrite (overwrite=True) to replace it")
    return path


# -- single files (figures, scripts, tables) ----------------------------------------------------------
def output_file(path: str | os.PathLike, default_name: str, *, overwrite: bool = False) -> Path:
    """Where to write one output file: ``path`` itself, or ``path/default_name`` when ``path`` is an
    existing directory (added to it). An existing file is refused unless ``overwrite``; an existing
    directory of the file's name always is."""
    path = Path(path)
    target = path / default_name if path.is_dir() else path
    check_parent(target)
    if target.is_dir():
        raise OutputError(f"{target} is a directory; gfmkit will not replace it with a file")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite (overwrite=True) to replace it")
    return target


def check_folder_files(folder: str | os.PathLike, names: Iterable[str], *, overwrite: bool = False) -> Path:
    """Check that the files ``names`` can be written into ``folder`` (missing, or an existing directory
    whose same-named files are replaced only with ``overwrite``; a directory of such a name never)."""
    folder = Path(folder)
    if not _writable_folder(folder, "a directory"):
        return folder
    present = [n for n in names if (folder / n).exists()]
    if any((folder / n).is_dir() for n in present):
        raise OutputError(f"{folder / next(n for n in present if (folder / n).is_dir())} is a directory; "
                          "gfmkit will not replace it with a file")
    if present and not overwrite:
        raise OutputError(f"{folder} already holds {', '.join(present)}; pass --overwrite (overwrite=True) "
                          "to replace them, or choose another directory")
    return folder


def _writable_folder(folder: Path, what: str) -> bool:
    """Whether ``folder`` exists (a directory gfmkit can write into); a file in its place, or a parent
    that cannot take it, is an OutputError. Creates nothing."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not {what}")
    check_parent(folder / "x" if folder.exists() else folder)
    return folder.exists()


# -- run directories ----------------------------------------------------------------------------------
def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory a gfmkit training run wrote: it holds only the files a trainer
    writes, or its config.yaml with run.json or metrics.jsonl, or checkpoints/last.pt."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return (bool(names) and names <= set(RUN_FILES)) \
        or ("config.yaml" in names and bool({"run.json", "metrics.jsonl"} & names)) \
        or (path / "checkpoints" / "last.pt").is_file()


def check_run_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check that a training run may write into ``path`` (see module doc); with ``overwrite`` on a gfmkit
    run directory, remove the files its trainer wrote (and nothing else). Returns ``path``."""
    path = Path(path)
    if not _writable_folder(path, "a run directory"):
        return path
    if not any(path.iterdir()):
        return path
    if not is_run_dir(path):
        others = sorted(p.name for p in path.iterdir())[:3]
        raise OutputError(f"{path} exists and is not a gfmkit run directory (it holds {', '.join(others)}"
                          f"{', ...' if len(list(path.iterdir())) > 3 else ''}); choose a new or empty directory")
    if overwrite:
        for name in RUN_FILES:
            target = path / name
            if name == "checkpoints":
                for checkpoint in ("last.pt", "best.pt"):
                    (target / checkpoint).unlink(missing_ok=True)
                remove_created([target])
            elif name != "figures":
                target.unlink(missing_ok=True)
    return path


def oserror_message(exc: OSError) -> str:
    """``PATH: reason`` for an OSError, in one line."""
    if exc.errno == errno.ENOSPC:
        return f"{exc.filename or 'output'}: the disk is full"
    return _one_line(exc)
