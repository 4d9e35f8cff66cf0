"""Hook-collected importances equal a brute-force recomputation with explicit loops."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from prune_helpers import VOCAB, tiny
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from anydistill.models.prune import Importance, compute_importance


def _calibration() -> list:
    """A full batch, then one with a right-padded and a left-padded row."""
    gen = torch.Generator().manual_seed(3)
    full = torch.randint(3, VOCAB, (2, 8), generator=gen)
    padded = torch.randint(3, VOCAB, (2, 8), generator=gen)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    padded[mask == 0] = 0
    return [(full, torch.ones_like(full)), (padded, mask)]


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _manual(model, calibration, skip: int | None = None) -> dict:
    """Scores and the LM loss by explicit per-row, per-head, per-token loops."""
    cfg = model.config
    n_layers, n_heads, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, 2
    hd, eps = cfg.head_dim, cfg.rms_norm_eps
    mlp = torch.zeros(n_layers, cfg.intermediate_size)
    heads = torch.zeros(n_layers, n_heads)
    channels = torch.zeros(cfg.hidden_size)
    blocks = torch.zeros(n_layers)
    tokens, loss_sum, pairs = 0, 0.0, 0
    for ids, mask in calibration:
        for b in range(ids.shape[0]):
            row, real = ids[b : b + 1], mask[b].bool()
            T = row.shape[1]
            valid = [t for t in range(T) if real[t]]
            tokens += len(valid)
            h = model.model.embed_tokens(row)[0]
            cos, sin = model.model.rotary_emb(h[None], torch.arange(T)[None])
            for i, layer in enumerate(model.model.layers):
                if i == skip:
                    continue
                att = layer.self_attn
                x = _rms(h, layer.input_layernorm.weight, eps)
                q = (x @ att.q_proj.weight.T).view(T, n_heads, hd).transpose(0, 1)
                k = (x @ att.k_proj.weight.T).view(T, n_kv, hd).transpose(0, 1)
                v = (x @ att.v_proj.weight.T).view(T, n_kv, hd).transpose(0, 1)
                q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)
                outs = []
                for head in range(n_heads):
                    g = head // (n_heads // n_kv)
                    scores = q[0, head] @ k[0, g].T * hd**-0.5
                    allowed = torch.ones(T, T).tril().bool() & real[None, :]
                    p = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num()
                    o = p @ v[g]
                    outs.append(o)
                    for t in valid:
                        heads[i, head] += o[t].norm()
                h_mid = h + torch.cat(outs, -1) @ att.o_proj.weight.T
                x2 = _rms(h_mid, layer.post_attention_layernorm.weight, eps)
                mlp_in = F.silu(x2 @ layer.mlp.gate_proj.weight.T) * (
                    x2 @ layer.mlp.up_proj.weight.T
                )
                h_out = h_mid + mlp_in @ layer.mlp.down_proj.weight.T
                for t in valid:
                    mlp[i] += mlp_in[t].abs()
                    channels += x[t].abs() + x2[t].abs()
                    blocks[i] += 1 - F.cosine_similarity(h[t], h_out[t], dim=0)
                h = h_out
            final = _rms(h, model.model.norm.weight, eps)
            logits = final @ model.lm_head.weight.T
            for t in valid:
                channels += final[t].abs()
            for t in range(T - 1):
                if real[t] and real[t + 1]:
                    loss_sum -= float(logits[t].log_softmax(-1)[row[0, t + 1]])
                    pairs += 1
    return {
        "mlp": mlp / tokens,
        "heads": heads / tokens,
        "channels": channels / tokens,
        "blocks": blocks / tokens,
        "loss": loss_sum / pairs,
        "tokens": tokens,
    }


def test_importances_match_brute_force_with_padding():
    model = tiny("llama", num_hidden_layers=2, intermediate_size=24)
    calibration = _calibration()
    got = compute_importance(model, calibration, block_loss=True)
    with torch.no_grad():
        want = _manual(model, calibration)
        skipped = [_manual(model, calibration, skip=i)["loss"] for i in range(2)]
    assert got.tokens == want["tokens"] == 16 + 5 + 5
    for name in ("mlp", "heads", "channels", "blocks"):
        torch.testing.assert_close(getattr(got, name), want[name], rtol=1e-4, atol=1e-5)
    assert abs(got.base_loss - want["loss"]) < 1e-4
    torch.testing.assert_close(
        got.block_loss, torch.tensor(skipped) - want["loss"], rtol=1e-4, atol=1e-4
    )


def test_padding_content_and_train_mode_do_not_matter():
    model = tiny("llama", num_hidden_layers=2).train()
    calibration = _calibration()
    first = compute_importance(model, calibration)
    assert model.training  # restored
    ids, mask = calibration[1]
    other = ids.clone()
    other[mask == 0] = 5  # different token ids at the padded positions
    second = compute_importance(model, [calibration[0], (other, mask)])
    for name in ("mlp", "heads", "channels", "blocks"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name))


def test_importance_json_round_trip():
    model = tiny("qwen2", num_hidden_layers=2)
    importance = compute_importance(model, _calibration(), block_loss=True)
    again = Importance.from_dict(json.loads(json.dumps(importance.to_dict())))
    for name in ("mlp", "heads", "channels", "blocks", "block_loss"):
        assert torch.equal(getattr(again, name), getattr(importance, name))
    assert again.tokens == importance.tokens and again.base_loss == importance.base_loss
    assert importance.heads.shape == (2, 4) and importance.mlp.shape == (2, 48)
    assert importance.channels.shape == (32,) and importance.blocks.shape == (2,)
