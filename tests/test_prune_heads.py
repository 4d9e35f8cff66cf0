"""Head, KV-group and neuron slicing: GQA groups, biases, fused projections, q/k norms."""

from __future__ import annotations

import pytest
import torch
from prune_helpers import batches, logits, n_params, tiny, zeroed
from transformers import AutoModelForCausalLM

from anydistill.models.prune import (
    PruneTarget,
    apply_plan,
    compute_importance,
    plan_pruning,
    save_pruned,
)

GQA = {"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 8}


def _plan(teacher, **target):
    importance = compute_importance(teacher, batches())
    return plan_pruning(teacher, importance, PruneTarget(**target)), importance


def test_query_heads_stay_equal_per_kv_group():
    teacher = tiny("llama", **GQA)
    plan, importance = _plan(teacher, num_attention_heads=4)
    assert plan.student.num_key_value_heads == 2
    for pos, layer in enumerate(plan.layers):
        kept = plan.heads[pos]
        assert [h // 4 for h in kept] == [0, 0, 1, 1]  # two per group, group-major
        for group in (0, 1):
            scores = importance.heads[layer, group * 4 : group * 4 + 4]
            best = sorted(group * 4 + i for i in scores.argsort(descending=True)[:2].tolist())
            assert kept[group * 2 : group * 2 + 2] == best
    student = apply_plan(teacher, plan).eval()
    assert student.config.num_attention_heads == 4 and student.config.head_dim == 8
    torch.testing.assert_close(logits(student), logits(zeroed(teacher, plan)))


def test_pruning_kv_heads_drops_whole_groups():
    teacher = tiny("llama", **GQA)
    plan, importance = _plan(teacher, num_key_value_heads=1)
    assert plan.student.num_attention_heads == 4  # the group's query heads go with it
    for pos, layer in enumerate(plan.layers):
        group_scores = importance.heads[layer].view(2, 4).sum(1)
        best = int(group_scores.argmax())
        assert plan.kv_heads[pos] == [best]
        assert plan.heads[pos] == [best * 4 + i for i in range(4)]
    student = apply_plan(teacher, plan).eval()
    assert student.config.num_key_value_heads == 1
    torch.testing.assert_close(logits(student), logits(zeroed(teacher, plan)))


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_heads(tied, tmp_path):
    teacher = tiny("llama", tie_word_embeddings=tied, **GQA)
    plan, importance = _plan(teacher, hidden_size=48, num_attention_heads=4)
    student = apply_plan(teacher, plan).eval()
    embed, head = student.model.embed_tokens.weight, student.lm_head.weight
    assert (head is embed) == tied
    channels = torch.tensor(plan.channels)
    assert torch.equal(embed, teacher.model.embed_tokens.weight[:, channels])
    assert torch.equal(head, teacher.lm_head.weight[:, channels])
    assert n_params(student) == plan.params_after
    out = save_pruned(student, tmp_path / "s", plan, importance)
    loaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    assert torch.equal(logits(loaded), logits(student))


def test_qwen2_biases_are_sliced_with_their_heads():
    teacher = tiny("qwen2", **GQA)
    plan, _ = _plan(teacher, num_attention_heads=4, intermediate_size=32)
    student = apply_plan(teacher, plan).eval()
    rows = torch.tensor([h * 8 + d for h in plan.heads[0] for d in range(8)])
    kv_rows = torch.tensor([g * 8 + d for g in plan.kv_heads[0] for d in range(8)])
    attn, old = student.model.layers[0].self_attn, teacher.model.layers[0].self_attn
    assert torch.equal(attn.q_proj.bias, old.q_proj.bias[rows])
    assert torch.equal(attn.k_proj.bias, old.k_proj.bias[kv_rows])
    assert torch.equal(attn.v_proj.bias, old.v_proj.bias[kv_rows])
    torch.testing.assert_close(logits(student), logits(zeroed(teacher, plan)))


def test_phi3_fused_projections():
    teacher = tiny("phi3", **GQA)
    plan, _ = _plan(teacher, num_key_value_heads=1, intermediate_size=24)
    student = apply_plan(teacher, plan).eval()
    layer = student.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.shape == ((4 + 2 * 1) * 8, 64)
    assert layer.mlp.gate_up_proj.weight.shape == (2 * 24, 64)
    old = teacher.model.layers[plan.layers[0]].mlp.gate_up_proj.weight
    neurons = torch.tensor(plan.neurons[0])
    assert torch.equal(layer.mlp.gate_up_proj.weight[24:], old[48 + neurons])  # the up half
    torch.testing.assert_close(logits(student), logits(zeroed(teacher, plan)))


def test_qwen3_qk_norms_are_kept_per_head_dim():
    teacher = tiny("qwen3", **GQA)
    plan, _ = _plan(teacher, num_attention_heads=2, intermediate_size=16)
    student = apply_plan(teacher, plan).eval()
    for pos, layer in enumerate(plan.layers):
        new, old = student.model.layers[pos].self_attn, teacher.model.layers[layer].self_attn
        assert torch.equal(new.q_norm.weight, old.q_norm.weight)
        assert torch.equal(new.k_norm.weight, old.k_norm.weight)
    torch.testing.assert_close(logits(student), logits(zeroed(teacher, plan)))


def test_multi_head_attention_stays_multi_head():
    teacher = tiny("mistral", num_key_value_heads=4)
    plan, _ = _plan(teacher, num_attention_heads=2)
    assert plan.student.num_key_value_heads == 2
    student = apply_plan(teacher, plan).eval()
    torch.testing.assert_close(logits(student), logits(zeroed(teacher, plan)))
