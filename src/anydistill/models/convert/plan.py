"""`plan_conversion`: what a conversion will do, decided from the configs alone.

The plan lists the layers that keep attention and those that become mixers, the student's
transformers config, and for every student parameter where it comes from (`ParamSource`).
Nothing is loaded: parameter names come from both models built on the meta device, so the
table covers every parameter and a name no rule knows fails here, before any weight moves.
It is plain data (`to_dict` / `from_dict`) so a run directory can keep it next to the model.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from anydistill.models.convert.families import KINDS, Family, ParamSource
from anydistill.models.convert.gdn import FAMILY as GDN
from anydistill.models.convert.mamba2 import FAMILY as MAMBA2
from anydistill.models.convert.spec import (
    ConvertSpec,
    check_options,
    check_target,
    kept_layers,
)
from anydistill.models.convert.teacher import TeacherFacts, teacher_facts

FAMILIES: dict[str, Family] = {GDN.model_type: GDN, MAMBA2.model_type: MAMBA2}


@dataclass
class ConversionPlan:
    """What `convert` will do. kept / replaced: layer indices that keep attention / get a
    mixer. config_kwargs: the student's transformers config as keyword arguments
    (`student_config` is built from them). sources: one `ParamSource` per student parameter.
    exact / exact_note: whether a student keeping every layer reproduces the teacher's logits,
    in one line. notes: what else differs from the teacher. dropped: teacher tensors unused."""

    spec: ConvertSpec
    teacher: TeacherFacts
    kept: list[int]
    replaced: list[int]
    config_kwargs: dict
    sources: list[ParamSource]
    exact: bool
    exact_note: str
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    student_config: PretrainedConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Built from plain keyword arguments, which is also what to_dict stores: they are
        # JSON as they stand (the config's own dict holds inf, which strict JSON refuses).
        self.student_config = AutoConfig.for_model(self.spec.to, **deepcopy(self.config_kwargs))

    @property
    def family(self) -> Family:
        return FAMILIES[self.spec.to]

    def by_kind(self, kind: str) -> list[ParamSource]:
        return [s for s in self.sources if s.kind == kind]

    def to_dict(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "teacher": self.teacher.to_dict(),
            "kept": list(self.kept),
            "replaced": list(self.replaced),
            "config_kwargs": self.config_kwargs,
            "sources": [s.to_dict() for s in self.sources],
            "exact": self.exact,
            "exact_note": self.exact_note,
            "notes": list(self.notes),
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConversionPlan:
        return cls(
            spec=ConvertSpec.from_dict(data["spec"]),
            teacher=TeacherFacts.from_dict(data["teacher"]),
            kept=list(data["kept"]),
            replaced=list(data["replaced"]),
            config_kwargs=dict(data["config_kwargs"]),
            sources=[ParamSource.from_dict(s) for s in data["sources"]],
            exact=data["exact"],
            exact_note=data["exact_note"],
            notes=list(data["notes"]),
            dropped=list(data["dropped"]),
        )

    def describe(self) -> str:
        from anydistill.models.convert.describe import describe

        return describe(self)


def _names(config: PretrainedConfig) -> list[str]:
    """Parameter names of a model built from `config` on the meta device (no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, _ in model.named_parameters()]


def plan_conversion(teacher_config: PretrainedConfig, spec: ConvertSpec) -> ConversionPlan:
    """Decides the conversion of a teacher (its config) into `spec.to`; refuses, with one
    ConfigError sentence naming the field, a target, teacher or layer choice it cannot do."""
    family = FAMILIES[check_target(spec.to)]
    facts = teacher_facts(teacher_config)
    check_options(spec)
    kept = kept_layers(spec, facts.num_layers)
    family.check(facts, spec)
    kwargs = family.config_kwargs(facts, spec, kept)
    names = _names(AutoConfig.for_model(spec.to, **deepcopy(kwargs)))
    sources = [family.source(name, facts, spec) for name in names]
    assert all(s.kind in KINDS for s in sources)
    used = {src for s in sources for src in s.sources}
    if facts.tie_word_embeddings:
        used.add("lm_head.weight")
    dropped = [n for n in _names(teacher_config) if n not in used]
    exact, note = family.exactness(facts)
    return ConversionPlan(
        spec=spec,
        teacher=facts,
        kept=kept,
        replaced=[i for i in range(facts.num_layers) if i not in kept],
        config_kwargs=kwargs,
        sources=sources,
        exact=exact,
        exact_note=note,
        notes=family.notes(facts, spec),
        dropped=dropped,
    )
