"""Everything before a run's first step: open the run directory, build the parts, resume.

`open_run` decides (on rank 0, shared with the others) whether the run starts fresh,
restarts (stopped before its first checkpoint) or resumes, refusing what is not ours to
touch and config changes a resume cannot honour. `start` builds models, data, source,
objective and optimizer and restores the newest whole checkpoint; when it fails, the caller
hands the directory back as it found it (RunDir.abandon).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from anydistill.config import RunConfig, dump_config
from anydistill.data.aligned import collate_cross
from anydistill.errors import AnydistillError, ConfigError
from anydistill.losses.objective import Objective, TermSpec
from anydistill.models.heads import HiddenStates, unwrap
from anydistill.models.loading import freeze
from anydistill.models.sharding import is_sharded
from anydistill.sources import Source, SourceParts, build_source
from anydistill.train.checkpoint import load_latest, set_rng_state
from anydistill.train.resume import check_same_data, config_changes, data_fingerprint, saved_config
from anydistill.train.run_dir import RunDir
from anydistill.train.setup import RunParts, build_parts, load_model
from anydistill.train.stages import Stage, Stages


def check_engine(cfg: RunConfig, device: torch.device) -> None:
    """Triton kernels need a CUDA GPU (or Triton's interpreter, which the tests use)."""
    if cfg.objective.engine != "triton":
        return
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            f"objective.engine: triton runs on a CUDA GPU, but this run is on {device.type}; "
            "use objective.engine=torch"
        )


def _keep_on_restart(cfg: RunConfig, run_dir: Path) -> tuple[str, ...]:
    """Generated samples always (their store checks its own fingerprint); trained tokenizers
    only while the data and models they were trained for are unchanged."""
    saved = saved_config(run_dir, quiet=True) if (run_dir / "config.yaml").is_file() else None
    same = saved is not None and all(
        getattr(saved, k) == getattr(cfg, k) for k in ("teacher", "student", "data")
    )
    return ("generated", "tokenizer", "student_tokenizer") if same else ("generated",)


def open_run(cfg: RunConfig, acc: Accelerator) -> tuple[RunDir | None, str, dict]:
    """(the locked run directory on rank 0 / None elsewhere, mode, allowed config changes)."""
    run_dir = Path(cfg.output.dir)
    box: list[Any] = [None]
    run = None
    if acc.is_main_process:
        run = RunDir(run_dir)
        try:
            mode = run.open(cfg.output.overwrite, cfg.output.resume, _keep_on_restart(cfg, run_dir))
            changes = {}
            if mode == "resume":
                saved = saved_config(run_dir)
                changes = config_changes(saved, cfg, run_dir) if saved is not None else {}
        except AnydistillError as err:
            if run.lock.held:
                run.abandon()
            box = [("error", str(err))]
            if acc.num_processes == 1:
                raise
        except BaseException:  # Ctrl-C or a bug: leave the directory as it was found
            run.abandon()
            raise
        else:
            box = [("ok", mode, changes)]
    if acc.num_processes > 1:
        broadcast_object_list(box)
    if box[0][0] == "error":
        raise ConfigError(box[0][1])
    return run, box[0][1], box[0][2]


@dataclass
class Started:
    """A run ready for its next step."""

    parts: RunParts
    source: Source
    model: HiddenStates  # the student (and its projections) as the step runs it
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    fingerprint: str
    stages: Stages
    stage: Stage  # the stage the optimizer was built for
    step: int = 0
    progress: dict[str, float] = field(default_factory=dict)
    metrics_rows: int | None = 0  # rows of metrics.jsonl to keep (None: all, an old run)


