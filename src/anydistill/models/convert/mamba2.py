"""Teacher -> Bamba (`bamba`): Mamba-2 mixers beside plain attention.

Bamba was chosen over Falcon-H1 because its attention and MLP are the teacher's own (plain
q/k/v/o, SwiGLU, RMSNorm scaling by w) and its layers are either attention or Mamba-2, as the
conversion needs; Falcon-H1 runs attention and Mamba side by side in every layer and scales
them with multipliers, so no layer could be kept as the teacher's attention alone.

Kept attention layers are copied (RoPE rotating all of head_dim: partial_rotary_factor 1.0,
which Bamba's config would otherwise set to 0.5). Llama, Mistral and Qwen2 are exact. Qwen3's
q/k RMSNorms have no place in Bamba attention: they are dropped and the layer is not exact.

Replaced layers, after Mamba-in-the-Llama (Wang et al. 2024): one Mamba head and one group per
teacher query head, head dim and state size = head_dim, so that V -> x, K -> B, Q -> C, O ->
out_proj (K and V kv heads repeated per query head as the teacher's GQA reads them). With
dt = 1 and A ~ 0 the scan is y_t = sum_{s<=t} (C_t . B_s) x_s: causal linear attention.
- dt: its in_proj rows 0 and dt_bias so that softplus = 1; A = 1/tau per head
  (`families.decay_rates`), a slow decay exp(-1/tau); D = 0 (the current token is already in
  the sum).
- conv1d: identity (current token) with the SiLU gains of `families.QK_GAIN` / `V_GAIN`.
- the gate z: its in_proj rows 0 and its bias Z_BIAS (mamba_proj_bias is switched on for this),
  so SiLU(z) is one constant; Bamba gates before its per-head RMSNorm, which divides it out.
- the RMSNorm weight sets each head's output RMS (`families.OUT_SCALE`).
When head_dim * heads is not a multiple of hidden_size, mamba_expand rounds up and the extra
Mamba heads start fresh with zero out_proj columns, so they add nothing at first.
"""

from __future__ import annotations

import math

import torch

from anydistill.errors import ConfigError
from anydistill.models.convert.families import (
    OUT_SCALE,
    QK_GAIN,
    SOFTPLUS_ONE,
    V_GAIN,
    Family,
    decay_rates,
    identity_taps,
)
from anydistill.models.convert.spec import FIELD, ConvertSpec
from anydistill.models.convert.teacher import TeacherFacts, head_rms, head_rows

Z_BIAS = 4.0


def _expand(facts: TeacherFacts) -> int:
    return math.ceil(facts.num_heads * facts.head_dim / facts.hidden_size)


