"""The pieces of a cross-tokenizer run: two tokenizers, two models, aligned data, term params.

A run is cross-tokenizer when its objective has an alm, uld, gold_hybrid or mined term. The
teacher keeps its own tokenizer (as on the same-tokenizer path); the student's comes from
`student.tokenizer` (a path or hub id, or `{vocab_size: N}` to train one on the data, saved
in RUN_DIR/student_tokenizer), else from `student.path`, else it is the teacher's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from anydistill.config import RunConfig, TokenizerTrain
from anydistill.data import detect_mode, texts_for_tokenizer
from anydistill.data.build import _columns
from anydistill.data.cross import cross_data
from anydistill.models.loading import freeze
from anydistill.models.tokenizer import load_tokenizer, real_vocab_size
from anydistill.train.setup import RunParts, finish_student, load_model, raw_data_and_tokenizer

log = logging.getLogger(__name__)

STUDENT_TOKENIZER_DIR = "student_tokenizer"


def student_tokenizer(cfg: RunConfig, run_dir: Path, train_ds, mode: str, teacher_tok) -> Any:
    spec, mc = cfg.student.tokenizer, cfg.student
    if isinstance(spec, TokenizerTrain):
        saved = run_dir / STUDENT_TOKENIZER_DIR
        if saved.is_dir():  # resume: the exact tokenizer the run started with
            return load_tokenizer(str(saved), field="student.tokenizer")
        from anydistill.models.tokenizer_training import train_tokenizer

        tok = train_tokenizer(texts_for_tokenizer(train_ds, mode, cfg.data), spec.vocab_size)
        tmp = run_dir / f"{STUDENT_TOKENIZER_DIR}.tmp"
        tok.save_pretrained(str(tmp))
        tmp.rename(saved)
        return tok
    source = spec or mc.path
    if source is None:
        return teacher_tok
    field = "student.tokenizer" if spec else "student.path"
    return load_tokenizer(
        source, field=field, revision=mc.revision, trust_remote_code=mc.trust_remote_code
    )


def cross_params(cfg: RunConfig, teacher_tok: Any, student_tok: Any) -> dict[str, dict]:
    """Per term name: the keyword options its cross loss takes (vocabulary maps included)."""
    from anydistill.losses.cross import prepare_cross_params

    out: dict[str, dict] = {}
    for term in cfg.objective.terms:
        if term.kind == "ce":
            continue
        options = {"temperature": term.temperature, **(term.options or {})}
        if term.kind == "gold_hybrid":
            options["beta"] = term.beta
        if cfg.objective.chunk_size is not None:
            options["block_rows"] = cfg.objective.chunk_size
        out[term.name or term.kind] = prepare_cross_params(
            term.kind, teacher_tok, student_tok, **options
        )
    return out


def build_cross_parts(cfg: RunConfig, run_dir: Path, device: torch.device) -> RunParts:
    seed = cfg.train.seed
    train_ds, eval_ds, teacher_tok = raw_data_and_tokenizer(cfg, run_dir)
    mode = detect_mode(list(train_ds.column_names), cfg.data.mode, **_columns(cfg.data))
    student_tok = student_tokenizer(cfg, run_dir, train_ds, mode, teacher_tok)
    t_vocab, s_vocab = real_vocab_size(teacher_tok), real_vocab_size(student_tok)
    teacher = freeze(load_model(cfg.teacher, "teacher", t_vocab, device, True, seed + 1))
    student = load_model(cfg.student, "student", s_vocab, device, frozen=False, seed=seed + 2)
    student = finish_student(cfg, student, teacher, device)
    data = cross_data(
        train_ds, eval_ds, teacher_tok, student_tok, cfg.data, progress=cfg.train.progress
    )
    if data.dropped:
        log.warning("data: dropped %d sequences with no aligned target chunk", data.dropped)
    return RunParts(
        tokenizer=teacher_tok,
        teacher=teacher,
        student=student,
        data=data,
        vocab_size=s_vocab,
        student_tokenizer=student_tok,
        teacher_vocab=t_vocab,
        cross=cross_params(cfg, teacher_tok, student_tok),
    )
