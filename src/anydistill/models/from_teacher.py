"""Build a student from the teacher by keeping a subset of its decoder layers."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from anydistill.errors import ModelError

# Per-layer config lists that must shrink with the layer list.
_PER_LAYER_KEYS = ("layer_types", "sliding_window_pattern_list", "no_rope_layers")


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The ModuleList of transformer blocks (llama/qwen/mistral/gemma: .layers, gpt2: .h)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ModelError(
        f"student.from_teacher: cannot find the decoder layers of {type(model).__name__}"
    )


def _layer_count_key(config) -> str:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, key):
            return key
    raise ModelError("student.from_teacher: the teacher config has no layer count")


def student_from_teacher(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """Copy the teacher's embeddings, head, final norm and the chosen layers (in order)."""
    n = len(decoder_layers(teacher))
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ModelError(
            f"student.from_teacher.layers: {bad} out of range; the teacher has layers 0..{n - 1}"
        )
    if len(set(layers)) != len(layers):
        raise ModelError("student.from_teacher.layers: each layer may be listed once")
    config = copy.deepcopy(teacher.config)
    setattr(config, _layer_count_key(config), len(layers))
    for key in _PER_LAYER_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == n:
            setattr(config, key, [value[i] for i in layers])
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    source = teacher.state_dict()
    prefix = _layers_prefix(teacher)
    target = {}
    for key, value in source.items():
        if key.startswith(prefix):
            old, rest = key[len(prefix) :].split(".", 1)
            if int(old) not in layers:
                continue
            key = f"{prefix}{layers.index(int(old))}.{rest}"
        target[key] = value.detach().to(torch.float32).clone()
    missing, unexpected = student.load_state_dict(target, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise ModelError(
            f"student.from_teacher: weights did not map cleanly (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    return student


def _layers_prefix(model: PreTrainedModel) -> str:
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name + "."
    raise ModelError("student.from_teacher: cannot locate the layer list in the state dict")
