"""The cache's manifest: what was cached, how, and which shards are complete (with checksums).

It is rewritten atomically (temp file + rename) after every shard, so at any instant it lists
only shards whose files were fully written and synced before it.

Each shard also keeps its checksum beside it (`shard-NNNNN.sum.json`, with a hash of the
cache header it was written for), so a lost or corrupt manifest is rebuilt from the shards
that still verify instead of recomputing them all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

FORMAT = 1
MANIFEST = "manifest.json"


class CorruptCacheFile(Exception):
    """A cache file that exists but cannot be parsed; `str()` names the file and why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is corrupt ({reason})")
        self.path = path


def shard_names(index: int) -> tuple[str, str]:
    return f"shard-{index:05d}.rows", f"shard-{index:05d}.keys.json"


def sum_name(index: int) -> str:
    return f"shard-{index:05d}.sum.json"


def file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def header_sha256(header: dict[str, Any]) -> str:
    """What a shard was computed for: the cache header (teacher, data, codec, shard size)."""
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def _write_file(f: IO[bytes], data: bytes) -> None:
    # One place where bytes reach the disk, so a test can make it run out of space.
    f.write(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, then rename over `path`: readers see the old file or the new, never half.

    A failed write (a full disk) removes its temp file, so nothing half-written is left."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            _write_file(f, data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The parsed JSON in `path`; CorruptCacheFile when it is not UTF-8 JSON (a torn write,
    a truncation, an edit)."""
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CorruptCacheFile(path, f"not UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise CorruptCacheFile(path, f"not JSON: {err.msg}, line {err.lineno}") from None


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest, None when there is none; CorruptCacheFile when it cannot be used."""
    path = root / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise CorruptCacheFile(path, "not a cache manifest: no `shards` list")
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1) + "\n").encode()


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    write_atomic(root / MANIFEST, manifest_bytes(manifest))


def shard_ok(root: Path, entry: dict[str, Any]) -> bool:
    """The shard's files exist and match the checksum the manifest recorded for them."""
    rows, keys = root / entry["rows_file"], root / entry["keys_file"]
    return rows.exists() and keys.exists() and file_sha256(rows, keys) == entry["sha256"]


def shard_entry(root: Path, index: int, samples: int, row_bytes: int, sha: str) -> dict:
    """The manifest's line for a verified shard (the same whether written or recovered)."""
    rows_file, keys_file = shard_names(index)
    return {
        "index": index,
        "rows_file": rows_file,
        "keys_file": keys_file,
        "samples": samples,
        "rows": (root / rows_file).stat().st_size // row_bytes,
        "sha256": sha,
        "keys_sha256": file_sha256(root / keys_file),
    }


def shard_sum(sha: str, header_sha: str) -> bytes:
    """The shard's own record of its checksum, written last, after its two files."""
    return (json.dumps({"sha256": sha, "header": header_sha}) + "\n").encode()


def recovered_sha(root: Path, index: int, header_sha: str) -> str | None:
    """The checksum of shard `index` from its own record, if that record is intact, is for
    this cache header, and the shard's files still match it; else None (rewrite the shard)."""
    path = root / sum_name(index)
    try:
        record = read_json(path) if path.exists() else None
    except CorruptCacheFile:
        return None
    if not isinstance(record, dict) or record.get("header") != header_sha:
        return None
    rows_file, keys_file = shard_names(index)
    entry = {"rows_file": rows_file, "keys_file": keys_file, "sha256": record.get("sha256")}
    return entry["sha256"] if shard_ok(root, entry) else None
