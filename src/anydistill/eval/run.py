"""`anydistill eval RUN_DIR`: score a run's final student (and its teacher) on held-out data."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from anydistill.config import config_from_dict
from anydistill.data import load_raw, tokenize_data
from anydistill.data.cross import cross_data
from anydistill.errors import ConfigError
from anydistill.eval.cross_metrics import evaluate_cross
from anydistill.eval.generation import exact_match_accuracy
from anydistill.eval.metrics import evaluate
from anydistill.models.loading import freeze, load_pretrained
from anydistill.models.tokenizer import load_tokenizer, real_vocab_size
from anydistill.train.setup import load_model, pick_device, teacher_tokenizer


def evaluate_run(
    run_dir: Path,
    max_batches: int | None = None,
    accuracy_examples: int = 0,
    task: str | None = None,
    max_records: int | None = None,
    max_new_tokens: int = 256,
    lm_eval: str | None = None,
    lm_eval_limit: int | None = None,
    texts: str | None = None,
) -> dict[str, float]:
    """Metrics of `run_dir/final` against the run's eval split; accuracy when answers exist;
    the score on a task file (`task`) and lm-eval harness tasks (`lm_eval`) when asked."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"{run_dir} has no config.yaml: is this a run directory made by `anydistill train`?"
        )
    final = run_dir / "final"
    if not final.is_dir():
        raise ConfigError(
            f"{run_dir} has no final/ student yet: finish (or resume) the run with "
            "`anydistill train`"
        )
    cfg = config_from_dict(yaml.safe_load(config_path.read_text()))
    device = pick_device(cfg.train.device)
    tokenizer = load_tokenizer(str(final), field="final")  # the student's
    vocab = real_vocab_size(tokenizer)
    student = load_pretrained(str(final), field="final", dtype=torch.float32).to(device)
    cross = cfg.objective.cross_tokenizer()
    # A cross-tokenizer teacher reads its own tokenizer (saved in the run when it was trained).
    teacher_tok = teacher_tokenizer(cfg, run_dir, None, "text") if cross else tokenizer
    teacher = None
    if cfg.eval.teacher:
        t_vocab = real_vocab_size(teacher_tok)
        teacher = freeze(
            load_model(cfg.teacher, "teacher", t_vocab, device, True, cfg.train.seed + 1)
        )
    _, eval_ds = load_raw(cfg.data, cfg.train.seed)
    if len(eval_ds) == 0:
        raise ConfigError(
            f"{run_dir}: the run has no held-out data; set data.eval_path, data.eval_split "
            "or data.eval_fraction > 0 in its config.yaml"
        )
    batches = max_batches or cfg.eval.max_batches
    if cross:
        examples = cross_data(eval_ds, eval_ds, teacher_tok, tokenizer, cfg.data).eval
        result = evaluate_cross(
            student, teacher, examples, teacher_tok, tokenizer, cfg.eval.batch_size, batches
        )
    else:
        data = tokenize_data(eval_ds, eval_ds, tokenizer, cfg.data)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        result = evaluate(
            student,
            teacher,
            data.eval,
            tokenizer,
            vocab,
            cfg.eval.batch_size,
            batches,
            device,
            pad,
            cfg.objective.chunk_size,
        )
    models = {"student": (student, tokenizer)}
    if teacher is not None:
        models["teacher"] = (teacher, teacher_tok)
    if "answer" in eval_ds.column_names and "prompt" in eval_ds.column_names:
        n = accuracy_examples or min(len(eval_ds), 200)
        records = [eval_ds[i] for i in range(min(n, len(eval_ds)))]
        for name, (model, tok) in models.items():
            result[f"{name}/accuracy"] = exact_match_accuracy(model, tok, records)
    if task is not None:
        from anydistill.eval.task_eval import task_scores

        for name, (model, tok) in models.items():
            result.update(task_scores({name: model}, tok, task, max_records, max_new_tokens))
    if texts is not None:
        from anydistill.eval.text_bpb import load_texts, text_bits_per_byte

        raw = load_texts(texts)
        for name, (model, tok) in models.items():
            bpb = text_bits_per_byte(model, tok, raw, max_len=cfg.data.seq_len)
            result[f"{name}/text_bits_per_byte"] = bpb["bits_per_byte"]
    if lm_eval is not None:
        from anydistill.eval.task_eval import lm_eval_scores

        result.update(lm_eval_scores(final, lm_eval, lm_eval_limit, str(device)))
    return result
