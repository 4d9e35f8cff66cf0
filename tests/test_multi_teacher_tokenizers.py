"""Several teachers, each on its own tokenizer (`teachers:` with cross-tokenizer terms): one
alignment per teacher with the same student windows, each teacher's loss on its own chunks
and vocabulary maps, mixed (weights) or routed (`route_by`); weights [1, 0] against the lone
teacher bit for bit, the tiny recipe end to end, accumulation, resume and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, tiny_recipe, train_rows
from safetensors.torch import load_file
from test_cross_data import assert_chunks_agree
from transformers import LlamaConfig, LlamaForCausalLM

from anydistill.config import DataConfig, config_from_dict
from anydistill.data.align_members import align_members, shared_windows
from anydistill.data.align_stage import concat, record_example, windows
from anydistill.data.aligned import collate_cross
from anydistill.data.members import MultiCrossTokens
from anydistill.data.synthetic import arithmetic_problems
from anydistill.data.views import step_inputs
from anydistill.errors import ConfigError
from anydistill.losses.cross import prepare_cross_params, term_units
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import HiddenStates
from anydistill.models.tokenizer_training import train_tokenizer
from anydistill.teachers import AlignedTeacher
from anydistill.teachers.multi import Member, MultiTeacher
from anydistill.train.loop import train
from anydistill.train.step import micro_batch_loss

CPU = torch.device("cpu")
TEXTS = [r["text"] for r in arithmetic_problems(200, seed=5)]
TERMS = [
    ActiveTerm("alm", "alm", 1.0, temperature=100.0),
    ActiveTerm("gold_hybrid", "gold_hybrid", 0.5, temperature=1.5, beta=0.3),
]
ROUTE = ("who", ["a", "b"])  # route_by's column and the teachers' names


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toks():
    """Teacher a, teacher b and the student: three byte-level BPEs of different sizes."""
    return tuple(train_tokenizer(TEXTS, vocab_size=n) for n in (512, 448, 320))


def _model(vocab: int, seed: int, width: int = 24) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg)


def _options(term: ActiveTerm, teacher_tok, student_tok) -> dict:
    """A term's options as `train/setup.py: aligned_params` prepares them for one teacher."""
    extra = {"beta": term.beta} if term.kind == "gold_hybrid" else {}
    options = {"temperature": term.temperature, **extra}
    return prepare_cross_params(term.kind, teacher_tok, student_tok, **options)


@pytest.fixture(scope="module")
def parts(toks):
    """Frozen teachers on tokenizers a and b, each with its own vocabulary maps."""
    ta, tb, ts = toks
    teachers, params = [], []
    for i, tok in enumerate((ta, tb)):
        model = _model(len(tok), 10 + i, width=16 + 8 * i).eval().requires_grad_(False)
        teachers.append(model)
        params.append({t.name: _options(t, tok, ts) for t in TERMS})
    return teachers, params


# ---- the align stage ---------------------------------------------------------------------


def test_shared_windows_keep_every_alignment_whole(toks):
    ta, tb, ts = toks
    cfg = DataConfig(path="x")
    exs = [concat([record_example({"text": x}, t, ts, "text", cfg) for x in TEXTS]) for t in toks]
    assert all(np.array_equal(ex.student_ids, exs[0].student_ids) for ex in exs)
    cut = shared_windows(exs, 40)
    assert len(cut) > 10
    # The student's windows are one partition of its tokens, the same for every teacher.
    assert np.array_equal(np.concatenate([w[0].student_ids for w in cut]), exs[0].student_ids)
    for window in cut:
        assert all(np.array_equal(p.student_ids, window[0].student_ids) for p in window)
        for piece, tok in zip(window, toks, strict=True):
            assert len(piece.teacher_ids) <= 40 and len(piece.student_ids) <= 40
            assert_chunks_agree(piece, tok, ts)
    # Every cut is at a boundary all tokenizers share: no chunk of any teacher is lost.
    for k, ex in enumerate(exs):
        assert sum(w[k].n_chunks for w in cut) == ex.n_chunks
    # One alignment is cut exactly as a lone teacher's is.
    alone = windows(exs[0], 40)
    assert [w[0].student_ids.tolist() for w in shared_windows(exs[:1], 40)] == [
        w.student_ids.tolist() for w in alone
    ]


