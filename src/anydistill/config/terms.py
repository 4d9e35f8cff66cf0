"""The `objective:` section: term kinds, their options, schedules and the term list."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from anydistill.config.base import Strict

DIVERGENCE_KINDS = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl", "taid")
ALM_DIVERGENCES = ("binary_kl", "binary_reverse_kl")  # anydistill.losses.cross.alm
CROSS_KINDS = ("alm", "uld", "gold_hybrid", "mined")
# Softmax temperatures outside this range underflow to a zero loss or overflow (ALM's tau is
# a binarisation scale, default 100, and gets a wider range).
TEMPERATURE_RANGE = (0.01, 100.0)
ALM_TAU_RANGE = (0.01, 1.0e4)
TERM_KINDS = (*DIVERGENCE_KINDS, "contrastive", "ce", *CROSS_KINDS)
SOURCE_KINDS = (
    "dataset",
    "teacher_generated",
    "student_generated",
    "mixture",
    "adaptive_replay",
    "paired",
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


# Cross-tokenizer terms (anydistill.losses.cross) and the `options:` each accepts; beta and
# temperature are the TermConfig fields. ALM's temperature is its binarisation tau.
CROSS_OPTION_MODELS: dict[str, type[Strict]] = {
    "alm": AlmOptions,
    "uld": NoOptions,
    "gold_hybrid": GoldHybridOptions,
    "mined": NoOptions,
}
CROSS_OPTIONS: dict[str, tuple[str, ...]] = {
    kind: tuple(model.model_fields) for kind, model in CROSS_OPTION_MODELS.items()
}
assert tuple(CROSS_OPTIONS) == CROSS_KINDS


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
    kind: Literal[
        "fkl",
        "rkl",
        "jsd",
        "tvd",
        "skl",
        "srkl",
        "taid",
        "contrastive",
        "ce",
        "alm",
        "uld",
        "gold_hybrid",
        "mined",
    ]
    name: str | None = None
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)  # alm: the binarisation tau, default 100
    beta: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(0.1, ge=0.0, le=1.0)
    schedule: ScheduleConfig | None = None
    taid: TaidConfig | None = None
    options: dict[str, Any] | None = None  # cross-tokenizer terms only (CROSS_OPTIONS)

    @model_validator(mode="before")
    @classmethod
    def _alm_tau(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "alm" and "temperature" not in data:
            data = {**data, "temperature": 100.0}  # the ALM paper's tau
        return data

    @model_validator(mode="after")
    def _ce_temperature(self) -> TermConfig:
        if self.kind == "ce" and self.temperature != 1.0:
            raise ValueError("a `ce` term is on hard labels and takes no temperature")
        low, high = ALM_TAU_RANGE if self.kind == "alm" else TEMPERATURE_RANGE
        if not low <= self.temperature <= high:
            what = "ALM's tau" if self.kind == "alm" else "a softmax temperature"
            raise ValueError(
                f"temperature {self.temperature} is outside [{low:g}, {high:g}], where {what} "
                "keeps the loss finite and informative"
            )
        if self.taid is not None and self.kind != "taid":
            raise ValueError(f"`taid` only applies to a taid term, not {self.kind}")
        if self.options and self.kind not in CROSS_OPTIONS:
            raise ValueError(f"`options` only applies to cross-tokenizer terms, not {self.kind}")
        if self.options:
            self._check_options(CROSS_OPTION_MODELS[self.kind])
        return self

    def _check_options(self, model: type[Strict]) -> None:
        try:
            model.model_validate(self.options)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                takes = ", ".join(CROSS_OPTIONS[self.kind]) or "none"
                raise ValueError(
                    f"{self.kind} does not take option `{key}`; it takes: {takes}"
                ) from None
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
        return any(t.kind in CROSS_KINDS for t in self.terms)

    @model_validator(mode="after")
    def _unique_names(self) -> ObjectiveConfig:
        names = [t.name or t.kind for t in self.terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"term names must be unique; give `name:` to repeated {dupes}")
        return self