class Mamba2Family(Family):
    model_type = "bamba"
    label = "Mamba-2"
    mixer = "mamba"
    final_norm = "model.final_layernorm"
    layer_copies = {
        "input_layernorm.weight": "input_layernorm.weight",
        "pre_ff_layernorm.weight": "post_attention_layernorm.weight",
        **{
            f"feed_forward.{p}_proj.{w}": f"mlp.{p}_proj.{w}"
            for p in ("gate", "up", "down")
            for w in ("weight", "bias")
        },
    }

    def check(self, facts: TeacherFacts, spec: ConvertSpec) -> None:
        if (_expand(facts) * facts.hidden_size) % facts.head_dim:
            raise ConfigError(
                f"{FIELD}.to: bamba needs hidden_size x mamba_expand to split into heads of "
                f"head_dim {facts.head_dim}, and hidden_size {facts.hidden_size} does not; "
                "convert this teacher to qwen3_5_text"
            )

    def config_kwargs(self, facts: TeacherFacts, spec: ConvertSpec, kept: list[int]) -> dict:
        expand = _expand(facts)
        heads = expand * facts.hidden_size // facts.head_dim
        return {
            **self.common_kwargs(facts),
            "attention_bias": facts.qkv_bias or facts.o_bias,
            "mlp_bias": facts.mlp_bias,
            "attn_layer_indices": list(kept),
            "mamba_n_heads": heads,
            "mamba_d_head": facts.head_dim,
            "mamba_n_groups": heads,
            "mamba_d_state": spec.state_size or facts.head_dim,
            "mamba_d_conv": spec.conv_kernel,
            "mamba_expand": expand,
            "mamba_conv_bias": True,
            "mamba_proj_bias": True,
        }

    def exactness(self, facts: TeacherFacts) -> tuple[bool, str]:
        if facts.qk_norm:
            return False, (
                "not exact: bamba attention has no q/k RMSNorm, so the Qwen3 teacher's "
                "q_norm/k_norm are dropped from kept layers"
            )
        tail = (
            f" (for sequences up to the teacher's {facts.sliding_window}-token sliding window)"
            if facts.sliding_window
            else ""
        )
        return True, f"exact with every layer kept{tail}"

    def notes(self, facts: TeacherFacts, spec: ConvertSpec) -> list[str]:
        out = [
            "mixers have no positions: RoPE acts only in kept attention layers",
            "mamba_proj_bias is on so the gate z starts constant (its bias); x/B/C biases "
            "start from the teacher's v/k/q biases or 0",
        ]
        extra = _expand(facts) * facts.hidden_size // facts.head_dim - facts.num_heads
        if extra:
            out.append(
                f"{extra} Mamba heads beyond the teacher's {facts.num_heads} start fresh "
                "with zero out_proj columns"
            )
        if facts.sliding_window:
            out.append(
                f"the teacher's sliding window ({facts.sliding_window} tokens) is not kept: "
                "student attention sees the whole sequence"
            )
        if facts.hidden_act != "silu":
            out.append(f"the mixers' conv uses hidden_act ({facts.hidden_act}), not SiLU")
        return out

    # -- the table ------------------------------------------------------------------------------
    def attention_source(self, part: str, facts: TeacherFacts) -> tuple[str, tuple, str]:
        if part.endswith(".bias"):
            has = facts.o_bias if part.startswith("o_proj") else facts.qkv_bias
            if not has:
                return "set", (), "0 (attention_bias is on for the teacher's other biases)"
        return "copied", (part,), ""

    def mixer_source(self, part: str, facts: TeacherFacts, spec) -> tuple[str, tuple, str]:
        mapped_bc = (spec.state_size or facts.head_dim) == facts.head_dim
        qkv = ("q_proj.weight", "k_proj.weight", "v_proj.weight")
        table = {
            "in_proj.weight": (
                ("mapped", qkv, "rows [z 0 | x <- V | B <- K | C <- Q | dt 0], kv heads repeated")
                if mapped_bc
                else (
                    "mapped",
                    ("v_proj.weight",),
                    f"x <- V; B/C rows fresh (state_size {spec.state_size} != head_dim)",
                )
            ),
            "in_proj.bias": (
                (
                    "mapped",
                    tuple(p.replace("weight", "bias") for p in qkv),
                    f"z {Z_BIAS:g} (constant gate), x/B/C <- v/k/q biases, dt 0",
                )
                if facts.qkv_bias
                else ("set", (), f"z {Z_BIAS:g} (constant gate), the rest 0")
            ),
            "conv1d.weight": ("set", (), "identity: the current token, SiLU gains for x and B/C"),
            "conv1d.bias": ("set", (), "0"),
            "dt_bias": ("set", (), "softplus(dt_bias) = 1"),
            "A_log": ("set", (), "log(1/tau), tau log-spaced per head: slow decay"),
            "D": ("set", (), "0: no skip, the current token is already in the sum"),
            "norm.weight": (
                "mapped",
                ("v_proj.weight",),
                f"{OUT_SCALE:g} x estimated value RMS per head",
            ),
            "out_proj.weight": ("copied", ("o_proj.weight",), "extra heads' columns 0"),
            "out_proj.bias": (
                ("copied", ("o_proj.bias",), "") if facts.o_bias else ("set", (), "0")
            ),
        }
        if part not in table:
            raise RuntimeError(f"no conversion rule for Mamba-2 parameter {part}")
        return table[part]

    # -- weights --------------------------------------------------------------------------------
    def copy_attention(self, attn: torch.nn.Module, t: dict, facts: TeacherFacts) -> None:
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                proj = getattr(attn, name)
                proj.weight.copy_(t[f"{name}.weight"])
                if proj.bias is not None:
                    bias = t.get(f"{name}.bias")
                    proj.bias.copy_(bias) if bias is not None else proj.bias.zero_()

    def init_mixer(self, m, t: dict, facts: TeacherFacts, spec, gen: torch.Generator) -> None:
        d, g = facts.head_dim, t["norm"]
        inner, state, heads = m.intermediate_size, m.ssm_state_size, m.num_heads
        n = facts.num_heads * d  # the mapped channels (extra heads, if any, follow)
        r = head_rows(t, facts)
        q, k, v, qb, kb, vb = r.q, r.k, r.v, r.qb, r.kb, r.vb
        rv = head_rms(v, vb, g, d)
        x0, b0, c0, dt0 = inner, 2 * inner, 2 * inner + heads * state, 2 * inner + 2 * heads * state
        with torch.no_grad():
            w, bias = m.in_proj.weight, m.in_proj.bias
            w[:n] = 0.0
            bias.zero_()
            bias[:inner] = Z_BIAS
            w[x0 : x0 + n] = v
            if vb is not None:
                bias[x0 : x0 + n] = vb
            gains = torch.ones(m.conv_dim, device=w.device)
            gains[:n] = (V_GAIN / rv).repeat_interleave(d)
            if state == d:
                w[b0 : b0 + n] = k
                w[c0 : c0 + n] = q
                if kb is not None:
                    bias[b0 : b0 + n] = kb
                    bias[c0 : c0 + n] = qb
                gains[inner : inner + n] = (QK_GAIN / head_rms(k, kb, g, d)).repeat_interleave(d)
                rq = head_rms(q, qb, g, d)
                gains[inner + heads * state : inner + heads * state + n] = (
                    QK_GAIN / rq
                ).repeat_interleave(d)
            w[dt0:] = 0.0
            identity_taps(m.conv1d, gains)
            m.dt_bias.fill_(SOFTPLUS_ONE)
            m.A_log.copy_(decay_rates(heads).log())
            m.D.zero_()
            m.norm.weight.fill_(1.0)
            m.norm.weight[:n] = OUT_SCALE * rv.repeat_interleave(d)
            m.out_proj.weight.zero_()
            m.out_proj.weight[:, :n] = t["o_proj.weight"]
            if m.out_proj.bias is not None:
                ob = t.get("o_proj.bias")
                m.out_proj.bias.copy_(ob) if ob is not None else m.out_proj.bias.zero_()

    # -- layer selection ------------------------------------------------------------------------
    def attention_layers(self, config) -> list[int]:
        return list(config.attn_layer_indices or [])

    def set_attention_layers(self, config, kept: list[int]) -> None:
        config.attn_layer_indices = list(kept)

    def attention_module(self, config, layer: int) -> torch.nn.Module:
        from transformers.models.bamba.modeling_bamba import BambaAttention

        return BambaAttention(config, layer)


FAMILY = Mamba2Family()
