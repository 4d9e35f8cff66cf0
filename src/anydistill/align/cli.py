"""`anydistill align`: show how two tokenizers' tokens line up, or check it on random text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from anydistill.cli_common import fail
from anydistill.errors import AnydistillError, ConfigError, DataError, ModelError
from anydistill.paths import read_text


def load_any_tokenizer(spec: str, field: str) -> Any:
    """A fast tokenizer from a tokenizer.json file, a directory or a hub id."""
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        looks_local = spec.startswith((".", "/", "~")) or spec.endswith(".json")
        if looks_local and not path.is_dir():
            raise DataError(
                f"{field}: {spec} does not exist; give a tokenizer.json, a folder or a hub id"
            )
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else spec)
    except AnydistillError:
        raise
    except Exception as err:  # OSError, ValueError, JSON errors from the loaders
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelError(f"{field}: cannot load a tokenizer from {spec!r} ({first})") from None


def _read_text(text: str | None, file: Path | None) -> str:
    if text is not None and file is not None:
        raise ConfigError("give either --text or --file, not both")
    if text is None and file is None:
        raise ConfigError("give the text to align with --text or --file (or use --check N)")
    if file is not None:
        return read_text(file, "--file", "give a UTF-8 text file")
    return text or ""


_VISIBLE = str.maketrans({" ": "␣", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _show(piece: bytes | None, name: str) -> str:
    """A token or byte run as a person reads it: spaces as ␣, stray bytes as \\xNN."""
    if piece is None:
        return name
    return piece.decode("utf-8", "backslashreplace").translate(_VISIBLE)


def _rows(pair, t_view, s_view) -> list[dict]:
    al, data = pair.alignment, pair.text.encode("utf-8")
    rows = [{"chunk": k, "teacher": [], "student": []} for k in range(al.n_chunks)]
    masked = {"teacher": [], "student": []}
    sides = (
        ("teacher", pair.teacher_ids, al.teacher_chunk, t_view),
        ("student", pair.student_ids, al.student_chunk, s_view),
    )
    for side, ids, chunks, view in sides:
        for i, c in zip(ids.tolist(), chunks.tolist(), strict=True):
            piece = _show(view.token_bytes[i], view.backend.id_to_token(i))
            (rows[c][side] if c >= 0 else masked[side]).append(piece)
    for row, (lo, hi) in zip(rows, al.chunk_spans().tolist(), strict=True):
        row["bytes"] = _show(data[lo:hi], "")
    if masked["teacher"] or masked["student"]:
        rows.append({"chunk": -1, **masked, "bytes": "(masked: no counterpart)"})
    return rows


def align_cmd(
    teacher_tokenizer: Annotated[str, typer.Option(help="tokenizer.json, folder or hub id")],
    student_tokenizer: Annotated[str, typer.Option(help="tokenizer.json, folder or hub id")],
    text: Annotated[str | None, typer.Option(help="text to align")] = None,
    file: Annotated[Path | None, typer.Option(help="UTF-8 file to align")] = None,
    check: Annotated[int | None, typer.Option(help="check N random texts instead")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random texts for --check")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show teacher and student tokens chunk by chunk, or check alignment on random text.

    With --check N the exit status is 1 when any of the N texts broke an invariant.
    """
    try:
        if check is None:
            body = _read_text(text, file)
        elif check < 1:
            raise ConfigError(f"--check must be at least 1, got {check}")
        teacher = load_any_tokenizer(teacher_tokenizer, "--teacher-tokenizer")
        student = load_any_tokenizer(student_tokenizer, "--student-tokenizer")
        from anydistill.align.check import check_pair
        from anydistill.align.chunks import align_texts
        from anydistill.align.token_bytes import token_view

        t_view, s_view = token_view(teacher), token_view(student)
    except AnydistillError as err:
        fail(str(err))
    if check is not None:
        result = check_pair(t_view, s_view, n=check, seed=seed)
        if as_json:
            typer.echo(json.dumps({k: v for k, v in result.items() if k != "examples"}))
        else:
            typer.echo(
                f"{result['pairs_checked']} texts, {result['mismatches']} mismatches, "
                f"{result['tokens_per_s']:,} tokens/s aligning "
                f"({result['tokens_per_s_with_tokenize']:,} with tokenizing)"
            )
            for ex in result["examples"]:
                typer.echo(f"  {ex['text']!r}: {'; '.join(ex['problems'])}")
        raise typer.Exit(1 if result["mismatches"] else 0)
    rows = _rows(align_texts(t_view, s_view, body), t_view, s_view)
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("chunk", "teacher tokens", "student tokens", "bytes")
    for row in rows:
        cells = (" | ".join(row["teacher"]), " | ".join(row["student"]), row["bytes"])
        table.add_row(str(row["chunk"]), *(Text(c) for c in cells))
    Console().print(table)
