"""Turn a RunConfig into the pieces a run needs: tokenizers, teacher, student, data.

This is the one place that reads config sections for models and data; the components it
calls take plain arguments. One path serves every run: the student's tokenizer is the
teacher's unless an aligned (cross-tokenizer) term asks for its own, and then the teacher
becomes an `AlignedTeacher` and the data goes through the align stage. Several teachers in a
cross-tokenizer run each read their own tokenizer (`train.member_tokenizers`): each is an
`AlignedTeacher` built for its vocabulary, the data is aligned to each one's tokenizer, and
each member carries its own aligned terms' options (`Member.params`, vocabulary maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from anydistill.config import ModelConfig, RunConfig
from anydistill.config.kinds import needs_teacher
from anydistill.data.prepare import load_run_data, prepare_examples
from anydistill.errors import AnydistillError, ConfigError
from anydistill.losses.features import FeaturePlan
from anydistill.models.from_config import load_model, pick_device
from anydistill.models.from_teacher import student_from_teacher
from anydistill.models.loading import freeze, max_positions, resolve_dtype
from anydistill.models.lora import add_lora
from anydistill.models.run_tokenizers import student_tokenizer, teacher_tokenizer
from anydistill.models.tokenizer import check_same_tokenizer, load_tokenizer, real_vocab_size
from anydistill.teachers import AlignedTeacher, LiveTeacher

__all__ = ["RunParts", "build_parts", "finish_student", "load_model", "pick_device"]


@dataclass
class RunParts:
    tokenizer: PreTrainedTokenizerBase  # the teacher's
    teacher: Any  # a teachers.Teacher (live, cache or aligned), or None
    student: torch.nn.Module
    data: Any  # data.prepare: TokenizedData, or AlignedData when aligned
    vocab_size: int  # the student's
    student_tokenizer: PreTrainedTokenizerBase | None = None  # when it differs
    teacher_vocab: int | None = None
    # Per aligned term (one teacher; several teachers carry theirs in `Member.params`).
    aligned_params: dict[str, dict] = field(default_factory=dict)
    features: FeaturePlan | None = None  # feature terms: layer pairs and projections

    @property
    def student_tok(self) -> PreTrainedTokenizerBase:
        """The tokenizer the student reads and is saved with."""
        return self.student_tokenizer or self.tokenizer

    @property
    def teacher_model(self) -> torch.nn.Module | None:
        """The model behind the teacher (None for a cache or no teacher)."""
        return getattr(self.teacher, "model", None)


def _check_student_tokenizer(mc: ModelConfig, teacher_tok: PreTrainedTokenizerBase) -> None:
    source = mc.tokenizer if isinstance(mc.tokenizer, str) else mc.path
    if source is None:
        return  # a student built from `init` uses the teacher's tokenizer
    field = "student.tokenizer" if isinstance(mc.tokenizer, str) else "student.path"
    student_tok = load_tokenizer(
        source, field=field, revision=mc.revision, trust_remote_code=mc.trust_remote_code
    )
    check_same_tokenizer(teacher_tok, student_tok)


def build_parts(cfg: RunConfig, run_dir: Path, device: torch.device) -> RunParts:
    seed = cfg.train.seed
    raw = load_run_data(cfg)
    teacher_tok = teacher_tokenizer(cfg, run_dir, raw.texts(cfg))
    align = cfg.objective.cross_tokenizer()
    member_toks = None  # several teachers on their own tokenizers: each one's
    if align:
        student_tok = student_tokenizer(cfg, run_dir, raw.texts(cfg), teacher_tok)
        if cfg.teachers:
            from anydistill.train.member_tokenizers import member_tokenizers

            texts = raw.texts(cfg)
            member_toks = member_tokenizers(cfg, run_dir, texts, teacher_tok, student_tok)
    else:
        student_tok = teacher_tok
        if cfg.student.from_teacher is None:
            _check_student_tokenizer(cfg.student, teacher_tok)  # before loading any weights
        _check_teacher_tokenizers(cfg, teacher_tok)
    t_vocab, vocab = real_vocab_size(teacher_tok), real_vocab_size(student_tok)
    teacher = _teacher(cfg, t_vocab, device, align, teacher_tok, member_toks)
    model = getattr(teacher, "model", None)
    data = prepare_examples(
        raw, teacher_tok, student_tok, cfg, align, routes=True, member_toks=member_toks
    )
    source = cfg.student.from_teacher
    if source is not None and source.prune is not None:
        assert model is not None
        student = _pruned(
            source.prune, model, data.train, teacher_tok, run_dir, device, cfg.train.progress
        )
    elif source is not None and source.convert is not None:
        assert model is not None
        from anydistill.train.convert import converted_student

        pad = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else 0
        student = converted_student(
            source.convert, model, data.train, pad, run_dir / "converted", device, seed
        )
    elif source is not None and source.layers is not None:
        assert model is not None
        student = student_from_teacher(model, source.layers).to(device)
    else:
        student = load_model(cfg.student, "student", vocab, device, frozen=False, seed=seed + 2)
    student = finish_student(cfg, student, model, device)
    if teacher is not None and teacher.kind == "cache":
        from anydistill.teachers.cache.keys import example_key

        keys = [example_key(ex) for ex in data.train]
        teacher.cache.check_compatible(teacher_tok, cfg.data.seq_len, keys)
    if teacher is not None and teacher.kind == "multi":
        teacher.check_caches(teacher_tok, cfg.data.seq_len, data.train)
    params = aligned_params(cfg, teacher_tok, student_tok) if align and not member_toks else {}
    if member_toks is not None:
        _member_params(cfg, teacher, member_toks, student_tok)
    return RunParts(
        tokenizer=teacher_tok,
        teacher=teacher,
        student=student,
        data=data,
        vocab_size=vocab,
        student_tokenizer=student_tok if align else None,
        teacher_vocab=t_vocab,
        aligned_params=params,
        features=feature_plan(cfg, student, model),
    )


def _pruned(
    prune: Any,
    teacher: torch.nn.Module,
    examples: list,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: Path,
    device: torch.device,
    progress: bool = False,
) -> torch.nn.Module:
    """The teacher pruned to `student.from_teacher.prune`; the plan is told before any weight
    moves and kept, with the importances, in `pruned/`."""
    import sys

    from anydistill.models.prune import apply_plan
    from anydistill.train.prune import (
        calibration_batches,
        pruned_student,
        saved_plan,
        write_records,
    )

    plan = saved_plan(run_dir / "pruned", prune, teacher)
    if plan is not None:  # a resumed run: the same cut, without scoring the teacher again
        print(f"{plan.describe()}\n(the plan in {run_dir / 'pruned'})", file=sys.stderr)
        return apply_plan(teacher, plan).to(torch.float32).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = calibration_batches(examples, prune.calibration, prune.batch_size, pad, device)
    student, plan, importance = pruned_student(
        teacher, prune, batches, say=lambda text: print(text, file=sys.stderr), progress=progress
    )
    write_records(run_dir / "pruned", plan, importance)
    return student.to(device)


def _teacher(
    cfg: RunConfig,
    vocab: int,
    device: torch.device,
    align: bool,
    tokenizer: Any = None,
    member_toks: list | None = None,
) -> Any:
    """The teacher kind the recipe asks for, or None when nothing reads it."""
    needs = any(needs_teacher(t.kind) for t in cfg.objective.terms) or cfg.eval.teacher
    if not (needs or align or cfg.student.from_teacher is not None):
        return None
    if cfg.teachers:
        return _several(cfg, vocab, device, align, tokenizer, member_toks)
    if cfg.teacher.kind == "server":  # checked against the run's tokenizer before any weights
        from anydistill.teachers.server import ServerTeacher

        _check_sparse_terms(cfg)
        settings = cfg.teacher.server_settings()
        return ServerTeacher.connect(tokenizer, cfg.teacher.tail, cfg.data.seq_len, **settings)
    if cfg.teacher.kind == "cache":
        from anydistill.teachers.cache.reader import CachedTeacher

        _check_sparse_terms(cfg)
        return CachedTeacher(cfg.teacher.path or "", cfg.teacher.tail)
    seed = cfg.train.seed + 1
    model = freeze(load_model(cfg.teacher, "teacher", vocab, device, frozen=True, seed=seed))
    return AlignedTeacher(model) if align else LiveTeacher(model)


def _several(
    cfg: RunConfig,
    vocab: int,
    device: torch.device,
    align: bool,
    tokenizer: Any = None,
    member_toks: list | None = None,
) -> Any:
    """`teachers:`: each member built as a lone `teacher:` section would be (`_teacher`), the
    first with the seed a lone teacher gets and member i with that seed + 1000 i, then
    combined by `teachers.multi.MultiTeacher` (weights, or `route_by`). `member_toks`: each
    member's own tokenizer (cross-tokenizer runs), whose vocabulary its model is built for."""
    from anydistill.teachers.multi import Member, MultiTeacher

    members = []
    for i, entry in enumerate(cfg.teachers or []):
        section = ModelConfig.model_validate(entry.model_dump(exclude={"name", "weight"}))
        train = cfg.train.model_copy(update={"seed": cfg.train.seed + 1000 * i})
        alone = cfg.model_copy(update={"teacher": section, "teachers": None, "train": train})
        own_tok = member_toks[i] if member_toks is not None else tokenizer
        own_vocab = real_vocab_size(own_tok) if member_toks is not None else vocab
        try:
            teacher = _teacher(alone, own_vocab, device, align, own_tok)
        except AnydistillError as err:  # it names `teacher.*`: say which of the teachers
            raise type(err)(f"teachers.{i} ({entry.name}): {err}") from None
        model = getattr(teacher, "model", None)
        limit = max_positions(model) if isinstance(model, torch.nn.Module) else None
        if limit is not None and cfg.data.seq_len > limit:
            raise ConfigError(
                f"data.seq_len is {cfg.data.seq_len} but teachers.{i} ({entry.name}) handles at "
                f"most {limit} positions; lower data.seq_len"
            )
        members.append(Member(entry.name, entry.weight, teacher))
    return MultiTeacher(members, route=cfg.route_by is not None)


