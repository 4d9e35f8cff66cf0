"""The training loop on accelerate: read it top to bottom.

setup -> source -> (resume) -> for each step: source batches -> train_step -> optimizer ->
log / eval / save -> final eval, final/ student, report.

The source (anydistill.sources) decides where each micro-batch's sequences come from: the
dataset, or completions sampled from the teacher or the current student. Time it spends
generating is logged as `gen_s`, apart from the training step's own time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from anydistill.config import RunConfig, dump_config
from anydistill.data import BatchStream
from anydistill.errors import AnydistillError, ConfigError, TrainingError
from anydistill.eval.cross_metrics import evaluate_cross
from anydistill.eval.metrics import evaluate
from anydistill.losses.objective import Objective, TermSpec
from anydistill.models.heads import HiddenStates, unwrap
from anydistill.models.loading import freeze
from anydistill.models.lora import merged_for_saving
from anydistill.sources import Source, SourceParts, build_source
from anydistill.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from anydistill.train.cross_setup import build_cross_parts
from anydistill.train.cross_step import cross_train_step
from anydistill.train.loggers import MetricsLog, truncate_after
from anydistill.train.optim import build_optimizer, build_scheduler
from anydistill.train.progress import StepProgress
from anydistill.train.setup import RunParts, build_parts, load_model, pick_device
from anydistill.train.step import train_step

# What a run leaves before its first checkpoint; a rerun continues from it (e.g. finishes
# the teacher's upfront generations) instead of refusing the directory.
_RESTARTABLE = {"config.yaml", "tokenizer", "generated"}


def prepare_run_dir(cfg: RunConfig, accelerator: Accelerator) -> tuple[Path, bool]:
    """(run dir, fresh?) — refuses to clobber a finished or foreign directory."""
    run_dir = Path(cfg.output.dir)
    has_ckpt = bool(list_checkpoints(run_dir / "checkpoints"))
    fresh = not (has_ckpt and cfg.output.resume) or cfg.output.overwrite
    if accelerator.is_main_process:
        found = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
        restart = cfg.output.resume and not cfg.output.overwrite and found <= _RESTARTABLE
        if fresh and found and not restart:
            if not cfg.output.overwrite:
                why = "output.resume is off" if has_ckpt else "no checkpoint to resume"
                raise ConfigError(
                    f"output.dir {run_dir} already holds files and {why}; "
                    "set output.overwrite=true or choose another output.dir"
                )
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "config.yaml.tmp"
        tmp.write_text(dump_config(cfg))
        tmp.replace(run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    return run_dir, fresh


def _nan_message(step: int, loss: float, terms: dict[str, float]) -> str:
    bad = [k for k, v in terms.items() if not math.isfinite(v)]
    which = f"term `{bad[0]}` is {terms[bad[0]]}" if bad else "every term is finite"
    return (
        f"step {step}: the loss is {loss} ({which}); check the data and the teacher for NaN/inf, "
        "lower train.lr, or use train.precision=fp32"
    )


def _save_final(run_dir: Path, parts: RunParts) -> None:
    final, tmp = run_dir / "final", run_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged_for_saving(parts.student).save_pretrained(str(tmp))
    parts.student_tok.save_pretrained(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _build_source(cfg: RunConfig, parts: RunParts, run_dir: Path, acc: Accelerator) -> Source:
    """The run's source; the teacher is loaded here when only generation needs it."""
    if parts.cross is not None:
        from anydistill.sources.cross import CrossSource

        t = cfg.train
        stream = BatchStream(
            parts.data.train,
            t.micro_batch_size,
            t.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
        )
        return CrossSource(stream, parts.teacher_vocab or 0, parts.vocab_size)
    teacher = parts.teacher
    if cfg.source.teacher_generates() and teacher is None:
        seed = cfg.train.seed + 1  # the seed build_parts gives the teacher
        teacher = freeze(
            load_model(cfg.teacher, "teacher", parts.vocab_size, acc.device, True, seed)
        )
    if cfg.source.kind == "adaptive_replay" and not parts.data.eval:
        raise ConfigError(
            "source.kind: adaptive_replay watches the held-out loss, but there is no eval data; "
            "set data.eval_fraction > 0 or data.eval_path"
        )
    source_parts = SourceParts(
        cfg,
        parts.tokenizer,
        unwrap(parts.student),
        teacher,
        parts.data.train,
        run_dir,
        rank=acc.process_index,
        world_size=acc.num_processes,
        progress=cfg.train.progress and acc.is_main_process,
    )
    with acc.main_process_first():  # rank 0 writes upfront generations, the others read them
        return build_source(source_parts, parts.data.mode)


