"""Atomic writes: nothing gfmkit writes is ever left half-written under its final name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it into place.

    Works for files and for directories (an ADIOS2 ``.bp`` store is a directory). On an
    exception the temporary is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (pass overwrite=True to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent)) / final.name
    try:
        yield tmp
        if tmp.is_file():  # on disk before the rename, so a node crash cannot leave a truncated file
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        replace_path(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def replace_path(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``, replacing a file or a whole directory, never leaving a mix."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
