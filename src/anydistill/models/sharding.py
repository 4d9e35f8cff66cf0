"""FSDP2: the student and the live teachers sharded across processes with torch's `fully_shard`.

Each decoder block (the classes a model lists in `_no_split_modules`) is its own unit: its
weights are gathered for its forward and freed after. The rest (embeddings, final norm, the
output head, the feature terms' projections) is one root unit:

- the student's root is its `HiddenStates` wrapper, whose forward the step calls, so FSDP
  gathers the root weights there and keeps them until backward. The loss engine reads the
  head weight after forward (it never asks for full logits); torch's post-backward callback
  reduce-scatters that gradient like any other, since the root's forward input needs no grad.
- a frozen teacher's root is the CausalLM itself, gathered once and kept (embeddings, norm and
  head replicated; the blocks, nearly all the weights, stay sharded), so every caller (the
  step's decoder call, eval, the head) reads it as an ordinary model.

Checkpoints of a sharded student go through torch distributed checkpoint (each process writes
its shards); `final/` is gathered to rank 0 and saved as one `from_pretrained` folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from anydistill.errors import ConfigError
from anydistill.models.heads import HiddenStates


def blocks(lm: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks: the modules of the classes transformers keeps whole."""
    names = set(getattr(lm, "_no_split_modules", None) or [])
    found = [m for m in lm.modules() if type(m).__name__ in names]
    if not found:
        raise ConfigError(
            f"train.distributed.strategy: fsdp2 shards a model block by block, but "
            f"{type(lm).__name__} names no decoder block class (`_no_split_modules`); use "
            "strategy ddp"
        )
    return found


def is_sharded(module: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard_student(root: HiddenStates, bf16: bool, reshard: bool) -> HiddenStates:
    """Shard the student (and its projections) in place; the optimizer is built after this,
    on the sharded parameters. bf16: gathered weights in bf16, gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for block in blocks(root.lm):
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(root, mp_policy=policy)
    return root


def shard_frozen(lm: nn.Module, reshard: bool) -> nn.Module:
    """Shard a frozen teacher in place for forward only (no gradients, no optimizer state)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks(lm):
        fully_shard(block, reshard_after_forward=reshard)
    fully_shard(lm, reshard_after_forward=False)
    lm.unshard()  # the root stays gathered: see the module docstring
    return lm


@contextmanager
def gathered(root: nn.Module) -> Iterator[None]:
    """The student's root weights gathered outside its own forward, for a forward every
    process makes together (eval on all ranks); sharded again after."""
    if not is_sharded(root):
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def _options(full: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def save_shards(root: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every process writes its shards of the student and its optimizer state to `path`
    (torch distributed checkpoint: `.metadata` plus one `.distcp` file per process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = {
        "model": get_model_state_dict(root, options=_options(False)),
        "optim": get_optimizer_state_dict(root, optimizer, options=_options(False)),
    }
    dcp.save(state, checkpoint_id=str(path))


def load_shards(root: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Read `save_shards`' folder back into the sharded student and its optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = {
        "model": get_model_state_dict(root, options=_options(False)),
        "optim": get_optimizer_state_dict(root, optimizer, options=_options(False)),
    }
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(root, state["model"], options=_options(False))
    set_optimizer_state_dict(root, optimizer, state["optim"], options=_options(False))


def full_student_state(root: nn.Module) -> dict[str, torch.Tensor]:
    """The whole student's weights on rank 0's CPU, keyed as the CausalLM names them (the
    projections left out); every process must call it, the others get {}."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(root, options=_options(True))
    return {k.removeprefix("lm."): v for k, v in full.items() if k.startswith("lm.")}