def _source_state(source: Source, acc: Accelerator) -> dict:
    """{"source": [state of rank 0, rank 1, ...]}, or {} for sources without state."""
    local = source.state_dict()
    if not local:
        return {}
    return {"source": gather_object([local]) if acc.num_processes > 1 else [local]}


def _restore_source(source: Source, state: dict, acc: Accelerator) -> None:
    saved = state.get("source")
    if not source.state_dict():
        return
    if not saved or len(saved) != acc.num_processes:
        raise ConfigError(
            f"source.kind: the checkpoint holds {len(saved or [])} rank states of a "
            f"`{source.kind}` source but the run has {acc.num_processes} processes; resume "
            "with the same source and number of processes"
        )
    source.load_state_dict(saved[acc.process_index])


def _shared(value: dict, acc: Accelerator) -> dict:
    """Rank 0's value on every rank (eval metrics only exist on rank 0)."""
    if acc.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box)
    return box[0]


def train(cfg: RunConfig) -> Path:
    """Run (or resume) one distillation; returns the run directory."""
    device = pick_device(cfg.train.device)
    # bf16 autocast is applied in the step itself: accelerate's mixed-precision setting is
    # process-global and could not change between runs of one process (the demo makes three).
    accelerator = Accelerator(cpu=device.type == "cpu")
    run_dir, fresh = prepare_run_dir(cfg, accelerator)
    try:
        with accelerator.main_process_first():  # rank 0 trains/saves a tokenizer first
            build = build_cross_parts if cfg.objective.cross_tokenizer() else build_parts
            parts = build(cfg, run_dir, accelerator.device)
        source = _build_source(cfg, parts, run_dir, accelerator)
    except AnydistillError:
        if fresh and accelerator.is_main_process:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-written
        raise
    set_seed(cfg.train.seed)
    t = cfg.train
    objective = Objective([TermSpec(**x.model_dump()) for x in cfg.objective.terms], t.max_steps)
    optimizer = build_optimizer(parts.student, t.lr, t.weight_decay, t.betas)
    scheduler = build_scheduler(
        optimizer, t.warmup_steps, t.max_steps, t.lr_schedule, t.min_lr_ratio
    )
    stream = source.stream
    step = 0
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if checkpoints and not fresh:
        trainer_state, state = load_checkpoint(checkpoints[-1][1], parts.student)
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        set_rng_state(trainer_state["rng"])
        stream.load_state_dict(state["data"])
        _restore_source(source, state, accelerator)
        objective.load_state_dict(state["objective"])
        step = state["step"]
        if accelerator.is_main_process:
            truncate_after(run_dir / "metrics.jsonl", step)
    # The teacher runs in the step only when a term needs it (eval may still use it).
    step_teacher = parts.teacher if objective.needs_teacher() else None
    selector = _token_selector(cfg, parts, accelerator.device)
    model = HiddenStates(parts.student)
    if t.compile:
        model = torch.compile(model)
    model = accelerator.prepare(model)
    pad_id = parts.tokenizer.pad_token_id if parts.tokenizer.pad_token_id is not None else 0
    log = (
        MetricsLog(
            run_dir / "metrics.jsonl",
            t.tensorboard,
            t.wandb,
            t.wandb_project,
            cfg.model_dump(mode="json"),
        )
        if accelerator.is_main_process
        else None
    )
    if log is not None and source.upfront_s > 0:
        log.write(
            {
                "kind": "generate",
                "step": step,
                "gen_s": source.upfront_s,
                "sequences": len(stream.examples),
            }
        )

    def run_eval(at: int) -> dict[str, float]:
        if parts.cross is not None:
            result = evaluate_cross(
                unwrap(model),
                parts.teacher if cfg.eval.teacher else None,
                parts.data.eval,
                parts.tokenizer,
                parts.student_tok,
                cfg.eval.batch_size,
                cfg.eval.max_batches,
            )
        else:
            result = evaluate(
                unwrap(model),
                parts.teacher if cfg.eval.teacher else None,
                parts.data.eval,
                parts.tokenizer,
                parts.vocab_size,
                cfg.eval.batch_size,
                cfg.eval.max_batches,
                accelerator.device,
                pad_id,
                cfg.objective.chunk_size,
            )
        if log is not None and result:
            log.write({"kind": "eval", "step": at, **result})
        return result

    progress = StepProgress(t.max_steps, step, enabled=t.progress and accelerator.is_main_process)
    start, tokens_seen = time.perf_counter(), 0
    generating = cfg.source.kind != "dataset"
    train_total = train_logged = 0.0
    with progress:
        while step < t.max_steps:
            terms = objective.active_terms(step)
            batches = source.batches(step, t.grad_accum)
            tick = time.perf_counter()
            if parts.cross is not None:
                result = cross_train_step(
                    accelerator,
                    model,
                    parts.teacher,
                    batches,
                    terms,
                    parts.cross,
                    parts.vocab_size,
                    cfg.objective.engine,
                    cfg.objective.chunk_size,
                    t.max_grad_norm,
                    bf16=t.precision == "bf16",
                )
            else:
                result = train_step(
                    accelerator,
                    model,
                    step_teacher,
                    optimizer,
                    batches,
                    terms,
                    parts.vocab_size,
                    cfg.objective.engine,
                    cfg.objective.chunk_size,
                    t.max_grad_norm,
                    bf16=t.precision == "bf16",
                    selector=selector,
                )
            if not math.isfinite(result.loss):
                raise TrainingError(_nan_message(step + 1, result.loss, result.terms))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            objective.after_step(result.terms)
            step += 1
            tokens_seen += result.tokens
            step_s = time.perf_counter() - tick
            train_total += step_s
            progress.update(
                step,
                result.loss,
                result.tokens / max(step_s, 1e-9),
                gen_s=source.gen_seconds() if generating else None,
                train_s=train_total,
            )
            if log is not None and (step % t.log_every == 0 or step == t.max_steps):
                tokens = max(result.stats.get("tokens", 0.0), 1.0)
                # generation vs training seconds over the interval since the previous row
                source_row = {**source.take_metrics(), "train_s": train_total - train_logged}
                train_logged = train_total
                log.write(
                    {
                        "kind": "train",
                        "step": step,
                        "loss": result.loss,
                        **{f"term/{k}": v for k, v in result.terms.items()},
                        "lr": lr,
                        "grad_norm": result.grad_norm,
                        **(
                            {"agreement": result.stats["agree"] / tokens}
                            if "agree" in result.stats
                            else {}
                        ),
                        "tokens": tokens_seen,
                        "tokens_per_s": result.tokens / max(step_s, 1e-9),
                        "elapsed_s": time.perf_counter() - start,
                        **source_row,
                    }
                )
            if cfg.eval.every and step % cfg.eval.every == 0 and step < t.max_steps:
                result_eval = run_eval(step) if accelerator.is_main_process else {}
                accelerator.wait_for_everyone()
                source.observe_eval(_shared(result_eval, accelerator))
            stop_here = t.stop_at_step == step
            if (t.save_every and step % t.save_every == 0) or stop_here:
                extra = _source_state(source, accelerator)
                if accelerator.is_main_process:
                    save_checkpoint(
                        run_dir / "checkpoints",
                        step,
                        unwrap(model),
                        optimizer,
                        scheduler,
                        {
                            "data": stream.state_dict(),
                            "objective": objective.state_dict(),
                            **extra,
                        },
                        keep=t.keep_checkpoints,
                    )
                accelerator.wait_for_everyone()
            if stop_here:
                break
    if accelerator.is_main_process and step == t.max_steps:
        final_eval = run_eval(step)
        tmp = run_dir / "eval.json.tmp"
        tmp.write_text(json.dumps(final_eval, indent=1))
        tmp.replace(run_dir / "eval.json")
        if cfg.output.save_final:
            _save_final(run_dir, parts)
        if cfg.output.report:
            from anydistill.report import write_report

            write_report(run_dir)
    if log is not None:
        log.close()
    accelerator.wait_for_everyone()
    return run_dir


def _token_selector(cfg: RunConfig, parts, device: torch.device):
    """AdaSPEC's selector with its frozen reference drafter, when the objective asks for it."""
    spec = cfg.objective.token_selection
    if spec is None:
        return None
    from anydistill.eval.speculate_cmd import model_dir
    from anydistill.models.loading import load_pretrained
    from anydistill.models.tokenizer import check_same_tokenizer, load_tokenizer
    from anydistill.train.selection import TokenSelector

    path = model_dir(spec.reference)
    field = "objective.token_selection.reference"
    check_same_tokenizer(parts.tokenizer, load_tokenizer(path, field=field))
    reference = freeze(load_pretrained(path, field=field, dtype=torch.float32).to(device))
    return TokenSelector(reference, spec.keep, parts.vocab_size)
