"""Several teachers at once (`teachers:`): a per-token mixture (weights) or per-sample routing
(`route_by`). The mixture against float64, weights [1, 0] against the lone teacher bit for
bit, each routed row against its own teacher, accumulation, resume, metrics and refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, train_rows
from reference_divergences import ref_divergence
from transformers import LlamaConfig, LlamaForCausalLM

from anydistill.config import config_from_dict, dump_config, resolve_paths
from anydistill.data import collate
from anydistill.data.synthetic import arithmetic_problems
from anydistill.data.views import step_inputs
from anydistill.errors import ConfigError, DataError
from anydistill.losses.engine import Head, MixtureSignal, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import HiddenStates
from anydistill.teachers import LiveTeacher
from anydistill.teachers.multi import Member, MultiTeacher, RoutedSignal, sub_inputs
from anydistill.train.loop import train
from anydistill.train.step import micro_batch_loss

ENGINES = ["naive", "torch"] + (["triton"] if importlib.util.find_spec("triton") else [])
V = 50
CPU = torch.device("cpu")
F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster on one thread (and do not stall a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int, width: int, layers: int = 2, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).to(dtype)


def _teacher(seed: int, width: int, dtype: torch.dtype = torch.float32):
    """A frozen random model whose head is scaled up: peaked, clearly distinct teachers."""
    model = _model(seed, width, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.mul_(30.0)
    return model


def _batch(rows: int = 4, width: int = 9, route: list[int] | None = None) -> dict:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (rows, width), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    attention[3, 4:] = 0
    loss_mask = attention.bool().clone()
    loss_mask[:, :2] = False
    batch = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}
    if route is not None:
        batch["route"] = torch.tensor(route)
    return batch


TERMS = [
    ActiveTerm("fkl", "fkl", 1.0, temperature=2.0),
    ActiveTerm("jsd", "jsd", 0.5, temperature=1.5, beta=0.3),
    ActiveTerm("ce", "ce", 0.2),
]


def _step(teacher, inputs, engine="torch", seed=7, dtype=torch.float32, terms=TERMS):
    """One micro-batch's loss, its stats and the student's gradients (a fresh student)."""
    student = _model(seed, 12, dtype=dtype).train()
    out = micro_batch_loss(
        HiddenStates(student), teacher, inputs, terms, V, torch.tensor(23.0), engine, 5
    )
    out.loss.backward()
    grads = [p.grad.clone() for p in student.parameters()]
    return out, grads


# ---- the mixture -------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_weights_one_and_zero_are_the_first_teacher_bit_for_bit(engine):
    first, second = _teacher(0, 16), _teacher(1, 24)
    calls = []
    second.register_forward_hook(lambda *_: calls.append(1))
    inputs = step_inputs(_batch(), CPU)
    alone, alone_grads = _step(LiveTeacher(first), inputs, engine)
    several = MultiTeacher(
        [Member("a", 1.0, LiveTeacher(first)), Member("b", 0.0, LiveTeacher(second))]
    )
    mixed, mixed_grads = _step(several, inputs, engine)
    assert torch.equal(alone.loss, mixed.loss)
    assert all(torch.equal(x, y) for x, y in zip(alone_grads, mixed_grads, strict=True))
    for name in TERMS:
        assert torch.equal(alone.terms[name.name], mixed.terms[name.name])
    assert not calls, "a weight-0 teacher is never asked"
    assert torch.equal(mixed.stats["teacher/a/kl"], alone.stats["fkl"])
    assert "teacher/b/kl" not in mixed.stats


N, HS, HT, HT2, CHUNK = 13, 8, 6, 5, 5


def _problem(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hs": torch.randn(N, HS, generator=g, dtype=F64),
        "s_w": torch.randn(V, HS, generator=g, dtype=F64) * 0.8,
        "s_b": torch.randn(V, generator=g, dtype=F64) * 0.3,
        "t": [
            (
                torch.randn(N, HT, generator=g, dtype=F64),
                torch.randn(V, HT, generator=g, dtype=F64),
            ),
            (
                torch.randn(N, HT2, generator=g, dtype=F64),
                torch.randn(V, HT2, generator=g, dtype=F64) * 1.5,
            ),
        ],
        "labels": torch.randint(0, V, (N,), generator=g),
        "mask": torch.rand(N, generator=g) > 0.25,
    }


def _reference(p: dict, kind: str, weights: tuple[float, float], temp: float, beta: float):
    """Float64 loss and gradients: p_T = sum_i w_i softmax(z_i / T), written out plainly."""
    hs, w, b = (p[k].clone().requires_grad_(True) for k in ("hs", "s_w", "s_b"))
    mask = p["mask"]
    zs = hs @ w.T + b
    total = sum(weights)
    probs = sum(
        (wi / total) * torch.softmax(ht @ tw.T / temp, dim=-1)
        for wi, (ht, tw) in zip(weights, p["t"], strict=True)
    )
    # log p_T given as logits at temperature T: log_softmax(T log p_T / T) = log p_T.
    value = ref_divergence(kind, zs[mask], temp * probs.log()[mask], temperature=temp, beta=beta)
    loss = value.sum() / 11.0
    loss.backward()
    return loss.detach(), hs.grad, w.grad, b.grad


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (3.0, 1.0)])
def test_a_mixture_equals_the_float64_reference(engine, kind, weights):
    p = _problem()
    temp, beta = 2.0, 0.3
    want = _reference(p, kind, weights, temp, beta)
    dtype = torch.float32 if engine == "triton" else F64  # the kernel path is float32
    signals = tuple(TeacherSignal(ht.to(dtype), Head(tw.to(dtype))) for ht, tw in p["t"])
    mixture = MixtureSignal(("a", "b"), weights, signals)
    hs, w, b = (p[k].to(dtype).clone().requires_grad_(True) for k in ("hs", "s_w", "s_b"))
    term = ActiveTerm(kind, kind, 1.0, temperature=temp, beta=beta)
    out = distill_loss(
        hs, Head(w, b), mixture, p["labels"], p["mask"], [term], V,
        normalizer=11.0, engine=engine, chunk_size=CHUNK,
    )  # fmt: skip
    out.loss.backward()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    got_all = (out.loss, hs.grad, w.grad, b.grad)
    for name, got, ref in zip(("loss", "dh", "dw", "db"), got_all, want, strict=True):
        err = (got.detach().to(F64) - ref).abs().max().item()
        assert err <= tol * max(ref.abs().max().item(), 1e-3), f"{name}: {err:.3g}"
    # Each member's own KL(p_i || q) at T = 1 over the same rows.
    zs = (p["hs"] @ p["s_w"].T + p["s_b"])[p["mask"]]
    for name, (ht, tw) in zip(("a", "b"), p["t"], strict=True):
        ref = ref_divergence("fkl", zs, (ht @ tw.T)[p["mask"]]).sum()
        assert out.stats[f"teacher/{name}/kl"].item() == pytest.approx(ref.item(), rel=tol)
        assert out.stats[f"teacher/{name}/tokens"].item() == int(p["mask"].sum())


def test_a_mixture_of_live_teachers_in_the_step_equals_the_reference():
    """MultiTeacher -> MixtureSignal -> engine, on models: the mixture of the two teachers'
    own logits (float64 end to end)."""
    a, b = _teacher(0, 16, F64), _teacher(1, 24, F64)
    inputs = step_inputs(_batch(), CPU)
    several = MultiTeacher([Member("a", 0.5, LiveTeacher(a)), Member("b", 0.5, LiveTeacher(b))])
    term = [ActiveTerm("rkl", "rkl", 1.0, temperature=2.0)]
    out, _ = _step(several, inputs, dtype=F64, terms=term)
    student = _model(7, 12, dtype=F64)
    with torch.no_grad():
        rows = lambda m: m(**_kw(inputs)).logits[:, :-1][inputs.select]  # noqa: E731
        zs, za, zb = rows(student), rows(a), rows(b)
    mix = 0.5 * torch.softmax(za / 2.0, -1) + 0.5 * torch.softmax(zb / 2.0, -1)
    want = ref_divergence("rkl", zs, 2.0 * mix.log(), temperature=2.0).sum() / 23.0
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-9)


def _kw(inputs):
    return {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask}


# ---- routing -----------------------------------------------------------------------------


def _routed_pair(a, b) -> MultiTeacher:
    return MultiTeacher([Member("a", 1.0, LiveTeacher(a)), Member("b", 1.0, LiveTeacher(b))], True)


def test_a_batch_carries_each_samples_route():
    examples = [
        {"input_ids": [1, 2, 3], "loss_mask": [False, True, True], "route": 1},
        {"input_ids": [4, 5], "loss_mask": [False, True], "route": 0},
    ]
    batch = collate(examples, pad_id=0)
    assert batch["route"].tolist() == [1, 0]
    assert step_inputs(batch, CPU).route.tolist() == [1, 0]
    plain = collate([{k: v for k, v in ex.items() if k != "route"} for ex in examples], 0)
    assert "route" not in plain and step_inputs(plain, CPU).route is None


@pytest.mark.parametrize("engine", ENGINES)
def test_routing_scores_each_row_against_its_own_teacher(engine):
    a, b = _teacher(0, 16), _teacher(1, 24)
    route = [0, 1, 1, 0]
    inputs = step_inputs(_batch(route=route), CPU)
    routed = _routed_pair(a, b)
    signal = routed.signal(inputs)
    assert isinstance(signal, RoutedSignal)
    out, grads = _step(routed, inputs, engine)
    # Each row alone against the teacher its sample names, with the same global normalizer.
    want_loss, want_grads = 0.0, [torch.zeros_like(g) for g in grads]
    for row, i in enumerate(route):
        alone, g = _step(LiveTeacher((a, b)[i]), sub_inputs(inputs, torch.tensor([row])), engine)
        want_loss += alone.loss.item()
        want_grads = [x + y for x, y in zip(want_grads, g, strict=True)]
    assert out.loss.item() == pytest.approx(want_loss, rel=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # The teachers differ, so the route matters.
    swapped, _ = _step(routed, step_inputs(_batch(route=[1, 0, 0, 1]), CPU), engine)
    assert abs(swapped.terms["fkl"].item() / out.terms["fkl"].item() - 1) > 0.05
    # Each teacher's tokens are those of its rows.
    per_row = inputs.select.sum(dim=1).tolist()
    assert out.stats["teacher/a/tokens"].item() == per_row[0] + per_row[3]
    assert out.stats["teacher/b/tokens"].item() == per_row[1] + per_row[2]
    assert out.stats["tokens"].item() == sum(per_row)


def test_a_teacher_with_no_rows_in_a_micro_batch_still_reports_its_keys():
    a, b = _teacher(0, 16), _teacher(1, 24)
    calls = []
    b.register_forward_hook(lambda *_: calls.append(1))
    routed = _routed_pair(a, b)
    out, _ = _step(routed, step_inputs(_batch(route=[0, 0, 0, 0]), CPU))
    assert not calls
    assert out.stats["teacher/b/tokens"].item() == 0 and out.stats["teacher/b/kl"].item() == 0
    alone, _ = _step(LiveTeacher(a), step_inputs(_batch(), CPU))
    assert out.loss.item() == pytest.approx(alone.loss.item(), rel=1e-6)


# ---- whole runs --------------------------------------------------------------------------


def _recipe(tmp_path: Path, name: str, route: bool = False, **train_keys) -> dict:
    data = yaml.safe_load((TINY / "two_teachers.yaml").read_text())
    data["output"] = {"dir": str(tmp_path / name), "report": False}
    data["train"].update(progress=False, max_steps=4, log_every=1, warmup_steps=0, **train_keys)
    data["eval"] = {"every": 0, "max_batches": 2}
    data["data"].update(synthetic_size=96, seq_len=96)
    if route:
        rows = [
            {"prompt": r["prompt"], "completion": r["completion"], "who": ("big", "small")[i % 2]}
            for i, r in enumerate(arithmetic_problems(96, seed=0))
        ]
        path = tmp_path / "routed.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data["data"] = {"path": str(path), "seq_len": 96, "eval_fraction": 0.1}
        data["route_by"] = "who"
        for entry in data["teachers"]:
            entry.pop("weight")
    return data


def test_the_recipe_trains_and_logs_every_teacher(tmp_path):
    data = _recipe(tmp_path, "mix")
    data["eval"]["every"] = 2
    run = train(config_from_dict(data))
    rows = train_rows(run)
    for name in ("big", "small"):
        assert all(f"teacher/{name}/kl" in r and r[f"teacher/{name}/kl"] > 0 for r in rows)
        assert all(0 <= r[f"teacher/{name}/agreement"] <= 1 for r in rows)
    final = json.loads((run / "eval.json").read_text())
    for key in ("teacher/ce", "kl_teacher_student", "teacher/big/ce", "teacher/small/kl"):
        assert key in final
    assert final["teacher/big/ce"] != final["teacher/small/ce"]


@pytest.mark.parametrize("route", [False, True], ids=["mixture", "routing"])
def test_grad_accumulation_matches_one_big_batch(tmp_path, route):
    def run(name, mbs, accum):
        data = _recipe(tmp_path, name, route, micro_batch_size=mbs, grad_accum=accum)
        data["train"].update(max_steps=2, max_grad_norm=None)
        return train_rows(train(config_from_dict(data)))

    one, four = run("one", 8, 1), run("four", 2, 4)
    for a, b in zip(one, four, strict=True):
        for key in ("loss", "teacher/big/kl", "teacher/small/kl", "teacher/small/agreement"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_a_routed_run_resumes_exactly(tmp_path):
    full = train(config_from_dict(_recipe(tmp_path, "full", True)))
    cut = train(config_from_dict(_recipe(tmp_path, "cut", True, stop_at_step=2, save_every=2)))
    assert max(r["step"] for r in train_rows(cut)) == 2
    resumed = train(config_from_dict(_recipe(tmp_path, "cut", True)))
    drop = ("elapsed_s", "tokens_per_s", "train_s", "gen_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(train_rows(full)) == strip(train_rows(resumed))
    assert json.loads((full / "eval.json").read_text()) == json.loads(
        (resumed / "eval.json").read_text()
    )


def test_routing_may_mix_a_cache_and_a_model(tmp_path):
    """A cached teacher for the `big` samples, a live one for the `small` samples."""
    from anydistill.teachers.cache.command import CacheSettings, write_cache

    data = _recipe(tmp_path, "routed", True)
    data["objective"]["terms"] = [{"kind": "fkl"}]  # T = 1: a bucket tail is exact there
    lone = {k: v for k, v in data.items() if k not in ("teachers", "route_by")}
    lone["teacher"] = {k: v for k, v in data["teachers"][0].items() if k != "name"}
    cache = tmp_path / "cache"
    write_cache(config_from_dict(lone), cache, CacheSettings(k=16, samples_per_shard=64), False)
    data["teachers"][0] = {"name": "big", "kind": "cache", "path": str(cache)}
    data["eval"]["teacher"] = False
    rows = train_rows(train(config_from_dict(data)))
    assert all(r["teacher/big/kl"] > 0 and r["teacher/small/kl"] > 0 for r in rows)


# ---- the recipe keys and their refusals ---------------------------------------------------


def _base() -> dict:
    return yaml.safe_load((TINY / "two_teachers.yaml").read_text())


def test_teachers_stand_in_for_teacher_and_survive_a_save(tmp_path):
    cfg = config_from_dict(_base())
    assert cfg.teacher.init == cfg.teachers[0].init and cfg.teacher.tokenizer.vocab_size == 384
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    data = _base()
    data["teachers"][1] = {"name": "small", "path": "./somewhere"}
    resolved = resolve_paths(config_from_dict(data))
    assert Path(resolved.teachers[1].path).is_absolute()


def _changed(change) -> dict:
    data = _base()
    change(data)
    return data


def _set(path: str, value):
    def change(data):
        node = data
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _routed(data):
    for entry in data["teachers"]:
        entry.pop("weight")
    data["route_by"] = "who"
    data["data"] = {"path": "x.jsonl", "packing": False}


REFUSALS = [
    (_set("teachers.1.name", "big"), "teachers.1.name: `big` already names teachers.0"),
    (lambda d: [e.update(weight=0) for e in d["teachers"]], "teachers: every weight is 0"),
    (
        _set("teachers.1", {"name": "c", "kind": "cache", "path": "/tmp/c", "weight": 0.3}),
        "teachers.1.kind: a weighted mixture mixes full distributions",
    ),
    (_set("teacher", {"init": {"model_type": "llama"}}), "give either `teacher:`"),
    (
        lambda d: ([e.pop("weight") for e in d["teachers"]], d.update(route_by="who")),
        "route_by: the built-in synthetic corpus",
    ),
    (lambda d: d.pop("teachers") and d.update(teacher={"path": "x"}, route_by="w"), "route_by"),
    (lambda d: (_routed(d), d["teachers"][0].update(weight=0.5)), "teachers.0.weight: with route"),
    (
        lambda d: (_routed(d), d["data"].update(mode="text", packing=True)),
        "route_by: packed text blocks",
    ),
    (
        lambda d: (_routed(d), d.update(source={"kind": "teacher_generated"})),
        "route_by: source.kind `teacher_generated`",
    ),
    (_set("teachers.1.tokenizer", "gpt2"), "teachers.1.tokenizer: every teacher reads"),
    (_set("teachers.1.lora", {"r": 4}), "teachers.1.lora"),
    (_set("objective.terms", [{"kind": "hidden"}]), "objective.terms.0: `hidden` compares"),
    (_set("teachers.0.name", "a/b"), "teachers.0.name"),
    (_set("teachers.0.weight", -1), "teachers.0.weight"),
]


@pytest.mark.parametrize("change, match", REFUSALS)
def test_what_cannot_work_is_one_sentence(change, match):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_changed(change))
    message = str(err.value)
    assert match in message and "\n" not in message, message


def test_a_route_that_names_no_teacher_is_one_sentence(tmp_path):
    data = _recipe(tmp_path, "bad", True)
    path = Path(data["data"]["path"])
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[5]["who"] = "nobody"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data["data"]["eval_fraction"] = 0.0
    with pytest.raises(DataError, match=r"route_by: training record 5 has `who` 'nobody'"):
        train(config_from_dict(data))
    data["route_by"] = "missing"
    with pytest.raises(DataError, match="route_by: the training data has no `missing` column"):
        train(config_from_dict(data))


class _Fetching:
    """A member that records what it is asked to fetch ahead."""

    def __init__(self) -> None:
        self.fetched: list[list[dict]] = []
        self.closed = False

    def prefetch(self, batches):
        self.fetched.append(batches)

    def close(self):
        self.closed = True


def test_prefetch_reaches_the_members_that_fetch_ahead_with_their_own_rows():
    from anydistill.teachers.multi import Member, MultiTeacher

    a, b = _Fetching(), _Fetching()
    batch = {"input_ids": torch.arange(12).reshape(3, 4), "route": torch.tensor([1, 0, 1])}
    routed = MultiTeacher([Member("a", 1.0, a), Member("b", 1.0, b)], route=True)
    routed.prefetch([batch])
    assert a.fetched[0][0]["input_ids"].tolist() == [[4, 5, 6, 7]]
    assert b.fetched[0][0]["input_ids"].tolist() == [[0, 1, 2, 3], [8, 9, 10, 11]]
    mixed = MultiTeacher([Member("a", 1.0, a), Member("b", 0.0, b)])
    mixed.prefetch([batch])
    assert len(a.fetched) == 2 and len(b.fetched) == 1  # a weight-0 member is never asked
    mixed.close()
    assert a.closed and b.closed
