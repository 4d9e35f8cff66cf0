"""The training loop on accelerate: read it top to bottom.

open the run directory -> start (setup, resume) -> for each step: source batches ->
train_step -> optimizer -> guards -> log / eval / save -> final eval, final/ student, report.

The source (anydistill.sources) decides where each micro-batch's sequences come from: the
dataset, or completions sampled from the teacher or the current student. Time it spends
generating is logged as `gen_s`, apart from the training step's own time.

A first Ctrl-C (or SIGTERM, e.g. a cluster's pre-emption notice) finishes the current step,
saves a checkpoint and stops; a second one stops at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from anydistill.config import RunConfig, resolve_paths
from anydistill.errors import TrainingError
from anydistill.eval.cross_metrics import evaluate_cross
from anydistill.eval.metrics import evaluate
from anydistill.models.heads import HiddenStates, unwrap
from anydistill.models.lora import merged_for_saving
from anydistill.progress import StepProgress
from anydistill.sources import Source
from anydistill.train.checkpoint import save_checkpoint
from anydistill.train.cross_step import cross_train_step
from anydistill.train.guards import DeadGradientGuard, nan_message
from anydistill.train.interrupt import GracefulStop, StoppedByUser
from anydistill.train.loggers import MetricsLog, rows_up_to
from anydistill.train.resume import UNLOGGED
from anydistill.train.run_dir import RunDir
from anydistill.train.setup import RunParts, pick_device
from anydistill.train.start import (
    Started,
    check_engine,
    open_run,
    start,
    token_selector,
    write_config,
)
from anydistill.train.step import train_step

log = logging.getLogger(__name__)


def _save_final(run_dir: Path, parts: RunParts) -> None:
    final, tmp = run_dir / "final", run_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged_for_saving(parts.student).save_pretrained(str(tmp))
    parts.student_tok.save_pretrained(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _source_state(source: Source, acc: Accelerator) -> dict:
    """{"source": [state of rank 0, rank 1, ...]}, or {} for sources without state."""
    local = source.state_dict()
    if not local:
        return {}
    return {"source": gather_object([local]) if acc.num_processes > 1 else [local]}


def _shared(value: dict, acc: Accelerator) -> dict:
    """Rank 0's value on every rank (eval metrics only exist on rank 0)."""
    if acc.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box)
    return box[0]


def _agreed(flags: list[bool], acc: Accelerator) -> list[bool]:
    """Each flag true on every rank when it is true on any (ranks save and stop together)."""
    if acc.num_processes == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=acc.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def train(cfg: RunConfig) -> Path:
    """Run (or resume) one distillation; returns the run directory."""
    cfg = resolve_paths(cfg)
    device = pick_device(cfg.train.device)
    check_engine(cfg, device)
    # bf16 autocast is applied in the step itself: accelerate's mixed-precision setting is
    # process-global and could not change between runs of one process (the demo makes three).
    accelerator = Accelerator(cpu=device.type == "cpu")
    run, mode, changes = open_run(cfg, accelerator)
    try:
        return _train(cfg, accelerator, run, mode, changes)
    finally:
        if run is not None:
            run.close()


def _open_log(cfg: RunConfig, run_dir: Path, started: Started) -> MetricsLog:
    keep = started.metrics_rows
    if keep is None:  # a checkpoint from before rows were counted
        keep = rows_up_to(run_dir / "metrics.jsonl", started.step)
    t = cfg.train
    return MetricsLog(
        run_dir / "metrics.jsonl",
        t.tensorboard,
        t.wandb,
        t.wandb_project,
        cfg.model_dump(mode="json"),
        keep_rows=keep,
    )


def _train(
    cfg: RunConfig, accelerator: Accelerator, run: RunDir | None, mode: str, changes: dict
) -> Path:
    run_dir = Path(cfg.output.dir)
    main = accelerator.is_main_process
    try:
        started = start(cfg, accelerator, mode)
        if _finished(run_dir, started.step, cfg):
            log.warning(
                "%s already finished at step %d; raise train.max_steps to go on",
                run_dir,
                started.step,
            )
            return run_dir
        selector = token_selector(cfg, started.parts, accelerator.device)
        metrics = _open_log(cfg, run_dir, started) if main else None
    except BaseException:  # a bad input, Ctrl-C or a bug alike: nothing of ours half-made
        if run is not None:
            run.abandon()  # the directory as it was, generated samples kept
        raise
    if run is not None:
        write_config(cfg, run_dir)
        run.commit()
    logged = {k: v for k, v in changes.items() if k not in UNLOGGED}
    if metrics is not None and logged:
        metrics.write({"kind": "config", "step": started.step, "changed": logged})
    try:
        return _loop(cfg, accelerator, started, selector, metrics)
    finally:
        if metrics is not None:
            metrics.close()


