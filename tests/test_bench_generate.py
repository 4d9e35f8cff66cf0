"""`anydistill bench generate`: records per (model, length), exactly N greedy tokens, cache
bytes exact from the config shapes (a Transformer's grows with the prompt, a state-space
model's does not, a hybrid's only by its attention layers), skips, the saved record, bad input.

No timing is asserted: the numbers of a shared 2-core machine mean nothing.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import fails_cleanly, run_cli
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from anydistill.bench.generate import (
    GenerateSettings,
    bench_generate,
    greedy,
    parse_lengths,
    random_prompt,
)
from anydistill.bench.generate_cache import cache_bytes, cache_layers
from anydistill.errors import ConfigError, ModelError

F32 = 4  # bytes
LLAMA = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
QWEN_HYBRID = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    "max_position_embeddings": 512,
}
MAMBA2 = {  # every layer a state-space layer: no max_position_embeddings at all
    "vocab_size": 96,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_heads": 4,
    "head_dim": 16,
    "state_size": 8,
    "n_groups": 1,
    "expand": 2,
    "conv_kernel": 4,
    "chunk_size": 16,
}
CONFIGS = {"llama": LLAMA, "qwen3_5_text": QWEN_HYBRID, "mamba2": MAMBA2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine stall in OpenMP barriers; one thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """model_type -> a saved directory with random weights."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for kind, params in CONFIGS.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **params))
        model.save_pretrained(root / kind)
        paths[kind] = str(root / kind)
    return paths


# ---- exact cache bytes from the config shapes --------------------------------------------


def attention_bytes_per_position(params: dict, batch: int) -> int:
    """Keys + values of one position in one full-attention layer."""
    head_dim = params.get("head_dim") or params["hidden_size"] // params["num_attention_heads"]
    return 2 * batch * params["num_key_value_heads"] * head_dim * F32


def qwen_linear_state_bytes(p: dict, batch: int) -> int:
    """One gated-delta-net layer: conv state [B, 2*Hk*dk + Hv*dv, kernel], recurrent state
    [B, Hv, dk, dv]."""
    key_dim = p["linear_num_key_heads"] * p["linear_key_head_dim"]
    value_dim = p["linear_num_value_heads"] * p["linear_value_head_dim"]
    conv = batch * (2 * key_dim + value_dim) * p["linear_conv_kernel_dim"]
    recurrent = (
        batch * p["linear_num_value_heads"] * p["linear_key_head_dim"] * p["linear_value_head_dim"]
    )
    return (conv + recurrent) * F32


def mamba2_state_bytes(p: dict, batch: int) -> int:
    """One Mamba2 layer: conv state [B, expand*H + 2*groups*N, kernel], SSM state
    [B, heads, head_dim, N]."""
    inner = p["expand"] * p["hidden_size"]
    conv = batch * (inner + 2 * p["n_groups"] * p["state_size"]) * p["conv_kernel"]
    ssm = batch * p["num_heads"] * p["head_dim"] * p["state_size"]
    return (conv + ssm) * F32


def expected_cache_bytes(kind: str, batch: int, positions: int) -> int:
    p = CONFIGS[kind]
    if kind == "llama":
        return p["num_hidden_layers"] * attention_bytes_per_position(p, batch) * positions
    if kind == "qwen3_5_text":
        full = p["layer_types"].count("full_attention")
        linear = p["layer_types"].count("linear_attention")
        attention = full * attention_bytes_per_position(p, batch) * positions
        return attention + linear * qwen_linear_state_bytes(p, batch)
    return p["num_hidden_layers"] * mamba2_state_bytes(p, batch)


# ---- the library --------------------------------------------------------------------------


def test_cache_bytes_grow_with_attention_layers_only(models):
    lengths, new, batch = (32, 128), 4, 2
    settings = GenerateSettings(prompt_lens=lengths, new_tokens=new, batch=batch)
    order = list(models)
    records = bench_generate([models[k] for k in order], settings, torch.device("cpu"))
    assert [(r["model"], r["prompt_len"]) for r in records] == [
        (models[k], n) for k in order for n in lengths
    ]
    by = {(r["model_type"], r["prompt_len"]): r for r in records}
    for r in records:
        assert "skipped" not in r and "error" not in r, r
        assert r["new_tokens"] == new
        assert r["cache_positions"] == r["prompt_len"] + new - 1
        assert r["cache_bytes"] == expected_cache_bytes(
            r["model_type"], batch, r["cache_positions"]
        ), r
        assert r["peak_extra_bytes"] >= r["cache_bytes"] > 0
        assert r["prefill_s"] > 0 and r["decode_tokens_per_s"] > 0
        assert r["weights_bytes"] > 0 and (r["device"], r["dtype"]) == ("cpu", "float32")

    (l1, l2) = lengths
    llama = by["llama", l2]["cache_bytes"] / by["llama", l1]["cache_bytes"]
    assert llama == (l2 + new - 1) / (l1 + new - 1)
    assert llama == pytest.approx((l2 + new) / (l1 + new), rel=0.03)
    assert by["mamba2", l1]["cache_bytes"] == by["mamba2", l2]["cache_bytes"]
    hybrid_growth = by["qwen3_5_text", l2]["cache_bytes"] - by["qwen3_5_text", l1]["cache_bytes"]
    assert hybrid_growth == attention_bytes_per_position(QWEN_HYBRID, batch) * (l2 - l1)
    assert by["llama", l1]["cache_layers"] == {"DynamicLayer": 2}
    assert by["qwen3_5_text", l1]["cache_layers"] == {
        "LinearAttentionLayer": 3,
        "DynamicLayer": 1,
    }
    assert by["mamba2", l1]["cache_layers"] == {"LinearAttentionLayer": 2}


