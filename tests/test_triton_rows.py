"""The fused Triton row kernel against the torch engine's per-block math in float64.

The reference repeats the engine's term sums and stats with `anydistill.losses.divergences`
on float64 copies of the float32 logits, with the gradient from autograd; the kernel runs in
float32 (on CPU under Triton's interpreter when there is no GPU, so shapes stay tiny).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before the kernel module (and with it triton.jit) is imported.
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

import anydistill.kernels.divergence_rows as rows_module  # noqa: E402
from anydistill.losses.divergences import entropy, forward_kl  # noqa: E402
from anydistill.losses.engine import kernel_rows as rows_loss_and_grad  # noqa: E402
from anydistill.losses.objective import ActiveTerm  # noqa: E402
from anydistill.losses.registry import divergence  # noqa: E402

if not torch.cuda.is_available() and "Interpreted" not in type(rows_module._rows_kernel).__name__:
    # triton was imported (by something else) before TRITON_INTERPRET was set: its own
    # jit functions are then compiled-only and cannot run on the CPU.
    pytest.skip(
        "triton was imported before TRITON_INTERPRET=1; run with TRITON_INTERPRET=1 set",
        allow_module_level=True,
    )
STAT_NAMES = rows_module.STAT_NAMES

# Masked where-branches evaluate inf - inf on purpose; numpy (the interpreter) warns about it.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
N, V, BLOCK = 6, 300, 64  # V is not a multiple of the tile: the last tile is partial
F64 = torch.float64


def _reference(zs, zt, labels, terms, stat_names):
    """Float64 sums [K], stats [S] and dL/dzs, L = sum of w_k * sums_k over w_k != 0.

    The engine's per-block math (term sums with T**2, zero-weight terms without a graph,
    stats at T = 1) on float64 copies, written with `anydistill.losses.divergences`.
    """
    s64 = zs.detach().to("cpu", F64).requires_grad_(True)
    t64 = None if zt is None else zt.detach().to("cpu", F64)
    y = None if labels is None else labels.cpu()
    nll = functools.partial(F.nll_loss, ignore_index=-100, reduction="sum")
    sums, live = [], []
    for t in terms:
        temp = 1.0 if t.kind == "ce" else t.temperature
        with torch.enable_grad() if t.weight != 0 else torch.no_grad():
            lq = torch.log_softmax(s64 / temp, dim=-1)
            if t.kind == "ce":
                value = nll(lq, y)
            else:
                lp = torch.log_softmax(t64 / temp, dim=-1)
                kw = dict(beta=t.beta, alpha=t.alpha, taid_t=t.taid_t)
                value = divergence(t.kind, lq, lp, **kw).sum() * temp**2
        sums.append(value)
        if t.weight != 0:
            live.append(t.weight * value)
    grad = torch.zeros_like(s64)
    if live and any(v.requires_grad for v in live):
        (grad,) = torch.autograd.grad(torch.stack(live).sum(), s64)
    with torch.no_grad():
        lq = torch.log_softmax(s64, dim=-1)
        stats = {"tokens": torch.tensor(float(zs.shape[0]), dtype=F64)}
        stats["student_entropy"] = entropy(lq).sum()
        if t64 is not None:
            lp = torch.log_softmax(t64, dim=-1)
            stats["fkl"] = forward_kl(lq, lp).sum()
            stats["agree"] = (s64.argmax(-1) == t64.argmax(-1)).sum().to(F64)
            stats["teacher_entropy"] = entropy(lp).sum()
            if y is not None:
                stats["teacher_nll"] = nll(lp, y)
        if y is not None:
            stats["student_nll"] = nll(lq, y)
    want_stats = torch.stack([stats[k] for k in stat_names]) if stat_names else torch.zeros(0)
    return torch.stack([v.detach() for v in sums]), want_stats.to(F64), grad


def _close(got, want, rel=1e-5, what="") -> None:
    got = got.detach().to("cpu", F64)
    assert got.shape == want.shape, what
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{what}: {got} vs {want}"
    assert not torch.isnan(got).any(), f"{what}: NaN in {got}"
    fin = torch.isfinite(want)
    err = (got[fin] - want[fin]).abs()
    tol = rel * want[fin].abs() + 1e-6
    assert (err <= tol).all(), f"{what}: {got} vs {want}"


def _grad_close(got, want, rel=1e-5) -> None:
    got = got.detach().to("cpu", F64)
    assert torch.isfinite(got).all(), "non-finite gradient"
    scale = max(want.abs().max().item(), 1e-3)
    err = (got - want).abs().max().item()
    assert err <= rel * scale, f"gradient max err {err:.3g} vs max |grad| {scale:.3g}"


def _logits(seed: int, n: int = N, v: int = V, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(n, v, generator=g) * scale
    zt = torch.randn(n, v, generator=g) * scale
    labels = torch.randint(0, v, (n,), generator=g)
    if n > 2:
        labels[2] = -100
    return zs.to(DEV), zt.to(DEV), labels.to(DEV)


def _check(zs, zt, labels, terms, stats=STAT_NAMES, block_v=BLOCK, grad_rtol=1e-5, **kw):
    """Run kernel and reference; compare sums, stats and the gradient."""
    want_sums, want_stats, want_grad = _reference(zs, zt, labels, terms, stats)
    sums, got_stats, grad = rows_loss_and_grad(
        zs.clone(), zt, labels, terms, stats, True, block_v=block_v, **kw
    )
    _close(sums, want_sums, what="sums")
    _close(got_stats, want_stats, what="stats")
    if torch.isfinite(want_grad).all():
        _grad_close(grad, want_grad, grad_rtol)
    return sums, got_stats, grad


KD_TERMS = [
    ActiveTerm("fkl", "fkl", 0.7),
    ActiveTerm("rkl", "rkl", 0.7),
    ActiveTerm("jsd0", "jsd", 0.7, beta=0.0),
    ActiveTerm("jsd", "jsd", 0.7, beta=0.3),
    ActiveTerm("jsd1", "jsd", 0.7, beta=1.0),
    ActiveTerm("tvd", "tvd", 0.7),
    ActiveTerm("skl", "skl", 0.7, alpha=0.2),
    ActiveTerm("srkl", "srkl", 0.7, alpha=0.1),
    ActiveTerm("taid", "taid", 0.7, taid_t=0.4),
    ActiveTerm("taid1", "taid", 0.7, taid_t=1.0),
]
KD_IDS = [t.name for t in KD_TERMS]


def _at(term: ActiveTerm, temperature: float) -> ActiveTerm:
    return ActiveTerm(
        term.name, term.kind, term.weight, temperature, term.beta, term.alpha, term.taid_t
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("term", KD_TERMS, ids=KD_IDS)
def test_each_kind_with_stats(term, temperature):
    """Every kind alone (plus all stats, which share the launch) at T = 1 and T = 2."""
    zs, zt, labels = _logits(1)
    _check(zs, zt, labels, [_at(term, temperature)])


@pytest.mark.parametrize("term", KD_TERMS, ids=KD_IDS)
def test_each_kind_extreme_and_masked(term):
    """|logits| ~ 1e4 rows, a -inf-masked teacher vocabulary, T = 0.5, N = 1 and one tile."""
    zs, zt, labels = _logits(2, n=5)
    zs[0] *= 3e3
    zt[0] *= 3e3
    zs[1] *= 3e3  # extreme student against a mild teacher
    zt[2] *= 3e3
    zt[3:, 10:200] = float("-inf")  # masked vocabulary; the student keeps mass there (row 3)
    zs[4, 250] = 1e3  # ... or loses it to a later tile: q there is exp(-2000) = 0 (row 4)
    sums, _, _ = _check(zs, zt, labels, [_at(term, 0.5)])
    if term.kind == "rkl" or (term.kind == "jsd" and term.beta == 1.0):
        assert torch.isinf(sums).all()  # from row 3  # q > 0 where p = 0: KL(q || p) = +inf
    else:
        assert torch.isfinite(sums).all()
    # Masked where the student's mass underflows too: every kind finite, gradients included.
    zs[3, 10:200] = -1e4
    sums, _, grad = _check(zs, zt, labels, [_at(term, 0.5)])
    assert torch.isfinite(sums).all() and torch.isfinite(grad).all()
    one = slice(3, 4)  # N = 1, V in a single partial tile (default block)
    _check(zs[one], zt[one], labels[one], [_at(term, 2.0)], block_v=None)


def test_ce_alone_without_teacher():
    zs, _, labels = _logits(3)
    stats = ("tokens", "student_entropy", "student_nll")
    _check(zs, None, labels, [ActiveTerm("ce", "ce", 1.3)], stats=stats)
    _check(zs, None, labels, [ActiveTerm("ce", "ce", 1.3)], stats=(), block_v=None)


def test_mix_of_terms_and_temperatures():
    """Several launches accumulate into one gradient; ce and stats ride on the last."""
    zs, zt, labels = _logits(4)
    zs[0, [5, 70]] = 50.0  # tied student maxima in different tiles: the first one counts
    zt[0, 5] = 50.0
    zs[1, [3, 200]] = 40.0
    zt[1, 3] = 40.0
    terms = [
        ActiveTerm("ce", "ce", 0.3),
        ActiveTerm("ce2", "ce", 0.2),
        ActiveTerm("fkl", "fkl", 0.5, temperature=2.0),
        ActiveTerm("jsd", "jsd", 0.7, temperature=1.5, beta=0.5),
        ActiveTerm("taid", "taid", 0.9, temperature=0.5, taid_t=0.6),
        ActiveTerm("tvd", "tvd", 1.1),
    ]
    stats = ("student_nll", "agree", "tokens", "fkl")
    sums, got, _ = _check(zs, zt, labels, terms, stats=stats)
    assert sums[0] == sums[1] == got[0]


@pytest.mark.parametrize("extra", [False, True], ids=["one-writer", "many-writers"])
def test_in_place_gradient(extra):
    """grad_out is student_logits: the gradient overwrites the logits, correctly."""
    zs, zt, labels = _logits(5)
    terms = [
        ActiveTerm("rkl", "rkl", 0.5, temperature=2.0),
        ActiveTerm("quiet", "jsd", 0.0, temperature=0.5),  # must read the logits before
    ]
    if extra:
        terms.append(ActiveTerm("srkl", "srkl", 0.8, temperature=0.5, alpha=0.3))
        terms.append(ActiveTerm("ce", "ce", 0.4))
    want_sums, want_stats, want_grad = _reference(zs, zt, labels, terms, STAT_NAMES)
    buf = zs.clone()
    sums, stats, grad = rows_loss_and_grad(
        buf, zt, labels, terms, STAT_NAMES, True, grad_out=buf, block_v=BLOCK
    )
    assert grad is buf
    _close(sums, want_sums, what="sums")
    _close(stats, want_stats, what="stats")
    _grad_close(grad, want_grad)


def test_zero_weight_term_reports_but_adds_no_gradient():
    """A zero-weight rkl is +inf here; the gradient is still exactly the fkl term's."""
    zs, zt, labels = _logits(6)
    zt[1, :50] = float("-inf")
    terms = [ActiveTerm("rkl", "rkl", 0.0), ActiveTerm("fkl", "fkl", 1.0, temperature=2.0)]
    sums, _, grad = _check(zs, zt, labels, terms, stats=())
    assert torch.isinf(sums[0])
    only_fkl = rows_loss_and_grad(zs, zt, labels, terms[1:], (), True, block_v=BLOCK)[2]
    assert torch.equal(grad, only_fkl)
    # All weights zero: values still reported, gradient exactly zero.
    quiet = [ActiveTerm("tvd", "tvd", 0.0), ActiveTerm("ce", "ce", 0.0)]
    sums, _, grad = _check(zs, zt, labels, quiet, stats=())
    assert torch.count_nonzero(grad) == 0


def test_no_grad_and_endpoints():
    """want_grad=False returns the same sums; parameter endpoints are exact zeros or KLs."""
    zs, zt, labels = _logits(7)
    terms = [
        ActiveTerm("skl0", "skl", 0.5, alpha=0.0),
        ActiveTerm("skl1", "skl", 0.5, alpha=1.0),
        ActiveTerm("srkl0", "srkl", 0.5, alpha=0.0),
        ActiveTerm("srkl1", "srkl", 0.5, alpha=1.0),
        ActiveTerm("taid0", "taid", 0.5, taid_t=0.0),
    ]
    sums, stats, grad = _check(zs, zt, labels, terms, stats=("teacher_nll",))
    assert torch.equal(sums[[1, 3, 4]].cpu(), torch.zeros(3))
    again, stats2, none = rows_loss_and_grad(zs, zt, labels, terms, ("teacher_nll",), False)
    assert none is None
    _close(again, sums.to("cpu", F64), rel=1e-6)
    _close(stats2, stats.to("cpu", F64), rel=1e-6)
