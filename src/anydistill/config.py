"""The YAML schema of a run, `key=value` overrides, and one-sentence errors.

Sections: teacher, student, data, source, objective, train, eval, output. Components never see these
pydantic models; the CLI and the trainer translate them into plain arguments.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from anydistill.errors import AnydistillError, ConfigError

DIVERGENCE_KINDS = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl", "taid")
ALM_DIVERGENCES = ("binary_kl", "binary_reverse_kl")  # anydistill.losses.cross.alm
CROSS_KINDS = ("alm", "uld", "gold_hybrid", "mined")
# Softmax temperatures outside this range underflow to a zero loss or overflow (ALM's tau is
# a binarisation scale, default 100, and gets a wider range).
TEMPERATURE_RANGE = (0.01, 100.0)
ALM_TAU_RANGE = (0.01, 1.0e4)
TERM_KINDS = (*DIVERGENCE_KINDS, "contrastive", "ce", *CROSS_KINDS)
SOURCE_KINDS = (
    "dataset",
    "teacher_generated",
    "student_generated",
    "mixture",
    "adaptive_replay",
    "paired",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AlmOptions(Strict):
    divergence: Literal["binary_kl", "binary_reverse_kl"] = "binary_kl"
    eps: float = Field(1e-6, gt=0.0)
    debias: bool = False
    space_threshold: float = Field(0.1, ge=0.0)


class GoldHybridOptions(Strict):
    matched_weight: float | None = Field(None, ge=0.0)
    unmatched_weight: float | None = Field(None, ge=0.0)


class NoOptions(Strict):
    pass


# Cross-tokenizer terms (anydistill.losses.cross) and the `options:` each accepts; beta and
# temperature are the TermConfig fields. ALM's temperature is its binarisation tau.
CROSS_OPTION_MODELS: dict[str, type[Strict]] = {
    "alm": AlmOptions,
    "uld": NoOptions,
    "gold_hybrid": GoldHybridOptions,
    "mined": NoOptions,
}
CROSS_OPTIONS: dict[str, tuple[str, ...]] = {
    kind: tuple(model.model_fields) for kind, model in CROSS_OPTION_MODELS.items()
}
assert tuple(CROSS_OPTIONS) == CROSS_KINDS


class TokenizerTrain(Strict):
    """Train a small byte-level BPE tokenizer on the run's training data (tiny recipes)."""

    vocab_size: int = Field(512, ge=300, le=65536)


