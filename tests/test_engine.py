"""The loss engine (naive and chunked torch) against the float64 reference on full logits."""

from __future__ import annotations

import gc
import importlib.util
import weakref

import pytest
import torch
from reference_divergences import ref_logits, ref_loss, ref_stats

from anydistill.losses.engine import Head, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm

N, HS, HT, VOCAB = 23, 16, 24, 97
S_ROWS, T_ROWS = 101, 110  # both heads padded past the real vocabulary, differently

ALL_TERMS = [
    ActiveTerm("fkl", "fkl", weight=0.5, temperature=2.0),
    ActiveTerm("rkl", "rkl", weight=0.25),
    ActiveTerm("jsd", "jsd", weight=0.7, temperature=1.5, beta=0.3),
    ActiveTerm("tvd", "tvd", weight=1.1),
    ActiveTerm("skl", "skl", weight=0.4, alpha=0.2),
    ActiveTerm("srkl", "srkl", weight=0.6, temperature=0.8, alpha=0.1),
    ActiveTerm("taid", "taid", weight=0.9, temperature=2.0, taid_t=0.6),
    ActiveTerm("ce", "ce", weight=0.3),
]


def _as_ref(terms: list[ActiveTerm]) -> list[dict]:
    return [
        dict(
            name=t.name,
            kind=t.kind,
            weight=t.weight,
            temperature=t.temperature,
            beta=t.beta,
            alpha=t.alpha,
            taid_t=t.taid_t,
        )
        for t in terms
    ]


def _problem(seed: int = 0, softcap: float | None = 30.0, scale: float = 0.7):
    """Random float64 tensors for one micro-batch; padded head rows hold huge garbage."""
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    s_w = torch.randn(S_ROWS, HS, generator=g, dtype=d) * 0.5
    t_w = torch.randn(T_ROWS, HT, generator=g, dtype=d) * 0.5
    s_w[VOCAB:] = 1e4  # would dominate every softmax if not sliced away
    t_w[VOCAB:] = -1e4
    p = {
        "s_hidden": torch.randn(N, HS, generator=g, dtype=d),
        "s_weight": s_w,
        "s_bias": torch.randn(S_ROWS, generator=g, dtype=d) * 0.1,
        "t_hidden": torch.randn(N, HT, generator=g, dtype=d),
        "t_weight": t_w,
        "t_bias": torch.randn(T_ROWS, generator=g, dtype=d) * 0.1,
        "labels": torch.randint(0, VOCAB, (N,), generator=g),
        "mask": torch.rand(N, generator=g) > 0.3,
        "softcap": softcap,
        "scale": scale,
    }
    p["labels"][[2, 9]] = -100
    p["mask"][[0, 4]] = False
    return p


def _run(
    p, terms, engine, chunk_size=5, normalizer=37.0, teacher=True, labels=True, dtype=torch.float32
):
    """Production call with fresh float32 leaves; returns (output, leaves)."""
    leaves = {
        k: p[k].to(dtype).clone().requires_grad_(True) for k in ("s_hidden", "s_weight", "s_bias")
    }
    s_head = Head(
        leaves["s_weight"], leaves["s_bias"], logit_scale=p["scale"], softcap=p["softcap"]
    )
    signal = None
    if teacher:
        t_head = Head(p["t_weight"].to(dtype), p["t_bias"].to(dtype), logit_scale=1.3)
        signal = TeacherSignal(hidden=p["t_hidden"].to(dtype), head=t_head)
    out = distill_loss(
        leaves["s_hidden"],
        s_head,
        signal,
        p["labels"] if labels else None,
        p["mask"],
        terms,
        vocab_size=VOCAB,
        normalizer=normalizer,
        engine=engine,
        chunk_size=chunk_size,
    )
    return out, leaves


