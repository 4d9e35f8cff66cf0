"""Mixer alignment: each converted layer's mixer trained to do what the teacher's attention did.

`capture_attention_io` records, per teacher layer, the attention's input (the normed hidden
state it reads) and output (before the residual add), with forward hooks on `self_attn`.
`mixer_token_errors` runs the student's mixer of that layer standalone on the same input and
returns the squared error per token; `mixer_alignment_loss` averages it over real tokens, then
layers. Running a mixer alone needs only (hidden_states, attention_mask): neither the GDN nor
the Mamba-2 mixer reads positions.

Padding. Both mixers zero padded positions of their input, but Bamba's in_proj has a bias
(on so its gate can start constant, `mamba2.py`), so a left pad reaches the first real tokens
through the conv's earlier taps once those are trained. The loss therefore moves each row's
real tokens to the front (a stable sort on the mask) before calling a mixer and back after:
a mixer is causal, so real tokens then see exactly what an unpadded row gives them, for any
mixer. (The student itself trains on right-padded batches, where the issue cannot arise.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from anydistill.models.convert.plan import FAMILIES

Captured = dict[int, tuple[torch.Tensor, torch.Tensor]]


def capture_attention_io(
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Iterable[int],
) -> Captured:
    """{layer: (attention input, attention output)}, each [batch, tokens, hidden], detached."""
    out: Captured = {}
    handles = []

    def hook(layer: int):
        def record(module, args, kwargs, result):
            x = kwargs.get("hidden_states", args[0] if args else None)
            y = result[0] if isinstance(result, tuple) else result
            out[layer] = (x.detach(), y.detach())

        return record

    blocks = teacher.model.layers
    try:
        for i in layers:
            handles.append(blocks[i].self_attn.register_forward_hook(hook(i), with_kwargs=True))
        with torch.no_grad():
            teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


def _family(student):
    return FAMILIES[student.config.model_type]


def mixer_of(student, layer: int) -> torch.nn.Module | None:
    """The mixer module of a student layer, or None where the layer kept its attention."""
    return getattr(student.model.layers[layer], _family(student).mixer, None)


def mixer_parameters(student) -> list[torch.nn.Parameter]:
    """Every parameter inside a mixer (what mixer alignment trains)."""
    mixer = f".{_family(student).mixer}."
    return [p for n, p in student.named_parameters() if mixer in n]


def _front(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the token order that puts real tokens first (stable, so in order)."""
    return torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)


def run_mixer(mixer, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mixer's output on `x`, real tokens of each row computed as in an unpadded row."""
    if attention_mask is None or bool((attention_mask != 0).all()):
        return mixer(hidden_states=x)
    order = _front(attention_mask)
    gathered = torch.gather(x, 1, order[..., None].expand_as(x))
    mask = torch.gather(attention_mask, 1, order)
    y = mixer(hidden_states=gathered, attention_mask=mask)
    return torch.empty_like(y).scatter_(1, order[..., None].expand_as(y), y)


def mixer_token_errors(
    student, captured: Captured, attention_mask: torch.Tensor | None
) -> dict[int, torch.Tensor]:
    """{layer: squared error per token [batch, tokens]} of each converted layer's mixer fed
    the teacher's attention input, against the teacher's attention output."""
    out = {}
    param = next(student.parameters())
    mask = None if attention_mask is None else attention_mask.to(param.device)
    for layer, (x, y) in sorted(captured.items()):
        mixer = mixer_of(student, layer)
        if mixer is None:
            continue
        pred = run_mixer(mixer, x.to(param.device, param.dtype), mask)
        out[layer] = (pred.float() - y.to(pred.device).float()).pow(2).mean(dim=-1)
    return out


def mixer_alignment_loss(
    student, captured: Captured, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """MSE of the mixers to the teacher's attention outputs: mean over real tokens, then over
    the converted layers among `captured`."""
    errors = mixer_token_errors(student, captured, attention_mask)
    if not errors:
        raise ValueError("none of the captured layers is a converted (mixer) layer")
    losses = []
    for err in errors.values():
        if attention_mask is None:
            losses.append(err.mean())
        else:
            m = attention_mask.to(err.device, err.dtype)
            losses.append((err * m).sum() / m.sum().clamp_min(1.0))
    return torch.stack(losses).mean()


def align_mixers(
    student,
    captured: Sequence[tuple[Captured, torch.Tensor | None]],
    steps: int,
    lr: float,
) -> list[float]:
    """`steps` Adam steps of `mixer_alignment_loss`, cycling over (captured, mask) batches,
    with only mixer parameters trainable (the others' requires_grad is restored after).
    Returns the loss of each step."""
    params = mixer_parameters(student)
    ids = {id(p) for p in params}
    before = {n: p.requires_grad for n, p in student.named_parameters()}
    for p in student.parameters():
        p.requires_grad_(id(p) in ids)
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    try:
        for step in range(steps):
            cap, mask = captured[step % len(captured)]
            loss = mixer_alignment_loss(student, cap, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for n, p in student.named_parameters():
            p.requires_grad_(before[n])
    return losses
