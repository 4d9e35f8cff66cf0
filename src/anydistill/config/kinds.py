"""The term registry's records: one `TermKind` per objective term kind, in `TERMS`.

This half of the registry is plain data, low on the package map so that the recipe schema
validates against it: each kind's family, the recipe parameters and options it reads, the
engines and teacher kinds it runs with. The loss side (`anydistill.losses.registry`, which
re-exports all of this) attaches each built-in kind's math and Triton launch numbers to the
same records; `register` adds a whole new kind at run time, math included:

    register(TermKind("hellinger", "divergence", "squared Hellinger", math=hellinger))

Families: `divergence` (a per-token function of the student's and the teacher's log-probs;
the engine applies T and T**2), `ce` (hard labels), `contrastive` (DistiLLM-2, split by the
step into skl/srkl halves), `cross` (cross-tokenizer terms on aligned chunks) and `feature`
(a student layer's activations against a teacher layer's: hidden states, attention outputs or
attention maps; a live teacher only) and `sequence` (whole completions of the student alone:
REDI's correct/incorrect trace pairs; reads no teacher) and `mixer` (a converted student's
new mixers, each fed the teacher's own attention input, against the teacher's attention output;
a live teacher only).

Teacher kinds: `live` (a teacher model: full logits), `cache` (an offline top-k cache),
`server` (a served model's top-k log-probs: the cache's signal, so it serves what `cache`
serves, see `serves`) and `aligned` (a teacher on another tokenizer, chunk by chunk). List
`cache` for a divergence only if it is exact on the cache's k + 1 outcomes
(`losses/sparse.py`): with a `renorm` tail, off the top-k it must depend on the student only
through its total mass there (f-divergences do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["divergence", "ce", "contrastive", "cross", "feature", "sequence", "mixer"]
FAMILIES = ("divergence", "ce", "contrastive", "cross", "feature", "sequence", "mixer")
ENGINES = ("naive", "torch", "triton")
TEACHERS = ("live", "cache", "server", "aligned")
# A teacher kind that gives another kind's signal serves the same terms: a server's top-k
# log-probs are the cache's `SparseTeacher`, so it serves what `cache` serves.
SAME_SIGNAL = {"server": "cache"}
# A term's parameters by their recipe name -> the `ActiveTerm` field (and math keyword).
PARAMETERS = {"temperature": "temperature", "beta": "beta", "alpha": "alpha", "taid": "taid_t"}


@dataclass(frozen=True)
class TermKind:
    """One kind of objective term: its math, what it reads, and where it can run.

    Callables take the term's settings (an `ActiveTerm`: weight, temperature, beta, alpha,
    taid_t).
    """

    name: str
    family: Family
    summary: str  # one line, for people
    # divergence: per-token `[N]` from (student_logp, teacher_logp, **its params but T);
    # cross: the term's loss over aligned chunks; feature: per-row `[N]` from the student's
    # and the teacher's activations; sequence: the term's loss over whole completions (see
    # losses/redi.py); None for ce and contrastive.
    math: Callable[..., Any] | None = None
    params: tuple[str, ...] = ("temperature",)  # keys of PARAMETERS it reads
    options: tuple[str, ...] = ()  # cross terms: the keys their `options:` accept
    engines: tuple[str, ...] = ENGINES  # distill_loss engines; (): runs outside the engine
    teachers: tuple[str, ...] = ("live", "cache")
    # The Triton kernel's (kind code, kind parameter, log w_p, log w_q) for a term; None: the
    # triton engine computes blocks holding such a term with the torch per-block math.
    kernel: Callable[[Any], tuple[int, float, float, float]] | None = None
    # True where the value is +inf against a teacher with zeros (a renormalized top-k).
    infinite_on_zeros: Callable[[Any], bool] | None = None
    bench: Mapping[str, float] = field(default_factory=dict)  # `bench loss` settings

    @property
    def needs(self) -> str:
        """What it needs from the teacher: logits, sparse-ok, aligned chunks or nothing."""
        if self.family in ("ce", "sequence"):
            return "nothing"
        if self.family == "cross":
            return "aligned chunks"
        if self.family == "feature":
            return "layer features"
        if self.family == "mixer":
            return "attention inputs and outputs"
        return "sparse-ok" if "cache" in self.teachers else "logits"


TERMS: dict[str, TermKind] = {}


def _check(kind: TermKind) -> None:
    if kind.name in TERMS:
        raise ValueError(f"term kind {kind.name!r} is already registered")
    if kind.family not in FAMILIES:
        raise ValueError(f"term kind {kind.name!r}: family must be one of {', '.join(FAMILIES)}")
    for what, given, known in (
        ("params", kind.params, PARAMETERS),
        ("engines", kind.engines, ENGINES),
        ("teachers", kind.teachers, TEACHERS),
    ):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise ValueError(f"term kind {kind.name!r}: unknown {what} {unknown}")


def register(kind: TermKind) -> TermKind:
    """Add a kind, math included (its name must be new); `unregister` removes it."""
    _check(kind)
    if kind.family in ("divergence", "cross", "feature", "sequence") and kind.math is None:
        raise ValueError(f"term kind {kind.name!r} needs its math")
    TERMS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests add and remove fixture kinds)."""
    TERMS.pop(name, None)