def _reference(p, terms, normalizer=37.0, teacher=True, labels=True):
    leaves = {k: p[k].clone().requires_grad_(True) for k in ("s_hidden", "s_weight", "s_bias")}
    zs = ref_logits(
        leaves["s_hidden"],
        leaves["s_weight"],
        leaves["s_bias"],
        VOCAB,
        scale=p["scale"],
        cap=p["softcap"],
    )
    zt = None
    if teacher:
        zt = ref_logits(p["t_hidden"], p["t_weight"], p["t_bias"], VOCAB, scale=1.3)
    y = p["labels"] if labels else None
    loss, values = ref_loss(zs, zt, y, p["mask"], _as_ref(terms), normalizer)
    loss.backward()
    stats = ref_stats(zs.detach(), zt, y, p["mask"])
    return loss.detach(), values, stats, leaves


def _close(a, b, rtol=1e-4, atol=1e-6):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("engine", "chunk_size"),
    [("naive", 1024), ("torch", 5), ("torch", 4), ("torch", 1000)]
    + ([("triton", 6)] if importlib.util.find_spec("triton") else []),
)
@pytest.mark.parametrize("softcap", [30.0, None])
def test_engine_matches_reference(engine, chunk_size, softcap):
    p = _problem(softcap=softcap)
    out, leaves = _run(p, ALL_TERMS, engine, chunk_size=chunk_size)
    loss, values, _, ref_leaves = _reference(p, ALL_TERMS)
    _close(out.loss.detach(), loss)
    assert set(out.terms) == set(values)
    for name, value in values.items():
        _close(out.terms[name], value)
        assert not out.terms[name].requires_grad
    out.loss.backward()
    for key in ("s_hidden", "s_weight", "s_bias"):
        _close(leaves[key].grad, ref_leaves[key].grad, atol=1e-6)
    # Padded rows beyond the real vocabulary never influence anything.
    assert torch.all(leaves["s_weight"].grad[VOCAB:] == 0)
    assert torch.all(leaves["s_bias"].grad[VOCAB:] == 0)
    # Rows with mask False get no gradient.
    assert torch.all(leaves["s_hidden"].grad[~p["mask"]] == 0)


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd", "tvd", "skl", "srkl", "taid"])
def test_each_divergence_alone_through_engine(kind):
    p = _problem(seed=1, softcap=None, scale=1.0)
    terms = [ActiveTerm(kind, kind, weight=1.0, temperature=1.7, beta=0.6, alpha=0.3, taid_t=0.5)]
    out, leaves = _run(p, terms, "torch", chunk_size=6, labels=False)
    loss, _, _, ref_leaves = _reference(p, terms, labels=False)
    _close(out.loss.detach(), loss)
    out.loss.backward()
    _close(leaves["s_hidden"].grad, ref_leaves["s_hidden"].grad)
    _close(leaves["s_weight"].grad, ref_leaves["s_weight"].grad)


@pytest.mark.parametrize("engine", ["naive", "torch"])
def test_stats(engine):
    p = _problem(seed=2)
    out, _ = _run(p, ALL_TERMS, engine)
    _, _, stats, _ = _reference(p, ALL_TERMS)
    assert set(out.stats) == set(stats)
    for key, value in stats.items():
        assert not out.stats[key].requires_grad
        _close(out.stats[key], torch.tensor(value), rtol=1e-4, atol=1e-4)
    assert out.stats["tokens"].item() == int(p["mask"].sum())


def test_stats_without_teacher_or_labels():
    p = _problem(seed=3)
    ce = [ActiveTerm("ce", "ce", weight=1.0)]
    out, _ = _run(p, ce, "torch", teacher=False)
    assert set(out.stats) == {"tokens", "student_entropy", "student_nll"}
    fkl = [ActiveTerm("fkl", "fkl", weight=1.0)]
    out, _ = _run(p, fkl, "torch", labels=False)
    assert set(out.stats) == {"tokens", "student_entropy", "fkl", "agree", "teacher_entropy"}
    # The fkl stat is KL(p||q) at T=1, equal to an fkl term at T=1 times the normalizer.
    _close(out.stats["fkl"], out.terms["fkl"] * 37.0, rtol=1e-5)


