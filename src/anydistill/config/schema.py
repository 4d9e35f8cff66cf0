"""The YAML schema of a run: teacher, student, data, source, objective, train, eval, output,
and the checks that span sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from anydistill.config import kinds
from anydistill.config.base import Strict
from anydistill.config.generate import TraceGenConfig
from anydistill.config.models import ModelConfig, TeacherEntry, TokenizerTrain
from anydistill.config.stages import StageConfig
from anydistill.config.terms import ObjectiveConfig


class DataConfig(Strict):
    """Training data: a file/dir/hub dataset (`path`) or the built-in synthetic task."""

    path: str | None = None
    synthetic: Literal["arithmetic"] | None = None
    synthetic_size: int = Field(2000, ge=10)
    format: Literal["auto", "jsonl", "json", "parquet", "text", "hf"] = "auto"
    subset: str | None = None
    split: str = "train"
    eval_path: str | None = None
    eval_split: str | None = None
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    text_column: str = "text"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    mode: Literal["auto", "text", "prompt_completion", "messages"] = "auto"
    seq_len: int = Field(512, ge=8)
    packing: bool = True
    max_examples: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of `path` or `synthetic`")
        return self


class GenerationConfig(Strict):
    """How generated completions are sampled (temperature 0 is greedy)."""

    backend: Literal["hf", "vllm"] = "hf"
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)  # prompts per generate call


class ReplayConfig(Strict):
    """DistiLLM's adaptive off-policy schedule (see anydistill.sources.replay)."""

    buffer_size: int = Field(1000, ge=1)
    init_prob: float = Field(0.0, ge=0.0, le=1.0)
    prob_step: float = Field(0.1, gt=0.0, le=1.0)
    max_prob: float = Field(1.0, ge=0.0, le=1.0)
    tolerance: float = Field(0.0, ge=0.0)
    monitor: str = "student/ce"


