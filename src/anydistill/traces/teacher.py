"""The teacher `generate` samples: the recipe's model through a generation backend (hf or
vllm), or a served model through `EndpointSampler`. Both answer `sample(prompts, n, ...)`
with n completion texts per prompt, so the pipeline (and a test's fake) treat them alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol

from anydistill.config import RunConfig
from anydistill.config.generate import EndpointSection
from anydistill.errors import ConfigError, DataError
from anydistill.generation import Backend, Sampling, make_backend
from anydistill.traces.endpoint import EndpointConfig, EndpointSampler, Prompt

__all__ = [
    "ModelSampler",
    "Sampler",
    "encode_prompt",
    "endpoint_sampler",
    "model_identity",
    "model_sampler",
    "teacher_name",
]


class Sampler(Protocol):
    def sample(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[list[str]]:
        """``n`` completion texts for each prompt, in prompt order."""
        ...


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids as training will see the prompt: [bos] + text, or the chat template with
    the assistant's generation prompt."""
    if isinstance(prompt, str):
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        start = [bos] if bos is not None and bos != eos else []  # as data.tokenize does
        return start + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data: chat prompts (or generate.system_prompt) need a tokenizer with a chat "
            "template; use the teacher's instruct tokenizer or plain-text prompts without "
            "generate.system_prompt"
        )
    try:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # jinja raises its own errors, e.g. on role order
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"data: the teacher's chat template rejected a prompt ({first})") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class ModelSampler:
    """A local teacher model: each prompt is repeated n times in one `generate` call, whose
    seed fixes every sample (the backend samples under its own forked RNG)."""

    def __init__(self, backend: Backend, tokenizer: Any, max_positions: int | None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_positions = max_positions

    def sample(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[list[str]]:
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        longest = max(len(p) for p in ids)
        if self.max_positions is not None and longest + max_tokens > self.max_positions:
            raise ConfigError(
                f"generate.max_new_tokens: a prompt of {longest} tokens plus {max_tokens} new "
                f"ones exceeds the teacher's {self.max_positions} positions; lower "
                "generate.max_new_tokens or shorten the prompts"
            )
        current = self.backend.sampling  # type: ignore[attr-defined]
        self.backend.sampling = dataclasses.replace(  # type: ignore[attr-defined]
            current, temperature=temperature, top_p=top_p, max_new_tokens=max_tokens
        )
        flat = [p for p in ids for _ in range(n)]
        outs = self.backend.generate(flat, max_tokens, seed or 0)
        texts = [self.tokenizer.decode(o, skip_special_tokens=True) for o in outs]
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def model_identity(cfg: RunConfig, tokenizer_hash: str, backend: str) -> dict[str, Any]:
    """What makes the teacher's samples what they are (for the store's fingerprint)."""
    t = cfg.teacher
    ident: dict[str, Any] = {"path": t.path, "revision": t.revision, "dtype": t.dtype}
    if t.init is not None:  # random weights: the config and the seed are the identity
        blob = json.dumps(t.init, sort_keys=True).encode()
        ident.update(init_sha=hashlib.sha256(blob).hexdigest()[:32], seed=cfg.train.seed + 1)
    return {**ident, "tokenizer": tokenizer_hash, "backend": backend}


def teacher_name(cfg: RunConfig) -> str:
    """The `teacher` of each row: the model's path or hub id, or its random-init type."""
    if cfg.teacher.path is not None:
        return cfg.teacher.path
    return f"{(cfg.teacher.init or {}).get('model_type', 'model')} (random init)"


def model_sampler(cfg: RunConfig, tokenizer: Any, backend: str, batch_size: int) -> ModelSampler:
    """The recipe's teacher on its device, wrapped for sampling (loads the weights);
    `batch_size`: sequences per generate call."""
    from anydistill.models.from_config import load_model, pick_device
    from anydistill.models.loading import freeze, max_positions
    from anydistill.models.tokenizer import real_vocab_size

    if cfg.teacher.kind != "model":
        raise ConfigError(
            "teacher.kind: `anydistill generate` samples a teacher model, not a "
            f"`kind: {cfg.teacher.kind}` teacher; point teacher.path at the model or set "
            "generate.endpoint (for a served teacher: its url and model)"
        )
    device = pick_device(cfg.train.device)
    vocab = real_vocab_size(tokenizer)
    seed = cfg.train.seed + 1  # the seed `train` builds the same teacher with
    model = freeze(load_model(cfg.teacher, "teacher", vocab, device, frozen=True, seed=seed))
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    pad = pad if pad is not None else (eos if eos is not None else 0)
    engine = make_backend(backend, model, pad, eos, Sampling(batch_size=batch_size), False)
    return ModelSampler(engine, tokenizer, max_positions(model))


def endpoint_sampler(section: EndpointSection) -> EndpointSampler:
    """`generate.endpoint` as a client (its settings checked in one sentence each)."""
    return EndpointSampler(
        EndpointConfig(
            url=section.url,
            model=section.model,
            api_key_env=section.api_key_env,
            max_concurrency=section.max_concurrency,
            requests_per_second=section.requests_per_second,
            timeout=section.timeout,
            retries=section.retries,
            field="generate.endpoint",
        )
    )
