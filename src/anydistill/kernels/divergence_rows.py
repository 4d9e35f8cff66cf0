"""Fused Triton kernel for the per-row part of the distillation loss: values, stats, gradient.

Given one chunk of already projected float32 logits (student `zs`, teacher `zt`, `[N, V]`), it
computes per row, in as few sweeps over the vocabulary as the math allows, every term's value,
the monitoring stats and dL/dzs for L = sum_k w_k * value_k, so the engine around it only runs
matmuls. The semantics are the torch engine's per-block math on `anydistill.losses.divergences`
(guards, endpoint conventions and all): per term q = softmax(zs / T), p = softmax(zt / T),
value = T**2 * sum_rows D(q, p); `ce` at T = 1 over rows whose label is not -100.

Terms arrive as plain numbers (`terms.KernelTerm`: kind code, weight, T, the kind's parameter
and mixture log-weights); the losses side makes them (`anydistill.losses.registry`).

One program handles one row and walks V in BLOCK_V tiles:

- sweep 1 (always): online log-sum-exp of every distribution needed (student/teacher at T and
  at 1, TAID's interpolated target), the argmaxes, the label logits, and, by carrying an online
  "sum p * (log p - log r)" with running-max corrections, the exact values of fkl, rkl, taid,
  ce and all stats. These kinds need no second read of V for their value.
- sweep 2 (jsd, tvd, skl, srkl only): their values and the one row scalar their gradient needs;
  both depend on the final normalizers, so they cannot be accumulated online.
- last sweep (only when a gradient is written): dL/dz_i = w * T * (h_i - q_i * sum_j h_j), with
  h_i = q_i * dD/dq_i written out per kind in a form that stays finite where q_i or p_i
  underflows (e.g. fkl: q - p). It reads the logits tile, then writes the gradient tile at the
  same addresses, so the gradient may overwrite `student_logits` in place.

So a launch reads V once (values only, or fkl/rkl/taid/ce values), twice (fkl/rkl/taid/ce with
gradient; jsd/tvd/skl/srkl values only) or three times (jsd/tvd/skl/srkl with gradient).

Each distillation term gets its own launch (its kind, and whether T = 1, are compile-time);
`ce` and the stats ride on the last launch. Launches that write a gradient run last and accumulate;
when the gradient overwrites `student_logits`, all but the last write to a scratch buffer.
Nothing syncs with the host: per-row partial sums go to an `[N, C]` buffer that torch sums.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from anydistill.kernels import terms as codes
from anydistill.kernels.terms import CE, FKL, NONE, SRKL, ZERO, KernelTerm

STAT_NAMES = (
    "tokens",
    "student_entropy",
    "fkl",
    "agree",
    "teacher_entropy",
    "student_nll",
    "teacher_nll",
)

# The kernel spells the kind codes as literals (KIND == 1 is fkl, ...): keep them in step.
_ORDER = (codes.NONE, codes.FKL, codes.RKL, codes.TAID, codes.JSD, codes.TVD, codes.SKL, SRKL)
assert _ORDER == tuple(range(8)), "kernels/terms.py codes no longer match _rows_kernel"

_IGNORE = tl.constexpr(-100)  # label to skip, as F.nll_loss(ignore_index=-100)
_NEG_INF = tl.constexpr(float("-inf"))
_POS_INF = tl.constexpr(float("inf"))
# Running-max start: finite, so max - start and start - max never turn into inf - inf.
_NEG_BIG = tl.constexpr(-1e30)
# float32 exp(x) rounds to 0 for x below log(2**-150): the reference's `p == 0` test.
_LOG_TINY = tl.constexpr(-150.0 * math.log(2.0))


@triton.jit
def _lse_step(m, s, x, x_max):
    """Online softmax normalizer update; returns new max, new sum, rescale factor, exps."""
    m_new = tl.maximum(m, x_max)
    alpha = tl.exp(m - m_new)
    e = tl.exp(x - m_new)
    return m_new, s * alpha + tl.sum(e, axis=0), alpha, e


@triton.jit
def _kl_step(u, xinf, s_old, alpha, mx, mx_new, my, my_new, e, x, y):
    """Online sum_i e^(x_i - Mx) * ((x_i - Mx) - (y_i - My)), rebased when the maxes move.

    Entries where y = -inf are kept out of the sum (their diff is set to 0); whether such an
    entry makes KL(x || y) infinite is decided at the end from `xinf`, their largest x.
    """
    y_dead = y == _NEG_INF
    diff = tl.where(y_dead, 0.0, (x - mx_new) - (y - my_new))
    part = tl.where(e == 0.0, 0.0, e * diff)
    u = alpha * (u + s_old * ((my_new - my) - (mx_new - mx))) + tl.sum(part, axis=0)
    xinf = tl.maximum(xinf, tl.max(tl.where(y_dead, x, _NEG_INF), axis=0))
    return u, xinf


@triton.jit
def _kl_final(u, xinf, mx, sx, sy):
    """KL(softmax x || softmax y) from the online sums; +inf iff the reference's would be."""
    lsx = tl.log(sx)
    kl = u / sx - lsx + tl.log(sy)
    return tl.where((xinf - mx) - lsx > _LOG_TINY, _POS_INF, kl)


