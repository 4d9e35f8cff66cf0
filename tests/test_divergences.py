"""Every divergence against the float64 reference: values, gradients, and edge cases."""

from __future__ import annotations

import zlib

import pytest
import torch
from reference_divergences import ref_divergence

from anydistill.losses.registry import DIVERGENCES, divergence

N, V = 7, 61

# (kind, params): every kind, with its parameter at interior values and at the endpoints.
CASES = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.9}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("tvd", {}),
    ("skl", {"alpha": 0.1}),
    ("skl", {"alpha": 0.0}),
    ("skl", {"alpha": 0.7}),
    ("srkl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.0}),
    ("taid", {"taid_t": 0.4}),
    ("taid", {"taid_t": 1.0}),
    ("taid", {"taid_t": 0.0}),
]
IDS = [f"{k}-{'-'.join(f'{a}{b}' for a, b in p.items())}" for k, p in CASES]


def _prod(kind, student_logits, teacher_logits, temperature=1.0, **params):
    """Production path exactly as the engine drives it: tempered log-softmax, then T**2."""
    lq = torch.log_softmax(student_logits / temperature, dim=-1)
    lp = torch.log_softmax(teacher_logits / temperature, dim=-1)
    return divergence(kind, lq, lp, **params) * temperature**2


def _logits(seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, V, generator=g) * scale, torch.randn(N, V, generator=g) * scale


def _values_and_grads(kind, zs, zt, temperature, params, weights):
    """(prod value, prod grad, ref value, ref grad) wrt student logits."""
    s32 = zs.clone().float().requires_grad_(True)
    out = _prod(kind, s32, zt.float(), temperature, **params)
    (out * weights.float()).sum().backward()
    s64 = zs.clone().double().requires_grad_(True)
    ref = ref_divergence(kind, s64, zt.double(), temperature=temperature, **params)
    (ref * weights.double()).sum().backward()
    return out.detach(), s32.grad, ref.detach(), s64.grad


def test_registry_has_every_kind():
    assert set(DIVERGENCES) == {"fkl", "rkl", "jsd", "tvd", "skl", "srkl", "taid"}
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence("kl2", torch.zeros(1, 2), torch.zeros(1, 2))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize(("kind", "params"), CASES, ids=IDS)
def test_matches_reference(kind, params, temperature):
    zs, zt = _logits(seed=zlib.crc32(f"{kind}{params}{temperature}".encode()))
    weights = torch.rand(N, generator=torch.Generator().manual_seed(1)) + 0.5
    out, grad, ref, ref_grad = _values_and_grads(kind, zs, zt, temperature, params, weights)
    assert out.shape == (N,)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kind", "params"), CASES, ids=IDS)
def test_identical_distributions_give_zero(kind, params):
    zs, _ = _logits(seed=3)
    s = zs.clone().requires_grad_(True)
    out = _prod(kind, s, zs.clone(), **params)
    out.sum().backward()
    torch.testing.assert_close(out, torch.zeros(N), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.grad, torch.zeros(N, V), atol=1e-6, rtol=0)


def test_jsd_endpoints_and_skew_zero_are_plain_kls():
    zs, zt = _logits(seed=4)
    fkl = _prod("fkl", zs, zt)
    rkl = _prod("rkl", zs, zt)
    torch.testing.assert_close(_prod("jsd", zs, zt, beta=0.0), fkl)
    torch.testing.assert_close(_prod("jsd", zs, zt, beta=1.0), rkl)
    torch.testing.assert_close(_prod("skl", zs, zt, alpha=0.0), fkl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_prod("srkl", zs, zt, alpha=0.0), rkl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_prod("taid", zs, zt, taid_t=1.0), fkl)
    # Interior JSD is bounded, unlike the endpoint KLs; values differ from both.
    mid = _prod("jsd", zs, zt, beta=0.5)
    assert torch.all(mid <= torch.log(torch.tensor(2.0)) + 1e-6)
    assert not torch.allclose(mid, fkl)