class SourceConfig(Strict):
    """Where the training sequences come from (anydistill.sources)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    kind: Literal[
        "dataset",
        "teacher_generated",
        "student_generated",
        "mixture",
        "adaptive_replay",
        "paired",
        "paired_traces",
    ] = "dataset"
    mode: Literal["upfront", "on_the_fly"] = "upfront"
    lambda_: float = Field(0.5, ge=0.0, le=1.0, alias="lambda")
    off_policy: Literal["dataset", "teacher"] = "dataset"
    store: str | None = None  # where upfront generations are kept (default RUN_DIR/generated)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)

    def teacher_generates(self) -> bool:
        """True when the teacher samples completions (seq-KD, or the off-policy side)."""
        if self.kind == "teacher_generated":
            return True
        return self.kind in ("mixture", "adaptive_replay", "paired") and (
            self.off_policy == "teacher"
        )

    def generates(self) -> bool:
        """True when the source samples completions (`paired_traces` reads the dataset's)."""
        return self.kind not in ("dataset", "paired_traces")

    def uses_dataset_completions(self) -> bool:
        """False when every training completion is generated (the data need only prompts)."""
        if self.kind in ("teacher_generated", "student_generated"):
            return False
        off_policy_kinds = ("mixture", "adaptive_replay", "paired")
        return not (self.kind in off_policy_kinds and self.off_policy == "teacher")


class DistributedConfig(Strict):
    """How the processes of a multi-process launch share the models. `ddp`: each holds the
    whole student and teacher. `fsdp2`: torch's `fully_shard` splits the student and every live
    teacher block by block across the processes; a block's weights are gathered for its
    forward (and backward) and freed after, unless the matching `*_reshard_after_forward` is
    false (faster, more memory)."""

    strategy: Literal["ddp", "fsdp2"] = "ddp"
    reshard_after_forward: bool = True  # the student's blocks, between forward and backward
    teacher_reshard_after_forward: bool = True  # a frozen teacher's blocks, after its forward


class TrainConfig(Strict):
    seed: int = Field(0, ge=0, lt=2**32)
    max_steps: int = Field(100, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    log_every: int = Field(10, ge=1)
    # Checkpoints: every `save_every` steps and every `save_minutes` minutes (0 turns either
    # off), and always at the last step, so a stopped run resumes losing little.
    save_every: int = Field(500, ge=0)
    save_minutes: float = Field(30.0, ge=0.0)
    keep_checkpoints: int = Field(2, ge=1)
    stop_at_step: int | None = Field(None, ge=1)
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "anydistill"
    progress: bool = True

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for beta in betas:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"AdamW's betas must each be in [0, 1), got {beta}")
        return betas


class EvalConfig(Strict):
    every: int = Field(0, ge=0)
    max_batches: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    teacher: bool | None = None  # None: score the teacher too when it is a live model


class OutputConfig(Strict):
    dir: str = "runs/anydistill"
    overwrite: bool = False
    resume: bool = True
    report: bool = True
    save_final: bool = True


class RunConfig(Strict):
    teacher: ModelConfig
    student: ModelConfig
    data: DataConfig
    source: SourceConfig = Field(default_factory=SourceConfig)
    objective: ObjectiveConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    stages: list[StageConfig] | None = Field(None, min_length=1)
    generate: TraceGenConfig | None = None  # `anydistill generate` (traces)
    # Several teachers (anydistill.teachers.multi), instead of `teacher:`; the first one is
    # the run's `teacher` (tokenizer, sampling, student.from_teacher, eval's teacher/*).
    teachers: list[TeacherEntry] | None = Field(None, min_length=1)
    route_by: str | None = Field(None, min_length=1)  # a data column naming each sample's teacher

    @model_validator(mode="before")
    @classmethod
    def _first_teacher(cls, data: Any) -> Any:
        """With `teachers:`, `teacher` is its first entry (a saved config holds both)."""
        if not isinstance(data, dict) or not isinstance(data.get("teachers"), list):
            return data
        entries = data["teachers"]
        first = entries[0] if entries else None
        if hasattr(first, "model_dump"):
            first = first.model_dump()
        if not isinstance(first, dict):
            return data  # the field's own validation names what is wrong
        first = {k: v for k, v in first.items() if k not in ("name", "weight")}
        given = data.get("teacher")
        if hasattr(given, "model_dump"):
            given = given.model_dump()
        if given is not None and given != first:
            raise ValueError(
                "teacher: give either `teacher:` (one teacher) or `teachers:` (several, the "
                "first being the run's teacher), not both"
            )
        return {**data, "teacher": first}

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        self._check_teachers()
        self._check_stages()  # first: stages set train.max_steps
        if self.teacher.from_teacher is not None:
            raise ValueError("teacher.from_teacher: only the student can be built from the teacher")
        if self.teacher.lora is not None:
            raise ValueError("teacher.lora: the teacher is frozen; put `lora` on the student")
        if (
            self.student.from_teacher is not None
            and self.teacher.path is None
            and (self.teacher.init is None)
        ):
            raise ValueError("student.from_teacher needs a teacher with `path` or `init`")
        if self.objective.token_selection is not None and self.teacher.kind != "model":
            raise ValueError(
                "objective.token_selection compares full distributions; it needs a live teacher"
            )
        if self.objective.token_selection is not None and self._contrastive():
            # The step scores a contrastive term's two halves on all rows: a selection would
            # be dropped without a word.
            raise ValueError(
                "objective.token_selection cannot apply to a `contrastive` term, which scores "
                "every token of both paired responses; drop token_selection or the contrastive "
                "term"
            )
        if self.teacher.kind == "cache" and self.student.from_teacher is not None:
            raise ValueError("student.from_teacher needs teacher weights, not a teacher cache")
        if self.teacher.kind != "model" and self.eval.teacher:
            raise ValueError(
                f"eval.teacher scores a live teacher; set it to false with a {self._not_live()}"
            )
        if self.eval.teacher is None:
            self.eval.teacher = self.teacher.kind == "model"
        if self.student.kind != "model":
            raise ValueError(f"student.kind: only the teacher can be a {self.student.kind}")
        if self.train.stop_at_step and self.train.stop_at_step > self.train.max_steps:
            raise ValueError("train.stop_at_step must not exceed train.max_steps")
        if self.train.warmup_steps >= self.train.max_steps and self.train.warmup_steps > 0:
            raise ValueError("train.warmup_steps must be smaller than train.max_steps")
        self._check_source()
        self._check_features()
        self._check_distributed()
        if self.objective.cross_tokenizer():
            self._check_cross()
        elif isinstance(self.student.tokenizer, TokenizerTrain):
            *most, last = kinds.names("cross")
            raise ValueError(
                f"student.tokenizer: only a cross-tokenizer run (objective terms "
                f"{', '.join(most)} or {last}) trains its own student tokenizer; this student "
                "shares the teacher's"
            )
        return self

    def _check_stages(self) -> None:
        """Stage names unique, their terms in the objective, their steps the run's length; the
        `mixer` term only for a converted student and one live teacher."""
        convert = self.student.from_teacher is not None and self.student.from_teacher.convert
        mixer = [i for i, t in enumerate(self.objective.terms) if t.kind == "mixer"]
        if mixer and not convert:
            raise ValueError(
                f"objective.terms.{mixer[0]}: `mixer` aligns the mixers a conversion made; it "
                "needs student.from_teacher.convert"
            )
        if mixer and (self.teachers is not None or self.teacher.kind != "model"):
            raise ValueError(
                f"objective.terms.{mixer[0]}: `mixer` reads the teacher's attention inputs and "
                "outputs; it needs one teacher model (teacher.path or teacher.init)"
            )
        if self.stages is None:
            return
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: stage names must be unique, got {names}")
        terms = [t.name or t.kind for t in self.objective.terms]
        for i, stage in enumerate(self.stages):
            unknown = [n for n in stage.terms or [] if n not in terms]
            if unknown:
                raise ValueError(
                    f"stages.{i}.terms: `{unknown[0]}` is not a term of objective.terms "
                    f"(names: {', '.join(terms)})"
                )
            if stage.trainable == "mixers" and not convert:
                raise ValueError(
                    f"stages.{i}.trainable: `mixers` are the layers a conversion made; it needs "
                    "student.from_teacher.convert"
                )
        total = sum(s.steps for s in self.stages)
        if "max_steps" not in self.train.model_fields_set:
            self.train.max_steps = total
        elif self.train.max_steps != total:
            raise ValueError(
                f"train.max_steps is {self.train.max_steps} but the stages add up to {total} "
                "steps; drop train.max_steps (the stages set it) or make them agree"
            )
        if self.train.warmup_steps >= min(s.steps for s in self.stages) and self.train.warmup_steps:
            raise ValueError(
                "train.warmup_steps applies within each stage and must be shorter than the "
                "shortest stage"
            )

    def _check_distributed(self) -> None:
        """What fsdp2 does not cover yet, refused before anything loads."""
        if self.train.distributed.strategy != "fsdp2":
            return
        if self.student.lora is not None:
            raise ValueError(
                "student.lora: LoRA under train.distributed.strategy fsdp2 is not supported; "
                "use strategy ddp (LoRA's frozen base fits where its adapters train)"
            )
        if self.train.compile:
            raise ValueError(
                "train.compile: compiling a sharded student is not supported; set it to false "
                "with train.distributed.strategy fsdp2"
            )
        if self.source.generates() and not (
            self.source.kind == "teacher_generated" and self.source.mode == "upfront"
        ):
            raise ValueError(
                f"source.kind: `{self.source.kind}` samples from a model while training, which "
                "sharded models cannot do yet; use strategy ddp, or source.kind dataset or "
                "teacher_generated with mode upfront"
            )

    def _check_cross(self) -> None:
        # Kinds that only score the student over the teacher's own vocabulary.
        terms = self.objective.terms
        same_vocab = [t.kind for t in terms if "aligned" not in kinds.get(t.kind).teachers]
        if same_vocab:
            raise ValueError(
                f"objective.terms: `{same_vocab[0]}` compares distributions over one shared "
                "vocabulary and cannot mix with cross-tokenizer terms; use mined or gold_hybrid "
                "for a token-level divergence"
            )
        why = None
        if self.teacher.kind != "model":
            why = (
                f"teacher.kind: cross-tokenizer terms need a live teacher, not a {self._not_live()}"
            )
        elif self.source.kind != "dataset":
            why = "source.kind: cross-tokenizer terms train on the dataset's text; use `dataset`"
        elif self.objective.token_selection is not None:
            why = "objective.token_selection compares one vocabulary; drop it for cross terms"
        elif self.student.from_teacher is not None:
            why = (
                "student.from_teacher shares the teacher's tokenizer; use same-tokenizer terms "
                "(fkl, ...) or give the student `path` or `init`"
            )
        if why:
            raise ValueError(why)

    def _check_features(self) -> None:
        """Feature terms read a teacher model's layers, on the student's own tokens."""
        terms = self.objective.terms
        feature = [(i, t) for i, t in enumerate(terms) if kinds.get(t.kind).family == "feature"]
        if not feature:
            return
        i, first = feature[0]
        if self.teacher.kind != "model":
            raise ValueError(
                f"objective.terms.{i}: `{first.kind}` compares layer activations, which a "
                f"{self._not_live()} does not hold; use a teacher model (teacher.path or "
                "teacher.init)"
            )
        if self.objective.cross_tokenizer():
            raise ValueError(
                f"objective.terms.{i}: `{first.kind}` pairs student and teacher positions "
                "token by token, so it needs one shared tokenizer; drop it or the "
                "cross-tokenizer terms"
            )
        for i, term in feature:
            if term.kind != "attention" or (term.options or {}).get("target") != "map":
                continue
            sides = [("teacher", self.teacher)]
            if self.student.from_teacher is None:  # a student cut from it inherits it
                sides.append(("student", self.student))
            for side, model in sides:
                if model.attn_implementation != "eager":
                    raise ValueError(
                        f"objective.terms.{i}: attention maps come only from eager attention; "
                        f"set {side}.attn_implementation: eager"
                    )

    def _not_live(self) -> str:
        """What the teacher is when it is not a model: `teacher cache` or `server teacher`."""
        return "teacher cache" if self.teacher.kind == "cache" else "server teacher"

    def _contrastive(self) -> bool:
        return any(kinds.get(t.kind).family == "contrastive" for t in self.objective.terms)

    def _check_source(self) -> None:
        src = self.source
        contrastive = self._contrastive()
        if contrastive and src.kind != "paired":
            raise ValueError(
                "source.kind: a `contrastive` objective term needs paired teacher/student "
                "responses; set source.kind=paired"
            )
        if src.kind == "paired" and not contrastive:
            raise ValueError(
                "source.kind: `paired` feeds the `contrastive` objective term; add one to "
                "objective.terms or choose another source"
            )
        self._check_traces()
        if src.teacher_generates() and self.teacher.kind == "server":
            raise ValueError(
                f"source.kind: `{src.kind}` samples from the teacher, which a `kind: server` "
                "teacher does not do during training; sample with `anydistill generate` "
                "(generate.endpoint) and train on the traces, or use a teacher model"
            )
        if src.generates() and self.teacher.kind == "cache":
            raise ValueError(
                f"source.kind: `{src.kind}` makes new sequences that a teacher cache does not "
                "cover; use a teacher model (teacher.path or teacher.init)"
            )
        if src.generates() and self.data.mode == "text":
            raise ValueError(
                f"source.kind: `{src.kind}` needs prompts, but data.mode is text; give "
                "prompt/completion or messages data"
            )
        if src.kind == "adaptive_replay" and self.eval.every == 0:
            raise ValueError(
                "eval.every: source.kind adaptive_replay raises its probability at evaluations; "
                "set eval.every > 0"
            )
        if src.kind == "adaptive_replay" and src.replay.init_prob > src.replay.max_prob:
            raise ValueError("source.replay.init_prob must not exceed source.replay.max_prob")

    def _check_traces(self) -> None:
        """REDI (`redi`) and the source of its pairs (`paired_traces`) come together."""
        redi = any(kinds.get(t.kind).family == "sequence" for t in self.objective.terms)
        kind = self.source.kind
        if redi and kind != "paired_traces":
            raise ValueError(
                "source.kind: a `redi` objective term needs a correct and an incorrect trace "
                "of each prompt in one batch; set source.kind=paired_traces"
            )
        if kind != "paired_traces":
            return
        if not redi:
            raise ValueError(
                "source.kind: `paired_traces` feeds the `redi` objective term; add one to "
                "objective.terms or choose another source"
            )
        if self.data.synthetic is not None:
            raise ValueError(
                "data.synthetic: source.kind paired_traces reads the `verified` column "
                "(correct / incorrect) of traces, which the built-in corpus lacks; point "
                "data.path at traces such as `anydistill generate` writes"
            )
        if self.data.mode in ("text", "messages"):
            raise ValueError(
                f"data.mode: source.kind paired_traces groups traces by their prompt, which "
                f"{self.data.mode} data does not have; give prompt/completion data (mode auto "
                "or prompt_completion)"
            )
        if self.teacher.kind == "cache" and any(
            kinds.needs_teacher(t.kind) for t in self.objective.terms
        ):
            raise ValueError(
                "teacher.kind: with source.kind paired_traces the other terms read the correct "
                "traces only, which a teacher cache does not key; use a teacher model "
                "(teacher.path or teacher.init) or drop the terms that read the teacher"
            )

    def _check_teachers(self) -> None:
        """`teachers:` (several teachers: on the student's tokenizer, or in a cross-tokenizer
        run each on its own) and `route_by`."""
        entries = self.teachers
        if entries is None:
            if self.route_by is not None:
                raise ValueError(
                    "route_by chooses, per sample, one of several teachers; list them under "
                    "`teachers:` or drop route_by"
                )
            return
        cross = self.objective.cross_tokenizer()
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if entry.name in seen:
                raise ValueError(
                    f"teachers.{i}.name: `{entry.name}` already names teachers.{seen[entry.name]}; "
                    "teacher names must be unique"
                )
            seen[entry.name] = i
            if entry.from_teacher is not None:
                raise ValueError(f"teachers.{i}.from_teacher: only the student is built that way")
            if entry.lora is not None:
                raise ValueError(f"teachers.{i}.lora: teachers are frozen; give the student `lora`")
            same = entry.tokenizer is None or entry.tokenizer == entries[0].tokenizer
            if i and not cross and not same:
                raise ValueError(
                    f"teachers.{i}.tokenizer: every teacher reads the run's one tokenizer, the "
                    "first teacher's, unless the objective has cross-tokenizer terms; drop it here"
                )
            if cross and entry.kind != "model":
                raise ValueError(
                    f"teachers.{i}.kind: cross-tokenizer terms run each teacher's model on its "
                    f"own tokens, which a `{entry.kind}` teacher does not hold; use a teacher "
                    "model (path or init)"
                )
            if self.route_by is None and entry.kind != "model":
                raise ValueError(
                    f"teachers.{i}.kind: a weighted mixture mixes full distributions token by "
                    f"token, which a `{entry.kind}` teacher's top-k cannot give; route samples to "
                    "it with route_by, or use a teacher model"
                )
            if self.route_by is not None and entry.weight != 1.0:
                raise ValueError(
                    f"teachers.{i}.weight: with route_by each sample has one teacher and weights "
                    "are not read; drop it"
                )
        if self.route_by is None and not any(e.weight > 0 for e in entries):
            raise ValueError("teachers: every weight is 0; give at least one teacher a weight > 0")
        terms = self.objective.terms
        for i, term in enumerate(terms):
            if kinds.get(term.kind).family == "feature":
                raise ValueError(
                    f"objective.terms.{i}: `{term.kind}` compares one teacher's layer "
                    "activations; several teachers teach through their distributions only, so "
                    "drop the term or use a single `teacher:`"
                )
        if self.objective.token_selection is not None:
            raise ValueError(
                "objective.token_selection scores tokens against one teacher; drop it or use a "
                "single `teacher:`"
            )
        if self.route_by is None:
            return
        if self.source.kind != "dataset":
            raise ValueError(
                f"route_by: source.kind `{self.source.kind}` makes or pairs sequences that carry "
                "no route; routed teachers train on the dataset's records (source.kind dataset)"
            )
        if self.data.synthetic is not None:
            raise ValueError(
                f"route_by: the built-in synthetic corpus has no `{self.route_by}` column; point "
                "data.path at records that name their teacher"
            )
        if self.data.mode == "text" and self.data.packing:
            raise ValueError(
                "route_by: packed text blocks join several records, each with its own teacher; "
                "set data.packing: false"
            )
