"""`anydistill speculate`: load a target and a drafter, then measure speculative decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anydistill.errors import ModelError


def model_dir(path: str) -> str:
    """A run directory stands for its final student; anything else is a model dir or hub id."""
    final = Path(path).expanduser() / "final"
    return str(final) if final.is_dir() else path


def run_speculate(
    target: str,
    drafter: str,
    data: str,
    *,
    column: str | None = None,
    gamma: int = 4,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    max_prompts: int | None = 32,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Acceptance rate, tokens per target call, speedup and the greedy identity check."""
    from anydistill.eval.speculative import encode_prompts, evaluate_speculation, load_prompt_texts
    from anydistill.models.loading import load_pretrained
    from anydistill.models.tokenizer import check_same_tokenizer, load_tokenizer, real_vocab_size
    from anydistill.train.setup import pick_device

    if not 1 <= gamma <= 16:
        raise ModelError(f"--gamma {gamma} must be between 1 and 16")
    if temperature < 0:
        raise ModelError(f"--temperature {temperature} must be >= 0 (0 is greedy)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was requested but no CUDA GPU is visible; use cpu")
    dev = pick_device(device)
    t_dir, d_dir = model_dir(target), model_dir(drafter)
    tokenizer = load_tokenizer(t_dir, field="target")
    try:
        check_same_tokenizer(tokenizer, load_tokenizer(d_dir, field="drafter"))
    except ModelError as err:  # speculative decoding has no cross-tokenizer mode
        detail = str(err).split("(", 1)[1].split(")", 1)[0]
        raise ModelError(
            f"target and drafter tokenizers differ ({detail}); a drafter must share the "
            "target's vocabulary"
        ) from None
    texts = load_prompt_texts(data, column=column, max_prompts=max_prompts)
    models = [
        load_pretrained(path, field=field, dtype=torch.float32).to(dev).eval()
        for path, field in ((t_dir, "target"), (d_dir, "drafter"))
    ]
    return evaluate_speculation(
        models[0],
        models[1],
        encode_prompts(tokenizer, texts, dev),
        gamma=gamma,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        eos_token_id=tokenizer.eos_token_id,
        vocab_size=real_vocab_size(tokenizer),
    )


def save_speculation(drafter: str, target: str, result: dict[str, Any]) -> Path:
    """Keep the result in the drafter's run directory, where `anydistill report` finds it."""
    import json

    run = Path(drafter).expanduser()
    if not (run / "config.yaml").is_file():
        raise ModelError(f"--save: {drafter} is not a run directory (no config.yaml)")
    out = run / "speculate.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**result, "target": target}, indent=1) + "\n")
    tmp.replace(out)
    return out
