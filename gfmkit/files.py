"""Atomic writes: nothing gfmkit writes is ever left half-written under its final name.

Temporaries live beside their final path as ``.NAME.tmp-HOST-PID-XXXX`` (and a replaced directory
briefly as ``.NAME.old-HOST-PID-XXXX``), so the next write to the same path can tell the leftovers
of a killed writer (same host, process gone) from a writer that is still running, and remove them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gfmkit.log import get_logger

log = get_logger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname().split(".")[0]) or "host"


def temporary_sibling(final: str | os.PathLike, kind: str = "tmp") -> Path:
    """A new, empty directory beside ``final`` named ``.NAME.KIND-HOST-PID-XXXX``; the parent must exist."""
    final = Path(final)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.{kind}-{_HOST}-{os.getpid()}-", dir=final.parent))


def stale_temporaries(final: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Leftovers of interrupted writes to ``final``: (removable, unknown).

    Removable: written on this host by a process that no longer exists. Unknown: another host's, or
    in a name gfmkit no longer uses; those are only reported, since their writer may still be running.
    """
    final = Path(final)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(?P<rest>.+)$")
    removable, unknown = [], []
    if not final.parent.is_dir():
        return removable, unknown
    for entry in final.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None:
            continue
        parts = match["rest"].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit() and not _alive(int(parts[1])):
            removable.append(entry)
        elif len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit():
            continue  # a write in progress in another process of this host
        else:
            unknown.append(entry)
    return removable, unknown


def remove_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Remove the leftovers of killed writes to ``final`` (see :func:`stale_temporaries`); return them."""
    removable, unknown = stale_temporaries(final)
    for path in removable:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path)
    for path in unknown:
        log.warning("%s looks like the leftover of an interrupted write (another host's or an older gfmkit's); "
                    "remove it by hand if no write to %s is running", path, Path(final).name)
    return removable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it into place.

    Works for files and for directories (an ADIOS2 ``.bp`` store is a directory). On an exception the
    temporary is removed and ``final`` is untouched. A file never replaces a directory, nor a directory
    a file: that is refused (``IsADirectoryError`` / ``NotADirectoryError``) whatever ``overwrite`` says.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "exists (pass overwrite=True to replace it)", str(final))
    remove_stale_temporaries(final)
    tmp = temporary_sibling(final) / final.name
    try:
        yield tmp
        if tmp.is_file():  # on disk before the rename, so a node crash cannot leave a truncated file
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        replace_path(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def replace_path(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``, replacing a file or a whole directory of the same kind, never leaving a mix."""
    if dst.is_symlink() or not dst.exists():
        os.replace(src, dst)
        return
    if dst.is_dir() != src.is_dir():
        what = "directory" if dst.is_dir() else "file"
        error = IsADirectoryError if dst.is_dir() else NotADirectoryError
        raise error(errno.EISDIR if dst.is_dir() else errno.ENOTDIR, f"is a {what}; gfmkit will not replace it", str(dst))
    if dst.is_dir():
        old = temporary_sibling(dst, "old")
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
