"""`anydistill cache CONFIG`: run the teacher over the training data once, keep its top-k.

Samples are the run's training sequences (after tokenization and packing), deduplicated by
content key, in data order. Shard i holds samples [i * S, (i + 1) * S) and is computed from
those samples alone, in fixed batches, so recomputing a shard gives the same bytes: a killed
run resumes from the last shard the manifest lists, rewrites any shard whose checksum fails,
and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anydistill.config import RunConfig
from anydistill.data.collate import collate
from anydistill.errors import ConfigError
from anydistill.losses.chunk_math import head_logits
from anydistill.models.heads import HiddenStates, output_head
from anydistill.models.loading import freeze, max_positions
from anydistill.models.tokenizer import real_vocab_size
from anydistill.teachers.cache.codec import Codec
from anydistill.teachers.cache.keys import dataset_fingerprint, example_key, tokenizer_hash
from anydistill.teachers.cache.manifest import (
    FORMAT,
    read_manifest,
    shard_names,
    shard_ok,
    write_atomic,
    write_manifest,
)
from anydistill.train.setup import load_model, pick_device, raw_data_and_tokenizer, tokenized
from anydistill.train.step import step_inputs

ROWS_PER_BLOCK = 1024  # logits block size while taking the top-k


@dataclass(frozen=True)
class CacheSettings:
    k: int = 32
    value_bits: int = 12
    max_gap: float = 20.0
    samples_per_shard: int = 256
    batch_size: int = 8


def _teacher_identity(cfg: RunConfig) -> dict[str, Any]:
    t = cfg.teacher
    ident: dict[str, Any] = {"path": t.path, "revision": t.revision, "dtype": t.dtype}
    if t.init is not None:  # random weights: the config and the seed are the identity
        blob = json.dumps(t.init, sort_keys=True).encode()
        ident.update(init_sha=hashlib.sha256(blob).hexdigest()[:32], seed=cfg.train.seed + 1)
    return ident


@torch.no_grad()
def _top_k_rows(teacher, batch: dict, codec: Codec, vocab: int, device) -> tuple[np.ndarray, list]:
    """Encoded rows of every target position of the batch, and the row count per sample."""
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


def _header(cfg, settings, codec, tok_hash, fingerprint, n_samples) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "teacher": _teacher_identity(cfg),
        "tokenizer_hash": tok_hash,
        "dataset_fingerprint": fingerprint,
        "seq_len": cfg.data.seq_len,
        "packing": cfg.data.packing,
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
                f"{out} already holds a cache with a different `{key}` "
                f"({old.get(key)!r}, now {value!r}); pick another --out or delete it"
            )


def write_cache(cfg: RunConfig, out: Path, settings: CacheSettings, progress: bool = True) -> Path:
    """Write (or finish) the cache in `out`; returns the manifest path."""
    if cfg.teacher.kind == "cache":
        raise ConfigError("teacher.kind: `anydistill cache` needs a teacher model, not a cache")
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.train.device)
    train_ds, eval_ds, tokenizer = raw_data_and_tokenizer(cfg, out)
    if not (out / "tokenizer").is_dir():  # training from the cache reads it from here
        tokenizer.save_pretrained(str(out / "tokenizer.tmp"))
        (out / "tokenizer.tmp").rename(out / "tokenizer")
    vocab = real_vocab_size(tokenizer)
    try:
        codec = Codec(settings.k, vocab, settings.value_bits, settings.max_gap)
    except ValueError as err:
        raise ConfigError(f"cache: {err}") from None
    data = tokenized(cfg, train_ds, eval_ds, tokenizer)
    samples, seen = [], set()
    for example in data.train:
        key = example_key(example)
        if key not in seen:
            seen.add(key)
            samples.append((key, example))
    header = _header(
        cfg,
        settings,
        codec,
        tokenizer_hash(tokenizer),
        dataset_fingerprint(k for k, _ in samples),
        len(samples),
    )
    old = read_manifest(out)
    if old is not None:
        _check_same_cache({k: old.get(k) for k in header}, header, out)
    done = {e["index"]: e for e in (old or {}).get("shards", [])}

    teacher = freeze(load_model(cfg.teacher, "teacher", vocab, device, True, cfg.train.seed + 1))
    limit = max_positions(teacher)
    if limit is not None and cfg.data.seq_len > limit:
        raise ConfigError(f"data.seq_len is {cfg.data.seq_len} but the teacher handles {limit}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per = settings.samples_per_shard
    n_shards = max(1, -(-len(samples) // per))
    shards = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("caching teacher top-k", total=len(samples))
        for index in range(n_shards):
            chunk = samples[index * per : (index + 1) * per]
            entry = done.get(index)
            if entry is None or not shard_ok(out, entry):
                entry = _write_shard(
                    out, index, chunk, teacher, codec, vocab, pad, settings, device
                )
            shards.append(entry)
            write_manifest(out, {**header, "shards": shards, "complete": index == n_shards - 1})
            bar.advance(task, len(chunk))
    return out / "manifest.json"


def _write_shard(out, index, chunk, teacher, codec, vocab, pad, settings, device) -> dict:
    rows_file, keys_file = shard_names(index)
    parts, counts = [], []
    for start in range(0, len(chunk), settings.batch_size):
        batch = collate([ex for _, ex in chunk[start : start + settings.batch_size]], pad)
        rows, per_sample = _top_k_rows(teacher, batch, codec, vocab, device)
        parts.append(rows)
        counts.extend(per_sample)
    rows = np.concatenate(parts) if parts else np.zeros((0, codec.row_bytes), np.uint8)
    keys = json.dumps({"keys": [k for k, _ in chunk], "rows": counts}).encode()
    write_atomic(out / rows_file, rows.tobytes())
    write_atomic(out / keys_file, keys)
    from anydistill.teachers.cache.manifest import file_sha256

    return {
        "index": index,
        "rows_file": rows_file,
        "keys_file": keys_file,
        "samples": len(chunk),
        "rows": int(rows.shape[0]),
        "sha256": file_sha256(out / rows_file, out / keys_file),
    }
