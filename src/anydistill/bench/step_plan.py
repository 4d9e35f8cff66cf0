"""What a step benchmark is asked to run, checked before any weight exists: the settings,
and whether the step fits in the device's memory (from the models' shapes on the meta
device), so an over-large step is one sentence instead of swap or the OOM killer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from anydistill.bench import memory
from anydistill.bench.compare import COMPARE_ENGINES
from anydistill.bench.loss import DIVERGENCE_TERMS, working_set_bytes
from anydistill.bench.memory import NotEnoughMemory, too_big
from anydistill.bench.presets import ModelSpec
from anydistill.losses.engine import ENGINES, auto_chunk_size
from anydistill.models.heads import output_head
from anydistill.models.loading import build_from_config, max_positions

VARIANTS = ("anydistill", *COMPARE_ENGINES)


class SettingsError(ValueError):
    """Settings that no variant can run with: the command fails instead of recording it."""


@dataclass(frozen=True)
class StepSettings:
    """Everything about a step benchmark except the models and the device."""

    batch: int
    seq_len: int
    steps: int = 5
    warmup: int = 2
    divergence: str = "jsd"
    engine: str = "torch"
    chunk_size: int | None = None
    dtype: str = "fp32"  # bf16: bf16 teacher weights and bf16 autocast (precision: bf16)
    gradient_checkpointing: bool = False
    peak_tflops: float | None = None  # None: no MFU

    def check(self, variants: list[str]) -> None:
        """SettingsError with one sentence for settings no step can run with."""
        if self.batch < 1 or self.seq_len < 2:
            raise SettingsError("--batch must be >= 1 and --seq-len >= 2 (a loss needs a target)")
        if self.steps < 1 or self.warmup < 0:
            raise SettingsError("--steps must be >= 1 and --warmup >= 0")
        if self.divergence not in DIVERGENCE_TERMS:
            raise SettingsError(
                f"--divergence {self.divergence!r} is not one of {', '.join(DIVERGENCE_TERMS)}"
            )
        if self.engine not in ENGINES:
            raise SettingsError(f"--engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.dtype not in ("fp32", "bf16"):
            raise SettingsError(f"--dtype {self.dtype!r} is not one of fp32, bf16")
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            raise SettingsError(f"--compare {bad[0]!r} is not one of {', '.join(COMPARE_ENGINES)}")
        if self.peak_tflops is not None and not (0 < self.peak_tflops < float("inf")):
            raise SettingsError(f"--peak-tflops {self.peak_tflops} must be a number > 0")


def param_count(model: nn.Module) -> int:
    """Distinct parameters (a tied head is counted once, as `parameters()` yields it once)."""
    return sum(p.numel() for p in model.parameters())


def meta_model(spec: ModelSpec, dtype: torch.dtype, field: str) -> PreTrainedModel:
    """The model's structure on the meta device: sizes and limits, no memory, no time."""
    with torch.device("meta"):
        return build_from_config(
            spec.config, field=field, vocab_size=spec.config["vocab_size"], dtype=dtype, seed=0
        )


def _widths(model: PreTrainedModel) -> tuple[int, int, int]:
    """Hidden size, MLP width and layer count (a 4x MLP when the config names none)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    cfg = cfg or model.config
    hidden = int(cfg.hidden_size)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    return hidden, inter, int(cfg.num_hidden_layers)


def _kept_per_token(student: PreTrainedModel, settings: StepSettings, act: int) -> int:
    """Bytes per token the student keeps for backward: ~16 hidden + 3 MLP values per layer,
    or with checkpointing one hidden per layer plus one layer's recomputed set."""
    hidden, inter, layers = _widths(student)
    per_layer = (16 * hidden + 3 * inter) * act
    if settings.gradient_checkpointing:
        return layers * hidden * act + per_layer
    return layers * per_layer


def step_bytes(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    settings: StepSettings,
    device: torch.device,
    vocab: int,
) -> tuple[int, int]:
    """(resident, peak) bytes of a step from the shapes alone (within ~10% of the measured
    peaks of small models on the CPU).

    Resident: the teacher's weights and the student's weights, gradients and AdamW moments.
    The peak adds the student's activations kept for backward, both models' last hidden rows
    (and their gradient), the loss engine's working set and the token batches (all of them on
    the CPU, one on a GPU).
    """
    tokens = settings.batch * settings.seq_len
    act = 2 if settings.dtype == "bf16" else 4
    resident = param_count(teacher) * act + param_count(student) * 4 * 4
    hidden_rows = tokens * (2 * _widths(student)[0] + _widths(teacher)[0]) * 4
    rows = min(tokens, settings.chunk_size or auto_chunk_size(vocab, device))
    working = working_set_bytes(rows, vocab, [settings.divergence])
    batches = (settings.warmup + settings.steps if device.type == "cpu" else 1) * tokens * 17
    activations = tokens * _kept_per_token(student, settings, act)
    return resident, resident + activations + hidden_rows + working + batches


def check_plan(
    teacher_spec: ModelSpec, student_spec: ModelSpec, settings: StepSettings, device: torch.device
) -> None:
    """Refuse, before any weight is allocated, a --seq-len beyond a model and a step that
    cannot fit (on the CPU an over-large step swaps or meets the OOM killer, not an error)."""
    t_dtype = torch.bfloat16 if settings.dtype == "bf16" else torch.float32
    teacher = meta_model(teacher_spec, t_dtype, "--teacher")
    student = meta_model(student_spec, torch.float32, "--student")
    check_positions(teacher, settings.seq_len, "teacher")
    check_positions(student, settings.seq_len, "student")
    vocab = min(output_head(teacher).weight.shape[0], int(student_spec.config["vocab_size"]))
    resident, need = step_bytes(teacher, student, settings, device, vocab)
    what = (
        f"--batch {settings.batch} x --seq-len {settings.seq_len} with {teacher_spec.name} -> "
        f"{student_spec.name} "
        "(weights, gradients, AdamW state, activations and the loss's working set)"
    )
    room = memory.available_bytes(device)
    if need <= room[0]:
        return
    if resident > room[0]:
        fix = "pick smaller --teacher / --student models"
    else:
        fix = "lower --batch or --seq-len"
        if not settings.gradient_checkpointing:
            fix += " (or add --gradient-checkpointing)"
    raise NotEnoughMemory(too_big(what, need, room, device, fix))


def check_positions(model: PreTrainedModel, seq_len: int, field: str) -> None:
    limit = max_positions(model)
    if limit is not None and seq_len > limit:
        raise SettingsError(f"--seq-len {seq_len} is more than the {field} handles ({limit})")
