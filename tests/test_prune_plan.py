"""Depth pruning, parameter budgets, refused targets and models, and safe saving."""

from __future__ import annotations

import json

import pytest
import torch
from prune_helpers import batches, logits, n_params, tiny
from transformers import AutoConfig, AutoModelForCausalLM

from anydistill.errors import ConfigError, ModelError
from anydistill.models.from_teacher import student_from_teacher
from anydistill.models.prune import (
    Importance,
    PrunePlan,
    PruneTarget,
    apply_plan,
    compute_importance,
    plan_pruning,
    save_pruned,
)
from anydistill.models.prune.plan import _scaled, _sizes
from anydistill.models.prune.save import check_target


def _importance(teacher, blocks=None, block_loss=None) -> Importance:
    """Importances with chosen block scores (width scores from a real pass)."""
    importance = compute_importance(teacher, batches(n=1))
    if blocks is not None:
        importance.blocks = torch.tensor(blocks)
    if block_loss is not None:
        importance.block_loss = torch.tensor(block_loss)
    return importance


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.count(". ") == 0
    return text


def test_depth_pruning_drops_the_lowest_blocks():
    teacher = tiny("llama", num_hidden_layers=4)
    importance = _importance(teacher, blocks=[0.3, 0.1, 0.5, 0.2], block_loss=[0.1, 0.9, 0.2, 0.8])
    plan = plan_pruning(teacher, importance, PruneTarget(num_hidden_layers=2))
    assert plan.layers == [0, 2]
    by_loss = plan_pruning(
        teacher, importance, PruneTarget(num_hidden_layers=2, depth_metric="loss")
    )
    assert by_loss.layers == [1, 3]
    assert "drops layers [1, 3]" in plan.describe()
    student = apply_plan(teacher, plan).eval()
    assert torch.equal(logits(student), logits(student_from_teacher(teacher, [0, 2]).eval()))


def test_real_block_scores_pick_the_layers():
    teacher = tiny("gemma2", num_hidden_layers=4)
    importance = compute_importance(teacher, batches(), block_loss=True)
    plan = plan_pruning(teacher, importance, PruneTarget(num_hidden_layers=3))
    assert plan.layers == sorted(importance.blocks.argsort(descending=True)[:3].tolist())
    student = apply_plan(teacher, plan)
    assert student.config.layer_types == [teacher.config.layer_types[i] for i in plan.layers]


@pytest.mark.parametrize("model_type", ["llama", "gemma"])
def test_params_budget_is_met_from_below(model_type):
    teacher = tiny(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=4)
    importance = _importance(teacher)
    budget = 0.6 * n_params(teacher)
    plan = plan_pruning(teacher, importance, PruneTarget(params=budget))
    student = apply_plan(teacher, plan)
    assert n_params(student) == plan.params_after <= budget
    s = plan.student
    assert s.hidden_size % 8 == 0 and s.num_hidden_layers == 4 and s.num_attention_heads == 4
    assert s.intermediate_size == _scaled(128, s.hidden_size, 64)
    # The next hidden size on the grid would be over budget: the closest fit from below.
    bigger = [h for h in _sizes(64) if h > s.hidden_size][0]
    next_up = PruneTarget(hidden_size=bigger, intermediate_size=_scaled(128, bigger, 64))
    assert plan_pruning(teacher, importance, next_up).params_after > budget

    deeper = plan_pruning(teacher, importance, PruneTarget(params=budget, num_hidden_layers=3))
    assert deeper.params_after <= budget and deeper.student.num_hidden_layers == 3
    assert deeper.student.hidden_size >= s.hidden_size