@triton.jit
def _ent_step(u, s_old, alpha, mx, mx_new, e, x):
    """Online sum_i e^(x_i - Mx) * (x_i - Mx) (for the entropy), rebased when Mx moves."""
    part = tl.where(e == 0.0, 0.0, e * (x - mx_new))
    return alpha * (u - s_old * (mx_new - mx)) + tl.sum(part, axis=0)


@triton.jit
def _log_over_mix(d, log_w_self, log_w_other):
    """log(x / m) for the mixture m = w_self * x + w_other * y, from d = log y - log x.

    -logaddexp(log w_self, log w_other + d): exact (= -log w_self) where y = 0, and free of the
    rounding that log x - log m would pick up from log x's magnitude. Callers mask x = 0.
    """
    b = log_w_other + d
    top = tl.maximum(b, log_w_self)
    bot = tl.minimum(b, log_w_self)
    return -(top + tl.log(1.0 + tl.exp(bot - top)))


@triton.jit
def _rows_kernel(
    zs_ptr,
    zt_ptr,
    lab_ptr,
    gin_ptr,
    gout_ptr,
    part_ptr,
    V,
    part_stride,
    col_kd,
    c_snll,
    c_sent,
    c_fkl,
    c_agree,
    c_tent,
    c_tnll,
    inv_t,
    t_sq,
    grad_scale,
    ce_scale,
    k_par,
    log_wp,
    log_wq,
    KIND: tl.constexpr,
    SAME_T: tl.constexpr,
    HAS_T: tl.constexpr,
    NEED_S1: tl.constexpr,
    NEED_T1: tl.constexpr,
    FKL_SHARED: tl.constexpr,
    NLL_S: tl.constexpr,
    NLL_T: tl.constexpr,
    ST_S: tl.constexpr,
    ST_T: tl.constexpr,
    KD_GRAD: tl.constexpr,
    CE_GRAD: tl.constexpr,
    ACCUM: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    zs_row = zs_ptr + row * V
    zt_row = zt_ptr + row * V
    part_row = part_ptr + row * part_stride
    lanes = tl.arange(0, BLOCK_V)

    # Running state. Streams: a = zs/T, b = zt/T, c = TAID's (1-t) a + t b, s1 = zs, t1 = zt.
    ma = _NEG_BIG
    sa = 0.0
    mb = _NEG_BIG
    sb = 0.0
    mc = _NEG_BIG
    sc = 0.0
    u_kd = 0.0
    inf_kd = _NEG_INF
    ms1 = _NEG_BIG
    ss1 = 0.0
    mt1 = _NEG_BIG
    st1 = 0.0
    ent_s = 0.0
    ent_t = 0.0
    u_fkl = 0.0
    inf_fkl = _NEG_INF
    best_s = _NEG_INF
    arg_s = 0
    best_t = _NEG_INF
    arg_t = 0
    arg_c = 0

    # ---- sweep 1: normalizers, argmaxes and every online-computable value ----------------
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        inside = offs < V
        zs = tl.load(zs_row + offs, mask=inside, other=_NEG_INF)
        if HAS_T:
            zt = tl.load(zt_row + offs, mask=inside, other=_NEG_INF)
        if KIND != 0:
            a = zs * inv_t
            b = zt * inv_t
            ma_n, sa_n, al_a, ea = _lse_step(ma, sa, a, tl.max(a, axis=0))
            mb_n, sb_n, al_b, eb = _lse_step(mb, sb, b, tl.max(b, axis=0))
            if KIND == 1:  # fkl: KL(p || q)
                u_kd, inf_kd = _kl_step(u_kd, inf_kd, sb, al_b, mb, mb_n, ma, ma_n, eb, b, a)
            if KIND == 2:  # rkl: KL(q || p)
                u_kd, inf_kd = _kl_step(u_kd, inf_kd, sa, al_a, ma, ma_n, mb, mb_n, ea, a, b)
            if KIND == 3:  # taid: KL(p_t || q), p_t = softmax(c)
                # c = (1 - t)(a - Ma) + t (b - Mb), centred like the reference's log-probs so
                # |logits| ~ 1e4 cost no precision. When the maxes move, every earlier c
                # shifts by the same amount, and so does their running max.
                c = (1.0 - k_par) * (a - ma_n) + k_par * (b - mb_n)
                mc_old = mc - ((1.0 - k_par) * (ma_n - ma) + k_par * (mb_n - mb))
                c_max, c_arg = tl.max(c, axis=0, return_indices=True)
                arg_c = tl.where(c_max > mc_old, start + c_arg, arg_c)
                mc_n, sc_n, al_c, ec = _lse_step(mc_old, sc, c, c_max)
                u_kd, inf_kd = _kl_step(u_kd, inf_kd, sc, al_c, mc_old, mc_n, ma, ma_n, ec, c, a)
                mc = mc_n
                sc = sc_n
        if NEED_S1:
            if ST_T:
                zs_max, zs_arg = tl.max(zs, axis=0, return_indices=True)
                better = zs_max > best_s  # strict: the first maximum wins, as torch.argmax
                arg_s = tl.where(better, start + zs_arg, arg_s)
                best_s = tl.maximum(best_s, zs_max)
            else:
                zs_max = tl.max(zs, axis=0)
            if SAME_T:
                ms1_n = ma_n
                ss1_n = sa_n
                al_s1 = al_a
                es1 = ea
            else:
                ms1_n, ss1_n, al_s1, es1 = _lse_step(ms1, ss1, zs, zs_max)
            if ST_S:
                ent_s = _ent_step(ent_s, ss1, al_s1, ms1, ms1_n, es1, zs)
        if NEED_T1:
            if ST_T:
                zt_max, zt_arg = tl.max(zt, axis=0, return_indices=True)
                better_t = zt_max > best_t
                arg_t = tl.where(better_t, start + zt_arg, arg_t)
                best_t = tl.maximum(best_t, zt_max)
            else:
                zt_max = tl.max(zt, axis=0)
            if SAME_T:
                mt1_n = mb_n
                st1_n = sb_n
                al_t1 = al_b
                et1 = eb
            else:
                mt1_n, st1_n, al_t1, et1 = _lse_step(mt1, st1, zt, zt_max)
            if ST_T:
                ent_t = _ent_step(ent_t, st1, al_t1, mt1, mt1_n, et1, zt)
                if not FKL_SHARED:
                    u_fkl, inf_fkl = _kl_step(
                        u_fkl, inf_fkl, st1, al_t1, mt1, mt1_n, ms1, ms1_n, et1, zt, zs
                    )
            mt1 = mt1_n
            st1 = st1_n
        if NEED_S1:
            ms1 = ms1_n
            ss1 = ss1_n
        if KIND != 0:
            ma = ma_n
            sa = sa_n
            mb = mb_n
            sb = sb_n

    lsa = 0.0
    lsb = 0.0
    lsc = 0.0
    ls1 = 0.0
    lt1 = 0.0
    if KIND != 0:
        lsa = tl.log(sa)
        lsb = tl.log(sb)
    a_mode = 0.0
    b_mode = 0.0
    if KIND == 3:
        lsc = tl.log(sc)
        # The last sweep takes c relative to the target's mode, c_i - c_mode = (1 - t)(a_i -
        # a_mode) + t (b_i - b_mode): exactly 0 at the mode whatever the rounding of the
        # rebased running max, as the reference's log_softmax is (p_t one-hot stays one-hot).
        a_mode = tl.load(zs_row + arg_c) * inv_t
        b_mode = tl.load(zt_row + arg_c) * inv_t
    if NEED_S1:
        ls1 = tl.log(ss1)
    if NEED_T1:
        lt1 = tl.log(st1)

    # ---- labels: ce / nll at T = 1 ------------------------------------------------------
    ce_row = 0.0
    lab_safe = 0
    if NLL_S or NLL_T or CE_GRAD:
        lab = tl.load(lab_ptr + row)
        valid = lab != _IGNORE
        lab_safe = tl.where(valid, lab, 0)
        if CE_GRAD:
            ce_row = tl.where(valid, ce_scale, 0.0)
        if NLL_S:
            zy = tl.load(zs_row + lab_safe)
            tl.store(part_row + c_snll, tl.where(valid, (ms1 - zy) + ls1, 0.0))
        if NLL_T:
            ty = tl.load(zt_row + lab_safe)
            tl.store(part_row + c_tnll, tl.where(valid, (mt1 - ty) + lt1, 0.0))
    if ST_S:
        tl.store(part_row + c_sent, ls1 - ent_s / ss1)
    if ST_T:
        if FKL_SHARED:
            fkl1 = _kl_final(u_kd, inf_kd, mb, sb, sa)
        else:
            fkl1 = _kl_final(u_fkl, inf_fkl, mt1, st1, ss1)
        tl.store(part_row + c_fkl, fkl1)
        tl.store(part_row + c_agree, tl.where(arg_s == arg_t, 1.0, 0.0))
        tl.store(part_row + c_tent, lt1 - ent_t / st1)

    # ---- term value: online kinds now, the others after sweep 2 --------------------------
    value = 0.0
    if KIND == 1:
        value = _kl_final(u_kd, inf_kd, mb, sb, sa)
    if KIND == 2:
        value = _kl_final(u_kd, inf_kd, ma, sa, sb)
    if KIND == 3:
        value = _kl_final(u_kd, inf_kd, mc, sc, sa)
    # The gradient's row scalar sum_j h_j, from sweep 2. Since sum_i q_i = 1, q_i (phi_i - sum_j
    # q_j phi_j) does not change when phi shifts by a constant, so jsd, tvd and srkl shift phi to
    # vanish where p = 0: on confident (near one-hot) teachers the row scalar then carries no
    # cancellation, and the gradient keeps its accuracy relative to its own row.
    rs = 0.0
    if KIND >= 4:
        acc1 = 0.0
        acc2 = 0.0
        acc3 = 0.0
        for start in range(0, V, BLOCK_V):
            offs = start + lanes
            inside = offs < V
            zs = tl.load(zs_row + offs, mask=inside, other=_NEG_INF)
            zt = tl.load(zt_row + offs, mask=inside, other=_NEG_INF)
            lq = (zs * inv_t - ma) - lsa
            lp = (zt * inv_t - mb) - lsb
            q = tl.exp(lq)
            p = tl.exp(lp)
            if KIND == 4:  # jsd: KL(p || m) and KL(q || m), m = beta p + (1 - beta) q
                p_m = _log_over_mix(lq - lp, log_wp, log_wq)
                q_m = _log_over_mix(lp - lq, log_wq, log_wp)
                acc1 += tl.sum(tl.where(p == 0.0, 0.0, p * p_m), axis=0)
                acc2 += tl.sum(tl.where(q == 0.0, 0.0, q * q_m), axis=0)
                acc3 += tl.sum(tl.where(q == 0.0, 0.0, q * (q_m + log_wq)), axis=0)
            if KIND == 5:  # tvd: sum |p - q| and sum q (sign(q - p) - 1)
                sgn = tl.where(q > p, 1.0, tl.where(q < p, -1.0, 0.0))
                acc1 += tl.sum(tl.abs(p - q), axis=0)
                acc2 += tl.sum(q * (sgn - 1.0), axis=0)
            if KIND == 6:  # skl: KL(p || m), m = alpha p + (1 - alpha) q; and sum q p / m
                p_m = _log_over_mix(lq - lp, log_wp, log_wq)
                acc1 += tl.sum(tl.where(p == 0.0, 0.0, p * p_m), axis=0)
                acc2 += tl.sum(tl.where(p == 0.0, 0.0, q * tl.exp(p_m)), axis=0)
            if KIND == 7:  # srkl: KL(q || m), m = (1 - alpha) p + alpha q; and sum q phi
                q_m = _log_over_mix(lp - lq, log_wq, log_wp)
                phi = (q_m + log_wq) - k_par * (tl.exp(q_m) - 1.0 / k_par)
                acc1 += tl.sum(tl.where(q == 0.0, 0.0, q * q_m), axis=0)
                acc2 += tl.sum(tl.where(q == 0.0, 0.0, q * phi), axis=0)
        if KIND == 4:
            value = k_par * acc1 + (1.0 - k_par) * acc2
            rs = acc3
        if KIND == 5:
            value = 0.5 * acc1
            rs = 0.5 * acc2
        if KIND == 6:
            value = acc1
            rs = acc2
        if KIND == 7:
            value = acc1
            rs = acc2
    if KIND != 0:
        tl.store(part_row + col_kd, value * t_sq)

    # ---- last sweep: the gradient --------------------------------------------------------
    # dD/da_i = h_i - q_i * sum_j h_j (softmax Jacobian), h_i = q_i dD/dq_i; the loss adds
    # w * T**2 and a = zs / T adds 1 / T, hence grad_scale = w * T. Each kind's comment
    # gives h; the closed form below it is what is computed.
    if KD_GRAD or CE_GRAD:
        gin_row = gin_ptr + row * V
        gout_row = gout_ptr + row * V
        for start in range(0, V, BLOCK_V):
            offs = start + lanes
            inside = offs < V
            zs = tl.load(zs_row + offs, mask=inside, other=_NEG_INF)
            g = tl.zeros([BLOCK_V], dtype=tl.float32)
            if KD_GRAD:
                zt = tl.load(zt_row + offs, mask=inside, other=_NEG_INF)
                a = zs * inv_t
                b = zt * inv_t
                lq = (a - ma) - lsa
                lp = (b - mb) - lsb
                q = tl.exp(lq)
                p = tl.exp(lp)
                if KIND == 1:  # h = -p, sum h = -1
                    kd = q - p
                if KIND == 2:  # h = q (log q - log p + 1), sum h = D + 1
                    kd = tl.where(q == 0.0, 0.0, q * ((lq - lp) - value))
                if KIND == 3:  # target detached: h = -p_t
                    c_rel = (1.0 - k_par) * (a - a_mode) + k_par * (b - b_mode)
                    kd = q - tl.exp(c_rel - lsc)
                if KIND == 4:  # h = (1 - beta) q log(q / m)
                    q_m = _log_over_mix(lp - lq, log_wq, log_wp)
                    kd = (1.0 - k_par) * tl.where(q == 0.0, 0.0, q * ((q_m + log_wq) - rs))
                if KIND == 5:  # h = q sign(q - p) / 2
                    sgn = tl.where(q > p, 1.0, tl.where(q < p, -1.0, 0.0))
                    kd = q * (0.5 * (sgn - 1.0) - rs)
                if KIND == 6:  # h = -(1 - alpha) q p / m
                    p_m = _log_over_mix(lq - lp, log_wp, log_wq)
                    r = tl.where(p == 0.0, 0.0, tl.exp(p_m))
                    kd = (1.0 - k_par) * q * (rs - r)
                if KIND == 7:  # h = q (phi + 1), phi = log(q / m) - alpha q / m
                    q_m = _log_over_mix(lp - lq, log_wq, log_wp)
                    phi = (q_m + log_wq) - k_par * (tl.exp(q_m) - 1.0 / k_par)
                    kd = tl.where(q == 0.0, 0.0, q * (phi - rs))
                g = grad_scale * kd
            if CE_GRAD:
                q1 = tl.exp((zs - ms1) - ls1)
                g += ce_row * (q1 - tl.where(offs == lab_safe, 1.0, 0.0))
            if ACCUM:
                g += tl.load(gin_row + offs, mask=inside, other=0.0)
            tl.store(gout_row + offs, g, mask=inside)


@dataclass(frozen=True)
class _Launch:
    """One kernel launch: a distillation term (or none) plus, on the last one, ce and stats."""

    kind: int
    col: int
    inv_t: float
    t_sq: float
    grad_scale: float
    k_par: float
    log_wp: float
    log_wq: float
    same_t: bool
    kd_grad: bool


def _block_v(v: int, block_v: int | None) -> int:
    if block_v is not None:
        if block_v < 16 or block_v & (block_v - 1):
            raise ValueError(f"block_v must be a power of two >= 16, got {block_v}")
        return block_v
    # 2048-wide tiles over 8 warps: 8 floats per thread per stream, ~100 registers on sm_90
    # with every stream live, so two 256-thread programs fit per SM without spilling.
    return max(16, min(2048, triton.next_power_of_2(v)))


def _check(zs: Tensor, zt: Tensor | None, labels: Tensor | None, grad_out: Tensor | None) -> None:
    if zs.dim() != 2 or zs.dtype != torch.float32 or not zs.is_contiguous():
        raise ValueError("student_logits must be a contiguous float32 [N, V] tensor")
    if zt is not None and (zt.shape != zs.shape or zt.dtype != torch.float32):
        raise ValueError("teacher_logits must be float32 with the student's shape")
    if zt is not None and not zt.is_contiguous():
        raise ValueError("teacher_logits must be contiguous")
    if labels is not None and (labels.shape != zs.shape[:1] or labels.dtype != torch.int64):
        raise ValueError("labels must be an int64 [N] tensor")
    if grad_out is not None and (
        grad_out.shape != zs.shape
        or grad_out.dtype != torch.float32
        or not grad_out.is_contiguous()
    ):
        raise ValueError("grad_out must be a contiguous float32 tensor shaped like the logits")


def rows_loss_and_grad(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    terms: Sequence[KernelTerm],
    stat_names: Sequence[str],
    want_grad: bool,
    grad_out: Tensor | None = None,
    *,
    block_v: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-term sums `[K]`, stats `[S]` and dL/d(student_logits) for one chunk of rows.

    L = sum_k w_k * sums[k] over terms with w_k != 0 (zero-weight terms are only reported).
    `stat_names` is a subset of `STAT_NAMES`, at T = 1. The gradient goes to `grad_out` when
    given (it may be `student_logits` itself: the logits are then overwritten), else to a new
    tensor; None when `want_grad` is False. Pure function: no autograd, no host sync.
    `block_v` (a power of two) overrides the vocabulary tile width, for tests.
    """
    zs, zt = student_logits, teacher_logits
    _check(zs, zt, labels, grad_out)
    unknown = [s for s in stat_names if s not in STAT_NAMES]
    if unknown or len(set(stat_names)) != len(stat_names):
        raise ValueError(f"stat_names must be distinct names from {STAT_NAMES}, got {stat_names}")
    n, v = zs.shape
    dev = zs.device
    has_ce = any(t.code == CE for t in terms)
    if any(t.code != CE for t in terms) and zt is None:
        raise ValueError("a distillation term needs teacher_logits")
    nll_s = has_ce or "student_nll" in stat_names
    nll_t = "teacher_nll" in stat_names
    st_s = "student_entropy" in stat_names
    st_t = any(s in stat_names for s in ("fkl", "agree", "teacher_entropy"))
    if (st_t or nll_t) and zt is None:
        raise ValueError("teacher stats need teacher_logits")
    if (nll_s or nll_t) and labels is None:
        raise ValueError("ce terms and nll stats need labels")
    ce_scale = float(sum(t.weight for t in terms if t.code == CE and t.weight != 0.0))
    ce_grad = want_grad and has_ce and ce_scale != 0.0

    # Partial-buffer columns: term k -> k, stat j -> K + j, then one write-only scratch column,
    # so the results are plain slices (an index tensor would need a host-to-device copy).
    k_terms, trash = len(terms), len(terms) + len(stat_names)
    stat_col = {name: k_terms + j for j, name in enumerate(stat_names)}
    ce_cols = [k for k, t in enumerate(terms) if t.code == CE]
    c_snll = stat_col.get("student_nll", ce_cols[0] if ce_cols else trash)
    launches: list[_Launch] = []
    for k, term in enumerate(terms):
        if term.code == CE:
            continue
        if term.code == ZERO:
            continue  # its column stays 0
        if not NONE < term.code <= SRKL:
            raise ValueError(f"term {k}: unknown kernel kind code {term.code}")
        temp = float(term.temperature)
        launches.append(
            _Launch(
                kind=int(term.code),
                col=k,
                inv_t=1.0 / temp,
                t_sq=temp * temp,
                grad_scale=float(term.weight) * temp,
                k_par=float(term.k_par),
                log_wp=float(term.log_wp),
                log_wq=float(term.log_wq),
                same_t=temp == 1.0,
                kd_grad=want_grad and term.weight != 0.0,
            )
        )
    # Gradient writers last, so every launch before them still sees the original logits.
    launches.sort(key=lambda la: la.kd_grad)
    extras = nll_s or nll_t or st_s or st_t or ce_grad
    if not launches and extras:
        launches.append(_Launch(NONE, trash, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, False, False))

    part = torch.zeros(n, trash + 1, dtype=torch.float32, device=dev)
    grad = None
    if want_grad:
        grad = grad_out if grad_out is not None else torch.empty_like(zs)
    writers = [
        i for i, la in enumerate(launches) if la.kd_grad or (ce_grad and i == len(launches) - 1)
    ]
    in_place = (
        grad is not None and grad.untyped_storage().data_ptr() == zs.untyped_storage().data_ptr()
    )
    scratch = None
    if grad is not None and len(writers) > 1:
        scratch = torch.empty_like(zs) if in_place else grad

    bv = _block_v(v, block_v)
    warps = max(1, min(8, bv // 256))
    dummy_lab = labels if labels is not None else torch.zeros(1, dtype=torch.int64, device=dev)
    for i, la in enumerate(launches):
        if n == 0:
            break
        last = i == len(launches) - 1
        write = i in writers
        accum = write and writers.index(i) > 0
        if not write:
            gin = gout = zs  # never touched
        else:
            gout = grad if i == writers[-1] else scratch
            gin = scratch if accum else gout
        has_kd = la.kind != NONE
        need_s1 = last and (nll_s or st_s or st_t or ce_grad)
        need_t1 = last and (st_t or nll_t)
        _rows_kernel[(n,)](
            zs,
            zt if zt is not None else zs,
            dummy_lab,
            gin,
            gout,
            part,
            v,
            part.stride(0),
            la.col,
            c_snll,
            stat_col.get("student_entropy", trash),
            stat_col.get("fkl", trash),
            stat_col.get("agree", trash),
            stat_col.get("teacher_entropy", trash),
            stat_col.get("teacher_nll", trash),
            la.inv_t,
            la.t_sq,
            la.grad_scale,
            ce_scale,
            la.k_par,
            la.log_wp,
            la.log_wq,
            KIND=la.kind,
            SAME_T=has_kd and la.same_t,
            HAS_T=has_kd or need_t1,
            NEED_S1=need_s1,
            NEED_T1=need_t1,
            FKL_SHARED=last and st_t and la.kind == FKL and la.same_t,
            NLL_S=last and nll_s,
            NLL_T=last and nll_t,
            ST_S=last and st_s,
            ST_T=last and st_t,
            KD_GRAD=la.kd_grad,
            CE_GRAD=last and ce_grad,
            ACCUM=accum,
            BLOCK_V=bv,
            num_warps=warps,
        )
    if grad is not None and not writers:
        grad.zero_()

    totals = part.sum(dim=0)
    for k in ce_cols:  # every ce term (and student_nll) holds the same sum
        if k != c_snll:
            totals[k] = totals[c_snll]
    if "tokens" in stat_col:
        totals[stat_col["tokens"]] = float(n)
    return totals[:k_terms], totals[k_terms:trash], grad
