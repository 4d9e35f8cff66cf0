"""Speculative decoding with exact verification: how well does a student serve as a drafter?

A distilled student is often meant to draft for its teacher. The number that matters is not
its loss but how many of its tokens the teacher accepts and the wall-clock speedup that buys.
This module runs real speculative decoding (both models keep a KV cache; the target verifies
all draft tokens in one forward pass and both caches are cropped back on rejection) and
measures acceptance and speedup against the target decoding alone.

Verification is lossless:

* greedy (temperature 0): the longest draft prefix equal to the target's argmax is kept and
  the target's own next token is appended, so the output equals target greedy decoding;
* sampling (temperature > 0): rejection sampling of Leviathan et al. (2023) and Chen et al.
  (2023): draft token x is kept with probability min(1, p(x)/q(x)); on rejection the next
  token is drawn from norm(max(0, p - q)); when all drafts are kept a bonus token is drawn
  from p. The output is distributed exactly as target sampling at that temperature.

Target and drafter must share the tokenizer. When their output heads differ in size (padded
embeddings) both are compared on the first min(V) rows; a tokenizer larger than either head is
an error. A model whose cache cannot be cropped (no `crop`, or `is_croppable` false, e.g. some
sliding-window or recurrent layers) falls back to recomputing from the whole sequence at each
call: slower, still exact.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from anydistill.errors import DataError

PROMPT_COLUMNS = ("prompt", "question", "text")


@dataclass
class SpecResult:
    """One speculative generation: the new tokens and what verification did on the way."""

    tokens: list[int]
    target_calls: int
    accepted: list[int] = field(default_factory=list)
    proposed_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)

    @property
    def proposed(self) -> int:
        """Draft tokens the target was asked to verify."""
        return sum(self.proposed_by_position)

    @property
    def acceptance_by_position(self) -> list[float]:
        """Share of rounds whose draft token at position j (1-based) was kept, j = 1..gamma."""
        return [
            a / p if p else float("nan")
            for a, p in zip(self.accepted_by_position, self.proposed_by_position, strict=True)
        ]


def head_size(model: Any) -> int:
    """Rows of the model's output head (may exceed the tokenizer when embeddings are padded)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def shared_vocab(target: Any, drafter: Any, tokenizer_size: int | None = None) -> int:
    """The number of logit rows to compare: min of the two heads, checked against the tokenizer."""
    t_size, d_size = head_size(target), head_size(drafter)
    if tokenizer_size is not None and tokenizer_size > min(t_size, d_size):
        raise ValueError(
            f"tokenizer has {tokenizer_size} tokens but the target head has {t_size} rows and "
            f"the drafter head {d_size}; speculative decoding needs a shared vocabulary that "
            "fits both heads"
        )
    return min(t_size, d_size)


def _shared_prefix(a: list[int], b: list[int]) -> int:
    m = min(len(a), len(b))
    if a[:m] == b[:m]:
        return m
    lo, hi = 0, m  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _Decoder:
    """One model's view of a growing token sequence.

    The KV cache holds the keys/values of `self.cached`; each call crops it back to the longest
    prefix it shares with the new sequence and feeds only the rest. `use_cache=None` picks the
    cache when the model's cache can be cropped and recomputation otherwise.
    """

    def __init__(self, model: Any, vocab: int, use_cache: bool | None = None) -> None:
        self.model = model
        self.vocab = vocab
        self.use_cache = use_cache
        self.cache: Any = None
        self.cached: list[int] = []
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed `past_key_values` to `cache`; accept both.
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.logits_to_keep = "logits_to_keep" in params
        self.device = next(model.parameters()).device

    def logits(self, seq: list[int], n: int) -> Tensor:
        """Float logits [n, vocab] predicting the tokens after seq[-n-1], ..., seq[-1]."""
        kwargs: dict[str, Any] = {}
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = n
        if self.use_cache is False:
            ids = torch.tensor([seq], device=self.device)
            out = self.model(input_ids=ids, use_cache=False, **kwargs)
            return out.logits[0, -n:, : self.vocab].float()
        keep = 0
        if self.cache is not None:
            keep = min(_shared_prefix(self.cached, seq), len(seq) - n)
            if keep < len(self.cached):
                self.cache.crop(keep - len(self.cached))  # negative: drop that many tokens
        if self.cache is not None:
            kwargs[self.cache_arg] = self.cache
        ids = torch.tensor([seq[keep:]], device=self.device)
        out = self.model(input_ids=ids, use_cache=True, **kwargs)
        cache = out.get("cache")
        if cache is None:
            cache = out.get("past_key_values")
        if self.use_cache is None:
            self.use_cache = _croppable(cache)
        if self.use_cache:
            self.cache, self.cached = cache, list(seq)
        return out.logits[0, -n:, : self.vocab].float()


