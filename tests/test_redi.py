"""REDI (`redi` term, `paired_traces` source): the math against float64, the step, the
pairing, resume, accumulation, learning and the refusals.

Traces are written from the built-in arithmetic problems: the data's completion is the
correct trace, the same completion with a changed final answer an incorrect one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe, train_rows

from anydistill.config import config_from_dict
from anydistill.data.synthetic import arithmetic_problems
from anydistill.data.views import pair_count, step_inputs, target_count
from anydistill.errors import ConfigError, DataError
from anydistill.losses import registry
from anydistill.losses.objective import ActiveTerm
from anydistill.losses.redi import CORRECT, INCORRECT, UNPAIRED, redi_loss, weighted_logp
from anydistill.models.heads import Head, HiddenStates
from anydistill.sources.paired_traces import (
    PairedTracesSource,
    make_pairs,
    prompt_key,
    verdict_codes,
)
from anydistill.train.loop import train
from anydistill.train.step import micro_batch_loss


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster on one thread (and do not stall a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- traces ------------------------------------------------------------------------------


def write_traces(path: Path, prompts: int = 48, seed: int = 0) -> Path:
    """Every prompt's correct completion; most prompts also get one or two incorrect ones
    (a changed final answer); every sixth prompt none, so it is left out of the pairs."""
    rng = random.Random(seed)
    rows = []
    for i, rec in enumerate(arithmetic_problems(prompts, seed=seed)):
        answer, completion = str(rec["answer"]), rec["completion"]

        def wrong(answer: str = answer, completion: str = completion) -> str:
            """The last result and the final answer changed."""
            return str(int(answer) + rng.randint(1, 9)).join(completion.rsplit(answer, 2))

        base = {"prompt": rec["prompt"], "pass_rate": 0.5, "teacher": "t", "source": "arith"}
        rows.append({**base, "completion": completion, "verified": "correct", "sample_index": 0})
        for k in range(0 if i % 6 == 0 else 1 + (i % 4 == 1)):
            rows.append({**base, "completion": wrong(), "verified": "incorrect",
                         "sample_index": k + 1})  # fmt: skip
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    return write_traces(tmp_path_factory.mktemp("traces") / "traces.jsonl")


def redi_cfg(run: Path, traces: Path, **changes):
    base = {
        "data__path": str(traces),
        "output__dir": str(run),
        "train__progress": False,
        "output__report": False,
        "train__log_every": 1,
    }
    return config_from_dict(tiny_recipe("redi", **{**base, **changes}))


# ---- the math against float64 --------------------------------------------------------------


def reference(h, w, b, scale, cap, labels, row_of, role, alpha, pairs, vocab):
    """REDI in float64 from full logits, by its formula: (value, d h, d w, d b)."""
    h = h.detach().double().requires_grad_(True)
    w = w.detach().double().requires_grad_(True)
    b = None if b is None else b.detach().double().requires_grad_(True)
    z = h @ w[:vocab].T + (0.0 if b is None else b[:vocab])
    z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    logp = torch.log_softmax(z, dim=-1).gather(1, labels[:, None]).squeeze(1)
    value = torch.zeros((), dtype=torch.float64)
    for r in range(len(role)):
        mine = row_of == r
        if role[r] == 0 or not mine.any():
            continue
        mean = logp[mine].sum() / mine.sum()
        value = value + (-mean if role[r] > 0 else alpha * mean)
    value = value / pairs
    value.backward()
    return value.detach(), h.grad, w.grad, None if b is None else b.grad


def problem(seed: int, extreme: bool = False, padded: bool = False, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    rows, hidden, vocab = 6, 8, 37
    lengths = [5, 3, 7, 1, 4, 2]  # the tokens of each row
    row_of = torch.repeat_interleave(torch.arange(rows), torch.tensor(lengths))
    n = int(row_of.numel())
    h = torch.randn(n, hidden, generator=g) * (60.0 if extreme else 1.0)
    w = torch.randn(vocab + (9 if padded else 0), hidden, generator=g) * 0.8
    b = torch.randn(w.shape[0], generator=g) if bias else None
    labels = torch.randint(0, vocab, (n,), generator=g)
    role = torch.tensor([CORRECT, CORRECT, INCORRECT, INCORRECT, UNPAIRED, CORRECT])
    return h, w, b, labels, row_of, role, vocab


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize(
    ("extreme", "padded", "bias", "scale", "cap"),
    [
        (False, False, False, 1.0, None),
        (False, True, True, 1.0, None),  # a head padded past the vocabulary, with a bias
        (False, False, True, 0.7, 3.0),  # a scaled, soft-capped head (Gemma)
        (True, True, False, 1.0, None),  # logits in the hundreds
        (True, False, True, 1.3, 30.0),  # extreme logits through the soft-cap
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_redi_matches_a_float64_reference(extreme, padded, bias, scale, cap, dtype):
    h0, w0, b0, labels, row_of, role, vocab = problem(3, extreme, padded, bias)
    alpha, pairs = 0.8, 2.5  # the step's global pair count (other micro-batches hold more)
    want = reference(h0, w0, b0, scale, cap, labels, row_of, role, alpha, pairs, vocab)
    h = h0.to(dtype).requires_grad_(True)
    w = w0.to(dtype).requires_grad_(True)
    b = None if b0 is None else b0.to(dtype).requires_grad_(True)
    out = redi_loss(
        h, Head(w, b, scale, cap), labels, row_of, role, alpha, torch.tensor(pairs), vocab,
        block_rows=4,
    )  # fmt: skip
    out.value.backward()
    tol = 2e-5 if dtype == torch.float32 else 1e-11
    assert rel(out.value.detach(), want[0]) <= tol
    assert rel(h.grad, want[1]) <= tol and rel(w.grad, want[2]) <= tol
    if b is not None:
        assert rel(b.grad, want[3]) <= tol
    if padded:  # padding rows of the head get no gradient
        assert not w.grad[vocab:].any()
    assert not h.grad[row_of == 4].any()  # the unpaired row's tokens
    # The logged halves: mean per-token log-prob of each side, over the pairs.
    assert float(-out.correct + alpha * out.incorrect) == pytest.approx(
        out.value.item(), rel=1e-5, abs=1e-6
    )


def test_the_blocks_and_the_no_grad_path_agree():
    h, w, _, labels, row_of, role, vocab = problem(5)
    weights = torch.randn(len(labels), generator=torch.Generator().manual_seed(1))
    whole, logp = weighted_logp(h, Head(w), labels, weights, vocab, block_rows=1000)
    for size in (1, 3, 7):
        with torch.no_grad():
            total, again = weighted_logp(h, Head(w), labels, weights, vocab, block_rows=size)
        assert torch.allclose(total, whole, rtol=1e-6) and torch.allclose(again, logp)
    ref = torch.log_softmax(h.double() @ w.double().T, -1).gather(1, labels[:, None]).squeeze(1)
    assert rel(logp, ref) <= 1e-6
    with pytest.raises(ValueError, match="labels must lie"):
        weighted_logp(h, Head(w), labels + vocab, weights, vocab)


# ---- the step -------------------------------------------------------------------------------


def tiny_lm(seed: int = 0, vocab: int = 50):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # spread-out distributions, so log-probs differ between rows
        model.get_output_embeddings().weight.mul_(20.0)
    return model


def pair_batch():
    """Two pairs (rows 0, 1 correct; 2, 3 incorrect), right-padded to different lengths."""
    torch.manual_seed(2)
    ids = torch.randint(3, 50, (4, 12))
    loss_mask = torch.zeros(4, 12, dtype=torch.bool)
    attention = torch.ones(4, 12, dtype=torch.long)
    for row, (start, end) in enumerate([(3, 12), (5, 10), (3, 9), (5, 11)]):
        loss_mask[row, start:end] = True
        attention[row, end:] = 0
    role = torch.tensor([CORRECT, CORRECT, INCORRECT, INCORRECT])
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask,
            "pair_role": role}  # fmt: skip


def test_the_step_value_is_the_hand_computed_one():
    student, batch = tiny_lm(), pair_batch()
    inputs = step_inputs(batch, torch.device("cpu"))
    tokens = float(target_count(batch))
    assert pair_count(batch) == 2 and tokens == 9 + 5  # ce reads the correct rows only
    terms = [ActiveTerm("redi", "redi", 0.6, alpha=0.8), ActiveTerm("ce", "ce", 0.4)]
    out = micro_batch_loss(
        HiddenStates(student), None, inputs, terms, 50, torch.tensor(tokens), "torch", 5,
        pairs=torch.tensor(2.0),
    )  # fmt: skip
    out.loss.backward()
    got = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad()

    # By hand, in float64, from the model's full logits.
    ids, mask = batch["input_ids"], batch["loss_mask"][:, 1:]
    logits = student(input_ids=ids, attention_mask=batch["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None]).squeeze(2)
    means = [(logp[r][mask[r]]).sum() / mask[r].sum() for r in range(4)]
    correct, incorrect = (means[0] + means[1]) / 2, (means[2] + means[3]) / 2
    redi = -correct + 0.8 * incorrect
    ce = -(logp[:2][mask[:2]]).sum() / tokens
    (0.6 * redi + 0.4 * ce).backward()
    assert out.terms["redi"].item() == pytest.approx(redi.item(), rel=1e-5)
    assert out.terms["redi/correct"].item() == pytest.approx(correct.item(), rel=1e-5)
    assert out.terms["redi/incorrect"].item() == pytest.approx(incorrect.item(), rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((0.6 * redi + 0.4 * ce).item(), rel=1e-5)
    for name, p in student.named_parameters():
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(got[name], p.grad.float(), rtol=1e-4, atol=1e-5 * scale)

    # Weight zero: computed without gradient, still logged.
    student.zero_grad()
    zero = [ActiveTerm("redi", "redi", 0.0, alpha=0.8), ActiveTerm("ce", "ce", 1.0)]
    out = micro_batch_loss(
        HiddenStates(student), None, inputs, zero, 50, torch.tensor(tokens), "torch", 5,
        pairs=torch.tensor(2.0),
    )  # fmt: skip
    assert out.terms["redi"].item() == pytest.approx(redi.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(ce.item(), rel=1e-5)


def test_a_redi_term_without_pairs_is_one_sentence():
    from anydistill.errors import TrainingError

    batch = {k: v for k, v in pair_batch().items() if k != "pair_role"}
    with pytest.raises(TrainingError, match="needs batches from source.kind paired_traces"):
        micro_batch_loss(
            HiddenStates(tiny_lm()), None, step_inputs(batch, torch.device("cpu")),
            [ActiveTerm("redi", "redi", 1.0)], 50, torch.tensor(1.0), "torch", 5,
        )  # fmt: skip


# ---- pairing --------------------------------------------------------------------------------


def test_pairing_is_seeded_per_prompt_and_counts_what_it_leaves_out():
    keys = ["a", "a", "a", "b", "b", "c", "d", "d", "a", "e"]
    codes = [CORRECT, INCORRECT, CORRECT, CORRECT, CORRECT, INCORRECT, INCORRECT, CORRECT,
             INCORRECT, UNPAIRED]  # fmt: skip
    one = make_pairs(keys, codes, seed=0)
    assert make_pairs(keys, codes, seed=0) == one
    assert len(one.pairs) == 2 and (one.only_correct, one.only_incorrect) == (1, 1)
    assert one.prompts == 5 and one.unverified == 1
    assert "2 pairs from 5 prompts; 3 prompts left out" in one.describe()
    for good, bad in one.pairs:
        assert codes[good] == CORRECT and codes[bad] == INCORRECT and keys[good] == keys[bad]
    # A prompt's pair depends on (seed, prompt) alone: not on the other prompts' rows.
    chosen = {keys[g]: (g, b) for g, b in one.pairs}
    fewer = make_pairs(keys[:8], codes[:8], seed=0)
    assert chosen["d"] in fewer.pairs
    seeds = {tuple(make_pairs(keys, codes, seed=s).pairs) for s in range(12)}
    assert len(seeds) > 1  # the seed matters
    assert verdict_codes(["correct", " Incorrect", None, True, False, "unverified"], "f") == [
        CORRECT, INCORRECT, UNPAIRED, CORRECT, INCORRECT, UNPAIRED,
    ]  # fmt: skip
    with pytest.raises(DataError) as err:
        verdict_codes(["correct", "maybe"], "data.path: x.jsonl")
    assert str(err.value).startswith("data.path: x.jsonl: column `verified` holds 'maybe'")
    assert prompt_key([{"role": "user", "content": "hi"}]) == prompt_key(
        [{"content": "hi", "role": "user"}]
    )


def test_a_micro_batch_is_b_correct_rows_then_their_b_incorrect_ones():
    examples = [{"input_ids": [1, 2, 10 + i], "loss_mask": [False, True, True]} for i in range(12)]
    keys = [str(i // 2) for i in range(12)]  # six prompts, two rows each
    codes = [CORRECT, INCORRECT] * 6
    pairing = make_pairs(keys, codes, seed=1)
    source = PairedTracesSource(examples, pairing, batch_size=2, seed=1, pad_id=0)
    batch = source.micro_batch(0, 0)
    assert batch["pair_role"].tolist() == [CORRECT, CORRECT, INCORRECT, INCORRECT]
    last = batch["input_ids"][:, 2].tolist()  # 10 + row index
    assert [(x - 10) // 2 for x in last[:2]] == [(x - 10) // 2 for x in last[2:]]
    assert all((x - 10) % 2 == 0 for x in last[:2]) and all((x - 10) % 2 for x in last[2:])
    assert source.state_dict() == {"pairs": pairing.digest()}
    with pytest.raises(DataError, match="fewer than one global batch"):
        PairedTracesSource(examples, pairing, batch_size=4, seed=1, pad_id=0, world_size=2)


# ---- training -------------------------------------------------------------------------------


def test_exact_resume_is_bitwise(tmp_path, traces):
    def cfg(name, **extra):
        return redi_cfg(
            tmp_path / name, traces, train__max_steps=4, train__save_every=2,
            train__micro_batch_size=4, **extra,
        )  # fmt: skip

    full = train(cfg("full"))
    cut = train(cfg("cut", train__stop_at_step=2))
    assert max(r["step"] for r in train_rows(cut)) == 2 and not (cut / "final").exists()
    resumed = train(cfg("cut"))
    keys = ("step", "loss", "lr", "grad_norm", "term/redi", "term/redi/correct",
            "term/redi/incorrect")  # fmt: skip
    a = [{k: r[k] for k in keys} for r in train_rows(full)]
    b = [{k: r[k] for k in keys} for r in train_rows(resumed)]
    assert a == b and len(a) == 4
    state = json.loads((resumed / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["source"][0]["pairs"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path, traces):
    def run(name, mbs, accum):
        cfg = redi_cfg(
            tmp_path / name, traces, train__max_steps=2, train__micro_batch_size=mbs,
            train__grad_accum=accum, train__max_grad_norm=None, train__warmup_steps=0,
            train__save_every=0,
            objective__terms=[{"kind": "redi"}, {"kind": "ce", "weight": 0.3},
                              {"kind": "fkl", "weight": 0.5}],  # a live teacher too
        )  # fmt: skip
        return train_rows(train(cfg))

    one, four = run("one", 8, 1), run("four", 2, 4)
    assert len(one) == 2
    for a, b in zip(one, four, strict=True):
        for key in ("loss", "term/redi", "term/ce", "term/fkl", "term/redi/incorrect"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_redi_raises_correct_over_incorrect(tmp_path, traces):
    """On the training pairs, log p(correct) - log p(incorrect) grows well past an untrained
    student's, and past what the correct side alone (alpha = 0) gives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anydistill.data.tokenize import tokenize_pairs

    def trained(alpha: float) -> Path:
        return train(
            redi_cfg(
                tmp_path / f"alpha{alpha}",
                traces,
                train__max_steps=40,
                train__lr=3.0e-3,
                train__log_every=40,
                train__save_every=0,
                train__warmup_steps=0,
                objective__terms=[{"kind": "redi", "alpha": alpha}],
            )  # fmt: skip
        )

    redi, positive_only = trained(0.8), trained(0.0)
    rows = [json.loads(x) for x in traces.read_text().splitlines()]
    keys = [prompt_key(r["prompt"]) for r in rows]
    codes = verdict_codes([r["verified"] for r in rows], "traces")
    pairs = make_pairs(keys, codes, seed=0).pairs
    tok = AutoTokenizer.from_pretrained(redi / "final")
    examples = tokenize_pairs([r["prompt"] for r in rows], [r["completion"] for r in rows], tok)

    def margin(model) -> float:
        """Mean over pairs of log p(correct) - log p(incorrect), whole completions."""
        total = 0.0
        with torch.no_grad():
            for good, bad in pairs:
                sums = []
                for ex in (examples[good], examples[bad]):
                    ids = torch.tensor([ex["input_ids"]])
                    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                    picked = logp.gather(1, ids[0, 1:, None]).squeeze(1)
                    sums.append(float(picked[torch.tensor(ex["loss_mask"][1:])].sum()))
                total += sums[0] - sums[1]
        return total / len(pairs)

    model = AutoModelForCausalLM.from_pretrained(redi / "final")
    torch.manual_seed(0)
    before = margin(AutoModelForCausalLM.from_config(model.config))  # an untrained student
    after = margin(model)
    plain = margin(AutoModelForCausalLM.from_pretrained(positive_only / "final"))
    assert after > before + 3.0 and after > plain + 3.0, (before, after, plain)


