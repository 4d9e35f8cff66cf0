"""The data path of a run, stage by stage: load -> (tokenize | align) -> fit to seq_len.

`load_run_data` reads and checks the records once. `prepare_examples` is the align stage:
with one tokenizer (the identity alignment) records are tokenized into `Example`s; with two,
each record is tokenized by both and cut into chunks that spell the same bytes
(`CrossExample`s). With several teachers on their own tokenizers each training record is
aligned to every teacher that teaches it, with the same student windows for all
(`data.align_members`: `MultiCrossExample`s). Either way the result has `train`, `eval`, `mode`
and `dropped`, and the sources, the step and the evaluators take it from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from anydistill.config import RunConfig
from anydistill.data.align_stage import AlignedData, align_data
from anydistill.data.build import (
    TokenizedData,
    _columns,
    load_raw,
    texts_for_tokenizer,
    tokenize_data,
)
from anydistill.data.tokenize import detect_mode
from anydistill.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RawData:
    train: datasets.Dataset
    eval: datasets.Dataset
    mode: str  # text | prompt_completion | messages

    def texts(self, cfg: RunConfig) -> Callable[[], Iterable[str]]:
        """The training texts, for a tokenizer trained on them (read lazily)."""
        return lambda: texts_for_tokenizer(self.train, self.mode, cfg.data)


def load_run_data(cfg: RunConfig) -> RawData:
    """The records as loaded and checked; a run that generates its completions keeps prompts
    whose completion is empty."""
    prompts_only = not cfg.source.uses_dataset_completions()
    train_ds, eval_ds = load_raw(cfg.data, cfg.train.seed, prompts_only=prompts_only)
    mode = detect_mode(list(train_ds.column_names), cfg.data.mode, **_columns(cfg.data))
    return RawData(train_ds, eval_ds, mode)


def prepare_examples(
    raw: RawData,
    teacher_tok: Any,
    student_tok: Any,
    cfg: RunConfig,
    align: bool,
    progress: bool | None = None,
    routes: bool = False,
    member_toks: Sequence[Any] | None = None,
) -> TokenizedData | AlignedData:
    """Tokenized examples (`align` false: both models read `student_tok`), or examples
    aligned across the two tokenizers (with a progress bar unless `progress` is False).
    `routes`: each training example gets its teacher's index from the `route_by` column.
    `member_toks` (aligned, `teachers:`): each member's tokenizer, the same object for members
    that share one; training records are then aligned to each teacher that teaches them."""
    if align:
        show = cfg.train.progress if progress is None else progress
        if member_toks is not None and cfg.teachers:
            from anydistill.data.align_members import align_members

            route = None
            if routes and cfg.route_by is not None:
                route = (cfg.route_by, [t.name for t in cfg.teachers])
            weights = [t.weight for t in cfg.teachers]
            data = align_members(
                raw.train, raw.eval, teacher_tok, student_tok, member_toks, weights, cfg.data,
                route, progress=show,
            )  # fmt: skip
        else:
            data = align_data(
                raw.train, raw.eval, teacher_tok, student_tok, cfg.data, progress=show
            )
        if data.dropped:
            log.warning("data: dropped %d sequences with no aligned target chunk", data.dropped)
        return data
    route = None
    if routes and cfg.route_by is not None and cfg.teachers:
        route = (cfg.route_by, [t.name for t in cfg.teachers])
    data = tokenize_data(raw.train, raw.eval, student_tok, cfg.data, route)
    if data.dropped:
        log.warning(
            "data: dropped %d sequences with no target tokens within data.seq_len", data.dropped
        )
    if not data.train:
        raise DataError("data: no training sequences left after tokenization; check data.seq_len")
    return data
