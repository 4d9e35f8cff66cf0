"""Read raw records from a file, a local directory or the Hugging Face hub into a `Dataset`.

Local files are read in memory (no HF cache writes), so tests and tiny runs leave nothing
behind; only hub names go through `datasets.load_dataset`. Every loader also reports where
each record came from (`Origin`: file and line, or record index), so a bad record can be
named in one sentence; `sift_records` is the one place that refuses or drops bad records.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from anydistill.data.records import Origin, describe
from anydistill.data.saved import is_saved, load_saved
from anydistill.errors import DataError
from anydistill.paths import read_text

log = logging.getLogger(__name__)

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
    """Load records from `path` as a `datasets.Dataset` (see `load_located`)."""
    return load_located(path, format, subset, split, max_examples, field)[0]


def load_located(
    path: str,
    format: str = "auto",
    subset: str | None = None,
    split: str = "train",
    max_examples: int | None = None,
    field: str = "data.path",
) -> tuple[datasets.Dataset, Origin]:
    """Records from `path` and where each came from.

    `path` may be a .jsonl/.json, .parquet or .txt file, a directory written by
    `save_to_disk` (a `DatasetDict` is indexed by `split`), a directory of jsonl/parquet
    files, or a hub dataset name. `field` names the config key in error messages.
    """
    local = Path(path).expanduser()
    if format == "hf" and not local.exists():
        ds, origin = _load_hub(path, subset, split, field)
    elif local.is_dir():
        ds, origin = _load_dir(local, format, split, field)
    elif local.exists():
        ds, origin = _load_file(local, format, field)
    elif _looks_local(path):
        raise DataError(f"{field}: {path} does not exist; {_HINT}")
    else:
        ds, origin = _load_hub(path, subset, split, field)
    if len(ds) == 0:
        raise DataError(f"{field}: {path} is empty; give a dataset with at least one record")
    if max_examples is not None and len(ds) > max_examples:
        ds = ds.select(range(max_examples))
    return ds, origin


def _looks_local(path: str) -> bool:
    """A path-like string that is missing is a typo, not a hub name; say so."""
    suffix = Path(path).suffix.lower()
    known = JSON_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
    starts = path.startswith((".", "/", "~"))
    return starts or path.endswith("/") or suffix in known or path.count("/") > 1


def _load_file(path: Path, format: str, field: str) -> tuple[datasets.Dataset, Origin]:
    kind = format if format != "auto" else _kind_of(path, field)
    origin = Origin()
    if kind in ("jsonl", "json"):
        rows, lines = _read_json(path, field)
        ds = _from_rows(rows, lines, path, field)
    elif kind == "parquet":
        ds, lines = _read_parquet(path, field), None
    elif kind == "text":
        ds, lines = _read_text(path, field)
    else:
        raise DataError(f"{field}: format {kind!r} cannot read the file {path}; {_HINT}")
    origin.add(str(path), len(ds), lines)
    return ds, origin


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


_BETWEEN_ITEMS = re.compile(r"[\s,]*")


def json_array_lines(text: str) -> tuple[list[Any], list[int]]:
    """The items of a valid top-level JSON array and the line each one starts on."""
    items = json.loads(text)
    decoder = json.JSONDecoder()
    lines: list[int] = []
    pos, line, counted = text.index("[") + 1, 1, 0
    for _ in items:
        pos = _BETWEEN_ITEMS.match(text, pos).end()  # type: ignore[union-attr]
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        pos = decoder.raw_decode(text, pos)[1]
    return items, lines


def _read_json(path: Path, field: str) -> tuple[list[dict], list[int]]:
    """JSON lines, or one JSON array of records (`.json`), with file:line on errors."""
    text = read_text(path, field, _HINT)
    if text.lstrip().startswith("["):
        try:
            rows, lines = json_array_lines(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{field}: {path} line {err.lineno} is not valid JSON ({err.msg})"
            ) from None
        for row, line in zip(rows, lines, strict=True):
            if not isinstance(row, dict):
                raise DataError(f"{field}: {path} line {line} is not a JSON object")
        return rows, lines
    return json_lines(text, path, field)


def json_lines(text: str, path: Path, field: str) -> tuple[list[dict], list[int]]:
    """The objects of a JSON-lines text and the line of each (blank lines skipped); a line
    that is not a JSON object is one sentence naming `field`, the file and the line."""
    rows, lines = [], []
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
        lines.append(lineno)
    return rows, lines


def _from_rows(rows: list[dict], lines: list[int], path: Path, field: str) -> datasets.Dataset:
    if not rows:
        return datasets.Dataset.from_dict({})
    # Every key any record has, not only the first record's (`from_list` would silently drop
    # the keys that first appear later); records without one get nulls, which the record
    # checks then name.
    keys = list(dict.fromkeys(k for row in rows for k in row))
    try:
        return datasets.Dataset.from_dict({k: [row.get(k) for row in rows] for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        clash = _type_clash(rows, lines, keys)
        if clash:
            raise DataError(
                f"{field}: {path} {clash}; give every record the same value types"
            ) from None
        first = str(err).strip().splitlines()[0]
        raise DataError(
            f"{field}: the records of {path} do not share one schema ({first}); "
            "give every record the same keys and value types"
        ) from None


def _type_clash(rows: list[dict], lines: list[int], keys: list[str]) -> str | None:
    """`line N, column `k` holds a list but line M holds a string`: the first value whose
    kind differs from the first non-null value of its column."""
    for key in keys:
        seen: tuple[str, int] | None = None
        for row, line in zip(rows, lines, strict=True):
            value = row.get(key)
            if value is None:
                continue
            kind = describe(value)
            if seen is None:
                seen = (kind, line)
            elif kind != seen[0]:
                return (
                    f"line {line}, column `{key}` holds {kind} but line {seen[1]} holds {seen[0]}"
                )
    return None


def _read_parquet(path: Path, field: str) -> datasets.Dataset:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{field}: {path} is not a readable parquet file ({err})") from None
    return datasets.Dataset(InMemoryTable(table))


def _read_text(path: Path, field: str) -> tuple[datasets.Dataset, list[int]]:
    """One record per blank-line-separated document, so packing sees document boundaries."""
    text = read_text(path, field, _HINT).replace("\r\n", "\n")
    docs, lines, line = [], [], 1
    for piece in text.split("\n\n"):
        doc = piece.strip()
        if doc:
            docs.append(doc)
            lines.append(line + piece[: piece.index(doc[0])].count("\n"))
        line += piece.count("\n") + 2
    return datasets.Dataset.from_dict({"text": docs}), lines


def _load_dir(path: Path, format: str, split: str, field: str) -> tuple[datasets.Dataset, Origin]:
    if is_saved(path):
        return load_saved(path, split, field)
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in JSON_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
    )
    if not files:
        raise DataError(f"{field}: directory {path} holds no dataset files; {_HINT}")
    loaded = [(p, *_load_file(p, format, field)) for p in files]
    loaded = [(p, ds, origin) for p, ds, origin in loaded if len(ds) > 0]
    if not loaded:
        return datasets.Dataset.from_dict({}), Origin()
    _check_same_columns(path, [(p, ds) for p, ds, _ in loaded], field)
    try:
        ds = datasets.concatenate_datasets([ds for _, ds, _ in loaded])
    except ValueError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(
            f"{field}: the files in {path} have different column types ({first}); "
            "keep one schema per directory"
        ) from None
    origin = Origin()
    for _, _, part in loaded:
        origin.extend(part)
    return ds, origin


def _check_same_columns(folder: Path, parts: list[tuple[Path, datasets.Dataset]], field: str):
    """Arrow would fill a column one file lacks with nulls, turning its records into empty
    examples; refuse the mix instead, naming the first two files that differ."""
    first, first_ds = parts[0]
    for other, ds in parts[1:]:
        if set(ds.column_names) != set(first_ds.column_names):
            raise DataError(
                f"{field}: {first} has columns {sorted(first_ds.column_names)} but {other} has "
                f"{sorted(ds.column_names)}; give every file in {folder} the same columns"
            )


def _load_hub(
    path: str, subset: str | None, split: str, field: str
) -> tuple[datasets.Dataset, Origin]:
    try:
        loaded = datasets.load_dataset(path, subset, split=split)
    except ValueError as err:
        # `datasets` reports an unknown split as a ValueError listing the available ones.
        first = str(err).strip().splitlines()[0]
        raise DataError(f"{field}: cannot load split {split!r} of {path!r} ({first})") from None
    except Exception as err:  # hub/network errors vary by backend; keep one sentence
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{field}: {path!r} is no local file or folder and cannot be loaded from the hub "
            f"({first}); {_HINT}"
        ) from None
    if isinstance(loaded, datasets.IterableDataset):
        raise DataError(f"{field}: {path!r} loaded as a streaming dataset, which is unsupported")
    origin = Origin()
    origin.add(f"dataset {path!r} split {split!r}", len(loaded))
    return loaded, origin
