"""The run directory: what in it is ours, and the promise never to touch anything else.

Users point `output.dir` at folders that hold their own work, so a run
- trains only in a new or empty directory, or in one of its own (marked by `.anydistill-run`,
  or an older run recognised by its checkpoints/metrics and nothing else);
- locks it while it trains (train/lock.py), so a second run is refused, naming the first;
- on `output.overwrite` clears only its own entries, never `/`, home, the working directory
  or a folder above it, and never a directory that holds anything else;
- sets replaced entries aside until set-up succeeds, so a run that fails to start (a typo, a
  missing file, Ctrl-C) leaves the directory exactly as it found it; only the teacher's
  generated samples, expensive to remake, are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from anydistill.errors import ConfigError
from anydistill.paths import check_writable_dir, few, refuse_foreign
from anydistill.train.checkpoint import list_checkpoints
from anydistill.train.lock import LOCK_FILE, RunLock

MARKER = ".anydistill-run"
ASIDE = ".anydistill-replaced"
RUN_ENTRIES = frozenset(
    {
        MARKER,
        LOCK_FILE,
        ASIDE,
        "config.yaml",
        "metrics.jsonl",
        "checkpoints",
        "final",
        "tokenizer",
        "student_tokenizer",
        "generated",
        "eval.json",
        "report.html",
        "plots",
        "tensorboard",
        "speculate.json",
        "pruned",
        "converted",
    }
)
# What a rerun of a run without checkpoints keeps: remaking them costs real time.
KEPT_ON_RESTART = ("generated", "tokenizer", "student_tokenizer")
FIELD = "output.dir"


def is_ours(name: str) -> bool:
    """A name a run writes into its directory (temp names included)."""
    return name.removesuffix(".tmp") in RUN_ENTRIES


def _names(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def _looks_like_old_run(path: Path, names: set[str]) -> bool:
    """A run written before the marker existed: only our names, and a log or checkpoints."""
    if not names or not all(is_ours(n) for n in names):
        return False
    return bool(list_checkpoints(path / "checkpoints")) or "metrics.jsonl" in names


def refuse_protected(path: Path, field: str) -> None:
    """`/`, home, the working directory and any folder above it are never cleared."""
    target = path.expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    why = None
    if target == Path(target.anchor):
        why = "the file-system root"
    elif target == home or target in home.parents:
        why = "your home directory" if target == home else f"a folder above your home {home}"
    elif target == cwd or target in cwd.parents:
        why = "the working directory" if target == cwd else "a folder above the working directory"
    if why:
        raise ConfigError(
            f"{field}: refusing to clear {path} ({why}); give output.dir a directory of its own, "
            "e.g. runs/NAME"
        )


class RunDir:
    """Open a run directory for training; `abandon()` undoes a failed start, `close()` ends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self.lock = RunLock(self.path)
        self._made: list[Path] = []  # directories this process created, outermost first
        self._before: set[str] = set()
        self._aside_names: list[str] = []
        self._new_marker = False
        self._new_lock = False
        self._opened = False

    # -- opening ---------------------------------------------------------------------------

    def open(self, overwrite: bool, resume: bool, keep_on_restart: Iterable[str]) -> str:
        """Check, create, lock and prepare the directory; returns `fresh`, `restart` or
        `resume`. Raises ConfigError (with nothing changed) when the directory is not ours."""
        check_writable_dir(self.path, FIELD)
        if overwrite:
            refuse_protected(self.path, "output.overwrite")
        self._check_owned(_names(self.path), overwrite)
        self._make_dirs()
        self._new_lock = not (self.path / LOCK_FILE).exists()
        self.lock.acquire(FIELD)  # refused: the holder's lock file stays as it is
        names = _names(self.path) - {LOCK_FILE}
        self._before = names
        self._opened = True
        try:
            mode = self._choose_mode(names, overwrite, resume, set(keep_on_restart))
        except ConfigError:
            self.abandon()
            raise
        if MARKER not in names:
            self._write_marker()
        return mode

    def _check_owned(self, names: set[str], overwrite: bool) -> None:
        theirs = names - {LOCK_FILE}
        if MARKER not in names and not _looks_like_old_run(self.path, theirs):
            refuse_foreign(self.path, FIELD, theirs, "anydistill did not write")
        foreign = [n for n in theirs if not is_ours(n)]
        if overwrite and foreign:
            raise ConfigError(
                f"output.overwrite: {self.path} holds files that are not part of the run "
                f"({few(foreign)}); move them out or choose another output.dir"
            )

    def _choose_mode(self, names: set[str], overwrite: bool, resume: bool, keep: set[str]) -> str:
        ours = {n for n in names if is_ours(n)} - {MARKER}
        if overwrite:
            self._set_aside(ours)
            return "fresh"
        if list_checkpoints(self.path / "checkpoints"):
            if not resume:
                raise ConfigError(
                    f"{FIELD}: {self.path} holds a run with checkpoints and output.resume is "
                    "off; set output.resume=true to continue it, output.overwrite=true to start "
                    "over, or choose another output.dir"
                )
            return "resume"
        if not ours:
            return "fresh"
        if "final" in ours:
            raise ConfigError(
                f"{FIELD}: {self.path} holds a finished run (final/) with no checkpoint to "
                "resume from; choose another output.dir or set output.overwrite=true to replace it"
            )
        if not resume:
            raise ConfigError(
                f"{FIELD}: {self.path} holds an unfinished run and output.resume is off; set "
                "output.overwrite=true to start over or choose another output.dir"
            )
        # Stopped before its first checkpoint: start again, keeping what is costly to remake.
        self._set_aside(ours - keep)
        return "restart"

    def _make_dirs(self) -> None:
        missing = []
        probe = self.path.absolute()
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # made by another process meanwhile: not ours to remove
            self._made.append(folder)

    def _write_marker(self) -> None:
        from anydistill import __version__

        tmp = self.path / f"{MARKER}.tmp"
        tmp.write_text(
            json.dumps({"tool": "anydistill", "version": __version__, "created": time.time()})
        )
        tmp.replace(self.path / MARKER)
        self._new_marker = True

    # -- replaced entries ------------------------------------------------------------------

    def _set_aside(self, names: Iterable[str]) -> None:
        aside = self.path / ASIDE
        shutil.rmtree(aside, ignore_errors=True)  # left by a start that was killed: ours
        names = sorted(n for n in names if n != ASIDE)
        if not names:
            return
        aside.mkdir()
        for name in names:
            os.rename(self.path / name, aside / name)
            self._aside_names.append(name)

    def commit(self) -> None:
        """Set-up succeeded: what was set aside is really replaced now."""
        shutil.rmtree(self.path / ASIDE, ignore_errors=True)
        self._aside_names = []

    # -- undoing a failed start ------------------------------------------------------------

    def abandon(self) -> None:
        """Put the directory back as it was before `open`, keeping generated samples."""
        if self._opened and self.path.is_dir():
            for name in _names(self.path) - self._before - {LOCK_FILE, MARKER, ASIDE, "generated"}:
                if is_ours(name):
                    _remove(self.path / name)
            aside = self.path / ASIDE
            for name in self._aside_names:
                if not (self.path / name).exists():
                    os.rename(aside / name, self.path / name)
            self._aside_names = []
            shutil.rmtree(aside, ignore_errors=True)
        self._opened = False
        self.lock.release()
        if self.path.is_dir() and not (_names(self.path) - {LOCK_FILE, MARKER}):
            self._forget_new()

    def _forget_new(self) -> None:
        """Remove the marker, lock file and folders this process added, when nothing else is
        left in them."""
        for name, new in ((MARKER, self._new_marker), (LOCK_FILE, self._new_lock)):
            if new:
                (self.path / name).unlink(missing_ok=True)
        for folder in reversed(self._made):
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
        self._made = []

    def close(self) -> None:
        self.lock.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
