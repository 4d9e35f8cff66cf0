"""Where the target distribution comes from: the teacher seam (`base.Teacher`) and its kinds:
a live model (`live`), the offline top-k cache (`cache`), a model on another tokenizer
(`aligned`)."""

from __future__ import annotations

from typing import Any

import torch

from anydistill.data.views import StepInputs
from anydistill.teachers.aligned import AlignedSignal, AlignedTeacher
from anydistill.teachers.base import NO_EXTRAS, Features, Needs, Teacher
from anydistill.teachers.live import LiveTeacher


def as_teacher(teacher: Any) -> Any:
    """A teacher kind as is; a bare model (a library caller's) as a live teacher."""
    if isinstance(teacher, torch.nn.Module):
        return LiveTeacher(teacher)
    return teacher


def teacher_signal(teacher: Any, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> Any:
    """What `teacher` says about `inputs` (None without a teacher)."""
    teacher = as_teacher(teacher)
    return None if teacher is None else teacher.signal(inputs, needs)


__all__ = [
    "NO_EXTRAS",
    "AlignedSignal",
    "AlignedTeacher",
    "Features",
    "LiveTeacher",
    "Needs",
    "Teacher",
    "as_teacher",
    "teacher_signal",
]
