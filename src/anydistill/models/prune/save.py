"""Write a pruned model as a `from_pretrained` directory with its plan and importances.

Everything is written into a temporary sibling first and renamed into place, so a failure
leaves the target as it was. A directory is only reused when it is empty or holds nothing
but an earlier pruned model (recognised by its prune_plan.json); any other file is the
user's and makes the save refuse, with nothing deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from transformers import PreTrainedModel

from anydistill.errors import ConfigError
from anydistill.models.prune.importance import Importance
from anydistill.models.prune.plan import PrunePlan
from anydistill.paths import check_writable_dir, disk_full_message, is_disk_full, refuse_foreign

PLAN_FILE = "prune_plan.json"
IMPORTANCE_FILE = "importance.json"
# What save_pretrained (model and tokenizer) and this module write.
_OURS = re.compile(
    r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors"
    r"|model\.safetensors\.index\.json|prune_plan\.json|importance\.json|tokenizer.*"
    r"|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|chat_template\..*"
    r"|spiece\.model)$"
)


def check_target(out: str | Path, field: str) -> bool:
    """Whether `out` already holds a pruned model (to be replaced); refuses (ConfigError,
    naming `field`) a file path, an unwritable place or a folder with files not ours.
    Nothing is made or changed; callers may run it before any work, save_pruned runs it too."""
    out = check_writable_dir(out, field)
    if not out.is_dir():
        return False
    names = [p.name for p in out.iterdir()]
    if not names:
        return False
    theirs = names if PLAN_FILE not in names else [n for n in names if not _OURS.match(n)]
    refuse_foreign(out, field, theirs, "the pruner did not write")
    return True


def save_pruned(
    model: PreTrainedModel,
    out_dir: str | Path,
    plan: PrunePlan,
    importance: Importance,
    tokenizer=None,
    *,
    field: str = "out_dir",
) -> Path:
    """Save `model` (safetensors), `tokenizer` if given, prune_plan.json and importance.json
    into `out_dir`; returns it. `field` names the option in error sentences."""
    out = Path(out_dir).expanduser()
    replace = check_target(out, field)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.prune-tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.prune-old-{os.getpid()}"
    made = moved = False
    try:
        tmp.mkdir()
        made = True
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
        (tmp / IMPORTANCE_FILE).write_text(json.dumps(importance.to_dict()) + "\n")
        if replace:
            out.rename(old)  # only our files are in it (checked above)
            moved = True
        elif out.is_dir():
            out.rmdir()  # empty
        tmp.rename(out)
    except BaseException as err:
        if made:
            shutil.rmtree(tmp, ignore_errors=True)
        if moved and not out.exists():
            old.rename(out)
        if is_disk_full(err):
            raise ConfigError(
                f"{field}: " + disk_full_message(out, None, f"{out} is unchanged")
            ) from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