def _check_teacher_tokenizers(cfg: RunConfig, run_tok: PreTrainedTokenizerBase) -> None:
    """Every teacher model past the first reads the run's tokenizer (before any weights)."""
    from anydistill.errors import ModelError

    for i, entry in enumerate(cfg.teachers or []):
        source = entry.tokenizer if isinstance(entry.tokenizer, str) else entry.path
        if i == 0 or entry.kind != "model" or source is None:
            continue
        field = f"teachers.{i}." + ("tokenizer" if isinstance(entry.tokenizer, str) else "path")
        tok = load_tokenizer(
            source, field=field, revision=entry.revision, trust_remote_code=entry.trust_remote_code
        )
        try:
            check_same_tokenizer(run_tok, tok)
        except ModelError:
            raise ConfigError(
                f"{field}: this teacher's tokenizer is not the first teacher's; several teachers "
                "teach through the one tokenizer the student reads"
            ) from None


def _member_params(cfg: RunConfig, teacher: Any, toks: list, student_tok: Any) -> None:
    """Each member that teaches gets the aligned terms' options for its own tokenizer
    (vocabulary maps made once per distinct tokenizer); a weight-0 member of a mixture is
    never run and gets none."""
    made: dict[int, dict[str, dict]] = {}
    for member, tok in zip(teacher.members, toks, strict=True):
        if teacher.route or member.weight > 0:
            if id(tok) not in made:
                made[id(tok)] = aligned_params(cfg, tok, student_tok)
            member.params = made[id(tok)]


