"""The term registry, loss side: each kind's math and Triton numbers, and lookups by name.

The registry is one dict of `TermKind` records, `TERMS` (`anydistill.config.kinds`, re-exported
here): the recipe schema reads its plain facts there, below this package on the map. This
module attaches each built-in kind's math (`divergences.py`, `losses/cross/`) and kernel
numbers to those records, and every list of kinds on the loss side reads it: the objective
(`objective.py`), the per-block math (`chunk_math.term_sum` through `per_token`), what a
cached teacher can serve (`sparse.refusal`), the Triton launch plan (`kernel_terms`) and
`anydistill bench loss` (`View`). A new divergence is one `register` call:

    register(TermKind("hellinger", "divergence", "squared Hellinger", math=hellinger))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from torch import Tensor

from anydistill.config.kinds import (
    ENGINES,
    FAMILIES,
    PARAMETERS,
    TEACHERS,
    TERMS,
    TermKind,
    get,
    names,
    needs_teacher,
    register,
    unregister,
)
from anydistill.kernels import terms as kernel
from anydistill.losses import divergences as d
from anydistill.losses.features import feature_term

if TYPE_CHECKING:  # objective.py imports this module
    from anydistill.losses.objective import ActiveTerm

__all__ = [
    "DIVERGENCES",
    "ENGINES",
    "FAMILIES",
    "PARAMETERS",
    "TEACHERS",
    "TERMS",
    "TermKind",
    "View",
    "divergence",
    "get",
    "kernel_terms",
    "names",
    "needs_teacher",
    "per_token",
    "register",
    "unregister",
]
# (kind code, kind parameter, log w_p, log w_q): a term's numbers as the kernel takes them.
KernelNumbers = tuple[int, float, float, float]


def per_token(term: ActiveTerm, student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """A divergence term's per-token value `[N]` (no T**2) from already tempered log-probs."""
    kind = TERMS.get(term.kind)
    if kind is None or kind.family != "divergence" or kind.math is None:
        known = ", ".join(names("divergence"))
        raise ValueError(f"unknown divergence {term.kind!r}; choose one of: {known}")
    kwargs = {PARAMETERS[p]: getattr(term, PARAMETERS[p]) for p in kind.params}
    kwargs.pop("temperature", None)  # applied by the engine, not the math
    return kind.math(student_logp, teacher_logp, **kwargs)


def divergence(
    kind: str,
    student_logp: Tensor,
    teacher_logp: Tensor,
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    taid_t: float = 1.0,
) -> Tensor:
    """Per-token divergence `[N]` of the named kind; only the parameters that kind reads are
    used (`beta` for jsd, `alpha` for skl/srkl, `taid_t` for taid)."""
    from anydistill.losses.objective import ActiveTerm

    term = ActiveTerm(kind, kind, 1.0, beta=beta, alpha=alpha, taid_t=taid_t)
    return per_token(term, student_logp, teacher_logp)


def kernel_terms(terms: Sequence[ActiveTerm]) -> list[kernel.KernelTerm] | None:
    """Each term as the Triton kernel's plain numbers, or None when one has no kernel."""
    out = []
    for term in terms:
        kind = get(term.kind)
        if kind.family == "ce":
            out.append(kernel.KernelTerm(kernel.CE, float(term.weight)))
            continue
        if kind.kernel is None:
            return None
        code, k_par, log_wp, log_wq = kind.kernel(term)
        temp = float(term.temperature)
        out.append(kernel.KernelTerm(code, float(term.weight), temp, k_par, log_wp, log_wq))
    return out


class View(Mapping[str, Any]):
    """A live, read-only mapping: the registered kinds of one family -> a value of each."""

    def __init__(self, family: str, read: Callable[[TermKind], Any]) -> None:
        self._family, self._read = family, read

    def __getitem__(self, name: str) -> Any:
        kind = TERMS.get(name)
        if kind is None or kind.family != self._family:
            raise KeyError(name)
        return self._read(kind)

    def __iter__(self) -> Iterator[str]:
        return iter(names(self._family))

    def __len__(self) -> int:
        return len(names(self._family))


DIVERGENCES: Mapping[str, Callable[..., Tensor]] = View("divergence", lambda k: k.math)


# ---- the built-in kinds ------------------------------------------------------------------
# Their kernel numbers take the reference's exact endpoints: an endpoint that is another
# kind (jsd beta = 0 is fkl) launches as that kind; one that is identically zero, as ZERO.


def _log(w: float) -> float:
    return math.log(w) if w > 0.0 else float("-inf")


def _plain(code: int) -> Callable[[ActiveTerm], KernelNumbers]:
    return lambda term: (code, 0.0, 0.0, 0.0)


def _jsd_kernel(term: ActiveTerm) -> KernelNumbers:
    if term.beta in (0.0, 1.0):
        return (kernel.FKL if term.beta == 0.0 else kernel.RKL), 0.0, 0.0, 0.0
    return kernel.JSD, term.beta, _log(term.beta), _log(1.0 - term.beta)


def _skl_kernel(term: ActiveTerm) -> KernelNumbers:
    """m = alpha p + (1 - alpha) q: alpha = 0 is fkl, alpha = 1 is identically zero."""
    a = term.alpha
    if a in (0.0, 1.0):
        return (kernel.FKL if a == 0.0 else kernel.ZERO), 0.0, 0.0, 0.0
    return kernel.SKL, a, _log(a), _log(1.0 - a)


def _srkl_kernel(term: ActiveTerm) -> KernelNumbers:
    """m = (1 - alpha) p + alpha q: alpha = 0 is rkl, alpha = 1 is identically zero."""
    a = term.alpha
    if a in (0.0, 1.0):
        return (kernel.RKL if a == 0.0 else kernel.ZERO), 0.0, 0.0, 0.0
    return kernel.SRKL, a, _log(1.0 - a), _log(a)


def _taid_kernel(term: ActiveTerm) -> KernelNumbers:
    if term.taid_t >= 1.0:
        return kernel.FKL, 0.0, 0.0, 0.0
    if term.taid_t <= 0.0:
        return kernel.ZERO, 0.0, 0.0, 0.0
    return kernel.TAID, term.taid_t, 0.0, 0.0


def _redi(*args: Any, **kwargs: Any) -> Any:
    """REDI's loss (`losses/redi.py`), imported on first use (it imports the engine)."""
    from anydistill.losses.redi import redi_loss

    return redi_loss(*args, **kwargs)


def _cross(name: str) -> Callable[..., Any]:
    """The cross term's loss, imported on first use (it pulls in data/ and align/)."""

    def loss(*args: Any, **kwargs: Any) -> Any:
        from anydistill.losses.cross import CROSS_TERMS

        return CROSS_TERMS[name](*args, **kwargs)

    return loss


# The built-in kinds' math and kernel numbers, on the records config/kinds.py declares.
for _name, _math, _kernel in (
    ("fkl", d.forward_kl, _plain(kernel.FKL)),
    ("rkl", d.reverse_kl, _plain(kernel.RKL)),
    ("jsd", d.generalized_jsd, _jsd_kernel),
    ("tvd", d.total_variation, _plain(kernel.TVD)),
    ("skl", d.skew_forward_kl, _skl_kernel),
    ("srkl", d.skew_reverse_kl, _srkl_kernel),
    ("taid", d.taid_kl, _taid_kernel),
    *((name, _cross(name), None) for name in names("cross")),
    ("hidden", feature_term, None),
    ("attention", feature_term, None),
    ("redi", _redi, None),
):
    TERMS[_name] = replace(TERMS[_name], math=_math, kernel=_kernel)
del _name, _math, _kernel
