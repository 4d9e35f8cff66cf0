"""The YAML schema of a run, `key=value` overrides, and one-sentence errors.

Sections: teacher, student, data, source, objective, train, eval, output. Components never see
these pydantic models; the CLI and the trainer translate them into plain arguments.

- `terms.py`: the objective section (term kinds, options, schedules);
- `kinds.py`: the term registry's records (each kind's family, parameters, engines, teachers);
- `models.py`: the teacher / student sections (and `teachers:` entries), pruning, LoRA;
- `generate.py`: the `generate:` section of `anydistill generate`;
- `schema.py`: every other section and the checks that span sections;
- `files.py`: reading, overriding, validating, resolving and dumping recipes.
"""

from anydistill.config.base import Strict
from anydistill.config.files import (
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_value,
    resolve_paths,
)
from anydistill.config.generate import TraceGenConfig
from anydistill.config.models import (
    ConvertConfig,
    FromTeacher,
    KeepAttention,
    LoraConfig,
    ModelConfig,
    PruneConfig,
    TeacherEntry,
    TokenizerTrain,
)
from anydistill.config.schema import (
    DataConfig,
    DistributedConfig,
    EvalConfig,
    GenerationConfig,
    OutputConfig,
    ReplayConfig,
    RunConfig,
    SourceConfig,
    TrainConfig,
)
from anydistill.config.stages import StageConfig
from anydistill.config.terms import (
    ALM_DIVERGENCES,
    ALM_TAU_RANGE,
    CROSS_OPTION_MODELS,
    CROSS_OPTIONS,
    SOURCE_KINDS,
    TEMPERATURE_RANGE,
    ObjectiveConfig,
    ScheduleConfig,
    TaidConfig,
    TermConfig,
    TokenSelectionConfig,
)

__all__ = [
    "ALM_DIVERGENCES",
    "ALM_TAU_RANGE",
    "CROSS_OPTIONS",
    "CROSS_OPTION_MODELS",
    "SOURCE_KINDS",
    "TEMPERATURE_RANGE",
    "ConvertConfig",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "FromTeacher",
    "KeepAttention",
    "GenerationConfig",
    "LoraConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OutputConfig",
    "PruneConfig",
    "ReplayConfig",
    "RunConfig",
    "ScheduleConfig",
    "SourceConfig",
    "StageConfig",
    "TeacherEntry",
    "Strict",
    "TaidConfig",
    "TermConfig",
    "TokenSelectionConfig",
    "TokenizerTrain",
    "TraceGenConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_value",
    "resolve_paths",
]
