"""The stages after sampling: filter -> dedup (prompts, then traces) -> decontaminate
(prompts, then traces) -> cap per prompt. Each one records what came in, what went out and
what it removed and why, for the card.

A prompt removed by dedup or decontamination takes all its traces with it. Prompts are
deduplicated among those that still have a trace, so a near-copy whose original lost all
its traces to the filter is not dropped for nothing. The cap runs last so that it keeps K
distinct, clean traces (correct ones first when `keep: all`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from anydistill.traces.decontam import Benchmark, decontaminate
from anydistill.traces.dedup import deduplicate
from anydistill.traces.store import Trace

__all__ = ["Filters", "Outcome", "run_stages", "pass_rates"]

_SNIPPET = 160  # characters of a text quoted in the card
_RANK = {"correct": 0, "unverified": 1, "incorrect": 2}  # which traces a cap keeps first


@dataclass(frozen=True)
class Filters:
    """The stage settings as plain values (the `generate:` section, translated)."""

    keep: str = "correct"  # correct | all
    min_chars: int = 0
    max_chars: int | None = None
    dedup_prompts: bool = True
    dedup_traces: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    benchmarks: Sequence[Benchmark] = ()
    ngram: int = 8
    max_per_prompt: int | None = None


@dataclass
class Outcome:
    kept: list[Trace]
    stages: list[dict[str, Any]] = field(default_factory=list)  # counts in and out
    removed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # stage -> rows


def snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."


def pass_rates(traces: Sequence[Trace], prompts: int) -> list[float | None]:
    """Per prompt: correct / verified samples; None when none could be verified."""
    correct, verified = [0] * prompts, [0] * prompts
    for t in traces:
        correct[t.prompt] += t.verified == "correct"
        verified[t.prompt] += t.verified != "unverified"
    return [c / v if v else None for c, v in zip(correct, verified, strict=True)]


class _Run:
    def __init__(self, traces: list[Trace], texts: Sequence[str]) -> None:
        self.kept = traces
        self.texts = texts  # each prompt's text
        self.outcome = Outcome(kept=[])

    def stage(self, name: str, kept: list[Trace], note: str, removed: list[dict] | None) -> None:
        before = self.kept
        self.outcome.stages.append(
            {
                "stage": name,
                "prompts_in": len({t.prompt for t in before}),
                "prompts_out": len({t.prompt for t in kept}),
                "traces_in": len(before),
                "traces_out": len(kept),
                "note": note,
            }
        )
        if removed is not None:
            self.outcome.removed[name] = removed
        self.kept = kept

    def prompts_alive(self) -> list[int]:
        return sorted({t.prompt for t in self.kept})

    def without_prompts(self, gone: set[int]) -> list[Trace]:
        return [t for t in self.kept if t.prompt not in gone]


def _filter(run: _Run, f: Filters) -> None:
    reasons: Counter[str] = Counter()
    kept = []
    for t in run.kept:
        why = None
        if f.keep == "correct" and t.verified != "correct":
            why = t.verified
        elif len(t.completion) < f.min_chars:
            why = "shorter than min_chars"
        elif f.max_chars is not None and len(t.completion) > f.max_chars:
            why = "longer than max_chars"
        if why is None:
            kept.append(t)
        else:
            reasons[why] += 1
    note = f"keep {f.keep}, {f.min_chars} <= characters <= {f.max_chars or 'any'}"
    run.stage(
        "filter", kept, note, [{"reason": r, "traces": c} for r, c in sorted(reasons.items())]
    )


def _dedup_prompts(run: _Run, f: Filters) -> None:
    if not f.dedup_prompts:
        run.stage("dedup prompts", run.kept, "off", None)
        return
    alive = run.prompts_alive()
    result = deduplicate([run.texts[p] for p in alive], f.threshold, f.num_perm)
    removed = [
        {
            "prompt": alive[d.index],
            "duplicate_of": alive[d.kept],
            "similarity": round(d.similarity, 4),
            "kind": d.kind,
            "text": snippet(run.texts[alive[d.index]]),
            "kept_text": snippet(run.texts[alive[d.kept]]),
        }
        for d in result.removed
    ]
    gone = {r["prompt"] for r in removed}
    note = f"exact, then MinHash similarity >= {f.threshold}"
    run.stage("dedup prompts", run.without_prompts(gone), note, removed)


def _dedup_traces(run: _Run, f: Filters) -> None:
    if not f.dedup_traces:
        run.stage("dedup traces", run.kept, "off", None)
        return
    traces = run.kept
    result = deduplicate([t.completion for t in traces], f.threshold, f.num_perm)
    removed = [
        {
            "prompt": traces[d.index].prompt,
            "sample": traces[d.index].sample,
            "duplicate_of": {"prompt": traces[d.kept].prompt, "sample": traces[d.kept].sample},
            "similarity": round(d.similarity, 4),
            "kind": d.kind,
            "text": snippet(traces[d.index].completion),
        }
        for d in result.removed
    ]
    note = f"exact, then MinHash similarity >= {f.threshold}"
    run.stage("dedup traces", [traces[i] for i in result.kept], note, removed)


def _decontaminate(run: _Run, f: Filters) -> None:
    names = ", ".join(b.name for b in f.benchmarks)
    note = f"{f.ngram}-gram overlap with {names}" if names else "off (no benchmarks given)"
    if not f.benchmarks:
        run.stage("decontaminate prompts", run.kept, note, None)
        run.stage("decontaminate traces", run.kept, note, None)
        return
    alive = run.prompts_alive()
    _, hits = decontaminate([run.texts[p] for p in alive], f.benchmarks, f.ngram)
    removed = [
        {
            "prompt": alive[h["index"]],
            "benchmark": h["benchmark"],
            "item": h["item"],
            "ngram": h["ngram"],
            "text": snippet(run.texts[alive[h["index"]]]),
        }
        for h in hits
    ]
    run.stage(
        "decontaminate prompts", run.without_prompts({r["prompt"] for r in removed}), note, removed
    )
    traces = run.kept
    _, hits = decontaminate([t.completion for t in traces], f.benchmarks, f.ngram)
    removed = [
        {
            "prompt": traces[h["index"]].prompt,
            "sample": traces[h["index"]].sample,
            "benchmark": h["benchmark"],
            "item": h["item"],
            "ngram": h["ngram"],
            "text": snippet(traces[h["index"]].completion),
        }
        for h in hits
    ]
    gone = {h["index"] for h in hits}
    run.stage(
        "decontaminate traces", [t for i, t in enumerate(traces) if i not in gone], note, removed
    )


def _cap(run: _Run, f: Filters) -> None:
    if f.max_per_prompt is None:
        run.stage("max_per_prompt", run.kept, "off", None)
        return
    by_prompt: dict[int, list[Trace]] = {}
    for t in run.kept:
        by_prompt.setdefault(t.prompt, []).append(t)
    chosen = set()
    for traces in by_prompt.values():
        best = sorted(traces, key=lambda t: (_RANK[t.verified], t.sample))[: f.max_per_prompt]
        chosen.update((t.prompt, t.sample) for t in best)
    kept = [t for t in run.kept if (t.prompt, t.sample) in chosen]
    run.stage("max_per_prompt", kept, f"at most {f.max_per_prompt} per prompt", None)


def run_stages(traces: list[Trace], texts: Sequence[str], f: Filters) -> Outcome:
    """The traces that pass every stage (in prompt, sample order) and the card's account.
    `texts`: each prompt's text, indexed by `Trace.prompt`."""
    run = _Run(traces, texts)
    prompts = len({t.prompt for t in traces})
    counts = Counter(t.verified for t in traces)
    note = ", ".join(f"{counts[v]} {v}" for v in ("correct", "incorrect", "unverified"))
    run.outcome.stages.append(
        {
            "stage": "sample + verify",
            "prompts_in": len(texts),
            "prompts_out": prompts,
            "traces_in": 0,
            "traces_out": len(traces),
            "note": note,
        }
    )
    for stage in (_filter, _dedup_prompts, _dedup_traces, _decontaminate, _cap):
        stage(run, f)
    run.outcome.kept = run.kept
    return run.outcome
