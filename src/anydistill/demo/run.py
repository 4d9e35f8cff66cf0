"""The offline demo: the whole story on a CPU in minutes.

1. generate arithmetic word problems with worked solutions (answers checkable, phrasing
   varied like natural text);
2. train a byte-level BPE tokenizer on them;
3. train a small teacher on many problems (cached in the user cache dir);
4. train the same small student twice, for the same steps, on a small set of new problems:
   once distilled from the teacher (forward KL), once with plain cross-entropy;
5. compare teacher, student+KD and student-CE on held-out bits per byte and exact-match
   accuracy.

Every run goes through the real `anydistill train` path, from recipes built in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from anydistill.config import config_from_dict
from anydistill.data.synthetic import split_problems
from anydistill.errors import ConfigError
from anydistill.models.tokenizer_training import train_tokenizer
from anydistill.paths import check_writable_dir, few

# Marks a --workdir as the demo's own, so a rerun may rewrite what an earlier run wrote there.
WORKDIR_MARK = ".anydistill-demo"


@dataclass(frozen=True)
class DemoSettings:
    n_train: int  # the teacher's pre-training problems
    n_student: int  # the students' (smaller) distillation set, disjoint from the teacher's
    n_eval: int
    n_accuracy: int
    vocab_size: int
    seq_len: int
    teacher_steps: int
    student_steps: int
    batch_size: int
    teacher_dims: tuple[int, int, int]  # hidden, layers, heads
    student_dims: tuple[int, int, int]
    teacher_lr: float = 3e-3
    student_lr: float = 3e-3
    kd_kind: str = "fkl"
    kd_temperature: float = 1.0
    kd_ce_weight: float = 0.0  # > 0 mixes in the hard labels (Hinton et al. 2015)
    seed: int = 0


# The teacher pre-trains on a large corpus; the students then see only a small set of new
# problems for many epochs, the usual distillation setting: plain cross-entropy memorizes
# those few answers, the teacher's soft targets carry what it learned from many more.
FULL = DemoSettings(
    n_train=6000,
    n_student=400,
    n_eval=300,
    n_accuracy=200,
    vocab_size=512,
    seq_len=128,
    teacher_steps=800,
    student_steps=400,
    batch_size=32,
    teacher_dims=(128, 4, 4),
    student_dims=(64, 2, 2),
    student_lr=5e-3,
)
FAST = DemoSettings(
    n_train=2000,
    n_student=150,
    n_eval=100,
    n_accuracy=60,
    vocab_size=400,
    seq_len=128,
    teacher_steps=220,
    student_steps=150,
    batch_size=32,
    teacher_dims=(128, 3, 4),
    student_dims=(64, 2, 2),
    student_lr=5e-3,
)


def cache_root() -> Path:
    """User cache dir (ANYDISTILL_CACHE, else XDG_CACHE_HOME/anydistill, else ~/.cache)."""
    if os.environ.get("ANYDISTILL_CACHE"):
        return Path(os.environ["ANYDISTILL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anydistill"


def llama_init(dims: tuple[int, int, int], seq_len: int) -> dict[str, Any]:
    hidden, layers, heads = dims
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": hidden * 4,
        "max_position_embeddings": 2 * seq_len,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
    }


def _recipe(
    s: DemoSettings,
    data_dir: Path,
    tok_dir: Path,
    out: Path,
    teacher: dict,
    student: dict,
    terms: list[dict],
    steps: int,
    lr: float,
    quiet: bool,
    eval_teacher: bool,
    text: bool = False,
) -> dict[str, Any]:
    """`text=True`: plain LM on whole problems, packed (the teacher's pre-training)."""
    kind = "text" if text else ""
    return {
        "teacher": {**teacher, "tokenizer": str(tok_dir)},
        "student": student,
        "data": {
            "path": str(data_dir / ("traintext.jsonl" if text else "student.jsonl")),
            "eval_path": str(data_dir / f"eval{kind}.jsonl"),
            "seq_len": s.seq_len,
            "packing": text,
        },
        "objective": {"terms": terms},
        "train": {
            "seed": s.seed,
            "max_steps": steps,
            "micro_batch_size": s.batch_size,
            "lr": lr,
            "warmup_steps": max(1, steps // 20),
            "lr_schedule": "cosine",
            "min_lr_ratio": 0.1,
            "log_every": 10,
            "progress": not quiet,
            "weight_decay": 0.0,
        },
        "eval": {"every": 0, "max_batches": 50, "batch_size": 32, "teacher": eval_teacher},
        "output": {"dir": str(out), "overwrite": True, "report": True},
    }


def _write_data(s: DemoSettings, data_dir: Path) -> list[dict]:
    problems, held_out = split_problems(s.n_train + s.n_student, s.n_eval, s.seed)
    # Disjoint: the teacher pre-trains on the first n_train problems; the students distill on
    # the next n_student, which the teacher never saw (the first k problems and the eval set
    # do not depend on how many follow, so the cached teacher does not depend on n_student).
    teacher_set, student_set = problems[: s.n_train], problems[s.n_train :]
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", teacher_set), ("student", student_set), ("eval", held_out)):
        fields = ("prompt", "completion", "answer")
        lines = "".join(json.dumps({k: r[k] for k in fields}) + "\n" for r in rows)
        (data_dir / f"{name}.jsonl").write_text(lines)
        texts = "".join(json.dumps({"text": r["prompt"] + r["completion"]}) + "\n" for r in rows)
        (data_dir / f"{name}text.jsonl").write_text(texts)
    return held_out


def _cached_teacher(
    s: DemoSettings, data_dir: Path, tok_dir: Path, work: Path, quiet: bool, say
) -> Path:
    from anydistill.train.loop import train

    teacher_fields = (
        "n_train",
        "n_eval",
        "vocab_size",
        "seq_len",
        "teacher_steps",
        "batch_size",
        "teacher_dims",
        "teacher_lr",
        "seed",
    )
    settings = {k: v for k, v in asdict(s).items() if k in teacher_fields}
    recipe_key = {"settings": settings, "init": llama_init(s.teacher_dims, s.seq_len), "v": 5}
    key = hashlib.sha256(json.dumps(recipe_key, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_root() / "demo" / f"teacher-{key}"
    if (cached / "config.json").is_file():
        say(f"teacher: cached at {cached}")
        return cached
    say("teacher: training (cached afterwards, so a rerun skips this)")
    init = {"init": llama_init(s.teacher_dims, s.seq_len)}
    recipe = _recipe(
        s,
        data_dir,
        tok_dir,
        work / "teacher",
        init,
        init,
        [{"kind": "ce"}],
        s.teacher_steps,
        s.teacher_lr,
        quiet,
        eval_teacher=False,
        text=True,
    )
    run = train(config_from_dict(recipe))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "final", tmp)
    os.replace(tmp, cached)
    return cached


def prepare_workdir(workdir: Path | None) -> Path:
    """The demo's own folder: a new temp dir, or `workdir` when it is new, empty or made by an
    earlier demo (it holds WORKDIR_MARK). The demo rewrites data/, tokenizer/ and its run
    folders with `output.overwrite`, so a folder holding anything else is refused, untouched.
    """
    if workdir is None:
        work = Path(tempfile.mkdtemp(prefix="anydistill-demo-"))
    else:
        work = check_writable_dir(workdir, "--workdir")
        theirs = sorted(p.name for p in work.iterdir()) if work.is_dir() else []
        if theirs and not (work / WORKDIR_MARK).is_file():
            raise ConfigError(
                f"--workdir {work} already holds files the demo did not write ({few(theirs)}); "
                "give a new or empty directory"
            )
        work.mkdir(parents=True, exist_ok=True)
    mark = work / WORKDIR_MARK
    if not mark.is_file():  # first thing written: a rerun may then reuse the folder
        mark.write_text("written by `anydistill demo`; it may rewrite this folder\n")
    return work


def run_demo(
    fast: bool = False,
    workdir: Path | None = None,
    quiet: bool = False,
    settings: DemoSettings | None = None,
) -> dict:
    """Run the demo; returns {teacher, student_kd, student_ce} -> {bits_per_byte, accuracy}."""
    from anydistill.eval.generation import exact_match_accuracy
    from anydistill.models.loading import load_pretrained
    from anydistill.models.tokenizer import load_tokenizer
    from anydistill.train.loop import train

    s = settings or (FAST if fast else FULL)
    console = Console(stderr=True, quiet=quiet)
    work = prepare_workdir(workdir)
    data_dir, tok_dir = work / "data", work / "tokenizer"
    held_out = _write_data(s, data_dir)
    console.print(f"[bold]anydistill demo[/] ({'fast' if fast else 'full'}), work dir {work}")
    train_texts = [json.loads(x) for x in (data_dir / "train.jsonl").read_text().splitlines()]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in train_texts], s.vocab_size)
    tok.save_pretrained(str(tok_dir))
    teacher_dir = _cached_teacher(s, data_dir, tok_dir, work, quiet, console.print)

    student = {"init": llama_init(s.student_dims, s.seq_len)}
    teacher = {"path": str(teacher_dir)}
    runs = {
        "student_kd": [
            {"kind": s.kd_kind, "temperature": s.kd_temperature, "weight": 1 - s.kd_ce_weight}
        ]
        + ([{"kind": "ce", "weight": s.kd_ce_weight}] if s.kd_ce_weight > 0 else []),
        "student_ce": [{"kind": "ce"}],
    }
    results: dict[str, dict[str, float]] = {}
    teacher_bpb = None
    for name, terms in runs.items():
        console.print(f"{name}: training {s.student_steps} steps")
        recipe = _recipe(
            s,
            data_dir,
            tok_dir,
            work / name,
            teacher,
            student,
            terms,
            s.student_steps,
            s.student_lr,
            quiet,
            eval_teacher=True,
        )
        run = train(config_from_dict(recipe))
        metrics = json.loads((run / "eval.json").read_text())
        teacher_bpb = metrics["teacher/bits_per_byte"]
        model = load_pretrained(str(run / "final"), field=name, dtype=torch.float32)
        results[name] = {
            "bits_per_byte": metrics["student/bits_per_byte"],
            "accuracy": exact_match_accuracy(model, tok, held_out[: s.n_accuracy]),
        }
    teacher_model = load_pretrained(str(teacher_dir), field="teacher", dtype=torch.float32)
    teacher_tok = load_tokenizer(str(teacher_dir), field="teacher")
    results = {
        "teacher": {
            "bits_per_byte": teacher_bpb,
            "accuracy": exact_match_accuracy(teacher_model, teacher_tok, held_out[: s.n_accuracy]),
        },
        **results,
    }
    return results


def print_table(table: dict[str, dict[str, float]]) -> None:
    view = Table(title="anydistill demo: held-out arithmetic word problems")
    view.add_column("model")
    view.add_column("bits per byte (lower is better)", justify="right")
    view.add_column("exact-match accuracy", justify="right")
    labels = {"teacher": "teacher", "student_kd": "student + KD", "student_ce": "student, CE only"}
    for key, label in labels.items():
        row = table[key]
        view.add_row(label, f"{row['bits_per_byte']:.4f}", f"{row['accuracy']:.1%}")
    Console().print(view)