def test_a_stretch_without_a_common_boundary_is_cut_through():
    """One teacher reads "abab..." as ab|ab|.., the other as a|ba|ba|..: they never start a
    token at the same byte, so the windows are cut through, the chunks an edge splits are
    dropped, and what is kept still spells matching bytes within seq_len."""
    ab = train_tokenizer(["ab" * k for k in range(1, 30)] * 3, vocab_size=270)
    ba = train_tokenizer(["x" + "ba" * k for k in range(1, 30)] * 3, vocab_size=270)
    student = train_tokenizer(["hello world"] * 3, vocab_size=262)  # one token per byte here
    cfg = DataConfig(path="x")
    exs = [record_example({"text": "ab" * 60}, t, student, "text", cfg) for t in (ab, ba)]
    cut = shared_windows(exs, 16)
    assert np.array_equal(np.concatenate([w[0].student_ids for w in cut]), exs[0].student_ids)
    for window in cut:
        for piece, tok in zip(window, (ab, ba), strict=True):
            assert len(piece.teacher_ids) <= 16 and len(piece.student_ids) <= 16
            assert_chunks_agree(piece, tok, student)
    assert sum(w[1].n_chunks for w in cut) < exs[1].n_chunks


def _records(who: list[str] | None = None) -> datasets.Dataset:
    """The first texts as records; with `who`, one per name, each naming its teacher."""
    if who is None:
        return datasets.Dataset.from_list([{"text": x} for x in TEXTS[:8]])
    rows = [{"text": x, "who": w} for x, w in zip(TEXTS, who, strict=False)]
    return datasets.Dataset.from_list(rows)


def test_records_are_aligned_to_the_teachers_that_teach_them(toks):
    ta, tb, ts = toks
    cfg = DataConfig(path="x", seq_len=96, packing=False)
    ds = _records()
    mixed = align_members(ds, ds.select([]), ta, ts, [ta, tb], [0.7, 0.3], cfg).train
    assert all(ex.alignments[0] is not None and ex.alignments[1] is not None for ex in mixed)
    assert mixed[0].teacher_vocabs == (len(ta), len(tb))
    lone = align_members(ds, ds.select([]), ta, ts, [ta, tb], [1.0, 0.0], cfg).train
    assert all(ex.alignments[1] is None for ex in lone), "a weight-0 teacher is never aligned"
    shared = align_members(ds, ds.select([]), ta, ts, [ta, ta], [0.5, 0.5], cfg).train
    assert all(ex.alignments[0] is ex.alignments[1] for ex in shared)
    who = ["a", "b", "b", "a"]
    routed = align_members(_records(who), ds.select([]), ta, ts, [ta, tb], [1, 1], cfg, ROUTE)
    assert [ex.route for ex in routed.train] == [0, 1, 1, 0]
    assert [[al is not None for al in ex.alignments] for ex in routed.train] == [
        [i == r for i in range(2)] for r in (0, 1, 1, 0)
    ]
    batch = collate_cross(routed.train, 0, len(ts))
    assert isinstance(batch, MultiCrossTokens)
    assert batch.members[0].rows.tolist() == [0, 3] and batch.members[1].rows.tolist() == [1, 2]
    assert batch.members[1].tokens.teacher_vocab == len(tb)
    assert step_inputs(batch, CPU).route.tolist() == [0, 1, 1, 0]
    from dataclasses import replace

    from anydistill.train.resume import data_fingerprint

    moved = [replace(ex, route=1 - ex.route) for ex in routed.train]
    assert data_fingerprint(moved) != data_fingerprint(routed.train)  # a resume notices


# ---- the step ----------------------------------------------------------------------------


def _units(batch: MultiCrossTokens) -> dict[str, torch.Tensor]:
    return {
        t.name: torch.tensor(
            [float(term_units(t.kind, m.tokens)) if m else 0.0 for m in batch.members]
        )
        for t in TERMS
    }


def _run(teacher, inputs, vocab, params=None, units=None):
    """One micro-batch's loss and the student's gradients (a fresh student each time)."""
    student = _model(vocab, 3).train()
    out = micro_batch_loss(
        HiddenStates(student), teacher, inputs, TERMS, vocab, inputs.select.sum().float(),
        "torch", None, aligned_params=params, units=units,
    )  # fmt: skip
    out.loss.backward()
    return out, [p.grad.clone() for p in student.parameters() if p.grad is not None]