def aligned_params(cfg: RunConfig, teacher_tok: Any, student_tok: Any) -> dict[str, dict]:
    """Per aligned term name: the keyword options its loss takes (vocabulary maps included)."""
    from anydistill.losses.cross import prepare_cross_params
    from anydistill.losses.registry import get

    out: dict[str, dict] = {}
    for term in cfg.objective.terms:
        if get(term.kind).family != "cross":
            continue
        options = {"temperature": term.temperature, **(term.options or {})}
        if term.kind == "gold_hybrid":
            options["beta"] = term.beta
        if cfg.objective.chunk_size is not None:
            options["block_rows"] = cfg.objective.chunk_size
        out[term.name or term.kind] = prepare_cross_params(
            term.kind, teacher_tok, student_tok, **options
        )
    return out


def feature_plan(
    cfg: RunConfig, student: torch.nn.Module, teacher: torch.nn.Module | None
) -> FeaturePlan | None:
    """The feature terms' layer pairs, checked against both models, and a seeded projection
    per pair whose widths differ; None without feature terms."""
    from anydistill.losses.features import FeatureProjections, resolve_spec
    from anydistill.losses.registry import get
    from anydistill.models.features import hidden_width, layer_count
    from anydistill.models.heads import unwrap

    terms = [t for t in cfg.objective.terms if get(t.kind).family == "feature"]
    if not terms:
        return None
    assert teacher is not None  # the config refuses feature terms without a teacher model
    lm = unwrap(student)
    specs = {}
    for term in terms:
        name = term.name or term.kind
        specs[name] = resolve_spec(
            name, term.kind, term.options or {}, layer_count(lm), layer_count(teacher)
        )
    for spec in specs.values():
        if spec.target == "map":
            heads = [getattr(m.config, "num_attention_heads", 0) for m in (lm, teacher)]
            if heads[0] < 1 or heads[1] % heads[0]:
                raise ConfigError(
                    f"objective term {spec.name!r}: attention maps pair the student's "
                    f"{heads[0]} heads with groups of the teacher's {heads[1]}; the teacher's "
                    "head count must be a multiple of the student's"
                )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed + 3)
        projections = FeatureProjections(
            list(specs.values()), hidden_width(lm), hidden_width(teacher)
        )
    device = next(lm.parameters()).device
    return FeaturePlan(specs, projections.to(device))


