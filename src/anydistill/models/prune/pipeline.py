"""Importance, plan and slicing in one call."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedModel

from anydistill.models.prune.importance import Batch, Importance, compute_importance
from anydistill.models.prune.plan import PrunePlan, PruneTarget, plan_pruning
from anydistill.models.prune.slicing import apply_plan


def prune_model(
    model: PreTrainedModel,
    batches: Iterable[Batch],
    target: PruneTarget,
    *,
    block_loss: bool = False,
    progress: bool = False,
) -> tuple[PreTrainedModel, PrunePlan, Importance]:
    """Score `model` on the calibration `batches`, plan `target` and build the student.

    Callers that show the plan before weights move call the three steps themselves.
    """
    importance = compute_importance(model, batches, block_loss=block_loss, progress=progress)
    plan = plan_pruning(model, importance, target)
    return apply_plan(model, plan), plan, importance
