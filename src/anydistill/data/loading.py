"""Read raw records from a file, a local directory or the Hugging Face hub into a `Dataset`.

Local files are read in memory (no HF cache writes), so tests and tiny runs leave nothing
behind; only hub names go through `datasets.load_dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from anydistill.errors import DataError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".text", ".md")
_HINT = "give a .jsonl, .parquet, .txt file, a saved dataset directory or a hub dataset name"


def load_records(
    path: str,
    format: str = "auto",
    subset: str | None = None,
    split: str = "train",
    max_examples: int | None = None,
    field: str = "data.path",
) -> datasets.Dataset:
    """Load records from `path` as a `datasets.Dataset`.

    `path` may be a .jsonl/.json, .parquet or .txt file, a directory written by
    `save_to_disk` (a `DatasetDict` is indexed by `split`), a directory of jsonl/parquet
    files, or a hub dataset name. `field` names the config key in error messages.
    """
    local = Path(path).expanduser()
    if format == "hf" and not local.exists():
        ds = _load_hub(path, subset, split, field)
    elif local.is_file():
        ds = _load_file(local, format, field)
    elif local.is_dir():
        ds = _load_dir(local, format, split, field)
    elif _looks_local(path):
        raise DataError(f"{field}: {path} does not exist; {_HINT}")
    else:
        ds = _load_hub(path, subset, split, field)
    if len(ds) == 0:
        raise DataError(f"{field}: {path} is empty; give a dataset with at least one record")
    if max_examples is not None and len(ds) > max_examples:
        ds = ds.select(range(max_examples))
    return ds


def _looks_local(path: str) -> bool:
    """A path-like string that is missing is a typo, not a hub name; say so."""
    suffix = Path(path).suffix.lower()
    known = JSON_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
    return path.startswith((".", "/", "~")) or suffix in known or path.count("/") > 1


def _load_file(path: Path, format: str, field: str) -> datasets.Dataset:
    kind = format if format != "auto" else _kind_of(path, field)
    if kind in ("jsonl", "json"):
        return _from_rows(_read_json(path, field), path, field)
    if kind == "parquet":
        return _read_parquet(path, field)
    if kind == "text":
        return _read_text(path)
    raise DataError(f"{field}: format {kind!r} cannot read the file {path}; {_HINT}")


def _kind_of(path: Path, field: str) -> str:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise DataError(
        f"{field}: cannot tell the format of {path} from its suffix; rename it or set "
        "data.format to jsonl, parquet or text"
    )


def _read_json(path: Path, field: str) -> list[dict]:
    """JSON lines, or one JSON array of records (`.json`), with file:line on errors."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{field}: {path} line {err.lineno} is not valid JSON ({err.msg})"
            ) from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{field}: {path} item {i} is not a JSON object")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{field}: {path} line {lineno} is not valid JSON ({err.msg}); "
                "each line must hold one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{field}: {path} line {lineno} is not a JSON object")
        rows.append(row)
    return rows


def _from_rows(rows: list[dict], path: Path, field: str) -> datasets.Dataset:
    if not rows:
        return datasets.Dataset.from_dict({})
    try:
        return datasets.Dataset.from_list(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(
            f"{field}: the records of {path} do not share one schema ({first}); "
            "give every record the same keys and value types"
        ) from None


def _read_parquet(path: Path, field: str) -> datasets.Dataset:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{field}: {path} is not a readable parquet file ({err})") from None
    return datasets.Dataset(InMemoryTable(table))


def _read_text(path: Path) -> datasets.Dataset:
    """One record per blank-line-separated document, so packing sees document boundaries."""
    text = path.read_text(encoding="utf-8")
    docs = [d.strip() for d in text.replace("\r\n", "\n").split("\n\n")]
    return datasets.Dataset.from_dict({"text": [d for d in docs if d]})


def _load_dir(path: Path, format: str, split: str, field: str) -> datasets.Dataset:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return _pick_split(loaded, split, str(path), field)
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in JSON_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
    )
    if not files:
        raise DataError(f"{field}: directory {path} holds no dataset files; {_HINT}")
    parts = [_load_file(p, format, field) for p in files]
    parts = [p for p in parts if len(p) > 0]
    if not parts:
        return datasets.Dataset.from_dict({})
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(
            f"{field}: the files in {path} have different columns ({first}); "
            "keep one schema per directory"
        ) from None


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


def _load_hub(path: str, subset: str | None, split: str, field: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_dataset(path, subset, split=split)
    except ValueError as err:
        # `datasets` reports an unknown split as a ValueError listing the available ones.
        first = str(err).strip().splitlines()[0]
        raise DataError(f"{field}: cannot load split {split!r} of {path!r} ({first})") from None
    except Exception as err:  # hub/network errors vary by backend; keep one sentence
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{field}: cannot load dataset {path!r} ({first}); {_HINT}") from None
    if isinstance(loaded, datasets.IterableDataset):
        raise DataError(f"{field}: {path!r} loaded as a streaming dataset, which is unsupported")
    return loaded
