"""KL-guided layer selection: which layers lose the most when their attention goes.

The teacher is converted with no attention kept, the mixers get a short alignment
(`align.align_mixers`), and then each layer in turn gets its attention back (copied from the
teacher, swapped in place so no second model is built) while the mean token
KL(teacher || student) is measured on the batches. A layer's score is the KL without its
attention minus the KL with it: the drop its attention is worth. The `count` layers with the
largest drop keep attention. Everything is deterministic given the seed (the fresh mixer
parameters come from it; batches are read in order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F

from anydistill.errors import ConfigError
from anydistill.models.convert.align import align_mixers, capture_attention_io
from anydistill.models.convert.build import convert, layer_tensors
from anydistill.models.convert.plan import ConversionPlan, plan_conversion
from anydistill.models.convert.spec import FIELD, ConvertSpec

Batch = tuple[torch.Tensor, torch.Tensor | None]


@contextmanager
def restored_attention(student, teacher, plan: ConversionPlan, layer: int) -> Iterator[None]:
    """Within the block, `layer` of the student runs the teacher's attention again."""
    family = plan.family
    block = student.model.layers[layer]
    param = next(student.parameters())
    attn = family.attention_module(student.config, layer).to(param.device, param.dtype)
    family.copy_attention(attn, layer_tensors(teacher.state_dict(), layer), plan.teacher)
    before = family.attention_layers(student.config)
    mixer = getattr(block, family.mixer)
    family.set_attention_layers(student.config, sorted({*before, layer}))
    delattr(block, family.mixer)
    block.self_attn, block.block_type = attn.train(student.training), "full_attention"
    try:
        yield
    finally:
        del block.self_attn
        setattr(block, family.mixer, mixer)
        block.block_type = "linear_attention"
        family.set_attention_layers(student.config, before)


def mean_kl(student, teacher, batches: Sequence[Batch]) -> float:
    """Mean over real tokens of KL(teacher || student) of the next-token distributions."""
    total, count = 0.0, 0.0
    with torch.no_grad():
        for ids, mask in batches:
            t = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            s = student(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            lt, ls = F.log_softmax(t, dim=-1), F.log_softmax(s, dim=-1)
            kl = (lt.exp() * (lt - ls)).sum(dim=-1)
            m = torch.ones_like(kl) if mask is None else mask.to(kl)
            total += float((kl * m).sum())
            count += float(m.sum())
    return total / max(count, 1.0)


def select_layers_kl(
    teacher,
    spec_to: str | ConvertSpec,
    count: int,
    batches: Sequence[Batch],
    align_steps: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[list[int], list[tuple[int, float, float]]]:
    """Picks the `count` layers whose attention lowers the KL most after a short alignment.

    spec_to: the target model type (or a ConvertSpec for its family options; its layer
    choice is ignored). batches: (input_ids, attention_mask) pairs. Returns the kept layers
    (sorted) and the ranking of every layer as (layer, kl_with_its_attention, drop), largest
    drop first."""
    base = spec_to if isinstance(spec_to, ConvertSpec) else ConvertSpec(to=spec_to)
    spec = replace(base, keep_attention=[], count=None, fraction=None, seed=seed)
    plan = plan_conversion(teacher.config, spec)
    layers = plan.teacher.num_layers
    if not 0 <= count <= layers:
        raise ConfigError(f"{FIELD}.count: {count} is out of range; give 0..{layers}")
    if not batches:
        raise ConfigError(f"{FIELD}: layer selection needs at least one calibration batch")
    student = convert(teacher, plan)
    captured = [
        (capture_attention_io(teacher, ids, mask, range(layers)), mask) for ids, mask in batches
    ]
    align_mixers(student, captured, align_steps, lr)
    without = mean_kl(student, teacher, batches)
    ranking = []
    for layer in range(layers):
        with restored_attention(student, teacher, plan, layer):
            kl = mean_kl(student, teacher, batches)
        ranking.append((layer, kl, without - kl))
    ranking.sort(key=lambda r: (-r[2], r[0]))
    return sorted(r[0] for r in ranking[:count]), ranking