def _croppable(cache: Any) -> bool:
    return (
        cache is not None
        and callable(getattr(cache, "crop", None))
        and bool(getattr(cache, "is_croppable", True))
    )


def _sample(probs: Tensor, generator: torch.Generator | None) -> int:
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _uniform(generator: torch.Generator | None) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, device=device).item())


def verify_drafts(
    draft: list[int],
    p: Tensor,
    q: Tensor | None,
    greedy: bool,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """How many draft tokens to keep, and the target's next token after them.

    `p` is [k+1, V]: target logits (greedy) or probabilities (sampling) at each draft position
    and one past the last; `q` is [k, V] drafter probabilities (unused when greedy).
    """
    k = len(draft)
    if greedy:
        best = p.argmax(-1).tolist()
        n = 0
        while n < k and draft[n] == best[n]:
            n += 1
        return n, best[n]
    if k and q is None:
        raise ValueError("sampling verification needs the drafter probabilities q")
    for i, x in enumerate(draft):
        assert q is not None
        px, qx = float(p[i, x]), float(q[i, x])
        if _uniform(generator) * qx < px:  # u < p/q, i.e. keep with probability min(1, p/q)
            continue
        residual = (p[i] - q[i]).clamp_min(0)
        total = float(residual.sum())
        return i, _sample(residual / total if total > 0 else p[i], generator)
    return k, _sample(p[k], generator)


def _cut_at_eos(tokens: list[int], eos: int | None) -> tuple[list[int], bool]:
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1], True
    return tokens, False


def _prompt_list(prompt_ids: Tensor) -> list[int]:
    if prompt_ids.dim() == 2:
        if prompt_ids.shape[0] != 1:
            raise ValueError(f"prompt_ids must be [1, L], got {tuple(prompt_ids.shape)}")
        prompt_ids = prompt_ids[0]
    return [int(t) for t in prompt_ids.tolist()]


@torch.inference_mode()
def speculative_generate(
    target: Any,
    drafter: Any,
    prompt_ids: Tensor,
    max_new_tokens: int,
    gamma: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    vocab_size: int | None = None,
    use_cache: bool | None = None,
) -> SpecResult:
    """Decode `max_new_tokens` (fewer at eos) with `drafter` proposing `gamma` tokens per round.

    `vocab_size` is the tokenizer size, checked against both heads. `use_cache=False` forces
    recomputation from the whole sequence (reference path); None uses the KV cache whenever
    it can be cropped.
    """
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    vocab = shared_vocab(target, drafter, vocab_size)
    greedy = temperature == 0
    seq = _prompt_list(prompt_ids)
    t_dec = _Decoder(target, vocab, use_cache)
    d_dec = _Decoder(drafter, vocab, use_cache)
    result = SpecResult(
        tokens=[],
        target_calls=0,
        proposed_by_position=[0] * gamma,
        accepted_by_position=[0] * gamma,
    )
    while len(result.tokens) < max_new_tokens:
        # Never draft past the budget: the round adds at most k + 1 tokens.
        k_max = min(gamma, max_new_tokens - len(result.tokens) - 1)
        draft: list[int] = []
        qs: list[Tensor] = []
        for _ in range(k_max):
            logits = d_dec.logits(seq + draft, 1)[0]
            if greedy:
                token = int(logits.argmax())
            else:
                q = torch.softmax(logits / temperature, dim=-1)
                token = _sample(q, generator)
                qs.append(q)
            draft.append(token)
            if token == eos_token_id:
                break
        logits = t_dec.logits(seq + draft, len(draft) + 1)
        p = logits if greedy else torch.softmax(logits / temperature, dim=-1)
        q_all = torch.stack(qs).to(p.device) if qs else None
        n, nxt = verify_drafts(draft, p, q_all, greedy, generator)
        result.target_calls += 1
        result.accepted.append(n)
        for j in range(len(draft)):
            result.proposed_by_position[j] += 1
            result.accepted_by_position[j] += int(j < n)
        new, done = _cut_at_eos(draft[:n] + [nxt], eos_token_id)
        seq += new
        result.tokens += new
        if done:
            break
    return result


