"""The objective: a weighted sum of named terms, each with its own schedule.

`TermSpec` is plain data (the config layer builds it from YAML). `Objective` validates the
terms, and for every optimizer step hands the loss engine a list of `ActiveTerm`s: the term's
current weight (weight x schedule value) and, for `taid`, the current interpolation t.

Temperature convention (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
for a divergence term with temperature T, both student and teacher logits are divided by T
before log-softmax and the per-token divergence is multiplied by T**2, so its gradient scale
stays comparable across temperatures. `ce` is hard-label cross-entropy on the student's
logits at T = 1 (labels equal to -100 are ignored).

`contrastive` (Ko et al. 2025, "DistiLLM-2: A Contrastive Approach Boosts the Distillation of
LLMs") is not a divergence of its own: on a batch that pairs a teacher response and a student
response per prompt it is skew KL on the teacher-response tokens plus skew reverse KL on the
student-response tokens (both with the term's `alpha`). `split_contrastive` turns it into the
two engine-ready term lists; the trainer's step runs the engine once per half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from anydistill.losses import registry
from anydistill.losses.schedules import WeightSchedule
from anydistill.losses.taid import TaidSchedule

# The built-in cross-tokenizer kinds, for callers that still import this name; the registry
# (family `cross`) is what is read here and is complete.
CROSS_TERM_KINDS = registry.names("cross")


@dataclass
class TermSpec:
    """One term of the objective, as written in the recipe."""

    kind: str  # a name in anydistill.losses.registry
    name: str | None = None  # default: kind; must be unique within an objective
    weight: float = 1.0
    temperature: float = 1.0  # must stay 1.0 for ce
    beta: float = 0.5  # jsd
    alpha: float = 0.1  # skl / srkl / contrastive
    schedule: dict[str, Any] | None = None  # WeightSchedule kwargs; multiplies `weight`
    taid: dict[str, Any] | None = None  # TaidSchedule kwargs except total_steps
    options: dict[str, Any] | None = None  # a cross-tokenizer term's own keyword options


@dataclass(frozen=True)
class ActiveTerm:
    """A term's settings at one step, as the loss engine consumes them."""

    name: str
    kind: str
    weight: float
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    taid_t: float = 1.0
    options: dict[str, Any] | None = None


def _fail(term: str, field: str, what: str) -> ValueError:
    return ValueError(f"objective term {term!r}: `{field}` {what}")


def _check_spec(spec: TermSpec, name: str) -> None:
    kind = registry.TERMS.get(spec.kind)
    if kind is None:
        raise _fail(name, "kind", f"is {spec.kind!r}; choose one of {', '.join(registry.names())}")
    if not (math.isfinite(spec.weight) and spec.weight >= 0.0):
        raise _fail(name, "weight", f"must be a finite number >= 0, got {spec.weight}")
    if not (math.isfinite(spec.temperature) and spec.temperature > 0.0):
        raise _fail(name, "temperature", f"must be > 0, got {spec.temperature}")
    if "temperature" not in kind.params and spec.temperature != 1.0:
        raise _fail(name, "temperature", f"must be 1.0: {spec.kind} takes no temperature")
    if not 0.0 <= spec.beta <= 1.0:
        raise _fail(name, "beta", f"must be in [0, 1], got {spec.beta}")
    if not 0.0 <= spec.alpha <= 1.0:
        raise _fail(name, "alpha", f"must be in [0, 1], got {spec.alpha}")
    if spec.taid is not None and "taid" not in kind.params:
        raise _fail(name, "taid", f"only applies to a taid term, not {spec.kind}")
    if spec.options and kind.family not in ("cross", "feature"):
        raise _fail(
            name, "options", f"only applies to cross-tokenizer and feature terms, not {spec.kind}"
        )


def _build_schedule(spec: TermSpec, name: str, total_steps: int) -> WeightSchedule | None:
    if spec.schedule is None:
        return None
    kwargs = dict(spec.schedule)
    # Unless told otherwise a ramp spans the whole run after its warmup.
    kwargs.setdefault("steps", max(1, total_steps - int(kwargs.get("warmup_steps", 0))))
    try:
        return WeightSchedule(**kwargs)
    except (TypeError, ValueError) as err:
        raise _fail(name, "schedule", f"is invalid: {err}") from None


