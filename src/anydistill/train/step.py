"""One optimizer step, for every teacher kind and every term: read it top to bottom.

normalizers (global, before any backward) -> per micro-batch: the teacher's signal, the
student's hidden states, the terms' loss, backward -> rank sums, gradient clip -> guards ->
optimizer and scheduler.

Terms come in two families, declared by the term registry: vocabulary terms (`ce` and the
divergences) score the student's rows against the teacher's distribution over the same
vocabulary (a live teacher's head, or the cache's top-k); aligned terms (alm, uld,
gold_hybrid, mined) score them against a teacher on another tokenizer, chunk by chunk.
Feature terms (hidden, attention) compare student layers with teacher layers at the same
rows (`losses/features.py`). Vocabulary and feature terms are divided by the step's target
tokens; each aligned term by the units its sum runs over (its chunks; with several teachers
on their own tokenizers, each teacher's own, see `train/aligned.py`). Both are counted over
all micro-batches and ranks before the first backward, so gradient accumulation and DDP give
the gradient of one big batch.

A paired batch (source `paired`) carries `teacher_rows`; with a `contrastive` term the engine
then runs twice over the same hidden states, once per half (see `split_contrastive`).

A batch of trace pairs (source `paired_traces`) carries `pair_role`: the sequence term `redi`
reads every completion and is divided by the step's global pair count; every other term reads
the correct completions only (`StepInputs.select`), divided by their target tokens.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from anydistill.data.views import Batch, StepInputs, pair_count, step_inputs, target_count
from anydistill.errors import TrainingError
from anydistill.losses import registry
from anydistill.losses.engine import (
    LossOutput,
    MixtureSignal,
    SparseTeacher,
    TeacherSignal,
    distill_loss,
)
from anydistill.losses.features import FeaturePlan, feature_loss
from anydistill.losses.objective import ActiveTerm, split_contrastive
from anydistill.models.features import NO_EXTRAS, select_rows
from anydistill.models.heads import output_head
from anydistill.teachers import as_teacher
from anydistill.teachers.multi import RoutedSignal, routed_loss
from anydistill.train.aligned import aligned_loss, aligned_units
from anydistill.train.guards import DeadGradientGuard, nan_message


@dataclass
class StepParts:
    """What stays the same from one step to the next."""

    accelerator: Accelerator
    model: torch.nn.Module  # the student's HiddenStates, prepared by accelerate
    teacher: Any  # a teachers.Teacher, or None when no term needs one
    optimizer: torch.optim.Optimizer
    scheduler: Any
    vocab_size: int  # the student's
    engine: str = "torch"
    chunk_size: int | None = None
    max_grad_norm: float | None = None
    bf16: bool = False
    selector: Any | None = None  # AdaSPEC's TokenSelector
    aligned_params: dict[str, dict] = field(default_factory=dict)  # per aligned term name
    guard: DeadGradientGuard | None = None
    features: FeaturePlan | None = None  # the feature terms' layer pairs and projections


@dataclass
class StepResult:
    loss: float
    terms: dict[str, float]
    stats: dict[str, float]
    tokens: int
    grad_norm: float | None
    lr: float = 0.0


def train_step(parts: StepParts, step: int, batches: list[Batch], terms: list) -> StepResult:
    """Optimizer step `step` (0-based) over its micro-batches. A non-finite loss or a dead
    gradient raises `TrainingError` before the optimizer touches the weights."""
    acc = parts.accelerator
    tokens = _global(acc, sum(target_count(b) for b in batches))
    units = aligned_units(acc, batches, terms)
    pairs = None
    if any(family(t.kind) == "sequence" for t in terms):
        pairs = _global(acc, sum(pair_count(b) for b in batches))
    result = accumulate(parts, batches, terms, tokens, units, pairs)
    result.tokens = int(tokens.item())
    if not math.isfinite(result.loss):
        raise TrainingError(nan_message(step + 1, result.loss, result.terms))
    if parts.guard is not None:
        parts.guard.check(step + 1, result.loss, result.grad_norm)
    result.lr = parts.scheduler.get_last_lr()[0]
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return result


def accumulate(
    parts: StepParts,
    batches: list[Batch],
    terms: list,
    tokens: torch.Tensor,
    units: dict[str, torch.Tensor],
    pairs: torch.Tensor | None = None,
) -> StepResult:
    """Backward of each micro-batch's loss (gradient sync on the last only), the rank-summed
    loss, terms and stats, and the clipped gradient norm."""
    acc = parts.accelerator
    # DDP averages gradients over ranks; scaling by world size turns that into the global sum.
    scale = float(acc.num_processes)
    total = torch.zeros((), device=acc.device)
    term_sums: dict[str, torch.Tensor] = {}
    stat_sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(parts.model)
        autocast = torch.autocast(acc.device.type, torch.bfloat16, enabled=parts.bf16)
        with sync, autocast:
            out = micro_batch_loss(
                parts.model,
                parts.teacher,
                step_inputs(batch, acc.device),
                terms,
                parts.vocab_size,
                tokens,
                parts.engine,
                parts.chunk_size,
                parts.selector,
                parts.aligned_params,
                units,
                parts.features,
                pairs,
            )
            acc.backward(out.loss * scale)
        total += out.loss.detach()
        for k, v in out.terms.items():
            term_sums[k] = term_sums.get(k, 0.0) + v
        for k, v in out.stats.items():
            stat_sums[k] = stat_sums.get(k, 0.0) + v
    keys, skeys = sorted(term_sums), sorted(stat_sums)
    packed = torch.stack([total, *[term_sums[k] for k in keys], *[stat_sums[k] for k in skeys]])
    packed = acc.reduce(packed.float(), reduction="sum").tolist()
    grad_norm = None
    if all(map(math.isfinite, packed[: 1 + len(keys)])):
        # Measured even without clipping (an infinite limit scales by exactly 1): the run's
        # guards need it to tell a dead student from a learning one.
        limit = parts.max_grad_norm if parts.max_grad_norm is not None else float("inf")
        norm = acc.clip_grad_norm_(parts.model.parameters(), limit)
        # A sharded student's norm is a DTensor: the total over every process's shards.
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return StepResult(
        loss=packed[0],
        terms=dict(zip(keys, packed[1 : 1 + len(keys)], strict=True)),
        stats=dict(zip(skeys, packed[1 + len(keys) :], strict=True)),
        tokens=0,
        grad_norm=grad_norm,
    )


def micro_batch_loss(
    student: torch.nn.Module,
    teacher: Any,
    inputs: StepInputs,
    terms: list[ActiveTerm],
    vocab_size: int,
    normalizer: torch.Tensor,
    engine: str,
    chunk_size: int | None,
    selector: Any | None = None,
    aligned_params: dict[str, dict] | None = None,
    units: dict[str, torch.Tensor] | None = None,
    features: FeaturePlan | None = None,
    pairs: torch.Tensor | None = None,
) -> LossOutput:
    """The weighted loss of one micro-batch. `student` is the (possibly DDP-wrapped)
    HiddenStates module; `teacher` a teachers.Teacher (a bare model is taken as a live one),
    asked once for what the terms need; `normalizer` the step's global target tokens and
    `units` each aligned term's global units; `features` the feature terms' plan; `pairs`
    the step's global count of trace pairs (sequence terms)."""
    teacher = as_teacher(teacher)
    feature_terms = [t for t in terms if family(t.kind) == "feature"]
    if feature_terms and features is None:
        raise TrainingError(f"term {feature_terms[0].name!r} needs a feature plan (its layers)")
    student_needs, teacher_needs = (
        features.needs(feature_terms) if features else (NO_EXTRAS, NO_EXTRAS)
    )
    mixer_terms = [t for t in terms if family(t.kind) == "mixer"]
    others = [t for t in terms if family(t.kind) != "mixer"]
    wants = teacher is not None and any(registry.needs_teacher(t.kind) for t in others)
    signal = teacher.signal(inputs, teacher_needs) if wants else None
    normalizer = normalizer.clamp(min=1.0)
    if not others:  # mixer alignment alone runs the mixers only, not the student
        out = _mixer_output(student, teacher, inputs, mixer_terms, normalizer)
        out.stats["tokens"] = inputs.select.sum().float()
        return out
    if student_needs:
        hidden, caught = student(inputs.input_ids, inputs.attention_mask, student_needs)
    else:
        hidden = student(inputs.input_ids, inputs.attention_mask)
    vocab_terms = [t for t in terms if family(t.kind) == "vocabulary"]
    outs = []
    if vocab_terms:
        vocab_signals = TeacherSignal | SparseTeacher | MixtureSignal | RoutedSignal
        dense = signal if isinstance(signal, vocab_signals) else None
        outs.append(
            vocabulary_loss(
                student,
                hidden,
                dense,
                inputs,
                vocab_terms,
                vocab_size,
                normalizer,
                engine,
                chunk_size,
                selector,
            )  # fmt: skip
        )
    aligned_terms = [t for t in terms if family(t.kind) == "aligned"]
    if aligned_terms:
        outs.append(
            aligned_loss(student, hidden, signal, inputs, aligned_terms, aligned_params, units)
        )
    if feature_terms:
        assert features is not None
        if not isinstance(signal, TeacherSignal) or signal.features is None:
            raise TrainingError(
                f"term {feature_terms[0].name!r} ({feature_terms[0].kind}) compares layer "
                "activations; it needs a live teacher model"
            )
        loss, values = feature_loss(
            feature_terms,
            features.specs,
            select_rows(caught, inputs.select),
            signal.features,
            features.projections,
            normalizer,
        )
        outs.append(LossOutput(loss=loss, terms=values, stats={}))
    sequence_terms = [t for t in terms if family(t.kind) == "sequence"]
    if sequence_terms:
        outs.append(
            sequence_loss(student, hidden, inputs, sequence_terms, vocab_size, pairs, chunk_size)
        )
    if mixer_terms:
        outs.append(_mixer_output(student, teacher, inputs, mixer_terms, normalizer))
    out = outs[0] if len(outs) == 1 else merge_outputs(outs)
    out.stats.setdefault("tokens", inputs.select.sum().float())
    return out


