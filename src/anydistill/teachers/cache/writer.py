"""`anydistill cache CONFIG`: run the teacher over the training data once, keep its top-k.

Samples are the run's training sequences (after tokenization and packing), deduplicated by
content key, in data order. Shard i holds samples [i * S, (i + 1) * S) and is computed from
those samples alone, in fixed batches, so recomputing a shard gives the same bytes: a killed
run resumes from the last shard the manifest lists, rewrites any shard whose checksum fails,
and ends byte-identical to an uninterrupted one. Each shard keeps its checksum beside it, so a
corrupt or lost manifest is rebuilt from the shards that verify, and a full disk stops with one
sentence, leaving the shards written before it listed and no temp file behind.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anydistill.data.collate import collate
from anydistill.data.views import step_inputs
from anydistill.errors import ConfigError, DataError
from anydistill.losses.chunk_math import head_logits
from anydistill.models.heads import HiddenStates, output_head
from anydistill.paths import (
    check_writable_dir,
    disk_full_message,
    is_disk_full,
    refuse_foreign,
)
from anydistill.teachers.cache.codec import VALUE_BITS, Codec
from anydistill.teachers.cache.keys import example_key
from anydistill.teachers.cache.manifest import (
    FORMAT,
    MANIFEST,
    CorruptCacheFile,
    file_sha256,
    header_sha256,
    manifest_bytes,
    read_manifest,
    recovered_sha,
    shard_entry,
    shard_names,
    shard_ok,
    shard_sum,
    sum_name,
    write_atomic,
)

log = logging.getLogger(__name__)

ROWS_PER_BLOCK = 1024  # logits block size while taking the top-k


@dataclass(frozen=True)
class CacheSettings:
    k: int = 32
    value_bits: int = 12
    max_gap: float = 20.0
    samples_per_shard: int = 256
    batch_size: int = 8


@torch.no_grad()
def _top_k_rows(teacher, batch: dict, codec: Codec, vocab: int, device) -> tuple[np.ndarray, list]:
    """Encoded rows of every target position of the batch, and the row count per sample.
    A teacher that is not a module (a server) gives its top-k itself, through its signal."""
    if not isinstance(teacher, torch.nn.Module):
        inputs = step_inputs(batch, torch.device("cpu"))
        top = teacher.signal(inputs)
        return codec.encode(top.ids, top.logp, top.log_tail), inputs.select.sum(dim=1).tolist()
    inputs = step_inputs(batch, device)
    hidden = HiddenStates(teacher)(inputs.input_ids, inputs.attention_mask)[:, :-1][inputs.select]
    head = output_head(teacher)
    encoded = []
    for start in range(0, hidden.shape[0], ROWS_PER_BLOCK):
        h = hidden[start : start + ROWS_PER_BLOCK]
        logp = torch.log_softmax(head_logits(h, head, vocab), dim=-1)
        top, ids = logp.topk(codec.k, dim=-1)  # sorted: top-1 first
        if codec.k < vocab:
            tail = torch.logsumexp(logp.scatter(1, ids, float("-inf")), dim=-1)
        else:
            tail = torch.full_like(top[:, 0], float("-inf"))
        encoded.append(codec.encode(ids, top, tail))
    rows = np.concatenate(encoded) if encoded else np.zeros((0, codec.row_bytes), np.uint8)
    return rows, inputs.select.sum(dim=1).tolist()


def cache_header(
    teacher: dict[str, Any],
    data: dict[str, Any],
    settings: CacheSettings,
    codec: Codec,
    tok_hash: str,
    fingerprint: str,
    n_samples: int,
) -> dict[str, Any]:
    """The manifest's header: what the rows were computed from. `data` is seq_len/packing."""
    return {
        "format": FORMAT,
        "teacher": teacher,
        "tokenizer_hash": tok_hash,
        "dataset_fingerprint": fingerprint,
        "seq_len": data["seq_len"],
        "packing": data["packing"],
        "vocab_size": codec.vocab_size,
        "k": codec.k,
        "value_bits": codec.value_bits,
        "max_gap": codec.max_gap,
        "id_bits": codec.id_bits,
        "row_bytes": codec.row_bytes,
        "temperature": 1.0,
        "samples": n_samples,
        "samples_per_shard": settings.samples_per_shard,
        "batch_size": settings.batch_size,
    }


