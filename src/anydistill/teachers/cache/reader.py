"""Read a teacher cache during training: look rows up by content key, refuse what does not fit.

Shards are memory-mapped and checksummed the first time this process touches them, so a
corrupted shard is refused (with the command that rewrites it), never used. Each rank reads
only the rows of its own samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from anydistill.data.views import StepInputs
from anydistill.errors import ConfigError, DataError
from anydistill.losses.sparse import SparseTeacher
from anydistill.models.tokenizer import tokenizer_hash
from anydistill.teachers.base import NO_EXTRAS, Needs
from anydistill.teachers.cache.codec import Codec
from anydistill.teachers.cache.keys import batch_keys
from anydistill.teachers.cache.manifest import (
    FORMAT,
    MANIFEST,
    CorruptCacheFile,
    file_sha256,
    read_json,
    read_manifest,
)


class TeacherCache:
    """A complete cache directory written by `anydistill cache`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        manifest = _complete_manifest(self.root)
        self.manifest = manifest
        try:
            self.codec = Codec(
                manifest["k"], manifest["vocab_size"], manifest["value_bits"], manifest["max_gap"]
            )
        except (KeyError, TypeError, ValueError) as err:
            raise _corrupt(self.root / MANIFEST, f"bad codec settings: {err}") from None
        self._where: dict[str, tuple[int, int, int]] = {}
        for entry in manifest["shards"]:
            keys = _shard_keys(self.root, entry)
            offsets = np.concatenate([[0], np.cumsum(keys["rows"])]).tolist()
            for j, key in enumerate(keys["keys"]):
                self._where[key] = (entry["index"], offsets[j], keys["rows"][j])
        self._shards: dict[int, np.ndarray] = {}

    def check_compatible(
        self, tokenizer: PreTrainedTokenizerBase, seq_len: int, keys: list[str]
    ) -> None:
        """Refuse a cache made for another tokenizer, sequence length or dataset."""
        m = self.manifest
        if m["tokenizer_hash"] != tokenizer_hash(tokenizer):
            raise ConfigError(
                f"teacher.path: the cache in {self.root} was built with a different tokenizer; "
                "rebuild it with this run's tokenizer"
            )
        if m["seq_len"] != seq_len:
            raise ConfigError(
                f"teacher.path: the cache was built with data.seq_len {m['seq_len']}, this run "
                f"uses {seq_len}; use the same seq_len or rebuild the cache"
            )
        missing = sum(1 for k in keys if k not in self._where)
        if missing:
            raise ConfigError(
                f"teacher.path: {missing} of {len(keys)} training sequences are not in the cache "
                f"in {self.root} (it was built for a different dataset); rebuild it for this data"
            )

    def _shard(self, index: int) -> np.ndarray:
        if index not in self._shards:
            entry = self.manifest["shards"][index]
            rows, keys = self.root / entry["rows_file"], self.root / entry["keys_file"]
            if file_sha256(rows, keys) != entry["sha256"]:
                raise DataError(
                    f"teacher.path: {rows.name} in {self.root} fails its checksum; {REWRITE}"
                )
            data = np.memmap(rows, dtype=np.uint8, mode="r") if rows.stat().st_size else None
            width = self.codec.row_bytes
            self._shards[index] = (
                data.reshape(-1, width) if data is not None else np.zeros((0, width), np.uint8)
            )
        return self._shards[index]

    def rows(self, keys: list[str], counts: list[int]) -> np.ndarray:
        parts = []
        for key, count in zip(keys, counts, strict=True):
            if key not in self._where:
                raise DataError("teacher cache: a batch sequence is not in the cache")
            shard, start, n = self._where[key]
            if n != count:
                raise DataError(f"teacher cache: a sequence has {n} cached rows, {count} targets")
            parts.append(self._shard(shard)[start : start + n])
        return np.concatenate(parts) if parts else np.zeros((0, self.codec.row_bytes), np.uint8)

    def signal(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        select: torch.Tensor,
        tail: str,
    ) -> SparseTeacher:
        """The sparse teacher for a batch's selected rows, in the loss engine's row order."""
        keys = batch_keys(input_ids, attention, select)
        ids, logp, log_tail = self.codec.decode(self.rows(keys, select.sum(dim=1).tolist()))
        device = input_ids.device
        return SparseTeacher(ids.to(device), logp.to(device), log_tail.to(device), tail)