def start(cfg: RunConfig, acc: Accelerator, mode: str) -> Started:
    run_dir = Path(cfg.output.dir)
    with acc.main_process_first():  # rank 0 trains/saves a tokenizer first
        parts = build_parts(cfg, run_dir, acc.device)
    source = _build_source(cfg, parts, run_dir, acc)
    t = cfg.train
    try:
        terms = [TermSpec(**x.model_dump(exclude_none=True)) for x in cfg.objective.terms]
        objective = Objective(terms, t.max_steps)
    except ValueError as err:
        raise ConfigError(f"objective.terms: {err}") from None
    projections = parts.features.projections if parts.features is not None else None
    model = HiddenStates(parts.student, projections if projections and len(projections) else None)
    if sharded(cfg, acc):  # before the optimizer, which must hold the sharded parameters
        from anydistill.train.sharded import shard_run

        shard_run(cfg, model, parts.teacher)
    if cfg.stages and acc.num_processes > 1:
        raise ConfigError(
            "stages: a staged run changes which parameters train between stages, which DDP "
            "cannot follow; run it in one process"
        )
    stages = Stages(cfg, model)
    first = stages.at(0)
    optimizer, scheduler = stages.enter(first)
    started = Started(
        parts,
        source,
        model,
        objective,
        optimizer,
        scheduler,
        data_fingerprint(parts.data.train),
        stages,
        first,
    )
    if mode == "resume":
        _resume(started, run_dir, acc)
    return started


def sharded(cfg: RunConfig, acc: Accelerator) -> bool:
    """Whether this run shards its models (fsdp2 over more than one process)."""
    return cfg.train.distributed.strategy == "fsdp2" and acc.num_processes > 1


def _resume(started: Started, run_dir: Path, acc: Accelerator) -> None:
    features = started.parts.features
    extras = features.projections if features is not None and len(features.projections) else None
    shards = None
    if is_sharded(started.model):
        from anydistill.models.sharding import load_shards

        def shards(path: Path) -> None:
            load_shards(started.model, started.optimizer, path)

    path, trainer_state, state = load_latest(
        run_dir / "checkpoints", started.parts.student, extras=extras, shards=shards
    )
    check_same_data(state.get("data_fingerprint"), started.fingerprint, run_dir, state["step"])
    stage = started.stages.at(state["step"])
    if stage != started.stage:
        started.optimizer, started.scheduler = started.stages.enter(stage)
        started.stage = stage
    # At a stage boundary the checkpoint's optimizer belongs to the stage before: the next one
    # starts afresh, as it did in the unbroken run.
    if state.get("stage", stage.name) == stage.name:
        if shards is None:
            started.optimizer.load_state_dict(trainer_state["optimizer"])
        started.scheduler.load_state_dict(trainer_state["scheduler"])
    set_rng_state(trainer_state["rng"])
    started.source.stream.load_state_dict(state["data"])
    _restore_source(started.source, state, acc)
    try:
        started.objective.load_state_dict(state["objective"])
    except ValueError as err:
        raise ConfigError(f"objective.terms: {err}") from None
    started.step = state["step"]
    started.progress = state.get("progress", {})
    started.metrics_rows = state.get("metrics_rows")


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(dump_config(cfg))
    tmp.replace(run_dir / "config.yaml")


def _build_source(cfg: RunConfig, parts: RunParts, run_dir: Path, acc: Accelerator) -> Source:
    """The run's source; the teacher is loaded here when only generation needs it."""
    teacher = parts.teacher_model
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
        collator=_aligned_collator(parts),
    )
    with acc.main_process_first():  # rank 0 writes upfront generations, the others read them
        return build_source(source_parts, parts.data.mode)


def _aligned_collator(parts: RunParts):
    """Aligned examples collate both tokenizations (no pad id: attention masks end them)."""
    if parts.student_tokenizer is None:
        return None
    vocabs = (parts.teacher_vocab or 0, parts.vocab_size)
    return lambda examples: collate_cross(examples, *vocabs)


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


def token_selector(cfg: RunConfig, parts: RunParts, device: torch.device):
    """AdaSPEC's selector with its frozen reference drafter, when the objective asks for it."""
    spec = cfg.objective.token_selection
    if spec is None:
        return None
    from anydistill.models.loading import load_pretrained
    from anydistill.models.resolve import resolve_model
    from anydistill.models.tokenizer import check_same_tokenizer, load_tokenizer
    from anydistill.train.selection import TokenSelector

    field_name = "objective.token_selection.reference"
    path = resolve_model(spec.reference, field_name)
    check_same_tokenizer(parts.tokenizer, load_tokenizer(path, field=field_name))
    reference = freeze(load_pretrained(path, field=field_name, dtype=torch.float32).to(device))
    return TokenSelector(reference, spec.keep, parts.vocab_size)
