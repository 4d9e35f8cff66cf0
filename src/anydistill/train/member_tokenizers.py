"""Each teacher's tokenizer when several teachers read their own (`teachers:` in a
cross-tokenizer run).

The first entry's tokenizer is the run's teacher tokenizer (`models.run_tokenizers`). Every
other entry reads:
- `tokenizer: {vocab_size: N}`: the tokenizer trained on the run's texts with N ids. The same
  N as the first teacher's or the student's trained tokenizer names that one (trained on the
  same texts, it would be the same); any other N is trained once and saved in the run
  directory as `tokenizer/vocab-N/`, so a resumed or evaluated run reads back the exact one;
- `tokenizer: PATH_OR_HUB_ID`, or else its `path`'s tokenizer;
- nothing (a teacher built from `init` without a tokenizer): the run's teacher tokenizer.

Tokenizers with the same vocabulary and special tokens come back as one object, so the align
stage aligns each record once per distinct tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anydistill.config import RunConfig, TokenizerTrain
from anydistill.models.run_tokenizers import TEACHER_TOKENIZER_DIR, Texts, _trained
from anydistill.models.tokenizer import load_tokenizer, tokenizer_hash


def member_tokenizers(
    cfg: RunConfig, run_dir: Path, texts: Texts, teacher_tok: Any, student_tok: Any
) -> list[Any]:
    """Per `teachers:` entry, its tokenizer (see the module doc)."""
    entries = cfg.teachers or []
    first, student = entries[0].tokenizer, cfg.student.tokenizer
    known = {tokenizer_hash(teacher_tok): teacher_tok}
    known.setdefault(tokenizer_hash(student_tok), student_tok)
    toks = [teacher_tok]
    for i, entry in enumerate(entries[1:], start=1):
        spec = entry.tokenizer
        if isinstance(spec, TokenizerTrain):
            if isinstance(first, TokenizerTrain) and spec.vocab_size == first.vocab_size:
                tok = teacher_tok
            elif isinstance(student, TokenizerTrain) and spec.vocab_size == student.vocab_size:
                tok = student_tok
            else:
                home = run_dir / TEACHER_TOKENIZER_DIR
                home.mkdir(parents=True, exist_ok=True)
                field = f"teachers.{i}.tokenizer"
                tok = _trained(home, f"vocab-{spec.vocab_size}", field, spec.vocab_size, texts)
        elif spec is not None or entry.path is not None:
            field = f"teachers.{i}." + ("tokenizer" if spec is not None else "path")
            tok = load_tokenizer(
                str(spec if spec is not None else entry.path),
                field=field,
                revision=entry.revision,
                trust_remote_code=entry.trust_remote_code,
            )
        else:
            tok = teacher_tok
        toks.append(known.setdefault(tokenizer_hash(tok), tok))
    return toks
