"""Folders written by `save_to_disk`: each metadata and Arrow file checked, so a damaged
folder is named in one sentence instead of a datasets/pyarrow traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from anydistill.data.records import Origin
from anydistill.errors import DataError
from anydistill.paths import read_text

_RESAVE = "save it again with save_to_disk"


def is_saved(path: Path) -> bool:
    markers = ("dataset_dict.json", "state.json", "dataset_info.json")
    return any((path / m).is_file() for m in markers) or any(path.glob("*.arrow"))


def _json_file(file: Path, folder: Path, field: str) -> Any:
    try:
        return json.loads(read_text(file, field))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{field}: {file} is not valid JSON (line {err.lineno}: {err.msg}), so the saved "
            f"dataset in {folder} is damaged; {_RESAVE}"
        ) from None


def _data_files(path: Path, field: str) -> list[Path]:
    """The Arrow files one saved split lists in its state.json, each checked to exist."""
    state_file = path / "state.json"
    if not state_file.is_file():
        raise DataError(
            f"{field}: {path} looks like a saved dataset but has no state.json; {_RESAVE}"
        )
    state = _json_file(state_file, path, field)
    if (path / "dataset_info.json").is_file():
        _json_file(path / "dataset_info.json", path, field)
    entries = state.get("_data_files") if isinstance(state, dict) else None
    names = [e.get("filename") for e in entries or [] if isinstance(e, dict)]
    if not entries or not all(isinstance(n, str) for n in names):
        raise DataError(f"{field}: {state_file} lists no data files; {_RESAVE}")
    files = [path / n for n in names]
    for file in files:
        if not file.is_file():
            raise DataError(
                f"{field}: {file} is missing though {state_file} lists it, so the saved "
                f"dataset in {path} is damaged; {_RESAVE}"
            )
    return files


def _saved_files(path: Path, field: str) -> list[Path]:
    """Every Arrow file of a saved Dataset or DatasetDict (splits are subfolders)."""
    if not (path / "dataset_dict.json").is_file():
        return _data_files(path, field)
    meta = _json_file(path / "dataset_dict.json", path, field)
    splits = meta.get("splits") if isinstance(meta, dict) else None
    if not isinstance(splits, list) or not splits:
        raise DataError(f"{field}: {path / 'dataset_dict.json'} lists no splits; {_RESAVE}")
    return [f for s in splits for f in _data_files(path / str(s), field)]


def _unreadable_arrow(files: list[Path]) -> tuple[Path, str] | None:
    """The first Arrow file that does not read to its end, and why."""
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                pa.ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowException) as err:
            return file, str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
    return None


def load_saved(path: Path, split: str, field: str) -> tuple[datasets.Dataset, Origin]:
    files = _saved_files(path, field)  # names a missing or broken metadata file first
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as err:
        bad = _unreadable_arrow(files)
        if bad is not None:
            raise DataError(
                f"{field}: {bad[0]} is truncated or not an Arrow file ({bad[1]}), so the saved "
                f"dataset in {path} is damaged; {_RESAVE}"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{field}: cannot read the saved dataset in {path} ({first}); {_RESAVE}"
        ) from None
    ds = _pick_split(loaded, split, str(path), field)
    origin = Origin()
    name = str(path) if isinstance(loaded, datasets.Dataset) else f"{path} split {split!r}"
    origin.add(name, len(ds))
    return ds, origin


def _pick_split(
    loaded: datasets.Dataset | datasets.DatasetDict, split: str, path: str, field: str
) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split not in loaded:
        raise DataError(
            f"{field}: {path} has no split {split!r}; available splits are {sorted(loaded)} "
            "(set data.split / data.eval_split)"
        )
    return loaded[split]