# ---- refusals -------------------------------------------------------------------------------


def one_sentence(message: str) -> None:
    assert "\n" not in message and message.count(". ") == 0 and not message.endswith(".")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source__kind": "dataset"},
         "source.kind: a `redi` objective term needs a correct and an incorrect trace of each "
         "prompt in one batch; set source.kind=paired_traces"),
        ({"objective__terms": [{"kind": "ce"}]},
         "source.kind: `paired_traces` feeds the `redi` objective term; add one to "
         "objective.terms or choose another source"),
        ({"data__path": None, "data__synthetic": "arithmetic"}, "data.synthetic: source.kind "
         "paired_traces reads the `verified` column"),
        ({"data__mode": "text"}, "data.mode: source.kind paired_traces groups traces by their "
         "prompt"),
        ({"objective__terms": [{"kind": "redi", "temperature": 2.0}]},
         "a `redi` term takes no temperature"),
        ({"teacher": {"kind": "cache", "path": "cache"}, "eval__teacher": False,
          "objective__terms": [{"kind": "redi"}, {"kind": "fkl"}]},
         "teacher.kind: with source.kind paired_traces the other terms read the correct "
         "traces only, which a teacher cache does not key"),
    ],
)  # fmt: skip
def test_config_refusals_are_one_sentence(tmp_path, changes, message):
    with pytest.raises(ConfigError) as err:
        redi_cfg(tmp_path / "run", tmp_path / "t.jsonl", **changes)
    assert message in str(err.value)
    one_sentence(str(err.value))


