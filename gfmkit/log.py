"""Logging that is quiet by default: the library logs to ``gfmkit.*`` loggers without handlers.

Notebooks see warnings only (Python's last-resort handler); the CLI calls :func:`set_verbosity`
to print progress messages on stderr. Non-zero MPI ranks stay quiet unless asked.
"""

from __future__ import annotations

import logging
import re
import sys

_ROOT = "gfmkit"
logging.getLogger(_ROOT).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """Logger for a gfmkit module (pass ``__name__``)."""
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def set_verbosity(level: int | str = "INFO", *, rank: int = 0) -> None:
    """Send gfmkit log records at ``level`` and above to stderr (rank 0 only by default)."""
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        if getattr(handler, "_gfmkit", False):
            root.removeHandler(handler)
    if rank != 0:
        root.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._gfmkit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


#: a terminal colour code (ESC [ ... m), as libraries (ADIOS2, ipyparallel tracebacks) put into messages
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def strip_colour(text: str) -> str:
    """``text`` without terminal colour codes."""
    return _COLOUR.sub("", text)
