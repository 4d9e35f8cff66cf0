"""The `objective:` section: term kinds, their options, schedules and the term list.

Which term kinds exist, which parameters each reads and which engines run it is the term
registry (`kinds.py`; `anydistill.losses.registry` on the loss side), read when a recipe is
validated, so a kind registered after this module was imported is accepted too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from anydistill.config import kinds
from anydistill.config.base import Strict
from anydistill.config.kinds import TermKind

ALM_DIVERGENCES = ("binary_kl", "binary_reverse_kl")  # anydistill.losses.cross.alm
# Softmax temperatures outside this range underflow to a zero loss or overflow (ALM's tau is
# a binarisation scale, default 100, and gets a wider range).
TEMPERATURE_RANGE = (0.01, 100.0)
ALM_TAU_RANGE = (0.01, 1.0e4)
SOURCE_KINDS = (
    "dataset",
    "teacher_generated",
    "student_generated",
    "mixture",
    "adaptive_replay",
    "paired",
    "paired_traces",
)


class AlmOptions(Strict):
    divergence: Literal["binary_kl", "binary_reverse_kl"] = "binary_kl"
    eps: float = Field(1e-6, gt=0.0)
    debias: bool = False
    space_threshold: float = Field(0.1, ge=0.0)


class GoldHybridOptions(Strict):
    matched_weight: float | None = Field(None, ge=0.0)
    unmatched_weight: float | None = Field(None, ge=0.0)


class NoOptions(Strict):
    pass


# `auto`: each student layer against the teacher layer at the same relative depth.
LayerPairs = Literal["auto"] | list[tuple[int, int]]


class HiddenOptions(Strict):
    """`hidden`: student layer i against teacher layer j, per `[i, j]` pair."""

    layers: LayerPairs = "auto"
    loss: Literal["mse", "cosine"] = "mse"

    @field_validator("layers")
    @classmethod
    def _pairs(cls, layers: LayerPairs) -> LayerPairs:
        if isinstance(layers, list):
            if not layers:
                raise ValueError("give at least one [student_layer, teacher_layer] pair or auto")
            if any(i < 0 or j < 0 for i, j in layers):
                raise ValueError("layers count from 0; negative layers are not accepted")
            if len(set(layers)) != len(layers):
                raise ValueError("each [student_layer, teacher_layer] pair may appear once")
        return layers


class AttentionOptions(HiddenOptions):
    """`attention`: attention outputs (`target: output`, MSE or cosine) or MiniLM attention
    maps (`target: map`, KL between the teacher's and the student's attention
    distributions of matched heads)."""

    target: Literal["output", "map"] = "output"
    loss: Literal["mse", "cosine"] | None = None  # output only; default mse

    @model_validator(mode="after")
    def _map_loss(self) -> AttentionOptions:
        if self.target == "map" and self.loss is not None:
            raise ValueError("attention maps are compared by KL; drop `loss` for target map")
        return self


# The feature terms' `options:` (anydistill.losses.features).
FEATURE_OPTION_MODELS: dict[str, type[Strict]] = {
    "hidden": HiddenOptions,
    "attention": AttentionOptions,
}


# The value checks of the cross-tokenizer terms' `options:` (anydistill.losses.cross); beta
# and temperature are the TermConfig fields. ALM's temperature is its binarisation tau. Which
# option names a kind takes is the registry's (`TermKind.options`; tests keep both in step).
CROSS_OPTION_MODELS: dict[str, type[Strict]] = {
    "alm": AlmOptions,
    "uld": NoOptions,
    "gold_hybrid": GoldHybridOptions,
    "mined": NoOptions,
}
CROSS_OPTIONS: dict[str, tuple[str, ...]] = {
    kind: tuple(model.model_fields) for kind, model in CROSS_OPTION_MODELS.items()
}


class ScheduleConfig(Strict):
    """A term weight's schedule (anydistill.losses.schedules.WeightSchedule)."""

    kind: Literal["constant", "linear", "cosine"]
    start: float
    end: float
    steps: int | None = Field(None, ge=1)  # default: the rest of the run after warmup
    warmup_steps: int = Field(0, ge=0)


