"""`anydistill generate`: a recipe's prompts -> teacher samples -> verified, filtered,
deduplicated and decontaminated reasoning traces, with a card.

Stages: prompts (`prompts.py`) -> sample + verify, resumable (`store.py`) -> filter -> dedup
prompts, then traces -> decontaminate prompts, then traces -> cap per prompt (`stages.py`)
-> ``traces.jsonl`` + card (`card.py`). ``traces.jsonl`` holds prompt/completion rows, so
`anydistill train` reads it as data (``data.path: OUT/traces.jsonl``). This module is the
edge where the recipe's config becomes plain settings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anydistill.config import RunConfig, TraceGenConfig
from anydistill.errors import ConfigError, DataError
from anydistill.traces.card import build_card, write_card
from anydistill.traces.decontam import Benchmark, load_benchmark
from anydistill.traces.endpoint import Prompt
from anydistill.traces.prompts import PromptItem, load_prompts, with_system
from anydistill.traces.stages import Filters, Outcome, pass_rates, run_stages
from anydistill.traces.store import LOCK, META, SAMPLES, Store, Trace, fingerprint, write_atomic
from anydistill.traces.teacher import Sampler
from anydistill.traces.verify import Verdict

__all__ = ["Generated", "generate_traces", "TRACES_FILE"]

TRACES_FILE = "traces.jsonl"
# The record fields `verify_trace` reads: a stored verdict is redone when one changes.
_CHECKED = ("prompt", "answer", "solution", "test", "tests", "test_list", "entry_point")


@dataclass(frozen=True)
class Generated:
    traces: Path  # OUT/traces.jsonl
    rows: int
    prompts: int
    card: dict[str, Any]


def _need_extras(gen: TraceGenConfig) -> None:
    """One sentence, before any work, when the optional `traces` extra is missing."""
    needed = ["math_verify"]
    if gen.dedup.prompts or gen.dedup.traces:
        needed.append("datasketch")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"generate: verifying and deduplicating traces needs {', '.join(missing)}; "
            "pip install 'anydistill[traces]'"
        )


def _benchmarks(gen: TraceGenConfig) -> list[Benchmark]:
    field = "generate.decontaminate.benchmarks"
    return [
        load_benchmark(b.path, b.name, b.field, field_name=f"{field}.{i}.path")
        for i, b in enumerate(gen.decontaminate.benchmarks)
    ]


def _filters(gen: TraceGenConfig, benchmarks: list[Benchmark]) -> Filters:
    return Filters(
        keep=gen.keep,
        min_chars=gen.min_chars,
        max_chars=gen.max_chars,
        dedup_prompts=gen.dedup.prompts,
        dedup_traces=gen.dedup.traces,
        threshold=gen.dedup.threshold,
        num_perm=gen.dedup.num_perm,
        benchmarks=benchmarks,
        ngram=gen.decontaminate.n,
        max_per_prompt=gen.max_per_prompt,
    )


class _Teacher:
    """The sampler, its name in the rows and its identity in the fingerprint. A local model
    is loaded only after the store accepted the fingerprint (a refusal costs no load)."""

    def __init__(self, cfg: RunConfig, gen: TraceGenConfig, out: Path, items: list[PromptItem]):
        from anydistill.traces.teacher import endpoint_sampler, model_identity, teacher_name

        self.cfg, self.gen = cfg, gen
        self.sampler: Sampler | None = None
        if gen.endpoint is not None:
            self.sampler = endpoint_sampler(gen.endpoint)
            self.name = gen.endpoint.model
            self.identity: dict[str, Any] = {"endpoint": gen.endpoint.model}
            return
        if cfg.teacher.kind != "model":
            raise ConfigError(
                "teacher.kind: `anydistill generate` samples a teacher model, not a "
                f"`kind: {cfg.teacher.kind}` teacher; point teacher.path at the model or set "
                "generate.endpoint (for a served teacher: its url and model)"
            )
        from anydistill.models.run_tokenizers import teacher_tokenizer
        from anydistill.models.tokenizer import tokenizer_hash

        # A tokenizer the recipe trains ({vocab_size: N}) is trained on the prompts and the
        # records' answers, and kept in OUT/tokenizer so a rerun reads the same one.
        self.tokenizer = teacher_tokenizer(cfg, out, lambda: _texts(items, cfg))
        self.name = teacher_name(cfg)
        self.backend = gen.backend or "hf"
        self.identity = model_identity(cfg, tokenizer_hash(self.tokenizer), self.backend)

    def load(self) -> Sampler:
        if self.sampler is None:
            from anydistill.traces.teacher import model_sampler

            batch = self.gen.batch_size  # sequences per generate call
            self.sampler = model_sampler(self.cfg, self.tokenizer, self.backend, batch)
        return self.sampler


class _Checker:
    """Verifies a trace against its prompt's record (math answer or code tests)."""

    def __init__(self, items: Sequence[PromptItem]) -> None:
        self.items = items

    def verify(self, prompt: int, completion: str) -> Verdict:
        from anydistill.traces.verify import verify_trace

        return verify_trace(self.items[prompt].record, completion)

    def reference(self, prompt: int) -> str:
        record = self.items[prompt].record
        fields = json.dumps({k: record.get(k) for k in _CHECKED}, sort_keys=True, default=str)
        return hashlib.sha256(fields.encode()).hexdigest()[:16]


def _texts(items: list[PromptItem], cfg: RunConfig) -> Iterator[str]:
    for item in items:
        yield item.text
        answer = item.record.get(cfg.data.completion_column)
        if isinstance(answer, str) and answer:
            yield answer


