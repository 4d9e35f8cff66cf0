"""From `source:` in the recipe to a `Source`: the one place that reads that section."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anydistill.config import RunConfig
from anydistill.config.models import SERVER_FIELDS
from anydistill.data import BatchStream
from anydistill.data.tokenize import Example
from anydistill.generation import Sampling, derive_seed, make_backend
from anydistill.sources.base import GeneratedSource, Source
from anydistill.sources.completer import Completer
from anydistill.sources.mixture import LambdaSampler, MixtureSource
from anydistill.sources.paired import PairedSource
from anydistill.sources.paired_traces import PairedTracesSource, make_pairs, trace_rows
from anydistill.sources.prompts import require_prompts
from anydistill.sources.replay import AdaptiveProbability, ReplayBuffer, ReplaySource
from anydistill.sources.rng import SourceRng
from anydistill.sources.upfront import fingerprint, generate_upfront

log = logging.getLogger(__name__)


@dataclass
class SourceParts:
    """What a source is built from: the run's models, tokenizer and examples, per rank."""

    cfg: RunConfig
    tokenizer: Any
    student: torch.nn.Module  # the transformers model the optimizer updates in place
    teacher: torch.nn.Module | None
    examples: list[Example]
    run_dir: Path
    rank: int = 0
    world_size: int = 1
    progress: bool = False
    collator: Callable[[list], Any] | None = None  # for aligned (two-tokenizer) examples

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else 0

    def completer(self, role: str) -> Completer:
        g = self.cfg.source.generation
        model = self.student if role == "student" else self.teacher
        if model is None:
            raise ValueError(f"source: the {role} model is needed to generate but was not built")
        sampling = Sampling(g.temperature, g.top_p, g.max_new_tokens, g.batch_size)
        eos = self.tokenizer.eos_token_id
        gen_pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        backend = make_backend(g.backend, model, gen_pad, eos, sampling, live=role == "student")
        return Completer(
            backend, role, self.cfg.data.seq_len, g.max_new_tokens, eos, self.cfg.train.seed
        )

    def stream(self, examples: list[Example]) -> BatchStream:
        t = self.cfg.train
        return BatchStream(
            examples, t.micro_batch_size, t.seed, rank=self.rank, world_size=self.world_size
        )


def upfront_settings(cfg: RunConfig, tokenizer: Any) -> dict[str, Any]:
    """Everything the teacher's upfront generations depend on, besides the prompts."""
    g = cfg.source.generation
    return {
        # without a server teacher's keys (None here): stores made before they existed match
        "teacher": cfg.teacher.model_dump(mode="json", exclude=set(SERVER_FIELDS)),
        "vocab": len(tokenizer),
        "seq_len": cfg.data.seq_len,
        "seed": cfg.train.seed,
        "sampling": [g.temperature, g.top_p, g.max_new_tokens, g.batch_size],
        "v": 1,
    }


def _upfront_examples(parts: SourceParts) -> tuple[list[Example], float]:
    """The teacher's upfront completions of every training prompt, and the seconds spent."""
    cfg = parts.cfg
    completer = parts.completer("teacher")
    store = Path(cfg.source.store) if cfg.source.store else parts.run_dir / "generated"
    key = fingerprint(parts.examples, upfront_settings(cfg, parts.tokenizer))
    chunk = cfg.source.generation.batch_size
    made = generate_upfront(parts.examples, completer, store, key, chunk, parts.progress)
    return made, completer.seconds


def build_source(parts: SourceParts, mode: str) -> Source:
    """The configured source over `parts.examples`; upfront generation happens here."""
    src = parts.cfg.source
    require_prompts(src.kind, mode)
    if src.kind == "dataset":
        return Source(parts.stream(parts.examples), parts.pad_id, [], parts.collator)
    if src.kind == "paired_traces":
        return _paired_traces(parts, mode)
    upfront = src.teacher_generates() and src.mode == "upfront"
    examples, upfront_s = _upfront_examples(parts) if upfront else (parts.examples, 0.0)
    stream = parts.stream(examples)
    teacher = parts.completer("teacher") if src.teacher_generates() and not upfront else None
    source = _assemble(parts, stream, teacher)
    source.upfront_s = upfront_s
    return source


def _paired_traces(parts: SourceParts, mode: str) -> Source:
    """REDI's pairs: the training rows' `verified` verdicts, one pair per prompt."""
    cfg, t = parts.cfg, parts.cfg.train
    keys, codes = trace_rows(cfg.data, t.seed, parts.tokenizer, parts.examples, mode)
    pairing = make_pairs(keys, codes, t.seed)
    if parts.rank == 0:
        left = pairing.prompts - len(pairing.pairs)
        (log.warning if left or pairing.unverified else log.info)(pairing.describe())
    return PairedTracesSource(
        parts.examples, pairing, t.micro_batch_size, t.seed, parts.pad_id,
        rank=parts.rank, world_size=parts.world_size, where=f"data.path: {cfg.data.path}",
    )  # fmt: skip


def _assemble(parts: SourceParts, stream: BatchStream, teacher: Completer | None) -> Source:
    src, pad, rank = parts.cfg.source, parts.pad_id, parts.rank
    if src.kind == "teacher_generated":
        return GeneratedSource(stream, pad, teacher, rank) if teacher else Source(stream, pad, [])
    student = parts.completer("student")
    if src.kind == "student_generated":
        return GeneratedSource(stream, pad, student, rank)
    seed = parts.cfg.train.seed
    if src.kind == "mixture":
        sampler = LambdaSampler(src.lambda_, derive_seed(seed, "mixture"))
        return MixtureSource(stream, pad, student, teacher, sampler, rank)
    if src.kind == "paired":
        return PairedSource(stream, pad, student, teacher, rank)
    r = src.replay
    return ReplaySource(
        stream,
        pad,
        student,
        teacher,
        AdaptiveProbability(r.init_prob, r.prob_step, r.max_prob, r.tolerance),
        ReplayBuffer(r.buffer_size),
        SourceRng(derive_seed(seed, "replay", rank)),
        parts.cfg.train.max_steps,
        r.monitor,
        rank,
    )
