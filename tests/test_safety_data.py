"""Bad data and text inputs: one sentence naming the file, line and column, exit 2, nothing
written (issue 13). Every CLI case is a row of one table; the loaders' own rules below it."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import yaml
from cli_helpers import fails_cleanly
from conftest import tiny_recipe

from anydistill.config import DataConfig
from anydistill.data.build import load_raw
from anydistill.data.loading import load_records
from anydistill.data.records import EMPTY_SHARE
from anydistill.data.tokenize import tokenize_pairs, tokenize_texts
from anydistill.errors import DataError

# --- building bad inputs ------------------------------------------------------------------


def _jsonl(rows: list, *, blank_first: bool = False) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "data.jsonl"
        head = "\n" if blank_first else ""  # line numbers count blank lines too
        path.write_text(head + "".join(json.dumps(r) + "\n" for r in rows))
        return path

    return make


def _bytes(name: str, raw: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(raw)
        return path

    return make


def _text(name: str, text: str) -> Callable[[Path], Path]:
    return _bytes(name, text.encode())


def _parquet_lists(tmp: Path) -> Path:
    path = tmp / "data.parquet"
    datasets.Dataset.from_dict({"text": [["a", "b"]] * 4}).to_parquet(str(path))
    return path


def _mixed_folder(tmp: Path) -> Path:
    folder = tmp / "mixed"
    folder.mkdir()
    for name, row in (("a", {"text": "2+2=4"}), ("b", {"prompt": "2+2=", "completion": "4"})):
        (folder / f"{name}.jsonl").write_text((json.dumps(row) + "\n") * 4)
    return folder


def _saved(damage: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        folder = tmp / "saved"
        datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(50)]}).save_to_disk(
            str(folder)
        )
        damage(folder)
        return folder

    return make


def _arrow(folder: Path) -> Path:
    return next(folder.glob("*.arrow"))


def _truncate(folder: Path) -> None:
    data = _arrow(folder).read_bytes()
    _arrow(folder).write_bytes(data[: len(data) // 2])


def _task_folder(tmp: Path) -> Path:
    folder = tmp / "tasks"
    folder.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (folder / name).write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    return folder


def _directory(tmp: Path) -> Path:
    (tmp / "folder").mkdir()
    return tmp / "folder"


def _missing(tmp: Path) -> Path:
    return tmp / "gone.jsonl"


LATIN1 = b'{"text": "fine"}\n{"text": "caf\xe9"}\n'

# --- building the command ------------------------------------------------------------------


def _train(tmp: Path, bad: Path, ctx, key: str = "path") -> list:
    recipe = tiny_recipe(output__dir=str(tmp / "run"), **{f"data__{key}": str(bad)})
    del recipe["data"]["synthetic"]
    if key == "eval_path":
        good = tmp / "good.jsonl"
        good.write_text("".join(json.dumps({"text": f"sum {i}"}) + "\n" for i in range(40)))
        recipe["data"]["path"] = str(good)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return ["train", path]


def _train_eval(tmp: Path, bad: Path, ctx) -> list:
    return _train(tmp, bad, ctx, key="eval_path")


def _eval_texts(tmp: Path, bad: Path, ctx) -> list:
    return ["eval", ctx("fake_run"), "--texts", bad, "--max-batches", "1"]


def _eval_task(tmp: Path, bad: Path, ctx) -> list:
    return ["eval", ctx("fake_run"), "--task", bad, "--max-batches", "1"]


def _align(tmp: Path, bad: Path, ctx) -> list:
    # the file is read before either tokenizer is loaded, so these names are never opened
    tok = str(tmp / "tokenizer.json")
    return ["align", "--teacher-tokenizer", tok, "--student-tokenizer", tok, "--file", bad]


def _speculate(tmp: Path, bad: Path, ctx) -> list:
    model = ctx("tiny_pair")[0]
    return ["speculate", "--target", model, "--drafter", model, "--data", bad, "--device", "cpu"]


# (id, bad input, command, fragment of the error line; FILE is the bad input's path)
CASES = [
    # 1. values that are not text
    ("text-list", _jsonl([{"text": ["a", "b"]}] * 3, blank_first=True), _train,
     "data.path: FILE line 2, column `text` holds a list, not a string"),
    ("text-dict-json-array", _text("data.json", '[\n {"text": {"a": 1}},\n {"text": {"a": 2}}\n]'),
     _train, "data.path: FILE line 2, column `text` holds a JSON object, not a string"),
    ("text-mixed-types", _jsonl([{"text": "ok"}, {"text": "ok"}, {"text": ["x"]}]), _train,
     "data.path: FILE line 3, column `text` holds a list but line 1 holds a string"),
    ("completion-dict", _jsonl([{"prompt": "2+2=", "completion": {"v": 4}}] * 3), _train,
     "data.path: FILE line 1, column `completion` holds a JSON object, not a string"),
    ("prompt-list-completion-str",
     _jsonl([{"prompt": [{"role": "user", "content": "hi"}], "completion": "yo"}] * 3), _train,
     "data.path: FILE line 1, column `prompt` holds a list while `completion` does not"),
    ("messages-string", _jsonl([{"messages": "hello"}] * 3), _train,
     "data.path: FILE line 1, column `messages` holds a string, not a list of messages"),
    ("parquet-lists", _parquet_lists, _train,
     "data.path: FILE record index 0, column `text` holds a list, not a string"),
    ("texts-list", _jsonl([{"text": ["a"]}] * 2), _eval_texts,
     "--texts: FILE line 1, column `text` holds a list, not a string"),
    ("prompts-dict", _jsonl([{"prompt": {"q": 1}}] * 2), _speculate,
     "--data: FILE line 1, column `prompt` holds a JSON object, not a string"),
    # 2. empty examples above the share, and folders that mix schemas
    ("all-null-text", _jsonl([{"text": None}] * 5), _train,
     "data.path: 5 of 5 records are empty (null, missing or blank), the first at FILE line 1, "
     "column `text`"),
    ("null-completions", _jsonl([{"prompt": "p", "completion": None}] * 3), _train,
     "the first at FILE line 1, column `completion`"),
    ("blank-completions", _jsonl([{"prompt": "p", "completion": "c"}] * 3
                                 + [{"prompt": "p", "completion": " "}]), _train,
     "1 of 4 records are empty (null, missing or blank), the first at FILE line 4"),
    ("empty-messages", _jsonl([{"messages": []}] * 3), _train,
     "the first at FILE line 1, column `messages`"),
    ("mixed-schema-file", _jsonl([{"text": "a"}] + [{"prompt": "p", "completion": "c"}] * 3),
     _train, "the first at FILE line 1, column `completion`"),
    ("mixed-schema-folder", _mixed_folder, _train,
     "data.path: FILE/a.jsonl has columns ['text'] but FILE/b.jsonl has "
     "['completion', 'prompt']"),
    ("eval-path-null", _jsonl([{"text": None}] * 3), _train_eval,
     "data.eval_path: 3 of 3 records are empty"),
    ("null-prompts", _jsonl([{"prompt": None}] * 2), _speculate,
     "--data: 2 of 2 records are empty (null, missing or blank), the first at FILE line 1"),
    # 3. text that is not UTF-8
    ("latin1-jsonl", _bytes("data.jsonl", LATIN1), _train,
     "data.path: FILE is not UTF-8 text (byte 0xe9 on line 2)"),
    ("latin1-json", _bytes("data.json", b'[{"text": "caf\xe9"}]'), _train,
     "data.path: FILE is not UTF-8 text (byte 0xe9 on line 1)"),
    ("latin1-txt", _bytes("data.txt", b"one\n\ntwo \xff\n"), _train,
     "data.path: FILE is not UTF-8 text (byte 0xff on line 3)"),
    ("latin1-texts-txt", _bytes("texts.txt", b"one\ncaf\xe9\n"), _eval_texts,
     "--texts: FILE is not UTF-8 text (byte 0xe9 on line 2)"),
    ("latin1-texts-jsonl", _bytes("texts.jsonl", LATIN1), _eval_texts,
     "--texts: FILE is not UTF-8 text (byte 0xe9 on line 2)"),
    ("latin1-align", _bytes("in.txt", b"caf\xe9"), _align,
     "--file: FILE is not UTF-8 text (byte 0xe9 on line 1)"),
    ("latin1-task", _bytes("task.jsonl", b'{"prompt": "caf\xe9", "answer": "1"}\n'), _eval_task,
     "--task: FILE is not UTF-8 text (byte 0xe9 on line 1)"),
    ("latin1-prompts", _bytes("prompts.jsonl", b'{"prompt": "caf\xe9"}\n'), _speculate,
     "--data: FILE is not UTF-8 text (byte 0xe9 on line 1)"),
    # 4. damaged save_to_disk folders
    ("saved-arrow-deleted", _saved(lambda f: _arrow(f).unlink()), _train,
     "data.path: FILE/data-00000-of-00001.arrow is missing though FILE/state.json lists it"),
    ("saved-info-corrupt", _saved(lambda f: (f / "dataset_info.json").write_text("{oops")),
     _train, "data.path: FILE/dataset_info.json is not valid JSON (line 1"),
    ("saved-arrow-truncated", _saved(_truncate), _train,
     "data.path: FILE/data-00000-of-00001.arrow is truncated or not an Arrow file"),
    ("saved-no-state", _saved(lambda f: (f / "state.json").unlink()), _train,
     "data.path: FILE looks like a saved dataset but has no state.json"),
    # 5. task files that are not JSON / JSONL
    ("task-text-file", _text("notes.txt", "What is 2+2?\nFour.\n"), _eval_task,
     "--task: FILE line 1 is not valid JSON"),
    ("task-bad-line", _text("task.jsonl", '{"prompt": "a", "answer": "1"}\n\n{"prompt": "b",\n'),
     _eval_task, "--task: FILE line 3 is not valid JSON"),
    ("task-bad-json", _text("task.json", '[\n {"prompt": "a", "answer": "1"},\n {"prompt"}\n]'),
     _eval_task, "--task: FILE line 3 is not valid JSON"),
    ("task-no-prompt", _text("task.jsonl", '{"prompt": "a", "answer": "1"}\n{"answer": "2"}\n'),
     _eval_task, "--task: FILE line 2 has no prompt"),
    ("task-not-object", _text("task.json", "[\n 1,\n 2\n]"), _eval_task,
     "--task: FILE line 2 is not a JSON object"),
    # 6. directories where a file belongs, and paths that do not exist
    ("data-missing", _missing, _train, "data.path: FILE does not exist"),
    ("data-empty-folder", _directory, _train, "data.path: directory FILE holds no dataset files"),
    ("texts-directory", _directory, _eval_texts, "--texts: FILE is a directory, not a file"),
    ("texts-missing", _missing, _eval_texts, "--texts: FILE does not exist"),
    ("align-directory", _directory, _align, "--file: FILE is a directory, not a file"),
    ("task-missing", _missing, _eval_task, "--task: FILE does not exist"),
    ("task-folder-of-two", _task_folder, _eval_task,
     "--task: FILE should hold one .jsonl/.json/.jsonl.gz data file, found 2"),
    ("prompts-missing", _missing, _speculate, "--data: FILE does not exist"),
]  # fmt: skip


@pytest.fixture(scope="module")
def fake_run(tiny_pair, tmp_path_factory) -> Path:
    """A run directory whose final student is a saved tiny model: `eval` needs no training."""
    run = tmp_path_factory.mktemp("safety_run")
    recipe = tiny_recipe(output__dir=str(run), eval__teacher=False, data__synthetic_size=40)
    (run / "config.yaml").write_text(yaml.safe_dump(recipe))
    shutil.copytree(tiny_pair[0], run / "final")
    return run


@pytest.mark.parametrize("make,command,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence(make, command, fragment, tmp_path, request):
    bad = make(tmp_path)
    args = command(tmp_path, bad, request.getfixturevalue)
    roots = [tmp_path]
    if command in (_eval_texts, _eval_task):
        roots.append(request.getfixturevalue("fake_run"))
    fails_cleanly(args, fragment.replace("FILE", str(bad)), *roots)


# --- the loaders' rules ---------------------------------------------------------------------


def _rows_file(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_few_empty_records_are_dropped_with_one_warning(tmp_path, caplog):
    rows = [{"text": f"text {i}"} for i in range(150)]
    rows[7]["text"] = ""
    cfg = DataConfig(path=_rows_file(tmp_path, rows), eval_fraction=0)
    with caplog.at_level(logging.WARNING):
        train, _ = load_raw(cfg, seed=0)
    assert len(train) == 149 and "" not in train["text"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "dropped 1 of 150 records" in warnings[0] and "line 8, column `text`" in warnings[0]


def test_the_share_is_one_percent(tmp_path):
    assert EMPTY_SHARE == 0.01
    rows = [{"prompt": "p", "completion": f"c{i}"} for i in range(100)]
    rows[3]["completion"] = None  # 1 of 100: dropped
    assert len(load_raw(DataConfig(path=_rows_file(tmp_path, rows), eval_fraction=0), 0)[0]) == 99
    rows[4]["completion"] = None  # 2 of 100: refused
    with pytest.raises(DataError, match=r"2 of 100 records are empty .* line 4, column"):
        load_raw(DataConfig(path=_rows_file(tmp_path, rows), eval_fraction=0), 0)


def test_chat_prompt_and_completion_lists_stay_legitimate(tmp_path):
    user, bot = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}
    rows = [{"prompt": [user], "completion": [bot]}] * 4
    train, _ = load_raw(DataConfig(path=_rows_file(tmp_path, rows), eval_fraction=0), 0)
    assert len(train) == 4


def test_every_key_of_every_record_is_kept(tmp_path):
    """`Dataset.from_list` keeps only the first record's keys; later ones must not vanish."""
    ds = load_records(_rows_file(tmp_path, [{"text": "a"}, {"text": "b", "source": "web"}]))
    assert ds.column_names == ["text", "source"] and ds["source"] == [None, "web"]


def test_txt_records_name_their_first_line(tmp_path):
    from anydistill.data.loading import load_located

    (tmp_path / "d.txt").write_text("\n\nfirst doc\nstill first\n\n\n  second\n\nthird")
    ds, origin = load_located(str(tmp_path / "d.txt"))
    assert ds["text"] == ["first doc\nstill first", "second", "third"]
    assert [origin.where(i).rsplit(" ", 2)[1:] for i in range(3)] == [
        ["line", "3"],
        ["line", "7"],
        ["line", "9"],
    ]


def test_tokenizing_refuses_values_that_are_not_text():
    """The last line of defence: no list or dict is ever tokenized as its Python repr."""
    tok = SimpleNamespace(bos_token_id=0, eos_token_id=1)  # refused before it is called
    with pytest.raises(DataError, match="column `text` holds a list, not a string"):
        tokenize_texts([["a", "b"]], tok)
    with pytest.raises(DataError, match="column `answer` holds a JSON object, not a string"):
        tokenize_pairs(["q"], [{"a": 1}], tok, ("question", "answer"))
