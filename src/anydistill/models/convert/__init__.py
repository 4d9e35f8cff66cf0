"""Convert a Llama-layout teacher into a linear-attention / state-space hybrid student.

plan_conversion (show ConversionPlan.describe()) -> convert -> save_converted. Targets:
`qwen3_5_text` (Gated DeltaNet beside gated attention, `gdn.py`) and `bamba` (Mamba-2 beside
attention, `mamba2.py`). `align.py` trains the mixers on the teacher's attention inputs and
outputs; `select.py` picks the layers that keep attention by how much KL each one saves.
"""

from anydistill.models.convert.align import (
    align_mixers,
    capture_attention_io,
    mixer_alignment_loss,
    mixer_parameters,
    mixer_token_errors,
)
from anydistill.models.convert.build import convert
from anydistill.models.convert.families import ParamSource
from anydistill.models.convert.plan import FAMILIES, ConversionPlan, plan_conversion
from anydistill.models.convert.save import PLAN_FILE, save_converted
from anydistill.models.convert.select import select_layers_kl
from anydistill.models.convert.spec import FIELD, TARGETS, TEACHERS, ConvertSpec, evenly_spaced

__all__ = [
    "FAMILIES",
    "FIELD",
    "PLAN_FILE",
    "TARGETS",
    "TEACHERS",
    "ConversionPlan",
    "ConvertSpec",
    "ParamSource",
    "align_mixers",
    "capture_attention_io",
    "convert",
    "evenly_spaced",
    "mixer_alignment_loss",
    "mixer_parameters",
    "mixer_token_errors",
    "plan_conversion",
    "save_converted",
    "select_layers_kl",
]
