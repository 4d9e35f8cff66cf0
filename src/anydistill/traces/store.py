"""The sample store of `anydistill generate`: every prompt's n teacher samples, verified,
kept in `--out` so a stopped run continues where it stopped.

Prompts go in chunks of `chunk` prompts. Chunk c is sampled with a seed made from (seed, c)
alone and written whole as ``samples/chunk-<c>.jsonl`` (a temp name, fsynced, renamed), so a
run killed at any point and rerun samples only the missing chunks and ends with exactly the
samples of an unbroken run. ``generate.json`` holds the fingerprint of the prompts, the
teacher and the sampling settings; a store made with others is refused, never mixed. The
filters after sampling are not in the fingerprint: changing them reuses the samples. Each
stored verdict keeps a digest of what it was checked against (the record's answer or tests);
when that changes, the stored trace is verified again, not sampled again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from anydistill.errors import ConfigError, ModelError
from anydistill.generation.seeding import derive_seed
from anydistill.paths import check_writable_dir, refuse_foreign
from anydistill.traces.endpoint import Prompt
from anydistill.traces.teacher import Sampler
from anydistill.traces.verify import Verdict

__all__ = ["OUTPUTS", "Checker", "Store", "Trace", "fingerprint", "write_atomic"]

log = logging.getLogger(__name__)

META, SAMPLES, LOCK = "generate.json", "samples", ".anydistill-lock"
OUTPUTS = ("traces.jsonl", "card.json", "card.md", "pass_rate.png", "lengths.png")
# Every name `generate` writes into --out (a trained tokenizer too); anything else is foreign.
OURS = frozenset({META, SAMPLES, LOCK, "tokenizer", *OUTPUTS})


@dataclass(frozen=True)
class Trace:
    prompt: int  # index into the prompts
    sample: int  # 0..n-1
    completion: str
    verified: Verdict


class Checker(Protocol):
    """Verifies prompt i's traces; `reference(i)` changes when what they are checked against
    (the record's answer or tests) does, so a stored verdict is never stale."""

    def verify(self, prompt: int, completion: str) -> Verdict: ...

    def reference(self, prompt: int) -> str: ...


def fingerprint(settings: dict[str, Any], prompts: Sequence[Prompt]) -> str:
    """sha256 of the settings and every prompt, in order."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for prompt in prompts:
        digest.update(json.dumps(prompt, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def write_atomic(path: Path, data: str | bytes | Iterable[str]) -> None:
    """Write `path` whole or not at all: a temp name beside it, fsynced, then renamed.
    `data` may be an iterable of text pieces, written as they come (a large dataset)."""
    tmp = path.with_name(path.name + ".tmp")
    pieces = [data] if isinstance(data, (str, bytes)) else data
    try:
        with tmp.open("wb") as fh:
            for piece in pieces:
                fh.write(piece.encode("utf-8") if isinstance(piece, str) else piece)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _ours(name: str) -> bool:
    return name in OURS or (name.endswith(".tmp") and name.removesuffix(".tmp") in OURS)


def _clean_text(text: str) -> str:
    """Valid UTF-8 whatever a server sent (a lone surrogate would fail the write)."""
    return text.encode("utf-8", "replace").decode("utf-8")


class _Bar:
    """Prompts done, traces per second and the running pass rate (correct of verified)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]generate"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} prompts"),
            TextColumn("{task.fields[rate]} traces/s"),
            TextColumn("pass {task.fields[passed]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task("", total=total, completed=done, rate="-", passed="-")
        self.start = time.perf_counter()
        self.made = 0
        self.correct = self.verified = 0

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def count(self, traces: Sequence[Trace]) -> None:
        self.correct += sum(t.verified == "correct" for t in traces)
        self.verified += sum(t.verified != "unverified" for t in traces)

    def advance(self, prompts: int, traces: Sequence[Trace]) -> None:
        self.made += len(traces)
        self.count(traces)
        rate = self.made / max(time.perf_counter() - self.start, 1e-9)
        passed = f"{self.correct / self.verified:.0%}" if self.verified else "-"
        self.progress.update(self.task, advance=prompts, rate=f"{rate:,.1f}", passed=passed)


class Store:
    """`--out` as a sample store: checked, locked, fingerprinted; `sample` fills it."""

    def __init__(self, out: Path) -> None:
        self.out = check_writable_dir(out, "--out")
        self._lock: int | None = None

    def check_foreign(self) -> None:
        """Refuse a folder holding files `generate` did not write (checked before any write)."""
        if self.out.is_dir():
            theirs = [p.name for p in self.out.iterdir() if not _ours(p.name)]
            refuse_foreign(self.out, "--out", theirs, "`anydistill generate` did not write")

    def acquire(self) -> None:
        """One `generate` per folder: a flock the kernel drops when the holder dies."""
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"--out: {self.out} is in use by another `anydistill generate`; wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock = fd

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def has_samples(self) -> bool:
        folder = self.out / SAMPLES
        return folder.is_dir() and any(p.suffix == ".jsonl" for p in folder.iterdir())

    def claim(self, key: str, settings: dict[str, Any]) -> None:
        """The store holds samples for exactly these prompts and settings, or none yet."""
        meta = self.out / META
        if meta.is_file():
            try:
                saved = json.loads(meta.read_text()).get("fingerprint")
            except (ValueError, AttributeError, OSError):
                saved = None
            if saved != key:
                raise ConfigError(
                    f"--out: {self.out} holds traces generated from other prompts, teacher or "
                    "sampling settings; choose another --out, or delete it to start again"
                )
        else:
            write_atomic(meta, json.dumps({"fingerprint": key, "settings": settings}, indent=1))
        (self.out / SAMPLES).mkdir(exist_ok=True)
        for stale in (self.out / SAMPLES).glob("*.tmp"):  # a write a kill cut short
            stale.unlink()

    def _path(self, chunk: int) -> Path:
        return self.out / SAMPLES / f"chunk-{chunk:06d}.jsonl"

    def _read(
        self, chunk: int, first: int, count: int, n: int, check: Checker
    ) -> list[Trace] | None:
        """The chunk's traces when its file is whole and as expected, else None. A trace
        whose record's reference changed since it was verified is verified again."""
        path = self._path(chunk)
        if not path.is_file():
            return None
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            traces = [Trace(r["prompt"], r["sample"], r["completion"], r["verified"]) for r in rows]
            refs = [r["ref"] for r in rows]
        except (ValueError, KeyError, TypeError, OSError):
            traces, refs = [], []
        want = [(first + i // n, i % n) for i in range(count * n)]
        if [(t.prompt, t.sample) for t in traces] != want:
            log.warning("%s is not a whole chunk; sampling it again", path)
            return None
        stale = [i for i, t in enumerate(traces) if refs[i] != check.reference(t.prompt)]
        for i in stale:
            t = traces[i]
            traces[i] = Trace(
                t.prompt, t.sample, t.completion, check.verify(t.prompt, t.completion)
            )
        if stale:
            self._write(chunk, traces, check)
        return traces

    def _write(self, chunk: int, traces: Sequence[Trace], check: Checker) -> None:
        rows = [
            {
                "prompt": t.prompt,
                "sample": t.sample,
                "verified": t.verified,
                "ref": check.reference(t.prompt),  # what the verdict was checked against
                "completion": t.completion,
            }
            for t in traces
        ]
        write_atomic(
            self._path(chunk), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )

    def sample(
        self,
        prompts: Sequence[Prompt],
        sampler: Sampler,
        check: Checker,
        *,
        n: int,
        chunk: int,
        seed: int,
        sampling: dict[str, Any],
        progress: bool = True,
    ) -> list[Trace]:
        """Every prompt's n traces, in prompt then sample order; only missing chunks are
        sampled. `sampling`: temperature, top_p and max_tokens for `sampler.sample`."""
        starts = range(0, len(prompts), chunk)
        done = {
            c: self._read(c, s, min(chunk, len(prompts) - s), n, check)
            for c, s in enumerate(starts)
        }
        finished = sum(min(chunk, len(prompts) - s) for c, s in enumerate(starts) if done[c])
        out: list[Trace] = []
        with _Bar(len(prompts), finished, progress) as bar:
            for traces in done.values():
                bar.count(traces or [])
            for c, start in enumerate(starts):
                traces = done[c]
                if traces is None:
                    part = list(prompts[start : start + chunk])
                    traces = self._sample_chunk(part, start, sampler, check, n, seed, c, sampling)
                    self._write(c, traces, check)
                    bar.advance(len(part), traces)
                out += traces
        return out

    def _sample_chunk(
        self,
        part: list[Prompt],
        start: int,
        sampler: Sampler,
        check: Checker,
        n: int,
        seed: int,
        chunk: int,
        sampling: dict[str, Any],
    ) -> list[Trace]:
        # 31 bits: servers differ in how large a seed they take; torch takes any.
        chunk_seed = derive_seed(seed, "traces", chunk) % 2**31
        got = sampler.sample(part, n=n, seed=chunk_seed, **sampling)
        if len(got) != len(part) or any(len(s) != n for s in got):
            raise ModelError(
                f"generate: the teacher returned {[len(s) for s in got]} samples for "
                f"{len(part)} prompts, not {n} each; check the teacher or server"
            )
        traces = []
        for i, samples in enumerate(got):
            for j, text in enumerate(samples):
                text = _clean_text(str(text))
                traces.append(Trace(start + i, j, text, check.verify(start + i, text)))
        return traces
