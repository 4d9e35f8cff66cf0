"""Ctrl-C and SIGTERM during training: finish the step, save, stop; a second one stops now."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path


class StoppedByUser(KeyboardInterrupt):
    """Raised after the checkpoint of the step a stop was requested in has been saved."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(
            f"stopped at step {step}; its checkpoint is in {run_dir / 'checkpoints'} and the "
            "same command resumes from it"
        )


class GracefulStop:
    """While active, the first SIGINT/SIGTERM sets `requested`; the second interrupts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstopping after this step and saving a checkpoint (press Ctrl-C again to stop now)",
            file=sys.stderr,
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
