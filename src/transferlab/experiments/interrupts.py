"""Ctrl-C and SIGTERM at any stage of a run end it cleanly, with the command that continues it.

During an epoch the first signal only asks the loop to stop after the epoch (which is then checkpointed);
anywhere else (scan, decode, caching, between phases) it stops at once. Every cache write and result file
is atomic, so stopping at once loses only the work in progress. A second signal always stops at once.
"""

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class RunInterrupted(Exception):
    """The run stopped on a signal; what finished is on disk and `--resume` continues from it."""

    def __init__(self, run_dir: Path, resume_hint: str | None = None):
        super().__init__(f"interrupted; continue with: {resume_hint or f'transferlab compare --resume {run_dir}'}")
        self.run_dir = run_dir


class StopRequests:
    """What the signal handler and the training loop share."""

    def __init__(self) -> None:
        self.requested = False
        self.in_epoch = False

    def __call__(self) -> bool:
        """The training loop's `should_stop`."""
        return self.requested

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, a first signal lets the epoch in progress finish."""
        self.in_epoch = True
        try:
            yield
        finally:
            self.in_epoch = False
        if self.requested:
            raise KeyboardInterrupt


@contextmanager
def interruptible(run_dir: Path, resume_hint: str | None = None) -> Iterator[StopRequests]:
    """Turn SIGINT/SIGTERM anywhere inside into RunInterrupted(run_dir) (exit 130 in the CLI)."""
    stop = StopRequests()
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.in_epoch and not stop.requested:
            stop.requested = True
            print("\nstopping after this epoch (again to stop now)...", flush=True)
            return
        stop.requested = True
        raise KeyboardInterrupt

    previous: dict[int, Callable] = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, resume_hint) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
