"""A damaged teacher cache is refused in one sentence naming the file, and rerunning
`anydistill cache` with the same config repairs it, ending byte-identical to an unbroken run.

Corrupt or lost manifests and key files, deleted shards, edited keys, a full disk mid-shard,
and an `--out` that cannot be written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import fails_cleanly, fails_with, run_cli
from conftest import tiny_recipe

from anydistill.config import config_from_dict
from anydistill.teachers.cache import manifest as manifest_mod
from anydistill.teachers.cache import writer as writer_mod
from anydistill.teachers.cache.command import CacheSettings, write_cache
from anydistill.teachers.cache.manifest import shard_ok

SETTINGS = CacheSettings(k=8, value_bits=12, samples_per_shard=12, batch_size=8)
CLI_SETTINGS = ["--k", "8", "--value-bits", "12", "--samples-per-shard", "12", "--batch-size", "8"]


def _recipe(root: Path) -> dict:
    return tiny_recipe(
        "fkl",
        data__synthetic_size=48,
        data__seq_len=64,
        output__dir=str(root / "run"),
        train__progress=False,
        train__max_steps=2,
        train__warmup_steps=0,
        eval__every=0,
        output__report=False,
    )


def _files(root: Path) -> dict[str, bytes]:
    """What must match an unbroken run byte for byte: every shard file and the manifest."""
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*"))} | {
        "manifest.json": (root / "manifest.json").read_bytes()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict, dict[str, bytes]]:
    """An unbroken cache of four shards, its recipe and its bytes."""
    root = tmp_path_factory.mktemp("reference")
    recipe = _recipe(root)
    write_cache(config_from_dict(recipe), root / "cache", SETTINGS, progress=False)
    files = _files(root / "cache")
    assert len([n for n in files if n.endswith(".rows")]) == 4
    return root / "cache", recipe, files


@pytest.fixture
def cache_copy(reference, tmp_path) -> Path:
    return Path(shutil.copytree(reference[0], tmp_path / "cache"))


@pytest.fixture
def shard_writes(monkeypatch) -> list[int]:
    """The indices of the shards the writer recomputes (rather than keeps)."""
    written: list[int] = []
    real = writer_mod._write_shard

    def counting(job, index, chunk):
        written.append(index)
        return real(job, index, chunk)

    monkeypatch.setattr(writer_mod, "_write_shard", counting)
    return written


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_key(path: Path) -> None:
    keys = json.loads(path.read_text())
    keys["keys"][0] = "0" * 32
    path.write_text(json.dumps(keys))


# name: (damage, what the reader says, shards the writer recomputes on a rerun)
DAMAGE = {
    "manifest truncated": (
        lambda c: _truncate(c / "manifest.json"),
        "manifest.json is corrupt (not JSON",
        [],
    ),
    "manifest not json": (
        lambda c: (c / "manifest.json").write_bytes(b"\x00\xff garbage"),
        "manifest.json is corrupt (not UTF-8",
        [],
    ),
    "manifest not a manifest": (
        lambda c: (c / "manifest.json").write_text("[1, 2]"),
        "manifest.json is corrupt (not a cache manifest",
        [],
    ),
    "keys truncated": (
        lambda c: _truncate(c / "shard-00001.keys.json"),
        "shard-00001.keys.json fails its checksum",
        [1],
    ),
    "keys edited": (
        lambda c: _edit_key(c / "shard-00002.keys.json"),
        "shard-00002.keys.json fails its checksum (changed since `anydistill cache` wrote it)",
        [2],
    ),
    "rows deleted": (
        lambda c: (c / "shard-00003.rows").unlink(),
        "shard 3 file",
        [3],
    ),
    "keys deleted": (
        lambda c: (c / "shard-00000.keys.json").unlink(),
        "shard-00000.keys.json is missing",
        [0],
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_reader_names_the_damaged_file(case, reference, cache_copy, tmp_path, write_recipe):
    damage, message, _ = DAMAGE[case]
    damage(cache_copy)
    data = reference[1] | {"output": {"dir": str(tmp_path / "run"), "report": False}}
    data["teacher"] = {"kind": "cache", "path": str(cache_copy), "tail": "bucket"}
    line = fails_cleanly(["train", write_recipe(data)], message, tmp_path)
    assert "rerun `anydistill cache` with the same config to re" in line


@pytest.mark.parametrize("case", list(DAMAGE))
def test_rerunning_the_writer_repairs(case, reference, cache_copy, shard_writes):
    _, recipe, files = reference
    DAMAGE[case][0](cache_copy)
    write_cache(config_from_dict(recipe), cache_copy, SETTINGS, progress=False)
    assert _files(cache_copy) == files
    assert shard_writes == DAMAGE[case][2]  # verified shards are kept, not recomputed


def test_a_lost_manifest_and_a_bad_checksum_record(reference, cache_copy, shard_writes):
    """Without a manifest, shards are kept on their own checksum records; a record that is
    corrupt (or for another config) means that shard is recomputed."""
    _, recipe, files = reference
    (cache_copy / "manifest.json").unlink()
    (cache_copy / "shard-00001.sum.json").write_text("{")
    record = json.loads((cache_copy / "shard-00002.sum.json").read_text())
    (cache_copy / "shard-00002.sum.json").write_text(json.dumps({**record, "header": "other"}))
    write_cache(config_from_dict(recipe), cache_copy, SETTINGS, progress=False)
    assert _files(cache_copy) == files
    assert shard_writes == [1, 2]


def test_disk_full_mid_shard_then_rerun(
    reference, tmp_path, monkeypatch, write_recipe, shard_writes
):
    _, recipe, files = reference
    out = tmp_path / "cache"
    real = manifest_mod._write_file

    def full_disk(f, data):
        if f.name.endswith("shard-00002.rows.tmp"):
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(manifest_mod, "_write_file", full_disk)
    args = ["cache", write_recipe(recipe), "--out", out, *CLI_SETTINGS]
    line = fails_with(run_cli(*args), f"disk full while writing {out / 'shard-00002.rows'}")
    assert "needed" in line and "the 2 complete shards before it stay listed" in line
    assert not list(out.rglob("*.tmp"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["index"] for e in manifest["shards"]] == [0, 1] and not manifest["complete"]
    assert all(shard_ok(out, e) for e in manifest["shards"])
    monkeypatch.setattr(manifest_mod, "_write_file", real)  # space freed
    shard_writes.clear()
    assert run_cli(*args).exit_code == 0
    assert _files(out) == files and shard_writes == [2, 3]


def _read_only(path: Path, monkeypatch) -> None:
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the check see what a user would
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, **kw: (
                False if Path(p) == path and mode & os.W_OK else real(p, mode, **kw)
            ),
        )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("a file", "is a file, not a directory"),
        ("under a file", "is a file; give another directory"),
        ("read-only", "is not writable"),
    ],
)
def test_out_that_cannot_be_written(case, message, tmp_path, write_recipe, monkeypatch):
    recipe = write_recipe(_recipe(tmp_path))
    blocker = tmp_path / "taken.txt"
    blocker.write_text("mine")
    out = {
        "a file": blocker,
        "under a file": blocker / "cache",
        "read-only": tmp_path / "ro" / "cache",
    }[case]
    if case == "read-only":
        _read_only(tmp_path / "ro", monkeypatch)
    try:
        line = fails_cleanly(["cache", recipe, "--out", out, *CLI_SETTINGS], message, tmp_path)
    finally:
        if (tmp_path / "ro").exists():  # let pytest clean it up
            (tmp_path / "ro").chmod(0o755)
    assert line.startswith("error: --out: ")


@pytest.mark.parametrize(
    "extra, overrides, message",
    [
        (["--k", "-3"], [], "--k must be at least 1"),
        (["--k", "100000"], [], "--k 100000 must be at most the vocabulary size"),
        (["--value-bits", "10"], [], "--value-bits must be one of 8, 12, 16, 32"),
        (["--samples-per-shard", "0"], [], "--samples-per-shard"),
        ([], ["data.seq_len=1024"], "data.seq_len"),  # fails after the tokenizer is trained
    ],
)
def test_a_cache_that_fails_to_start_leaves_nothing(
    tmp_path, write_recipe, extra, overrides, message
):
    path = write_recipe(_recipe(tmp_path))
    fails_cleanly(
        ["cache", path, *overrides, "--out", tmp_path / "cache", *extra], message, tmp_path
    )
    assert not (tmp_path / "cache").exists()


def test_cache_out_holding_user_files_is_refused(tmp_path, write_recipe):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = write_recipe(_recipe(tmp_path))
    fails_cleanly(
        ["cache", path, "--out", out, *CLI_SETTINGS],
        "holds files that are not a teacher cache",
        tmp_path,
    )
