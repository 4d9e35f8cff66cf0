"""The run's side of FSDP2 (`train.distributed.strategy: fsdp2` over several processes): which
models get sharded, and `final/` gathered from the shards. The sharding itself is in
`models.sharding`; checkpoints in `train.checkpoint` (their `sharded/` folder)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from anydistill.config import RunConfig
from anydistill.models.heads import HiddenStates, unwrap
from anydistill.models.sharding import full_student_state, is_sharded, shard_frozen, shard_student

log = logging.getLogger(__name__)


def teacher_models(teacher: Any) -> list[torch.nn.Module]:
    """The live models behind a teacher kind (several for `teachers:`; none for a cache or a
    server)."""
    members = [m.teacher for m in teacher.members] if hasattr(teacher, "members") else [teacher]
    found = []
    for member in members:
        model = getattr(member, "model", None)
        if isinstance(model, torch.nn.Module) and all(model is not m for m in found):
            found.append(model)
    return found


def shard_run(cfg: RunConfig, model: HiddenStates, teacher: Any) -> None:
    """Shard the student (with its projections) for training and every live teacher for
    forward only, in place."""
    d = cfg.train.distributed
    shard_student(model, cfg.train.precision == "bf16", d.reshard_after_forward)
    for lm in teacher_models(teacher):
        shard_frozen(unwrap(lm), d.teacher_reshard_after_forward)
    log.info("fsdp2: student and %d live teacher(s) sharded", len(teacher_models(teacher)))


def save_final_sharded(run_dir: Path, model: HiddenStates, tokenizer: Any, is_main: bool) -> None:
    """`final/` from a sharded student: every process takes part in the gather, rank 0 writes
    one `from_pretrained` folder (tied weights stored once, as transformers saves them)."""
    assert is_sharded(model)
    state = full_student_state(model)
    if not is_main:
        return
    final, tmp = run_dir / "final", run_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    unwrap(model).save_pretrained(str(tmp), state_dict=state)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
