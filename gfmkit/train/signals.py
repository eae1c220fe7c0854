"""Stop requests: signals and wall time, turned into one flag the ranks agree on at a step boundary.

Batch systems warn before they kill: PBS sends SIGTERM at the wall time (then SIGKILL), Slurm sends
SIGTERM at the end and SIGUSR1 earlier only with ``--signal=USR1@SECONDS``. The handlers here only set
a flag (nothing else is safe inside a signal handler, and a rank must not stop alone); the trainer sums
the flag over ranks at the next step boundary, then every rank stops together after an atomic
checkpoint. A deadline (with a margin) raises the same flag without any signal: the configured wall
time counted from the trainer's start, or the Slurm job's end (``SLURM_JOB_END_TIME``, a Unix time that
Slurm puts in the job's environment), whichever comes first. PBS exports no end time: set
``wall_time`` there (PBS's SIGTERM at the limit leaves only its short kill delay to save).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType

from gfmkit.log import get_logger

log = get_logger(__name__)

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
#: Where a scheduler tells a job when it will be killed (Unix time).
END_TIME_VARIABLES = ("SLURM_JOB_END_TIME",)


def stop_deadline(wall_time: float | None, started: float, env: Mapping[str, str] | None = None) -> float | None:
    """The Unix time by which training must be over: ``started + wall_time`` or the scheduler's end
    time for this job, whichever is earlier (None when neither is known)."""
    env = os.environ if env is None else env
    candidates = [started + wall_time] if wall_time is not None else []
    for name in END_TIME_VARIABLES:
        try:
            end = float(env[name])
        except (KeyError, ValueError):
            continue
        if end > 0:  # 0: no limit
            candidates.append(end)
    return min(candidates) if candidates else None


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: schedulers signal every process of a job, and a worker that dies
    of SIGTERM makes the training process fail before it can checkpoint. Workers end with the loader."""
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class StopRequest:
    """Install with ``with StopRequest(deadline=..., margin=...) as stop:``; read ``stop.requested``.

    Handlers are installed only in the main thread (Python allows no other) and the previous handlers
    come back on exit, so a notebook kernel keeps its own behaviour after training.
    """

    def __init__(self, *, deadline: float | None = None, margin: float = 0.0, signals: tuple[str, ...] = STOP_SIGNALS):
        self.deadline, self.margin = deadline, margin  # deadline: Unix time
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
        """True when a stop was requested, or the deadline minus the margin would pass during the next step."""
        late = self.deadline is not None and time.time() + next_step_seconds + self.margin >= self.deadline
        if self.reason is None and late:
            self.reason = "wall_time"
        return self.reason is not None

    @property
    def requested(self) -> bool:
        return self.reason is not None