_HEADER_KEYS = ("k", "vocab_size", "value_bits", "max_gap", "tokenizer_hash", "seq_len")
REWRITE = "rerun `anydistill cache` with the same config to rewrite it"


def _corrupt(path: Path, reason: str) -> DataError:
    return DataError(f"teacher.path: {path} is corrupt ({reason}); {REWRITE}")


def _complete_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a finished cache of this format, or one sentence saying what is not."""
    try:
        manifest = read_manifest(root)
    except CorruptCacheFile as err:
        raise DataError(
            f"teacher.path: {err}; rerun `anydistill cache` with the same config to rebuild it "
            "(shards that pass their checksums are kept)"
        ) from None
    if manifest is None:
        raise ConfigError(
            f"teacher.path: {root} has no manifest.json; build it with `anydistill cache`"
        )
    if manifest.get("format") != FORMAT:
        raise ConfigError(
            f"teacher.path: {root} has cache format "
            f"{manifest.get('format')}, this version reads {FORMAT}"
        )
    lacking = [k for k in _HEADER_KEYS if k not in manifest]
    if lacking:
        raise _corrupt(root / MANIFEST, f"no `{lacking[0]}`")
    if not manifest.get("complete"):
        raise ConfigError(
            f"teacher.path: the cache in {root} is incomplete; rerun `anydistill cache` "
            "with the same config to finish it"
        )
    return manifest


def _shard_keys(root: Path, entry: Any) -> dict[str, list]:
    """A shard's key file, checked before it is trusted: both shard files exist, the key file
    matches its checksum (an edit would otherwise read as `a different dataset`), and it
    parses."""
    try:
        index, rows_file, keys_file = entry["index"], entry["rows_file"], entry["keys_file"]
    except (KeyError, TypeError):
        raise _corrupt(root / MANIFEST, f"a shard line lacks its files: {entry!r}") from None
    for name in (rows_file, keys_file):
        if not (root / name).is_file():
            raise DataError(f"teacher.path: shard {index} file {root / name} is missing; {REWRITE}")
    path = root / keys_file
    if "keys_sha256" in entry:
        intact = file_sha256(path) == entry["keys_sha256"]
    else:  # a cache written before key checksums: check both files now
        intact = file_sha256(root / rows_file, path) == entry.get("sha256")
    if not intact:
        raise DataError(
            f"teacher.path: {path} fails its checksum (changed since `anydistill cache` wrote "
            f"it); {REWRITE}"
        )
    try:
        keys = read_json(path)
    except CorruptCacheFile as err:
        raise DataError(f"teacher.path: {err}; {REWRITE}") from None
    if not isinstance(keys, dict) or len(keys.get("keys", ())) != len(keys.get("rows", [0])):
        raise _corrupt(path, "not a shard key file")
    return keys


class CachedTeacher:
    """The offline top-k cache as a teacher kind (`kind = "cache"`, see teachers.base)."""

    kind = "cache"
    model = None

    def __init__(self, root: Path | str, tail: str) -> None:
        self.cache = TeacherCache(root)
        self.tail = tail

    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> SparseTeacher:
        if needs.hidden_layers or needs.attention_layers:
            raise ConfigError(
                "teacher.kind: a cache holds the teacher's top-k distribution only; terms on "
                "layer features need a live teacher (teacher.kind: model)"
            )
        return self.cache.signal(inputs.input_ids, inputs.attention_mask, inputs.select, self.tail)
