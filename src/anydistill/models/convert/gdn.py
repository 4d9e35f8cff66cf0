"""Teacher -> Qwen3.5 text (`qwen3_5_text`): Gated DeltaNet mixers beside gated attention.

Kept attention layers. Qwen3.5 attention differs from the teacher's in three ways, each
undone where the code allows:
- q_proj also produces a per-head output gate (attn * sigmoid(gate)). Its rows start at 0, so
  sigmoid(0) = 1/2 exactly, and o_proj starts at 2 x the teacher's: (a / 2)(2W) = aW bit for
  bit (scaling by powers of two is exact), and the gate stays trainable (a gate saturated by a
  large bias would have no gradient).
- q and k always pass a per-head RMSNorm that scales by (1 + w). A Qwen3 teacher has the same
  norms (copied as w - 1); for Llama, Mistral and Qwen2 no setting removes them, so they start
  at the q/k RMS estimated from q_proj/k_proj and the layer is not exact.
- every RMSNorm scales by (1 + w): copies store w - 1, and 1 + (w - 1) == w in float32 for any
  w >= 0.5 (convert warns when a norm weight does not round-trip).

Replaced layers: one GDN head per teacher query head (key/value head dim = head_dim):
in_proj_qkv = [Q; K; V] with K and V kv heads repeated as the teacher's GQA reads them,
out_proj = O. The recurrence is S_t = a S_{t-1}(I - b k k^T) + b v k^T, o_t = S_t q / sqrt(d),
with q, k L2-normalised after the conv's SiLU:
- conv1d: identity (current token) with the gains of `families.QK_GAIN` / `V_GAIN`;
- decay a = exp(-exp(A_log) softplus(a_proj x + dt_bias)): in_proj_a = 0, dt_bias so that
  softplus = 1, A_log = log(1/tau) per head (`families.decay_rates`): a long memory, as linear
  attention has;
- b = sigmoid(in_proj_b x): no bias exists, so in_proj_b = 0 gives b = 1/2 for every token, the
  only constant the layer allows;
- the output gate SiLU(in_proj_z x) also has no bias, so it cannot start constant: in_proj_z is
  random (fresh) with a gain that makes z ~ N(0, Z_STD^2) and SiLU(z) mostly positive;
- the gated RMSNorm's weight sets the output scale (`families.OUT_SCALE`), shrunk by
  E[SiLU(z)] / E[SiLU(z)^2] (the least-squares scale for a random gate).
The gate is what limits this start. On small random teachers the mapped mixer's output has a
cosine of about 0.65-0.7 with the attention output when the gate is made constant by hand,
and about 0.3 with the random gate (the share of a random SiLU gate that is constant is at
most 1/pi); mixer alignment is what fits the gate.
"""

from __future__ import annotations

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

Z_STD = 3.0


def _gate_ratio(std: float) -> float:
    """E[SiLU(z)] / E[SiLU(z)^2] for z ~ N(0, std^2), by quadrature."""
    z = torch.linspace(-8.0, 8.0, 8001, dtype=torch.float64)
    w = torch.exp(-0.5 * z * z)
    g = torch.nn.functional.silu(std * z)
    return float((w * g).sum() / (w * g * g).sum())


