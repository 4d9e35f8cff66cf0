"""Losses: divergences (the math, once), the objective and its schedules, the loss engine."""

from anydistill.losses.engine import ENGINES, Head, LossOutput, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm, Objective, TermSpec
from anydistill.losses.registry import DIVERGENCES, divergence
from anydistill.losses.schedules import WeightSchedule
from anydistill.losses.sparse import SparseTeacher
from anydistill.losses.taid import TaidSchedule

__all__ = [
    "DIVERGENCES",
    "ENGINES",
    "SparseTeacher",
    "ActiveTerm",
    "Head",
    "LossOutput",
    "Objective",
    "TaidSchedule",
    "TeacherSignal",
    "TermSpec",
    "WeightSchedule",
    "distill_loss",
    "divergence",
]
