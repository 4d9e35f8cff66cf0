"""Activation-based importance (Minitron) from forward hooks over a calibration set.

One forward pass collects every width score and the cosine block score; `block_loss` adds
one pass per layer with that block skipped. Padding positions never enter a statistic:
activations are selected by the attention mask (never multiplied by it, so a NaN at a fully
masked position cannot leak in), and sums accumulate in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from anydistill.errors import ConfigError
from anydistill.models.from_teacher import decoder_layers
from anydistill.models.prune.families import Family, Shape, family_of, shape_of
from anydistill.progress import CountProgress

Batch = tuple[Tensor, Tensor]
_FIELDS = ("mlp", "heads", "channels", "blocks")


@dataclass
class Importance:
    """Scores from a calibration set; every width score is a mean over non-padding tokens.

    - `mlp` [L, I]: mean |x| of the MLP intermediate (act(gate) * up, the input of down_proj).
    - `heads` [L, n_heads]: mean L2 norm of each query head's attention output (its head_dim
      slice of the o_proj input).
    - `channels` [H]: mean |y| of every norm over the embedding channels (per-layer norms,
      Gemma2/3's feed-forward norms, the final norm), summed over the norms.
    - `blocks` [L]: mean of 1 - cos(h_in, h_out) of each decoder block (Block Importance).
    - `block_loss` [L] or None: LM loss with the block skipped minus the full model's loss.

    Minitron sums over batch and sequence; the mean only divides by the token count, so the
    ranking (all pruning uses) is the same and scores from different runs stay comparable.
    """

    mlp: Tensor
    heads: Tensor
    channels: Tensor
    blocks: Tensor
    block_loss: Tensor | None = None
    tokens: int = 0
    base_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k).tolist() for k in _FIELDS}
        out["block_loss"] = None if self.block_loss is None else self.block_loss.tolist()
        out["tokens"] = self.tokens
        out["base_loss"] = self.base_loss
        out["aggregation"] = "mean over non-padding tokens"
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Importance:
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise ConfigError(
                f"importance: the saved scores lack {', '.join(missing)}; recompute them"
            )
        loss = data.get("block_loss")
        return cls(
            **{k: torch.tensor(data[k], dtype=torch.float32) for k in _FIELDS},
            block_loss=None if loss is None else torch.tensor(loss, dtype=torch.float32),
            tokens=int(data.get("tokens", 0)),
            base_loss=data.get("base_loss"),
        )


class _Sums:
    """float32 running sums of every statistic, fed by the hooks; they stay on the model's
    device until the end so the hooks never wait for a copy to the host."""

    def __init__(self, shape: Shape, n_layers: int, device: torch.device):
        zeros = functools.partial(torch.zeros, dtype=torch.float32, device=device)
        self.mlp = zeros(n_layers, shape.intermediate_size)
        self.heads = zeros(n_layers, shape.num_attention_heads)
        self.channels = zeros(shape.hidden_size)
        self.blocks = zeros(n_layers)
        self.head_dim = shape.head_dim
        self.select: Tensor | None = None  # [B, T] bool: the non-padding tokens of this batch
        self.tokens = 0

    def rows(self, x: Tensor) -> Tensor:
        """[N, D] float32: the activations of the non-padding tokens."""
        return x[self.select.to(x.device)].float()

    def _add(self, into: Tensor, value: Tensor) -> None:
        into += value.to(into.device)  # layers may sit on other devices (device_map)

    def add_mlp(self, layer: int, x: Tensor) -> None:
        self._add(self.mlp[layer], self.rows(x).abs().sum(0))

    def add_heads(self, layer: int, x: Tensor) -> None:
        rows = self.rows(x)
        per_head = rows.view(rows.shape[0], -1, self.head_dim).norm(dim=-1)
        self._add(self.heads[layer], per_head.sum(0))

    def add_channels(self, y: Tensor) -> None:
        self._add(self.channels, self.rows(y).abs().sum(0))

    def add_block(self, layer: int, h_in: Tensor, h_out: Tensor) -> None:
        cos = F.cosine_similarity(self.rows(h_in), self.rows(h_out), dim=-1)
        self._add(self.blocks[layer], (1 - cos).sum())


def _first(value: Any) -> Tensor:
    # Older transformers return (hidden_states, ...) from a decoder layer, newer a tensor.
    return value[0] if isinstance(value, tuple) else value


def _layer_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _register(model: PreTrainedModel, family: Family, sums: _Sums) -> list:
    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        handles.append(
            layer.mlp.down_proj.register_forward_pre_hook(
                lambda _m, args, i=i: sums.add_mlp(i, args[0])
            )
        )
        handles.append(
            layer.self_attn.o_proj.register_forward_pre_hook(
                lambda _m, args, i=i: sums.add_heads(i, args[0])
            )
        )
        for name in family.layer_norms:
            handles.append(
                getattr(layer, name).register_forward_hook(
                    lambda _m, _a, out: sums.add_channels(out)
                )
            )
        handles.append(
            layer.register_forward_hook(
                lambda _m, args, kwargs, out, i=i: sums.add_block(
                    i, _layer_input(args, kwargs), _first(out)
                ),
                with_kwargs=True,
            )
        )
    final = model.get_decoder().norm
    handles.append(final.register_forward_hook(lambda _m, _a, out: sums.add_channels(out)))
    return handles


def _skip(_module, args, kwargs, out):
    """Forward hook making a block the identity (its output replaced by its input)."""
    h_in = _layer_input(args, kwargs)
    return (h_in, *out[1:]) if isinstance(out, tuple) else h_in


def _lm_loss(model: PreTrainedModel, ids: Tensor, mask: Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over pairs where both tokens are real, and their count."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    valid = mask[:, 1:].bool() & mask[:, :-1].bool()
    picked = logits[:, :-1][valid].float()
    loss = F.cross_entropy(picked, ids[:, 1:][valid], reduction="sum")
    return float(loss), int(valid.sum())


def _checked(batches: Iterable[Batch]) -> list[Batch]:
    out = list(batches)
    if not out:
        raise ConfigError("batches: the calibration set is empty; give at least one batch")
    for ids, mask in out:
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ConfigError(
                f"batches: input_ids {tuple(ids.shape)} and attention_mask "
                f"{tuple(mask.shape)} must both be [batch, tokens]; give matching 2-D tensors"
            )
    if not any(bool(mask.bool().any()) for _, mask in out):
        raise ConfigError("batches: every position is padding; give real calibration text")
    return out


def compute_importance(
    model: PreTrainedModel,
    batches: Iterable[Batch],
    *,
    block_loss: bool = False,
    progress: bool = False,
) -> Importance:
    """Importance scores of `model` on `batches` of (input_ids [B, T], attention_mask [B, T]).

    One pass with hooks, plus one pass per layer with that layer skipped when `block_loss`.
    The model is put in eval mode for the passes and restored afterwards.
    """
    family = family_of(model.config)
    shape = shape_of(model.config)
    batches = _checked(batches)
    n_layers = len(decoder_layers(model))
    device = model.get_input_embeddings().weight.device
    sums = _Sums(shape, n_layers, device)
    passes = 1 + (n_layers if block_loss else 0)
    was_training = model.training
    model.eval()
    handles = _register(model, family, sums)
    base_loss, skipped = None, None
    try:
        with (
            torch.no_grad(),
            CountProgress(len(batches) * passes, 0, "importance", enabled=progress) as bar,
        ):
            loss_sum, loss_count = 0.0, 0
            for done, (ids, mask) in enumerate(batches, 1):
                ids, mask = ids.to(device), mask.to(device)
                sums.select = mask.bool()
                sums.tokens += int(sums.select.sum())
                if block_loss:
                    total, count = _lm_loss(model, ids, mask)
                    loss_sum, loss_count = loss_sum + total, loss_count + count
                else:  # the trunk alone: no [B, T, vocab] logits needed
                    model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
                bar.update(done)
            for handle in handles:
                handle.remove()
            handles = []
            if block_loss:
                base_loss = loss_sum / max(loss_count, 1)
                skipped = _skipped_losses(model, batches, device, base_loss, bar)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    tokens = max(sums.tokens, 1)
    return Importance(
        mlp=sums.mlp.cpu() / tokens,
        heads=sums.heads.cpu() / tokens,
        channels=sums.channels.cpu() / tokens,
        blocks=sums.blocks.cpu() / tokens,
        block_loss=skipped,
        tokens=sums.tokens,
        base_loss=base_loss,
    )


def _skipped_losses(
    model: PreTrainedModel, batches: list[Batch], device, base_loss: float, bar: CountProgress
) -> Tensor:
    """Per layer: mean LM loss with that block replaced by the identity, minus `base_loss`."""
    out = []
    done = len(batches)
    for layer in decoder_layers(model):
        handle = layer.register_forward_hook(_skip, with_kwargs=True)
        try:
            total, count = 0.0, 0
            for ids, mask in batches:
                part, n = _lm_loss(model, ids.to(device), mask.to(device))
                total, count = total + part, count + n
                done += 1
                bar.update(done)
        finally:
            handle.remove()
        out.append(total / max(count, 1) - base_loss)
    return torch.tensor(out, dtype=torch.float32)
