"""The cache's manifest: what was cached, how, and which shards are complete (with checksums).

It is rewritten atomically (temp file + rename) after every shard, so at any instant it lists
only shards whose files were fully written and synced before it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = 1
MANIFEST = "manifest.json"


def shard_names(index: int) -> tuple[str, str]:
    return f"shard-{index:05d}.rows", f"shard-{index:05d}.keys.json"


def file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, then rename over `path`: readers see the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    write_atomic(root / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def shard_ok(root: Path, entry: dict[str, Any]) -> bool:
    """The shard's files exist and match the checksum the manifest recorded for them."""
    rows, keys = root / entry["rows_file"], root / entry["keys_file"]
    return rows.exists() and keys.exists() and file_sha256(rows, keys) == entry["sha256"]
