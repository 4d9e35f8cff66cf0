"""Minitron-style structured pruning of Hugging Face decoder LMs.

compute_importance -> plan_pruning (show PrunePlan.describe()) -> apply_plan -> save_pruned.
"""

from anydistill.models.prune.families import FAMILIES, Shape
from anydistill.models.prune.importance import Importance, compute_importance
from anydistill.models.prune.pipeline import prune_model
from anydistill.models.prune.plan import PrunePlan, PruneTarget, plan_pruning, student_config
from anydistill.models.prune.save import IMPORTANCE_FILE, PLAN_FILE, save_pruned
from anydistill.models.prune.slicing import apply_plan

__all__ = [
    "FAMILIES",
    "IMPORTANCE_FILE",
    "PLAN_FILE",
    "Importance",
    "PrunePlan",
    "PruneTarget",
    "Shape",
    "apply_plan",
    "compute_importance",
    "plan_pruning",
    "prune_model",
    "save_pruned",
    "student_config",
]
