"""Every divergence through every engine: relative error <= 1e-5 in float32 vs float64.

The reference sees exactly the float32 values the engine sees (promoted to float64), so the
measured error is the engine's own arithmetic. Errors are norm-wise: |a - b| / |b| over the
loss and over each gradient tensor.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from reference_divergences import ref_logits, ref_loss

from anydistill.losses.engine import Head, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm

TOL = 1e-5
N, VOCAB = 29, 101  # V prime: never a multiple of a block or tile size
KINDS = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("tvd", {}),
    ("skl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.1}),
    ("taid", {"taid_t": 0.4}),
    ("ce", {}),
]
ENGINES = [("naive", None), ("torch", 7), ("torch", None)]
if importlib.util.find_spec("triton") is not None:  # on CPU: Triton's interpreter (conftest)
    ENGINES.append(("triton", 7))


def _case(kind: str, extreme: bool, seed: int = 0):
    """Hidden states, heads (student padded with garbage rows), labels and a ragged mask."""
    g = torch.Generator().manual_seed(seed)
    if extreme:
        # Identity heads: the logits are the hidden states exactly, at |z| ~ 1e4.
        hs = torch.randn(N, VOCAB, generator=g) * 1e4
        ht = torch.randn(N, VOCAB, generator=g) * 1e4
        ht[:, :5] = hs[:, :5]  # some rows share their top tokens, some do not
        s_w = torch.cat([torch.eye(VOCAB), torch.full((3, VOCAB), 1e4)])
        t_w = torch.eye(VOCAB)
        s_b = t_b = None
    else:
        hs = torch.randn(N, 24, generator=g)
        ht = torch.randn(N, 40, generator=g)
        s_w = torch.randn(VOCAB + 3, 24, generator=g) * 0.6
        s_w[VOCAB:] = 1e4  # padded rows that would dominate if not sliced away
        t_w = torch.randn(VOCAB, 40, generator=g) * 0.8
        s_b = torch.randn(VOCAB + 3, generator=g) * 0.1
        t_b = torch.randn(VOCAB, generator=g) * 0.1
    labels = torch.randint(0, VOCAB, (N,), generator=g)
    labels[[1, 8]] = -100
    mask = torch.rand(N, generator=g) > 0.25
    mask[[0, 3]] = False
    return hs, s_w, s_b, ht, t_w, t_b, labels, mask


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("extreme", [False, True], ids=["random", "extreme"])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize(("kind", "params"), KINDS, ids=lambda x: str(x))
@pytest.mark.parametrize(("engine", "chunk"), ENGINES, ids=lambda x: str(x))
def test_relative_error(engine, chunk, kind, params, temperature, extreme):
    if kind == "ce" and temperature != 1.0:
        pytest.skip("ce is always at T = 1")
    hs, s_w, s_b, ht, t_w, t_b, labels, mask = _case(kind, extreme)
    term = ActiveTerm(kind, kind, weight=0.7, temperature=temperature, **params)
    leaves = [x.clone().requires_grad_(True) if x is not None else None for x in (hs, s_w, s_b)]
    out = distill_loss(
        leaves[0],
        Head(leaves[1], leaves[2]),
        TeacherSignal(ht, Head(t_w, t_b)),
        labels,
        mask,
        [term],
        vocab_size=VOCAB,
        normalizer=17.0,
        engine=engine,
        chunk_size=chunk,
    )
    out.loss.backward()

    refs = [x.detach().double().requires_grad_(True) if x is not None else None for x in leaves]
    zs = ref_logits(refs[0], refs[1], refs[2], VOCAB)
    zt = ref_logits(ht.double(), t_w.double(), t_b.double() if t_b is not None else None, VOCAB)
    spec = dict(name=kind, kind=kind, weight=0.7, temperature=temperature, **params)
    ref, _ = ref_loss(zs, zt, labels, mask, [spec], 17.0)
    ref.backward()

    assert _rel(out.loss.detach(), ref.detach()) <= TOL
    for leaf, r in zip(leaves, refs, strict=True):
        if leaf is not None:
            assert _rel(leaf.grad, r.grad) <= TOL, f"grad of {tuple(leaf.shape)}"