def test_greedy_loop_matches_generate_and_ignores_eos(models):
    model = AutoModelForCausalLM.from_pretrained(models["llama"]).eval()
    prompt = random_prompt(LLAMA["vocab_size"], 2, 16, seed=0)
    run = greedy(model, prompt, 6)
    assert run.tokens.shape == (2, 6)
    with torch.inference_mode():
        reference = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False
        )
    assert torch.equal(run.tokens, reference[:, 16:])
    # EOS is ignored: a model whose every greedy token is EOS still gives N of them.
    model.generation_config.eos_token_id = int(run.tokens[0, 0])
    assert greedy(model, prompt, 6).tokens.shape == (2, 6)


def test_cache_bytes_count_each_storage_once():
    cache = DynamicCache()
    k = torch.zeros(1, 2, 5, 8)
    cache.update(k, torch.zeros(1, 2, 5, 8), 0)
    assert cache_bytes(cache) == 2 * k.numel() * F32
    cache.extra = [cache.layers[0].keys, cache.layers[0].keys[:, :, :2]]  # views: no new bytes
    assert cache_bytes(cache) == 2 * k.numel() * F32
    assert cache_layers(cache) == {"DynamicLayer": 1}


def test_settings_and_paths_are_refused_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="--prompt-len"):
        parse_lengths("32,0")
    with pytest.raises(ConfigError, match="--new-tokens"):
        GenerateSettings(prompt_lens=(8,), new_tokens=0).check()
    with pytest.raises(ModelError, match="--model"):
        bench_generate([str(tmp_path / "nope")], GenerateSettings((8,), 2), torch.device("cpu"))


# ---- the command --------------------------------------------------------------------------


def test_cli_json_skip_and_saved_record(models, tmp_path):
    out = tmp_path / "results" / "generate.json"
    args = ["--model", models["llama"], "--model", models["mamba2"], "--prompt-len", "32,300"]
    result = run_cli(
        "bench", "generate", *args, "--new-tokens", "3", "--device", "cpu", "--json",
        "--save", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [(r["model"], r["prompt_len"]) for r in records] == [
        (models["llama"], 32),
        (models["llama"], 300),
        (models["mamba2"], 32),
        (models["mamba2"], 300),
    ]
    skipped = records[1]
    assert "max_position_embeddings 256" in skipped["skipped"] and "cache_bytes" not in skipped
    measured = [r for r in records if "skipped" not in r]
    assert all(r["new_tokens"] == 3 for r in measured)
    assert records[0]["cache_bytes"] == expected_cache_bytes("llama", 1, 32 + 2)
    state = MAMBA2["num_hidden_layers"] * mamba2_state_bytes(MAMBA2, 1)
    assert records[2]["cache_bytes"] == records[3]["cache_bytes"] == state

    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "generate" and saved["records"] == records
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["cpu_cores"] > 0
    assert saved["date"] == saved["machine"]["date"]
    assert saved["settings"]["prompt_lens"] == [32, 300]
    assert saved["settings"]["new_tokens"] == 3
    assert saved["settings"]["models"] == [models["llama"], models["mamba2"]]


def test_cli_table(models):
    result = run_cli(
        "bench", "generate", "--model", models["llama"], "--prompt-len", "16,300",
        "--new-tokens", "2", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for heading in ("model", "prompt len", "prefill s", "decode tok/s", "peak MiB", "cache MiB"):
        assert heading in result.stdout
    assert "skipped: llama 300: prompt 300 + 2 new tokens is beyond" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{tmp}/missing"], "--model: {tmp}/missing is not a directory"),
        (["--model", "{tmp}"], "--model: {tmp} is not a model directory (no config.json)"),
        (["--model", "{tmp}", "--prompt-len", "32,-4"], "--prompt-len"),
        (["--model", "{tmp}", "--prompt-len", "0"], "--prompt-len"),
        (["--model", "{tmp}", "--new-tokens", "0"], "--new-tokens: 0 must be a positive"),
        (["--model", "{tmp}", "--batch", "0"], "--batch"),
        (["--model", "{tmp}", "--dtype", "int8"], "--dtype"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    save = tmp_path / "out.json"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    line = fails_cleanly(
        ["bench", "generate", *args, "--device", "cpu", "--save", save],
        message.replace("{tmp}", str(tmp_path)),
        tmp_path,
    )
    assert "Traceback" not in line and not save.exists()
