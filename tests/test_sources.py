"""Where the sequences come from: masks, sampling, on-policy weights, mixture, replay, pairing.

Small models and short completions throughout; the end-to-end runs live in
test_sources_train.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from anydistill.data import BatchStream
from anydistill.data.tokenize import tokenize_chat, tokenize_pairs
from anydistill.errors import ConfigError, DataError
from anydistill.generation import HFBackend, Sampling
from anydistill.sources import (
    AdaptiveProbability,
    Completer,
    GeneratedSource,
    LambdaSampler,
    MixtureSource,
    PairedSource,
    ReplayBuffer,
    ReplaySource,
)
from anydistill.sources.prompts import prompt_length, prompt_of, require_prompts
from anydistill.sources.rng import SourceRng
from anydistill.sources.upfront import FILE, generate_upfront

SEQ_LEN = 96
NEW = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models decode faster on one thread (and do not stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    from anydistill.data.synthetic import arithmetic_problems
    from anydistill.models.tokenizer_training import train_tokenizer

    return train_tokenizer([r["text"] for r in arithmetic_problems(200, seed=0)], vocab_size=320)


@pytest.fixture(scope="module")
def examples(tok):
    from anydistill.data.synthetic import arithmetic_problems

    rows = arithmetic_problems(24, seed=1)
    return tokenize_pairs([r["prompt"] for r in rows], [r["completion"] for r in rows], tok)


def tiny_lm(vocab: int, seed: int) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama",
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def models(tok):
    return tiny_lm(len(tok), 0), tiny_lm(len(tok), 1)  # (student, teacher)


def completer(model, tok, role: str, new: int = NEW, batch: int = 32) -> Completer:
    backend = HFBackend(model, tok.pad_token_id, tok.eos_token_id, Sampling(1.0, 1.0, new, batch))
    return Completer(backend, role, SEQ_LEN, new, tok.eos_token_id, seed=0)


def check_rows(batch: dict, prompts: list[list[int]], eos: int, new: int = NEW) -> None:
    """Each row: the prompt (no targets), then a completion (all targets), then padding."""
    assert batch["input_ids"].shape[0] == len(prompts)
    for row, prompt in enumerate(prompts):
        ids = batch["input_ids"][row].tolist()
        mask = batch["loss_mask"][row].tolist()
        length = int(batch["attention_mask"][row].sum())
        completion = ids[len(prompt) : length]
        assert ids[: len(prompt)] == prompt
        assert mask == [False] * len(prompt) + [True] * len(completion) + [False] * (
            len(ids) - length
        )
        assert 1 <= len(completion) <= new
        assert eos not in completion[:-1]  # nothing kept after an eos
        assert completion[-1] == eos or len(completion) == new


def test_prompts_come_from_the_loss_mask(tok, examples):
    ex = examples[0]
    n = prompt_length(ex)
    assert n > 0 and not any(ex["loss_mask"][:n]) and ex["loss_mask"][n]
    assert prompt_of(ex) == ex["input_ids"][:n]
    chat = tokenize_chat(
        [{"role": "user", "content": "1 + 2?"}, {"role": "assistant", "content": "3"}],
        [1],
        tok,
        "messages",
    )
    header = tok.apply_chat_template(
        [{"role": "user", "content": "1 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert tok.decode(prompt_of(chat)) == header  # up to and including the assistant header
    with pytest.raises(DataError, match="no prompt"):
        prompt_of({"input_ids": [1, 2], "loss_mask": [True, True]})
    with pytest.raises(ConfigError, match="source.kind"):
        require_prompts("student_generated", "text")


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_generated_batches_mask_exactly_the_completion(tok, examples, models, role):
    model = models[0] if role == "student" else models[1]
    stream = BatchStream(examples, 6, seed=0)
    source = GeneratedSource(stream, tok.pad_token_id, completer(model, tok, role), rank=0)
    probe = BatchStream(examples, 6, seed=0)
    for step in range(2):
        prompts = [prompt_of(ex) for ex in probe.next_batch()]
        check_rows(source.micro_batch(step, 0), prompts, tok.eos_token_id)
    metrics = source.take_metrics()
    assert metrics["gen_s"] > 0 and source.take_metrics()["gen_s"] == 0.0


def test_same_key_same_sample_and_long_prompts_stay_within_seq_len(tok, examples, models):
    c = completer(models[1], tok, "teacher", new=40)
    a = c.complete(examples[:4], 3, 0, 0)
    assert a == c.complete(examples[:4], 3, 0, 0)
    assert a != c.complete(examples[:4], 4, 0, 0)
    c.seq_len = max(len(prompt_of(ex)) for ex in examples[:4]) + 2
    assert all(len(ex["input_ids"]) <= c.seq_len for ex in c.complete(examples[:4], 0))


def test_on_policy_generations_follow_the_student_weights(tok, examples, models):
    student = tiny_lm(len(tok), 5)
    c = completer(student, tok, "student")
    before = c.complete(examples[:6], 0, 0, 0)
    assert before == c.complete(examples[:6], 0, 0, 0)
    with torch.no_grad():  # an optimizer step changes the weights in place
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    after = c.complete(examples[:6], 0, 0, 0)
    assert after != before
    assert student.training  # sampling switched to eval mode and back


def test_upfront_generation_resumes_where_it_stopped(tmp_path, tok, examples, models):
    whole = generate_upfront(
        examples, completer(models[1], tok, "teacher", batch=5), tmp_path / "a", "k", 5, False
    )
    assert len(whole) == len(examples)
    for ex, orig in zip(whole, examples, strict=True):
        n = prompt_length(orig)
        assert ex["input_ids"][:n] == orig["input_ids"][:n]
        assert ex["loss_mask"] == [False] * n + [True] * (len(ex["input_ids"]) - n)

    class Stop(Exception):
        pass

    c = completer(models[1], tok, "teacher", batch=5)
    real, calls = c.backend.generate, []

    def flaky(prompts, budget, seed):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise Stop
        return real(prompts, budget, seed)

    c.backend.generate = flaky
    with pytest.raises(Stop):
        generate_upfront(examples, c, tmp_path / "b", "k", 5, False)
    with (tmp_path / "b" / FILE).open("a") as f:
        f.write('{"prompt_len": 3, "input_ids": [1, 2')  # a torn last line
    again = generate_upfront(examples, c, tmp_path / "b", "k", 5, False)
    assert calls == [5, 5, 5, 5, 5, 4]  # two chunks done, the third failed, then the rest
    assert again == whole
    assert (tmp_path / "a" / FILE).read_text() == (tmp_path / "b" / FILE).read_text()
    with pytest.raises(ConfigError, match="source.store"):
        generate_upfront(examples, c, tmp_path / "b", "other settings", 5, False)


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_mixture_fraction_matches_lambda(lam):
    n = 20000
    sampler = LambdaSampler(lam, seed=7)
    share = sum(sampler.draw() for _ in range(n)) / n
    assert abs(share - lam) <= 4 * math.sqrt(lam * (1 - lam) / n) + 1e-12
    state = json.loads(json.dumps(sampler.state_dict()))  # through a checkpoint's JSON
    ahead = [sampler.draw() for _ in range(50)]
    resumed = LambdaSampler(lam, seed=0)
    resumed.load_state_dict(state)
    assert [resumed.draw() for _ in range(50)] == ahead


def test_mixture_source_switches_per_batch(tok, examples, models):
    stream = BatchStream(examples, 4, seed=0)
    student = completer(models[0], tok, "student")
    source = MixtureSource(stream, tok.pad_token_id, student, None, LambdaSampler(0.5, 3), 0)
    coins = LambdaSampler(0.5, 3)
    probe = BatchStream(examples, 4, seed=0)
    for step in range(6):
        batch = source.micro_batch(step, 0)
        original = probe.next_batch()
        prompts = [prompt_of(ex) for ex in original]
        if coins.draw():
            check_rows(batch, prompts, tok.eos_token_id)
        else:
            assert (
                batch["input_ids"][0, : len(original[0]["input_ids"])].tolist()
                == (original[0]["input_ids"])
            )
    replay = LambdaSampler(0.5, 3)
    assert source.take_metrics()["student_frac"] == pytest.approx(
        sum(replay.draw() for _ in range(6)) / 6
    )


def test_paired_batches_hold_teacher_then_student_responses(tok, examples, models):
    stream = BatchStream(examples, 3, seed=0)
    source = PairedSource(
        stream,
        tok.pad_token_id,
        completer(models[0], tok, "student"),
        completer(models[1], tok, "teacher"),
        rank=0,
    )
    prompts = [prompt_of(ex) for ex in BatchStream(examples, 3, seed=0).next_batch()]
    batch = source.micro_batch(0, 0)
    assert batch["teacher_rows"].tolist() == [True] * 3 + [False] * 3
    check_rows(batch, prompts + prompts, tok.eos_token_id)


def test_adaptive_probability_grows_when_the_loss_stalls():
    prob = AdaptiveProbability(init=0.0, step=0.3, cap=0.8, tolerance=0.05)
    seen = []
    for loss in [5.0, 4.0, 3.98, 3.5, 3.6, 3.0, 3.0]:
        prob.observe(loss)
        seen.append(round(prob.value, 6))
    # first value: no reference; 3.98 improved by < 0.05; 3.6 rose; 3.0 -> 3.0 stalled (capped)
    assert seen == [0.0, 0.0, 0.3, 0.3, 0.6, 0.6, 0.8]


def test_replay_source_generates_replays_and_resumes(tok, examples, models):
    def make(phi: float) -> ReplaySource:
        return ReplaySource(
            BatchStream(examples, 4, seed=0),
            tok.pad_token_id,
            completer(models[0], tok, "student"),
            None,
            AdaptiveProbability(phi, 0.1, 1.0, 0.0),
            ReplayBuffer(8),
            SourceRng(11),
            max_steps=10,
            monitor="student/ce",
            rank=0,
        )

    off = make(0.0)
    assert all(off.choose(s, 4) == "off" for s in range(20))
    source = make(1.0)
    choices = [source.choose(0, 4) for _ in range(3)]
    assert choices == ["fresh"] * 3  # the buffer is not full yet
    for step in range(2):
        source.micro_batch(step, 0)
    assert len(source.buffer) == 8 and source.buffer.full
    assert {source.choose(9, 4) for _ in range(40)} == {"fresh", "replayed"}
    state = json.loads(json.dumps(source.state_dict()))
    ahead = [source.micro_batch(9, i) for i in range(4)]
    resumed = make(0.0)
    for _ in range(2):
        resumed.stream.next_batch()  # the stream position comes from the checkpoint's "data"
    resumed.load_state_dict(state)
    again = [resumed.micro_batch(9, i) for i in range(4)]
    for a, b in zip(ahead, again, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["loss_mask"], b["loss_mask"])
    source.observe_eval({"student/ce": 3.0})
    with pytest.raises(ConfigError, match="source.replay.monitor"):
        source.observe_eval({"student/bits_per_byte": 1.0})
