"""Checkpoints with exact resume: student, optimizer, scheduler, RNG, data position, objective,
and `extras.safetensors` when the run trains modules beside the student (feature projections).

Written to `step-N.tmp/` and renamed, so a crash never leaves a half checkpoint that looks
whole; `checksums.json`, written last, records the size and sha256 of every other file, so a
truncated, deleted or bit-flipped file is found on resume and the run falls back to the
newest checkpoint that is whole. Tensors go through safetensors /
`torch.load(weights_only=True)`: nothing is unpickled.

A sharded student (fsdp2) is saved as `sharded/` instead of `student.safetensors`: torch
distributed checkpoint files each process writes (student, projections and optimizer state);
rank 0 writes the rest and the checksums of every file, shards included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from anydistill.errors import TrainingError
from anydistill.paths import disk_full_message, is_disk_full

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"
FILES = ("student.safetensors", "trainer.pt", "state.json")
EXTRAS = "extras.safetensors"
SHARDS = "sharded"  # a sharded student's distributed-checkpoint folder


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every finished checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About what a checkpoint takes: the weights, plus the optimizer's two moments each."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return weights + 2 * trained


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    extras: torch.nn.Module | None = None,
    sharded: bool = False,
) -> Path:
    """Write `root/step-N/` atomically and keep only the newest `keep` checkpoints. `sharded`:
    `prepare_sharded`'s folder already holds the student's and optimizer's shards.

    Out of disk space (or any other write error) the partial checkpoint is removed and a
    TrainingError names the file; the earlier checkpoints are left as they were."""
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp"
    if not sharded:
        shutil.rmtree(tmp, ignore_errors=True)
    current = tmp
    try:
        tmp.mkdir(parents=True, exist_ok=sharded)
        if sharded:  # the processes wrote the student and optimizer shards already
            shards = sorted((tmp / SHARDS).iterdir())
            names: tuple[str, ...] = (*(f"{SHARDS}/{f.name}" for f in shards), *FILES[1:])
        else:
            current = tmp / "student.safetensors"
            save_model(model, str(current))  # handles tied embeddings
            names = FILES
        if extras is not None and not sharded:
            current = tmp / EXTRAS
            save_model(extras, str(current))
            names = (*FILES, EXTRAS)
        current = tmp / "trainer.pt"
        trainer = {"scheduler": scheduler.state_dict(), "rng": rng_state()}
        if not sharded:
            trainer["optimizer"] = optimizer.state_dict()
        torch.save(trainer, current)
        current = tmp / "state.json"
        current.write_text(json.dumps({"step": step, **state}, indent=1))
        sums = {}
        for name in names:
            _fsync(tmp / name)
            sums[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        current = tmp / CHECKSUMS
        current.write_text(json.dumps(sums, indent=1))
        _fsync(current)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = list_checkpoints(root)
        survives = (
            f"{kept[-1][1].name} and older checkpoints are intact; rerun the same command to "
            "resume from there"
            if kept
            else "no earlier checkpoint exists"
        )
        if is_disk_full(err):
            raise TrainingError(
                disk_full_message(current, _state_bytes(model, optimizer), survives)
            ) from None
        raise TrainingError(
            f"cannot write checkpoint file {current} ({err.strerror or err}); {survives}"
        ) from None
    if final.exists():  # the same step saved again (a resumed run passing it once more)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def prepare_sharded(root: Path, step: int) -> Path:
    """Rank 0: the empty folder the processes write step `step`'s shards into."""
    tmp = root / f"step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / SHARDS).mkdir(parents=True)
    return tmp / SHARDS


