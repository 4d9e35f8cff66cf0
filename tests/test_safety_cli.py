"""Issue 13 for eval, report, speculate, bench and demo: every bad input is one `error:` line
naming the option, file or key, exit 2, no traceback, and nothing created or changed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import fails_cleanly, run_cli, tree_state
from conftest import tiny_recipe

from anydistill.bench import memory
from anydistill.bench.loss import Shape, case_bytes
from anydistill.demo.run import WORKDIR_MARK, prepare_workdir
from anydistill.errors import ConfigError

TINY_STEP = ["bench", "step", "--teacher", "tiny-teacher", "--student", "tiny-student"]
LOSS = ["bench", "loss", "--device", "cpu", "--shape", "8,31,8,8", "--divergence", "fkl"]
ABSURD = "100000000,128256,4096,4096"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine stall in OpenMP barriers; one thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run_dir(root: Path, name: str, model: Path | None, config: str | None) -> Path:
    """A run directory as `anydistill train` leaves it: config.yaml and final/ (when given)."""
    run = root / name
    run.mkdir()
    if config is not None:
        (run / "config.yaml").write_text(config)
    if model is not None:
        shutil.copytree(model, run / "final")
    return run


def _report_run(root: Path, name: str) -> Path:
    run = root / name
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 1}) + "\n")
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_pair) -> dict[str, Path]:
    """Every bad input the table needs, in one folder that must stay as it is."""
    root = tmp_path_factory.mktemp("safety")
    model, _ = tiny_pair
    recipe = yaml.safe_dump(tiny_recipe())
    w = {
        "root": root,
        "model": model,
        "run": _run_dir(root, "run", model, recipe),
        "nofinal": _run_dir(root, "nofinal", None, recipe),
        "emptyfinal": _run_dir(root, "emptyfinal", None, recipe),
        "badyaml": _run_dir(root, "badyaml", model, "teacher: [\n"),
        "invalid": _run_dir(root, "invalid", model, "seed: 1\n"),
        "file": root / "afile.txt",
        "prompts": root / "prompts.jsonl",
        "emptydir": root / "emptydir",
        "user": root / "user",
        "plotsfile": _report_run(root, "plotsfile"),
        "pagedir": _report_run(root, "pagedir"),
    }
    (w["emptyfinal"] / "final").mkdir()
    w["file"].write_text("not a run\n")
    w["prompts"].write_text(json.dumps({"question": "What is 1 plus 2?"}) + "\n")
    w["emptydir"].mkdir()
    (w["user"] / "data").mkdir(parents=True)  # the user's own project folder
    (w["user"] / "data" / "train.jsonl").write_text('{"text": "mine"}\n')
    (w["user"] / "notes.txt").write_text("my notes\n")
    (w["plotsfile"] / "plots").write_text("a file where the plots go\n")
    (w["pagedir"] / "report.html").mkdir()
    return w


def _speculate(target: str = "{run}", drafter: str = "{run}", data: str = "{prompts}") -> list:
    return ["speculate", "--target", target, "--drafter", drafter, "--data", data]


# (args, the message the one error line holds); {name} is a path of the `world` fixture.
CASES = {
    # 1. eval limits that scored something else
    "eval-max-batches-0": (["eval", "{run}", "--max-batches", "0"], "'--max-batches'"),
    "eval-max-batches-neg": (["eval", "{run}", "--max-batches", "-1"], "'--max-batches'"),
    "eval-max-records-neg": (["eval", "{run}", "--max-records", "-1"], "'--max-records'"),
    "eval-max-records-0": (["eval", "{run}", "--max-records", "0"], "'--max-records'"),
    "eval-lm-eval-limit-0": (["eval", "{run}", "--lm-eval-limit", "0"], "'--lm-eval-limit'"),
    # 2. speculate options, and a run without its final/ student
    "speculate-temperature-nan": (
        [*_speculate(), "--temperature", "nan"],
        "--temperature nan must be a finite number >= 0",
    ),
    "speculate-temperature-inf": (
        [*_speculate(), "--temperature", "inf"],
        "--temperature inf must be a finite number >= 0",
    ),
    "speculate-device-tpu": (
        [*_speculate(), "--device", "tpu"],
        "--device 'tpu' is not one of auto, cpu, cuda",
    ),
    "speculate-drafter-unfinished": (
        _speculate(drafter="{nofinal}"),
        "--drafter: {nofinal} is a run with no final/ student yet; finish it with "
        "`anydistill train`",
    ),
    "speculate-target-unfinished": (
        _speculate(target="{nofinal}"),
        "--target: {nofinal} is a run with no final/ student yet",
    ),
    # 3. bench sizes
    "bench-loss-absurd-shape": (
        ["bench", "loss", "--device", "cpu", "--shape", ABSURD],
        f"--shape {ABSURD} (inputs, weights and their gradients, plus the loss engine's "
        "working set) needs about",
    ),
    "bench-loss-zero-shape": (
        ["bench", "loss", "--device", "cpu", "--shape", "0,128,8,8"],
        "--shape '0,128,8,8' must be four positive integers",
    ),
    "bench-loss-negative-shape": (
        ["bench", "loss", "--device", "cpu", "--shape", "8,-128,8,8"],
        "--shape '8,-128,8,8' must be four positive integers",
    ),
    "bench-loss-malformed-shape": (
        ["bench", "loss", "--device", "cpu", "--shape", "8x128"],
        "--shape '8x128' must be four positive integers",
    ),
    "bench-loss-chunk-size-0": ([*LOSS, "--chunk-size", "0"], "'--chunk-size'"),
    "bench-step-absurd-batch": (
        [*TINY_STEP, "--device", "cpu", "--batch", "1000000"],
        "--batch 1000000 x --seq-len 2048 with tiny-teacher -> tiny-student",
    ),
    "bench-step-missing-config": (
        ["bench", "step", "--teacher", "{root}/none/config.json", "--student", "tiny-student"],
        "--teacher {root}/none/config.json does not exist",
    ),
    "bench-step-unknown-preset": (
        ["bench", "step", "--teacher", "llama-9000", "--student", "tiny-student"],
        "--teacher 'llama-9000' is not a preset",
    ),
    # 4. where results are written
    "bench-loss-out-dir": ([*LOSS, "--out", "{root}"], "--out: {root} is a directory"),
    "bench-loss-out-under-file": (
        [*LOSS, "--out", "{file}/loss.json"],
        "--out: {file}/loss.json cannot be written because {file} is a file",
    ),
    "bench-step-out-dir": ([*TINY_STEP, "--out", "{emptydir}"], "--out: {emptydir} is a dir"),
    "bench-cache-out-dir": (["bench", "cache", "--out", "{emptydir}"], "--out: {emptydir} is a"),
    "demo-workdir-file": (["demo", "--workdir", "{file}"], "--workdir: {file} is a file"),
    "demo-workdir-under-file": (
        ["demo", "--workdir", "{file}/demo"],
        "--workdir: {file}/demo cannot be made because {file} is a file",
    ),
    # 5. eval, report and speculate arguments that crashed or misled
    "eval-run-is-file": (["eval", "{file}"], "{file} is a file, not a run directory"),
    "eval-config-not-yaml": (["eval", "{badyaml}"], "{badyaml}/config.yaml is not valid YAML"),
    "eval-config-invalid": (["eval", "{invalid}"], "{invalid}/config.yaml: "),
    "eval-final-empty": (["eval", "{emptyfinal}"], "{emptyfinal}/final holds no saved model"),
    "eval-no-final": (["eval", "{nofinal}"], "{nofinal} has no final/ student yet"),
    "eval-task-not-json": (["eval", "{run}", "--task", "{file}"], "--task: {file}"),
    "eval-texts-dir": (["eval", "{run}", "--texts", "{emptydir}"], "--texts: {emptydir}"),
    "report-run-is-file": (["report", "{file}"], "{file} is a file, not a run directory"),
    "report-plots-is-file": (
        ["report", "{plotsfile}"],
        "{plotsfile}/plots is a file, but the report draws its plots there",
    ),
    "report-page-is-dir": (
        ["report", "{pagedir}"],
        "{pagedir}/report.html is a directory, but the report is written there",
    ),
    "speculate-data-empty-dir": (_speculate(data="{emptydir}"), "--data: "),
    "speculate-gamma-0": ([*_speculate(), "--gamma", "0"], "--gamma 0 must be between 1 and 16"),
    "speculate-max-new-tokens-0": ([*_speculate(), "--max-new-tokens", "0"], "--max-new-tokens"),
    "speculate-target-file": (_speculate(target="{file}"), "--target: {file} is a file"),
    "speculate-drafter-empty-final": (
        _speculate(drafter="{emptyfinal}"),
        "--drafter: {emptyfinal}/final holds no saved model",
    ),
    "speculate-save-not-a-run": (
        [*_speculate(drafter="{model}"), "--save"],
        "--save: {model} is not a run directory",
    ),
    # 6. the demo never writes into a folder holding the user's files
    "demo-workdir-with-user-files": (
        ["demo", "--fast", "--workdir", "{user}"],
        "--workdir {user} already holds files the demo did not write (data, notes.txt)",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_sentence(case, world):
    args, message = case
    paths = {k: str(v) for k, v in world.items()}
    fails_cleanly([a.format(**paths) for a in args], message.format(**paths), world["root"])


def _deny_writes_to(monkeypatch, *denied: Path) -> None:
    """A read-only folder, also for root (who may write anywhere)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).absolute() in {d.absolute() for d in denied}:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


