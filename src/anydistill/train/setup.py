"""Turn a RunConfig into the pieces a run needs: tokenizer, teacher, student, data.

This is the one place that reads config sections for models and data; the components it
calls take plain arguments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anydistill.config import ModelConfig, RunConfig, TokenizerTrain
from anydistill.data import TokenizedData, load_raw, texts_for_tokenizer, tokenize_data
from anydistill.errors import ConfigError, DataError, ModelError
from anydistill.models.from_teacher import student_from_teacher
from anydistill.models.loading import (
    build_from_config,
    freeze,
    load_pretrained,
    max_positions,
    resolve_dtype,
)
from anydistill.models.lora import add_lora
from anydistill.models.tokenizer import check_same_tokenizer, load_tokenizer, real_vocab_size

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    tokenizer: PreTrainedTokenizerBase
    teacher: PreTrainedModel | Any | None  # a model, or a CachedTeacher
    student: torch.nn.Module
    data: TokenizedData | Any  # a CrossData on a cross-tokenizer run
    vocab_size: int  # the student's
    # cross-tokenizer runs only: the student's own tokenizer, the teacher's vocabulary size
    # and each cross term's prepared keyword options (anydistill.train.cross_setup)
    student_tokenizer: PreTrainedTokenizerBase | None = None
    teacher_vocab: int | None = None
    cross: dict[str, dict] | None = None

    @property
    def student_tok(self) -> PreTrainedTokenizerBase:
        """The tokenizer the student reads and is saved with."""
        return self.student_tokenizer or self.tokenizer


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is `cuda` but no CUDA GPU is visible; use `auto` or `cpu`")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def teacher_tokenizer(cfg: RunConfig, run_dir: Path, train_ds, mode_hint: str):
    spec = cfg.teacher.tokenizer
    if cfg.teacher.kind == "cache":  # the cache keeps the tokenizer it was built with
        cached = Path(cfg.teacher.path or "").expanduser() / "tokenizer"
        if not cached.is_dir():
            raise ConfigError(
                f"teacher.path: {cfg.teacher.path} is not a cache directory (no tokenizer/); "
                "build one with `anydistill cache`"
            )
        return load_tokenizer(str(cached), field="teacher.path")
    saved = run_dir / "tokenizer"
    if isinstance(spec, TokenizerTrain):
        if saved.is_dir():  # resume: reuse the exact tokenizer the run started with
            return load_tokenizer(str(saved), field="teacher.tokenizer")
        if train_ds is None:  # a finished run is being read, not started
            raise ConfigError(
                f"teacher.tokenizer: {run_dir} has no tokenizer/ (the one trained for the run); "
                "is this the run directory `anydistill train` wrote?"
            )
        from anydistill.models.tokenizer_training import train_tokenizer

        texts = list(texts_for_tokenizer(train_ds, mode_hint, cfg.data))
        tok = train_tokenizer(texts, vocab_size=spec.vocab_size)
        tmp = run_dir / "tokenizer.tmp"
        tok.save_pretrained(str(tmp))
        tmp.rename(saved)
        return tok
    path = spec or cfg.teacher.path
    if path is None:
        raise ConfigError(
            "teacher.tokenizer: a teacher built from `init` needs a tokenizer "
            "(a path, or `{vocab_size: N}` to train one on the data)"
        )
    return load_tokenizer(
        path,
        field="teacher.tokenizer" if spec else "teacher.path",
        revision=cfg.teacher.revision,
        trust_remote_code=cfg.teacher.trust_remote_code,
    )


def load_model(
    mc: ModelConfig, field: str, vocab: int, device: torch.device, frozen: bool, seed: int
) -> PreTrainedModel:
    dtype = resolve_dtype(mc.dtype, device, frozen)
    if mc.path is not None:
        model = load_pretrained(
            mc.path,
            field=f"{field}.path",
            dtype=dtype,
            revision=mc.revision,
            trust_remote_code=mc.trust_remote_code,
            attn_implementation=mc.attn_implementation,
        )
    else:
        init = dict(mc.init or {})
        if mc.attn_implementation:
            init["attn_implementation"] = mc.attn_implementation
        model = build_from_config(init, field=field, vocab_size=vocab, dtype=dtype, seed=seed)
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise ModelError(
            f"{field}: its output layer has {rows} rows but the tokenizer has {vocab} tokens; "
            "the model and tokenizer do not belong together"
        )
    return model.to(device)


def _check_student_tokenizer(mc: ModelConfig, teacher_tok: PreTrainedTokenizerBase) -> None:
    source = mc.tokenizer if isinstance(mc.tokenizer, str) else mc.path
    if source is None:
        return  # a student built from `init` uses the teacher's tokenizer
    field = "student.tokenizer" if isinstance(mc.tokenizer, str) else "student.path"
    student_tok = load_tokenizer(
        source, field=field, revision=mc.revision, trust_remote_code=mc.trust_remote_code
    )
    check_same_tokenizer(teacher_tok, student_tok)


def raw_data_and_tokenizer(cfg: RunConfig, run_dir: Path):
    """(train_ds, eval_ds, tokenizer): the data as loaded and the run's (teacher) tokenizer."""
    prompts_only = not cfg.source.uses_dataset_completions()
    train_ds, eval_ds = load_raw(cfg.data, cfg.train.seed, prompts_only=prompts_only)
    from anydistill.data.tokenize import detect_mode

    d = cfg.data
    mode = detect_mode(
        list(train_ds.column_names),
        d.mode,
        d.text_column,
        d.prompt_column,
        d.completion_column,
        d.messages_column,
    )
    return train_ds, eval_ds, teacher_tokenizer(cfg, run_dir, train_ds, mode)


