"""A sparse (top-k cached) teacher through the loss engine, against float64 references."""

from __future__ import annotations

import pytest
import torch
from reference_divergences import ref_divergence

from anydistill.losses.engine import Head, SparseTeacher, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm

N, H, V = 19, 12, 53
F64 = torch.float64
KINDS = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {"beta": 0.5}),
    ("tvd", {}),
    ("skl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.1}),
    ("taid", {"taid_t": 0.4}),
]


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, H, generator=g, dtype=F64)
    s_w = torch.randn(V, H, generator=g, dtype=F64) * 0.7
    zt = torch.randn(N, V, generator=g, dtype=F64) * 2.5
    mask = torch.rand(N, generator=g) > 0.2
    return hs, s_w, zt, mask


def _topk(zt: torch.Tensor, k: int) -> SparseTeacher:
    lp = torch.log_softmax(zt, dim=-1)
    logp, ids = lp.topk(k, dim=-1)
    rest = lp.scatter(1, ids, float("-inf"))
    return SparseTeacher(ids=ids, logp=logp, log_tail=torch.logsumexp(rest, dim=-1))


def _ours(hs, s_w, teacher, mask, term, dtype=torch.float32):
    h = hs.to(dtype).detach().requires_grad_(True)
    w = s_w.to(dtype).detach().requires_grad_(True)
    if isinstance(teacher, SparseTeacher):
        teacher = SparseTeacher(
            teacher.ids, teacher.logp.to(dtype), teacher.log_tail.to(dtype), teacher.tail
        )
    out = distill_loss(h, Head(w), teacher, None, mask, [term], V, normalizer=7.0, chunk_size=6)
    out.loss.backward()
    return out.loss.detach(), h.grad, w.grad


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _check(ours, ref, tol):
    for a, b in zip(ours, ref, strict=True):
        assert _rel(a, b) <= tol


@pytest.mark.parametrize(("kind", "params"), KINDS, ids=[k for k, _ in KINDS])
@pytest.mark.parametrize("tail", ["bucket", "renorm"])
def test_k_equal_vocab_is_the_online_teacher(kind, params, tail):
    if tail == "renorm" and kind == "rkl":
        pytest.skip("refused for renorm (tested below)")
    hs, s_w, zt, mask = _problem()
    term = ActiveTerm(kind, kind, weight=1.0, **params)
    online_head = Head(torch.eye(V, dtype=torch.float32))
    online = _ours(hs, s_w, TeacherSignal(zt.float(), online_head), mask, term)
    sparse = _topk(zt, V)
    sparse.tail = tail
    cached = _ours(hs, s_w, sparse, mask, term)
    _check(cached, online, 1e-5)


def _reference_bucket(hs, s_w, teacher: SparseTeacher, mask, kind, params):
    """Both distributions collapsed to k + 1 outcomes by hand, in float64."""
    h = hs.detach().clone().requires_grad_(True)
    w = s_w.detach().clone().requires_grad_(True)
    lq = torch.log_softmax(h @ w.T, dim=-1)
    top = lq.gather(1, teacher.ids)
    q_tail = torch.log1p(-top.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-16))
    student = torch.cat([top, q_tail], dim=1)
    teacher_lp = torch.cat([teacher.logp, teacher.log_tail[:, None]], dim=1)
    # ref_divergence log-softmaxes its inputs: log-probs are left unchanged by that.
    per_token = ref_divergence(kind, student, teacher_lp, 1.0, **params)
    loss = per_token[mask].sum() / 7.0
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _reference_renorm(hs, s_w, teacher: SparseTeacher, mask, kind, params, temperature):
    """The full-vocabulary divergence against a teacher that is -inf off its top-k."""
    h = hs.detach().clone().requires_grad_(True)
    w = s_w.detach().clone().requires_grad_(True)
    zt = torch.full((N, V), float("-inf"), dtype=F64).scatter(1, teacher.ids, teacher.logp)
    per_token = ref_divergence(kind, h @ w.T, zt, temperature, **params)
    loss = per_token[mask].sum() / 7.0
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize(("kind", "params"), KINDS, ids=[k for k, _ in KINDS])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_bucket_matches_a_float64_reference(kind, params, k):
    hs, s_w, zt, mask = _problem(seed=k)
    teacher = _topk(zt, k)
    term = ActiveTerm(kind, kind, weight=1.0, **params)
    _check(
        _ours(hs, s_w, teacher, mask, term),
        _reference_bucket(hs, s_w, teacher, mask, kind, params),
        1e-5,
    )


@pytest.mark.parametrize(
    ("kind", "params"),
    [kp for kp in KINDS if kp[0] != "rkl"],
    ids=[k for k, _ in KINDS if k != "rkl"],
)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_renorm_is_exact_against_the_full_vocabulary(kind, params, temperature):
    """Collapsing the student's off-top-k mass to one outcome loses nothing here."""
    hs, s_w, zt, mask = _problem(seed=3)
    teacher = _topk(zt, 8)
    teacher.tail = "renorm"
    term = ActiveTerm(kind, kind, weight=1.0, temperature=temperature, **params)
    ref = _reference_renorm(hs, s_w, teacher, mask, kind, params, temperature)
    _check(_ours(hs, s_w, teacher, mask, term, dtype=F64), ref, 1e-10)
    _check(_ours(hs, s_w, teacher, mask, term), ref, 1e-5)


def test_refusals_name_the_term_and_the_fix():
    hs, s_w, zt, mask = _problem()
    renorm = _topk(zt, 4)
    renorm.tail = "renorm"
    with pytest.raises(ValueError, match="term 'r'.*infinite.*tail: bucket"):
        _ours(hs, s_w, renorm, mask, ActiveTerm("r", "rkl", weight=1.0))
    with pytest.raises(ValueError, match="temperature 2.0.*tail: renorm"):
        _ours(hs, s_w, _topk(zt, 4), mask, ActiveTerm("f", "fkl", weight=1.0, temperature=2.0))
    with pytest.raises(ValueError, match="k = 60"):
        big = SparseTeacher(
            torch.zeros(N, 60, dtype=torch.long), torch.zeros(N, 60), torch.zeros(N)
        )
        _ours(hs, s_w, big, mask, ActiveTerm("f", "fkl", weight=1.0))


def test_triton_engine_falls_back_for_sparse_teachers():
    hs, s_w, zt, mask = _problem()
    teacher = _topk(zt, 6)
    term = ActiveTerm("f", "fkl", weight=1.0)
    args = (Head(s_w.float()), teacher, None, mask, [term], V)
    a = distill_loss(hs.float(), *args, normalizer=1.0, engine="torch").loss
    b = distill_loss(hs.float(), *args, normalizer=1.0, engine="triton").loss
    assert torch.equal(a, b)