def _data_name(cfg: RunConfig) -> str:
    if cfg.data.synthetic is not None:
        return f"synthetic {cfg.data.synthetic} data"
    return str(cfg.data.path)


def _rows(
    kept: Sequence[Trace],
    prompts: Sequence[Prompt],
    items: Sequence[PromptItem],
    rates: Sequence[float | None],
    teacher: str,
) -> Iterator[str]:
    for t in kept:
        prompt = prompts[t.prompt]
        # A chat prompt gets a chat completion: `train` reads both lists as a conversation.
        chat = not isinstance(prompt, str)
        completion = [{"role": "assistant", "content": t.completion}] if chat else t.completion
        rate = rates[t.prompt]
        row = {
            "prompt": prompt,
            "completion": completion,
            "verified": t.verified,
            "pass_rate": None if rate is None else round(rate, 4),
            "teacher": teacher,
            "sample_index": t.sample,
            "source": items[t.prompt].source,
        }
        yield json.dumps(row, ensure_ascii=False) + "\n"


def _nothing_left(outcome: Outcome, traces: Sequence[Trace], gen: TraceGenConfig) -> DataError:
    stage = next((s for s in outcome.stages if s["traces_out"] == 0), outcome.stages[-1])
    if stage["stage"] == "filter" and gen.keep == "correct":
        bad = sum(t.verified == "incorrect" for t in traces)
        unverified = len(traces) - bad - sum(t.verified == "correct" for t in traces)
        return DataError(
            f"generate.keep: none of the {len(traces)} traces was verified correct ({bad} "
            f"incorrect, {unverified} unverified); set generate.keep=all to keep them "
            "labelled, or give the records an answer, solution or tests"
        )
    return DataError(
        f"generate: the {stage['stage']} stage removed every remaining trace; loosen its "
        "settings in the recipe's generate section (the samples are kept: rerun to apply)"
    )


def _undo(store: Store, before: set[str], made_out: bool) -> None:
    """After a failure before the first chunk of samples: remove what this call made."""
    if store.has_samples():
        return  # resumable: keep it all
    for name in (SAMPLES, "tokenizer", "tokenizer.tmp", META, META + ".tmp", LOCK):
        path = store.out / name
        if name in before or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if made_out and store.out.is_dir() and not any(store.out.iterdir()):
        store.out.rmdir()


def generate_traces(
    cfg: RunConfig,
    out: str | Path,
    *,
    sampler: Sampler | None = None,
    teacher: str | None = None,
    progress: bool = True,
) -> Generated:
    """Sample (or finish sampling) into `out`, then filter and write the dataset and card.

    `sampler`: any object with `sample(prompts, n, temperature, top_p, max_tokens, seed)`,
    used instead of the recipe's teacher (`teacher` names it in the rows and fingerprint).
    A failure before the first chunk is stored removes what the call made; after it, the
    samples stay and a rerun continues.
    """
    gen = cfg.generate or TraceGenConfig()
    _need_extras(gen)
    store = Store(Path(out))
    store.check_foreign()  # before anything is written
    benchmarks = _benchmarks(gen)  # a bad benchmark path fails before any sampling
    items = load_prompts(cfg.data, cfg.train.seed)
    made_out = not store.out.exists()
    before = set() if made_out else {p.name for p in store.out.iterdir()}
    store.acquire()
    try:
        return _generate(cfg, gen, store, items, benchmarks, sampler, teacher, progress)
    except BaseException:
        _undo(store, before, made_out)
        raise
    finally:
        store.release()


def _generate(
    cfg: RunConfig,
    gen: TraceGenConfig,
    store: Store,
    items: list[PromptItem],
    benchmarks: list[Benchmark],
    sampler: Sampler | None,
    teacher: str | None,
    progress: bool,
) -> Generated:
    prompts = [with_system(item.prompt, gen.system_prompt) for item in items]
    if sampler is None:
        source = _Teacher(cfg, gen, store.out, items)
        name, identity = source.name, source.identity
    else:
        name = teacher or type(sampler).__name__
        identity = {"sampler": name}
    settings = {
        "teacher": identity,
        "samples_per_prompt": gen.samples_per_prompt,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "max_new_tokens": gen.max_new_tokens,
        "batch_size": gen.batch_size,  # chunking: each chunk has its own seed
        "seed": gen.seed,
        "system_prompt": gen.system_prompt,
    }
    store.claim(fingerprint(settings, prompts), settings)
    traces = store.sample(
        prompts,
        source.load() if sampler is None else sampler,
        _Checker(items),
        n=gen.samples_per_prompt,
        chunk=gen.batch_size,
        seed=gen.seed,
        sampling={
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "max_tokens": gen.max_new_tokens,
        },
        progress=progress,
    )
    rates = pass_rates(traces, len(items))
    outcome = run_stages(traces, [item.text for item in items], _filters(gen, benchmarks))
    if not outcome.kept:
        raise _nothing_left(outcome, traces, gen)
    card = build_card(
        teacher=name,
        data=_data_name(cfg),
        settings=gen.model_dump(mode="json"),
        n=gen.samples_per_prompt,
        traces=traces,
        rates=rates,
        stages=outcome.stages,
        removed=outcome.removed,
        kept=outcome.kept,
        sources=[item.source for item in items],
    )
    path = store.out / TRACES_FILE
    write_atomic(path, _rows(outcome.kept, prompts, items, rates, name))
    write_card(store.out, card, traces, outcome.kept, rates)
    return Generated(path, len(outcome.kept), card["output"]["prompts"], card)