def _mixer_output(
    student: torch.nn.Module,
    teacher: Any,
    inputs: StepInputs,
    terms: list[ActiveTerm],
    normalizer: torch.Tensor,
) -> LossOutput:
    """The mixer alignment terms (`losses/mixer.py`) against the live teacher's model."""
    from anydistill.losses.mixer import mixer_loss

    model = getattr(teacher, "model", None)
    if teacher is None or getattr(teacher, "kind", None) != "live" or model is None:
        raise TrainingError(
            f"term {terms[0].name!r} (mixer) feeds the teacher's attention inputs to the "
            "student's mixers; it needs one live teacher model"
        )
    value = mixer_loss(student, model, inputs.input_ids, inputs.attention_mask, normalizer)
    loss = sum(t.weight * value for t in terms if t.weight > 0)
    values = {t.name: value.detach() for t in terms}
    stats = {"tokens": inputs.select.sum().float()}
    return LossOutput(
        loss=loss if torch.is_tensor(loss) else value * 0.0, terms=values, stats=stats
    )


def vocabulary_loss(
    student: torch.nn.Module,
    hidden: torch.Tensor,
    signal: TeacherSignal | SparseTeacher | MixtureSignal | RoutedSignal | None,
    inputs: StepInputs,
    terms: list[ActiveTerm],
    vocab_size: int,
    normalizer: torch.Tensor,
    engine: str,
    chunk_size: int | None,
    selector: Any | None = None,
) -> LossOutput:
    """Vocabulary terms on the selected rows; `selector` (AdaSPEC's TokenSelector) keeps a
    share of them, normalized by that share. Routed teachers (`route_by`) score each row
    against the teacher its sample names: the engine once per teacher, on its rows."""
    rows = hidden[:, :-1][inputs.select]
    if isinstance(signal, RoutedSignal):
        head = output_head(student)

        def score(r: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, member: Any):
            return distill_loss(
                r, head, member, y, mask, terms, vocab_size=vocab_size, normalizer=normalizer,
                engine=engine, chunk_size=chunk_size,
            )  # fmt: skip

        return routed_loss(signal, rows, inputs.labels, [t.name for t in terms], score)
    halves = split_contrastive(terms)
    if halves is None and selector is not None and isinstance(signal, TeacherSignal):
        keep = selector(
            rows,
            output_head(student),
            inputs.input_ids,
            inputs.attention_mask,
            inputs.select,
            signal,
        )
        normalizer = normalizer * selector.keep
        parts = [(keep, terms)]
    elif halves is None:
        ones = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        parts = [(ones, terms)]
    elif inputs.teacher_rows is None:
        raise ValueError("a contrastive term needs paired batches (source.kind paired)")
    else:
        parts = [(inputs.teacher_rows, halves[0]), (~inputs.teacher_rows, halves[1])]
    outs = [
        distill_loss(
            rows,
            output_head(student),
            signal,
            inputs.labels,
            mask,
            part_terms,
            vocab_size=vocab_size,
            normalizer=normalizer,
            engine=engine,
            chunk_size=chunk_size,
        )
        for mask, part_terms in parts
    ]
    return outs[0] if len(outs) == 1 else merge_outputs(outs)