def test_normalizer_semantics():
    p = _problem(seed=4)
    terms = [ActiveTerm("fkl", "fkl", weight=2.0), ActiveTerm("ce", "ce", weight=0.5)]
    one, _ = _run(p, terms, "torch", normalizer=1.0)
    ten, _ = _run(p, terms, "torch", normalizer=torch.tensor(10.0))
    # loss is a plain sum divided by the normalizer: not a per-micro-batch mean.
    _close(ten.loss.detach(), one.loss.detach() / 10.0, rtol=1e-6)
    expected = 2.0 * one.terms["fkl"] + 0.5 * one.terms["ce"]
    _close(one.loss.detach(), expected, rtol=1e-6)
    _close(ten.terms["ce"], one.terms["ce"] / 10.0, rtol=1e-6)
    # Splitting a batch in two micro-batches with the global normalizer sums to the whole.
    first, second = p["mask"].clone(), p["mask"].clone()
    first[N // 2 :] = False
    second[: N // 2] = False
    halves = [_run({**p, "mask": m}, terms, "torch", normalizer=7.0)[0] for m in (first, second)]
    whole, _ = _run(p, terms, "torch", normalizer=7.0)
    _close(halves[0].loss.detach() + halves[1].loss.detach(), whole.loss.detach(), rtol=1e-5)


def test_zero_weight_silences_a_nonfinite_term_but_reports_it():
    p = _problem(seed=5)
    row = int(p["mask"].nonzero()[0])
    p["t_hidden"] = p["t_hidden"].clone()
    p["t_hidden"][row] = float("nan")  # a broken teacher row that the mask selects
    terms = [ActiveTerm("fkl", "fkl", weight=1.0), ActiveTerm("ce", "ce", weight=1.0)]
    out, _ = _run(p, terms, "torch")
    assert torch.isnan(out.loss)  # reported, not raised
    assert torch.isnan(out.terms["fkl"]) and torch.isfinite(out.terms["ce"])
    muted = [ActiveTerm("fkl", "fkl", weight=0.0), ActiveTerm("ce", "ce", weight=1.0)]
    out, leaves = _run(p, muted, "torch")
    assert torch.isfinite(out.loss) and torch.isnan(out.terms["fkl"])
    out.loss.backward()
    assert torch.isfinite(leaves["s_weight"].grad).all()


def test_empty_mask_gives_zero_loss_that_backpropagates():
    p = _problem(seed=6)
    p["mask"] = torch.zeros(N, dtype=torch.bool)
    for engine in ("naive", "torch"):
        out, leaves = _run(p, ALL_TERMS, engine)
        assert out.loss.item() == 0.0 and out.stats["tokens"].item() == 0
        out.loss.backward()
        assert torch.all(leaves["s_weight"].grad == 0)


def test_bf16_inputs_are_upcast_and_autocast_only_lowers_the_head_matmuls():
    p = _problem(seed=7)
    # bf16 hidden states and head: the math must equal float32 math on the same values.
    p16 = {
        k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in p.items()
    }
    out16, _ = _run(p16, ALL_TERMS, "torch", dtype=torch.bfloat16)
    out32, _ = _run(p16, ALL_TERMS, "torch", dtype=torch.float32)
    assert out16.loss.dtype == torch.float32
    _close(out16.loss.detach(), out32.loss.detach(), rtol=1e-5)
    # Under bf16 autocast (precision: bf16) the head matmuls take bf16 operands, as autocast
    # does for the model's other matmuls: within 1e-2 of float32, the loss still float32 and
    # the same as asking for bf16 head matmuls outside autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, _ = _run(p, ALL_TERMS, "torch")
    plain, _ = _run(p, ALL_TERMS, "torch")
    assert auto.loss.dtype == torch.float32
    _close(auto.loss.detach(), plain.loss.detach(), rtol=1e-2)
    assert auto.loss.item() != plain.loss.item()
    asked = _run_with(p, ALL_TERMS, head_dtype=torch.bfloat16)
    assert asked.loss.item() == auto.loss.item()


def _run_with(p, terms, **kwargs):
    """`_run`'s production call with extra keywords for distill_loss."""
    leaves = {k: p[k].float().clone().requires_grad_(True) for k in ("s_hidden", "s_weight")}
    s_head = Head(leaves["s_weight"], p["s_bias"].float(), logit_scale=p["scale"],
                  softcap=p["softcap"])  # fmt: skip
    t_head = Head(p["t_weight"].float(), p["t_bias"].float(), logit_scale=1.3)
    signal = TeacherSignal(hidden=p["t_hidden"].float(), head=t_head)
    return distill_loss(
        leaves["s_hidden"], s_head, signal, p["labels"], p["mask"], terms, vocab_size=VOCAB,
        normalizer=37.0, engine="torch", chunk_size=5, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("engine", ["naive", "torch"])
def test_bf16_head_matmuls_stay_within_1e_2_of_float64(engine):
    """Loss and gradients with bf16 head operands against the float64 reference."""
    p = _problem(seed=11)
    ref_loss_value, _, _, ref_leaves = _reference(p, ALL_TERMS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, leaves = _run(p, ALL_TERMS, engine)
    out.loss.backward()
    _close(out.loss.detach(), ref_loss_value, rtol=1e-2, atol=1e-3)
    for k in ("s_hidden", "s_weight"):
        err = (leaves[k].grad.double() - ref_leaves[k].grad).norm() / ref_leaves[k].grad.norm()
        assert err < 1e-2, (k, float(err))


@pytest.mark.parametrize("engine", ["naive", "torch"])
def test_a_frozen_head_gets_no_gradient_and_changes_nothing_else(engine):
    p = _problem(seed=12)
    trained, trained_leaves = _run(p, ALL_TERMS, engine)
    trained.loss.backward()
    leaves = {k: p[k].float().clone() for k in ("s_hidden", "s_weight", "s_bias")}
    leaves["s_hidden"].requires_grad_(True)
    s_head = Head(leaves["s_weight"], leaves["s_bias"], logit_scale=p["scale"],
                  softcap=p["softcap"])  # fmt: skip
    t_head = Head(p["t_weight"].float(), p["t_bias"].float(), logit_scale=1.3)
    signal = TeacherSignal(hidden=p["t_hidden"].float(), head=t_head)
    frozen = distill_loss(
        leaves["s_hidden"], s_head, signal, p["labels"], p["mask"], ALL_TERMS, vocab_size=VOCAB,
        normalizer=37.0, engine=engine, chunk_size=5,
    )  # fmt: skip
    frozen.loss.backward()
    assert leaves["s_weight"].grad is None and leaves["s_bias"].grad is None
    assert frozen.loss.item() == trained.loss.item()
    torch.testing.assert_close(leaves["s_hidden"].grad, trained_leaves["s_hidden"].grad)


def test_chunked_engine_keeps_no_full_logits_alive():
    """After the forward, naive's graph holds [N, V] logits; torch's holds no logits at all."""
    p = _problem(seed=8)

    def live_logit_blocks(engine: str) -> list[tuple[int, ...]]:
        saved = []

        def pack(t):
            saved.append(weakref.ref(t))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = _run(p, ALL_TERMS, engine, chunk_size=4)
        gc.collect()
        alive = [ref() for ref in saved]
        shapes = [tuple(t.shape) for t in alive if t is not None]
        del out
        return [s for s in shapes if len(s) == 2 and s[1] == VOCAB]

    rows = int(p["mask"].sum())
    assert (rows, VOCAB) in live_logit_blocks("naive")
    # Blocks are differentiated inside the forward; their graphs die with them.
    assert live_logit_blocks("torch") == []


def test_errors():
    p = _problem(seed=9)
    with pytest.raises(ValueError, match="needs a teacher"):
        _run(p, [ActiveTerm("jsd", "jsd", weight=1.0)], "torch", teacher=False)
    with pytest.raises(ValueError, match="needs labels"):
        _run(p, [ActiveTerm("ce", "ce", weight=1.0)], "torch", labels=False)
    with pytest.raises(ValueError, match="unknown loss engine 'fast'"):
        _run(p, ALL_TERMS, "fast")
    with pytest.raises(ValueError, match="at least one term"):
        _run(p, [], "torch")
    small = {**p, "s_weight": p["s_weight"][:50], "s_bias": p["s_bias"][:50]}
    with pytest.raises(ValueError, match="student head has 50 rows"):
        _run(small, ALL_TERMS, "torch")
