"""Checks on the paths a user gives, each failing with one sentence that names the field.

Every command that reads a file or writes into a directory goes through these, so a file
where a directory belongs, a read-only place, a missing file, non-UTF-8 text or a full disk
read the same everywhere. Nothing here creates or changes anything on disk.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from anydistill.errors import ConfigError, DataError


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable_dir(path: str | Path, field: str) -> Path:
    """`path` is (or can become) a directory this process may write into; nothing is made."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{field}: {path} is a file, not a directory; give a directory path")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise ConfigError(
            f"{field}: {path} cannot be made because {base} is a file; give another directory"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        what = path if base == path.absolute() else f"{base} (where {path} would be made)"
        raise ConfigError(f"{field}: {what} is not writable; give a directory you can write to")
    return path


def check_writable_file(path: str | Path, field: str) -> Path:
    """`path` is (or can become) a file this process may write; nothing is made."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{field}: {path} is a directory; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{field}: {path} is not writable; give a file you can write")
    base = _nearest_existing(path.parent.absolute())
    if not base.is_dir():
        raise ConfigError(
            f"{field}: {path} cannot be written because {base} is a file; give another path"
        )
    check_writable_dir(path.parent if str(path.parent) else Path("."), field)
    return path


def few(names: Iterable[str], n: int = 3) -> str:
    """`a, b, c and 4 more`: enough names for a sentence."""
    names = sorted(names)
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def refuse_foreign(path: Path, field: str, theirs: Iterable[str], whose: str) -> None:
    """One sentence when a folder we would write into holds files that are not ours."""
    theirs = list(theirs)
    if theirs:
        raise ConfigError(
            f"{field}: {path} holds files that {whose} ({few(theirs)}); choose an empty or new "
            "directory"
        )


def check_readable_file(path: str | Path, field: str, hint: str = "") -> Path:
    """`path` exists, is not a directory and can be read (pipes such as /dev/stdin count)."""
    path = Path(path).expanduser()
    tail = f"; {hint}" if hint else ""
    if not path.exists():
        raise DataError(f"{field}: {path} does not exist{tail}")
    if path.is_dir():
        raise DataError(f"{field}: {path} is a directory, not a file{tail}")
    if not os.access(path, os.R_OK):
        raise DataError(f"{field}: {path} is not readable; check its permissions")
    return path


def decode_utf8(raw: bytes, path: str | Path, field: str) -> str:
    """`raw` as UTF-8 (a leading BOM is dropped); one sentence naming where it is not."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{field}: {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
            "re-save it as UTF-8"
        ) from None


def read_text(path: str | Path, field: str, hint: str = "") -> str:
    """The UTF-8 text of a readable file, with one-sentence errors for every way it is not."""
    path = check_readable_file(path, field, hint)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{field}: cannot read {path} ({err.strerror or err})") from None
    return decode_utf8(raw, path, field)


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def disk_full_message(path: str | Path, needed: int | None, what_survives: str) -> str:
    """One sentence for a write that ran out of space: the file, the space it needed, the free
    space left, and what is still intact."""
    path = Path(path)
    try:
        free = shutil.disk_usage(_nearest_existing(path.absolute())).free
        free_text = f", {_size(free)} free"
    except OSError:
        free_text = ""
    need = f"about {_size(needed)} needed" if needed else "no space left"
    return (
        f"disk full while writing {path} ({need}{free_text}); free space and rerun "
        f"({what_survives})"
    )
