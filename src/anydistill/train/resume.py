"""What a resumed run may change, and proof that it trains on the same data.

A resumed run continues the saved one, so its config must say what the run did. Keys that
only change how the rest of the run is driven or recorded (its length, cadences, logging,
the device) may change and are recorded; any other change (data, models, objective, the
optimizer's settings) would make the result a mix of two runs nobody asked for, and is
refused, naming the keys.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from anydistill.config import RunConfig, config_from_dict, resolve_paths
from anydistill.errors import AnydistillError, ConfigError

log = logging.getLogger(__name__)

# Dotted prefixes of the keys a resume may change.
CHANGEABLE = (
    "train.max_steps",
    "train.stop_at_step",
    "train.save_every",
    "train.save_minutes",
    "train.keep_checkpoints",
    "train.log_every",
    "train.progress",
    "train.tensorboard",
    "train.wandb",
    "train.wandb_project",
    "train.device",
    "train.compile",
    "train.gradient_checkpointing",
    "eval.",
    "output.",
    "generate.",  # read by `anydistill generate`, not by training
    *(f"teacher.{k}" for k in ("url", "timeout", "retries", "max_concurrency", "api_key_env")),
)

# Changes that say how this invocation runs, not what the run is: saved, never logged.
UNLOGGED = (
    "train.stop_at_step",
    "train.progress",
    "output.resume",
    "output.overwrite",
    # where and how a server teacher is reached (the same served model, asked the same way)
    *(f"teacher.{k}" for k in ("url", "timeout", "retries", "max_concurrency", "api_key_env")),
)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        out = {}
        for i, value in enumerate(node):
            out.update(_flat(value, f"{prefix}{i}."))
        out[f"{prefix}len"] = len(node)
        return out
    return {prefix.rstrip("."): node}


def _changeable(key: str) -> bool:
    return any(key == c or (c.endswith(".") and key.startswith(c)) for c in CHANGEABLE)


def saved_config(run_dir: Path, quiet: bool = False) -> RunConfig | None:
    """The run's config.yaml as it would validate today, paths resolved; None if unreadable."""
    path = run_dir / "config.yaml"
    try:
        return resolve_paths(config_from_dict(yaml.safe_load(path.read_text())))
    except (OSError, ValueError, yaml.YAMLError, AnydistillError) as err:
        if not quiet:
            log.warning("cannot read %s (%s); resuming without comparing configs", path, err)
        return None


def config_changes(saved: RunConfig, new: RunConfig, run_dir: Path) -> dict[str, list[Any]]:
    """{key: [saved, new]} of the allowed changes; ConfigError naming the refused ones."""
    old = _flat(saved.model_dump(mode="json", by_alias=True))
    now = _flat(new.model_dump(mode="json", by_alias=True))
    changed = {k: [old.get(k), now.get(k)] for k in sorted(set(old) | set(now))}
    changed = {k: v for k, v in changed.items() if v[0] != v[1]}
    refused = [k for k in changed if not _changeable(k)]
    if refused:
        shown = ", ".join(f"{k} ({changed[k][0]!r}, now {changed[k][1]!r})" for k in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise ConfigError(
            f"output.dir: the run in {run_dir} was started with other values of {shown}{more}, "
            f"which cannot change mid-run; resume with the values in {run_dir / 'config.yaml'}, "
            "or start a new run (another output.dir, or output.overwrite=true)"
        )
    return changed


def data_fingerprint(examples: Iterable[Any]) -> str:
    """sha256 (32 hex digits) over the training sequences: their token ids and target masks
    (a cross-tokenizer example: both sides' ids), and the teacher each is routed to."""
    h = hashlib.sha256()
    for ex in examples:
        if isinstance(ex, dict):
            parts = [ex["input_ids"], ex["loss_mask"]]
            if "route" in ex:
                parts.append([ex["route"]])
        else:
            names = ("teacher_ids", "student_ids", "teacher_chunk", "student_chunk")
            parts = [getattr(ex, name) for name in names] + [ex.student_target]
            if getattr(ex, "route", None) is not None:  # several teachers on own tokenizers
                parts.append([ex.route])
        for part in parts:
            arr = np.asarray(part, dtype=np.int64)
            h.update(len(arr).to_bytes(8, "little"))
            h.update(arr.tobytes())
    return h.hexdigest()[:32]


def check_same_data(saved: str | None, now: str, run_dir: Path, step: int) -> None:
    if saved is not None and saved != now:
        raise ConfigError(
            f"data: the training sequences differ from those the run in {run_dir} trained on "
            f"up to step {step} (a data file or the tokenizer changed since); restore them, or "
            "start a new run (another output.dir, or output.overwrite=true)"
        )