class LoraConfig(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class FromTeacher(Strict):
    """Build the student from the teacher by keeping these decoder layers (weights copied)."""

    layers: list[int] = Field(min_length=1)


class ModelConfig(Strict):
    """Where a model comes from: exactly one of `path` (hub id or local dir), `init`
    (a transformers config dict, random weights) or, for the student, `from_teacher`.
    A teacher with `kind: cache` is an offline cache directory (`path`) instead of a model;
    `tail` says how its top-k is completed (see anydistill.losses.sparse)."""

    kind: Literal["model", "cache"] = "model"
    tail: Literal["bucket", "renorm"] = "bucket"
    path: str | None = None
    init: dict[str, Any] | None = None
    from_teacher: FromTeacher | None = None
    tokenizer: str | TokenizerTrain | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    lora: LoraConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.kind == "cache" and (self.path is None or self.init or self.from_teacher):
            raise ValueError(
                "a `kind: cache` teacher needs `path` (the directory `anydistill cache` wrote) "
                "and nothing else"
            )
        given = [k for k in ("path", "init", "from_teacher") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `path` (hub id or local directory), `init` (a model "
                "config for random weights) or `from_teacher` (student only); "
                f"got {given or 'none'}"
            )
        if self.init is not None and "model_type" not in self.init:
            raise ValueError("`init` needs a `model_type` key (e.g. llama, qwen2, gpt2)")
        return self


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


class ScheduleConfig(Strict):
    """A term weight's schedule (anydistill.losses.schedules.WeightSchedule)."""

    kind: Literal["constant", "linear", "cosine"]
    start: float
    end: float
    steps: int | None = Field(None, ge=1)  # default: the rest of the run after warmup
    warmup_steps: int = Field(0, ge=0)


class TaidConfig(Strict):
    """TAID's interpolation schedule (anydistill.losses.taid.TaidSchedule)."""

    t_start: float = Field(0.4, ge=0.0, le=1.0)
    t_end: float = Field(1.0, ge=0.0, le=1.0)
    alpha: float = Field(5e-4, ge=0.0, le=1.0)
    beta: float = Field(0.99, ge=0.0, lt=1.0)
    adaptive: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> TaidConfig:
        if self.t_start > self.t_end:
            raise ValueError(f"t_start ({self.t_start}) must not exceed t_end ({self.t_end})")
        return self


class TermConfig(Strict):
    kind: Literal[
        "fkl",
        "rkl",
        "jsd",
        "tvd",
        "skl",
        "srkl",
        "taid",
        "contrastive",
        "ce",
        "alm",
        "uld",
        "gold_hybrid",
        "mined",
    ]
    name: str | None = None
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)  # alm: the binarisation tau, default 100
    beta: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(0.1, ge=0.0, le=1.0)
    schedule: ScheduleConfig | None = None
    taid: TaidConfig | None = None
    options: dict[str, Any] | None = None  # cross-tokenizer terms only (CROSS_OPTIONS)

    @model_validator(mode="before")
    @classmethod
    def _alm_tau(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "alm" and "temperature" not in data:
            data = {**data, "temperature": 100.0}  # the ALM paper's tau
        return data

    @model_validator(mode="after")
    def _ce_temperature(self) -> TermConfig:
        if self.kind == "ce" and self.temperature != 1.0:
            raise ValueError("a `ce` term is on hard labels and takes no temperature")
        low, high = ALM_TAU_RANGE if self.kind == "alm" else TEMPERATURE_RANGE
        if not low <= self.temperature <= high:
            what = "ALM's tau" if self.kind == "alm" else "a softmax temperature"
            raise ValueError(
                f"temperature {self.temperature} is outside [{low:g}, {high:g}], where {what} "
                "keeps the loss finite and informative"
            )
        if self.taid is not None and self.kind != "taid":
            raise ValueError(f"`taid` only applies to a taid term, not {self.kind}")
        if self.options and self.kind not in CROSS_OPTIONS:
            raise ValueError(f"`options` only applies to cross-tokenizer terms, not {self.kind}")
        if self.options:
            self._check_options(CROSS_OPTION_MODELS[self.kind])
        return self

    def _check_options(self, model: type[Strict]) -> None:
        try:
            model.model_validate(self.options)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                takes = ", ".join(CROSS_OPTIONS[self.kind]) or "none"
                raise ValueError(
                    f"{self.kind} does not take option `{key}`; it takes: {takes}"
                ) from None
            msg = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"options.{key}: {msg} (got {first.get('input')!r})") from None


class TokenSelectionConfig(Strict):
    """AdaSPEC: keep the `keep` share of tokens where `reference` (a drafter already distilled
    from the target: run dir, model dir or hub id) beats the drafter most."""

    reference: str
    keep: float = Field(0.4, gt=0.0, le=1.0)


class ObjectiveConfig(Strict):
    terms: list[TermConfig] = Field(min_length=1)
    token_selection: TokenSelectionConfig | None = None
    engine: Literal["naive", "torch", "triton"] = "torch"
    # Rows per logits block; None sizes blocks by the vocabulary (engine.auto_chunk_size).
    chunk_size: int | None = Field(None, ge=1)

    def cross_tokenizer(self) -> bool:
        """True when a term compares aligned chunks (the two tokenizers may then differ)."""
        return any(t.kind in CROSS_KINDS for t in self.terms)

    @model_validator(mode="after")
    def _unique_names(self) -> ObjectiveConfig:
        names = [t.name or t.kind for t in self.terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"term names must be unique; give `name:` to repeated {dupes}")
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
        "dataset", "teacher_generated", "student_generated", "mixture", "adaptive_replay", "paired"
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
        return self.kind != "dataset"

    def uses_dataset_completions(self) -> bool:
        """False when every training completion is generated (the data need only prompts)."""
        if self.kind in ("teacher_generated", "student_generated"):
            return False
        off_policy_kinds = ("mixture", "adaptive_replay", "paired")
        return not (self.kind in off_policy_kinds and self.off_policy == "teacher")


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

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
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
        if self.objective.token_selection is not None and self.teacher.kind == "cache":
            raise ValueError(
                "objective.token_selection compares full distributions; it needs a live teacher"
            )
        if self.teacher.kind == "cache" and self.student.from_teacher is not None:
            raise ValueError("student.from_teacher needs teacher weights, not a teacher cache")
        if self.teacher.kind == "cache" and self.eval.teacher:
            raise ValueError(
                "eval.teacher scores a live teacher; set it to false with a cached teacher"
            )
        if self.eval.teacher is None:
            self.eval.teacher = self.teacher.kind == "model"
        if self.student.kind == "cache":
            raise ValueError("student.kind: only the teacher can be a cache")
        if self.train.stop_at_step and self.train.stop_at_step > self.train.max_steps:
            raise ValueError("train.stop_at_step must not exceed train.max_steps")
        if self.train.warmup_steps >= self.train.max_steps and self.train.warmup_steps > 0:
            raise ValueError("train.warmup_steps must be smaller than train.max_steps")
        self._check_source()
        if self.objective.cross_tokenizer():
            self._check_cross()
        elif isinstance(self.student.tokenizer, TokenizerTrain):
            raise ValueError(
                "student.tokenizer: only a cross-tokenizer run (objective terms alm, uld, "
                "gold_hybrid or mined) trains its own student tokenizer; this student shares "
                "the teacher's"
            )
        return self

    def _check_cross(self) -> None:
        same_vocab = [t.kind for t in self.objective.terms if t.kind not in (*CROSS_KINDS, "ce")]
        if same_vocab:
            raise ValueError(
                f"objective.terms: `{same_vocab[0]}` compares distributions over one shared "
                "vocabulary and cannot mix with cross-tokenizer terms; use mined or gold_hybrid "
                "for a token-level divergence"
            )
        why = None
        if self.teacher.kind == "cache":
            why = "teacher.kind: cross-tokenizer terms need a live teacher, not a teacher cache"
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

    def _check_source(self) -> None:
        src = self.source
        contrastive = any(t.kind == "contrastive" for t in self.objective.terms)
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


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after"))


def _explain(err: ValidationError) -> str:
    """Turn pydantic's report into one sentence that names the first bad key (a misspelt key
    first: it is also why a required key looks missing)."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = _format_location(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        parent = first["loc"][:-1]
        missing = [
            str(e["loc"][-1])
            for e in errors
            if e["type"] == "missing" and tuple(e["loc"][:-1]) == tuple(parent)
        ]
        close = difflib.get_close_matches(str(first["loc"][-1]), missing, n=1)
        hint = (
            f"did you mean `{close[0]}`?"
            if close
            else "check its spelling against the README's recipe reference"
        )
        return f"unknown key `{key}`: {hint}"
    if kind == "missing":
        return f"missing required key `{key}`"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    where = f"`{key}`" if key else "config"
    if kind.startswith("value_error") or kind == "assertion_error":
        return f"{where}: {msg}"
    return f"{where}: {msg} (got {got!r})"


def parse_value(text: str) -> Any:
    """Parse the right side of `key=value` as YAML, so numbers, bools and lists work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in order; list items are addressed by index."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override `{item}` must look like `section.key=value`")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override `{key}`: `{part}` is not an index of the list")
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override `{key}`: `{'.'.join(parts[:i])}` is not a section")
            node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override `{key}`: `{last}` is not an index of the list")
            node[int(last)] = parse_value(raw)
        elif isinstance(node, dict):
            node[last] = parse_value(raw)
        else:
            raise ConfigError(f"override `{key}`: its parent is not a section")
    return data


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe, apply overrides, validate. Raises ConfigError with one sentence."""
    from anydistill.paths import read_text

    path = Path(path)
    try:
        text = read_text(path, "config", hint="pass the path to a YAML recipe")
    except AnydistillError as err:
        raise ConfigError(str(err)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with sections teacher, student, data, ...")
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


def _local(value: str | None) -> str | None:
    """An existing or path-looking local path made absolute; hub ids stay as they are."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if value.startswith((".", "/", "~")) or path.exists():
        return str(path.resolve())
    return value


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """The config with every local path absolute, so that what a run saves in its
    config.yaml still finds the teacher, data and store from another working directory."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for side in ("teacher", "student"):
        data[side]["path"] = _local(data[side]["path"])
        if isinstance(data[side]["tokenizer"], str):
            data[side]["tokenizer"] = _local(data[side]["tokenizer"])
    for key in ("path", "eval_path"):
        data["data"][key] = _local(data["data"][key])
    data["source"]["store"] = _local(data["source"]["store"])
    data["output"]["dir"] = str(Path(data["output"]["dir"]).expanduser().resolve())
    selection = data["objective"]["token_selection"]
    if selection is not None:
        selection["reference"] = _local(selection["reference"])
    return config_from_dict(data)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
