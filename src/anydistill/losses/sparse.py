"""A sparse teacher (an offline cache): top-k token ids, their log-probs and the tail mass.

The loss treats the sparse target exactly, on k + 1 outcomes — the k cached tokens and
"everything else" — with one of two documented meanings of the tail:

- `bucket`: the teacher's remaining mass 1 - sum(top-k) is one outcome, and the student's
  remaining mass (logsumexp of its other logits) is the matching outcome. Every divergence is
  well defined. Temperature must be 1 (the cache holds T = 1 log-probs and the tail's shape
  under another temperature is unknown).
- `renorm`: the teacher is its top-k renormalized (zero elsewhere); the student keeps its full
  distribution, whose off-top-k mass again collapses into one outcome. That collapse is exact
  for every divergence here because off the top-k each term depends on q only through q's
  total there (e.g. JSD's KL(q || m) with m = (1 - beta) q). Any temperature works (the top-k
  logits are known up to a constant). Divergences that are infinite against a teacher with
  zeros — rkl, jsd(beta=1), srkl(alpha=0) — are refused.

Which kinds a cache can serve, and which are infinite against zeros, is declared by each
kind in `anydistill.losses.registry` (`teachers`, `infinite_on_zeros`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from anydistill.config.kinds import serves
from anydistill.losses import registry
from anydistill.losses.objective import ActiveTerm

TailMode = Literal["bucket", "renorm"]
TAIL_MODES = ("bucket", "renorm")


@dataclass
class SparseTeacher:
    """Top-k of the teacher at T = 1 for each selected row (rows aligned with the student's)."""

    ids: Tensor  # [N, k] int64, distinct per row
    logp: Tensor  # [N, k] log-probs of those tokens under the full teacher distribution
    log_tail: Tensor  # [N] log(1 - sum exp(logp)); -inf when k covers the vocabulary
    tail: TailMode = "bucket"


def refusal(
    kind: str, temperature: float, beta: float, alpha: float, tail: str, teacher: str = "cache"
) -> str | None:
    """Why a term cannot be computed against a sparse teacher (`teacher`: the kind giving
    it, `cache` or `server`), or None when it can."""
    entry = registry.get(kind)
    if entry.needs == "nothing":
        return None
    what = "a top-k cache" if teacher == "cache" else f"a {teacher} teacher's top-k"
    if not serves(teacher, kind):
        return f"{what} cannot serve a `{kind}` term (it needs {entry.needs}); use a teacher model"
    if tail == "bucket" and temperature != 1.0:
        return (
            f"a `{kind}` term at temperature {temperature} needs the teacher's tail at that "
            f"temperature, which {what} does not hold; use temperature 1 or tail: renorm"
        )
    term = ActiveTerm(kind, kind, 1.0, temperature, beta=beta, alpha=alpha)
    if tail == "renorm" and entry.infinite_on_zeros is not None and entry.infinite_on_zeros(term):
        return (
            f"`{kind}` is infinite against a renormalized top-k teacher (it has zeros); "
            "use tail: bucket"
        )
    return None


class SparseTarget:
    """One block of a sparse teacher, and the student's log-probs on the same k + 1 outcomes."""

    def __init__(self, ids: Tensor, logp: Tensor, log_tail: Tensor, tail: str) -> None:
        self.ids = ids
        self.logp = logp.float() if logp.dtype != torch.float64 else logp
        self.log_tail = log_tail.to(self.logp.dtype)
        self.tail = tail
        self.covers_vocab = False
        self._student: dict[float, Tensor] = {}

    def teacher(self, temp: float) -> Tensor:
        """Teacher log-probs `[n, k + 1]` (last column: the tail)."""
        if self.tail == "bucket":
            return torch.cat([self.logp, self.log_tail[:, None]], dim=1)
        top = torch.log_softmax(self.logp / temp, dim=-1)
        return torch.cat([top, torch.full_like(top[:, :1], float("-inf"))], dim=1)

    def student(self, full_logp: Tensor, temp: float) -> Tensor:
        """The student's `[n, V]` log-probs at `temp`, collapsed onto the same outcomes.

        Cached per temperature, but a copy built without a graph (a zero-weight term runs
        under no_grad) is never handed to a caller that records one: it is rebuilt.
        """
        cached = self._student.get(temp)
        wants_graph = torch.is_grad_enabled() and full_logp.requires_grad
        if cached is None or (wants_graph and not cached.requires_grad):
            top = full_logp.gather(1, self.ids)
            if self.ids.shape[1] >= full_logp.shape[1]:  # k covers V: the tail is empty
                rest = torch.full_like(top[:, :1], float("-inf"))
            else:
                others = full_logp.scatter(1, self.ids, float("-inf"))
                rest = torch.logsumexp(others, dim=-1, keepdim=True)
            cached = self._student[temp] = torch.cat([top, rest], dim=1)
        return cached

    def argmax_ids(self) -> Tensor:
        return self.ids.gather(1, self.logp.argmax(dim=1, keepdim=True)).squeeze(1)