def _required(path: Path) -> tuple[str, ...]:
    if (path / SHARDS).is_dir():
        return (f"{SHARDS}/.metadata", *FILES[1:])
    return FILES


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint in `path` cannot be trusted, or None when it is whole."""
    sums_path = path / CHECKSUMS
    required = _required(path)
    if not sums_path.is_file():  # written before checksums existed: check what we can
        missing = [n for n in required if not (path / n).is_file()]
        return f"{missing[0]} is missing" if missing else None
    try:
        sums = json.loads(sums_path.read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS} is unreadable"
    for name in dict.fromkeys((*required, *sums)):
        file = path / name
        expected = sums.get(name) or {}
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, {expected.get('bytes')} were written"
        if _sha256(file) != expected.get("sha256"):
            return f"{name} fails its checksum"
    return None


class UnreadableCheckpoint(Exception):
    """A checkpoint file that passed (or had no) checksum but still cannot be read."""


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    extras: torch.nn.Module | None = None,
    shards: Callable[[Path], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the student (and `extras`) in place; return (trainer state: optimizer/scheduler/rng,
    json state). `shards` reads a sharded checkpoint's folder (student, projections and
    optimizer) into a sharded run; every process calls it."""
    try:
        state = json.loads((path / "state.json").read_text())
        trainer = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu")
    except Exception as err:  # json, zip and unpickling errors vary with the damage
        raise UnreadableCheckpoint(str(err).strip().splitlines()[0][:120]) from None
    if (shards is None) != (not (path / SHARDS).is_dir()):
        how = "sharded (fsdp2 over several processes)" if shards is None else "whole"
        raise TrainingError(
            f"output.dir: the checkpoint {path} holds a {how} student, which this run cannot "
            "read; resume with the train.distributed.strategy and number of processes the run "
            "started with"
        )
    if shards is not None:
        _read_shards(path, shards)
        return trainer, state
    try:
        load_model(
            model, str(path / "student.safetensors"), device=str(next(model.parameters()).device)
        )
    except SafetensorError as err:
        raise UnreadableCheckpoint(str(err)[:120]) from None
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        first = str(err).strip().splitlines()[0]
        raise TrainingError(
            f"output.dir: the checkpoint {path} holds a student of another shape ({first[:160]}); "
            "resume with the student the run started with, or start over with "
            "output.overwrite=true"
        ) from None
    if extras is not None:
        _load_extras(path, extras)
    return trainer, state


def _read_shards(path: Path, shards: Callable[[Path], None]) -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        shards(path / SHARDS)
    except CheckpointException as err:  # raised on every process alike: they fall back together
        raise UnreadableCheckpoint(str(err).strip().splitlines()[0][:120]) from None


def _load_extras(path: Path, extras: torch.nn.Module) -> None:
    if not (path / EXTRAS).is_file():
        raise TrainingError(
            f"output.dir: the checkpoint {path} has no {EXTRAS} (the feature terms' "
            "projections); resume with the objective the run started with, or start over with "
            "output.overwrite=true"
        )
    try:
        load_model(extras, str(path / EXTRAS), device=str(next(extras.parameters()).device))
    except SafetensorError as err:
        raise UnreadableCheckpoint(str(err)[:120]) from None
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(
            f"output.dir: the checkpoint {path} holds feature projections of another shape "
            f"({first[:160]}); resume with the objective the run started with, or start over "
            "with output.overwrite=true"
        ) from None


def load_latest(
    root: Path,
    model: torch.nn.Module,
    extras: torch.nn.Module | None = None,
    shards: Callable[[Path], None] | None = None,
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The newest whole checkpoint, loaded (student in place); a damaged one is skipped with a
    warning naming the file. Raises TrainingError when none is usable."""
    found = list_checkpoints(root)
    problems = []
    for _, path in reversed(found):
        why = checkpoint_problem(path)
        if why is None:
            try:
                trainer, state = load_checkpoint(path, model, extras, shards)
                return path, trainer, state
            except UnreadableCheckpoint as err:
                why = f"it cannot be read ({err})"
        problems.append(f"{path.name}: {why}")
        log.warning("checkpoint %s is unusable (%s); trying an older one", path, why)
    raise TrainingError(
        f"output.dir: no checkpoint in {root} is usable ({'; '.join(problems[:2])}); start over "
        "with output.overwrite=true or choose another output.dir"
    )
