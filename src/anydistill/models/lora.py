"""Optional LoRA adapters on the student, through peft."""

from __future__ import annotations

from transformers import PreTrainedModel


def add_lora(
    model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: list[str] | str
):
    """Wrap the student in a peft LoRA model; only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merged_for_saving(model) -> PreTrainedModel:
    """A plain transformers model: LoRA weights merged, so `from_pretrained` loads it."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model
