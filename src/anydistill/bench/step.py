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

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from anydistill.bench.compare import Unsupported, compare_loss
from anydistill.bench.loss import DIVERGENCE_TERMS
from anydistill.bench.memory import peak_extra_bytes
from anydistill.bench.presets import ModelSpec
from anydistill.bench.step_plan import (
    SettingsError,
    StepSettings,
    check_plan,
    check_positions,
    param_count,
)
from anydistill.config import TrainConfig
from anydistill.data.views import StepInputs, step_inputs
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import HiddenStates, output_head, unwrap
from anydistill.models.loading import build_from_config, freeze
from anydistill.teachers import teacher_signal
from anydistill.train.optim import build_optimizer
from anydistill.train.step import micro_batch_loss

# Dense bf16 tensor-core peak of an H100 / H200 SXM, the usual MFU denominator.
H100_BF16_TFLOPS = 989.0
_TRAIN = TrainConfig.model_fields  # the trainer's defaults: lr, betas, clipping
_SEEDS = {"data": 0, "teacher": 1, "student": 2}


# ---- counting ---------------------------------------------------------------------------


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
    check_positions(lm, settings.seq_len, "student")
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
    check_positions(teacher, settings.seq_len, "teacher")
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
