"""Cross-tokenizer terms (alm, uld, gold_hybrid, mined): float64 references on random chunk
structures, vanishing loss for one model against itself, finite positive losses between two
tokenizer families trained here, and the MinED map against brute force."""

from __future__ import annotations

import random
import weakref

import pytest
import torch
from reference_cross import (
    brute_mined,
    edit_distance,
    log_probs,
    ref_alm,
    ref_gold,
    ref_mined,
    ref_uld,
)
from test_align import train_tokenizers

from anydistill.align import token_bytes
from anydistill.losses.cross import (
    CROSS_TERMS,
    CrossBatch,
    build_cross_batch,
    compute_mined_map,
    cross_loss,
    mined_map,
    prepare_cross_params,
    space_mask,
    vocab_intersection,
)
from anydistill.losses.cross.vocab import mined_from_strings, vocab_strings
from anydistill.losses.engine import Head

KINDS = list(CROSS_TERMS)


@pytest.fixture(scope="module")
def toks():
    return train_tokenizers()


# ---- random problems against the float64 reference --------------------------------------


def _side_rows(rng: random.Random, counts: list[int], vocab: int) -> dict:
    """Rows of one pair: chunk k gets counts[k] rows, with masked rows sprinkled in."""
    chunk, target = [-1], [rng.randrange(vocab)]  # like a bos row predicting a dropped chunk
    for k, n in enumerate(counts):
        for _ in range(n):
            chunk.append(k)
            target.append(rng.randrange(vocab))
        if rng.random() < 0.2:
            chunk.append(-1)
            target.append(rng.randrange(vocab))
    chunk.append(-1)
    target.append(-100)  # the last position predicts nothing
    return {"chunk": chunk, "target": target}


def _problem(seed: int, vs: int = 11, vt: int = 13, pairs: int = 2):
    rng = random.Random(seed)
    s_chunk, s_target, t_chunk, t_target = [], [], [], []
    s_off, t_off, c_off = [0], [0], [0]
    for _ in range(pairs):
        k = rng.randint(4, 8)
        cs = [rng.choice([1, 1, 2, 3]) for _ in range(k)]
        ct = [rng.choice([1, 1, 2, 3]) for _ in range(k)]
        if k > 5:
            cs[2] = 0  # a chunk with no student row: ignored
        ss, tt = _side_rows(rng, cs, vs), _side_rows(rng, ct, vt)
        s_chunk += [c + c_off[-1] if c >= 0 else -1 for c in ss["chunk"]]
        t_chunk += [c + c_off[-1] if c >= 0 else -1 for c in tt["chunk"]]
        s_target += ss["target"]
        t_target += tt["target"]
        s_off.append(len(s_chunk))
        t_off.append(len(t_chunk))
        c_off.append(c_off[-1] + k)
    g = torch.Generator().manual_seed(seed)
    hs, ht = 5, 6
    student = {
        "hidden": torch.randn(len(s_chunk), hs, generator=g).requires_grad_(),
        "weight": torch.randn(vs, hs, generator=g).requires_grad_(),
        "bias": (0.5 * torch.randn(vs, generator=g)).requires_grad_(),
    }
    teacher = {
        "hidden": torch.randn(len(t_chunk), ht, generator=g),
        "weight": 1.5 * torch.randn(vt, ht, generator=g),
        "bias": 0.5 * torch.randn(vt, generator=g),
    }
    s = {"chunk": s_chunk, "target": s_target, "offsets": s_off}
    t = {"chunk": t_chunk, "target": t_target, "offsets": t_off}
    return s, t, c_off, student, teacher


def _batch(s, t, c_off, student, teacher) -> CrossBatch:
    return CrossBatch(
        student_hidden=student["hidden"],
        student_targets=torch.tensor(s["target"]),
        student_chunk=torch.tensor(s["chunk"]),
        teacher_targets=torch.tensor(t["target"]),
        teacher_chunk=torch.tensor(t["chunk"]),
        n_chunks=c_off[-1],
        teacher_hidden=teacher["hidden"],
        student_offsets=torch.tensor(s["offsets"]),
        teacher_offsets=torch.tensor(t["offsets"]),
        chunk_offsets=torch.tensor(c_off),
    )


def _grads(value: torch.Tensor, student: dict) -> list[torch.Tensor]:
    leaves = [student["hidden"], student["weight"], student["bias"]]
    return list(torch.autograd.grad(value, leaves))


