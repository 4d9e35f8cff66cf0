"""Decide what a pruned student keeps: channels, neurons, heads, KV groups and layers.

Nothing here touches weights: the plan is made (and can be shown with `describe()`) before
any tensor moves, and every impossible target is refused with one sentence naming the field.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

from anydistill.errors import ConfigError
from anydistill.models.from_teacher import _PER_LAYER_KEYS
from anydistill.models.prune import counting
from anydistill.models.prune.families import Shape, family_of, shape_of
from anydistill.models.prune.importance import Importance

DEPTH_METRICS = ("cosine", "loss")
_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
)


@dataclass
class PruneTarget:
    """The student's shape: any subset of the sizes, and/or a total parameter budget.

    Unset sizes stay as in the teacher, except that `params` shrinks the unset ones of
    hidden_size and intermediate_size (see `plan_pruning`). `params` is a total parameter
    count (e.g. 4e9; tied embeddings count once). `depth_metric` picks the block
    score used to drop layers: "cosine" (1 - cos(h_in, h_out)) or "loss" (needs importances
    computed with block_loss=True).
    """

    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    num_hidden_layers: int | None = None
    params: float | None = None
    depth_metric: Literal["cosine", "loss"] = "cosine"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PrunePlan:
    """Teacher indices kept per dimension; per-layer lists follow `layers` (kept, in order)."""

    model_type: str
    teacher: Shape
    student: Shape
    layers: list[int]
    channels: list[int]
    neurons: list[list[int]]
    heads: list[list[int]]  # kept query heads, grouped by kept KV group
    kv_heads: list[list[int]]
    params_before: int
    params_after: int
    depth_metric: str = "cosine"
    target: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["teacher"], out["student"] = self.teacher.to_dict(), self.student.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunePlan:
        data = dict(data)
        data["teacher"], data["student"] = Shape(**data["teacher"]), Shape(**data["student"])
        return cls(**data)

    def describe(self) -> str:
        """Teacher -> student shape, parameters before/after and what is dropped."""
        t, s = self.teacher, self.student
        kept = self.params_after / self.params_before
        lines = [
            f"prune {self.model_type}: {self.params_before:,} -> {self.params_after:,} "
            f"parameters ({kept:.1%} kept)"
        ]
        dropped_layers = [i for i in range(t.num_hidden_layers) if i not in self.layers]
        notes = {
            "hidden_size": f"drops {t.hidden_size - s.hidden_size} embedding channels",
            "intermediate_size": (
                f"drops {t.intermediate_size - s.intermediate_size} MLP neurons per layer"
            ),
            "num_attention_heads": (
                f"keeps {s.num_attention_heads // s.num_key_value_heads} of "
                f"{t.num_attention_heads // t.num_key_value_heads} query heads per KV group"
                if s.num_attention_heads // s.num_key_value_heads
                != t.num_attention_heads // t.num_key_value_heads
                else "the dropped KV groups' query heads go with them"
            ),
            "num_key_value_heads": (
                f"drops {t.num_key_value_heads - s.num_key_value_heads} KV groups with their "
                "query heads"
            ),
            "num_hidden_layers": (
                f"drops layers {dropped_layers} (lowest {self.depth_metric} block importance)"
            ),
        }
        for name in _SIZES:
            before, after = getattr(t, name), getattr(s, name)
            note = notes[name] if before != after else "unchanged"
            lines.append(f"  {name:<20} {before:>7} -> {after:<7} {note}")
        lines.append(f"  head_dim {t.head_dim} and vocab_size {t.vocab_size} are unchanged")
        return "\n".join(lines)


def _top(scores: Tensor, k: int) -> list[int]:
    """The k highest-scoring indices in their original order (ties: lower index wins)."""
    order = torch.sort(-scores.float(), stable=True).indices[:k]
    return sorted(order.tolist())


def _check_importance(imp: Importance, t: Shape) -> None:
    expected = {
        "mlp": (t.num_hidden_layers, t.intermediate_size),
        "heads": (t.num_hidden_layers, t.num_attention_heads),
        "channels": (t.hidden_size,),
        "blocks": (t.num_hidden_layers,),
    }
    if imp.block_loss is not None:
        expected["block_loss"] = (t.num_hidden_layers,)
    for name, want in expected.items():
        got = tuple(getattr(imp, name).shape)
        if got != want:
            raise ConfigError(
                f"importance.{name}: shape {got} does not fit this model ({want}); recompute "
                "the importances for this teacher"
            )


def _check_sizes(target: PruneTarget, t: Shape) -> None:
    for name in _SIZES:
        value = getattr(target, name)
        if value is None:
            continue
        top = getattr(t, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ConfigError(
                f"target.{name}: {value!r} is not a whole number from 1 to the teacher's {top}; "
                "give one in that range"
            )
    params = target.params
    if params is not None and (isinstance(params, bool) or not isinstance(params, (int, float))):
        raise ConfigError(f"target.params: {params!r} is not a number; give a parameter count")
    if target.depth_metric not in DEPTH_METRICS:
        raise ConfigError(
            f"target.depth_metric: {target.depth_metric!r} is unknown; use one of "
            f"{', '.join(DEPTH_METRICS)}"
        )


def _head_counts(target: PruneTarget, t: Shape) -> tuple[int, int]:
    """(query heads, KV heads) of the student; query heads stay equal per KV group."""
    heads, kv = t.num_attention_heads, t.num_key_value_heads
    group = heads // kv
    new_heads, new_kv = target.num_attention_heads, target.num_key_value_heads
    if new_kv is None:
        # Multi-head attention stays multi-head; GQA keeps its KV heads.
        new_kv = new_heads if new_heads is not None and kv == heads else kv
    if new_heads is None:
        new_heads = new_kv * group  # dropping KV groups drops their query heads
    if new_heads % new_kv:
        raise ConfigError(
            f"target.num_attention_heads: {new_heads} is not a multiple of "
            f"num_key_value_heads ({new_kv}); give a multiple of it"
        )
    if new_heads // new_kv > group:
        raise ConfigError(
            f"target.num_attention_heads: {new_heads} heads over {new_kv} KV heads needs "
            f"{new_heads // new_kv} query heads per group but the teacher has {group}; give "
            f"at most {new_kv * group}"
        )
    return new_heads, new_kv


def _step(n: int) -> int:
    """Granularity of a searched size: 64 for big models, 8 for small, 1 for toys."""
    return 64 if n >= 1024 else 8 if n >= 64 else 1


def _sizes(n: int, multiple: int = 1) -> list[int]:
    """The grid of sizes up to n: multiples of lcm(step, multiple), plus n when it fits."""
    step = math.lcm(_step(n), multiple)
    out = list(range(step, n + 1, step))
    return out if n in out or n % multiple else [*out, n]


def _scaled(n: int, num: int, den: int) -> int:
    """n * num / den rounded down to n's step (at least one step); n itself at ratio 1."""
    if num == den:
        return n
    step = _step(n)
    return max(step, n * num // den // step * step)


def _fit_params(
    target: PruneTarget, base: Shape, weights: list, layers: list[int], teacher: Shape
) -> Shape:
    """The largest shape within `target.params`, shrinking the widths the target left unset.

    Rule: hidden_size and intermediate_size (those not set) shrink by one common ratio
    h / hidden_size, for every hidden size h on a grid: multiples of 64 when the teacher's
    size is >= 1024, of 8 when >= 64, else of 1, that are also multiples of the student's
    num_attention_heads (some families' config validation demands it), plus the teacher's
    size. intermediate_size follows as intermediate_size * ratio rounded down to its own
    grid. Heads and layers stay as the target says. The largest h whose parameter count is
    <= params wins: the shape closest to the budget from below (the count is monotone in h).
    """
    free_h, free_i = target.hidden_size is None, target.intermediate_size is None
    if not free_h and not free_i:
        return base  # nothing to shrink; the caller checks the budget
    if free_h:
        candidates = [
            (h, _scaled(teacher.intermediate_size, h, teacher.hidden_size) if free_i else None)
            for h in _sizes(teacher.hidden_size, base.num_attention_heads)
        ]
        if not candidates:
            raise ConfigError(
                f"target.params: no hidden_size up to {teacher.hidden_size} is a multiple of "
                f"num_attention_heads ({base.num_attention_heads}); set hidden_size or the heads"
            )
    else:
        candidates = [(None, i) for i in _sizes(teacher.intermediate_size)]
    shapes = [
        replace(
            base, hidden_size=h or base.hidden_size, intermediate_size=i or base.intermediate_size
        )
        for h, i in candidates
    ]
    for shape in reversed(shapes):
        if counting.count(weights, shape, layers) <= target.params:
            return shape
    smallest = counting.count(weights, shapes[0], layers)
    embeddings = counting.embedding_count(weights, shapes[0])
    raise ConfigError(
        f"target.params: {target.params:,.0f} is below the smallest reachable size "
        f"({smallest:,} parameters, {embeddings:,} of them embeddings); raise it or also "
        "lower num_hidden_layers or the head counts"
    )


def plan_pruning(
    model_or_config: PreTrainedModel | PretrainedConfig,
    importance: Importance,
    target: PruneTarget,
) -> PrunePlan:
    """Pick the kept indices of every dimension from the importances.

    Channels, neurons (per layer) and layers: top-k by importance, kept in original order.
    Heads: with KV groups of g query heads, the student keeps `num_key_value_heads` whole
    groups (group score = sum of its query heads' scores) and, inside each, the same number
    of query heads, chosen per group by importance; head_dim never changes. Layers: top-k
    by `blocks` ("cosine") or `block_loss` ("loss"). With `params`, the unset widths shrink
    by one common ratio to the largest shape within the budget (see `_fit_params`).
    """
    if isinstance(model_or_config, PreTrainedModel):
        config, model = model_or_config.config, model_or_config
    else:
        config, model = model_or_config, None
    family = family_of(config)
    teacher = shape_of(config)
    weights = counting.layout(model or counting.meta_model(config), family)
    _check_importance(importance, teacher)
    _check_sizes(target, teacher)
    if all(getattr(target, n) is None for n in _SIZES) and target.params is None:
        raise ConfigError(f"target: nothing to prune; set params or one of {', '.join(_SIZES)}")
    before = counting.count(weights, teacher)
    if target.params is not None and not 0 < target.params <= before:
        raise ConfigError(
            f"target.params: {target.params:,.0f} is not between 1 and the teacher's "
            f"{before:,} parameters; give a budget in that range"
        )

    depth_scores = importance.blocks
    if target.depth_metric == "loss":
        if importance.block_loss is None:
            raise ConfigError(
                "target.depth_metric: 'loss' needs importances computed with block_loss=True; "
                "recompute them or use 'cosine'"
            )
        depth_scores = importance.block_loss
    layers = _top(depth_scores, target.num_hidden_layers or teacher.num_hidden_layers)

    heads, kv = _head_counts(target, teacher)
    student = Shape(
        hidden_size=target.hidden_size or teacher.hidden_size,
        intermediate_size=target.intermediate_size or teacher.intermediate_size,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        num_hidden_layers=len(layers),
        head_dim=teacher.head_dim,
        vocab_size=teacher.vocab_size,
    )
    if target.params is not None:
        student = _fit_params(target, student, weights, layers, teacher)
    after = counting.count(weights, student, layers)
    if target.params is not None and after > target.params:
        raise ConfigError(
            f"target.params: the sizes given make {after:,} parameters, over the budget of "
            f"{target.params:,.0f}; raise params or leave hidden_size/intermediate_size unset"
        )

    group = teacher.num_attention_heads // teacher.num_key_value_heads
    new_group = student.num_attention_heads // student.num_key_value_heads
    all_heads, all_kv, all_neurons = [], [], []
    for layer in layers:
        scores = importance.heads[layer].view(teacher.num_key_value_heads, group)
        groups = _top(scores.sum(1), student.num_key_value_heads)
        all_kv.append(groups)
        all_heads.append([g * group + h for g in groups for h in _top(scores[g], new_group)])
        all_neurons.append(_top(importance.mlp[layer], student.intermediate_size))
    plan = PrunePlan(
        model_type=family.model_type,
        teacher=teacher,
        student=student,
        layers=layers,
        channels=_top(importance.channels, student.hidden_size),
        neurons=all_neurons,
        heads=all_heads,
        kv_heads=all_kv,
        params_before=before,
        params_after=after,
        depth_metric=target.depth_metric,
        target=target.to_dict(),
    )
    _check_config(student_config(config, plan), plan)
    return plan


def student_config(config: PretrainedConfig, plan: PrunePlan) -> PretrainedConfig:
    """The teacher's config with the student's sizes, an explicit head_dim (families derive
    it from hidden_size // heads otherwise) and per-layer lists cut to the kept layers."""
    new = copy.deepcopy(config)
    for name, value in plan.student.to_dict().items():
        setattr(new, name, value)
    n = plan.teacher.num_hidden_layers
    for key in _PER_LAYER_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == n:
            setattr(new, key, [value[i] for i in plan.layers])
    return new


def _check_config(config: PretrainedConfig, plan: PrunePlan) -> None:
    """Round-trip the student config so the family's own validation runs before any weight
    moves (Phi-3 longrope factors, for one, are sized by hidden_size // heads)."""
    try:
        type(config).from_dict(config.to_dict())
    except Exception as err:  # each transformers version raises its own validation error
        hidden, heads = plan.student.hidden_size, plan.student.num_attention_heads
        if hidden % heads:  # llama/gemma2/gemma3 configs of transformers 5 demand it
            raise ConfigError(
                f"target.hidden_size: {hidden} is not a multiple of num_attention_heads "
                f"({heads}), which {plan.model_type} configs require; give a multiple of it"
            ) from None
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise ConfigError(
            f"target: the pruned {plan.model_type} config is not valid ({reason}); choose "
            "another shape"
        ) from None