def test_the_registry_and_the_recipe_defaults(tmp_path):
    kind = registry.get("redi")
    assert kind.family == "sequence" and kind.needs == "nothing" and kind.engines == ()
    assert not registry.needs_teacher("redi") and "redi" not in registry.names("divergence")
    cfg = redi_cfg(tmp_path / "run", tmp_path / "t.jsonl", objective__terms=[{"kind": "redi"}])
    assert cfg.objective.terms[0].alpha == 0.8  # REDI's default, not TermConfig's 0.1
    cfg = redi_cfg(tmp_path / "run", tmp_path / "t.jsonl",
                   objective__terms=[{"kind": "redi", "alpha": 0.3}])  # fmt: skip
    assert cfg.objective.terms[0].alpha == 0.3


def test_traces_without_a_verified_column_are_one_sentence(tmp_path):
    plain = tmp_path / "plain.jsonl"
    rows = arithmetic_problems(24, seed=0)
    plain.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]})
                             + "\n" for r in rows))  # fmt: skip
    with pytest.raises(DataError) as err:
        train(redi_cfg(tmp_path / "run", plain))
    assert str(err.value).startswith(f"data.path: {plain}: no `verified` column (found ")
    one_sentence(str(err.value))
    only_correct = tmp_path / "good.jsonl"
    only_correct.write_text("".join(json.dumps({"prompt": r["prompt"], "completion":
                                                r["completion"], "verified": "correct"})
                                    + "\n" for r in rows))  # fmt: skip
    with pytest.raises(DataError, match="no prompt has both a correct and an incorrect"):
        train(redi_cfg(tmp_path / "run2", only_correct))