def names(family: str | None = None) -> tuple[str, ...]:
    """Registered kind names, in registration order, optionally of one family."""
    return tuple(k.name for k in TERMS.values() if family is None or k.family == family)


def get(name: str) -> TermKind:
    """The kind called `name`; ValueError with one sentence listing the known kinds."""
    kind = TERMS.get(name)
    if kind is None:
        raise ValueError(f"unknown term kind {name!r}; choose one of {', '.join(names())}")
    return kind


def serves(teacher: str, name: str) -> bool:
    """Whether teacher kind `teacher` (live, cache, server, aligned) can serve term `name`."""
    listed = get(name).teachers
    return teacher in listed or SAME_SIGNAL.get(teacher) in listed


def needs_teacher(name: str) -> bool:
    """False for kinds that read nothing from the teacher (ce)."""
    return get(name).needs != "nothing"


# ---- the built-in kinds: their facts (losses/registry.py attaches math and kernel) -------
for _kind in (
    TermKind("fkl", "divergence", "forward KL(p || q), mass-covering (Hinton et al. 2015)"),
    TermKind(
        "rkl", "divergence", "reverse KL(q || p), mode-seeking (MiniLLM)",
        infinite_on_zeros=lambda t: True,
    ),
    TermKind(
        "jsd", "divergence", "generalized JSD(beta), TRL GKD convention",
        params=("temperature", "beta"), infinite_on_zeros=lambda t: t.beta == 1.0,
        bench={"beta": 0.5},
    ),
    TermKind("tvd", "divergence", "total variation distance"),
    TermKind(
        "skl", "divergence", "DistiLLM skew KL(p || alpha p + (1 - alpha) q)",
        params=("temperature", "alpha"), bench={"alpha": 0.1},
    ),
    TermKind(
        "srkl", "divergence", "DistiLLM skew reverse KL(q || (1 - alpha) p + alpha q)",
        params=("temperature", "alpha"), infinite_on_zeros=lambda t: t.alpha == 0.0,
        bench={"alpha": 0.1},
    ),
    TermKind(
        "taid", "divergence", "TAID: KL(p_t || q) to an adaptive interpolation",
        params=("temperature", "taid"), bench={"taid_t": 0.5},
    ),
    TermKind(
        "contrastive", "contrastive",
        "DistiLLM-2: skl on teacher responses + srkl on student responses (paired batches)",
        params=("temperature", "alpha"), teachers=("live",),
    ),
    TermKind(
        "ce", "ce", "cross-entropy on the hard labels, at T = 1",
        params=(), teachers=("live", "cache", "aligned"),
    ),
    TermKind(
        "alm", "cross", "ALM: binarised chunk likelihoods (temperature is its tau)",
        options=("divergence", "eps", "debias", "space_threshold"), engines=(),
        teachers=("aligned",),
    ),
    TermKind(
        "uld", "cross", "ULD: sorted-probability Wasserstein distance",
        engines=(), teachers=("aligned",),
    ),
    TermKind(
        "gold_hybrid", "cross", "GOLD: JSD on matched tokens plus ULD on the rest",
        params=("temperature", "beta"), options=("matched_weight", "unmatched_weight"),
        engines=(), teachers=("aligned",),
    ),
    TermKind(
        "mined", "cross", "MinED: forward KL through a mined vocabulary map",
        engines=(), teachers=("aligned",),
    ),
    TermKind(
        "hidden", "feature",
        "hidden-state MSE or cosine of matched layers (a learned projection when widths differ)",
        params=(), options=("layers", "loss"), engines=(), teachers=("live",),
    ),
    TermKind(
        "attention", "feature",
        "attention outputs (MSE or cosine) or MiniLM attention maps (KL) of matched layers",
        params=(), options=("layers", "target", "loss"), engines=(), teachers=("live",),
    ),
    TermKind(
        "mixer", "mixer",
        "mixer alignment: each converted layer's mixer on the teacher's attention input, MSE "
        "to its attention output (LoLCATs / MOHAWK)",
        params=(), engines=(), teachers=("live",),
    ),
    TermKind(
        "redi", "sequence",
        "REDI: -log p(correct)/len + alpha log p(incorrect)/len per trace pair (alpha 0.8)",
        params=("alpha",), engines=(), teachers=("live", "cache", "aligned"),
    ),
):  # fmt: skip
    _check(_kind)
    TERMS[_kind.name] = _kind
del _kind
