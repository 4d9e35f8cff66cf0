"""Which decoder families the pruner knows, and which axis of each weight it slices.

Every parameter name of a supported model maps to a role per tensor dimension:

- `ch`: embedding channels (hidden_size)
- `ff`: MLP neurons (intermediate_size); `ff2`: Phi-3's fused gate_up rows (gate then up)
- `q`: query heads' head_dim blocks; `kv`: key/value heads' blocks
- `qkv`: Phi-3's fused rows (all q blocks, then k, then v)
- `None`: untouched (vocabulary rows, head_dim of Qwen3/Gemma3 q_norm/k_norm)

A name that matches no rule makes the model unsupported: it is refused, never half-sliced.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from anydistill.errors import ModelError


@dataclass(frozen=True)
class Family:
    model_type: str
    # Per-layer norms over the embedding channels (their outputs feed channel importance).
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")


_GEMMA2_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama"),
        Family("mistral"),
        Family("qwen2"),
        Family("qwen3"),
        Family("gemma"),
        Family("gemma2", _GEMMA2_NORMS),
        Family("gemma3_text", _GEMMA2_NORMS),
        Family("phi3"),
    )
}

# Prefixes shared by every supported family (the safety net below refuses any other layout).
LAYERS_PREFIX = "model.layers."
FINAL_NORM = "model.norm"

_LAYER_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"self_attn\.q_proj\.weight", ("q", "ch")),
    (r"self_attn\.q_proj\.bias", ("q",)),
    (r"self_attn\.[kv]_proj\.weight", ("kv", "ch")),
    (r"self_attn\.[kv]_proj\.bias", ("kv",)),
    (r"self_attn\.qkv_proj\.weight", ("qkv", "ch")),
    (r"self_attn\.qkv_proj\.bias", ("qkv",)),
    (r"self_attn\.o_proj\.weight", ("ch", "q")),
    (r"self_attn\.o_proj\.bias", ("ch",)),
    (r"self_attn\.[qk]_norm\.weight", (None,)),
    (r"mlp\.(gate|up)_proj\.weight", ("ff", "ch")),
    (r"mlp\.(gate|up)_proj\.bias", ("ff",)),
    (r"mlp\.gate_up_proj\.weight", ("ff2", "ch")),
    (r"mlp\.gate_up_proj\.bias", ("ff2",)),
    (r"mlp\.down_proj\.weight", ("ch", "ff")),
    (r"mlp\.down_proj\.bias", ("ch",)),
)
_TOP_RULES: dict[str, tuple[str | None, ...]] = {
    "model.embed_tokens.weight": (None, "ch"),
    f"{FINAL_NORM}.weight": ("ch",),
    f"{FINAL_NORM}.bias": ("ch",),
    "lm_head.weight": (None, "ch"),
    "lm_head.bias": (None,),
}
_LAYER_NAME = re.compile(rf"^{re.escape(LAYERS_PREFIX)}(\d+)\.(.+)$")


def family_of(config) -> Family:
    """The family of `config` (a model's config); ModelError naming the supported list if none."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ModelError(
            f"prune: model type {model_type!r} is not supported; supported types are "
            f"{', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def weight_role(name: str, family: Family) -> tuple[int | None, tuple[str | None, ...]] | None:
    """(layer index or None, role per dimension) of a parameter name; None if unknown."""
    if name in _TOP_RULES:
        return None, _TOP_RULES[name]
    found = _LAYER_NAME.match(name)
    if not found:
        return None
    layer, rest = int(found.group(1)), found.group(2)
    for pattern, roles in _LAYER_RULES:
        if re.fullmatch(pattern, rest):
            return layer, roles
    norms = "|".join(map(re.escape, family.layer_norms))
    if re.fullmatch(rf"({norms})\.(weight|bias)", rest):
        return layer, ("ch",)
    return None


def check_all_known(names, family: Family) -> None:
    """Refuse a model holding any weight the slicer does not know (never half-slice one)."""
    unknown = [n for n in names if weight_role(n, family) is None]
    if unknown:
        raise ModelError(
            f"prune: this {family.model_type} model has weights the pruner does not know "
            f"({', '.join(unknown[:3])}); only the standard {family.model_type} layout is "
            "supported"
        )


@dataclass(frozen=True)
class Shape:
    """The sizes pruning can change, plus the ones it keeps (head_dim, vocab_size)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    head_dim: int
    vocab_size: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def shape_of(config) -> Shape:
    heads = config.num_attention_heads
    return Shape(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
        num_hidden_layers=config.num_hidden_layers,
        # Families fall back to hidden_size // heads; pruning keeps the teacher's value.
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab_size=config.vocab_size,
    )
