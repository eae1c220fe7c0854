"""Progress that fits where it is shown: a widget in a notebook, a bar on a terminal, a line per interval in a log.

Every long-running step of gfmkit reports progress through :func:`progress_bar`, which returns a
``tqdm``-compatible object (``update``, ``set_postfix``, ``close``, context manager):

* in a Jupyter notebook: tqdm's notebook widget;
* on a terminal (stderr is a TTY): tqdm's redrawn bar;
* otherwise (a batch job's log file, a pipe, CI): no carriage returns or cursor codes, one plain line
  every :data:`LOG_INTERVAL` seconds (and one at the end), e.g.
  ``epoch 3: 120/400 (30%) 00:12<00:28, 9.8 it/s, loss=0.31``.

Progress is off when ``set_progress(False)`` was called (the CLI's ``--no-progress``), or when the
environment sets ``GFMKIT_PROGRESS=0`` or tqdm's own ``TQDM_DISABLE=1``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.std import tqdm as _terminal_tqdm

#: Seconds between two progress lines in a log.
LOG_INTERVAL = float(os.environ.get("GFMKIT_PROGRESS_INTERVAL", "30"))
_enabled: bool | None = None
_FALSE = ("0", "false", "no", "off")


def set_progress(enabled: bool | None) -> None:
    """Turn progress display on or off for this process (None: back to the environment's default)."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether progress is shown at all (see the module doc)."""
    if _enabled is not None:
        return _enabled
    if os.environ.get("GFMKIT_PROGRESS", "1").lower() in _FALSE:
        return False
    return os.environ.get("TQDM_DISABLE", "").lower() in ("", *_FALSE)


def display_kind() -> str:
    """``notebook``, ``terminal`` or ``log``: where progress goes from this process."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        return "notebook"
    stream = sys.stderr
    return "terminal" if hasattr(stream, "isatty") and stream.isatty() else "log"


class LogLines(_terminal_tqdm):
    """tqdm that writes one complete line per refresh (at most every ``mininterval`` seconds), for logs."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("file", sys.stderr)
        kwargs["leave"] = True
        kwargs.pop("position", None)
        kwargs.setdefault("bar_format", "{desc}: {n_fmt}{total_part} {elapsed}{remaining_part}, {rate_fmt}{postfix}")
        self._printed_n = None
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        total = d.get("total")
        d["total_part"] = f"/{total} ({100 * d['n'] / total:.0f}%)" if total else ""
        rate = d.get("rate") or (d["n"] / d["elapsed"] if d["elapsed"] else None)
        d["remaining_part"] = f"<{self.format_interval((total - d['n']) / rate)}" if total and rate else ""
        return d

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.n == self._printed_n and msg is None:
            return True  # nothing new since the last line
        self._printed_n = self.n
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if self.disable:
            return
        if self.n != self._printed_n:
            self.display()
        self.disable = True
        with self._lock:
            try:
                self._instances.remove(self)
            except KeyError:
                pass


def progress_bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm-compatible progress object for where this process shows progress (see the module doc).

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ``initial``, ``leave``, ``position``, ...).
    """
    disable = disable or not progress_enabled()
    kind = display_kind()
    if kind == "notebook" and not disable:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, **kwargs)
    if kind == "terminal" or disable:
        return _terminal_tqdm(iterable, disable=disable, **kwargs)
    return LogLines(iterable, **kwargs)