def _check_sparse_terms(cfg: RunConfig) -> None:
    """Terms a top-k teacher (a cache, a server) cannot serve are refused before any weights
    load, not at step 1."""
    from anydistill.losses.sparse import refusal

    t = cfg.teacher
    for i, term in enumerate(cfg.objective.terms):
        why = (
            None
            if term.kind == "ce"
            else refusal(term.kind, term.temperature, term.beta, term.alpha, t.tail, t.kind)
        )
        if why is not None:
            raise ConfigError(f"objective.terms.{i}: {why} (teacher.tail is {cfg.teacher.tail})")


def finish_student(
    cfg: RunConfig, student: torch.nn.Module, teacher: Any, device: torch.device
) -> torch.nn.Module:
    """dtype, the seq_len check against both models, LoRA and gradient checkpointing."""
    if cfg.student.dtype != "auto":
        student = student.to(resolve_dtype(cfg.student.dtype, device, frozen=False))
    student.train()
    for name, model in (("student", student), ("teacher", teacher)):
        limit = max_positions(model) if isinstance(model, torch.nn.Module) else None
        if limit is not None and cfg.data.seq_len > limit:
            raise ConfigError(
                f"data.seq_len is {cfg.data.seq_len} but the {name} handles at most {limit} "
                "positions; lower data.seq_len"
            )
    if cfg.student.lora is not None:
        lc = cfg.student.lora
        student = add_lora(student, lc.r, lc.alpha, lc.dropout, lc.target_modules)
    if cfg.train.gradient_checkpointing:
        base = student.get_base_model() if hasattr(student, "get_base_model") else student
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(student, "enable_input_require_grads"):
            student.enable_input_require_grads()
    return student
