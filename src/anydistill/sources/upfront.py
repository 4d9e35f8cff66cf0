"""Teacher completions of every training prompt, generated once before training (seq-KD).

They are kept as a dataset file, `teacher.jsonl` (one `{"prompt_len", "input_ids"}` per
line, in the order of the training examples), next to `teacher.json` (a fingerprint of the
teacher, the prompts and the sampling settings). Generation goes in chunks of
`generation.batch_size` prompts; chunk c is seeded from (seed, "upfront", c) and appended
and flushed as a whole, so a run stopped half-way continues from the last complete chunk
when rerun and ends with exactly the file an unbroken run writes. A store made with other
settings is refused, never silently mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from anydistill.data.tokenize import Example
from anydistill.errors import ConfigError
from anydistill.paths import check_writable_dir, refuse_foreign
from anydistill.progress import CountProgress
from anydistill.sources.completer import Completer

FILE, META = "teacher.jsonl", "teacher.json"


def fingerprint(examples: list[Example], settings: dict[str, Any]) -> str:
    """sha256 of the settings and every prompt the teacher completes."""
    from anydistill.sources.prompts import prompt_of

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for ex in examples:
        digest.update(json.dumps(prompt_of(ex)).encode())
    return digest.hexdigest()


def _decode(line: str) -> Example:
    row = json.loads(line)
    ids, n = row["input_ids"], int(row["prompt_len"])
    return Example(input_ids=ids, loss_mask=[False] * n + [True] * (len(ids) - n))


def _encode(ex: Example) -> str:
    n = ex["loss_mask"].index(True) if True in ex["loss_mask"] else len(ex["loss_mask"])
    return json.dumps({"prompt_len": n, "input_ids": ex["input_ids"]}) + "\n"


def _complete_chunks(path: Path, chunk: int, total: int) -> list[Example]:
    """The examples of whole chunks already on disk; a torn tail is cut off the file."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    done: list[Example] = []
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            done.append(_decode(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break
    keep = len(done) if len(done) >= total else len(done) - len(done) % chunk
    done = done[: min(keep, total)]
    if len(done) < len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines[: len(done)]))
        tmp.replace(path)
    return done


def _check_store(store: Path, key: str) -> None:
    """The store holds generations for exactly these prompts and settings, or is new/empty;
    a folder holding anything else is refused, never emptied."""
    check_writable_dir(store, "source.store")
    meta = store / META
    if meta.is_file():
        try:
            saved = json.loads(meta.read_text()).get("fingerprint")
        except (ValueError, AttributeError):
            raise ConfigError(
                f"source.store: {meta} is not the fingerprint file generation writes; move "
                f"{store} away (or point source.store elsewhere) to generate again"
            ) from None
        if saved != key:
            raise ConfigError(
                f"source.store: {store} holds teacher generations made for other prompts, "
                "teacher or sampling settings; delete it or point source.store elsewhere"
            )
        return
    if store.is_dir():
        theirs = [p.name for p in store.iterdir()]
        refuse_foreign(store, "source.store", theirs, "are not teacher generations")
    store.mkdir(parents=True, exist_ok=True)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": key}))
    tmp.replace(meta)


def generate_upfront(
    examples: list[Example],
    completer: Completer,
    store: Path,
    key: str,
    chunk: int,
    progress: bool,
) -> list[Example]:
    """Teacher-completed copies of `examples` (same order), generating only what is missing."""
    _check_store(store, key)
    path = store / FILE
    done = _complete_chunks(path, chunk, len(examples))
    if len(done) == len(examples):
        return done
    with (
        path.open("a") as out,
        CountProgress(len(examples), len(done), "generate (teacher)", enabled=progress) as bar,
    ):
        for start in range(len(done), len(examples), chunk):
            made = completer.complete(examples[start : start + chunk], "upfront", start // chunk)
            out.write("".join(_encode(ex) for ex in made))
            out.flush()
            os.fsync(out.fileno())
            done += made
            bar.update(len(done))
    return done