def _finished(run_dir: Path, step: int, cfg: RunConfig) -> bool:
    """A rerun of a run that already wrote everything it writes at its last step."""
    done = (run_dir / "eval.json").is_file() and (
        (run_dir / "final").is_dir() or not cfg.output.save_final
    )
    return step == cfg.train.max_steps and done


def _loop(cfg, accelerator, started: Started, selector, metrics: MetricsLog | None) -> Path:
    run_dir = Path(cfg.output.dir)
    parts, source, objective = started.parts, started.source, started.objective
    optimizer, scheduler, stream = started.optimizer, started.scheduler, started.source.stream
    step, t = started.step, cfg.train
    if step == 0:  # a resumed run's RNG state came from its checkpoint
        set_seed(t.seed)
    # The teacher runs in the step only when a term needs it (eval may still use it).
    step_teacher = parts.teacher if objective.needs_teacher() else None
    model = HiddenStates(parts.student)
    if t.compile:
        model = torch.compile(model)
    model = accelerator.prepare(model)
    pad_id = parts.tokenizer.pad_token_id if parts.tokenizer.pad_token_id is not None else 0
    upfront = cfg.source.teacher_generates() and cfg.source.mode == "upfront"
    if metrics is not None and upfront and step == 0:  # a restart finds them made: 0 s
        metrics.write(
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
        if metrics is not None and result:
            metrics.write({"kind": "eval", "step": at, **result})
        return result

    def save(at: int) -> None:
        extra = _source_state(source, accelerator)
        if accelerator.is_main_process:
            state = {
                "data": stream.state_dict(),
                "objective": objective.state_dict(),
                "data_fingerprint": started.fingerprint,
                "metrics_rows": metrics.rows if metrics is not None else 0,
                "progress": {"tokens": tokens_seen, "train_s": train_total, "elapsed_s": elapsed()},
                **extra,
            }
            checkpoints = run_dir / "checkpoints"
            save_checkpoint(
                checkpoints, at, unwrap(model), optimizer, scheduler, state, t.keep_checkpoints
            )
        accelerator.wait_for_everyone()

    done = started.progress
    tokens_seen = int(done.get("tokens", 0))
    train_total = train_logged = float(done.get("train_s", 0.0))
    resumed_at, elapsed_before = time.perf_counter(), float(done.get("elapsed_s", 0.0))

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - resumed_at

    progress = StepProgress(t.max_steps, step, enabled=t.progress and accelerator.is_main_process)
    generating = cfg.source.kind != "dataset"
    dead = DeadGradientGuard(t.lr)
    last_save = time.monotonic()
    stopper = GracefulStop()
    with progress, stopper:
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
                raise TrainingError(nan_message(step + 1, result.loss, result.terms))
            dead.check(step + 1, result.loss, result.grad_norm)
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
            if metrics is not None and (step % t.log_every == 0 or step == t.max_steps):
                tokens = max(result.stats.get("tokens", 0.0), 1.0)
                # generation vs training seconds over the interval since the previous row
                source_row = {**source.take_metrics(), "train_s": train_total - train_logged}
                train_logged = train_total
                metrics.write(
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
                        "elapsed_s": elapsed(),
                        **source_row,
                    }
                )
            if cfg.eval.every and step % cfg.eval.every == 0 and step < t.max_steps:
                result_eval = run_eval(step) if accelerator.is_main_process else {}
                accelerator.wait_for_everyone()
                source.observe_eval(_shared(result_eval, accelerator))
            stop_here = t.stop_at_step == step
            due = t.save_minutes > 0 and time.monotonic() - last_save >= 60 * t.save_minutes
            due, interrupted = _agreed([due, stopper.requested], accelerator)
            periodic = t.save_every and step % t.save_every == 0
            if periodic or due or stop_here or interrupted or step == t.max_steps:
                save(step)
                last_save = time.monotonic()
            if interrupted:
                raise StoppedByUser(step, run_dir)
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
    accelerator.wait_for_everyone()
    return run_dir