def _f64_leaves(student: dict) -> dict:
    return {k: v.detach().double().requires_grad_() for k, v in student.items()}


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    got, want = got.detach().double(), want.detach().double()
    err, scale = float((got - want).norm()), float(want.norm())
    assert err <= rel * max(scale, 1e-12), (err, scale)


def _params(kind: str, seed: int, vs: int = 11, vt: int = 13) -> dict:
    rng = random.Random(100 + seed)
    if kind == "alm":
        return {"temperature": 2.0, "block_rows": 3}
    if kind == "uld":
        return {"temperature": 1.5, "block_rows": 3}
    if kind == "mined":
        mapping = torch.tensor([rng.randrange(vs) for _ in range(vt)])
        return {"mapping": mapping, "temperature": 1.3, "block_rows": 3}
    s_ids = rng.sample(range(vs), 6)
    t_ids = rng.sample(range(vt), 6)
    return {"matched": (torch.tensor(t_ids), torch.tensor(s_ids)), "beta": 0.3, "block_rows": 3}


def _reference(kind, params, s, t, n, student64, teacher):
    temp = params.get("temperature", 1.0)
    if kind == "alm":
        temp = 1.0
    ls = log_probs(student64["hidden"], student64["weight"], student64["bias"], temp)
    lt = log_probs(teacher["hidden"], teacher["weight"], teacher["bias"], temp)
    if kind == "alm":
        return ref_alm(ls, lt, s, t, n, tau=params["temperature"])
    if kind == "uld":
        return ref_uld(ls, lt, s, t, n)
    if kind == "mined":
        return ref_mined(ls, lt, s, t, n, params["mapping"].tolist())
    pairs = list(zip(*(x.tolist() for x in params["matched"]), strict=True))
    return ref_gold(ls, lt, s, t, n, pairs, beta=params["beta"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_float64_reference(kind, seed):
    s, t, c_off, student, teacher = _problem(seed)
    batch = _batch(s, t, c_off, student, teacher)
    params = _params(kind, seed)
    s_head = Head(student["weight"], student["bias"])
    t_head = Head(teacher["weight"], teacher["bias"])
    value, count = cross_loss(kind, batch, s_head, t_head, params)
    assert value.dtype == torch.float32
    grads = _grads(value, student)

    student64 = _f64_leaves(student)
    want, want_count = _reference(kind, params, s, t, c_off[-1], student64, teacher)
    want_grads = torch.autograd.grad(want, list(student64.values()))
    assert count == want_count and count > 0
    _close(value, want)
    for got, ref in zip(grads, want_grads, strict=True):
        _close(got, ref)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alm_debias_and_reverse_match_reference(seed):
    s, t, c_off, student, teacher = _problem(seed, pairs=3)
    batch = _batch(s, t, c_off, student, teacher)
    rng = random.Random(seed)
    t_space = torch.tensor([rng.random() < 0.4 for _ in range(13)])
    s_space = torch.tensor([rng.random() < 0.4 for _ in range(11)])
    params = {
        "temperature": 3.0,
        "divergence": "binary_reverse_kl",
        "debias": True,
        "teacher_space": t_space,
        "student_space": s_space,
        "space_threshold": 0.3,
        "block_rows": 2,
    }
    s_head = Head(student["weight"], student["bias"])
    t_head = Head(teacher["weight"], teacher["bias"])
    value, count = cross_loss("alm", batch, s_head, t_head, params)
    grads = _grads(value, student)
    student64 = _f64_leaves(student)
    ls = log_probs(student64["hidden"], student64["weight"], student64["bias"])
    lt = log_probs(teacher["hidden"], teacher["weight"], teacher["bias"])
    debias = (t_space.nonzero().flatten(), s_space.nonzero().flatten(), 0.3, c_off)
    want, want_count = ref_alm(ls, lt, s, t, c_off[-1], tau=3.0, reverse=True, debias=debias)
    assert count == want_count and count > 0
    _close(value, want)
    for got, ref in zip(grads, torch.autograd.grad(want, list(student64.values())), strict=True):
        _close(got, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_log_probs_equal_teacher_head(kind):
    s, t, c_off, student, teacher = _problem(3)
    batch = _batch(s, t, c_off, student, teacher)
    params = _params(kind, 3)
    s_head = Head(student["weight"], student["bias"])
    by_head, n1 = cross_loss(kind, batch, s_head, Head(teacher["weight"], teacher["bias"]), params)
    logp = torch.log_softmax(teacher["hidden"] @ teacher["weight"].T + teacher["bias"], -1)
    by_logp, n2 = cross_loss(kind, batch, s_head, logp, params)
    assert n1 == n2
    torch.testing.assert_close(by_head, by_logp, rtol=1e-5, atol=1e-7)


# ---- one model against itself -------------------------------------------------------------

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Don't panic!",
    "naïve café 12345 😀 Привет мир, 你好世界",
    "tabs\tand\nnewlines  double  spaces",
]


@pytest.mark.parametrize("kind", KINDS)
def test_same_model_same_tokenizer_gives_zero(toks, kind, tmp_path):
    tok = toks["byte_level"]
    tokens = build_cross_batch(tok, tok, TEXTS, max_len=24)
    vocab = tokens.student_vocab
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(int(tokens.student_attention.sum()), 8, generator=g).requires_grad_()
    weight = torch.randn(vocab, 8, generator=g).requires_grad_()
    batch = tokens.batch(hidden, hidden.detach())
    options = {"debias": True, "space_threshold": 0.0} if kind == "alm" else {}
    params = prepare_cross_params(kind, tok, tok, cache_dir=tmp_path, **options)
    value, count = cross_loss(kind, batch, Head(weight), Head(weight.detach()), params)
    assert count > 10
    assert abs(float(value.detach())) <= 1e-6
    for grad in torch.autograd.grad(value, [hidden, weight]):
        assert float(grad.abs().max()) <= 1e-6


@pytest.mark.parametrize(
    "kind,engine_kind,options",
    [("mined", "fkl", {}), ("gold_hybrid", "jsd", {"matched_weight": 1.0, "beta": 0.3})],
)
def test_on_one_tokenizer_mined_is_fkl_and_gold_hybrid_is_jsd(
    toks, tmp_path, kind, engine_kind, options
):
    """Two different models, one tokenizer: the cross path equals the same-tokenizer engine."""
    from anydistill.losses.engine import TeacherSignal, distill_loss
    from anydistill.losses.objective import ActiveTerm

    tok = toks["metaspace"]
    tokens = build_cross_batch(tok, tok, TEXTS, max_len=24)
    vocab = tokens.student_vocab
    g = torch.Generator().manual_seed(2)
    n = int(tokens.student_attention.sum())
    hidden = torch.randn(n, 8, generator=g).requires_grad_()
    weight = torch.randn(vocab, 8, generator=g).requires_grad_()
    t_hidden, t_weight = torch.randn(n, 6, generator=g), 2.0 * torch.randn(vocab, 6, generator=g)
    batch = tokens.batch(hidden, t_hidden)
    params = prepare_cross_params(kind, tok, tok, cache_dir=tmp_path, temperature=1.5, **options)
    value, count = cross_loss(kind, batch, Head(weight), Head(t_weight), params)
    rows = tokens.student_chunk >= 0
    assert count == int(rows.sum()) > 10
    term = ActiveTerm(name="x", kind=engine_kind, weight=1.0, temperature=1.5, beta=0.3)
    ref = distill_loss(
        hidden[rows], Head(weight), TeacherSignal(t_hidden[rows], Head(t_weight)),
        tokens.student_targets[rows], torch.ones(count, dtype=torch.bool), [term],
        vocab_size=vocab, normalizer=1.0, engine="naive",
    )  # fmt: skip
    # the engine scales a divergence by T**2 (Hinton); the cross terms do not
    torch.testing.assert_close(value, ref.loss / 1.5**2, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(value, [hidden, weight])
    want = torch.autograd.grad(ref.loss / 1.5**2, [hidden, weight])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_same_tokenizer_maps_are_identity(toks, tmp_path):
    for name in ("byte_level", "metaspace"):
        tok = toks[name]
        size = len(token_bytes(tok))
        assert torch.equal(mined_map(tok, tok, cache_dir=tmp_path), torch.arange(size))
        t_ids, s_ids = vocab_intersection(tok, tok)
        assert torch.equal(t_ids, torch.arange(size)) and torch.equal(s_ids, t_ids)


# ---- two tokenizer families ---------------------------------------------------------------


def _two_family_batch(toks, max_len: int = 20):
    teacher, student = toks["metaspace"], toks["byte_level"]
    tokens = build_cross_batch(teacher, student, TEXTS, max_len=max_len)
    g = torch.Generator().manual_seed(1)
    n_s, n_t = int(tokens.student_attention.sum()), int(tokens.teacher_attention.sum())
    hidden = torch.randn(n_s, 8, generator=g).requires_grad_()
    weight = torch.randn(tokens.student_vocab + 3, 8, generator=g).requires_grad_()  # padded
    t_hidden = torch.randn(n_t, 6, generator=g)
    t_weight = 2.0 * torch.randn(tokens.teacher_vocab, 6, generator=g)
    return teacher, student, tokens, hidden, weight, t_hidden, t_weight


@pytest.mark.parametrize("kind", KINDS)
def test_different_tokenizers_finite_positive_and_masked_rows_ignored(toks, kind, tmp_path):
    teacher, student, tokens, hidden, weight, t_hidden, t_weight = _two_family_batch(toks)
    heads = Head(weight), Head(t_weight)
    batch = tokens.batch(hidden, t_hidden)
    if kind == "alm":  # the debiased variant too
        debiased = prepare_cross_params(kind, teacher, student, debias=True)
        value, count = cross_loss(kind, batch, *heads, debiased)
        assert count > 0 and torch.isfinite(value) and float(value.detach()) > 0
        grads = torch.autograd.grad(value, [hidden, weight])
        assert all(torch.isfinite(g).all() for g in grads)
    params = prepare_cross_params(kind, teacher, student, cache_dir=tmp_path)
    value, count = cross_loss(kind, batch, *heads, params)
    assert count > 0 and torch.isfinite(value) and float(value.detach()) > 0
    g_hidden, g_weight = torch.autograd.grad(value, [hidden, weight])
    assert torch.isfinite(g_hidden).all() and torch.isfinite(g_weight).all()
    masked = batch.student_chunk < 0
    assert masked.any() and float(g_hidden[masked].abs().max()) == 0.0
    assert float(g_weight[tokens.student_vocab :].abs().max()) == 0.0  # padded head rows
    # Masking a one-to-one chunk on one side (-1) removes it from every term.
    s_count = torch.bincount(batch.student_chunk[~masked], minlength=batch.n_chunks)
    t_kept = batch.teacher_chunk[batch.teacher_chunk >= 0]
    t_count = torch.bincount(t_kept, minlength=batch.n_chunks)
    victim = int(((s_count == 1) & (t_count == 1)).nonzero()[0])
    batch.student_chunk = batch.student_chunk.where(batch.student_chunk != victim, torch.tensor(-1))
    _, fewer = cross_loss(kind, batch, *heads, params)
    assert fewer == count - 1


def test_truncation_drops_partial_chunks_and_chunks_spell_the_same_bytes(toks):
    teacher, student = toks["metaspace"], toks["byte_level"]
    tokens = build_cross_batch(teacher, student, TEXTS, max_len=9)
    assert tokens.teacher_ids.shape[1] <= 9 and tokens.student_ids.shape[1] <= 9
    padded = torch.randn(*tokens.student_ids.shape, 4)  # [B, L, H] model output
    batch = tokens.batch(padded, torch.randn(*tokens.teacher_ids.shape, 3))
    assert batch.student_hidden.shape == (int(tokens.student_attention.sum()), 4)
    assert torch.equal(batch.student_hidden[0], padded[0, 0])
    tb, sb = token_bytes(teacher), token_bytes(student)
    for k in range(len(TEXTS)):
        lo, hi = int(tokens.chunk_offsets[k]), int(tokens.chunk_offsets[k + 1])
        t_rows = range(int(tokens.teacher_offsets[k]), int(tokens.teacher_offsets[k + 1]))
        s_rows = range(int(tokens.student_offsets[k]), int(tokens.student_offsets[k + 1]))
        for c in range(lo, hi):
            t_tok = [int(tokens.teacher_targets[r]) for r in t_rows if tokens.teacher_chunk[r] == c]
            s_tok = [int(tokens.student_targets[r]) for r in s_rows if tokens.student_chunk[r] == c]
            assert t_tok and s_tok
            t_text = b"".join(tb[i] for i in t_tok).lstrip(b" ")
            s_text = b"".join(sb[i] for i in s_tok).lstrip(b" ")
            assert t_text == s_text  # up to SentencePiece's dummy-prefix space


def test_registry_rejects_unknown_kind_and_option(toks):
    s, t, c_off, student, teacher = _problem(0)
    batch = _batch(s, t, c_off, student, teacher)
    heads = Head(student["weight"]), Head(teacher["weight"])
    with pytest.raises(ValueError, match="unknown cross-tokenizer term"):
        cross_loss("dskd", batch, *heads)
    with pytest.raises(ValueError, match="does not take"):
        cross_loss("uld", batch, *heads, {"beta": 0.5})
    with pytest.raises(ValueError, match="needs teacher_space"):
        cross_loss("alm", batch, *heads, {"debias": True})


# ---- vocabulary maps ----------------------------------------------------------------------


def test_vocab_intersection_pairs_spell_the_same_bytes(toks):
    teacher, student = toks["metaspace"], toks["byte_level"]
    t_ids, s_ids = vocab_intersection(teacher, student)
    tb, sb = token_bytes(teacher), token_bytes(student)
    assert len(t_ids) > 100
    assert len(set(t_ids.tolist())) == len(t_ids) and len(set(s_ids.tolist())) == len(s_ids)
    for i, j in zip(t_ids.tolist(), s_ids.tolist(), strict=True):
        assert tb[i] == sb[j]
    assert space_mask(student)[[j for j, b in enumerate(sb) if b == b" the"]].all()


def test_mined_matches_brute_force_on_random_strings():
    rng = random.Random(0)
    alphabet = b"abcde \xc3\xa9"

    def word(long: bool = False) -> bytes:
        n = rng.randint(63, 70) if long else rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 12])
        return bytes(rng.choice(alphabet) for _ in range(n))

    t_strings = [word(long=k % 29 == 0) for k in range(160)]
    s_strings = [word(long=k % 37 == 0) for k in range(120)]
    s_strings[5] = s_strings[9]  # a duplicate: ties go to the smaller id
    got = mined_from_strings(t_strings, [""] * 160, s_strings, [""] * 120)
    want = brute_mined(t_strings, s_strings)
    assert got.tolist() == want


def test_mined_map_matches_brute_force_on_tiny_tokenizers_and_caches(toks, tmp_path):
    teacher, student = toks["byte_level"], toks["metaspace"]
    stats: dict = {}
    first = mined_map(teacher, student, cache_dir=tmp_path, stats=stats)
    assert not stats["cache_hit"] and stats["path"].endswith(".npy")
    second = mined_map(teacher, student, cache_dir=tmp_path, stats=stats)
    assert stats["cache_hit"] and torch.equal(first, second)
    assert list(tmp_path.glob("*.npy")) and torch.equal(
        first, torch.from_numpy(compute_mined_map(teacher, student))
    )
    tb, _, _ = vocab_strings(teacher)
    sb, _, _ = vocab_strings(student)
    for i, a in enumerate(tb):  # brute force over all pairs
        dists = [edit_distance(a, b) for b in sb]
        best = min(dists)
        assert dists[int(first[i])] == best
        if best > 0:
            assert int(first[i]) == dists.index(best)  # ties: the smallest id


@pytest.mark.parametrize("kind", KINDS)
def test_backward_keeps_inputs_not_logits(kind):
    """After the forward, autograd holds rows, heads and their gradients, never [N, V] logits."""
    n, vocab, width = 300, 4000, 8
    g = torch.Generator().manual_seed(0)
    chunk = torch.arange(n)
    chunk[::7] = -1
    batch = CrossBatch(
        student_hidden=torch.randn(n, width, generator=g).requires_grad_(),
        student_targets=torch.randint(0, vocab, (n,), generator=g),
        student_chunk=chunk,
        teacher_targets=torch.randint(0, vocab, (n,), generator=g),
        teacher_chunk=chunk.clone(),
        n_chunks=n,
        teacher_hidden=torch.randn(n, width, generator=g),
    )
    weight = torch.randn(vocab, width, generator=g).requires_grad_()
    params = {
        "alm": {},
        "uld": {},
        "mined": {"mapping": torch.randint(0, vocab, (vocab,), generator=g)},
        "gold_hybrid": {"matched": (torch.arange(0, vocab, 2), torch.arange(0, vocab, 2))},
    }[kind]
    packed: list = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value, _ = cross_loss(
            kind, batch, Head(weight), Head(torch.randn(vocab, width)), {**params, "block_rows": 16}
        )
    alive = {}  # storages the graph still holds after the forward
    for ref in packed:
        t = ref()
        if t is not None:
            alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    inputs = (n + vocab) * width * 4
    assert sum(alive.values()) <= 2 * inputs + 4 * n + 4096 < n * vocab * 4 // 10
    value.backward()
    assert torch.isfinite(weight.grad).all()