READ_ONLY = {
    "bench-loss-out": ([*LOSS, "--out", "{ro}/loss.json"], "--out: {ro} is not writable"),
    "bench-step-out": ([*TINY_STEP, "--out", "{ro}/step.json"], "--out: {ro} is not writable"),
    "bench-cache-out": (["bench", "cache", "--out", "{ro}/c.json"], "--out: {ro} is not writable"),
    "demo-workdir": (["demo", "--workdir", "{ro}"], "--workdir: {ro} is not writable"),
    "demo-workdir-below": (
        ["demo", "--workdir", "{ro}/demo"],
        "--workdir: {ro} (where {ro}/demo would be made) is not writable",
    ),
    "report": (["report", "{ro}"], "{ro} is not writable, so the report cannot be written"),
    "speculate-save": ([*_speculate(drafter="{ro}"), "--save"], "--save: {ro} is not writable"),
}


@pytest.mark.parametrize("case", READ_ONLY.values(), ids=READ_ONLY.keys())
def test_read_only_places_are_refused(case, tmp_path, monkeypatch, tiny_pair):
    args, message = case
    ro = _run_dir(tmp_path, "ro", tiny_pair[0], yaml.safe_dump(tiny_recipe()))
    (ro / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 1}) + "\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"question": "What is 1 plus 2?"}) + "\n")
    paths = {"ro": str(ro), "run": str(ro), "prompts": str(prompts)}
    _deny_writes_to(monkeypatch, ro)
    fails_cleanly([a.format(**paths) for a in args], message.format(**paths), tmp_path)


