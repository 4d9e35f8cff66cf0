"""Feature terms: a student layer's activations against a teacher layer's.

- `hidden`: the outputs of matched decoder blocks, MSE (mean over channels) or cosine
  distance per token (DistillKit's hidden-state loss, ModelOpt's layer pairs);
- `attention` with `target: output`: the self-attention outputs before the residual add, the
  same way;
- `attention` with `target: map`: MiniLM's attention transfer, KL(teacher || student) between
  the attention distributions of matched heads over the keys, averaged over heads. With fewer
  student heads, each student head is matched with the mean distribution of a group of
  consecutive teacher heads (the teacher's head count must be a multiple of the student's).

When the widths differ, the student's rows go through a learned linear projection per layer
pair (`FeatureProjections`): it trains with the student and is saved in checkpoints, never in
the final student. Every term is a sum over the step's target rows divided by their global
count, like the divergences, averaged over its layer pairs so that adding pairs does not
scale it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from anydistill.errors import ConfigError
from anydistill.models.features import Features, Needs


def hidden_rows(student: Tensor, teacher: Tensor, loss: str) -> Tensor:
    """Per-row `[N]` distance between `[N, H]` activations, in float32."""
    s, t = student.float(), teacher.float()
    if loss == "mse":
        return (s - t).pow(2).mean(-1)
    if loss == "cosine":
        return 1.0 - nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
    raise ValueError(f"unknown feature loss {loss!r}; choose mse or cosine")


def group_heads(teacher: Tensor, heads: int) -> Tensor:
    """`[N, Ht, K]` teacher distributions -> `[N, heads, K]`, averaging consecutive groups."""
    n, ht, k = teacher.shape
    if ht == heads:
        return teacher
    if heads < 1 or ht % heads:
        raise ConfigError(
            f"attention maps: the teacher has {ht} heads and the student {heads}; the teacher's "
            "count must be a multiple of the student's"
        )
    return teacher.reshape(n, heads, ht // heads, k).mean(2)


def map_rows(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-row `[N]` KL(teacher || student) between `[N, heads, K]` attention distributions,
    averaged over heads. Keys the teacher gives no mass add nothing; a student probability of
    exactly 0 where the teacher has mass is floored at the smallest float32 normal."""
    s = student.float()
    t = group_heads(teacher.float(), s.shape[1])
    log_s = torch.log(s.clamp_min(torch.finfo(torch.float32).tiny))
    kl = torch.xlogy(t, t) - t * log_s
    return kl.sum(-1).mean(-1)


@dataclass(frozen=True)
class FeatureSpec:
    """One feature term, resolved against the two models: its layer pairs and comparison."""

    name: str
    kind: str  # hidden | attention
    target: str  # hidden | output | map
    loss: str  # mse | cosine | kl
    pairs: tuple[tuple[int, int], ...]  # (student layer, teacher layer)

    def key(self, pair: tuple[int, int]) -> str:
        """The projection's name for one pair (ModuleDict keys may not hold dots)."""
        return f"{self.name.replace('.', '_')}:{pair[0]}:{pair[1]}"


def auto_pairs(student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """Each student layer against the teacher layer at the same relative depth (the last
    against the last)."""
    return tuple(
        (i, max(0, round((i + 1) * teacher_layers / student_layers) - 1))
        for i in range(student_layers)
    )


def resolve_spec(
    name: str,
    kind: str,
    options: dict,
    student_layers: int,
    teacher_layers: int,
) -> FeatureSpec:
    """A term's `options` (already validated by the config) against the models' layer counts."""
    layers = options.get("layers", "auto")
    if layers == "auto":
        pairs = auto_pairs(student_layers, teacher_layers)
    else:
        pairs = tuple((int(i), int(j)) for i, j in layers)
        sides = (("student", student_layers), ("teacher", teacher_layers))
        for pair in pairs:
            for (side, count), layer in zip(sides, pair, strict=True):
                if layer >= count:
                    raise ConfigError(
                        f"objective term {name!r}: options.layers names {side} layer {layer}, "
                        f"but the {side} has {count} layers (0..{count - 1})"
                    )
    if kind == "hidden":
        target = "hidden"
    else:
        target = options.get("target") or "output"
    loss = "kl" if target == "map" else (options.get("loss") or "mse")
    return FeatureSpec(name, kind, target, loss, pairs)


class FeatureProjections(nn.ModuleDict):
    """A learned `Linear(student width, teacher width)` per layer pair whose widths differ.

    Maps compare distributions over keys and need none."""

    def __init__(self, specs: Sequence[FeatureSpec], student_width: int, teacher_width: int):
        super().__init__()
        if student_width == teacher_width:
            return
        for spec in specs:
            if spec.target == "map":
                continue
            for pair in spec.pairs:
                self[spec.key(pair)] = nn.Linear(student_width, teacher_width, bias=False)

    def project(self, spec: FeatureSpec, pair: tuple[int, int], rows: Tensor) -> Tensor:
        key = spec.key(pair)
        if key not in self:
            return rows
        layer = self[key]
        return layer(rows.to(layer.weight.dtype))


def feature_needs(specs: Sequence[FeatureSpec]) -> tuple[Needs, Needs]:
    """(the student's needs, the teacher's needs) of these terms."""

    def needs(side: int) -> Needs:
        def layers(target: str) -> tuple[int, ...]:
            found = {p[side] for s in specs if s.target == target for p in s.pairs}
            return tuple(sorted(found))

        return Needs(layers("hidden"), layers("output"), layers("map"))

    return needs(0), needs(1)


def feature_term(
    spec: FeatureSpec,
    student: Features,
    teacher: Features,
    projections: FeatureProjections | None,
) -> Tensor:
    """The term's sum over rows, averaged over its layer pairs (not yet normalized)."""
    total = None
    for pair in spec.pairs:
        i, j = pair
        if spec.target == "map":
            rows = map_rows(student.maps[i], teacher.maps[j])
        else:
            source = student.hidden if spec.target == "hidden" else student.attention
            target = teacher.hidden if spec.target == "hidden" else teacher.attention
            s = source[i]
            if projections is not None:
                s = projections.project(spec, pair, s)
            rows = hidden_rows(s, target[j], spec.loss)
        value = rows.sum()
        total = value if total is None else total + value
    assert total is not None
    return total / len(spec.pairs)


def feature_loss(
    terms: Sequence,
    specs: dict[str, FeatureSpec],
    student: Features,
    teacher: Features,
    projections: FeatureProjections | None,
    normalizer: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(weighted loss, each term's value) of the step's feature terms (`ActiveTerm`s), each
    divided by `normalizer`; a zero-weight term is computed without gradient and logged."""
    loss = normalizer.new_zeros((), dtype=torch.float32)
    values: dict[str, Tensor] = {}
    for term in terms:
        spec = specs[term.name]
        grad = contextlib.nullcontext() if term.weight > 0 else torch.no_grad()
        with grad:
            value = feature_term(spec, student, teacher, projections) / normalizer
        if term.weight > 0:
            loss = loss + term.weight * value
        values[term.name] = value.detach()
    return loss, values


@dataclass
class FeaturePlan:
    """A run's feature terms, resolved, and their projections (trained with the student)."""

    specs: dict[str, FeatureSpec]  # by term name
    projections: FeatureProjections

    def needs(self, terms: Sequence) -> tuple[Needs, Needs]:
        """(student, teacher) needs of the feature terms among this step's `terms`."""
        return feature_needs([self.specs[t.name] for t in terms if t.name in self.specs])
