"""The one step with an aligned (cross-tokenizer) teacher: each aligned term is divided by the
units its sum runs over, a zero-weight term is logged with its value, and adding a zero-weight
term anywhere never changes the loss or the gradient."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from test_align import train_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

from anydistill.data.aligned import build_cross_batch
from anydistill.data.views import step_inputs
from anydistill.losses.cross import cross_loss, prepare_cross_params, term_units
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import HiddenStates, output_head
from anydistill.teachers import AlignedTeacher
from anydistill.train.step import aligned_units, micro_batch_loss

KINDS = ["alm", "uld", "gold_hybrid", "mined"]
TEXTS = [
    "The cat sat on the mat, then ran   away quickly.",
    "Distillation moves knowledge from a teacher model to a smaller student.",
    "Numbers like 12345 and 6.78 split differently in every tokenizer!",
    "  leading spaces and\ttabs\nand new lines",
]


def _model(vocab: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).float()


@pytest.fixture(scope="module")
def setup():
    toks = train_tokenizers()
    teacher_tok, student_tok = toks["metaspace"], toks["byte_level"]
    tokens = build_cross_batch(teacher_tok, student_tok, TEXTS, max_len=64)
    teacher = _model(tokens.teacher_vocab, 1).eval()
    student = _model(tokens.student_vocab, 2)
    params = {
        kind: prepare_cross_params(kind, teacher_tok, student_tok, temperature=1.5)
        for kind in KINDS
    }
    return tokens, teacher, student, params


def _term(kind: str, weight: float, name: str | None = None) -> ActiveTerm:
    return ActiveTerm(name or kind, kind, weight, temperature=1.5)


def _loss(setup, terms: list[ActiveTerm]):
    tokens, teacher, student, params = setup
    student.zero_grad()
    acc = Accelerator(cpu=True)
    inputs = step_inputs(tokens, torch.device("cpu"))
    units = aligned_units(acc, [tokens], terms)
    named = {t.name: params[t.kind] for t in terms if t.kind != "ce"}
    out = micro_batch_loss(
        HiddenStates(student),
        AlignedTeacher(teacher),
        inputs,
        terms,
        tokens.student_vocab,
        inputs.select.sum().float(),
        "torch",
        None,
        aligned_params=named,
        units=units,
    )
    out.loss.backward()
    grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    return out, grads


def _reference_total(setup, kind: str) -> tuple[float, int]:
    """The term's raw sum over the batch and its count, straight from the loss function."""
    tokens, teacher, student, params = setup
    with torch.no_grad():
        s_hidden = HiddenStates(student)(tokens.student_ids, tokens.student_attention.long())
        t_hidden = HiddenStates(teacher)(tokens.teacher_ids, tokens.teacher_attention.long())
        batch = tokens.batch(s_hidden, t_hidden)
        total, count = cross_loss(
            kind, batch, output_head(student), output_head(teacher), params[kind]
        )
    return float(total), count


@pytest.mark.parametrize("kind", KINDS)
def test_each_aligned_term_is_divided_by_its_own_units(setup, kind):
    tokens = setup[0]
    out, _ = _loss(setup, [_term(kind, 1.0)])
    total, count = _reference_total(setup, kind)
    assert term_units(kind, tokens) == count
    scale = 1.0 if kind == "alm" else 1.5**2
    assert out.terms[kind].item() == pytest.approx(scale * total / count, rel=1e-5)


def test_uld_and_mined_count_only_one_to_one_chunks(setup):
    """The fixture has chunks of several tokens, so dividing by all chunks would differ."""
    tokens = setup[0]
    for kind in ("uld", "mined"):
        assert 0 < term_units(kind, tokens) < tokens.n_chunks


@pytest.mark.parametrize("kind", KINDS)
def test_a_zero_weight_term_is_logged_with_its_value(setup, kind):
    other = "alm" if kind != "alm" else "uld"
    weighted, _ = _loss(setup, [_term(kind, 1.0), _term(other, 1.0)])
    monitor, _ = _loss(setup, [_term(kind, 0.0), _term(other, 1.0)])
    assert monitor.terms[kind].item() != 0.0
    assert monitor.terms[kind].item() == pytest.approx(weighted.terms[kind].item(), rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", [0, 1, 2])
def test_adding_a_zero_weight_term_changes_nothing(setup, kind, where):
    base = [_term("alm", 0.7, "a"), ActiveTerm("ce", "ce", 0.3)]
    base_out, base_grads = _loss(setup, base)
    terms = list(base)
    terms.insert(where, _term(kind, 0.0, "monitor"))
    out, grads = _loss(setup, terms)
    assert out.loss.item() == base_out.loss.item()
    for g, h in zip(grads, base_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=0, atol=0)
