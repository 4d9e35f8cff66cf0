"""The training loop on accelerate: read it top to bottom.

open the run directory -> start (setup, resume) -> for each step: the source's micro-batches
-> train_step (loss, backward, guards, optimizer) -> log -> eval -> checkpoint -> final eval,
final/ student, report.

The source (anydistill.sources) decides where each micro-batch's sequences come from: the
dataset, or completions sampled from the teacher or the current student. Time it spends
generating is logged as `gen_s`, apart from the training step's own time.

A first Ctrl-C (or SIGTERM, e.g. a cluster's pre-emption notice) finishes the current step,
saves a checkpoint and stops; a second one stops at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from anydistill.config import RunConfig, resolve_paths
from anydistill.eval.metrics import evaluate
from anydistill.models.from_config import pick_device
from anydistill.models.heads import unwrap
from anydistill.models.lora import merged_for_saving
from anydistill.models.sharding import gathered, is_sharded, save_shards
from anydistill.progress import StepProgress
from anydistill.sources import Source
from anydistill.teachers.multi import member_row
from anydistill.train.checkpoint import prepare_sharded, save_checkpoint
from anydistill.train.guards import DeadGradientGuard
from anydistill.train.interrupt import GracefulStop, StoppedByUser
from anydistill.train.loggers import MetricsLog, rows_up_to
from anydistill.train.resume import UNLOGGED
from anydistill.train.run_dir import RunDir
from anydistill.train.setup import RunParts
from anydistill.train.start import (
    Started,
    check_engine,
    open_run,
    start,
    token_selector,
    write_config,
)
from anydistill.train.step import StepParts, StepResult, train_step

log = logging.getLogger(__name__)


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


def _train(
    cfg: RunConfig, accelerator: Accelerator, run: RunDir | None, mode: str, changes: dict
) -> Path:
    run_dir = Path(cfg.output.dir)
    try:
        started = start(cfg, accelerator, mode)
        if _finished(run_dir, started.step, cfg):
            log.warning(
                "%s already finished at step %d; raise train.max_steps to go on",
                run_dir,
                started.step,
            )
            return run_dir
        loop = _Loop.prepare(cfg, accelerator, started)
    except BaseException:  # a bad input, Ctrl-C or a bug alike: nothing of ours half-made
        if run is not None:
            run.abandon()  # the directory as it was, generated samples kept
        raise
    if run is not None:
        write_config(cfg, run_dir)
        run.commit()
    logged = {k: v for k, v in changes.items() if k not in UNLOGGED}
    if loop.metrics is not None and logged:
        loop.metrics.write({"kind": "config", "step": started.step, "changed": logged})
    try:
        return loop.run()
    finally:
        if loop.metrics is not None:
            loop.metrics.close()
        if hasattr(started.parts.teacher, "close"):  # a server's requests not sent yet
            started.parts.teacher.close()


def _finished(run_dir: Path, step: int, cfg: RunConfig) -> bool:
    """A rerun of a run that already wrote everything it writes at its last step."""
    done = (run_dir / "eval.json").is_file() and (
        (run_dir / "final").is_dir() or not cfg.output.save_final
    )
    return step == cfg.train.max_steps and done


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


@dataclass
class _Clock:
    """Tokens and seconds so far, carried across resumes in every checkpoint."""

    tokens: int = 0
    train_s: float = 0.0
    logged_s: float = 0.0  # train_s at the last metrics row
    elapsed_before: float = 0.0
    resumed_at: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.resumed_at

    def state(self) -> dict[str, float]:
        return {"tokens": self.tokens, "train_s": self.train_s, "elapsed_s": self.elapsed()}


@dataclass
class _Loop:
    cfg: RunConfig
    acc: Accelerator
    started: Started
    step_parts: StepParts
    metrics: MetricsLog | None
    clock: _Clock
    step: int

    @classmethod
    def prepare(cls, cfg: RunConfig, acc: Accelerator, started: Started) -> _Loop:
        """Everything the loop holds; fails (and the start is undone) before any step."""
        parts, t = started.parts, cfg.train
        run_dir = Path(cfg.output.dir)
        selector = token_selector(cfg, parts, acc.device)
        metrics = _open_log(cfg, run_dir, started) if acc.is_main_process else None
        model = started.model
        if t.compile:
            model = torch.compile(model)
        done = started.progress
        clock = _Clock(
            tokens=int(done.get("tokens", 0)),
            train_s=float(done.get("train_s", 0.0)),
            logged_s=float(done.get("train_s", 0.0)),
            elapsed_before=float(done.get("elapsed_s", 0.0)),
        )
        step_parts = StepParts(
            accelerator=acc,
            model=model,
            # The teacher runs in the step only when a term needs it (eval may still use it).
            teacher=parts.teacher if started.objective.needs_teacher() else None,
            optimizer=started.optimizer,
            scheduler=started.scheduler,
            vocab_size=parts.vocab_size,
            engine=cfg.objective.engine,
            chunk_size=cfg.objective.chunk_size,
            max_grad_norm=t.max_grad_norm,
            bf16=t.precision == "bf16",
            selector=selector,
            aligned_params=parts.aligned_params,
            guard=DeadGradientGuard(t.lr),
            features=parts.features,
        )
        return cls(cfg, acc, started, step_parts, metrics, clock, started.step)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output.dir)

    @property
    def source(self) -> Source:
        return self.started.source

    @property
    def sharded(self) -> bool:
        """fsdp2: every process takes part in eval, checkpoints and `final/`."""
        return is_sharded(self.started.model)

    def run(self) -> Path:
        t = self.cfg.train
        if self.step == 0:  # a resumed run's RNG state came from its checkpoint
            set_seed(t.seed)
        if not self.sharded:  # fsdp2 shards were made at start, before the optimizer
            self.step_parts.model = self.acc.prepare(self.step_parts.model)
        self._log_upfront_generation()
        progress = StepProgress(
            t.max_steps, self.step, enabled=t.progress and self.acc.is_main_process
        )
        last_save, stopper = time.monotonic(), GracefulStop()
        with progress, stopper:
            while self.step < t.max_steps:
                result, step_s = self._one_step()
                progress.update(
                    self.step,
                    result.loss,
                    result.tokens / max(step_s, 1e-9),
                    gen_s=self.source.gen_seconds() if self.cfg.source.kind != "dataset" else None,
                    train_s=self.clock.train_s,
                )
                self._log_step(result, step_s)
                self._periodic_eval()
                stop_here = t.stop_at_step == self.step
                due = t.save_minutes > 0 and time.monotonic() - last_save >= 60 * t.save_minutes
                due, interrupted = _agreed([due, stopper.requested], self.acc)
                periodic = t.save_every and self.step % t.save_every == 0
                if periodic or due or stop_here or interrupted or self.step == t.max_steps:
                    self._save()
                    last_save = time.monotonic()
                if interrupted:
                    raise StoppedByUser(self.step, self.run_dir)
                if stop_here:
                    break
        if self.step == t.max_steps:
            self._finish()
        self.acc.wait_for_everyone()
        return self.run_dir

    def _one_step(self) -> tuple[StepResult, float]:
        objective = self.started.objective
        stage = self._stage()
        terms = [
            t
            for t in objective.active_terms(self.step)
            if stage.terms is None or t.name in stage.terms
        ]
        batches = self.source.batches(self.step, self.cfg.train.grad_accum)
        self._prefetch(batches)
        tick = time.perf_counter()
        result = train_step(self.step_parts, self.step, batches, terms)
        objective.after_step(result.terms)
        self.step += 1
        step_s = time.perf_counter() - tick
        self.clock.tokens += result.tokens
        self.clock.train_s += step_s
        return result, step_s

    def _stage(self):
        """The stage of this step, entered (fresh optimizer and trainable set) on its first."""
        started = self.started
        stage = started.stages.at(self.step)
        if stage != started.stage:
            started.optimizer, started.scheduler = started.stages.enter(stage)
            started.stage = stage
            self.step_parts.optimizer = started.optimizer
            self.step_parts.scheduler = started.scheduler
        staged = len(started.stages.plan) > 1
        if staged and self.step == stage.start and self.metrics is not None:
            self.metrics.write({"kind": "stage", "step": self.step, "stage": stage.name})
        return stage

    def _prefetch(self, batches: list) -> None:
        """A teacher that answers from afar (a server) is asked about this step's micro-batches
        now, and about the next step's when the source can tell them without taking them, so
        its answers arrive while this step trains. The data position does not move."""
        prefetch = getattr(self.step_parts.teacher, "prefetch", None)
        if prefetch is None:
            return
        prefetch(batches)
        t, upcoming = self.cfg.train, self.step + 1
        if upcoming < t.max_steps and upcoming != t.stop_at_step:
            ahead = self.source.peek(t.grad_accum)
            if ahead:
                prefetch(ahead)

    def _log_upfront_generation(self) -> None:
        src = self.cfg.source
        upfront = src.teacher_generates() and src.mode == "upfront"
        if self.metrics is not None and upfront and self.step == 0:  # a restart made them: 0 s
            self.metrics.write(
                {
                    "kind": "generate",
                    "step": self.step,
                    "gen_s": self.source.upfront_s,
                    "sequences": len(self.source.stream.examples),
                }
            )

    def _log_step(self, result: StepResult, step_s: float) -> None:
        t = self.cfg.train
        if self.metrics is None or not (self.step % t.log_every == 0 or self.step == t.max_steps):
            return
        tokens = max(result.stats.get("tokens", 0.0), 1.0)
        # generation vs training seconds over the interval since the previous row
        interval_s, self.clock.logged_s = (
            self.clock.train_s - self.clock.logged_s,
            self.clock.train_s,
        )
        source_row = {**self.source.take_metrics(), "train_s": interval_s}
        agreement = {"agreement": result.stats["agree"] / tokens} if "agree" in result.stats else {}
        self.metrics.write(
            {
                "kind": "train",
                "step": self.step,
                "loss": result.loss,
                **{f"term/{k}": v for k, v in result.terms.items()},
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                **agreement,
                **member_row(result.stats),  # several teachers: each one's KL and agreement
                "tokens": self.clock.tokens,
                "tokens_per_s": result.tokens / max(step_s, 1e-9),
                "elapsed_s": self.clock.elapsed(),
                **source_row,
            }
        )

    def _evaluate(self) -> dict[str, float]:
        """Held-out metrics on rank 0, written as an `eval` row."""
        parts, e = self.started.parts, self.cfg.eval
        tok = parts.student_tok
        with gathered(self.started.model):
            result = self._score(parts, e, tok)
        if self.metrics is not None and result:
            self.metrics.write({"kind": "eval", "step": self.step, **result})
        return result

    def _score(self, parts: RunParts, e, tok) -> dict[str, float]:
        return evaluate(
            unwrap(self.step_parts.model),
            parts.teacher if e.teacher else None,
            parts.data.eval,
            tok,
            parts.vocab_size,
            e.batch_size,
            e.max_batches,
            self.acc.device,
            tok.pad_token_id if tok.pad_token_id is not None else 0,
            self.cfg.objective.chunk_size,
            teacher_tokenizer=parts.tokenizer,
        )

    def _periodic_eval(self) -> None:
        every = self.cfg.eval.every
        if not every or self.step % every or self.step >= self.cfg.train.max_steps:
            return
        result = self._evaluate() if self.acc.is_main_process or self.sharded else {}
        self.acc.wait_for_everyone()
        self.source.observe_eval(_shared(result, self.acc))

    def _save(self) -> None:
        extra = _source_state(self.source, self.acc)
        root = self.run_dir / "checkpoints"
        if self.sharded:  # every process writes its shards into rank 0's fresh folder
            box = [str(prepare_sharded(root, self.step)) if self.acc.is_main_process else None]
            broadcast_object_list(box)
            save_shards(self.started.model, self.started.optimizer, Path(box[0]))
            self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            started = self.started
            state = {
                "data": self.source.stream.state_dict(),
                "objective": started.objective.state_dict(),
                "data_fingerprint": started.fingerprint,
                "metrics_rows": self.metrics.rows if self.metrics is not None else 0,
                "progress": self.clock.state(),
                "stage": started.stage.name,
                **extra,
            }
            save_checkpoint(
                root,
                self.step,
                unwrap(self.step_parts.model),
                started.optimizer,
                started.scheduler,
                state,
                self.cfg.train.keep_checkpoints,
                extras=_projections(started.parts),
                sharded=self.sharded,
            )
        self.acc.wait_for_everyone()

    def _finish(self) -> None:
        """The final eval (`eval.json`), the `final/` student and the report, on rank 0 (every
        process takes part in a sharded run's eval and gather)."""
        if not (self.acc.is_main_process or self.sharded):
            return
        final_eval = self._evaluate()
        if self.acc.is_main_process:
            tmp = self.run_dir / "eval.json.tmp"
            tmp.write_text(json.dumps(final_eval, indent=1))
            tmp.replace(self.run_dir / "eval.json")
        if self.cfg.output.save_final and self.sharded:
            from anydistill.train.sharded import save_final_sharded

            save_final_sharded(
                self.run_dir,
                self.started.model,
                self.started.parts.student_tok,
                self.acc.is_main_process,
            )
        elif self.cfg.output.save_final:
            _save_final(self.run_dir, self.started.parts)
        if not self.acc.is_main_process:
            return
        if self.cfg.output.report:
            from anydistill.report import write_report

            write_report(self.run_dir)


def _projections(parts: RunParts) -> torch.nn.Module | None:
    """The feature terms' projections when there are any (trained, checkpointed, not final)."""
    if parts.features is None or len(parts.features.projections) == 0:
        return None
    return parts.features.projections


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
