"""`anydistill cache`: a recipe's teacher and data -> a teacher cache (`writer.write_shards`).

The teacher is a model, or a server (`teacher.kind: server`), which is asked for `--k`
log-probs per token."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from anydistill.config import RunConfig
from anydistill.data.prepare import load_run_data, prepare_examples
from anydistill.errors import ConfigError
from anydistill.models.from_config import load_model, pick_device
from anydistill.models.loading import freeze, max_positions
from anydistill.models.run_tokenizers import teacher_tokenizer
from anydistill.models.tokenizer import real_vocab_size, tokenizer_hash
from anydistill.teachers.cache.codec import Codec
from anydistill.teachers.cache.keys import dataset_fingerprint
from anydistill.teachers.cache.writer import (
    CacheSettings,
    cache_header,
    check_out,
    previous_shards,
    unique_samples,
    write_shards,
)

__all__ = ["CacheSettings", "write_cache"]


def _teacher_identity(cfg: RunConfig) -> dict[str, Any]:
    t = cfg.teacher
    if t.kind == "server":  # the served model's name; where it is served may change
        return {"server": t.model}
    ident: dict[str, Any] = {"path": t.path, "revision": t.revision, "dtype": t.dtype}
    if t.init is not None:  # random weights: the config and the seed are the identity
        blob = json.dumps(t.init, sort_keys=True).encode()
        ident.update(init_sha=hashlib.sha256(blob).hexdigest()[:32], seed=cfg.train.seed + 1)
    return ident


def write_cache(cfg: RunConfig, out: Path, settings: CacheSettings, progress: bool = True) -> Path:
    """Write (or finish) the cache in `out`; returns the manifest path. A start that fails
    before its first shard removes what it made (the folder, the trained tokenizer)."""
    if cfg.teacher.kind == "cache":
        raise ConfigError("teacher.kind: `anydistill cache` needs a teacher model, not a cache")
    out = check_out(out, settings)  # before anything is made
    made_out, made_tok = not out.exists(), not (out / "tokenizer").exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write(cfg, out, settings, progress)
    except BaseException:
        if not (out / "manifest.json").exists():
            if made_tok:
                shutil.rmtree(out / "tokenizer", ignore_errors=True)
            if made_out and not any(out.iterdir()):
                out.rmdir()
        raise


def _write(cfg: RunConfig, out: Path, settings: CacheSettings, progress: bool) -> Path:
    device = pick_device(cfg.train.device)
    raw = load_run_data(cfg)
    tokenizer = teacher_tokenizer(cfg, out, raw.texts(cfg))
    vocab = real_vocab_size(tokenizer)
    try:
        codec = Codec(settings.k, vocab, settings.value_bits, settings.max_gap)
    except ValueError:
        raise ConfigError(
            f"--k {settings.k} must be at most the vocabulary size ({vocab})"
        ) from None
    if not (out / "tokenizer").is_dir():  # training from the cache reads it from here
        tokenizer.save_pretrained(str(out / "tokenizer.tmp"))
        (out / "tokenizer.tmp").rename(out / "tokenizer")
    samples = unique_samples(prepare_examples(raw, tokenizer, tokenizer, cfg, align=False))
    header = cache_header(
        _teacher_identity(cfg),
        {"seq_len": cfg.data.seq_len, "packing": cfg.data.packing},
        settings,
        codec,
        tokenizer_hash(tokenizer),
        dataset_fingerprint(k for k, _ in samples),
        len(samples),
    )
    done = previous_shards(out, header)  # a different cache in --out is refused before loading
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if cfg.teacher.kind == "server":  # asked for --k log-probs per token, whatever top_k says
        from anydistill.teachers.server import ServerTeacher

        server = {**cfg.teacher.server_settings(), "top_k": settings.k, "k_key": "--k"}
        teacher = ServerTeacher.connect(tokenizer, "bucket", cfg.data.seq_len, **server)
        try:
            return write_shards(
                out, header, samples, teacher, codec, pad, settings, device, done, progress
            )
        finally:
            teacher.close()
    teacher = freeze(load_model(cfg.teacher, "teacher", vocab, device, True, cfg.train.seed + 1))
    limit = max_positions(teacher)
    if limit is not None and cfg.data.seq_len > limit:
        raise ConfigError(f"data.seq_len is {cfg.data.seq_len} but the teacher handles {limit}")
    return write_shards(out, header, samples, teacher, codec, pad, settings, device, done, progress)