def test_a_mixture_is_the_weighted_mean_of_each_teachers_own_loss(toks, parts):
    ta, tb, ts = toks
    (a, b), (pa, pb) = parts
    ds = _records()
    cfg = DataConfig(path="x", seq_len=96, packing=False)
    examples = align_members(ds, ds.select([]), ta, ts, [ta, tb], [0.6, 0.2], cfg).train
    batch = collate_cross(examples[:4], 0, len(ts))
    units = _units(batch)
    several = MultiTeacher(
        [Member("a", 0.6, AlignedTeacher(a), pa), Member("b", 0.2, AlignedTeacher(b), pb)]
    )
    mixed, grads = _run(several, step_inputs(batch, CPU), len(ts), units=units)
    want_loss, want_grads = 0.0, None
    # L = sum_i w_i L_i / sum_i w_i, each L_i over teacher i's own units.
    for k, (teacher, params, w) in enumerate(((a, pa, 0.6 / 0.8), (b, pb, 0.2 / 0.8))):
        own = batch.members[k].tokens
        alone, g = _run(
            AlignedTeacher(teacher), step_inputs(own, CPU), len(ts), params,
            {name: u[k] for name, u in units.items()},
        )  # fmt: skip
        name = "ab"[k]
        assert torch.equal(mixed.stats[f"aligned/{name}/loss"], alone.loss.detach())
        for t in TERMS:
            assert torch.equal(mixed.stats[f"aligned/{name}/{t.name}"], alone.terms[t.name])
        want_loss += w * alone.loss.item()
        g = [w * x for x in g]
        want_grads = (
            g if want_grads is None else [x + y for x, y in zip(want_grads, g, strict=True)]
        )
    assert mixed.loss.item() == pytest.approx(want_loss, rel=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_routing_scores_each_sample_against_its_own_teacher(toks, parts):
    ta, tb, ts = toks
    (a, b), (pa, pb) = parts
    cfg = DataConfig(path="x", seq_len=96, packing=False)
    rows_seen: dict[int, list[int]] = {0: [], 1: []}
    hooks = [
        model.model.register_forward_hook(lambda m, i, o, k=k: rows_seen[k].append(o[0].shape[0]))
        for k, model in enumerate((a, b))
    ]

    def routed(who):
        records = _records(who)
        data = align_members(records, records.select([]), ta, ts, [ta, tb], [1, 1], cfg, ROUTE)
        batch = collate_cross(data.train, 0, len(ts))
        teacher = MultiTeacher(
            [Member("a", 1.0, AlignedTeacher(a), pa), Member("b", 1.0, AlignedTeacher(b), pb)],
            route=True,
        )
        units = _units(batch)
        return data.train, units, _run(teacher, step_inputs(batch, CPU), len(ts), units=units)

    who = ["a", "b", "b", "a"]
    examples, units, (out, grads) = routed(who)
    for hook in hooks:
        hook.remove()
    assert rows_seen == {0: [2], 1: [2]}, "each teacher runs once, on its own rows"
    # Each sample alone against its own teacher, divided by the step's units of all teachers.
    total = {name: u.sum() for name, u in units.items()}
    want_loss, want_grads = 0.0, None
    for ex, name in zip(examples, who, strict=True):
        k = "ab".index(name)
        alone_tokens = collate_cross([ex.alignments[k]], len((ta, tb)[k]), len(ts))
        teacher = AlignedTeacher((a, b)[k])
        alone, g = _run(teacher, step_inputs(alone_tokens, CPU), len(ts), (pa, pb)[k], total)
        want_loss += alone.loss.item()
        want_grads = (
            g if want_grads is None else [x + y for x, y in zip(want_grads, g, strict=True)]
        )
    assert out.loss.item() == pytest.approx(want_loss, rel=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert out.stats["aligned/a/alm"] > 0 and out.stats["aligned/b/alm"] > 0
    # The teachers differ, so the route matters.
    _, _, (swapped, _) = routed(["b", "a", "a", "b"])
    assert abs(swapped.terms["alm"].item() / out.terms["alm"].item() - 1) > 0.01


# ---- whole runs --------------------------------------------------------------------------


def _recipe(tmp_path: Path, name: str, route: bool = False, **train_keys) -> dict:
    data = yaml.safe_load((TINY / "two_tokenizers.yaml").read_text())
    data["output"] = {"dir": str(tmp_path / name), "report": False}
    keys = {"max_steps": 4, **train_keys}
    data["train"].update(progress=False, log_every=1, warmup_steps=0, **keys)
    data["eval"] = {"every": 0, "max_batches": 2}
    data["data"].update(synthetic_size=96, seq_len=96)
    if route:
        rows = [
            {
                "prompt": r["prompt"],
                "completion": r["completion"],
                "who": ("big", "small")[i % 3 > 0],
            }
            for i, r in enumerate(arithmetic_problems(96, seed=0))
        ]
        path = tmp_path / "routed.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data["data"] = {"path": str(path), "seq_len": 96, "eval_fraction": 0.1, "packing": False}
        data["route_by"] = "who"
        for entry in data["teachers"]:
            entry.pop("weight")
    return data


def test_the_recipe_trains_and_logs_each_teacher(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    changes = dict(train__progress=False, train__max_steps=8, train__log_every=2)
    data = tiny_recipe("two_tokenizers", output__dir=str(tmp_path / "run"), **changes)
    run = train(config_from_dict({**data, "eval": {"every": 0, "max_batches": 2}}))
    rows = train_rows(run)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    for row in rows:
        assert np.isfinite(row["loss"])
        for name in ("big", "small"):
            for key in ("loss", "alm"):
                assert 0 < row[f"teacher/{name}/{key}"] < float("inf")
    assert rows[-1]["loss"] < rows[0]["loss"]
    final = json.loads((run / "eval.json").read_text())
    assert final["student/bits_per_byte"] > 0 and final["teacher/bits_per_byte"] > 0
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)
    sizes = [
        len(AutoTokenizer.from_pretrained(run / d))
        for d in ("tokenizer", "tokenizer/vocab-448", "student_tokenizer")
    ]
    assert sizes == [512, 448, 320] and len(tok) == 320
    from anydistill.eval.run import evaluate_run

    again = evaluate_run(run, max_batches=2)  # `anydistill eval`: as the run scored it
    assert again["student/bits_per_byte"] == pytest.approx(final["student/bits_per_byte"])
    assert again["teacher/bits_per_byte"] == pytest.approx(final["teacher/bits_per_byte"])


def test_weights_one_and_zero_are_the_lone_teacher_exactly(tmp_path):
    data = _recipe(tmp_path, "pair", max_steps=3)
    data["teachers"][0]["weight"], data["teachers"][1]["weight"] = 1.0, 0.0
    lone = {k: v for k, v in data.items() if k != "teachers"}
    lone["teacher"] = {k: v for k, v in data["teachers"][0].items() if k not in ("name", "weight")}
    lone["output"] = {"dir": str(tmp_path / "lone"), "report": False}
    pair, alone = train(config_from_dict(data)), train(config_from_dict(lone))
    keys = ("step", "loss", "lr", "grad_norm", "term/alm", "term/ce")
    got, want = train_rows(pair), train_rows(alone)
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in want]
    assert all(r["teacher/big/alm"] == r["term/alm"] for r in got)
    assert not any("teacher/small/alm" in r for r in got), "a weight-0 teacher is never run"
    a, b = (load_file(run / "final" / "model.safetensors") for run in (pair, alone))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((pair / "eval.json").read_text()) == json.loads(
        (alone / "eval.json").read_text()
    )


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    def run(name, mbs, accum):
        data = _recipe(tmp_path, name, micro_batch_size=mbs, grad_accum=accum)
        data["train"].update(max_steps=2, max_grad_norm=None)
        return train_rows(train(config_from_dict(data)))

    one, four = run("one", 8, 1), run("four", 2, 4)
    for a, b in zip(one, four, strict=True):
        for key in ("loss", "term/alm", "teacher/big/alm", "teacher/small/loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_a_routed_run_resumes_exactly(tmp_path):
    full = train(config_from_dict(_recipe(tmp_path, "full", True)))
    cut = train(config_from_dict(_recipe(tmp_path, "cut", True, stop_at_step=2, save_every=2)))
    assert max(r["step"] for r in train_rows(cut)) == 2
    resumed = train(config_from_dict(_recipe(tmp_path, "cut", True)))
    drop = ("elapsed_s", "tokens_per_s", "train_s", "gen_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    rows = strip(train_rows(full))
    assert rows == strip(train_rows(resumed))
    assert all(r["teacher/big/alm"] > 0 and r["teacher/small/alm"] > 0 for r in rows)
    assert json.loads((full / "eval.json").read_text()) == json.loads(
        (resumed / "eval.json").read_text()
    )


# ---- refusals ----------------------------------------------------------------------------


def _base() -> dict:
    return yaml.safe_load((TINY / "two_tokenizers.yaml").read_text())


def _cache_member(data):
    data["teachers"][1] = {"name": "small", "kind": "cache", "path": "/tmp/c", "weight": 0.3}


def _server_member(data):
    data["teachers"][1] = {
        "name": "small", "kind": "server", "url": "http://localhost:1/v1", "model": "m",
    }  # fmt: skip
    for entry in data["teachers"]:
        entry.pop("weight", None)
    data["route_by"] = "who"
    data["data"] = {"path": "x.jsonl", "packing": False}


def _same_vocabulary_terms(data):
    data["objective"]["terms"] = [{"kind": "fkl"}]
    data["student"].pop("tokenizer")


REFUSALS = [
    (_cache_member, "teachers.1.kind: cross-tokenizer terms run each teacher's model"),
    (_server_member, "teachers.1.kind: cross-tokenizer terms run each teacher's model"),
    (
        lambda d: d["objective"]["terms"].append({"kind": "hidden"}),
        "objective.terms.2: `hidden` compares one teacher's layer activations",
    ),
    (_same_vocabulary_terms, "teachers.1.tokenizer: every teacher reads the run's one tokenizer"),
]


@pytest.mark.parametrize("change, match", REFUSALS)
def test_what_cannot_work_is_one_sentence(change, match):
    data = _base()
    change(data)
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    message = str(err.value)
    assert match in message and "\n" not in message, message
