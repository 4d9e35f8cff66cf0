"""`save_converted`: the student as a `from_pretrained` folder, with its plan.

It writes only into a new or empty folder (a ConfigError otherwise) and deletes nothing of the
user's: everything goes into a temporary sibling first, which is renamed into place at the end,
so a failure (a full disk, Ctrl-C) leaves no half-written model under the requested name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers import PreTrainedModel

from anydistill.errors import ConfigError
from anydistill.models.convert.plan import ConversionPlan
from anydistill.paths import check_writable_dir, disk_full_message, few, is_disk_full

PLAN_FILE = "convert_plan.json"


def save_converted(
    model: PreTrainedModel,
    tokenizer,
    out_dir: str | Path,
    plan: ConversionPlan,
    *,
    field: str = "out_dir",
) -> Path:
    """Saves `model` (safetensors), `tokenizer` when not None, and `PLAN_FILE` into `out_dir`,
    which must be new or empty; returns it. `field` names the option in error sentences."""
    out = check_writable_dir(out_dir, field)
    if out.is_dir() and any(out.iterdir()):
        names = [p.name for p in out.iterdir()]
        raise ConfigError(
            f"{field}: {out} is not empty ({few(names)}); give a new or empty directory, "
            "nothing is deleted"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.convert-tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
        if out.is_dir():
            out.rmdir()  # empty, checked above; rmdir refuses anything else
        tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise ConfigError(
                f"{field}: " + disk_full_message(out, None, "nothing was saved")
            ) from None
        raise
    return out
