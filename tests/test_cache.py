"""The offline teacher cache: exactness at k = V, refusals, and crash-safe resumable writing."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe

from anydistill.config import config_from_dict
from anydistill.data.collate import collate
from anydistill.data.views import step_inputs
from anydistill.errors import ConfigError, DataError
from anydistill.losses.engine import distill_loss
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import HiddenStates, output_head
from anydistill.teachers import teacher_signal
from anydistill.teachers.cache.codec import Codec
from anydistill.teachers.cache.command import CacheSettings, write_cache
from anydistill.teachers.cache.reader import CachedTeacher, TeacherCache
from anydistill.train.setup import build_parts


def _recipe(tmp_path: Path, **changes) -> dict:
    base = dict(
        data__synthetic_size=48,
        data__seq_len=64,
        output__dir=str(tmp_path / "run"),
        train__progress=False,
        train__max_steps=3,
        train__warmup_steps=0,
        eval__every=0,
        output__report=False,
    )
    return tiny_recipe("fkl", **{**base, **changes})


def _cache_recipe(tmp_path: Path, cache: Path, **changes) -> dict:
    data = _recipe(tmp_path, **changes)
    data["teacher"] = {"kind": "cache", "path": str(cache), "tail": "bucket"}
    return data


@pytest.fixture(scope="module")
def exact_cache(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cache")
    recipe = _recipe(root)
    settings = CacheSettings(k=384, value_bits=32, samples_per_shard=20, batch_size=8)
    write_cache(config_from_dict(recipe), root / "cache", settings, progress=False)
    return root / "cache", recipe


def test_k_equal_vocab_gives_the_online_loss_and_gradients(exact_cache, tmp_path):
    cache, recipe = exact_cache
    parts = build_parts(config_from_dict(recipe), tmp_path / "a", torch.device("cpu"))
    cached = CachedTeacher(cache, "bucket")
    batch = collate(parts.data.train[:6], parts.tokenizer.pad_token_id)
    inputs = step_inputs(batch, torch.device("cpu"))
    terms = [ActiveTerm("kd", "jsd", weight=1.0, beta=0.3), ActiveTerm("ce", "ce", weight=0.2)]
    results = []
    for signal_ in (
        teacher_signal(parts.teacher, inputs),
        cached.signal(inputs),
    ):
        parts.student.zero_grad()
        rows = HiddenStates(parts.student)(inputs.input_ids, inputs.attention_mask)
        rows = rows[:, :-1][inputs.select]
        ones = torch.ones(rows.shape[0], dtype=torch.bool)
        out = distill_loss(
            rows,
            output_head(parts.student),
            signal_,
            inputs.labels,
            ones,
            terms,
            parts.vocab_size,
            normalizer=float(rows.shape[0]),
        )
        out.loss.backward()
        grads = [p.grad.clone() for p in parts.student.parameters() if p.grad is not None]
        results.append((out.loss.detach(), grads))
    (online, g_online), (from_cache, g_cache) = results
    torch.testing.assert_close(from_cache, online, rtol=1e-5, atol=0)
    for a, b in zip(g_cache, g_online, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_training_from_the_cache_matches_online_training(exact_cache, tmp_path):
    from conftest import train_rows

    from anydistill.train.loop import train

    cache, _ = exact_cache
    online = train_rows(train(config_from_dict(_recipe(tmp_path / "o", train__log_every=1))))
    cached = train_rows(
        train(config_from_dict(_cache_recipe(tmp_path / "c", cache, train__log_every=1)))
    )
    for a, b in zip(online, cached, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_foreign_or_misaligned_caches_are_refused(exact_cache, tmp_path):
    cache, _ = exact_cache
    cases = {
        "seq_len 64, this run uses 96": dict(data__seq_len=96),
        "not in the cache": dict(data__synthetic_size=60),
    }
    for message, changes in cases.items():
        cfg = config_from_dict(_cache_recipe(tmp_path / message[:6], cache, **changes))
        with pytest.raises(ConfigError, match=message):
            build_parts(cfg, tmp_path / "x", torch.device("cpu"))
    other = tmp_path / "other"  # the same cache, but beside a different tokenizer
    shutil.copytree(cache, other)
    shutil.rmtree(other / "tokenizer")
    from anydistill.data.synthetic import arithmetic_problems
    from anydistill.models.tokenizer_training import train_tokenizer

    texts = [r["text"] for r in arithmetic_problems(400, seed=0)]
    train_tokenizer(texts, vocab_size=400).save_pretrained(str(other / "tokenizer"))
    with pytest.raises(ConfigError, match="different tokenizer"):
        build_parts(
            config_from_dict(_cache_recipe(tmp_path / "t", other)),
            tmp_path / "y",
            torch.device("cpu"),
        )
    with pytest.raises(ConfigError, match="no manifest.json"):
        TeacherCache(tmp_path)


def test_incomplete_and_corrupted_caches(tmp_path):
    recipe = _recipe(tmp_path)
    out = tmp_path / "cache"
    settings = CacheSettings(k=8, value_bits=12, samples_per_shard=16)
    write_cache(config_from_dict(recipe), out, settings, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    original = (out / "shard-00001.rows").read_bytes()
    # A flipped byte: the reader refuses the shard, and rerunning the writer rewrites it.
    data = bytearray(original)
    data[5] ^= 0xFF
    (out / "shard-00001.rows").write_bytes(bytes(data))
    reader = TeacherCache(out)
    key_file = json.loads((out / manifest["shards"][1]["keys_file"]).read_text())
    with pytest.raises(DataError, match="fails its checksum"):
        reader.rows(key_file["keys"][:1], key_file["rows"][:1])
    write_cache(config_from_dict(recipe), out, settings, progress=False)
    assert (out / "shard-00001.rows").read_bytes() == original
    # Incomplete: refused with the command that finishes it.
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="incomplete; rerun `anydistill cache`"):
        TeacherCache(out)
    # Another k into the same directory is refused, naming the field.
    with pytest.raises(ConfigError, match="different `k`"):
        write_cache(
            config_from_dict(recipe), out, CacheSettings(k=16, samples_per_shard=16), progress=False
        )


def _cache_cmd(recipe: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "anydistill",
        "cache",
        str(recipe),
        "--out",
        str(out),
        "--k",
        "16",
        "--samples-per-shard",
        "4",
        "--batch-size",
        "2",
    ]


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*"))} | {
        "manifest.json": (root / "manifest.json").read_bytes()
    }


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_byte_identical(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tmp_path, data__synthetic_size=160)))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(_cache_cmd(recipe, tmp_path / "ref"), check=True, env=env, capture_output=True)
    reference = _files(tmp_path / "ref")
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):  # kill at random moments, each time resuming what the last left
        proc = subprocess.Popen(
            _cache_cmd(recipe, out),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # Wait until this process has listed a new shard, so the kill lands mid-writing.
        manifest = out / "manifest.json"
        before = manifest.read_bytes() if manifest.exists() else b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes() not in (before, b""):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))  # well inside the ~40 shards still to write
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    subprocess.run(_cache_cmd(recipe, out), check=True, env=env, capture_output=True)
    assert _files(out) == reference


def test_codec_round_trip_and_sizes():
    g = torch.Generator().manual_seed(0)
    logp_full = torch.log_softmax(torch.randn(50, 1000, generator=g) * 3, dim=-1)
    for bits, tol in ((8, 0.08), (12, 5e-3), (16, 3e-4), (32, 1e-5)):
        codec = Codec(32, 1000, bits)
        logp, ids = logp_full.topk(32)
        tail = torch.logsumexp(logp_full.scatter(1, ids, float("-inf")), dim=-1)
        got_ids, got_logp, got_tail = codec.decode(codec.encode(ids, logp, tail))
        assert torch.equal(got_ids, ids)
        assert (got_logp - logp).abs().max() < tol and (got_tail - tail).abs().max() < tol
        total = torch.logsumexp(torch.cat([got_logp, got_tail[:, None]], 1), dim=1)
        assert total.abs().max() < 1e-6  # decoded rows are distributions again
    assert Codec(32, 152064, 12).row_bytes == 8 + 72 + 47  # 18-bit ids, 12-bit gaps
    with pytest.raises(ValueError, match="value_bits"):
        Codec(8, 100, 10)
    assert np.dtype("<f4").itemsize == 4


def test_training_from_the_cache_resumes_bitwise(exact_cache, tmp_path):
    """A run on the cached teacher stopped at step 2 and resumed ends bitwise where an
    unbroken one does (the cache is a teacher kind like the others)."""
    from test_resume_safety import comparable, same_weights

    from anydistill.train.loop import train

    cache, _ = exact_cache
    whole = _cache_recipe(tmp_path / "whole", cache, train__save_every=1)
    train(config_from_dict(whole))
    cut = _cache_recipe(tmp_path / "cut", cache, train__save_every=1, train__stop_at_step=2)
    train(config_from_dict(cut))
    assert not (tmp_path / "cut" / "run" / "eval.json").exists()
    train(config_from_dict(_cache_recipe(tmp_path / "cut", cache, train__save_every=1)))
    assert same_weights(tmp_path / "cut" / "run", tmp_path / "whole" / "run")
    assert comparable(tmp_path / "cut" / "run") == comparable(tmp_path / "whole" / "run")
