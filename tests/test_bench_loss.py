"""`anydistill bench loss`: the record format, the reference check and the memory tracker."""

from __future__ import annotations

import json

import torch
from test_bad_input import fails_with, run_cli

from anydistill.bench.memory import peak_extra_bytes

KEYS = {"engine", "divergence", "shape", "ms", "peak_extra_bytes", "loss_rel_err", "grad_rel_err"}


def test_json_records_for_every_divergence_and_engine(tmp_path):
    out = tmp_path / "loss.json"
    args = ["bench", "loss", "--device", "cpu", "--shape", "48,211,16,24", "--json"]
    result = run_cli(*args, "--repeats", "1", "--warmup", "0", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    kinds = {"fkl", "rkl", "jsd", "tvd", "skl", "srkl", "taid"}
    assert {(r["engine"], r["divergence"]) for r in records} == {
        (e, d) for e in ("naive", "torch") for d in kinds
    }
    for r in records:
        assert KEYS <= set(r) and "error" not in r, r
        assert r["shape"] == "48,211,16,24"
        assert r["loss_rel_err"] < 1e-5 and r["grad_rel_err"] < 1e-5, r
        assert r["ms"] > 0 and r["peak_extra_bytes"] > 0
    saved = json.loads(out.read_text())
    assert saved["records"] == records and saved["machine"]["cpu_cores"] >= 1


def test_chunked_engine_peak_is_a_fraction_of_naive():
    """Peak bytes are counted, not timed: the torch engine holds one block, naive all rows."""
    args = ["bench", "loss", "--device", "cpu", "--shape", "512,4001,32,48", "--json"]
    result = run_cli(
        *args, "--divergence", "jsd", "--chunk-size", "64", "--repeats", "1", "--warmup", "0"
    )
    records = {r["engine"]: r for r in json.loads(result.output)}
    assert records["torch"]["peak_extra_bytes"] < 0.5 * records["naive"]["peak_extra_bytes"]


def test_bad_arguments_fail_in_one_sentence():
    fails_with(run_cli("bench", "loss", "--shape", "1,2,3"), "four positive integers")
    fails_with(run_cli("bench", "loss", "--device", "cpu", "--divergence", "kl"), "'kl'")
    fails_with(run_cli("bench", "loss", "--device", "tpu"), "--device 'tpu'")
    fails_with(run_cli("bench", "loss", "--device", "cpu", "--dtype", "fp8"), "--dtype 'fp8'")


def test_a_missing_comparison_package_is_an_error_record(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_trl(name, *args, **kwargs):
        if name.startswith("trl"):
            raise ModuleNotFoundError(f"No module named {name!r}", name="trl")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trl)
    args = ["bench", "loss", "--device", "cpu", "--shape", "8,31,8,8", "--json"]
    result = run_cli(*args, "--divergence", "fkl", "--engine", "torch", "--compare", "trl")
    records = json.loads(result.output)
    assert records[1]["engine"] == "trl" and "trl is not installed" in records[1]["error"]


def test_memory_tracker_counts_live_storages_until_freed():
    n = 1 << 18  # 1 MiB of float32

    def work():
        a = torch.ones(n)
        b = a * 2  # 2 MiB live
        del a
        c = b + 1  # 2 MiB live again: a was freed
        return c.view(2, -1)  # a view adds nothing

    assert peak_extra_bytes(work, torch.device("cpu")) == 2 * 4 * n
