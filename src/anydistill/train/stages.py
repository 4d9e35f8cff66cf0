"""A run in stages (`stages:`): which stage a step belongs to, and entering one.

Each stage trains its own parameter set (`all`, or only a converted student's `mixers`) on
its own terms at its own learning rate; entering a stage freezes or unfreezes parameters and
builds a fresh optimizer and schedule over the stage's steps. A checkpoint records the stage
its optimizer state belongs to: a resume inside a stage restores that state, and a resume at
a stage boundary starts the next stage's optimizer afresh, exactly as the unbroken run did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from anydistill.config import RunConfig
from anydistill.models.heads import unwrap
from anydistill.train.optim import build_optimizer, build_scheduler


@dataclass(frozen=True)
class Stage:
    name: str
    start: int  # first step (0-based) of the stage
    steps: int
    terms: frozenset[str] | None  # None: every objective term
    trainable: str
    lr: float


def stage_plan(cfg: RunConfig) -> list[Stage]:
    """The run's stages in order; a run without `stages:` is one stage of everything."""
    t = cfg.train
    if not cfg.stages:
        return [Stage("train", 0, t.max_steps, None, "all", t.lr)]
    out, start = [], 0
    for s in cfg.stages:
        terms = frozenset(s.terms) if s.terms else None
        out.append(Stage(s.name, start, s.steps, terms, s.trainable, s.lr or t.lr))
        start += s.steps
    return out


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage optimizer step `step` (0-based) belongs to (the last one past the end)."""
    for stage in stages:
        if step < stage.start + stage.steps:
            return stage
    return stages[-1]


class Stages:
    """The run's stages over its student (`HiddenStates`): remembers which parameters train by
    default (a LoRA student's adapters only), which `trainable: all` means."""

    def __init__(self, cfg: RunConfig, model: torch.nn.Module) -> None:
        self.cfg = cfg
        self.model = model
        self.plan = stage_plan(cfg)
        self.default = {id(p): p.requires_grad for p in model.parameters()}

    def at(self, step: int) -> Stage:
        return stage_at(self.plan, step)

    def enter(self, stage: Stage) -> tuple[torch.optim.Optimizer, Any]:
        """Set the stage's trainable parameters; a fresh optimizer over them and a schedule
        over the stage's steps (warmup and decay within the stage)."""
        t = self.cfg.train
        self._set_trainable(stage)
        optimizer = build_optimizer(self.model, stage.lr, t.weight_decay, t.betas)
        scheduler = build_scheduler(
            optimizer, t.warmup_steps, stage.steps, t.lr_schedule, t.min_lr_ratio
        )
        return optimizer, scheduler

    def _set_trainable(self, stage: Stage) -> None:
        """`all`: the student's own trainable set (a LoRA student's adapters); `mixers`: only
        the converted layers' mixers, in full whatever LoRA froze (they are new weights; the
        feature projections, when any, train in every stage)."""
        params = list(self.model.parameters())
        if stage.trainable == "all":
            for p in params:
                p.requires_grad_(self.default[id(p)])
            return
        from anydistill.models.convert import mixer_parameters

        lm = unwrap(self.model)
        mixers = {id(p) for p in mixer_parameters(lm)}
        in_lm = {id(p) for p in lm.parameters()}
        for p in params:
            p.requires_grad_(id(p) in mixers or (self.default[id(p)] and id(p) not in in_lm))
