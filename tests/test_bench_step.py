"""`anydistill bench step`: the report's fields and their sanity, presets, FLOPs, bad input."""

from __future__ import annotations

import builtins
import json
import math

import pytest
import torch
from test_bad_input import fails_with, run_cli
from transformers import AutoConfig, AutoModelForCausalLM

from anydistill.bench.compare import _liger
from anydistill.bench.presets import PRESETS
from anydistill.bench.step import flops_per_token, non_embedding_params, param_count

TINY = ["--teacher", "tiny-teacher", "--student", "tiny-student", "--device", "cpu"]
SHAPE = ["--batch", "2", "--seq-len", "32"]
TIMES = ["teacher_forward_ms", "student_forward_backward_ms", "loss_ms", "optimizer_ms"]
FIELDS = {
    *TIMES,
    "variant",
    "engine",
    "teacher",
    "student",
    "batch",
    "seq_len",
    "device",
    "dtype",
    "divergence",
    "gradient_checkpointing",
    "steps",
    "warmup",
    "vocab",
    "params_teacher",
    "params_student",
    "step_ms",
    "tokens_per_s",
    "peak_memory_bytes",
    "flops_per_token",
    "tflops",
    "peak_tflops",
    "mfu",
    "loss",
    "last_loss",
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine stall in OpenMP barriers; one thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(config: dict) -> torch.nn.Module:
    params = dict(config)
    kind = params.pop("model_type")
    with torch.device("meta"):  # shapes only: counting needs no memory
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **params))


