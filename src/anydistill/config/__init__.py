"""The YAML schema of a run, `key=value` overrides, and one-sentence errors.

Sections: teacher, student, data, source, objective, train, eval, output. Components never see
these pydantic models; the CLI and the trainer translate them into plain arguments.

- `terms.py`: the objective section (term kinds, options, schedules);
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
from anydistill.config.schema import (
    DataConfig,
    EvalConfig,
    FromTeacher,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    OutputConfig,
    ReplayConfig,
    RunConfig,
    SourceConfig,
    TokenizerTrain,
    TrainConfig,
)
from anydistill.config.terms import (
    ALM_DIVERGENCES,
    ALM_TAU_RANGE,
    CROSS_KINDS,
    CROSS_OPTION_MODELS,
    CROSS_OPTIONS,
    DIVERGENCE_KINDS,
    SOURCE_KINDS,
    TEMPERATURE_RANGE,
    TERM_KINDS,
    ObjectiveConfig,
    ScheduleConfig,
    TaidConfig,
    TermConfig,
    TokenSelectionConfig,
)

__all__ = [
    "ALM_DIVERGENCES",
    "ALM_TAU_RANGE",
    "CROSS_KINDS",
    "CROSS_OPTIONS",
    "CROSS_OPTION_MODELS",
    "DIVERGENCE_KINDS",
    "SOURCE_KINDS",
    "TEMPERATURE_RANGE",
    "TERM_KINDS",
    "DataConfig",
    "EvalConfig",
    "FromTeacher",
    "GenerationConfig",
    "LoraConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OutputConfig",
    "ReplayConfig",
    "RunConfig",
    "ScheduleConfig",
    "SourceConfig",
    "Strict",
    "TaidConfig",
    "TermConfig",
    "TokenSelectionConfig",
    "TokenizerTrain",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_value",
    "resolve_paths",
]
