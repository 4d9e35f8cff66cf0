"""Pairs of verified teacher traces for REDI: a correct and an incorrect completion per prompt.

The training rows are traces with a `verified` column (`correct` / `incorrect`, as
`anydistill generate` writes them into `traces.jsonl` next to `prompt` and `completion`;
booleans are read the same way, `unverified` and null rows are left out). Rows are grouped by
their prompt, and each prompt with both kinds gives one pair: one correct and one incorrect
completion, drawn with a seed of (train.seed, the prompt), so a pairing never depends on the
other prompts or on the order of the file. Prompts without both kinds are left out and
counted.

A micro-batch of B pairs is 2B rows: rows [0, B) the correct completions, rows [B, 2B) the
incorrect ones of the same prompts in the same order, with `pair_role` [2B] (+1 / -1). The
pairs go through a `BatchStream` like any dataset, so the stream position in the checkpoint
is the resume point; the source's own state is a digest of the pairing, checked on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from anydistill.data import BatchStream
from anydistill.data.tokenize import Example
from anydistill.errors import DataError
from anydistill.generation import derive_seed
from anydistill.losses.redi import CORRECT, INCORRECT, UNPAIRED
from anydistill.sources.base import Batch, Source

log = logging.getLogger(__name__)

VERIFIED = "verified"
_CODES = {"correct": CORRECT, "incorrect": INCORRECT, "unverified": UNPAIRED}


def verdict_codes(values: Sequence[Any], where: str) -> list[int]:
    """Each row's `verified` value as CORRECT, INCORRECT or UNPAIRED (unverified or null);
    anything else is refused in one sentence naming `where` (the file)."""
    out = []
    for value in values:
        if isinstance(value, bool):
            out.append(CORRECT if value else INCORRECT)
        elif value is None:
            out.append(UNPAIRED)
        elif isinstance(value, str) and value.strip().lower() in _CODES:
            out.append(_CODES[value.strip().lower()])
        else:
            raise DataError(
                f"{where}: column `{VERIFIED}` holds {value!r}; source.kind paired_traces "
                "reads correct, incorrect or unverified there (or true / false)"
            )
    return out


def prompt_key(prompt: Any) -> str:
    """The text rows are grouped by: the prompt itself, or its messages as canonical JSON."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


@dataclass
class Pairing:
    """The pairs (correct row, incorrect row) and what was left out, in rows' indices."""

    pairs: list[tuple[int, int]] = field(default_factory=list)
    prompts: int = 0  # distinct prompts among the rows
    only_correct: int = 0  # prompts left out: no incorrect completion
    only_incorrect: int = 0  # prompts left out: no correct completion
    unverified: int = 0  # rows with neither verdict

    def describe(self) -> str:
        left = self.prompts - len(self.pairs)
        text = (
            f"source paired_traces: {len(self.pairs)} pairs from {self.prompts} prompts; "
            f"{left} prompts left out ({self.only_correct} with only correct completions, "
            f"{self.only_incorrect} with only incorrect ones)"
        )
        return text + (f", {self.unverified} unverified rows skipped" if self.unverified else "")

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps(self.pairs).encode())
        return h.hexdigest()[:32]


def make_pairs(keys: Sequence[str], codes: Sequence[int], seed: int) -> Pairing:
    """One (correct, incorrect) pair per prompt that has both, in first-appearance order of
    the prompts; which two is drawn with a seed of (seed, prompt) alone."""
    groups: dict[str, tuple[list[int], list[int]]] = {}
    out = Pairing()
    for i, (key, code) in enumerate(zip(keys, codes, strict=True)):
        good, bad = groups.setdefault(key, ([], []))
        if code == CORRECT:
            good.append(i)
        elif code == INCORRECT:
            bad.append(i)
        else:
            out.unverified += 1
    out.prompts = len(groups)
    for key, (good, bad) in groups.items():
        if not good or not bad:
            out.only_correct += bool(good)
            out.only_incorrect += bool(bad)
            continue
        rng = random.Random(derive_seed(seed, "paired_traces", key))
        out.pairs.append((good[rng.randrange(len(good))], bad[rng.randrange(len(bad))]))
    return out


