"""The run's tokenizers: the teacher's (or the cache's), and the student's when it differs.

`{vocab_size: N}` trains one on the run's texts and saves it in the run directory, so a
resumed or evaluated run reads back the exact tokenizer it started with. `texts` is called
only when a tokenizer is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from anydistill.config import RunConfig, TokenizerTrain
from anydistill.errors import ConfigError
from anydistill.models.tokenizer import load_tokenizer

TEACHER_TOKENIZER_DIR = "tokenizer"
STUDENT_TOKENIZER_DIR = "student_tokenizer"
Texts = Callable[[], Iterable[str]] | None


def _trained(run_dir: Path, name: str, field: str, vocab_size: int, texts: Texts) -> Any:
    saved = run_dir / name
    if saved.is_dir():  # resume: the exact tokenizer the run started with
        return load_tokenizer(str(saved), field=field)
    if texts is None:  # a finished run is being read, not started
        raise ConfigError(
            f"{field}: {run_dir} has no {name}/ (the one trained for the run); is this the "
            "run directory `anydistill train` wrote?"
        )
    from anydistill.models.tokenizer_training import train_tokenizer

    tok = train_tokenizer(list(texts()), vocab_size=vocab_size)
    tmp = run_dir / f"{name}.tmp"
    tok.save_pretrained(str(tmp))
    tmp.rename(saved)
    return tok


def teacher_tokenizer(cfg: RunConfig, run_dir: Path, texts: Texts) -> Any:
    spec = cfg.teacher.tokenizer
    if cfg.teacher.kind == "cache":  # the cache keeps the tokenizer it was built with
        cached = Path(cfg.teacher.path or "").expanduser() / "tokenizer"
        if not cached.is_dir():
            raise ConfigError(
                f"teacher.path: {cfg.teacher.path} is not a cache directory (no tokenizer/); "
                "build one with `anydistill cache`"
            )
        return load_tokenizer(str(cached), field="teacher.path")
    if isinstance(spec, TokenizerTrain):
        return _trained(run_dir, TEACHER_TOKENIZER_DIR, "teacher.tokenizer", spec.vocab_size, texts)
    path = spec or cfg.teacher.path
    if cfg.teacher.kind == "server" and not spec:  # `vllm serve ID` serves ID as `model: ID`
        return load_tokenizer(
            cfg.teacher.model or "",
            field="teacher.model",
            revision=cfg.teacher.revision,
            trust_remote_code=cfg.teacher.trust_remote_code,
        )
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


def student_tokenizer(cfg: RunConfig, run_dir: Path, texts: Texts, teacher_tok: Any) -> Any:
    """`student.tokenizer` (a path, a hub id or `{vocab_size: N}`), else `student.path`'s,
    else the teacher's."""
    spec, mc = cfg.student.tokenizer, cfg.student
    if isinstance(spec, TokenizerTrain):
        return _trained(run_dir, STUDENT_TOKENIZER_DIR, "student.tokenizer", spec.vocab_size, texts)
    source = spec or mc.path
    if source is None:
        return teacher_tok
    field = "student.tokenizer" if spec else "student.path"
    return load_tokenizer(
        source, field=field, revision=mc.revision, trust_remote_code=mc.trust_remote_code
    )
