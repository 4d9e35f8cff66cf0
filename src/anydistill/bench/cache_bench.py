"""`anydistill bench cache`: size, fidelity and speed of the offline teacher cache, per k.

For each k: cache the training set (write throughput, bytes per token), measure the KL from
the full teacher distribution to what the cache keeps on held-out tokens, and train the same
student from the cache; the same student trained with the online teacher is the baseline, in
the same process.

KL(full || cached) needs the cached distribution on every token: the top-k keep their decoded
probabilities and the tail mass is spread evenly over the other V - k tokens (the least
informative completion), so the number is what a user loses by caching, not an artifact.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anydistill.config import config_from_dict
from anydistill.data.collate import collate
from anydistill.data.synthetic import split_problems
from anydistill.data.views import step_inputs
from anydistill.losses.chunk_math import head_logits
from anydistill.models.heads import HiddenStates, output_head
from anydistill.teachers.cache.codec import Codec
from anydistill.teachers.cache.command import CacheSettings, write_cache
from anydistill.train.setup import build_parts


def demo_teacher(work: Path) -> Path:
    """The fast demo's trained teacher (trained once, then cached like the demo's)."""
    from anydistill.demo.run import FAST, _cached_teacher, _write_data
    from anydistill.models.tokenizer_training import train_tokenizer

    data_dir, tok_dir = work / "demo-data", work / "demo-tokenizer"
    _write_data(FAST, data_dir)
    rows = [json.loads(x) for x in (data_dir / "train.jsonl").read_text().splitlines()]
    train_tokenizer([r["prompt"] + r["completion"] for r in rows], FAST.vocab_size).save_pretrained(
        str(tok_dir)
    )
    return _cached_teacher(FAST, data_dir, tok_dir, work, True, lambda *_: None)


def _write_problems(work: Path, n_train: int, n_eval: int, seed: int) -> tuple[Path, Path]:
    train, held_out = split_problems(n_train, n_eval, seed + 11)
    paths = []
    for name, rows in (("train", train), ("eval", held_out)):
        path = work / f"{name}.jsonl"
        path.write_text(
            "".join(json.dumps({k: r[k] for k in ("prompt", "completion")}) + "\n" for r in rows)
        )
        paths.append(path)
    return paths[0], paths[1]


def _recipe(
    teacher: dict,
    train: Path,
    eval_: Path,
    out: Path,
    student_hidden: int,
    steps: int,
    batch: int,
    seq_len: int,
) -> dict[str, Any]:
    return {
        "teacher": teacher,
        "student": {
            "init": {
                "model_type": "llama",
                "hidden_size": student_hidden,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "intermediate_size": 4 * student_hidden,
                "max_position_embeddings": 2 * seq_len,
                "tie_word_embeddings": True,
            }
        },
        "data": {"path": str(train), "eval_path": str(eval_), "seq_len": seq_len, "packing": False},
        "objective": {"terms": [{"kind": "fkl"}]},
        "train": {
            "max_steps": steps,
            "micro_batch_size": batch,
            "warmup_steps": 0,
            "log_every": steps,
            "progress": False,
            "device": "cpu",
        },
        "eval": {"every": 0, "max_batches": 1, "teacher": False},
        "output": {"dir": str(out), "overwrite": True, "report": False, "save_final": False},
    }


def _train_tokens_per_s(recipe: dict) -> float:
    """Training throughput over the run's steps (setup and model loading excluded)."""
    from anydistill.train.loop import train

    run = train(config_from_dict(recipe))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "train"][-1]
    return last["tokens"] / last["elapsed_s"]


@torch.no_grad()
def heldout_kl(recipe: dict, codec: Codec, max_rows: int = 4096) -> tuple[float, float]:
    """Mean KL(full teacher || decoded top-k + evenly spread tail) on held-out targets, and
    the teacher/student parameter ratio."""
    parts = build_parts(config_from_dict(recipe), Path(tempfile.mkdtemp()), torch.device("cpu"))
    ratio = sum(p.numel() for p in parts.teacher_model.parameters()) / sum(
        p.numel() for p in parts.student.parameters()
    )
    pad = parts.tokenizer.pad_token_id or 0
    head = output_head(parts.teacher_model)
    v, total, rows = parts.vocab_size, 0.0, 0
    for start in range(0, len(parts.data.eval), 16):
        inputs = step_inputs(collate(parts.data.eval[start : start + 16], pad), torch.device("cpu"))
        h = HiddenStates(parts.teacher_model)(inputs.input_ids, inputs.attention_mask)
        # The cache's own projection (bias, logit scale, soft-cap), then float64 for the KL.
        logp = torch.log_softmax(head_logits(h[:, :-1][inputs.select], head, v).double(), -1)
        top, ids = logp.topk(codec.k, dim=-1)
        tail = torch.logsumexp(logp.scatter(1, ids, float("-inf")), dim=-1)
        got_ids, got_top, got_tail = codec.decode(codec.encode(ids, top.float(), tail.float()))
        spread = got_tail.double() - torch.log(torch.tensor(max(v - codec.k, 1.0)))
        cached = spread[:, None].expand(-1, v).clone().scatter(1, got_ids, got_top.double())
        total += float((logp.exp() * (logp - cached)).sum())
        rows += logp.shape[0]
        if rows >= max_rows:
            break
    return total / max(rows, 1), ratio


def bench_cache(
    teacher_dir: Path | None,
    ks: list[int],
    work: Path,
    value_bits: int = 12,
    samples: int = 600,
    steps: int = 20,
    batch: int = 16,
    student_hidden: int = 48,
    seq_len: int = 128,
    say: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """One record per k; the online-teacher throughput is measured once and shared."""
    if teacher_dir is None:
        say("teacher: the fast demo's (trained once, then cached)")
    teacher_dir = teacher_dir or demo_teacher(work)
    train, eval_ = _write_problems(work, samples, 100, seed=0)
    teacher = {"path": str(teacher_dir)}
    online = _recipe(
        teacher, train, eval_, work / "run-online", student_hidden, steps, batch, seq_len
    )
    say(f"training {steps} steps with the online teacher")
    online_tps = _train_tokens_per_s(online)
    records = []
    for k in ks:
        out = work / f"cache-k{k}"
        say(f"k={k}: writing the cache, measuring held-out KL, training from the cache")
        settings = CacheSettings(k=k, value_bits=value_bits, samples_per_shard=128, batch_size=16)
        start = time.perf_counter()
        write_cache(config_from_dict(online), out, settings, progress=False)
        seconds = time.perf_counter() - start
        manifest = json.loads((out / "manifest.json").read_text())
        rows = sum(s["rows"] for s in manifest["shards"])
        stored = sum(
            (out / s["rows_file"]).stat().st_size + (out / s["keys_file"]).stat().st_size
            for s in manifest["shards"]
        )
        cached = {
            **online,
            "teacher": {"kind": "cache", "path": str(out)},
            "output": {**online["output"], "dir": str(work / f"run-k{k}")},
        }
        codec = Codec(k, manifest["vocab_size"], value_bits)
        kl, ratio = heldout_kl(online, codec)
        records.append(
            {
                "k": k,
                "value_bits": value_bits,
                "bytes_per_token": round(stored / rows, 2),
                "kl_nats": kl,
                "write_tokens_per_s": round(rows / seconds, 1),
                "train_tokens_per_s_cache": round(_train_tokens_per_s(cached), 1),
                "train_tokens_per_s_online": round(online_tps, 1),
                "cached_tokens": rows,
                "teacher_student_params": round(ratio, 2),
            }
        )
    return records
