"""Broken models are refused in one sentence naming the recipe key, never trained on silently.

Checkpoints with missing, unexpected or wrongly shaped tensors, corrupt safetensors, `init`
typos and impossible sizes, LoRA targets that match nothing, attention backends that are not
installed, and local path typos (which must not be tried as hub ids).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_helpers import fails_cleanly
from conftest import tiny_recipe
from safetensors.torch import load_file, save_file

from anydistill.errors import ModelError
from anydistill.models.loading import build_from_config, load_pretrained, looks_local
from anydistill.models.lora import add_lora
from anydistill.models.tokenizer import load_tokenizer

WEIGHTS = "model.safetensors"


def _recipe(tmp_path: Path, **changes) -> dict:
    base = dict(
        output__dir=str(tmp_path / "run"),
        data__synthetic_size=40,
        train__progress=False,
        train__max_steps=2,
        train__warmup_steps=0,
        eval__every=0,
        output__report=False,
    )
    return tiny_recipe("fkl", **{**base, **changes})


def _edit_weights(directory: Path, edit: Callable[[dict], None]) -> None:
    tensors = load_file(directory / WEIGHTS)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})


def _drop(key: str) -> Callable[[dict], None]:
    return lambda t: t.pop(key)


def _add(key: str) -> Callable[[dict], None]:
    return lambda t: t.update({key: torch.zeros(3)})


def _reshape(key: str) -> Callable[[dict], None]:
    return lambda t: t.update({key: torch.ones(16)})


def _truncate(directory: Path) -> None:
    data = (directory / WEIGHTS).read_bytes()
    (directory / WEIGHTS).write_bytes(data[: len(data) // 2])


@pytest.fixture
def model_copy(tiny_pair, tmp_path) -> Path:
    """A writable copy of the tiny teacher (weights and tokenizer)."""
    return Path(shutil.copytree(tiny_pair[0], tmp_path / "model"))


# ---- checkpoints that do not match their config (1) and corrupt files (6) -----------------

BROKEN_CHECKPOINTS = {
    "missing": (
        lambda d: _edit_weights(d, _drop("model.layers.0.mlp.up_proj.weight")),
        "missing model.layers.0.mlp.up_proj.weight",
    ),
    "unexpected": (
        lambda d: _edit_weights(d, _add("model.extra.weight")),
        "unexpected model.extra.weight",
    ),
    "wrong shape": (
        lambda d: _edit_weights(d, _reshape("model.norm.weight")),
        "wrong shape model.norm.weight (file [16], config [32])",
    ),
    "truncated": (_truncate, f"{WEIGHTS} is truncated or corrupt"),
    "not safetensors": (
        lambda d: (d / WEIGHTS).write_bytes(b"not a safetensors file" * 4),
        f"{WEIGHTS} is truncated or corrupt",
    ),
}


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINTS))
def test_broken_checkpoints_are_refused(case, role, model_copy, tmp_path, write_recipe):
    breaks, message = BROKEN_CHECKPOINTS[case]
    breaks(model_copy)
    data = _recipe(tmp_path)
    data[role] = {"path": str(model_copy)}
    if role == "student":  # the teacher stays built from `init`, with the model's tokenizer
        data["teacher"]["tokenizer"] = str(model_copy)
    line = fails_cleanly(["train", write_recipe(data)], message, tmp_path)
    assert f"{role}.path:" in line and str(model_copy) in line


def test_what_transformers_fills_itself_is_not_refused(tmp_path):
    """A tied output head is not stored, and rotary inv_freq is a non-persistent buffer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        tie_word_embeddings=True,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / WEIGHTS)
    model = load_pretrained(str(tmp_path / "tied"), field="teacher.path", dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight


# ---- `init`: typos (2) and impossible sizes (3) -----------------------------------------

BAD_INITS = {
    "typo": (
        {"hiden_size": 32},
        "student.init.hiden_size: not a `llama` config key (did you mean `hidden_size`?)",
    ),
    "model type": ({"model_type": "lama"}, "student.init.model_type: `lama` is not a"),
    "not divisible": (
        {"hidden_size": 33},
        "student.init.hidden_size: 33 is not a multiple of num_attention_heads (2)",
    ),
    "kv heads": (
        {"num_attention_heads": 4, "num_key_value_heads": 3, "hidden_size": 32},
        "student.init.num_key_value_heads: num_attention_heads (4) is not a multiple of "
        "num_key_value_heads (3)",
    ),
    "no layers": ({"num_hidden_layers": 0}, "student.init.num_hidden_layers: 0 must be a positive"),
    "negative": ({"intermediate_size": -64}, "student.init.intermediate_size: -64 must be a"),
    "not a number": ({"hidden_size": 32.5}, "student.init.hidden_size: 32.5 is not a whole"),
    "gpt2 alias": (
        {"model_type": "gpt2", "n_embd": 30, "n_head": 4, "n_layer": 1, "n_positions": 256},
        "student.init.n_embd: 30 is not a multiple of num_attention_heads (4)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INITS))
def test_bad_init_is_refused(case, tmp_path, write_recipe):
    changes, message = BAD_INITS[case]
    data = _recipe(tmp_path)
    init = data["student"]["init"]
    if changes.get("model_type") == "gpt2":
        init.clear()
    init.update(changes)
    fails_cleanly(["train", write_recipe(data)], message, tmp_path)


def test_valid_init_keys_still_build():
    """Generic and aliased keys stay accepted; a head_dim that is set frees hidden_size."""
    init = {
        "model_type": "llama",
        "hidden_size": 30,
        "head_dim": 16,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": 32,
        "rope_theta": 1000.0,
        "tie_word_embeddings": True,
        "attn_implementation": "eager",
        "pad_token_id": 0,
    }
    model = build_from_config(init, field="teacher", vocab_size=64, dtype=torch.float32, seed=0)
    assert model.config.hidden_size == 30
    gpt2 = {"model_type": "gpt2", "hidden_size": 32, "n_head": 2, "n_layer": 1}
    build_from_config(gpt2, field="teacher", vocab_size=64, dtype=torch.float32, seed=0)


# ---- LoRA targets (4) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "named"),
    [(["q_proj", "qq_proj"], "qq_proj"), (["norm"], "norm"), ("attn\\..*", "attn\\..*")],
)
def test_lora_targets_that_match_nothing(targets, named, tmp_path, write_recipe):
    data = _recipe(tmp_path)
    data["student"]["lora"] = {"r": 2, "alpha": 4, "target_modules": targets}
    line = fails_cleanly(["train", write_recipe(data)], "student.lora.target_modules:", tmp_path)
    assert f"{named} matches no linear layer of LlamaForCausalLM" in line
    assert "down_proj, gate_proj" in line  # the names that would work


def test_lora_targets_that_match_still_wrap():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    for targets in (["q_proj", "v_proj"], ".*\\.q_proj", "all-linear"):
        model = AutoModelForCausalLM.from_config(config)
        assert add_lora(model, 2, 4, 0.0, targets).peft_config["default"].r == 2


# ---- attention backends (5) ------------------------------------------------------------------


def _flash_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


@pytest.mark.parametrize(
    ("role", "by_path", "name", "message"),
    [
        ("teacher", False, "flash_attention_2", "`flash_attention_2` cannot be used here"),
        ("student", False, "bogus", "`bogus` is not an attention implementation"),
        ("teacher", True, "flash_attention_2", "`flash_attention_2` cannot be used here"),
        ("teacher", True, "bogus", "`bogus` is not an attention implementation"),
    ],
)
def test_attention_backend_not_available(
    role, by_path, name, message, tiny_pair, tmp_path, write_recipe
):
    if name == "flash_attention_2" and _flash_installed():
        pytest.skip("flash-attn is installed here")
    data = _recipe(tmp_path)
    if by_path:
        data[role] = {"path": str(tiny_pair[0])}
    data[role]["attn_implementation"] = name
    line = fails_cleanly(["train", write_recipe(data)], f"{role}.attn_implementation:", tmp_path)
    assert message in line


# ---- local path typos and the offline hub (7) -----------------------------------------------


def test_which_strings_look_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for path in ("./x", "/abs/x", "~/x", "a/b/c", "models/teacher"):
        assert looks_local(path), path
    for path in ("gpt2", "Qwen/Qwen2.5-0.5B", "runs/my-teacher"):
        assert not looks_local(path), path


@pytest.mark.parametrize("key", ["path", "tokenizer"])
def test_local_path_typo_is_not_tried_on_the_hub(key, tmp_path, write_recipe, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    data = _recipe(tmp_path)
    data["teacher"][key] = "models/teacher"
    if key == "path":
        del data["teacher"]["init"]
    fails_cleanly(
        ["train", write_recipe(data)],
        f"teacher.{key}: models/teacher is not a directory (nothing exists at that local path)",
        tmp_path,
    )


def test_a_file_is_not_a_model_directory(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file, not a model directory"):
        load_pretrained(str(tmp_path / "weights.bin"), field="teacher.path", dtype=torch.float32)


@pytest.mark.parametrize("what", ["model", "tokenizer"])
def test_offline_hub_is_named_not_the_network(what, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "no-such-org/no-such-model-anydistill"
    with pytest.raises(ModelError, match="the hub is offline \\(HF_HUB_OFFLINE is set\\)"):
        if what == "model":
            load_pretrained(hub_id, field="teacher.path", dtype=torch.float32)
        else:
            load_tokenizer(hub_id, field="teacher.tokenizer")