class PairedTracesSource(Source):
    """Micro-batches of B trace pairs: 2B rows, correct completions first."""

    kind = "paired_traces"

    def __init__(
        self,
        examples: Sequence[Example],
        pairing: Pairing,
        batch_size: int,
        seed: int,
        pad_id: int,
        rank: int = 0,
        world_size: int = 1,
        where: str = "data.path",
    ) -> None:
        """`examples` are the training rows `pairing` indexes; `batch_size` pairs per
        micro-batch (train.micro_batch_size)."""
        if not pairing.pairs:
            raise DataError(
                f"{where}: no prompt has both a correct and an incorrect completion, so "
                "source.kind paired_traces has no pairs to train on; add incorrect traces "
                "(anydistill generate with keep: all) or choose another source"
            )
        if len(pairing.pairs) < batch_size * world_size:
            raise DataError(
                f"{where}: {len(pairing.pairs)} correct/incorrect pairs are fewer than one "
                f"global batch ({batch_size} pairs x {world_size} processes); lower "
                "train.micro_batch_size or add traces"
            )
        rows = [(examples[i], examples[j]) for i, j in pairing.pairs]
        stream = BatchStream(rows, batch_size, seed, rank=rank, world_size=world_size)  # type: ignore[arg-type]
        super().__init__(stream, pad_id, [])
        self.pairing = pairing

    def micro_batch(self, step: int, index: int) -> Batch:
        pairs: list[Any] = self.stream.next_batch()
        n = len(pairs)
        batch = self.collate([p[0] for p in pairs] + [p[1] for p in pairs])
        batch["pair_role"] = torch.tensor([CORRECT] * n + [INCORRECT] * n, dtype=torch.long)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairing.digest()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("pairs") != self.pairing.digest():
            raise DataError(
                "source.kind: the checkpoint's paired_traces pairs differ from the pairs the "
                "data gives now (a changed `verified` column or train.seed); resume with the "
                "same traces or start a fresh run"
            )


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """The data loader's warnings were already shown when the run loaded the data."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def trace_rows(
    data_cfg: Any, seed: int, tokenizer: Any, examples: Sequence[Example], mode: str
) -> tuple[list[str], list[int]]:
    """Each training example's prompt key and verdict code, read from the records it came
    from (`data_cfg` is the recipe's data section, loaded again as the run loaded it)."""
    from anydistill.data.build import load_raw, tokenize_dataset
    from anydistill.data.packing import has_target

    where = f"data.path: {data_cfg.path}"
    if mode != "prompt_completion":
        raise DataError(
            f"{where}: source.kind paired_traces groups traces by their prompt; give "
            f"prompt/completion rows, not {mode}"
        )
    with _quiet("anydistill.data"):
        train, _ = load_raw(data_cfg, seed)
    if VERIFIED not in train.column_names:
        found = ", ".join(train.column_names)
        raise DataError(
            f"{where}: no `{VERIFIED}` column (found {found}); source.kind paired_traces pairs "
            "rows marked correct and incorrect there, as `anydistill generate` writes them"
        )
    codes = verdict_codes(train[VERIFIED], where)
    keys = [prompt_key(p) for p in train[data_cfg.prompt_column]]
    kept = list(range(len(train)))
    if len(kept) != len(examples):  # some records were dropped (no target within seq_len)
        made = tokenize_dataset(train, tokenizer, mode, data_cfg)
        kept = [i for i, ex in enumerate(made) if has_target(_cut(ex, data_cfg.seq_len))]
        if len(kept) != len(examples):
            raise DataError(
                f"{where}: the traces changed while the run loaded them; start it again"
            )
    return [keys[i] for i in kept], [codes[i] for i in kept]


def _cut(ex: Example, seq_len: int) -> Example:
    return Example(input_ids=ex["input_ids"][:seq_len], loss_mask=ex["loss_mask"][:seq_len])
