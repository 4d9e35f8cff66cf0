"""Speculative decoding: greedy output is the target's, samples follow the target distribution."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from anydistill.eval import speculative as spec
from anydistill.eval.speculative import (
    encode_prompts,
    evaluate_speculation,
    load_prompt_texts,
    speculative_generate,
    target_generate,
    verify_drafts,
)


def _tiny(seed: int, vocab: int = 64, hidden: int = 32, layers: int = 2, init: float = 0.2):
    """A random tiny Llama; a larger init spread gives peaked, non-uniform next-token laws."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        initializer_range=init,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def _perturbed(model, scale: float, seed: int):
    """A copy of `model` with noise on every weight: a drafter that agrees only partly."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(scale * param.std() * torch.randn(param.shape, generator=gen))
    return other


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and do not fight other work for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    target = _tiny(0)
    return {"target": target, "random": _tiny(1), "close": _perturbed(target, 0.3, seed=2)}


def _prompts(n: int, vocab: int = 64, length: int = 5) -> list[torch.Tensor]:
    return [
        torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(100 + i))
        for i in range(n)
    ]


def _chi2_critical(df: int, z: float = 3.0902) -> float:
    """Upper 0.1% point of chi-square(df) by the Wilson-Hilferty cube-root approximation.

    z = 3.0902 is the standard normal 99.9% quantile. Against the table: df=7 gives 24.52
    (table 24.32), df=30 gives 59.74 (table 59.70), df=60 gives 99.62 (table 99.61); the
    approximation errs slightly high only for small df, which makes the test marginally laxer.
    """
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def _chi2(counts: dict, probs: dict, n: int, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson statistic, pooling cells with expected count < 5 into one; returns (stat, df)."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for key, p in probs.items():
        expected, observed = n * p, counts.get(key, 0)
        if expected < min_expected:
            pooled_obs += observed
            pooled_exp += expected
        else:
            stat += (observed - expected) ** 2 / expected
            cells += 1
    assert sum(counts.values()) == n and set(counts) <= set(probs)
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    return stat, cells - 1


# --- greedy: exactly the target's output -------------------------------------------------------


@pytest.mark.parametrize("gamma", [1, 3, 8])
@pytest.mark.parametrize("drafter", ["random", "close", "target"])
def test_greedy_speculation_equals_target_greedy(models, gamma: int, drafter: str) -> None:
    target = models["target"]
    for prompt in _prompts(3):
        reference = target_generate(target, prompt, 24)
        result = speculative_generate(target, models[drafter], prompt, 24, gamma)
        assert result.tokens == reference
        assert result.target_calls == len(result.accepted)
        assert len(result.tokens) == sum(result.accepted) + result.target_calls
        # With eos set to a token the target emits mid-way, both stop right after it.
        eos = reference[len(reference) // 2]
        stop = target_generate(target, prompt, 24, eos_token_id=eos)
        assert stop == reference[: reference.index(eos) + 1]
        result = speculative_generate(target, models[drafter], prompt, 24, gamma, eos_token_id=eos)
        assert result.tokens == stop


def test_identical_drafter_is_always_accepted(models) -> None:
    target = models["target"]
    # 20 = 4 rounds of 4 accepted drafts + 1 bonus token.
    greedy = evaluate_speculation(target, target, _prompts(3), gamma=4, max_new_tokens=20)
    assert greedy["acceptance_rate"] == 1.0
    assert greedy["mean_accepted"] == pytest.approx(5.0)
    assert greedy["acceptance_by_position"] == [1.0] * 4
    assert greedy["greedy_identical"] is True
    sampled = evaluate_speculation(
        target, target, _prompts(3), gamma=4, temperature=1.0, max_new_tokens=20
    )
    # p and q differ only by float noise (batched vs incremental forward), so p/q ~ 1.
    assert sampled["acceptance_rate"] > 0.98
    assert sampled["greedy_identical"] is True


def test_evaluate_reports_partial_acceptance(models) -> None:
    out = evaluate_speculation(
        models["target"], models["close"], _prompts(3), gamma=3, max_new_tokens=16
    )
    assert set(out) >= {
        "acceptance_rate",
        "mean_accepted",
        "speedup",
        "greedy_identical",
        "acceptance_by_position",
        "gamma",
        "temperature",
        "prompts",
        "new_tokens",
    }
    assert 0.0 < out["acceptance_rate"] < 1.0
    assert out["greedy_identical"] is True
    assert out["new_tokens"] == 3 * 16 and out["prompts"] == 3 and out["gamma"] == 3
    assert 1.0 <= out["mean_accepted"] <= 4.0
    rates = out["acceptance_by_position"]
    assert len(rates) == 3 and rates[0] >= rates[1] >= rates[2]
    assert out["speedup"] > 0


def test_cache_and_recompute_paths_agree(models) -> None:
    target, drafter = models["target"], models["close"]
    for prompt in _prompts(2):
        cached = speculative_generate(target, drafter, prompt, 20, 3, use_cache=True)
        plain = speculative_generate(target, drafter, prompt, 20, 3, use_cache=False)
        assert cached.tokens == plain.tokens
        assert cached.accepted == plain.accepted
        assert target_generate(target, prompt, 20, use_cache=False) == cached.tokens


def test_cache_is_really_used(models) -> None:
    """After the prompt, the target sees at most gamma+1 new tokens a call, the drafter 2."""
    target, drafter = models["target"], models["close"]
    fed: dict[str, list[int]] = {"target": [], "drafter": []}

    def hook(name):
        def record(module, args, kwargs):
            fed[name].append(kwargs["input_ids"].shape[1])

        return record

    handles = [
        target.register_forward_pre_hook(hook("target"), with_kwargs=True),
        drafter.register_forward_pre_hook(hook("drafter"), with_kwargs=True),
    ]
    try:
        result = speculative_generate(target, drafter, _prompts(1, length=9)[0], 30, 4)
    finally:
        for handle in handles:
            handle.remove()
    assert 0 < sum(result.accepted) < result.proposed  # both accept and reject paths ran
    assert fed["target"][0] == 9 + 4 and max(fed["target"][1:]) <= 5
    assert fed["drafter"][0] == 9 and max(fed["drafter"][1:]) <= 2


def test_vocab_mismatch(models) -> None:
    target = models["target"]
    wider = _tiny(3, vocab=72)  # padded head: compared on the first 64 rows
    prompt = _prompts(1)[0]
    assert speculative_generate(target, wider, prompt, 8, 2).tokens == target_generate(
        target, prompt, 8
    )
    with pytest.raises(ValueError, match="tokenizer has 70 tokens"):
        speculative_generate(target, wider, prompt, 8, 2, vocab_size=70)


# --- sampling: the target's distribution -------------------------------------------------------


def _first_token_counts(rule, p, q, n: int, seed: int) -> dict[int, int]:
    """Draw 2 drafts from q, verify against p with `rule`; count the first emitted token."""
    gen = torch.Generator().manual_seed(seed)
    counts: dict[int, int] = {}
    for _ in range(n):
        draft = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
        accepted, nxt = rule(draft, p, q, False, gen)
        first = draft[0] if accepted else nxt
        counts[first] = counts.get(first, 0) + 1
    return counts


def _wrong_resample_from_p(draft, p, q, greedy, generator):
    """The classic bug: on rejection, sample from p instead of norm(max(0, p - q))."""
    for i, x in enumerate(draft):
        if spec._uniform(generator) * float(q[i, x]) < float(p[i, x]):
            continue
        return i, spec._sample(p[i], generator)
    return len(draft), spec._sample(p[len(draft)], generator)


def _wrong_accept_all(draft, p, q, greedy, generator):
    return len(draft), spec._sample(p[len(draft)], generator)


def test_rejection_rule_gives_target_distribution() -> None:
    p = torch.tensor([0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02])
    q = torch.tensor([0.05, 0.10, 0.30, 0.02, 0.20, 0.08, 0.05, 0.20])
    p3, q2 = p.expand(3, 8), q.expand(2, 8)
    n = 12000
    probs = {i: float(p[i]) for i in range(8)}
    stat, df = _chi2(_first_token_counts(verify_drafts, p3, q2, n, seed=0), probs, n)
    assert stat < _chi2_critical(df), (stat, df)
    # The same test catches a broken rule by a wide margin.
    for wrong in (_wrong_resample_from_p, _wrong_accept_all):
        bad, df = _chi2(_first_token_counts(wrong, p3, q2, n, seed=0), probs, n)
        assert bad > 10 * _chi2_critical(df), (wrong.__name__, bad)


def _exact_joint(model, prompt: list[int], length: int, temperature: float) -> dict:
    """P(x1..xL | prompt) for every continuation, from one batched forward over all of them."""
    vocab = model.config.vocab_size
    conts = list(itertools.product(range(vocab), repeat=length))
    ids = torch.tensor([prompt + list(c) for c in conts])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double() / temperature, dim=-1)
    start = len(prompt) - 1
    out = {}
    for row, cont in enumerate(conts):
        out[cont] = math.exp(sum(float(logp[row, start + j, x]) for j, x in enumerate(cont)))
    return out


def _speculative_counts(target, drafter, prompt, n: int, temperature: float) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([prompt])
    counts: dict = {}
    for _ in range(n):
        toks = tuple(speculative_generate(target, drafter, ids, 3, 2, temperature, gen).tokens)
        counts[toks] = counts.get(toks, 0) + 1
    return counts


def test_speculative_samples_follow_target_distribution(monkeypatch) -> None:
    """Joint law of 3 sampled tokens over a vocabulary of 8 (512 outcomes), gamma 2."""
    target = _tiny(10, vocab=8, hidden=16, layers=1, init=0.5)
    drafter = _tiny(11, vocab=8, hidden=16, layers=1, init=0.5)
    prompt, temperature = [1, 2], 0.8
    probs = _exact_joint(target, prompt, 3, temperature)
    assert sum(probs.values()) == pytest.approx(1.0)
    n = 2000
    stat, df = _chi2(_speculative_counts(target, drafter, prompt, n, temperature), probs, n)
    assert df > 20
    assert stat < _chi2_critical(df), (stat, df)
    # Skipping the residual correction is caught end to end too.
    monkeypatch.setattr(spec, "verify_drafts", _wrong_resample_from_p)
    n = 700
    bad, df = _chi2(_speculative_counts(target, drafter, prompt, n, temperature), probs, n)
    assert bad > 2 * _chi2_critical(df), (bad, df)


# --- prompts from a file ----------------------------------------------------------------------


def test_load_prompt_texts(tmp_path) -> None:
    from anydistill.errors import DataError

    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n')
    assert load_prompt_texts(str(path)) == ["1+1?", "2+2?"]
    assert load_prompt_texts(str(path), max_prompts=1) == ["1+1?"]
    assert load_prompt_texts(str(path), column="answer") == ["2", "4"]
    with pytest.raises(DataError, match="no `prompt or question or text` column"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"q": "x"}\n')
        load_prompt_texts(str(bad))

    class Tok:
        bos_token_id = 7

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 5 for c in text]}

    ids = encode_prompts(Tok(), ["ab"])
    assert ids[0].tolist() == [[7, ord("a") % 5, ord("b") % 5]]
