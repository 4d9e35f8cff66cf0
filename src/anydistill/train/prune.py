"""Minitron pruning from a recipe: `student.from_teacher.prune` in a run, and `anydistill prune`.

Importances come from the first `calibration` sequences of the recipe's training data; a
resumed run slices from the plan its start saved, without scoring the teacher again. The plan
is printed before any weight moves; the plan and the importances are kept beside the run
(`pruned/`) or the pruned model (`--out`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from anydistill.config import PruneConfig, RunConfig
from anydistill.data.collate import collate
from anydistill.errors import ConfigError
from anydistill.models.prune import (
    IMPORTANCE_FILE,
    PLAN_FILE,
    Importance,
    PrunePlan,
    PruneTarget,
    apply_plan,
    compute_importance,
    plan_pruning,
)


def calibration_batches(
    examples: list[Any], count: int, batch_size: int, pad_id: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` training sequences as (input_ids, attention_mask) batches."""
    chosen = list(examples[:count])
    if not chosen:
        raise ConfigError("student.from_teacher.prune: the training data holds no sequences")
    out = []
    for i in range(0, len(chosen), batch_size):
        batch = collate(chosen[i : i + batch_size], pad_id)
        out.append((batch["input_ids"].to(device), batch["attention_mask"].to(device)))
    return out


def target_of(prune: PruneConfig) -> PruneTarget:
    sizes = prune.model_dump(exclude={"calibration", "batch_size"})
    return PruneTarget(**sizes)


def pruned_student(
    teacher: PreTrainedModel,
    prune: PruneConfig,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    say: Callable[[str], None] | None = None,
    progress: bool = False,
) -> tuple[PreTrainedModel, PrunePlan, Importance]:
    """Score the teacher, plan the cut (told to `say` before any weight moves), slice."""
    importance = compute_importance(
        teacher, batches, block_loss=prune.depth_metric == "loss", progress=progress
    )
    plan = plan_pruning(teacher, importance, target_of(prune))
    if say is not None:
        say(plan.describe())
    return apply_plan(teacher, plan).to(torch.float32), plan, importance


def saved_plan(folder: Path, prune: PruneConfig, teacher: PreTrainedModel) -> PrunePlan | None:
    """The plan a resumed run made at its start (`pruned/prune_plan.json`), when it is for
    this target and this teacher's shape: a resume then slices the same student without a
    second calibration pass. None when there is none or it does not fit."""
    from anydistill.models.prune.families import shape_of

    path = folder / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = PrunePlan.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # damaged: computed again and rewritten
    same_target = plan.target == target_of(prune).to_dict()
    return plan if same_target and plan.teacher == shape_of(teacher.config) else None


def write_records(folder: Path, plan: PrunePlan, importance: Importance) -> None:
    """The plan and the importances as JSON, each written whole (temporary name, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((PLAN_FILE, plan.to_dict()), (IMPORTANCE_FILE, importance.to_dict())):
        tmp = folder / f"{name}.{os.getpid()}.tmp"  # ranks of one run may write it together
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(folder / name)


def prune_to_dir(cfg: RunConfig, out: Path, progress: bool = True) -> Path:
    """`anydistill prune RECIPE --out DIR`: the recipe's teacher, pruned as its
    `student.from_teacher.prune` says, saved where `from_pretrained` loads it."""
    from anydistill.models.prune.save import check_target, save_pruned
    from anydistill.train.recipe_teacher import recipe_teacher

    source = cfg.student.from_teacher
    if source is None or source.prune is None:
        raise ConfigError(
            "student.from_teacher.prune: `anydistill prune` needs the student's shape there, "
            "e.g. student.from_teacher.prune.hidden_size=3072"
        )
    if cfg.teacher.kind == "cache":
        raise ConfigError("teacher.kind: pruning needs the teacher's weights, not a cache")
    check_target(out, "--out")  # a folder of the user's is refused before any work
    got = recipe_teacher(cfg)
    prune = source.prune
    batches = calibration_batches(
        got.examples, prune.calibration, prune.batch_size, got.pad_id, got.device
    )
    student, plan, importance = pruned_student(
        got.teacher,
        prune,
        batches,
        say=lambda text: print(text, file=sys.stderr),
        progress=progress,
    )
    return save_pruned(student, out, plan, importance, got.tokenizer, field="--out")
