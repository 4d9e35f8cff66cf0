"""Float64 references for the cross-tokenizer terms, written the plainest way possible.

Full logits for every row, then one Python loop over chunks with explicit sums, sorts and
vocabulary loops. Shares no code with `anydistill.losses.cross`, so agreement is a real check.
Rows, targets and chunk ids come as plain lists.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def log_probs(hidden, weight, bias, temperature: float = 1.0) -> torch.Tensor:
    z = hidden.to(F64) @ weight.to(F64).T
    if bias is not None:
        z = z + bias.to(F64)
    return torch.log_softmax(z / temperature, dim=-1)


def chunk_members(chunks: list[int], targets: list[int], n: int) -> list[list[int]]:
    """Rows of each chunk (rows with a target only), in order."""
    out: list[list[int]] = [[] for _ in range(n)]
    for r, (c, y) in enumerate(zip(chunks, targets, strict=True)):
        if c >= 0 and y != -100:
            out[c].append(r)
    return out


def _l1m(x):
    return torch.log(1 - torch.exp(x))


def ref_alm(ls, lt, s, t, n, tau=100.0, eps=1e-6, reverse=False, debias=None):
    """s, t: dicts with 'chunk', 'target', 'offsets' lists; ls/lt: float64 log-probs.

    debias: None or (teacher_space ids, student_space ids, threshold, chunk_offsets).
    """
    s_rows = chunk_members(s["chunk"], s["target"], n)
    t_rows = chunk_members(t["chunk"], t["target"], n)
    a_s = [
        sum((ls[r, s["target"][r]] for r in s_rows[c]), torch.zeros((), dtype=F64))
        for c in range(n)
    ]
    a_t = [
        sum((lt[r, t["target"][r]] for r in t_rows[c]), torch.zeros((), dtype=F64))
        for c in range(n)
    ]
    valid = [bool(s_rows[c]) and bool(t_rows[c]) for c in range(n)]
    pairs = []  # (teacher log-likelihood, student log-likelihood)
    if debias is None:
        pairs = [(a_t[c], a_s[c]) for c in range(n) if valid[c]]
    else:
        t_space, s_space, threshold, chunk_offsets = debias

        def pair_end(offsets, row):
            for k in range(len(offsets) - 1):
                if offsets[k] <= row < offsets[k + 1]:
                    return offsets[k + 1]
            raise AssertionError

        for k in range(len(chunk_offsets) - 1):
            acc_t = acc_s = None
            for c in range(chunk_offsets[k], chunk_offsets[k + 1]):
                if not valid[c]:
                    acc_t = acc_s = None
                    continue
                acc_t = a_t[c] if acc_t is None else acc_t + a_t[c]
                acc_s = a_s[c] if acc_s is None else acc_s + a_s[c]
                nt, ns = t_rows[c][-1] + 1, s_rows[c][-1] + 1
                if nt >= pair_end(t["offsets"], nt - 1) or ns >= pair_end(s["offsets"], ns - 1):
                    continue
                sp_t = torch.logsumexp(lt[nt, t_space], 0)
                sp_s = torch.logsumexp(ls[ns, s_space], 0)
                if math.exp(float(sp_t)) > threshold:
                    pairs.append((acc_t + sp_t, acc_s + sp_s))
                    acc_t = acc_s = None
    total = torch.zeros((), dtype=F64)
    for at, as_ in pairs:
        x, y = at.detach() / tau - eps, as_ / tau - eps
        if reverse:
            x, y = y, x
        p = torch.exp(x)
        total = total + p * (x - y) + (1 - p) * (_l1m(x) - _l1m(y))
    return total, len(pairs)


def _one_to_one(s, t, n):
    s_rows = chunk_members(s["chunk"], s["target"], n)
    t_rows = chunk_members(t["chunk"], t["target"], n)
    return [(s_rows[c][0], t_rows[c][0]) for c in range(n) if len(s_rows[c]) == len(t_rows[c]) == 1]


def _sorted_l1(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    a = sorted(p.unbind(), key=lambda v: -float(v.detach()))
    b = sorted(q.unbind(), key=lambda v: -float(v.detach()))
    zero = torch.zeros((), dtype=F64)
    size = max(len(a), len(b))
    a += [zero] * (size - len(a))
    b += [zero] * (size - len(b))
    return sum((abs(x - y) for x, y in zip(a, b, strict=True)), zero)


def ref_uld(ls, lt, s, t, n):
    total = torch.zeros((), dtype=F64)
    pairs = _one_to_one(s, t, n)
    for rs, rt in pairs:
        total = total + _sorted_l1(ls[rs].exp(), lt[rt].exp().detach())
    return total, len(pairs)


def ref_mined(ls, lt, s, t, n, mapping):
    total = torch.zeros((), dtype=F64)
    pairs = _one_to_one(s, t, n)
    for rs, rt in pairs:
        p = lt[rt].exp().detach()
        mapped = [torch.zeros((), dtype=F64) for _ in range(ls.shape[1])]
        for v in range(len(p)):
            mapped[int(mapping[v])] = mapped[int(mapping[v])] + p[v]
        for w, pw in enumerate(mapped):
            if float(pw.detach()) > 0:
                total = total + pw * (torch.log(pw) - ls[rs, w])
    return total, len(pairs)


def _jsd(p: list, q: list, beta: float) -> torch.Tensor:
    out = torch.zeros((), dtype=F64)
    for a, b in zip(p, q, strict=True):
        m = beta * a + (1 - beta) * b
        if float(a.detach()) > 0:
            out = out + beta * a * torch.log(a / m)
        if float(b.detach()) > 0:
            out = out + (1 - beta) * b * torch.log(b / m)
    return out


def ref_gold(ls, lt, s, t, n, matched, beta=0.5, w_m=None, w_u=None):
    """matched: list of (teacher id, student id); ls/lt at the term's temperature."""
    s_rows = chunk_members(s["chunk"], s["target"], n)
    t_rows = chunk_members(t["chunk"], t["target"], n)
    vt, vs = lt.shape[1], ls.shape[1]
    w_m = len(matched) / vt if w_m is None else w_m
    w_u = 1 - w_m if w_u is None else w_u
    mt = {a for a, _ in matched}
    ms = {b for _, b in matched}
    total = torch.zeros((), dtype=F64)
    used = 0
    for c in range(n):
        if not s_rows[c] or not t_rows[c]:
            continue
        used += 1
        p = lt[t_rows[c][0]].exp().detach()
        for r in t_rows[c][1:]:
            p = p * lt[r, t["target"][r]].exp().detach()
        q = ls[s_rows[c][0]].exp()
        for r in s_rows[c][1:]:
            q = q * ls[r, s["target"][r]].exp()
        jsd = _jsd([p[a] for a, _ in matched], [q[b] for _, b in matched], beta)
        l1 = _sorted_l1(
            torch.stack([p[v] for v in range(vt) if v not in mt] or [torch.zeros((), dtype=F64)]),
            torch.stack([q[w] for w in range(vs) if w not in ms] or [torch.zeros((), dtype=F64)]),
        )
        total = total + w_m * jsd + w_u * l1
    return total, used


def edit_distance(a: bytes, b: bytes) -> int:
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i]
        for j in range(1, len(b) + 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])))
        prev = cur
    return prev[-1]


def brute_mined(t_strings: list[bytes], s_strings: list[bytes]) -> list[int]:
    """Every pair scored; ties to the smallest student id."""
    out = []
    for a in t_strings:
        dists = [edit_distance(a, b) for b in s_strings]
        out.append(dists.index(min(dists)))
    return out
