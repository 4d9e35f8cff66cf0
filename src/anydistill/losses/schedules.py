"""Per-term weight schedules: a pure function of the optimizer step (no state to checkpoint)."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True, kw_only=True)
class WeightSchedule:
    """A weight that moves from `start` to `end`.

    - `constant`: always `start`.
    - `linear` / `cosine`: `start` during the first `warmup_steps`, then from `start` to `end`
      over the next `steps` steps (linearly, or along a half cosine), then `end` for good.
    """

    kind: str
    start: float
    end: float
    steps: int | None = None  # required for linear/cosine
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"schedule kind must be one of {', '.join(SCHEDULE_KINDS)}, got {self.kind!r}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"schedule warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.kind != "constant" and (self.steps is None or self.steps < 1):
            raise ValueError(f"a {self.kind} schedule needs steps >= 1, got {self.steps}")
        for field in ("start", "end"):
            value = getattr(self, field)
            if not math.isfinite(value):
                raise ValueError(f"schedule {field} must be a finite number, got {value}")

    def value(self, step: int) -> float:
        """The weight at optimizer step `step` (0-based)."""
        if self.kind == "constant" or self.steps is None or step <= self.warmup_steps:
            return float(self.start)
        frac = min(1.0, (step - self.warmup_steps) / self.steps)
        if self.kind == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return float(self.start + (self.end - self.start) * frac)
