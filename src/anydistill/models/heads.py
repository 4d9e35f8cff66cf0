"""The seam between models and losses: final hidden states and the output head.

The trainer never asks a model for full logits; it takes the last hidden states and the
head (weight, bias, scale, soft-cap) and hands both to the loss engine, which projects in
tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from anydistill.models.features import NO_EXTRAS, Features, Needs, capture


@dataclass
class Head:
    """An output layer: logits = softcap(logit_scale * (h @ weight.T + bias))."""

    weight: Tensor  # [V_rows, H]; V_rows may exceed the real vocabulary (padded heads)
    bias: Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None  # Gemma-style final_logit_softcapping: cap * tanh(x / cap)


def unwrap(model: nn.Module) -> PreTrainedModel:
    """Strip DDP/compile/peft wrappers down to the transformers CausalLM."""
    while True:
        if isinstance(model, HiddenStates):
            model = model.lm
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def output_head(model: nn.Module) -> Head:
    lm = unwrap(model)
    linear = lm.get_output_embeddings()
    cfg = lm.config
    return Head(
        weight=linear.weight,
        bias=getattr(linear, "bias", None),
        logit_scale=float(getattr(cfg, "logit_scale", None) or 1.0),
        softcap=getattr(cfg, "final_logit_softcapping", None),
    )


class HiddenStates(nn.Module):
    """Wraps a CausalLM so that forward returns the final (normed) hidden states only.

    DDP and accelerate wrap this module, so gradient sync covers the trunk; the head is used
    by the loss outside forward and still receives its gradient in the same backward. So do
    `extras` (feature terms' projections): trained with the student, synced by the same DDP,
    never part of the saved student.
    """

    def __init__(self, lm: nn.Module, extras: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        if extras is not None:
            self.extras = extras

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, needs: Needs = NO_EXTRAS
    ) -> torch.Tensor | tuple[torch.Tensor, Features]:
        """The final hidden states `[B, T, H]`; with `needs`, also the layer activations it
        lists (full `[B, T, ...]`, in the graph), as `(hidden, features)`."""
        base = unwrap(self.lm)
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.base_model
        if not needs:
            out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return out.last_hidden_state
        with capture(base, needs, "student") as features:
            out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state, features
