"""`anydistill bench step`: time whole distillation training steps and split them into parts.

One timed step is what the trainer does for one micro-batch (`train.step.train_step` +
the loop's optimizer step): `step_inputs`, then `micro_batch_loss` (teacher forward without
grad -> student trunk -> our loss engine) under the trainer's bf16 autocast, backward,
gradient clipping at the trainer's default `max_grad_norm`, AdamW (`train.optim`, fused on
CUDA) and `zero_grad`. The models have random weights (`from_config`); the batch is random
tokens with every position a loss token, which is also what a packed batch looks like.

The parts come from instants marked inside that one step, without extra synchronisation
(CUDA events on a GPU, `perf_counter` on the CPU where every op is synchronous):

- `teacher_forward_ms`: step start -> the teacher's decoder returns (a forward hook);
- `student_forward_backward_ms`: from there -> `backward()` returns (student trunk forward,
  the loss forward and backward, the trunk backward);
- `loss_ms` (inside the previous part): the student's decoder returns (forward hook) -> the
  gradient reaches its last hidden state (a tensor hook), i.e. the loss forward + backward;
- `optimizer_ms`: `backward()` returns -> gradient clipping, `optimizer.step()`, `zero_grad`.

`step_ms` is the mean wall time of the timed steps (synchronised after each step, as the
trainer is when it reads the loss), so the three top-level parts sum to at most `step_ms`;
`tokens_per_s` is batch * seq_len / step_ms. `peak_memory_bytes` is everything allocated at
the peak of the timed steps: on CUDA `max_memory_allocated` (weights, AdamW state,
activations); on the CPU, which has no allocator statistics, the bytes of the weights, buffers
and AdamW state plus the peak of the tensors one more step creates (`bench.memory`), not RSS.
`loss` is the first step's loss, taken before any update with the same weights and batch in
every variant, so the variants' values must agree; `last_loss` is the last timed step's.
`--compare trl,liger` runs the same step with the loss replaced by TRL's or Liger-Kernel's
chunked loss.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from anydistill.bench import memory
from anydistill.bench.compare import COMPARE_ENGINES, Unsupported, compare_loss
from anydistill.bench.loss import DIVERGENCE_TERMS, working_set_bytes
from anydistill.bench.memory import NotEnoughMemory, peak_extra_bytes, too_big
from anydistill.bench.presets import ModelSpec
from anydistill.config import TrainConfig
from anydistill.losses.engine import ENGINES, auto_chunk_size
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import HiddenStates, output_head, unwrap
from anydistill.models.loading import build_from_config, freeze, max_positions
from anydistill.train.optim import build_optimizer
from anydistill.train.step import StepInputs, micro_batch_loss, step_inputs, teacher_signal

VARIANTS = ("anydistill", *COMPARE_ENGINES)
# Dense bf16 tensor-core peak of an H100 / H200 SXM, the usual MFU denominator.
H100_BF16_TFLOPS = 989.0
_TRAIN = TrainConfig.model_fields  # the trainer's defaults: lr, betas, clipping
_SEEDS = {"data": 0, "teacher": 1, "student": 2}


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


# ---- counting ---------------------------------------------------------------------------


def param_count(model: nn.Module) -> int:
    """Distinct parameters (a tied head is counted once, as `parameters()` yields it once)."""
    return sum(p.numel() for p in model.parameters())


def non_embedding_params(model: PreTrainedModel) -> int:
    """Parameters outside the input embedding and the output head (tied or not)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    n = param_count(model) - emb.numel()
    return n if head is emb else n - head.numel()


def flops_per_token(
    teacher_params: int, student_params: int, vocab: int, teacher_hidden: int, student_hidden: int
) -> int:
    """Model FLOPs of one training token: 2N teacher forward + 6N student forward/backward.

    N are non-embedding parameters; the heads are counted on the loss vocabulary
    (2*V*Ht + 6*V*Hs). Attention's sequence-quadratic matmuls are left out, as in the usual
    6N estimate, so MFU is slightly conservative at long sequences; gradient checkpointing's
    recomputation is not counted either (model FLOPs, not hardware FLOPs).
    """
    return (
        2 * teacher_params
        + 6 * student_params
        + 2 * vocab * teacher_hidden
        + 6 * vocab * student_hidden
    )


