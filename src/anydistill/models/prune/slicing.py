"""Build the pruned student: a fresh model of the student config with sliced teacher weights.

Gemma-family note: the embedding normalizer (embeddings times sqrt(hidden_size)) is derived
from the config, so a student with a smaller hidden_size scales its embeddings by
sqrt(new hidden_size) instead of the teacher's sqrt(hidden_size): the residual stream
starts sqrt(new/old) smaller. RMSNorm makes each block's input insensitive to that scale,
and distillation retrains the rest; it is accepted rather than folded into the weights (a
tied head would see the folded scale in its logits). The attention and final-logit
soft-caps and query_pre_attn_scalar are config constants and do not change.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from anydistill.errors import ConfigError, ModelError
from anydistill.models.prune.families import (
    LAYERS_PREFIX,
    check_all_known,
    family_of,
    shape_of,
    weight_role,
)
from anydistill.models.prune.plan import PrunePlan, student_config


def _blocks(units: list[int], size: int, offset: int = 0) -> list[int]:
    """Row indices of whole head_dim blocks."""
    return [offset + u * size + d for u in units for d in range(size)]


def _indices(role: str, plan: PrunePlan, pos: int | None) -> list[int]:
    t = plan.teacher
    if role == "ch":
        return plan.channels
    neurons = plan.neurons[pos]
    if role == "ff":
        return neurons
    if role == "ff2":  # Phi-3 gate_up_proj: gate rows, then up rows
        return [*neurons, *(t.intermediate_size + n for n in neurons)]
    q = _blocks(plan.heads[pos], t.head_dim)
    kv = _blocks(plan.kv_heads[pos], t.head_dim)
    if role == "q":
        return q
    if role == "kv":
        return kv
    # Phi-3 qkv_proj: all query rows, then key rows, then value rows.
    q_rows, kv_rows = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    return [*q, *(q_rows + i for i in kv), *(q_rows + kv_rows + i for i in kv)]


def _slice(tensor: Tensor, roles, plan: PrunePlan, pos: int | None) -> Tensor:
    out = tensor.detach()
    for dim, role in enumerate(roles):
        if role is not None:
            index = torch.tensor(_indices(role, plan, pos), device=out.device)
            out = out.index_select(dim, index)
    return out.clone()


def apply_plan(model: PreTrainedModel, plan: PrunePlan) -> PreTrainedModel:
    """A new model (`from_config` of the student config) holding the teacher's weights
    sliced by `plan`; the teacher is left untouched. Tied heads are re-tied. The student
    has the teacher's dtype and device; Gemma students rescale their embeddings by the new
    sqrt(hidden_size) (see the module docstring)."""
    family = family_of(model.config)
    if plan.model_type != family.model_type or shape_of(model.config) != plan.teacher:
        raise ConfigError(
            f"plan: it was made for a {plan.model_type} of shape {plan.teacher.to_dict()}, "
            "not this model; plan again for this model"
        )
    state = model.state_dict()
    check_all_known(state, family)
    new_pos = {old: new for new, old in enumerate(plan.layers)}
    sliced = {}
    for name, tensor in state.items():
        layer, roles = weight_role(name, family)
        pos = None
        if layer is not None:
            if layer not in new_pos:
                continue
            pos = new_pos[layer]
            name = f"{LAYERS_PREFIX}{pos}.{name.split('.', 3)[3]}"
        sliced[name] = _slice(tensor, roles, plan, pos)

    config = student_config(model.config, plan)
    embed = model.get_input_embeddings().weight
    with torch.device(embed.device):
        student = AutoModelForCausalLM.from_config(config, dtype=embed.dtype)
    missing, unexpected = student.load_state_dict(sliced, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if getattr(config, "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelError(
            f"prune: the sliced weights did not fit the student (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); this model layout is not supported"
        )
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(model.generation_config)
    return student
