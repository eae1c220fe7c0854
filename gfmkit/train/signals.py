"""Stop requests: signals and wall time, turned into one flag the ranks agree on at a step boundary.

Batch systems warn before they kill: PBS sends SIGTERM at the wall time (then SIGKILL), Slurm sends
SIGTERM at the end and SIGUSR1 earlier only with ``--signal=USR1@SECONDS``. The handlers here only set
a flag (nothing else is safe inside a signal handler, and a rank must not stop alone); the trainer sums
the flag over ranks at the next step boundary, then every rank stops together after an atomic
checkpoint. A wall time (with a margin) raises the same flag without any signal.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from gfmkit.log import get_logger

log = get_logger(__name__)

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class StopRequest:
    """Install with ``with StopRequest(wall_time=..., margin=...) as stop:``; read ``stop.requested``.

    Handlers are installed only in the main thread (Python allows no other) and the previous handlers
    come back on exit, so a notebook kernel keeps its own behaviour after training.
    """

    def __init__(self, *, wall_time: float | None = None, margin: float = 0.0, signals: tuple[str, ...] = STOP_SIGNALS):
        self.started = time.monotonic()
        self.wall_time, self.margin = wall_time, margin
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        else:
            log.warning("training outside the main thread: SIGTERM/SIGUSR1 will not trigger a checkpoint")
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is None:
            self.reason = signal.Signals(signum).name

    def request(self, reason: str) -> None:
        """Ask for a stop (as a signal would)."""
        if self.reason is None:
            self.reason = reason

    def check(self, next_step_seconds: float = 0.0) -> bool:
        """True when a stop was requested, or the wall time minus the margin would pass during the next step."""
        if self.reason is None and self.wall_time is not None:
            elapsed = time.monotonic() - self.started
            if elapsed + next_step_seconds + self.margin >= self.wall_time:
                self.reason = "wall_time"
        return self.reason is not None

    @property
    def requested(self) -> bool:
        return self.reason is not None
