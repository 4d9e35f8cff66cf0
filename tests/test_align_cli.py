"""`anydistill align` through typer's CliRunner, on tokenizers trained in the test."""

from __future__ import annotations

import json

import pytest
import typer
from test_align import train_tokenizers
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from anydistill.align.cli import align_cmd

app = typer.Typer(add_completion=False)
app.command("align")(align_cmd)


@app.command()
def other() -> None:
    """A second command, so `align` stays a named subcommand as in the real CLI."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A byte-level tokenizer as a tokenizer.json file, a wordpiece one as a folder."""
    root = tmp_path_factory.mktemp("align_cli")
    toks = train_tokenizers()
    file = root / "bl.json"
    toks["byte_level"].save(str(file))
    folder = root / "wp"
    PreTrainedTokenizerFast(tokenizer_object=toks["wordpiece"]).save_pretrained(folder)
    return {"file": str(file), "folder": str(folder), "root": root}


def _run(*args: str):
    return CliRunner().invoke(app, ["align", *args])


def test_table_shows_chunks_side_by_side(saved):
    r = _run(
        "--teacher-tokenizer", saved["file"], "--student-tokenizer", saved["folder"],
        "--text", "The quick fox 😀",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "teacher tokens" in r.output and "student tokens" in r.output
    assert "the" in r.output and "The" in r.output  # wordpiece token, original bytes


def test_json_rows_and_file_input(saved):
    text_file = saved["root"] / "in.txt"
    text_file.write_text("the cat  sat\n", encoding="utf-8")
    r = _run(
        "--teacher-tokenizer", saved["folder"], "--student-tokenizer", saved["file"],
        "--file", str(text_file), "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["chunk"] for row in rows] == list(range(len(rows)))
    assert "".join(row["bytes"] for row in rows).replace("␣", " ") == "the cat  sat\\n"


def test_check_prints_one_json_object(saved):
    r = _run(
        "--teacher-tokenizer", saved["file"], "--student-tokenizer", saved["folder"],
        "--check", "30", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["pairs_checked"] == 30 and result["mismatches"] == 0
    assert result["tokens_per_s"] > 0 and "tokens_per_s_with_tokenize" in result


@pytest.mark.parametrize(
    "args,message",
    [
        (["--text", "a", "--file", "x.txt"], "not both"),
        ([], "--text or --file"),
        (["--file", "/nonexistent/in.txt"], "does not exist"),
        (["--check", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(saved, args, message):
    r = _run("--teacher-tokenizer", saved["file"], "--student-tokenizer", saved["file"], *args)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_missing_tokenizer_is_an_error(saved):
    r = _run("--teacher-tokenizer", "/nonexistent/tokenizer.json", "--student-tokenizer",
             saved["file"], "--text", "hi")  # fmt: skip
    assert r.exit_code == 2
    assert r.output.startswith("error: --teacher-tokenizer") and "does not exist" in r.output