def test_plan_from_config_and_round_trip():
    teacher = tiny("qwen3")
    importance = _importance(teacher)
    target = PruneTarget(hidden_size=16, num_key_value_heads=1)
    from_model = plan_pruning(teacher, importance, target)
    from_config = plan_pruning(teacher.config, importance, target)
    assert from_model.to_dict() == from_config.to_dict()
    again = PrunePlan.from_dict(json.loads(json.dumps(from_model.to_dict())))
    assert again == from_model
    text = from_model.describe()
    assert "hidden_size" in text and "32 -> 16" in text and f"{from_model.params_after:,}" in text


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ({"hidden_size": 0}, "target.hidden_size"),
        ({"hidden_size": 64}, "target.hidden_size"),
        ({"hidden_size": 30}, "target.hidden_size"),
        ({"intermediate_size": 4.5}, "target.intermediate_size"),
        ({"num_hidden_layers": 9}, "target.num_hidden_layers"),
        ({"num_attention_heads": 3}, "target.num_attention_heads"),
        ({"num_key_value_heads": 3}, "target.num_key_value_heads"),
        ({"num_attention_heads": 4, "num_key_value_heads": 1}, "target.num_attention_heads"),
        ({"num_attention_heads": 8, "num_key_value_heads": 2}, "target.num_attention_heads"),
        ({"params": 10}, "target.params"),
        ({"params": 0}, "target.params"),
        ({"params": 1e9}, "target.params"),
        ({"params": "1B"}, "target.params"),
        ({"params": 20000, "hidden_size": 32, "intermediate_size": 48}, "target.params"),
        ({"num_hidden_layers": 2, "depth_metric": "loss"}, "target.depth_metric"),
        ({"num_hidden_layers": 2, "depth_metric": "random"}, "target.depth_metric"),
        ({}, "target"),
    ],
)
def test_impossible_targets_are_refused(target, field):
    teacher = tiny("llama")
    importance = _importance(teacher)
    with pytest.raises(ConfigError) as err:
        plan_pruning(teacher, importance, PruneTarget(**target))
    assert _one_sentence(err).startswith(field + ":")


def test_importance_of_another_model_is_refused():
    importance = _importance(tiny("llama"))
    with pytest.raises(ConfigError, match="importance.mlp"):
        plan_pruning(tiny("llama", intermediate_size=40), importance, PruneTarget(hidden_size=16))


def test_unsupported_model_type_is_refused():
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=64)
    importance = _importance(tiny("llama"))
    with pytest.raises(ModelError) as err:
        plan_pruning(config, importance, PruneTarget(hidden_size=16))
    text = _one_sentence(err)
    assert "'gpt2'" in text and "llama" in text and "phi3" in text
    with pytest.raises(ModelError, match="'gpt2' is not supported"):
        compute_importance(AutoModelForCausalLM.from_config(config), batches(n=1))


def test_unknown_weights_are_refused_not_half_sliced():
    teacher = tiny("llama")
    teacher.model.layers[0].mlp.extra_scale = torch.nn.Parameter(torch.ones(48))
    importance = _importance(tiny("llama"))
    with pytest.raises(ModelError, match="extra_scale"):
        plan_pruning(teacher, importance, PruneTarget(hidden_size=16))


def test_save_refuses_a_directory_with_user_files(tmp_path):
    teacher = tiny("llama")
    importance = _importance(teacher)
    plan = plan_pruning(teacher, importance, PruneTarget(intermediate_size=16))
    student = apply_plan(teacher, plan)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        save_pruned(student, out, plan, importance)
    assert "out_dir" in _one_sentence(err) and "notes.txt" in str(err.value)
    with pytest.raises(ConfigError, match="^--out: "):
        check_target(out, "--out")  # the same check, before any work
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind

    # An earlier pruned model in the directory is replaced; an empty directory is used.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    save_pruned(student, fresh, plan, importance)
    save_pruned(student, fresh, plan, importance)
    assert json.loads((fresh / "prune_plan.json").read_text())["layers"] == plan.layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]


def test_invalid_student_config_is_refused_before_slicing():
    # Phi-3 longrope factors are validated against hidden_size // num_attention_heads.
    rope = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}
    teacher = tiny("phi3", rope_parameters=rope, original_max_position_embeddings=32)
    importance = _importance(teacher)
    with pytest.raises(ConfigError) as err:
        plan_pruning(teacher, importance, PruneTarget(hidden_size=16))
    assert _one_sentence(err).startswith("target:") and "short_factor" in str(err.value)
    plan = plan_pruning(teacher, importance, PruneTarget(intermediate_size=16))
    assert plan.student.intermediate_size == 16