@torch.inference_mode()
def target_generate(
    target: Any,
    prompt_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    vocab_size: int | None = None,
    use_cache: bool | None = None,
) -> list[int]:
    """The baseline: the target alone, token by token with its KV cache.

    `vocab_size` limits the logits to the first rows, as speculative decoding compares them.
    """
    vocab = head_size(target) if vocab_size is None else vocab_size
    seq = _prompt_list(prompt_ids)
    dec = _Decoder(target, vocab, use_cache)
    out: list[int] = []
    while len(out) < max_new_tokens:
        logits = dec.logits(seq, 1)[0]
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = _sample(torch.softmax(logits / temperature, dim=-1), generator)
        seq.append(token)
        out.append(token)
        if token == eos_token_id:
            break
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def evaluate_speculation(
    target: Any,
    drafter: Any,
    prompts: list[Tensor],
    gamma: int = 4,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    eos_token_id: int | None = None,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """Acceptance, tokens per target call and measured speedup of `drafter` for `target`.

    Both timings run in this process on the same prompts after a warm-up run of each. The
    greedy check (speculative == target greedy on every prompt) runs at any temperature.
    """
    if not prompts:
        raise ValueError("evaluate_speculation needs at least one prompt")
    vocab = shared_vocab(target, drafter, vocab_size)
    device = next(target.parameters()).device
    modes = (target.training, drafter.training)
    target.eval()
    drafter.eval()
    common = {"eos_token_id": eos_token_id, "vocab_size": vocab}

    def run_target(temp: float) -> list[list[int]]:
        gen = _generator(device, seed)
        return [target_generate(target, p, max_new_tokens, temp, gen, **common) for p in prompts]

    def run_spec(temp: float) -> list[SpecResult]:
        gen = _generator(device, seed)
        return [
            speculative_generate(target, drafter, p, max_new_tokens, gamma, temp, gen, **common)
            for p in prompts
        ]

    try:
        gen = _generator(device, seed)
        target_generate(target, prompts[0], max_new_tokens, temperature, gen, **common)
        speculative_generate(
            target, drafter, prompts[0], max_new_tokens, gamma, temperature, gen, **common
        )
        _sync(device)
        start = time.perf_counter()
        baseline = run_target(temperature)
        _sync(device)
        target_seconds = time.perf_counter() - start
        start = time.perf_counter()
        spec = run_spec(temperature)
        _sync(device)
        spec_seconds = time.perf_counter() - start
        if temperature == 0:
            greedy_target, greedy_spec = baseline, [r.tokens for r in spec]
        else:
            greedy_target, greedy_spec = run_target(0.0), [r.tokens for r in run_spec(0.0)]
    finally:
        target.train(modes[0])
        drafter.train(modes[1])

    proposed = sum(r.proposed for r in spec)
    accepted = sum(sum(r.accepted) for r in spec)
    calls = sum(r.target_calls for r in spec)
    new_tokens = sum(len(r.tokens) for r in spec)
    by_pos_prop = [sum(r.proposed_by_position[j] for r in spec) for j in range(gamma)]
    by_pos_acc = [sum(r.accepted_by_position[j] for r in spec) for j in range(gamma)]
    return {
        "acceptance_rate": accepted / proposed if proposed else float("nan"),
        "mean_accepted": new_tokens / calls if calls else float("nan"),
        "speedup": target_seconds / spec_seconds if spec_seconds > 0 else float("nan"),
        "greedy_identical": greedy_target == greedy_spec,
        # null for a position no round reached (--max-new-tokens below --gamma): JSON has no NaN
        "acceptance_by_position": [
            a / p if p else None for a, p in zip(by_pos_acc, by_pos_prop, strict=True)
        ],
        "gamma": gamma,
        "temperature": temperature,
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "target_calls": calls,
        "target_seconds": target_seconds,
        "speculative_seconds": spec_seconds,
    }


def load_prompt_texts(
    path: str, column: str | None = None, max_prompts: int | None = None
) -> list[str]:
    """Prompt strings from a data file (jsonl/json/parquet/txt/saved dataset).

    Without `column`, the first of `prompt`, `question`, `text` present is used. A prompt
    that is not text is refused (naming its file, line and column); empty ones are sifted
    as training data is (`anydistill.data.loading.sift_records`).
    """
    from anydistill.data.loading import load_located
    from anydistill.data.records import string_column

    ds, origin = load_located(path, max_examples=max_prompts, field="--data")
    names = [column] if column else [c for c in PROMPT_COLUMNS if c in ds.column_names]
    if not names or names[0] not in ds.column_names:
        wanted = column or " or ".join(PROMPT_COLUMNS)
        raise DataError(
            f"--data: {path} has no `{wanted}` column (columns: {', '.join(ds.column_names)}); "
            "rename it or name the column with --column"
        )
    return string_column(ds, origin, names[0], "--data")


def encode_prompts(tokenizer: Any, texts: list[str], device: Any = "cpu") -> list[Tensor]:
    """Token ids [1, L] per prompt, with bos prepended as greedy evaluation does."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [
        torch.tensor([bos + tokenizer(t, add_special_tokens=False)["input_ids"]], device=device)
        for t in texts
    ]