def _live_bytes(tensors: Iterable[Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _resident_bytes(
    teacher: nn.Module, student: nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    """Weights, buffers and optimizer state held between steps (the CPU has no allocator stats)."""
    state = (v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor))
    models = (t for m in (teacher, student) for t in (*m.parameters(), *m.buffers()))
    return _live_bytes([*models, *state])


# ---- models and data --------------------------------------------------------------------


def build_model(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int, field: str
) -> PreTrainedModel:
    """Random weights, initialised directly on the device (a 7B init on the CPU takes minutes)."""
    with device:
        model = build_from_config(
            spec.config, field=field, vocab_size=spec.config["vocab_size"], dtype=dtype, seed=seed
        )
    return model.to(device)


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
    _check_positions(teacher, settings.seq_len, "teacher")
    _check_positions(student, settings.seq_len, "student")
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


def _check_positions(model: PreTrainedModel, seq_len: int, field: str) -> None:
    limit = max_positions(model)
    if limit is not None and seq_len > limit:
        raise SettingsError(f"--seq-len {seq_len} is more than the {field} handles ({limit})")


def random_batches(count: int, batch: int, seq_len: int, vocab: int) -> list[dict[str, Tensor]]:
    """Collated-looking CPU batches (as `data.collate` makes them): every position a target."""
    g = torch.Generator().manual_seed(_SEEDS["data"])
    ones = torch.ones(batch, seq_len, dtype=torch.bool)
    return [
        {
            "input_ids": torch.randint(0, vocab, (batch, seq_len), generator=g),
            "attention_mask": ones.long(),
            "loss_mask": ones,
        }
        for _ in range(count)
    ]


# ---- one step, marked -------------------------------------------------------------------


class _Marks:
    """Named instants of one step: CUDA events on a GPU (no sync), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.at: dict[str, object] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.at[name] = event
        else:
            self.at[name] = time.perf_counter()

    def ms(self, a: str, b: str) -> float:
        if self.cuda:
            return float(self.at[a].elapsed_time(self.at[b]))  # type: ignore[attr-defined]
        return (self.at[b] - self.at[a]) * 1e3  # type: ignore[operator]

    def parts(self) -> dict[str, float]:
        """Call after the step has synchronised."""
        loss_end = "loss_backward" if "loss_backward" in self.at else "loss_forward"
        return {
            "teacher_forward_ms": self.ms("start", "teacher"),
            "student_forward_backward_ms": self.ms("teacher", "backward"),
            "loss_ms": self.ms("trunk", loss_end),
            "optimizer_ms": self.ms("backward", "end"),
        }


def _decoder(model: nn.Module) -> nn.Module:
    """The module `HiddenStates` calls: its forward brackets a model's trunk."""
    base = unwrap(model)
    return base.get_decoder() if hasattr(base, "get_decoder") else base.base_model


@contextlib.contextmanager
def _phase_hooks(teacher: nn.Module, student: nn.Module, marks: _Marks) -> Iterator[None]:
    """Mark when the teacher's and the student's trunks return, and when the loss's gradient
    reaches the student's last hidden state."""

    def teacher_done(_module: nn.Module, _args: object, _out: object) -> None:
        marks.mark("teacher")

    def student_done(_module: nn.Module, _args: object, out: object) -> None:
        marks.mark("trunk")
        hidden = out.last_hidden_state  # type: ignore[attr-defined]
        if hidden.requires_grad:
            hidden.register_hook(lambda _grad: marks.mark("loss_backward"))

    handles = [
        _decoder(teacher).register_forward_hook(teacher_done),
        _decoder(student).register_forward_hook(student_done),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def compared_micro_batch_loss(
    library: str,
    student: nn.Module,
    teacher: nn.Module,
    inputs: StepInputs,
    divergence: str,
    vocab_size: int,
) -> Tensor:
    """`micro_batch_loss` with our loss engine swapped for TRL's / Liger's chunked loss.

    Both return the mean over tokens, which is ours with one micro-batch (normalizer = its
    loss tokens); both heads are sliced to the shared vocabulary as our engine does.
    """
    signal = teacher_signal(teacher, inputs)
    assert signal is not None
    hidden = student(inputs.input_ids, inputs.attention_mask)
    rows = hidden[:, :-1][inputs.select]
    s_w = output_head(student).weight[:vocab_size]
    t_w = signal.head.weight[:vocab_size]
    return compare_loss(library, rows, s_w, signal.hidden, t_w, inputs.labels, divergence)


LossFn = Callable[[StepInputs], Tensor]


def _loss_fn(
    variant: str,
    student: nn.Module,
    teacher: nn.Module,
    settings: StepSettings,
    vocab: int,
) -> LossFn:
    if variant != "anydistill":
        return lambda inputs: compared_micro_batch_loss(
            variant, student, teacher, inputs, settings.divergence, vocab
        )
    term = ActiveTerm(
        settings.divergence, settings.divergence, 1.0, **DIVERGENCE_TERMS[settings.divergence]
    )

    def ours(inputs: StepInputs) -> Tensor:
        normalizer = torch.tensor(float(inputs.labels.numel()), device=inputs.labels.device)
        out = micro_batch_loss(
            student,
            teacher,
            inputs,
            [term],
            vocab,
            normalizer,
            settings.engine,
            settings.chunk_size,
        )
        return out.loss

    return ours


def _train_step(
    loss_fn: LossFn,
    batch: dict[str, Tensor],
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    bf16: bool,
    marks: _Marks,
) -> Tensor:
    """The trainer's step for one micro-batch (train_step + the loop's optimizer calls)."""
    marks.at.clear()
    marks.mark("start")
    inputs = step_inputs(batch, device)
    with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        loss = loss_fn(inputs)
        marks.mark("loss_forward")
        loss.backward()
    marks.mark("backward")
    max_norm = _TRAIN["max_grad_norm"].default
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    marks.mark("end")
    return loss.detach()


def _checkpoint_activations(model: PreTrainedModel) -> None:
    """As `train.gradient_checkpointing` (non-reentrant), without transformers 5's warning."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- a variant, and the whole benchmark ---------------------------------------------------


def _run_variant(
    variant: str,
    teacher: PreTrainedModel,
    student_spec: ModelSpec,
    settings: StepSettings,
    batches: list[dict[str, Tensor]],
    device: torch.device,
    vocab: int,
) -> tuple[dict[str, object], PreTrainedModel]:
    """Warm up, time `settings.steps` steps, then measure peak memory; a fresh student each
    time (same seed), so every variant's first step sees the same weights and batch.

    Returns the measurements and the student model (for counting; weights are still
    allocated until the caller drops it).
    """
    lm = build_model(student_spec, device, torch.float32, _SEEDS["student"], "--student")
    _check_positions(lm, settings.seq_len, "student")
    lm.train()
    if settings.gradient_checkpointing:
        _checkpoint_activations(lm)
    student = HiddenStates(lm)
    optimizer = build_optimizer(
        lm, _TRAIN["lr"].default, _TRAIN["weight_decay"].default, _TRAIN["betas"].default
    )
    loss_fn = _loss_fn(variant, student, teacher, settings, vocab)
    marks = _Marks(device)
    bf16 = settings.dtype == "bf16"

    def step(i: int) -> Tensor:
        return _train_step(loss_fn, batches[i], student, optimizer, device, bf16, marks)

    losses: list[Tensor] = []
    times: list[float] = []
    parts: list[dict[str, float]] = []
    with _phase_hooks(teacher, lm, marks):
        for i in range(settings.warmup):
            losses.append(step(i))
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(settings.warmup, settings.warmup + settings.steps):
            tick = time.perf_counter()
            losses.append(step(i))
            _sync(device)
            times.append(time.perf_counter() - tick)
            parts.append(marks.parts())
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            resident = _resident_bytes(teacher, lm, optimizer)
            peak = resident + peak_extra_bytes(lambda: step(0), device)
    step_ms = statistics.fmean(times) * 1e3
    record: dict[str, object] = {
        "step_ms": round(step_ms, 3),
        **{k: round(statistics.fmean(p[k] for p in parts), 3) for k in parts[0]},
        "peak_memory_bytes": int(peak),
        "loss": float(losses[0]),
        "last_loss": float(losses[-1]),
    }
    return record, lm


def _error(err: BaseException, variant: str, divergence: str) -> str:
    if isinstance(err, Unsupported):
        return f"{variant} has no {divergence} loss"
    text = str(err).strip()
    first = text.splitlines()[0] if text else repr(err)
    return f"{type(err).__name__}: {first}"[:300]


def bench_step(
    teacher_spec: ModelSpec,
    student_spec: ModelSpec,
    settings: StepSettings,
    device: torch.device,
    variants: list[str] | None = None,
    on_record: Callable[[dict[str, object]], None] | None = None,
) -> list[dict[str, object]]:
    """One record per variant (`anydistill`, `trl`, `liger`); a failing one carries `error`.

    Raises SettingsError (bad settings, --seq-len beyond a model) and ModelError (a config
    transformers cannot build) instead of recording them.
    """
    variants = list(variants or ["anydistill"])
    settings.check(variants)
    check_plan(teacher_spec, student_spec, settings, device)
    t_dtype = torch.bfloat16 if settings.dtype == "bf16" else torch.float32
    teacher = freeze(build_model(teacher_spec, device, t_dtype, _SEEDS["teacher"], "--teacher"))
    _check_positions(teacher, settings.seq_len, "teacher")
    t_head = output_head(teacher).weight
    s_rows = int(student_spec.config["vocab_size"])
    vocab = min(t_head.shape[0], s_rows)  # our engine slices both heads to this
    batches = random_batches(
        settings.warmup + settings.steps, settings.batch, settings.seq_len, vocab
    )
    tokens = settings.batch * settings.seq_len
    common = {
        "teacher": teacher_spec.name,
        "student": student_spec.name,
        "batch": settings.batch,
        "seq_len": settings.seq_len,
        "device": device.type,
        "dtype": settings.dtype,
        "divergence": settings.divergence,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "steps": settings.steps,
        "warmup": settings.warmup,
        "vocab": vocab,
        "params_teacher": param_count(teacher),
    }
    teacher_params = non_embedding_params(teacher)
    records = []
    for variant in variants:
        engine = settings.engine if variant == "anydistill" else variant
        record: dict[str, object] = {"variant": variant, "engine": engine, **common}
        try:
            measured, lm = _run_variant(
                variant, teacher, student_spec, settings, batches, device, vocab
            )
        except SettingsError:
            raise
        except (RuntimeError, ValueError, ImportError, Unsupported) as err:  # OOM, no package
            record["error"] = _error(err, variant, settings.divergence)
        else:
            per_token = flops_per_token(
                teacher_params,
                non_embedding_params(lm),
                vocab,
                t_head.shape[1],
                output_head(lm).weight.shape[1],
            )
            measured["params_student"] = param_count(lm)
            del lm
            tokens_per_s = tokens / (float(measured["step_ms"]) * 1e-3)
            achieved = per_token * tokens_per_s
            record.update(measured)
            record["tokens_per_s"] = round(tokens_per_s, 1)
            record["flops_per_token"] = per_token
            record["tflops"] = round(achieved / 1e12, 4)
            record["peak_tflops"] = settings.peak_tflops
            mfu = achieved / (settings.peak_tflops * 1e12) if settings.peak_tflops else None
            record["mfu"] = None if mfu is None else round(mfu, 4)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def print_step_table(records: list[dict[str, object]], console: object = None) -> None:
    """One row per variant: throughput, the split of a step in ms, memory, MFU and the loss."""
    from rich.console import Console
    from rich.table import Table

    first = records[0] if records else {}
    title = (
        f"step: {first.get('teacher')} -> {first.get('student')}, "
        f"{first.get('batch')}x{first.get('seq_len')} tokens, {first.get('divergence')} "
        "(times: ms per step)"
    )
    table = Table(title=title)
    names = ("variant", "tokens/s", "step", "teacher", "student f+b", "(loss)", "optim")
    names += ("peak mem", "MFU", "loss")
    for name in names:
        table.add_column(name, justify="left" if name == "variant" else "right")
    for r in records:
        label = f"{r['variant']}/{r['engine']}" if r["variant"] == "anydistill" else r["variant"]
        if "error" in r:
            table.add_row(str(label), str(r["error"])[:60], *[""] * (len(names) - 2))
            continue
        mfu = r.get("mfu")
        table.add_row(
            str(label),
            f"{r['tokens_per_s']:,.0f}",
            f"{r['step_ms']:.1f}",
            f"{r['teacher_forward_ms']:.1f}",
            f"{r['student_forward_backward_ms']:.1f}",
            f"{r['loss_ms']:.1f}",
            f"{r['optimizer_ms']:.1f}",
            _bytes(int(r["peak_memory_bytes"])),  # type: ignore[call-overload]
            "-" if mfu is None else f"{mfu:.1%}",
            f"{r['loss']:.5g}",
        )
    (console or Console()).print(table)  # type: ignore[attr-defined]