def test_absurd_loss_shape_says_how_much_and_where(world):
    line = fails_cleanly(CASES["bench-loss-absurd-shape"][0], "needs about", world["root"])
    need = case_bytes(Shape.parse(ABSURD), torch.float32, torch.device("cpu"), ["fkl"])
    assert need > 4 * 100_000_000 * (4096 + 4096)  # at least the two models' hidden states
    assert (
        "TiB, more than the " in line and " of available RAM on cpu; give a smaller --shape" in line
    )


def test_a_shape_beyond_the_memory_left_is_refused(monkeypatch):
    """Whatever the machine: with 1 KiB free even a small shape is refused, before any work."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: (1024, "available RAM"))
    line = fails_cleanly(LOSS, "--shape 8,31,8,8 (inputs")
    assert "more than the 1.0 KiB of available RAM on cpu" in line
    step = [*TINY_STEP, "--device", "cpu", "--batch", "2", "--seq-len", "32"]
    line = fails_cleanly(step, "--batch 2 x --seq-len 32 with tiny-teacher -> tiny-student")
    assert "pick smaller --teacher / --student models" in line  # the weights alone do not fit


def test_naive_logits_that_cannot_fit_are_an_error_record(monkeypatch):
    shape = Shape(4096, 4001, 8, 8)  # full logits: twice the float64 reference's blocks
    cpu = torch.device("cpu")
    chunked = case_bytes(shape, torch.float32, cpu, ["fkl"], "torch", 64)
    naive = case_bytes(shape, torch.float32, cpu, ["fkl"], "naive")
    assert naive > 1.5 * chunked
    room = ((chunked + naive) // 2, "available RAM")
    monkeypatch.setattr(memory, "available_bytes", lambda device: room)
    args = ["bench", "loss", "--device", "cpu", "--shape", str(shape), "--divergence", "fkl"]
    result = run_cli(*args, "--chunk-size", "64", "--repeats", "1", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    records = {r["engine"]: r for r in json.loads(result.stdout)}
    assert records["naive"]["error"].startswith("skipped: needs about")
    assert "error" not in records["torch"]


def test_step_estimate_is_close_to_the_measured_peak():
    from anydistill.bench.presets import resolve_model
    from anydistill.bench.step_plan import StepSettings, meta_model, step_bytes

    args = ["--device", "cpu", "--batch", "4", "--seq-len", "64", "--steps", "1", "--warmup", "0"]
    result = run_cli(*TINY_STEP, *args, "--json")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    teacher = meta_model(resolve_model("tiny-teacher", "t"), torch.float32, "t")
    student = meta_model(resolve_model("tiny-student", "s"), torch.float32, "s")
    settings = StepSettings(batch=4, seq_len=64, steps=1, warmup=0)
    _, need = step_bytes(teacher, student, settings, torch.device("cpu"), 512)
    assert 0.7 < need / record["peak_memory_bytes"] < 1.3


def test_demo_workdir_is_its_own(tmp_path):
    """New and empty folders become the demo's (marked); a marked one is reused on a rerun;
    anything else is refused untouched."""
    new = prepare_workdir(tmp_path / "new")
    assert (new / WORKDIR_MARK).is_file()
    (new / "data").mkdir()  # what a first run wrote
    assert prepare_workdir(new) == new
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_workdir(empty) / WORKDIR_MARK).is_file()
    user = tmp_path / "user"
    user.mkdir()
    (user / "data").mkdir()
    (user / "data" / "train.jsonl").write_text("mine\n")
    before = tree_state(user)
    with pytest.raises(ConfigError, match="already holds files the demo did not write"):
        prepare_workdir(user)
    assert tree_state(user) == before


def test_report_survives_hand_edited_extras(tmp_path):
    """speculate.json that is not UTF-8 or holds text rates, eval.json with a text bucket: the
    report leaves those sections out instead of a traceback."""
    run = _report_run(tmp_path, "run")
    (run / "eval.json").write_text(json.dumps({"agree_freq/rank_1-10": "high", "student/ce": 1}))
    (run / "speculate.json").write_bytes(b'{"gamma": 2, "note": "\xff"}')
    assert run_cli("report", str(run)).exit_code == 0
    (run / "speculate.json").write_text(json.dumps({"acceptance_by_position": ["a", None]}))
    result = run_cli("report", str(run))
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert "acceptance_by_position.png" not in html and "agreement_by_frequency" not in html