def _build_taid(spec: TermSpec, name: str, total_steps: int) -> TaidSchedule | None:
    if "taid" not in registry.get(spec.kind).params:
        return None
    kwargs = dict(spec.taid or {})
    if "total_steps" in kwargs:
        raise _fail(name, "taid", "must not set total_steps; the run's max_steps is used")
    try:
        return TaidSchedule(total_steps=total_steps, **kwargs)
    except (TypeError, ValueError) as err:
        raise _fail(name, "taid", f"is invalid: {err}") from None


class Objective:
    """A validated list of terms plus their step-dependent state (TAID's t)."""

    def __init__(self, terms: list[TermSpec], total_steps: int) -> None:
        """Raise ValueError with one sentence naming the term and field on bad input."""
        if not terms:
            raise ValueError("the objective needs at least one term")
        if total_steps < 1:
            raise ValueError(f"objective total_steps must be >= 1, got {total_steps}")
        self.specs: list[TermSpec] = list(terms)
        self.total_steps = int(total_steps)
        self.names: list[str] = []
        self._schedules: dict[str, WeightSchedule | None] = {}
        self._taid: dict[str, TaidSchedule] = {}
        for spec in self.specs:
            name = spec.name or spec.kind
            if name in self.names:
                raise _fail(name, "name", "is used twice; give each repeated kind its own name")
            _check_spec(spec, name)
            self.names.append(name)
            self._schedules[name] = _build_schedule(spec, name, self.total_steps)
            taid = _build_taid(spec, name, self.total_steps)
            if taid is not None:
                self._taid[name] = taid

    def active_terms(self, step: int) -> list[ActiveTerm]:
        """The terms' settings for optimizer step `step` (0-based)."""
        out = []
        for name, spec in zip(self.names, self.specs, strict=True):
            schedule = self._schedules[name]
            factor = 1.0 if schedule is None else schedule.value(step)
            taid = self._taid.get(name)
            out.append(
                ActiveTerm(
                    name=name,
                    kind=spec.kind,
                    weight=float(spec.weight) * factor,
                    temperature=float(spec.temperature),
                    beta=float(spec.beta),
                    alpha=float(spec.alpha),
                    taid_t=1.0 if taid is None else taid.value,
                    options=spec.options,
                )
            )
        return out

    def needs_teacher(self) -> bool:
        """False iff no term reads the teacher (every term is hard-label cross-entropy)."""
        return any(registry.needs_teacher(spec.kind) for spec in self.specs)

    def after_step(self, term_losses: dict[str, float]) -> None:
        """Advance TAID schedules with the step's (unweighted, per-token) TAID term values."""
        for name, schedule in self._taid.items():
            if name not in term_losses:
                raise ValueError(f"after_step needs the value of TAID term {name!r}")
            schedule.update(float(term_losses[name]))

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (TAID only; weight schedules are functions of the step)."""
        return {"taid": {name: s.state_dict() for name, s in self._taid.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; the TAID term names must match this objective's."""
        saved = state.get("taid", {})
        if set(saved) != set(self._taid):
            raise ValueError(
                f"checkpoint has TAID terms {sorted(saved)} but the objective has "
                f"{sorted(self._taid)}; resume with the same objective"
            )
        for name, schedule in self._taid.items():
            schedule.load_state_dict(saved[name])


def split_contrastive(
    terms: list[ActiveTerm],
) -> tuple[list[ActiveTerm], list[ActiveTerm]] | None:
    """(terms for teacher-response rows, terms for student-response rows), or None when no
    term is `contrastive`. Each contrastive term keeps its name: skew KL on the teacher side,
    skew reverse KL on the student side; every other term appears unchanged in both lists, so
    it covers all rows."""
    if not any(t.kind == "contrastive" for t in terms):
        return None

    def side(kind: str) -> list[ActiveTerm]:
        return [replace(t, kind=kind) if t.kind == "contrastive" else t for t in terms]

    return side("skl"), side("srkl")
