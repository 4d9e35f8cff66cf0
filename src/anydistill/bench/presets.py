"""Named model shapes for `anydistill bench step`: the public configs, random weights.

A benchmark of a training step needs the real architecture (layers, widths, heads, vocabulary)
but not the weights, so the presets are the published `config.json` values of each model and
the models are built with `from_config`: nothing is downloaded. A path to a `config.json` (or
a directory holding one) works wherever a preset name does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _qwen2(hidden: int, inter: int, layers: int, heads: int, kv: int, **extra: Any) -> dict:
    return {
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        **extra,
    }


def _llama3(hidden: int, inter: int, layers: int, heads: int, kv: int, **extra: Any) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "vocab_size": 128256,
        "attention_bias": False,
        "mlp_bias": False,
        **extra,
    }


# Values from each model's config.json on the Hugging Face hub.
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": _qwen2(
        hidden=896,
        inter=4864,
        layers=24,
        heads=14,
        kv=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
    "qwen2.5-1.5b": _qwen2(
        hidden=1536,
        inter=8960,
        layers=28,
        heads=12,
        kv=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    "qwen2.5-7b": _qwen2(
        hidden=3584,
        inter=18944,
        layers=28,
        heads=28,
        kv=4,
        vocab_size=152064,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
    ),
    "llama3.1-70b": _llama3(
        hidden=8192,
        inter=28672,
        layers=80,
        heads=64,
        kv=8,
        head_dim=128,
        tie_word_embeddings=False,
        rope_scaling={**_LLAMA3_ROPE, "factor": 8.0},
    ),
    "llama3.1-8b": _llama3(
        hidden=4096,
        inter=14336,
        layers=32,
        heads=32,
        kv=8,
        head_dim=128,
        tie_word_embeddings=False,
        rope_scaling={**_LLAMA3_ROPE, "factor": 8.0},
    ),
    "llama3.2-1b": _llama3(
        hidden=2048,
        inter=8192,
        layers=16,
        heads=32,
        kv=8,
        head_dim=64,
        tie_word_embeddings=True,
        rope_scaling={**_LLAMA3_ROPE, "factor": 32.0},
    ),
    # CPU-sized pair for tests: same family, untied teacher head, tied student head.
    "tiny-teacher": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    "tiny-student": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
}

# Keys of a saved config.json that describe the checkpoint, not the architecture.
_NOT_ARCHITECTURE = ("architectures", "transformers_version", "torch_dtype", "dtype", "auto_map")


@dataclass(frozen=True)
class ModelSpec:
    """What `--teacher` / `--student` named: a label for reports and a transformers config."""

    name: str
    config: dict[str, Any]


def resolve_model(value: str, flag: str) -> ModelSpec:
    """A preset name or a config.json path; ValueError with one sentence when it is neither."""
    if value in PRESETS:
        return ModelSpec(value, dict(PRESETS[value]))
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "config.json"
    looks_like_path = "/" in value or value.endswith(".json") or path.exists()
    if not looks_like_path:
        raise ValueError(
            f"{flag} {value!r} is not a preset ({', '.join(PRESETS)}) or a config.json path"
        )
    if not path.is_file():
        raise ValueError(f"{flag} {path} does not exist; give a preset name or a config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{flag} {path} is not readable JSON ({err})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{flag} {path} has no `model_type`; it is not a transformers config")
    if not isinstance(config.get("vocab_size"), int):
        raise ValueError(f"{flag} {path} has no integer `vocab_size`")
    for key in _NOT_ARCHITECTURE:
        config.pop(key, None)
    return ModelSpec(str(value), config)
