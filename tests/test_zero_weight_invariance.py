"""A zero-weight term (a monitor, or a schedule at 0) never changes the loss or the gradient.

For every engine x teacher kind, a zero-weight term of every kind that teacher serves is
inserted first, in the middle and last, at the weighted terms' temperature and at another one;
loss and d(loss)/d(student hidden, head weight, head bias) must equal those of the list
without it. The helpers (`zero_weight_variants`, `assert_invariant`) are meant for reuse by
other teacher kinds (e.g. the aligned, cross-tokenizer teacher at step level).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from anydistill.losses import registry
from anydistill.losses.engine import Head, SparseTeacher, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm
from anydistill.losses.sparse import refusal

N, HS, HT, V = 13, 8, 6, 37
CHUNK = 5  # several blocks, the last one partial
K = 6  # cached ids per row
ENGINES = ["naive", "torch"] + (["triton"] if importlib.util.find_spec("triton") else [])
TEACHERS = ["live", "bucket", "renorm"]
# Parameters that exercise each kind's own math (not an endpoint that is another kind).
PARAMS = {"jsd": {"beta": 0.3}, "skl": {"alpha": 0.2}, "srkl": {"alpha": 0.2}}
PARAMS["taid"] = {"taid_t": 0.4}

Outputs = tuple[Tensor, Tensor, Tensor, Tensor]


def zero_weight_variants(
    terms: Sequence[ActiveTerm], zero: ActiveTerm, temperatures: Sequence[float]
) -> Iterator[tuple[str, list[ActiveTerm]]]:
    """(description, term list) for `zero` (weight 0) inserted first, in the middle and last,
    at each of `temperatures`."""
    assert zero.weight == 0.0
    for temp in temperatures:
        quiet = zero if zero.kind == "ce" else replace(zero, temperature=temp)
        for where, at in (("first", 0), ("middle", len(terms) // 2), ("last", len(terms))):
            yield f"{zero.kind} at T={temp} {where}", [*terms[:at], quiet, *terms[at:]]


def assert_invariant(
    run: Callable[[list[ActiveTerm]], Sequence[Tensor]],
    terms: Sequence[ActiveTerm],
    variants: Iterator[tuple[str, list[ActiveTerm]]],
    rtol: float,
) -> None:
    """`run(terms)` returns (loss, *gradients); every variant must give the same values."""
    want = [t.detach() for t in run(list(terms))]
    assert all(torch.isfinite(w).all() for w in want)
    assert all(w.abs().sum() > 0 for w in want[1:]), "the weighted terms must have a gradient"
    for what, variant in variants:
        got = run(variant)
        for name, a, b in zip(("loss", "d hidden", "d weight", "d bias"), got, want, strict=True):
            err = (a.detach() - b).abs().max().item()
            scale = b.abs().max().item()
            assert err <= rtol * scale, f"{what}: {name} moved by {err:.3g} (of {scale:.3g})"


def _problem(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    p = {
        "hs": torch.randn(N, HS, generator=g, dtype=f64),
        "s_w": torch.randn(V, HS, generator=g, dtype=f64) * 0.8,
        "s_b": torch.randn(V, generator=g, dtype=f64) * 0.3,
        "ht": torch.randn(N, HT, generator=g, dtype=f64),
        "t_w": torch.randn(V, HT, generator=g, dtype=f64),
        "labels": torch.randint(0, V, (N,), generator=g),
        "mask": torch.rand(N, generator=g) > 0.15,
    }
    p["labels"][3] = -100
    return p


def _teacher(p: dict[str, Tensor], kind: str, dtype: torch.dtype):
    if kind == "live":
        return TeacherSignal(p["ht"].to(dtype), Head(p["t_w"].to(dtype)))
    lp = torch.log_softmax(p["ht"] @ p["t_w"].T, dim=-1)
    logp, ids = lp.topk(K, dim=-1)
    tail = torch.logsumexp(lp.scatter(1, ids, float("-inf")), dim=-1)
    return SparseTeacher(ids, logp.to(dtype), tail.to(dtype), tail=kind)


def _runner(engine: str, teacher_kind: str) -> Callable[[list[ActiveTerm]], Outputs]:
    # The kernel is float32 only; the torch engines run in float64 for exactness.
    dtype = torch.float32 if engine == "triton" else torch.float64
    p = _problem()
    teacher = _teacher(p, teacher_kind, dtype)

    def run(terms: list[ActiveTerm]) -> Outputs:
        # Fresh leaves per call (`.to` may return the very tensor, and grads would pile up).
        hs, w, b = (p[k].to(dtype).clone().requires_grad_(True) for k in ("hs", "s_w", "s_b"))
        out = distill_loss(
            hs, Head(w, b), teacher, p["labels"], p["mask"], terms, V,
            normalizer=11.0, engine=engine, chunk_size=CHUNK,
        )  # fmt: skip
        out.loss.backward()
        return out.loss, hs.grad, w.grad, b.grad

    return run


def _served(kind: str, teacher_kind: str, term: ActiveTerm) -> bool:
    """Whether `teacher_kind` can compute a `kind` term with these settings."""
    if kind == "ce" or teacher_kind == "live":
        return True
    why = refusal(kind, term.temperature, term.beta, term.alpha, teacher_kind)
    return why is None


def _zero_kinds(teacher_kind: str) -> list[str]:
    """Every registered kind the engine computes that this teacher kind serves."""
    teacher = "live" if teacher_kind == "live" else "cache"
    engine_kinds = [k for k in registry.TERMS.values() if k.family in ("divergence", "ce")]
    return [k.name for k in engine_kinds if teacher in k.teachers]


@pytest.mark.parametrize("teacher_kind", TEACHERS)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_zero_weight_term_changes_nothing(engine, teacher_kind):
    # A bucket tail serves T = 1 only; a live teacher and a renormalized top-k any T.
    temp = 1.0 if teacher_kind == "bucket" else 2.0
    temps = [temp] if teacher_kind == "bucket" else [temp, 0.7]
    base = [
        ActiveTerm("main", "fkl", 0.7, temperature=temp),
        ActiveTerm("mix", "jsd", 0.5, temperature=temp, beta=0.3),
        ActiveTerm("ce", "ce", 0.2),
    ]
    run = _runner(engine, teacher_kind)
    rtol = 1e-6 if engine == "triton" else 1e-12
    for kind in _zero_kinds(teacher_kind):
        zero = ActiveTerm("quiet", kind, 0.0, **PARAMS.get(kind, {}))
        variants = (
            (what, terms)
            for what, terms in zero_weight_variants(base, zero, temps)
            if _served(kind, teacher_kind, terms[[t.name for t in terms].index("quiet")])
        )
        assert_invariant(run, base, variants, rtol)
