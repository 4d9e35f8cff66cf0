"""Optional LoRA adapters on the student, through peft."""

from __future__ import annotations

import re

import torch
from transformers import PreTrainedModel

from anydistill.errors import ModelError

FIELD = "student.lora.target_modules"


def _adaptable(module: torch.nn.Module) -> bool:
    """Module types peft can put LoRA on (transformers' Conv1D is gpt2's linear layer)."""
    kinds = (torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    return isinstance(module, kinds) or _linear(module)


def _linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def linear_names(model: torch.nn.Module) -> list[str]:
    """The short names of the model's linear layers (q_proj, c_attn, ...), sorted, once each."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and _linear(m)}
    )


def _matches(target: str, name: str) -> bool:
    return name == target or name.endswith("." + target)


def check_target_modules(model: torch.nn.Module, target_modules: list[str] | str) -> None:
    """Every entry must match a layer LoRA can adapt: a typo would otherwise be skipped
    silently (or, when nothing matches, be a peft traceback)."""
    if target_modules == "all-linear":
        return
    names = [name for name, m in model.named_modules() if name and _adaptable(m)]
    if isinstance(target_modules, str):  # peft treats a string as a regex on full names
        unmatched = [] if any(re.fullmatch(target_modules, n) for n in names) else [target_modules]
    else:
        unmatched = [t for t in target_modules if not any(_matches(t, n) for n in names)]
    if unmatched:
        have = linear_names(model)
        shown = ", ".join(have[:8]) + (", ..." if len(have) > 8 else "")
        raise ModelError(
            f"{FIELD}: {', '.join(map(str, unmatched))} matches no linear layer of "
            f"{type(model).__name__} (its linear layers are {shown}); use those names or all-linear"
        )


def add_lora(
    model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: list[str] | str
):
    """Wrap the student in a peft LoRA model; only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    check_target_modules(model, target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # what peft still refuses, in one line rather than a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{FIELD}: peft cannot adapt these modules ({first})") from None


def merged_for_saving(model) -> PreTrainedModel:
    """A plain transformers model: LoRA weights merged, so `from_pretrained` loads it."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model
