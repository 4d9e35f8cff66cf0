"""One training process per run directory: an advisory lock on `RUN_DIR/.anydistill-lock`.

The lock is `flock` on an open file, so the kernel releases it when the holder exits for any
reason (kill -9 included): a stale lock is simply free, and the next run takes it over. The
file itself keeps the holder's pid and host, to name it when a second run is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from anydistill.errors import ConfigError

LOCK_FILE = ".anydistill-lock"


class RunLock:
    """Held from `acquire()` to `release()` (or the end of the process)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, field: str = "output.dir") -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _holder(self.path)
            raise ConfigError(
                f"{field}: {self.path.parent} is in use by another training ({holder}); "
                "wait for it to finish or choose another output.dir"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"