def sequence_loss(
    student: torch.nn.Module,
    hidden: torch.Tensor,
    inputs: StepInputs,
    terms: list[ActiveTerm],
    vocab_size: int,
    pairs: torch.Tensor | None,
    chunk_size: int | None,
) -> LossOutput:
    """REDI over every completion of a batch of trace pairs, divided by the step's global pair
    count; also logs `<name>/correct` and `<name>/incorrect`, the mean per-token log-prob of
    each side. A zero-weight term is computed without gradient and logged."""
    if inputs.pair_role is None or inputs.pair_select is None:
        raise TrainingError(
            f"term {terms[0].name!r} ({terms[0].kind}) scores a correct and an incorrect trace "
            "of each prompt; it needs batches from source.kind paired_traces"
        )
    every = inputs.pair_select
    row_of = torch.arange(every.shape[0], device=every.device)[:, None].expand_as(every)[every]
    rows, labels = hidden[:, :-1][every], inputs.input_ids[:, 1:][every]
    count = pairs if pairs is not None else torch.tensor(float((inputs.pair_role > 0).sum()))
    loss = hidden.new_zeros((), dtype=torch.float32)
    values: dict[str, torch.Tensor] = {}
    for term in terms:
        grad = contextlib.nullcontext() if term.weight > 0 else torch.no_grad()
        with grad:
            out = registry.get(term.kind).math(
                rows, output_head(student), labels, row_of, inputs.pair_role, term.alpha,
                count, vocab_size, chunk_size,
            )  # fmt: skip
        if term.weight > 0:
            loss = loss + term.weight * out.value
        values[term.name] = out.value.detach()
        values[f"{term.name}/correct"] = out.correct
        values[f"{term.name}/incorrect"] = out.incorrect
    return LossOutput(loss=loss, terms=values, stats={})


def merge_outputs(outs: list[LossOutput]) -> LossOutput:
    """Sum outputs over disjoint row sets or disjoint term sets."""

    def total(key: str, dicts: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return sum(d[key] for d in dicts if key in d)

    terms = [o.terms for o in outs]
    stats = [o.stats for o in outs]
    return LossOutput(
        loss=sum(o.loss for o in outs),
        terms={k: total(k, terms) for k in dict.fromkeys(k for d in terms for k in d)},
        stats={k: total(k, stats) for k in dict.fromkeys(k for d in stats for k in d)},
    )


def family(kind: str) -> str:
    """`aligned` for the registry's cross-tokenizer kinds, `feature` for layer-activation
    kinds, `sequence` for whole-completion kinds (redi), `vocabulary` for the rest."""
    found = registry.get(kind).family
    mapping = {"cross": "aligned", "feature": "feature", "sequence": "sequence", "mixer": "mixer"}
    return mapping.get(found, "vocabulary")


def _global(accelerator: Accelerator, value: float) -> torch.Tensor:
    count = torch.tensor(float(value), device=accelerator.device)
    return accelerator.reduce(count, reduction="sum")
