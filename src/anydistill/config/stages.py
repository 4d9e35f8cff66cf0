"""The `stages:` section: one run in consecutive stages, each with its own terms, trainable
parameters, steps and learning rate (a converted student's mixer alignment, then end-to-end
distillation; MOHAWK / LoLCATs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from anydistill.config.base import Strict


class StageConfig(Strict):
    """One stage: `steps` optimizer steps on the objective terms named in `terms` (all of them
    when absent), training `trainable` parameters (`all`, or only the new `mixers` of a
    student converted from the teacher) at peak learning rate `lr` (train.lr when absent). The
    optimizer and its schedule start afresh at each stage."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    steps: int = Field(ge=1)
    terms: list[str] | None = Field(None, min_length=1)
    trainable: Literal["all", "mixers"] = "all"
    lr: float | None = Field(None, gt=0.0)