class TaidConfig(Strict):
    """TAID's interpolation schedule (anydistill.losses.taid.TaidSchedule)."""

    t_start: float = Field(0.4, ge=0.0, le=1.0)
    t_end: float = Field(1.0, ge=0.0, le=1.0)
    alpha: float = Field(5e-4, ge=0.0, le=1.0)
    beta: float = Field(0.99, ge=0.0, lt=1.0)
    adaptive: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> TaidConfig:
        if self.t_start > self.t_end:
            raise ValueError(f"t_start ({self.t_start}) must not exceed t_end ({self.t_end})")
        return self


class TermConfig(Strict):
    kind: str  # a registered term kind (anydistill.losses.registry)
    name: str | None = None
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)  # alm: the binarisation tau, default 100
    beta: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(0.1, ge=0.0, le=1.0)  # redi: default 0.8
    schedule: ScheduleConfig | None = None
    taid: TaidConfig | None = None
    options: dict[str, Any] | None = None  # cross-tokenizer and feature terms only

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        known = kinds.names()
        if kind not in known:
            raise ValueError(f"unknown term kind {kind!r}; choose one of {', '.join(known)}")
        return kind

    @model_validator(mode="before")
    @classmethod
    def _alm_tau(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "alm" and "temperature" not in data:
            data = {**data, "temperature": 100.0}  # the ALM paper's tau
        if isinstance(data, dict) and data.get("kind") == "redi" and "alpha" not in data:
            data = {**data, "alpha": 0.8}  # REDI's weight on the incorrect trace (the paper's)
        return data

    @model_validator(mode="after")
    def _ce_temperature(self) -> TermConfig:
        kind = kinds.get(self.kind)
        if "temperature" not in kind.params and self.temperature != 1.0:
            raise ValueError(f"a `{self.kind}` term takes no temperature ({kind.summary})")
        low, high = ALM_TAU_RANGE if self.kind == "alm" else TEMPERATURE_RANGE
        if not low <= self.temperature <= high:
            what = "ALM's tau" if self.kind == "alm" else "a softmax temperature"
            raise ValueError(
                f"temperature {self.temperature} is outside [{low:g}, {high:g}], where {what} "
                "keeps the loss finite and informative"
            )
        if self.taid is not None and "taid" not in kind.params:
            raise ValueError(f"`taid` only applies to a taid term, not {self.kind}")
        if self.options and kind.family not in ("cross", "feature"):
            raise ValueError(
                f"`options` only applies to cross-tokenizer and feature terms, not {self.kind}"
            )
        if self.options:
            self._check_options(kind)
        return self

    def _check_options(self, kind: TermKind) -> None:
        unknown = [key for key in self.options or {} if key not in kind.options]
        if unknown:
            takes = ", ".join(kind.options) or "none"
            raise ValueError(f"{self.kind} does not take option `{unknown[0]}`; it takes: {takes}")
        model = CROSS_OPTION_MODELS.get(self.kind) or FEATURE_OPTION_MODELS.get(self.kind)
        if model is None:  # a kind with no value checks of its own
            return
        try:
            model.model_validate(self.options)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"options.{key}: {msg} (got {first.get('input')!r})") from None


class TokenSelectionConfig(Strict):
    """AdaSPEC: keep the `keep` share of tokens where `reference` (a drafter already distilled
    from the target: run dir, model dir or hub id) beats the drafter most."""

    reference: str
    keep: float = Field(0.4, gt=0.0, le=1.0)


class ObjectiveConfig(Strict):
    terms: list[TermConfig] = Field(min_length=1)
    token_selection: TokenSelectionConfig | None = None
    engine: Literal["naive", "torch", "triton"] = "torch"
    # Rows per logits block; None sizes blocks by the vocabulary (engine.auto_chunk_size).
    chunk_size: int | None = Field(None, ge=1)

    def cross_tokenizer(self) -> bool:
        """True when a term compares aligned chunks (the two tokenizers may then differ)."""
        return any(kinds.get(t.kind).family == "cross" for t in self.terms)

    @model_validator(mode="after")
    def _unique_names(self) -> ObjectiveConfig:
        names = [t.name or t.kind for t in self.terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"term names must be unique; give `name:` to repeated {dupes}")
        for term in self.terms:
            engines = kinds.get(term.kind).engines
            if engines and self.engine not in engines:  # () : it runs outside the engine
                raise ValueError(
                    f"engine {self.engine} cannot compute a `{term.kind}` term; set "
                    f"objective.engine to one of {', '.join(engines)}"
                )
        return self