class GatedDeltaNetFamily(Family):
    model_type = "qwen3_5_text"
    label = "Gated DeltaNet"
    mixer = "linear_attn"
    final_norm = "model.norm"
    layer_copies = {
        "input_layernorm.weight": "input_layernorm.weight",
        "post_attention_layernorm.weight": "post_attention_layernorm.weight",
        "mlp.gate_proj.weight": "mlp.gate_proj.weight",
        "mlp.up_proj.weight": "mlp.up_proj.weight",
        "mlp.down_proj.weight": "mlp.down_proj.weight",
    }
    offset_norms = True

    def check(self, facts: TeacherFacts, spec: ConvertSpec) -> None:
        if facts.mlp_bias:
            raise ConfigError(
                f"{FIELD}.to: qwen3_5_text has no MLP biases and this teacher has mlp_bias=true; "
                "convert it to bamba instead"
            )

    def config_kwargs(self, facts: TeacherFacts, spec: ConvertSpec, kept: list[int]) -> dict:
        return {
            **self.common_kwargs(facts),
            "attention_bias": facts.qkv_bias or facts.o_bias,
            "layer_types": [
                "full_attention" if i in kept else "linear_attention"
                for i in range(facts.num_layers)
            ],
            "linear_conv_kernel_dim": spec.conv_kernel,
            "linear_key_head_dim": spec.state_size or facts.head_dim,
            "linear_value_head_dim": facts.head_dim,
            "linear_num_key_heads": facts.num_heads,
            "linear_num_value_heads": facts.num_heads,
        }

    def exactness(self, facts: TeacherFacts) -> tuple[bool, str]:
        if facts.qk_norm:
            return True, (
                "exact with every layer kept, when each RMSNorm weight w round-trips as "
                "1 + (w - 1) in float32 (any w >= 0.5; convert warns otherwise)"
            )
        return False, (
            f"not exact: qwen3_5 attention always RMS-normalises q and k per head, which a "
            f"{facts.model_type} teacher does not; those norms start at the q/k scale "
            "estimated from q_proj/k_proj"
        )

    def notes(self, facts: TeacherFacts, spec: ConvertSpec) -> list[str]:
        out = [
            "mixers have no positions: RoPE acts only in kept attention layers",
            "GDN's beta and output gate have no bias: beta starts at exactly 1/2 "
            "(in_proj_b = 0) and the gate SiLU(in_proj_z x) starts random",
        ]
        if facts.qkv_bias or facts.o_bias:
            out.append("GDN projections have no biases: replaced layers drop the attention biases")
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
        bias = part.endswith(".bias")
        proj = part.split(".")[0]
        has = facts.o_bias if proj == "o_proj" else facts.qkv_bias
        if bias and not has:
            return "set", (), "0 (attention_bias is on for the teacher's other biases)"
        if proj == "q_proj":
            return "mapped", (part,), "query rows copied; output-gate rows 0 (gate = 1/2)"
        if proj == "o_proj" and not bias:
            return "mapped", (part,), "x 2, making up for the output gate's 1/2"
        if proj in ("q_norm", "k_norm"):
            if facts.qk_norm:
                return "copied", (part,), self.norm_how()
            src = "q_proj.weight" if proj == "q_norm" else "k_proj.weight"
            return "mapped", (src,), "1 + w = the RMS of q/k estimated from the projection"
        return "copied", (part,), ""

    def mixer_source(self, part: str, facts: TeacherFacts, spec) -> tuple[str, tuple, str]:
        mapped_qk = (spec.state_size or facts.head_dim) == facts.head_dim
        table = {
            "in_proj_qkv.weight": (
                (
                    "mapped",
                    ("q_proj.weight", "k_proj.weight", "v_proj.weight"),
                    "[Q; K; V], K and V kv heads repeated to the query heads",
                )
                if mapped_qk
                else (
                    "mapped",
                    ("v_proj.weight",),
                    f"V rows only; Q/K rows fresh (state_size {spec.state_size} != head_dim)",
                )
            ),
            "conv1d.weight": ("set", (), "identity: the current token, SiLU gains for Q/K and V"),
            "in_proj_z.weight": (
                "fresh",
                (),
                f"no bias to make the gate constant; random with z ~ N(0, {Z_STD:g}^2)",
            ),
            "in_proj_b.weight": ("set", (), "0: beta = sigmoid(0) = 1/2"),
            "in_proj_a.weight": ("set", (), "0: the decay does not depend on the token"),
            "A_log": ("set", (), "log(1/tau), tau log-spaced per head: long memory"),
            "dt_bias": ("set", (), "softplus(dt_bias) = 1"),
            "norm.weight": (
                "mapped",
                ("v_proj.weight",),
                f"{OUT_SCALE:g} x estimated value RMS x E[SiLU(z)]/E[SiLU(z)^2]",
            ),
            "out_proj.weight": ("copied", ("o_proj.weight",), ""),
        }
        if part not in table:
            raise RuntimeError(f"no conversion rule for Gated DeltaNet parameter {part}")
        return table[part]

    # -- weights --------------------------------------------------------------------------------
    def copy_attention(self, attn: torch.nn.Module, t: dict, facts: TeacherFacts) -> None:
        d, heads, hidden = facts.head_dim, facts.num_heads, facts.hidden_size
        with torch.no_grad():
            q = attn.q_proj.weight.view(heads, 2, d, hidden)
            q[:, 0] = t["q_proj.weight"].view(heads, d, hidden)
            q[:, 1] = 0.0
            attn.k_proj.weight.copy_(t["k_proj.weight"])
            attn.v_proj.weight.copy_(t["v_proj.weight"])
            attn.o_proj.weight.copy_(2.0 * t["o_proj.weight"])
            if attn.q_proj.bias is not None:
                qb = attn.q_proj.bias.view(heads, 2, d)
                qb.zero_()
                for name in ("k_proj", "v_proj", "o_proj"):
                    getattr(attn, name).bias.zero_()
                if facts.qkv_bias:
                    qb[:, 0] = t["q_proj.bias"].view(heads, d)
                    attn.k_proj.bias.copy_(t["k_proj.bias"])
                    attn.v_proj.bias.copy_(t["v_proj.bias"])
                if facts.o_bias:
                    attn.o_proj.bias.copy_(t["o_proj.bias"])
            if facts.qk_norm:
                self.copy_norm(attn.q_norm.weight, t["q_norm.weight"])
                self.copy_norm(attn.k_norm.weight, t["k_norm.weight"])
            else:
                for proj, norm in (("q_proj", attn.q_norm), ("k_proj", attn.k_norm)):
                    rms = head_rms(t[f"{proj}.weight"], t.get(f"{proj}.bias"), t["norm"], d)
                    norm.weight.fill_(float(rms.pow(2).mean().sqrt()) - 1.0)

    def init_mixer(self, m, t: dict, facts: TeacherFacts, spec, gen: torch.Generator) -> None:
        d, g = facts.head_dim, t["norm"]
        r = head_rows(t, facts)
        rv = head_rms(r.v, r.vb, g, d)
        key_dim, kd = m.key_dim, m.head_k_dim
        with torch.no_grad():
            w = m.in_proj_qkv.weight
            if kd == d:
                w[:key_dim] = r.q
                w[key_dim : 2 * key_dim] = r.k
                rq, rk = head_rms(r.q, r.qb, g, d), head_rms(r.k, r.kb, g, d)
                qk = torch.cat([QK_GAIN / rq, QK_GAIN / rk]).repeat_interleave(d)
            else:
                qk = torch.ones(2 * key_dim, device=w.device)
            w[2 * key_dim :] = r.v
            identity_taps(m.conv1d, torch.cat([qk, (V_GAIN / rv).repeat_interleave(d)]))
            z = torch.randn(m.in_proj_z.weight.shape, generator=gen, dtype=torch.float32)
            m.in_proj_z.weight.copy_(z * (Z_STD / float(g.float().pow(2).sum().sqrt())))
            m.in_proj_b.weight.zero_()
            m.in_proj_a.weight.zero_()
            m.A_log.copy_(decay_rates(m.num_v_heads).log())
            m.dt_bias.fill_(SOFTPLUS_ONE)
            scale = OUT_SCALE * float(rv.pow(2).mean().sqrt()) * _gate_ratio(Z_STD)
            m.norm.weight.fill_(scale)
            m.out_proj.weight.copy_(t["o_proj.weight"])

    # -- layer selection ------------------------------------------------------------------------
    def attention_layers(self, config) -> list[int]:
        return [i for i, t in enumerate(config.layer_types) if t == "full_attention"]

    def set_attention_layers(self, config, kept: list[int]) -> None:
        config.layer_types = [
            "full_attention" if i in kept else "linear_attention"
            for i in range(config.num_hidden_layers)
        ]

    def attention_module(self, config, layer: int) -> torch.nn.Module:
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Attention

        return Qwen3_5Attention(config, layer)


FAMILY = GatedDeltaNetFamily()
