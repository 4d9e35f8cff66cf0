"""`anydistill eval RUN_DIR`: score a run's final student (and its teacher) on held-out data."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
import yaml

from anydistill.config import RunConfig, config_from_dict
from anydistill.data import load_raw
from anydistill.data.prepare import RawData, prepare_examples
from anydistill.errors import ConfigError, DataError
from anydistill.eval.generation import exact_match_accuracy
from anydistill.eval.metrics import evaluate
from anydistill.models.from_config import load_model, pick_device
from anydistill.models.loading import freeze, load_pretrained
from anydistill.models.run_tokenizers import teacher_tokenizer
from anydistill.models.tokenizer import load_tokenizer, real_vocab_size
from anydistill.paths import read_text


def run_config(run_dir: Path) -> RunConfig:
    """The validated config.yaml of a run directory, or one sentence naming what is wrong."""
    run_dir = Path(run_dir)
    hint = "give a run directory made by `anydistill train`"
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} does not exist; {hint}")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run directory; {hint}")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"{run_dir} has no config.yaml: is this a run directory made by `anydistill train`?"
        )
    try:
        data = yaml.safe_load(read_text(config_path, "config.yaml"))
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{config_path} is not valid YAML ({first}); restore the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path} does not hold a recipe mapping; restore the file")
    try:
        return config_from_dict(data)
    except ConfigError as err:  # say which file: the run's, not a recipe the user wrote
        raise ConfigError(f"{config_path}: {err}") from None


def final_dir(run_dir: Path) -> Path:
    """`run_dir/final`, checked to hold a saved model."""
    final = Path(run_dir) / "final"
    if not final.is_dir():
        raise ConfigError(
            f"{run_dir} has no final/ student yet: finish (or resume) the run with "
            "`anydistill train`"
        )
    if not (final / "config.json").is_file():
        raise ConfigError(
            f"{final} holds no saved model (no config.json): the run stopped while saving it; "
            "resume the run with `anydistill train`"
        )
    return final


def _check_inputs(task: str | None, texts: str | None, lm_eval: str | None) -> list[str] | None:
    """Read --task and --texts (and find lm-eval) before any model loads, so a bad file fails
    in seconds; returns the texts."""
    if task is not None:
        from anydistill.eval.tasks import load_task_records

        try:
            load_task_records(task)
        except (ValueError, OSError) as err:  # bad JSON or encoding, unreadable
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(
                f"--task: {task} is not a readable task file ({first}); give a .jsonl or "
                ".json file of records, or a dataset folder"
            ) from None
    if lm_eval is not None and importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            "--lm-eval needs the lm-eval package; install it with `pip install lm-eval`"
        )
    if texts is None:
        return None
    from anydistill.eval.text_bpb import load_texts

    return load_texts(texts)


def _several(cfg: RunConfig, first: torch.nn.Module, vocab: int, device: torch.device) -> Any:
    """`teachers:` as the run trained with them (the seeds `train/setup.py` gives), models
    only: a cache holds training samples, not the eval split."""
    from anydistill.teachers import LiveTeacher
    from anydistill.teachers.multi import Member, MultiTeacher

    members = []
    for i, entry in enumerate(cfg.teachers or []):
        if entry.kind != "model":
            continue
        seed = cfg.train.seed + 1 + 1000 * i
        model = first if i == 0 else load_model(entry, f"teachers.{i}", vocab, device, True, seed)
        model = freeze(model)
        members.append(Member(entry.name, entry.weight, LiveTeacher(model)))
    return MultiTeacher(members, route=cfg.route_by is not None)


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
    cfg = run_config(run_dir)
    final = final_dir(run_dir)
    raw_texts = _check_inputs(task, texts, lm_eval)
    device = pick_device(cfg.train.device)
    tokenizer = load_tokenizer(str(final), field="final")  # the student's
    vocab = real_vocab_size(tokenizer)
    student = load_pretrained(str(final), field="final", dtype=torch.float32).to(device)
    cross = cfg.objective.cross_tokenizer()
    # A cross-tokenizer teacher reads its own tokenizer (saved in the run when it was trained).
    teacher_tok = teacher_tokenizer(cfg, run_dir, None) if cross else tokenizer
    teacher = scored = None
    if cfg.eval.teacher:
        t_vocab = real_vocab_size(teacher_tok)
        teacher = scored = freeze(
            load_model(cfg.teacher, "teacher", t_vocab, device, True, cfg.train.seed + 1)
        )
        # the mixture, and each teacher alone; the first one generates. Teachers on their own
        # tokenizers (a cross run) are scored as in training: the first one.
        if cfg.teachers and not cross:
            scored = _several(cfg, teacher, t_vocab, device)
    _, eval_ds = load_raw(cfg.data, cfg.train.seed)
    if len(eval_ds) == 0:
        raise ConfigError(
            f"{run_dir}: the run has no held-out data; set data.eval_path, data.eval_split "
            "or data.eval_fraction > 0 in its config.yaml"
        )
    batches = max_batches or cfg.eval.max_batches
    raw = RawData(eval_ds, eval_ds, mode="")  # the align stage detects the mode itself
    data = prepare_examples(raw, teacher_tok, tokenizer, cfg, align=cross, progress=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = evaluate(
        student,
        scored,
        data.eval,
        tokenizer,
        vocab,
        cfg.eval.batch_size,
        batches,
        device,
        pad,
        cfg.objective.chunk_size,
        teacher_tokenizer=teacher_tok,
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
    if raw_texts is not None:
        from anydistill.eval.text_bpb import text_bits_per_byte

        for name, (model, tok) in models.items():
            bpb = text_bits_per_byte(model, tok, raw_texts, max_len=cfg.data.seq_len)
            result[f"{name}/text_bits_per_byte"] = bpb["bits_per_byte"]
    if lm_eval is not None:
        from anydistill.eval.task_eval import lm_eval_scores

        result.update(lm_eval_scores(final, lm_eval, lm_eval_limit, str(device)))
    return result