def _records(*args: str) -> list[dict]:
    result = run_cli("bench", "step", *TINY, *SHAPE, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_report_is_complete_and_sane(tmp_path):
    out = tmp_path / "step.json"
    (r,) = _records("--steps", "2", "--warmup", "1", "--out", str(out))
    assert FIELDS <= set(r) and "error" not in r, r
    assert (r["variant"], r["engine"], r["dtype"], r["divergence"]) == (
        "anydistill",
        "torch",
        "fp32",
        "jsd",
    )
    assert all(r[k] > 0 for k in ("step_ms", *TIMES)), r
    top = r["teacher_forward_ms"] + r["student_forward_backward_ms"] + r["optimizer_ms"]
    assert 0.9 * r["step_ms"] <= top <= r["step_ms"] + 0.01
    assert r["loss_ms"] <= r["student_forward_backward_ms"]
    assert r["tokens_per_s"] == pytest.approx(2 * 32 / (r["step_ms"] / 1e3), rel=1e-3)
    teacher, student = _model(PRESETS["tiny-teacher"]), _model(PRESETS["tiny-student"])
    assert r["params_teacher"] == param_count(teacher) == 139584
    assert r["params_student"] == param_count(student) == 34976
    assert r["flops_per_token"] == flops_per_token(
        non_embedding_params(teacher), non_embedding_params(student), 512, 64, 32
    )
    assert r["tflops"] >= 0 and r["mfu"] is None and r["peak_tflops"] is None  # CPU: no peak
    # fp32 weights of both models, plus the student's AdamW moments, are live at the peak.
    assert r["peak_memory_bytes"] >= 4 * (r["params_teacher"] + 3 * r["params_student"])
    assert 0 < r["loss"] < math.log(512) and math.isfinite(r["last_loss"])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "step" and saved["records"] == [r]
    assert saved["settings"]["teacher_config"]["hidden_size"] == 64
    assert saved["machine"]["device"] == "cpu"


def test_mfu_with_a_given_peak():
    (r,) = _records("--steps", "1", "--warmup", "0", "--peak-tflops", "0.5", "--engine", "naive")
    assert r["engine"] == "naive" and r["peak_tflops"] == 0.5
    expected = r["flops_per_token"] * r["tokens_per_s"] / 0.5e12
    assert r["mfu"] == pytest.approx(expected, rel=1e-2, abs=1e-4)


def test_compared_losses_agree_with_ours():
    pytest.importorskip("trl")
    pytest.importorskip("liger_kernel")
    records = _records("--steps", "1", "--warmup", "1", "--compare", "trl,liger")
    assert [r["variant"] for r in records] == ["anydistill", "trl", "liger"]
    ours = records[0]["loss"]
    for r in records:
        assert FIELDS <= set(r) and "error" not in r, r
        assert r["loss"] == pytest.approx(ours, rel=1e-5)  # same weights, batch, fp32


def test_a_missing_comparison_package_is_an_error_record(monkeypatch):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.startswith(("trl", "liger_kernel")):
            top = name.split(".")[0]
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    _liger.cache_clear()  # an earlier test may have built Liger's loss module already
    records = _records("--steps", "1", "--warmup", "0", "--compare", "trl,liger")
    assert "error" not in records[0]
    assert "trl is not installed" in records[1]["error"]
    assert "liger_kernel is not installed" in records[2]["error"]


def test_a_config_json_path_works_as_a_preset(tmp_path, monkeypatch):
    config = {**PRESETS["tiny-student"], "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    path = str(tmp_path / "config.json")
    (r,) = _records("--student", path, "--steps", "1", "--warmup", "0")
    assert r["student"] == path and r["params_student"] == 34976
    # A directory holding config.json works too, and the human output is a table.
    monkeypatch.setenv("COLUMNS", "160")  # rich reads the width from here
    args = ["--student", str(tmp_path), "--steps", "1", "--warmup", "0"]
    result = run_cli("bench", "step", *TINY, *SHAPE, *args)
    assert result.exit_code == 0, result.output
    assert "anydistill/torch" in result.stdout and "tokens/s" in result.stdout


def test_bad_input_fails_in_one_sentence(tmp_path):
    def step(*args: str):
        return run_cli("bench", "step", *TINY, *SHAPE, *args)

    fails_with(step("--teacher", "gpt-5"), "--teacher 'gpt-5' is not a preset")
    fails_with(step("--student", str(tmp_path / "none.json")), "does not exist")
    (tmp_path / "bad.json").write_text('{"hidden_size": 8}')
    fails_with(step("--student", str(tmp_path / "bad.json")), "no `model_type`")
    fails_with(step("--divergence", "kl"), "--divergence 'kl'")
    fails_with(step("--engine", "cuda-magic"), "--engine 'cuda-magic'")
    fails_with(step("--compare", "deepspeed"), "--compare 'deepspeed'")
    fails_with(step("--seq-len", "4096"), "--seq-len 4096 is more than the teacher handles")
    if not torch.cuda.is_available():
        fails_with(step("--device", "cuda"), "no CUDA GPU is visible")


def test_flops_per_token_by_hand():
    """Llama layer: q, o are H*H; k, v are H*kv_dim; the MLP is 3*H*I; two norms; final norm."""
    h, i, kv_dim, layers, vocab = 64, 128, 32, 2, 512
    teacher = layers * (2 * h * h + 2 * h * kv_dim + 3 * h * i + 2 * h) + h
    h_s, i_s, kv_s = 32, 64, 16
    student = layers * (2 * h_s * h_s + 2 * h_s * kv_s + 3 * h_s * i_s + 2 * h_s) + h_s
    assert non_embedding_params(_model(PRESETS["tiny-teacher"])) == teacher == 74048
    assert non_embedding_params(_model(PRESETS["tiny-student"])) == student == 18592
    by_hand = 2 * teacher + 6 * student + 2 * vocab * h + 6 * vocab * h_s
    assert flops_per_token(teacher, student, vocab, h, h_s) == by_hand == 423488


@pytest.mark.parametrize(
    ("name", "total", "non_embedding"),
    [  # as the model cards state them, in billions
        ("qwen2.5-0.5b", 0.49, 0.36),
        ("qwen2.5-1.5b", 1.54, 1.31),
        ("qwen2.5-7b", 7.61, 6.53),
        ("llama3.1-8b", 8.03, None),
        ("llama3.2-1b", 1.24, None),
    ],
)
def test_presets_have_the_published_sizes(name, total, non_embedding):
    model = _model(PRESETS[name])
    assert param_count(model) / 1e9 == pytest.approx(total, abs=0.006)
    if non_embedding is not None:
        assert non_embedding_params(model) / 1e9 == pytest.approx(non_embedding, abs=0.006)
