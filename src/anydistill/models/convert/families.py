"""What every target family shares: the copied parts, the source table and the mixer settings.

A family (`gdn.py`, `mamba2.py`) says how its student config is built, where each of its
parameters comes from, how a kept attention layer is copied and how a mixer is initialised.
This module holds the common part: embeddings, norms and MLPs are copied the same way for
both, and `Family.source` turns any student parameter name into a `ParamSource` (a name no
rule knows is a bug, never silently left at random).

The mixers start close to causal linear attention (see `gdn.py` and `mamba2.py` for the
mapping). The constants they share:

- `QK_GAIN`: Q/K (Mamba's C/B) reach the recurrence through the conv's SiLU. The conv's
  current-token tap is set to QK_GAIN / (estimated RMS of that head's q or k), so the SiLU
  works as a ReLU: a non-negative feature map, so every past token gets a non-negative weight,
  as under softmax. On small random teachers the mapped mixers' error to the attention output
  fell steadily from gain 1 (SiLU nearly linear: signed weights) through 3 to 10-30.
- `V_GAIN`: V (Mamba's x) passes the same SiLU. Its tap gives an RMS of V_GAIN, where
  SiLU(u) ~ u/2 is nearly linear; the per-head RMSNorm after the recurrence removes the scale.
- `OUT_SCALE`: that RMSNorm sets each head's output RMS to its weight. A softmax average of
  values is smaller than one value; the weight starts at OUT_SCALE x the estimated RMS of one
  value (the ratio that fitted best on small random teachers was 0.3-0.8).
- `MEMORY`: per-head decay exp(-1/tau), tau log-spaced over MEMORY tokens: long memories
  (close to linear attention, whose state never decays) with a few shorter ones, since softmax
  attention is often local.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from anydistill.models.convert.spec import ConvertSpec
from anydistill.models.convert.teacher import TeacherFacts

QK_GAIN = 10.0
V_GAIN = 0.1
OUT_SCALE = 0.5
MEMORY = (32.0, 4096.0)
SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(SOFTPLUS_ONE) == 1: dt starts at 1

KINDS = ("copied", "mapped", "set", "fresh")


@dataclass(frozen=True)
class ParamSource:
    """Where one student parameter comes from.

    kind: `copied` (a teacher tensor as is, or with the norm reparametrisation), `mapped`
    (built from the layer's attention weights), `set` (a chosen value, not from the teacher,
    that starts the layer near linear attention), `fresh` (nothing to start from: the
    student's default random init)."""

    name: str
    kind: str
    sources: tuple[str, ...] = ()
    how: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "sources": list(self.sources),
            "how": self.how,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ParamSource:
        return cls(data["name"], data["kind"], tuple(data["sources"]), data["how"])


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def decay_rates(num_heads: int) -> torch.Tensor:
    """Per head, 1/tau with tau log-spaced from MEMORY's long end to its short end: with dt = 1
    the state is multiplied by exp(-1/tau) per token."""
    lo, hi = MEMORY
    if num_heads == 1:
        return torch.tensor([1.0 / hi])
    return 1.0 / torch.logspace(math.log10(hi), math.log10(lo), num_heads, dtype=torch.float64)


def identity_taps(conv: torch.nn.Conv1d, gains: torch.Tensor) -> None:
    """A depthwise causal conv that passes the current token scaled by `gains` (one per
    channel): every tap zero except the last, which the causal padding aligns with t."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, -1] = gains.to(conv.weight)
        if conv.bias is not None:
            conv.bias.zero_()


class Family:
    """The shared part of a target family; subclasses fill in the attention and mixer parts."""

    model_type = ""
    label = ""
    mixer = ""  # the decoder layer's attribute holding the mixer
    final_norm = ""  # the student's final norm
    # student layer suffix -> teacher layer suffix, for norms and MLP
    layer_copies: dict[str, str] = {}
    # Qwen3.5's RMSNorms scale by (1 + w): copies into them store w - 1
    offset_norms = False

    # -- the table --------------------------------------------------------------------------
    def source(self, name: str, facts: TeacherFacts, spec: ConvertSpec) -> ParamSource:
        if name == "model.embed_tokens.weight":
            return ParamSource(name, "copied", (name,))
        if name == "lm_head.weight":
            return ParamSource(name, "copied", (name,), "untied, as in the teacher")
        if name == f"{self.final_norm}.weight":
            return ParamSource(name, "copied", ("model.norm.weight",), self.norm_how())
        match = _LAYER.match(name)
        if match is None:
            raise RuntimeError(f"no conversion rule for student parameter {name}")
        layer, suffix = int(match.group(1)), match.group(2)
        prefix = f"model.layers.{layer}."
        if suffix.endswith("layernorm.weight") and suffix in self.layer_copies:
            src = prefix + self.layer_copies[suffix]
            return ParamSource(name, "copied", (src,), self.norm_how())
        if suffix in self.layer_copies:
            return ParamSource(name, "copied", (prefix + self.layer_copies[suffix],))
        part = suffix.split(".", 1)
        if part[0] == "self_attn":
            kind, srcs, how = self.attention_source(part[1], facts)
        elif part[0] == self.mixer:
            kind, srcs, how = self.mixer_source(part[1], facts, spec)
        else:
            raise RuntimeError(f"no conversion rule for student parameter {name}")
        return ParamSource(name, kind, tuple(prefix + "self_attn." + s for s in srcs), how)

    def norm_how(self) -> str:
        return "stored as w - 1 (Qwen3.5 norms scale by 1 + w)" if self.offset_norms else ""

    # -- to be provided by a family ---------------------------------------------------------
    def check(self, facts: TeacherFacts, spec: ConvertSpec) -> None:
        """Refuses (ConfigError) a teacher this family cannot take."""

    def config_kwargs(self, facts: TeacherFacts, spec: ConvertSpec, kept: list[int]) -> dict:
        raise NotImplementedError

    def exactness(self, facts: TeacherFacts) -> tuple[bool, str]:
        raise NotImplementedError

    def notes(self, facts: TeacherFacts, spec: ConvertSpec) -> list[str]:
        return []

    def attention_source(self, part: str, facts: TeacherFacts) -> tuple[str, tuple, str]:
        raise NotImplementedError

    def mixer_source(self, part: str, facts, spec) -> tuple[str, tuple, str]:
        raise NotImplementedError

    def copy_attention(self, attn: torch.nn.Module, t: dict, facts: TeacherFacts) -> None:
        raise NotImplementedError

    def init_mixer(self, mixer, t: dict, facts, spec, gen: torch.Generator) -> None:
        raise NotImplementedError

    def attention_layers(self, config) -> list[int]:
        """The layers a student config says are attention."""
        raise NotImplementedError

    def set_attention_layers(self, config, kept: list[int]) -> None:
        """Changes which layers the config says are attention (layer selection swaps)."""
        raise NotImplementedError

    def attention_module(self, config, layer: int) -> torch.nn.Module:
        raise NotImplementedError

    # -- shared helpers ---------------------------------------------------------------------
    def common_kwargs(self, facts: TeacherFacts) -> dict:
        """Config keys every family copies. RoPE gets partial_rotary_factor 1.0: both
        families default to rotating part of head_dim, the teacher rotates all of it."""
        return {
            "vocab_size": facts.vocab_size,
            "hidden_size": facts.hidden_size,
            "intermediate_size": facts.intermediate_size,
            "num_hidden_layers": facts.num_layers,
            "num_attention_heads": facts.num_heads,
            "num_key_value_heads": facts.num_kv_heads,
            "head_dim": facts.head_dim,
            "hidden_act": facts.hidden_act,
            "max_position_embeddings": facts.max_position_embeddings,
            "rms_norm_eps": facts.rms_norm_eps,
            "tie_word_embeddings": facts.tie_word_embeddings,
            "rope_parameters": {**facts.rope_parameters, "partial_rotary_factor": 1.0},
            "pad_token_id": facts.pad_token_id,
            "bos_token_id": facts.bos_token_id,
            "eos_token_id": facts.eos_token_id,
            "initializer_range": facts.initializer_range,
        }

    def copy_norm(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        with torch.no_grad():
            dst.copy_(src - 1.0 if self.offset_norms else src)
