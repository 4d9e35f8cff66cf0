"""A student of another architecture from a recipe: `student.from_teacher.convert` in a run,
and `anydistill convert`.

The plan (which layers keep attention, what each student weight comes from) is printed before
any weight moves and kept beside the run (`converted/convert_plan.json`, with the KL ranking
when `keep_attention.select: kl` chose the layers); a resumed run rebuilds the same student
from that plan without scoring the layers again.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from anydistill.config import ConvertConfig, RunConfig
from anydistill.errors import ConfigError
from anydistill.models.convert import (
    PLAN_FILE,
    ConversionPlan,
    ConvertSpec,
    convert,
    plan_conversion,
    save_converted,
    select_layers_kl,
)
from anydistill.train.prune import calibration_batches

RANKING_FILE = "layer_ranking.json"


def spec_for(
    conv: ConvertConfig, teacher: PreTrainedModel, batches: Any, seed: int, say: Any
) -> tuple[ConvertSpec, list | None]:
    """The conversion request, KL-guided layer choice made here when asked (with its
    ranking: (layer, KL with its attention, KL drop), best first)."""
    family = {"to": conv.to, "state_size": conv.state_size, "conv_kernel": conv.conv_kernel}
    keep = conv.keep_attention
    if isinstance(keep, list):
        return ConvertSpec(keep_attention=keep, seed=seed, **family), None
    if keep.select == "even":
        return ConvertSpec(count=keep.count, fraction=keep.fraction, seed=seed, **family), None
    layers = teacher.config.num_hidden_layers
    count = keep.count if keep.count is not None else round(keep.fraction * layers)
    base = ConvertSpec(keep_attention=[], seed=seed, **family)
    kept, ranking = select_layers_kl(
        teacher, base, count, batches(), keep.align_steps, keep.align_lr, seed
    )
    say(
        "KL-guided layer selection (KL to the teacher with each layer's attention restored):\n"
        + "\n".join(f"  layer {i:3d}  KL {kl:.4f}  drop {drop:+.4f}" for i, kl, drop in ranking)
        + f"\nkeeping attention in layers {kept}"
    )
    spec = ConvertSpec(keep_attention=kept, seed=seed, **family)
    return spec, [{"layer": i, "kl_with": kl, "drop": drop} for i, kl, drop in ranking]


def converted_student(
    conv: ConvertConfig,
    teacher: PreTrainedModel,
    examples: list,
    pad_id: int,
    folder: Path,
    device: torch.device,
    seed: int,
) -> PreTrainedModel:
    """The student for a run: from the plan saved in `folder` when there is one (a resume),
    else planned now and saved there."""
    plan = _saved_plan(folder, conv, teacher)
    if plan is None:

        def batches():
            return calibration_batches(examples, _calibration(conv), 8, pad_id, device)

        spec, ranking = spec_for(conv, teacher, batches, seed, _say)
        plan = plan_conversion(teacher.config, spec)
        _say(f"{plan.describe()}\n(the plan in {folder})")
        _write(folder, PLAN_FILE, plan.to_dict())
        if ranking is not None:
            _write(folder, RANKING_FILE, ranking)
    return convert(teacher, plan).to(device=device, dtype=torch.float32)


def _calibration(conv: ConvertConfig) -> int:
    keep = conv.keep_attention
    return 1 if isinstance(keep, list) else keep.calibration


def _saved_plan(folder: Path, conv: ConvertConfig, teacher: PreTrainedModel) -> Any:
    path = folder / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = ConversionPlan.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # damaged: planned again and rewritten
    fresh = plan_conversion(teacher.config, replace_layers(plan.spec, plan.kept))
    same = plan.spec.to == conv.to and plan.to_dict() == fresh.to_dict()
    return plan if same else None


def replace_layers(spec: ConvertSpec, kept: list[int]) -> ConvertSpec:
    from dataclasses import replace

    return replace(spec, keep_attention=list(kept), count=None, fraction=None)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _write(folder: Path, name: str, data: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(folder / name)


def convert_to_dir(cfg: RunConfig, out: Path) -> Path:
    """`anydistill convert RECIPE --out DIR`: the recipe's teacher converted as its
    `student.from_teacher.convert` says, saved where `from_pretrained` loads it."""
    from anydistill.paths import check_writable_dir
    from anydistill.train.recipe_teacher import recipe_teacher

    source = cfg.student.from_teacher
    if source is None or source.convert is None:
        raise ConfigError(
            "student.from_teacher.convert: `anydistill convert` needs the target there, e.g. "
            "student.from_teacher.convert.to=bamba"
        )
    if cfg.teacher.kind != "model":
        raise ConfigError("teacher.kind: converting needs the teacher's weights")
    out = check_writable_dir(out, "--out")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} is not empty; give a new or empty directory")
    got = recipe_teacher(cfg)
    conv = source.convert

    def batches():
        return calibration_batches(got.examples, _calibration(conv), 8, got.pad_id, got.device)

    spec, ranking = spec_for(conv, got.teacher, batches, cfg.train.seed, _say)
    plan = plan_conversion(got.teacher.config, spec)
    _say(plan.describe())
    student = convert(got.teacher, plan)
    saved = save_converted(student, got.tokenizer, out, plan, field="--out")
    if ranking is not None:
        (saved / RANKING_FILE).write_text(json.dumps(ranking, indent=1))
    return saved
