"""Task scores for `anydistill eval --task FILE` and the optional lm-eval harness bridge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anydistill.errors import ConfigError
from anydistill.eval.generation import greedy_completions
from anydistill.eval.tasks import detect_task, load_task_records, score_task


def task_scores(
    models: dict[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    path: str,
    max_records: int | None = None,
    max_new_tokens: int = 256,
) -> dict[str, Any]:
    """Greedy completions of each model on the task's prompts, scored by the task's metric.

    Keys: `task/kind`, `task/n`, and `<model>/task_score` for each model given.
    """
    records = load_task_records(path, "--task")  # one sentence for every bad file
    records = records[:max_records] if max_records else records
    kind = detect_task(records)
    out: dict[str, Any] = {"task/kind": kind, "task/n": len(records)}
    prompts = [str(r["prompt"]) for r in records]
    for name, model in models.items():
        completions = greedy_completions(model, tokenizer, prompts, max_new_tokens)
        out[f"{name}/task_score"] = score_task(kind, records, completions)["score"]
    return out


def lm_eval_scores(model_dir: Path, tasks: str, limit: int | None, device: str) -> dict[str, Any]:
    """Run EleutherAI's lm-evaluation-harness on a saved model (optional extra `lm-eval`)."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            "--lm-eval needs the lm-eval package; install it with `pip install lm-eval`"
        ) from None
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},device={device}",
        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        limit=limit,
    )
    flat: dict[str, Any] = {}
    for task, metrics in results.get("results", {}).items():
        for metric, value in metrics.items():
            if isinstance(value, (int, float)):
                flat[f"lm_eval/{task}/{metric}"] = value
    return flat