def test_taid_target_has_no_student_gradient_path():
    zs, zt = _logits(seed=5)
    s = zs.clone().requires_grad_(True)
    _prod("taid", s, zt, taid_t=0.4).sum().backward()
    # d KL(p_t || q) / d z_q = q - p_t when p_t is treated as a constant.
    t = 0.4
    q = torch.softmax(zs, -1)
    pt = torch.softmax((1 - t) * zs + t * zt, -1)
    torch.testing.assert_close(s.grad, q - pt, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("kind", "params"), CASES, ids=IDS)
def test_extreme_logits(kind, params):
    """Logits of +-1e4: probabilities underflow to exact zeros; nothing may turn NaN."""
    g = torch.Generator().manual_seed(6)
    sign = lambda: torch.where(torch.rand(N, V, generator=g) < 0.5, -1.0, 1.0)  # noqa: E731
    zs = sign() * 1e4 * (torch.rand(N, V, generator=g) < 0.2)
    zt = sign() * 1e4 * (torch.rand(N, V, generator=g) < 0.2) + torch.randn(N, V, generator=g)
    weights = torch.ones(N)
    out, grad, ref, ref_grad = _values_and_grads(kind, zs, zt, 1.0, params, weights)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    # float32 log-probs near -2e4 carry ~1e-3 absolute rounding (one ulp), which the gradient's
    # O(1) differences of O(1e4) terms inherit; that is input precision, not a bug.
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("kind", "params"), CASES, ids=IDS)
def test_masked_vocab_entries_act_as_absent(kind, params):
    """-inf at the same entries of both (masked vocabulary) == those entries removed."""
    zs, zt = _logits(seed=7)
    keep = torch.ones(V, dtype=torch.bool)
    keep[[0, 5, 17, 60]] = False
    zs_m = zs.masked_fill(~keep, float("-inf"))
    zt_m = zt.masked_fill(~keep, float("-inf"))
    s = zs_m.clone().requires_grad_(True)
    out = _prod(kind, s, zt_m, temperature=1.5, **params)
    out.sum().backward()
    s_ref = zs[:, keep].double().requires_grad_(True)
    ref = ref_divergence(kind, s_ref, zt[:, keep].double(), temperature=1.5, **params)
    ref.sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-4, atol=1e-6)
    assert torch.isfinite(s.grad).all()
    torch.testing.assert_close(s.grad[:, keep].double(), s_ref.grad, rtol=1e-4, atol=1e-6)
    assert torch.all(s.grad[:, ~keep] == 0)


BOUNDED = [
    c
    for c in CASES
    if c[0] in ("jsd", "tvd", "skl", "srkl")
    and c[1].get("beta", 0.5) not in (0.0, 1.0)
    and c[1].get("alpha", 0.1) != 0.0
]


@pytest.mark.parametrize(("kind", "params"), BOUNDED, ids=[f"{k}-{p}" for k, p in BOUNDED])
def test_disjoint_masks_stay_finite_for_bounded_divergences(kind, params):
    """-inf in the teacher where the student has mass (and vice versa): bounded kinds stay
    finite, with values equal to the reference and finite gradients."""
    zs, zt = _logits(seed=8)
    zs = zs.clone()
    zt = zt.clone()
    zs[:, :3] = float("-inf")
    zt[:, 3:6] = float("-inf")
    s = zs.clone().requires_grad_(True)
    out = _prod(kind, s, zt, **params)
    out.sum().backward()
    ref = ref_divergence(kind, zs.double(), zt.double(), **params)
    assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-6)


def test_unbounded_kl_with_zero_support_is_inf_not_nan():
    zs, zt = _logits(seed=9)
    zs = zs.clone()
    zs[:, 0] = float("-inf")  # student gives zero mass where the teacher has some
    s = zs.clone().requires_grad_(True)
    out = _prod("fkl", s, zt)
    assert torch.isinf(out).all() and not torch.isnan(out).any()
    # The reverse direction is finite there and its gradient is clean.
    rkl = _prod("rkl", s, zt)
    rkl.sum().backward()
    assert torch.isfinite(rkl).all() and torch.isfinite(s.grad).all()
