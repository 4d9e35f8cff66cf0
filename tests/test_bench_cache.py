"""`anydistill bench cache` on a tiny saved teacher: the record per k and its sanity."""

from __future__ import annotations

import json

from test_bad_input import fails_with, run_cli

KEYS = {
    "k",
    "bytes_per_token",
    "kl_nats",
    "write_tokens_per_s",
    "train_tokens_per_s_cache",
    "train_tokens_per_s_online",
}


def test_bench_cache_json(tiny_pair, tmp_path):
    teacher, _ = tiny_pair
    out = tmp_path / "cache.json"
    args = ["bench", "cache", "--teacher", str(teacher), "--k", "4", "--k", "64"]
    result = run_cli(*args, "--samples", "40", "--steps", "2", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [r["k"] for r in records] == [4, 64]
    for r in records:
        assert KEYS <= set(r)
        assert r["write_tokens_per_s"] > 0 and r["train_tokens_per_s_cache"] > 0
    small, big = records
    assert small["bytes_per_token"] < big["bytes_per_token"]
    assert 0 <= big["kl_nats"] < small["kl_nats"]  # keeping more of the teacher loses less
    assert json.loads(out.read_text())["records"] == records


def test_bench_cache_bad_teacher(tmp_path):
    fails_with(run_cli("bench", "cache", "--teacher", str(tmp_path)), "not a model directory")