def _check_same_cache(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    for key, value in new.items():
        if old.get(key) != value:
            raise ConfigError(
                f"--out: {out} already holds a cache with a different `{key}` "
                f"({old.get(key)!r}, now {value!r}); pick another --out or delete it"
            )


# What a cache directory holds; anything else in --out is the user's, and refused.
_CACHE_NAMES = re.compile(
    r"^(manifest\.json|tokenizer|shard-\d+\.(rows|keys\.json|sum\.json))(\.tmp)?$"
)


def check_out(out: Path, settings: CacheSettings) -> Path:
    """--out is new, empty or a cache; the settings make sense. Nothing is made here."""
    if bad := [n for n in ("k", "samples_per_shard", "batch_size") if getattr(settings, n) < 1]:
        raise ConfigError(f"--{bad[0].replace('_', '-')} must be at least 1")
    if settings.value_bits not in VALUE_BITS:
        raise ConfigError(f"--value-bits must be one of {', '.join(map(str, VALUE_BITS))}")
    out = check_writable_dir(out, "--out")
    if out.is_dir():
        theirs = [p.name for p in out.iterdir() if not _CACHE_NAMES.match(p.name)]
        refuse_foreign(out, "--out", theirs, "are not a teacher cache")
    return out


def write_shards(
    out: Path,
    header: dict[str, Any],
    samples: list[tuple[str, dict]],
    teacher: torch.nn.Module,
    codec: Codec,
    pad_id: int,
    settings: CacheSettings,
    device: torch.device,
    done: dict[int, dict],
    progress: bool = True,
) -> Path:
    """Write every shard `out` lacks (or holds damaged) and the manifest after each one;
    returns the manifest path. `done` (`previous_shards`) lists the shards already written
    for the same header; those are kept."""
    job = _Job(out, teacher, codec, codec.vocab_size, pad_id, settings, device,
               header_sha256(header))  # fmt: skip
    per = settings.samples_per_shard
    n_shards = max(1, -(-len(samples) // per))
    shards = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("caching teacher top-k", total=len(samples))
        for index in range(n_shards):
            chunk = samples[index * per : (index + 1) * per]
            entry = _kept_shard(job, index, len(chunk), done.get(index))
            if entry is None:
                entry = _write_shard(job, index, chunk)
            shards.append(entry)
            manifest = {**header, "shards": shards, "complete": index == n_shards - 1}
            _save(out / MANIFEST, manifest_bytes(manifest), index)
            bar.advance(task, len(chunk))
    return out / MANIFEST


def unique_samples(data) -> list[tuple[str, dict]]:
    """(key, example) of the training sequences, first occurrence of each content key."""
    samples, seen = [], set()
    for example in data.train:
        key = example_key(example)
        if key not in seen:
            seen.add(key)
            samples.append((key, example))
    return samples


@dataclass(frozen=True)
class _Job:
    """What writing one shard needs."""

    out: Path
    teacher: Any
    codec: Codec
    vocab: int
    pad: int
    settings: CacheSettings
    device: torch.device
    header_sha: str


def previous_shards(out: Path, header: dict[str, Any]) -> dict[int, dict]:
    """Shards an earlier run listed, by index; a corrupt manifest is rebuilt (from the shards
    whose own checksum records still verify) rather than refused."""
    try:
        old = read_manifest(out)
    except CorruptCacheFile as err:
        log.warning("cache: %s; rebuilding it from the shards whose checksums verify", err)
        return {}
    except OSError as err:
        raise DataError(f"--out: cannot read {out / MANIFEST} ({err.strerror or err})") from None
    if old is None:
        return {}
    _check_same_cache({k: old.get(k) for k in header}, header, out)
    return {
        e["index"]: e
        for e in old["shards"]
        if isinstance(e, dict) and isinstance(e.get("index"), int)
    }


def _listed_sha(out: Path, listed: dict | None) -> str | None:
    try:
        return listed["sha256"] if listed is not None and shard_ok(out, listed) else None
    except (KeyError, TypeError):  # a hand-edited manifest line: verify from the shard instead
        return None


def _kept_shard(job: _Job, index: int, n_samples: int, listed: dict | None) -> dict | None:
    """The manifest line of shard `index` if its files verify (against the old manifest or
    the shard's own checksum record); None when it must be (re)written."""
    sha = _listed_sha(job.out, listed) or recovered_sha(job.out, index, job.header_sha)
    if sha is None:
        return None
    record = shard_sum(sha, job.header_sha)
    path = job.out / sum_name(index)
    if not path.exists() or path.read_bytes() != record:  # a cache from before the records
        _save(path, record, index)
    return shard_entry(job.out, index, n_samples, job.codec.row_bytes, sha)


def _write_shard(job: _Job, index: int, chunk: list[tuple[str, dict]]) -> dict:
    rows_file, keys_file = shard_names(index)
    parts, counts = [], []
    size = job.settings.batch_size
    batches = [
        collate([ex for _, ex in chunk[start : start + size]], job.pad)
        for start in range(0, len(chunk), size)
    ]
    if hasattr(job.teacher, "prefetch"):  # a server answers the whole shard concurrently
        job.teacher.prefetch(batches)
    for batch in batches:
        rows, per_sample = _top_k_rows(job.teacher, batch, job.codec, job.vocab, job.device)
        parts.append(rows)
        counts.extend(per_sample)
    rows = np.concatenate(parts) if parts else np.zeros((0, job.codec.row_bytes), np.uint8)
    keys = json.dumps({"keys": [k for k, _ in chunk], "rows": counts}).encode()
    _save(job.out / rows_file, rows.tobytes(), index)
    _save(job.out / keys_file, keys, index)
    sha = file_sha256(job.out / rows_file, job.out / keys_file)
    _save(job.out / sum_name(index), shard_sum(sha, job.header_sha), index)  # last: it vouches
    return shard_entry(job.out, index, len(chunk), job.codec.row_bytes, sha)


def _save(path: Path, data: bytes, index: int) -> None:
    """write_atomic, with a full disk (or any failed write) said in one sentence."""
    try:
        write_atomic(path, data)
    except OSError as err:
        if is_disk_full(err):
            kept = (
                f"the {index} complete shards before it stay listed and are kept"
                if index
                else "no shard was complete yet"
            )
            raise DataError(disk_full_message(path, len(data), kept)) from None
        raise DataError(
            f"--out: cannot write {path} ({err.strerror or err}); check the directory"
        ) from None
