"""`anydistill speculate`: load a target and a drafter, then measure speculative decoding."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from anydistill.errors import ModelError
from anydistill.models.resolve import resolve_model
from anydistill.paths import check_writable_file, disk_full_message, is_disk_full

SPECULATE_FILE = "speculate.json"  # where `anydistill report` looks (report.bars)


def _check_options(gamma: int, temperature: float, device: str) -> None:
    if not 1 <= gamma <= 16:
        raise ModelError(f"--gamma {gamma} must be between 1 and 16")
    if not math.isfinite(temperature) or temperature < 0:
        raise ModelError(f"--temperature {temperature} must be a finite number >= 0 (0 is greedy)")
    if device not in ("auto", "cpu", "cuda"):
        raise ModelError(f"--device {device!r} is not one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was requested but no CUDA GPU is visible; use cpu")


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
    from anydistill.models.from_config import pick_device
    from anydistill.models.loading import load_pretrained
    from anydistill.models.tokenizer import check_same_tokenizer, load_tokenizer, real_vocab_size

    _check_options(gamma, temperature, device)
    dev = pick_device(device)
    t_dir, d_dir = resolve_model(target, "--target"), resolve_model(drafter, "--drafter")
    tokenizer = load_tokenizer(t_dir, field="--target")
    d_tokenizer = load_tokenizer(d_dir, field="--drafter")
    try:
        check_same_tokenizer(tokenizer, d_tokenizer)
    except ModelError as err:  # speculative decoding has no cross-tokenizer mode
        detail = str(err).split("(", 1)[1].split(")", 1)[0]
        raise ModelError(
            f"target and drafter tokenizers differ ({detail}); a drafter must share the "
            "target's vocabulary"
        ) from None
    texts = load_prompt_texts(data, column=column, max_prompts=max_prompts)
    models = [
        load_pretrained(path, field=field, dtype=torch.float32).to(dev).eval()
        for path, field in ((t_dir, "--target"), (d_dir, "--drafter"))
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


def check_save(drafter: str) -> Path:
    """Before any work: `--save` needs the drafter to be a run directory that can take
    speculate.json; returns that path."""
    run = Path(drafter).expanduser()
    if not (run / "config.yaml").is_file():
        raise ModelError(
            f"--save: {drafter} is not a run directory (no config.yaml); give a run as "
            "--drafter or drop --save"
        )
    return check_writable_file(run / SPECULATE_FILE, "--save")


def save_speculation(drafter: str, target: str, result: dict[str, Any]) -> Path:
    """Keep the result in the drafter's run directory, where `anydistill report` finds it."""
    import json

    out = check_save(drafter)
    tmp = out.with_suffix(".json.tmp")
    text = json.dumps({**result, "target": target}, indent=1) + "\n"
    try:
        tmp.write_text(text)
        tmp.replace(out)  # a reader never sees half a file
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise ModelError(disk_full_message(out, len(text), f"{out} is as it was")) from None
        raise ModelError(f"--save: cannot write {out} ({err.strerror or err})") from None
    return out
