"""Every supported family: pruned shapes, save/load round trips and the identity prune."""

from __future__ import annotations

import pytest
import torch
from prune_helpers import FAMILIES, batches, logits, n_params, tiny
from transformers import AutoModelForCausalLM

from anydistill.models.prune import (
    PruneTarget,
    apply_plan,
    compute_importance,
    plan_pruning,
    prune_model,
    save_pruned,
)

SHAPE = {
    "hidden_size": 24,
    "intermediate_size": 40,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_prune_to_shape_saves_and_reloads(model_type, tmp_path):
    teacher = tiny(model_type)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, plan, importance = prune_model(teacher, batches(), PruneTarget(**SHAPE))
    for key, value in SHAPE.items():
        assert getattr(student.config, key) == value
    assert student.config.head_dim == teacher.config.head_dim
    assert n_params(student) == plan.params_after < plan.params_before == n_params(teacher)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    layer_types = getattr(teacher.config, "layer_types", None)
    if layer_types:
        assert student.config.layer_types == [layer_types[i] for i in plan.layers]
    if teacher.config.tie_word_embeddings:
        assert student.lm_head.weight is student.model.embed_tokens.weight

    out = save_pruned(student, tmp_path / "student", plan, importance)
    assert {"config.json", "model.safetensors", "prune_plan.json", "importance.json"} <= {
        p.name for p in out.iterdir()
    }
    loaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert torch.equal(logits(loaded), logits(student.eval()))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_keeping_everything_reproduces_the_teacher(model_type):
    teacher = tiny(model_type)
    importance = compute_importance(teacher, batches(n=1))
    config = teacher.config
    same = PruneTarget(**{k: getattr(config, k) for k in SHAPE})
    plan = plan_pruning(teacher, importance, same)
    assert plan.params_after == plan.params_before
    student = apply_plan(teacher, plan).eval()
    assert torch.equal(logits(student), logits(teacher))