def tokenized(cfg: RunConfig, train_ds, eval_ds, tokenizer) -> TokenizedData:
    data = tokenize_data(train_ds, eval_ds, tokenizer, cfg.data)
    if data.dropped:
        log.warning(
            "data: dropped %d sequences with no target tokens within data.seq_len", data.dropped
        )
    if not data.train:
        raise DataError("data: no training sequences left after tokenization; check data.seq_len")
    return data


def build_parts(cfg: RunConfig, run_dir: Path, device: torch.device) -> RunParts:
    seed = cfg.train.seed
    train_ds, eval_ds, tokenizer = raw_data_and_tokenizer(cfg, run_dir)
    vocab = real_vocab_size(tokenizer)

    needs_teacher = any(t.kind != "ce" for t in cfg.objective.terms) or cfg.eval.teacher
    needs_teacher = needs_teacher or cfg.student.from_teacher is not None
    teacher = None
    if needs_teacher and cfg.teacher.kind == "cache":
        from anydistill.teachers.cache.reader import CachedTeacher

        _check_sparse_terms(cfg)
        teacher = CachedTeacher(cfg.teacher.path or "", cfg.teacher.tail)
    elif needs_teacher:
        teacher = load_model(cfg.teacher, "teacher", vocab, device, frozen=True, seed=seed + 1)
        freeze(teacher)

    if cfg.student.from_teacher is not None:
        assert teacher is not None
        student = student_from_teacher(teacher, cfg.student.from_teacher.layers).to(device)
    else:
        _check_student_tokenizer(cfg.student, tokenizer)  # before loading any weights
        student = load_model(cfg.student, "student", vocab, device, frozen=False, seed=seed + 2)
    student = finish_student(cfg, student, teacher, device)
    data = tokenized(cfg, train_ds, eval_ds, tokenizer)
    if teacher is not None and not isinstance(teacher, torch.nn.Module):
        from anydistill.teachers.cache.keys import example_key

        keys = [example_key(ex) for ex in data.train]
        teacher.cache.check_compatible(tokenizer, cfg.data.seq_len, keys)
    return RunParts(tokenizer, teacher, student, data, vocab)


def _check_sparse_terms(cfg: RunConfig) -> None:
    """Terms a top-k cache cannot serve are refused before any weights load, not at step 1."""
    from anydistill.losses.sparse import refusal

    for i, term in enumerate(cfg.objective.terms):
        why = (
            None
            if term.kind == "ce"
            else refusal(term.kind, term.temperature, term.beta, term.alpha, cfg.teacher.tail)
        )
        if why is not None:
            raise ConfigError(f"objective.terms.{i}: {why} (teacher.tail is {cfg.teacher.tail})")


def finish_student(
    cfg: RunConfig, student: torch.nn.Module, teacher: Any, device: torch.device
) -> torch.nn.Module:
    """dtype, the seq_len check against both models, LoRA and gradient checkpointing."""
    if cfg.student.dtype != "auto":
        student = student.to(resolve_dtype(cfg.student.dtype, device, frozen=False))
    student.train()
    for name, model in (("student", student), ("teacher", teacher)):
        limit = max_positions(model) if isinstance(model, torch.nn.Module) else None
        if limit is not None and cfg.data.seq_len > limit:
            raise ConfigError(
                f"data.seq_len is {cfg.data.seq_len} but the {name} handles at most {limit} "
                "positions; lower data.seq_len"
            )
    if cfg.student.lora is not None:
        lc = cfg.student.lora
        student = add_lora(student, lc.r, lc.alpha, lc.dropout, lc.target_modules)
    if cfg.train.gradient_checkpointing:
        base = student.get_base_model() if hasattr(student, "get_base_model") else student
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(student, "enable_input_require_grads"):
            student.enable_input_require_grads()
    return student
