"""`convert`: a student of the plan's architecture with the teacher's weights where they fit.

The student is built with `AutoModelForCausalLM.from_config` in the teacher's dtype, device
and attention implementation (so kept attention computes what the teacher's does), under a
forked RNG seeded by `spec.seed`: the fresh parameters are the same on every run and the
caller's random state is untouched. Embeddings, final norm, head (tied or not, as the
teacher), every MLP and norm are copied; kept layers get the teacher's attention and replaced
layers a mixer initialised from it (`gdn.py`, `mamba2.py`).
"""

from __future__ import annotations

import logging
import re

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from anydistill.errors import ConfigError
from anydistill.models.convert.plan import ConversionPlan
from anydistill.models.convert.spec import FIELD
from anydistill.models.convert.teacher import teacher_facts

log = logging.getLogger(__name__)
_BLOCK = re.compile(r"^model\.layers\.\d+\.(self_attn|linear_attn|mamba)\.")


def layer_tensors(state: dict, layer: int) -> dict[str, torch.Tensor]:
    """The teacher's attention tensors of one layer by suffix (`q_proj.weight`, ...), plus
    `norm`: the input RMSNorm weight the attention reads through (for scale estimates)."""
    prefix = f"model.layers.{layer}.self_attn."
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out["norm"] = state[f"model.layers.{layer}.input_layernorm.weight"]
    return out


def mixer_generator(seed: int, layer: int) -> torch.Generator:
    """The random source of one layer's fresh mixer parameters."""
    return torch.Generator().manual_seed(seed * 1_000_003 + layer)


def build_student(teacher: PreTrainedModel, plan: ConversionPlan) -> PreTrainedModel:
    """The plan's architecture with default init, in the teacher's dtype and device."""
    param = next(teacher.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.spec.seed)
        student = AutoModelForCausalLM.from_config(
            plan.student_config.__class__.from_dict(plan.student_config.to_dict()),
            dtype=param.dtype,
            attn_implementation=teacher.config._attn_implementation,
        )
    return student.to(param.device).train(teacher.training)


def _check_norms(student, state: dict, plan: ConversionPlan) -> None:
    """Warns when a norm stored as w - 1 does not give back w (so logits are not exact)."""
    bad = 0
    for s in plan.sources:
        if s.kind == "copied" and s.name.endswith("norm.weight") and plan.family.offset_norms:
            w = state[s.sources[0]]
            bad += int((1.0 + student.get_parameter(s.name).float() != w.float()).sum())
    if bad:
        log.warning(
            "%d RMSNorm weights do not round-trip as 1 + (w - 1) in %s; the kept layers are "
            "equal to the teacher's only up to that rounding",
            bad,
            state["model.norm.weight"].dtype,
        )


def convert(teacher: PreTrainedModel, plan: ConversionPlan) -> PreTrainedModel:
    """Builds the student the plan describes from `teacher`'s weights (nothing trained)."""
    facts = teacher_facts(teacher.config)
    if facts != plan.teacher:
        raise ConfigError(
            f"{FIELD}: the plan was made for another teacher ({plan.teacher.model_type}, "
            f"{plan.teacher.num_layers} layers, hidden {plan.teacher.hidden_size}); plan again "
            "from this teacher's config"
        )
    family = plan.family
    state = teacher.state_dict()
    student = build_student(teacher, plan)
    with torch.no_grad():
        for s in plan.sources:
            if s.kind != "copied" or _BLOCK.match(s.name):
                continue
            dst, src = student.get_parameter(s.name), state[s.sources[0]]
            if s.name.endswith("norm.weight"):
                family.copy_norm(dst, src)
            else:
                dst.copy_(src)
        for i, layer in enumerate(student.model.layers):
            tensors = layer_tensors(state, i)
            if i in plan.kept:
                family.copy_attention(layer.self_attn, tensors, facts)
            else:
                mixer = getattr(layer, family.mixer)
                family.init_mixer(
                    mixer, tensors, facts, plan.spec, mixer_generator(plan.spec.seed, i)
                )
    _check_norms(student, state, plan)
    return student
