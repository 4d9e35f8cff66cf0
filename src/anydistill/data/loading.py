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
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from anydistill.errors import DataError
from anydistill.paths import read_text

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".text", ".md")
_HINT = "give a .jsonl, .parquet, .txt file, a saved dataset directory or a hub dataset name"
_RESAVE = "save it again with save_to_disk"
# Empty records (null, missing or blank) are dropped with one warning while they are at most
# 1% of a dataset: a few stray blanks are noise, more is a broken file or a schema mix-up.
EMPTY_SHARE = 0.01


@dataclass
class Origin:
    """Where each record of a loaded dataset came from: parts of consecutive records, each a
    source name and the line of every record in it (None where lines mean nothing)."""

    starts: list[int] = dc_field(default_factory=list)
    parts: list[tuple[str, list[int] | None]] = dc_field(default_factory=list)
    total: int = 0

    def add(self, name: str, count: int, lines: list[int] | None = None) -> None:
        if count:
            self.starts.append(self.total)
            self.parts.append((name, lines))
            self.total += count

    def extend(self, other: Origin) -> None:
        for k, (name, lines) in enumerate(other.parts):
            end = other.starts[k + 1] if k + 1 < len(other.starts) else other.total
            self.add(name, end - other.starts[k], lines)

    def where(self, index: int) -> str:
        """`file line N` (json/jsonl/txt) or `source record index N` (the rest)."""
        k = bisect_right(self.starts, index) - 1
        name, lines = self.parts[k]
        i = index - self.starts[k]
        return f"{name} line {lines[i]}" if lines else f"{name} record index {i}"


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
    if _is_saved(path):
        return _load_saved(path, split, field)
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


# --- folders written by `save_to_disk` ---------------------------------------------------


def _is_saved(path: Path) -> bool:
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


def _load_saved(path: Path, split: str, field: str) -> tuple[datasets.Dataset, Origin]:
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


# --- refusing or dropping bad records -----------------------------------------------------

# A record's verdict: None when it is fine, else (column, None) when it is empty or
# (column, what is wrong with it, as the end of a sentence) when it must be refused.
Verdict = tuple[str, str | None] | None


def describe(value: Any) -> str:
    """`a list`, `a JSON object`, ... : what a value is, for an error message."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names = {str: "a string", list: "a list", dict: "a JSON object", bytes: "bytes"}
    return names.get(type(value), f"a {type(value).__name__}")


def string_verdict(value: Any, column: str, fix: str) -> Verdict:
    """A text column's value: a non-blank string is fine, null or blank is empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return column, None
    if not isinstance(value, str):
        return column, f"holds {describe(value)}, not a string; {fix}"
    return None


def sift_records(
    ds: datasets.Dataset,
    origin: Origin,
    columns: list[str],
    verdict: Callable[[dict[str, Any]], Verdict],
    field: str,
) -> datasets.Dataset:
    """`ds` without its empty records, or one `DataError` naming the first bad record.

    A record `verdict` refuses stops everything; empty ones are dropped with one warning
    while they are at most `EMPTY_SHARE` of `ds`, else the first is named.
    """
    empty: list[int] = []
    first_column = ""
    index = 0
    for batch in ds.select_columns(columns).iter(batch_size=1000):
        for values in zip(*(batch[c] for c in columns), strict=True):
            found = verdict(dict(zip(columns, values, strict=True)))
            if found is not None:
                column, wrong = found
                if wrong is not None:
                    raise DataError(f"{field}: {origin.where(index)}, column `{column}` {wrong}")
                first_column = first_column or column
                empty.append(index)
            index += 1
    if not empty:
        return ds
    first = f"{origin.where(empty[0])}, column `{first_column}`"
    if len(empty) > EMPTY_SHARE * len(ds):
        raise DataError(
            f"{field}: {len(empty)} of {len(ds)} records are empty (null, missing or blank), "
            f"the first at {first}; fill them in or remove them (up to {EMPTY_SHARE:.0%} of "
            "the records are dropped with a warning)"
        )
    log.warning(
        "%s: dropped %d of %d records that are empty (null, missing or blank), the first at %s",
        field,
        len(empty),
        len(ds),
        first,
    )
    drop = set(empty)
    # keep_in_memory: never write index files into a user's saved dataset directory
    return ds.select([i for i in range(len(ds)) if i not in drop], keep_in_memory=True)


def string_column(ds: datasets.Dataset, origin: Origin, column: str, field: str) -> list[str]:
    """The strings of one text column, refusing other values and sifting empty ones."""
    fix = f"give `{column}` as plain text"

    def verdict(record: dict[str, Any]) -> Verdict:
        return string_verdict(record[column], column, fix)

    kept = sift_records(ds, origin, [column], verdict, field)
    return list(kept[column])
