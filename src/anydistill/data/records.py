"""Where each loaded record came from, and the one place that refuses or drops bad ones.

`Origin` maps a record index to `file line N` (json/jsonl/txt) or `source record index N`, so
a bad record is named in one sentence; `sift_records` refuses a record whose verdict says so
and drops empty ones while they are few.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: reading a batch view never loads datasets/pyarrow
    import datasets

from anydistill.errors import DataError

log = logging.getLogger(__name__)

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
