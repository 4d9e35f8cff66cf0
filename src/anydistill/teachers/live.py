"""A teacher model in this process, reading the student's tokens (`kind = "live"`)."""

from __future__ import annotations

import contextlib

import torch

from anydistill.data.views import StepInputs
from anydistill.errors import ConfigError
from anydistill.losses.engine import TeacherSignal
from anydistill.models.from_teacher import decoder_layers
from anydistill.models.heads import output_head, unwrap
from anydistill.teachers.base import NO_EXTRAS, Features, Needs


class LiveTeacher:
    kind = "live"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> TeacherSignal:
        """Final hidden states at the selected rows and the head; the requested layers'
        activations at the same rows in `signal.features`."""
        hidden, features = forward_rows(self.model, inputs, needs)
        return TeacherSignal(hidden=hidden, head=output_head(self.model), features=features)


def forward_rows(
    model: torch.nn.Module, inputs: StepInputs, needs: Needs = NO_EXTRAS
) -> tuple[torch.Tensor, Features | None]:
    """One decoder forward: final hidden rows [N, H], plus the layer activations `needs`
    lists (rows selected the same way), or None when it lists none."""
    base = unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.base_model
    want_hidden = bool(needs.hidden_layers)
    attention: dict[int, torch.Tensor] = {}
    with _attention_hooks(model, needs.attention_layers, attention):
        out = decoder(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            use_cache=False,
            output_hidden_states=want_hidden,
        )

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x[:, :-1][inputs.select]

    final = rows(out.last_hidden_state)
    if not (needs.hidden_layers or needs.attention_layers):
        return final, None
    # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1].
    count = len(out.hidden_states or ()) - 1
    for i in needs.hidden_layers:
        if not 0 <= i < count:
            raise ConfigError(f"the teacher has {count} decoder layers; layer {i} is not one")
    layers = {i: rows(out.hidden_states[i + 1]) for i in needs.hidden_layers}
    return final, Features(layers, {i: rows(a) for i, a in attention.items()})


@contextlib.contextmanager
def _attention_hooks(model: torch.nn.Module, layers: tuple[int, ...], into: dict):
    blocks = decoder_layers(model)
    handles = []
    for i in layers:
        attn = None
        if 0 <= i < len(blocks):  # llama-style blocks call it self_attn, gpt2-style attn
            attn = getattr(blocks[i], "self_attn", None) or getattr(blocks[i], "attn", None)
        if attn is None:
            raise ConfigError(
                f"the teacher has {len(blocks)} decoder layers; layer {i} has no attention "
                "module to read"
            )

        def keep(_module, _args, output, i=i):
            into[i] = output[0] if isinstance(output, tuple) else output

        handles.append(attn.register_forward_hook(keep))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
