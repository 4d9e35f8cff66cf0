"""The facts about a Llama-layout teacher that a conversion needs, read from its config.

Llama, Mistral, Qwen2 and Qwen3 share one layout (`model.layers.N.self_attn.{q,k,v,o}_proj`,
`mlp.{gate,up,down}_proj`, two RMSNorms per layer, `model.norm`, `lm_head`); they differ in
biases (Qwen2: q/k/v only; Llama/Qwen3: `attention_bias` on all four), Qwen3's per-head q/k
RMSNorms, Llama's optional MLP biases and sliding windows (Mistral, Qwen2/3 when enabled).
`TeacherFacts` records those differences so the families decide what maps and what is exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from anydistill.errors import ConfigError
from anydistill.models.convert.spec import FIELD, check_teacher_type


@dataclass(frozen=True)
class TeacherFacts:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_act: str
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_parameters: dict
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None
    pad_token_id: int | None
    bos_token_id: int | list[int] | None
    eos_token_id: int | list[int] | None
    initializer_range: float

    @property
    def group(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TeacherFacts:
        return cls(**data)


def _sliding_window(cfg) -> int | None:
    window = getattr(cfg, "sliding_window", None)
    if cfg.model_type == "mistral":
        return window
    types = getattr(cfg, "layer_types", None) or []
    return (
        window
        if getattr(cfg, "use_sliding_window", False) and "sliding_attention" in types
        else None
    )


def teacher_facts(cfg) -> TeacherFacts:
    """Reads a transformers config of a supported teacher; refuses any other layout."""
    model_type = check_teacher_type(getattr(cfg, "model_type", type(cfg).__name__))
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if not rope or any(isinstance(v, dict) for v in rope.values()):
        raise ConfigError(
            f"{FIELD}.to: the teacher's rope_parameters {rope or 'are missing'}; only one global "
            "RoPE setting (as Llama, Mistral and Qwen2/3 checkpoints have) can be converted"
        )
    attention_bias = bool(getattr(cfg, "attention_bias", False))
    heads = cfg.num_attention_heads
    return TeacherFacts(
        model_type=model_type,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        hidden_act=cfg.hidden_act,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        rope_parameters=rope,
        qkv_bias=model_type == "qwen2" or (model_type in ("llama", "qwen3") and attention_bias),
        o_bias=model_type in ("llama", "qwen3") and attention_bias,
        mlp_bias=model_type == "llama" and bool(getattr(cfg, "mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_window=_sliding_window(cfg),
        pad_token_id=getattr(cfg, "pad_token_id", None),
        bos_token_id=getattr(cfg, "bos_token_id", None),
        eos_token_id=getattr(cfg, "eos_token_id", None),
        initializer_range=getattr(cfg, "initializer_range", 0.02),
    )


def attn_name(layer: int, part: str) -> str:
    """A teacher attention tensor name: `attn_name(3, "q_proj.weight")`."""
    return f"model.layers.{layer}.self_attn.{part}"


def repeat_kv_rows(weight: torch.Tensor, facts: TeacherFacts) -> torch.Tensor:
    """K or V rows (kv_heads * head_dim, ...) repeated so query head h reads kv head h // group,
    the GQA rule of the teacher's `repeat_kv`."""
    shaped = weight.reshape(facts.num_kv_heads, facts.head_dim, *weight.shape[1:])
    return shaped.repeat_interleave(facts.group, dim=0).reshape(-1, *weight.shape[1:])


def head_rms(
    weight: torch.Tensor, bias: torch.Tensor | None, norm: torch.Tensor, head_dim: int
) -> torch.Tensor:
    """Per head, the RMS a projection's output channels would have on this layer's normed input.

    The attention reads x = g * h / rms(h) (g: the layer's input RMSNorm weight). Taking the
    channels of h / rms(h) as uncorrelated with unit variance, channel r of W x + b has
    variance sum_j W[r, j]^2 g_j^2 + b_r^2. Data-free, so a scale estimate, not a measurement.
    """
    var = (weight.float() * norm.float()).pow(2).sum(dim=1)
    if bias is not None:
        var = var + bias.float().pow(2)
    return var.view(-1, head_dim).mean(dim=1).sqrt().clamp_min(1e-6)


@dataclass
class HeadRows:
    """One layer's Q, K, V projections with a row block per query head (K and V kv heads
    repeated); biases are None where the teacher has none."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    qb: torch.Tensor | None
    kb: torch.Tensor | None
    vb: torch.Tensor | None


def head_rows(t: dict, facts: TeacherFacts) -> HeadRows:
    """Per-query-head rows of a layer's attention tensors (`build.layer_tensors`). A Qwen3
    teacher's q_norm/k_norm weights are folded into the Q and K rows: the mixers normalise q
    and k their own way, but the per-channel scale the teacher learnt still applies."""
    rows = {}
    for p in ("q", "k", "v"):
        w, b = t[f"{p}_proj.weight"], t.get(f"{p}_proj.bias")
        if p != "q":
            w = repeat_kv_rows(w, facts)
            b = None if b is None else repeat_kv_rows(b, facts)
        if p != "v" and f"{p}_norm.weight" in t:
            scale = t[f"{p}_norm.weight"].repeat(w.shape[0] // facts.head_dim)
            w = w * scale[:, None]
            b = None if b is None else b * scale
        rows[p], rows[f"{p}b"] = w, b
    return HeadRows(**rows)
