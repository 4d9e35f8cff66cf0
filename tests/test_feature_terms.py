"""Feature terms (`hidden`, `attention`): the math against float64, the step's plumbing against
a hand computation, and the recipe through training, resume and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_recipe, train_rows
from transformers import LlamaConfig, LlamaForCausalLM

from anydistill.config import config_from_dict
from anydistill.data.views import step_inputs
from anydistill.errors import ConfigError
from anydistill.losses.features import (
    FeaturePlan,
    FeatureProjections,
    FeatureSpec,
    auto_pairs,
    feature_term,
    hidden_rows,
    map_rows,
    resolve_spec,
)
from anydistill.losses.objective import ActiveTerm
from anydistill.models.features import Features, Needs
from anydistill.models.heads import HiddenStates
from anydistill.teachers import LiveTeacher
from anydistill.train.loop import train
from anydistill.train.step import micro_batch_loss


def _ref_mse(s, t):
    return ((s.double() - t.double()) ** 2).mean(-1)


def _ref_cosine(s, t):
    s, t = s.double(), t.double()
    return 1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1)).clamp_min(1e-8)


def _ref_map(s, t):
    """KL(t || s) per row and head in float64, with 0 log 0 = 0, averaged over heads."""
    s, t = s.double(), t.double()
    heads = s.shape[1]
    t = t.reshape(t.shape[0], heads, -1, t.shape[-1]).mean(2)
    safe = lambda x: torch.log(torch.where(t > 0, x, torch.ones_like(x)))  # noqa: E731
    kl = torch.where(t > 0, t * (safe(t) - safe(s)), torch.zeros_like(t))
    return kl.sum(-1).mean(-1)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_hidden_rows_match_float64_values_and_gradients(loss, scale):
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(9, 16, generator=g) * scale).requires_grad_(True)
    t = torch.randn(9, 16, generator=g) * scale
    t[3] = s.detach()[3]  # an exact match: zero distance and gradient
    ref = _ref_mse if loss == "mse" else _ref_cosine
    s64 = s.detach().double().requires_grad_(True)
    want = ref(s64, t)
    got = hidden_rows(s, t, loss)
    atol = 1e-6 * scale**2 if loss == "mse" else 1e-6  # cosine is scale-free
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=atol)
    weights = torch.rand(9, generator=g)
    (got * weights).sum().backward()
    (want * weights.double()).sum().backward()
    atol = 1e-5 * float(s64.grad.abs().max())  # float32 rounding at the exact-match row
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=atol)
    assert got[3].abs() < 1e-6


@pytest.mark.parametrize("teacher_heads", [2, 4])
def test_map_rows_match_float64_with_masked_keys_and_grouped_heads(teacher_heads):
    g = torch.Generator().manual_seed(1)
    n, heads, keys = 7, 2, 6
    s_logits = torch.randn(n, heads, keys, generator=g) * 4
    t_logits = torch.randn(n, teacher_heads, keys, generator=g) * 30  # near one-hot rows
    s_logits[:, :, 4:] = float("-inf")  # causal: later keys carry no mass on either side
    t_logits[:, :, 4:] = float("-inf")
    s_logits.requires_grad_(True)
    s = s_logits.softmax(-1)
    t = t_logits.softmax(-1)
    got = map_rows(s, t)
    s64_logits = s_logits.detach().double().requires_grad_(True)
    want = _ref_map(s64_logits.softmax(-1), t)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(s_logits.grad.double(), s64_logits.grad, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(s_logits.grad).all()
    # the same distribution on both sides is a zero KL
    same = map_rows(t.reshape(n, heads, -1, keys).mean(2), t)
    assert same.abs().max() < 1e-6


def test_a_teacher_head_count_that_is_no_multiple_is_refused():
    with pytest.raises(ConfigError, match="multiple of the student's"):
        map_rows(torch.full((2, 2, 3), 1 / 3), torch.full((2, 3, 3), 1 / 3))


def test_auto_pairs_and_explicit_pairs_checked_against_the_models():
    assert auto_pairs(2, 4) == ((0, 1), (1, 3))
    assert auto_pairs(4, 4) == ((0, 0), (1, 1), (2, 2), (3, 3))
    assert auto_pairs(3, 12)[-1] == (2, 11)
    spec = resolve_spec("h", "hidden", {"layers": [[0, 2]], "loss": "cosine"}, 2, 4)
    assert spec == FeatureSpec("h", "hidden", "hidden", "cosine", ((0, 2),))
    assert resolve_spec("a", "attention", {"target": "map"}, 2, 4).loss == "kl"
    with pytest.raises(ConfigError, match="teacher layer 4, but the teacher has 4 layers"):
        resolve_spec("h", "hidden", {"layers": [[0, 4]]}, 2, 4)


def test_a_term_averages_its_pairs_through_the_projections():
    g = torch.Generator().manual_seed(2)
    spec = FeatureSpec("h", "hidden", "hidden", "mse", ((0, 1), (1, 3)))
    projections = FeatureProjections([spec], 8, 12)
    assert sorted(projections.keys()) == ["h:0:1", "h:1:3"]
    student = Features(
        hidden={0: torch.randn(5, 8, generator=g), 1: torch.randn(5, 8, generator=g)}
    )
    teacher = Features(
        hidden={1: torch.randn(5, 12, generator=g), 3: torch.randn(5, 12, generator=g)}
    )
    got = feature_term(spec, student, teacher, projections)
    want = (
        sum(
            _ref_mse(
                student.hidden[i] @ projections[f"h:{i}:{j}"].weight.T, teacher.hidden[j]
            ).sum()
            for i, j in spec.pairs
        )
        / 2
    )
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert len(FeatureProjections([spec], 8, 8)) == 0  # same widths: no projection


def _llama(hidden=32, layers=3, heads=4, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


def _inputs():
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    loss_mask = attention.bool().clone()
    loss_mask[:, :2] = False
    return step_inputs({"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask},
                       torch.device("cpu"))  # fmt: skip


TERMS = [
    ActiveTerm("hidden", "hidden", 1.0),
    ActiveTerm("out", "attention", 0.5),
    ActiveTerm("maps", "attention", 2.0),
]
OPTIONS = {
    "hidden": ("hidden", {"layers": "auto", "loss": "mse"}),
    "out": ("attention", {"layers": [[1, 2]], "loss": "cosine"}),
    "maps": ("attention", {"layers": [[0, 1]], "target": "map"}),
}


def _plan(student, teacher, seed=0):
    specs = {n: resolve_spec(n, k, o, 2, 3) for n, (k, o) in OPTIONS.items()}
    torch.manual_seed(seed)
    width = lambda m: m.config.hidden_size  # noqa: E731
    return FeaturePlan(
        specs, FeatureProjections(list(specs.values()), width(student), width(teacher))
    )


def test_a_student_identical_to_its_teacher_scores_zero_on_every_feature_term():
    teacher = _llama()
    student = _llama()
    student.load_state_dict(teacher.state_dict())
    diagonal = {"hidden": {}, "out": {"layers": [[1, 1]]}, "maps": {"layers": [[2, 2]]}}
    specs = {n: resolve_spec(n, k, {**o, **diagonal[n]}, 3, 3) for n, (k, o) in OPTIONS.items()}
    plan = FeaturePlan(specs, FeatureProjections(list(specs.values()), 32, 32))
    inputs = _inputs()
    out = micro_batch_loss(HiddenStates(student), LiveTeacher(teacher), inputs, TERMS, 50,
                           torch.tensor(10.0), "torch", None, features=plan)  # fmt: skip
    for name in ("hidden", "out", "maps"):
        assert abs(out.terms[name].item()) < 1e-6, name


def test_attention_maps_in_the_step_match_transformers_attentions():
    teacher, student = _llama(32, 3, 4, seed=0), _llama(16, 2, 2, seed=1)
    plan = _plan(student, teacher)
    inputs = _inputs()
    norm = torch.tensor(7.0)
    model = HiddenStates(student, plan.projections)
    out = micro_batch_loss(model, LiveTeacher(teacher), inputs, TERMS, 50, norm, "torch", None,
                           features=plan)  # fmt: skip
    out.loss.backward()
    assert all(p.grad is not None for p in plan.projections.parameters())
    with torch.no_grad():
        kw = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                  output_attentions=True)  # fmt: skip
        t, s = teacher.model(**kw), student.model(**kw)
        pick = lambda a: a.transpose(1, 2)[:, :-1][inputs.select]  # noqa: E731
        want = _ref_map(pick(s.attentions[0]), pick(t.attentions[1])).sum() / 7.0
    torch.testing.assert_close(out.terms["maps"].double(), want, rtol=1e-5, atol=1e-8)
    assert out.terms["out"] > 0 and out.terms["hidden"] > 0


def test_hidden_term_of_a_non_final_pair_matches_transformers_hidden_states():
    teacher, student = _llama(32, 3, 4, seed=0), _llama(16, 2, 2, seed=1)
    specs = {"h": resolve_spec("h", "hidden", {"layers": [[0, 1]]}, 2, 3)}
    torch.manual_seed(0)
    plan = FeaturePlan(specs, FeatureProjections(list(specs.values()), 16, 32))
    inputs = _inputs()
    norm = torch.tensor(5.0)
    out = micro_batch_loss(HiddenStates(student, plan.projections), LiveTeacher(teacher), inputs,
                           [ActiveTerm("h", "hidden", 1.0)], 50, norm, "torch", None,
                           features=plan)  # fmt: skip
    with torch.no_grad():
        kw = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                  output_hidden_states=True)  # fmt: skip
        t, s = teacher.model(**kw), student.model(**kw)
        rows = lambda x: x[:, :-1][inputs.select].double()  # noqa: E731
        w = plan.projections["h:0:1"].weight.double()
        want = _ref_mse(rows(s.hidden_states[1]) @ w.T, rows(t.hidden_states[2])).sum() / 5.0
    torch.testing.assert_close(out.terms["h"].double(), want, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-8)


def test_needs_name_each_side_s_layers():
    plan = _plan(_llama(16, 2, 2), _llama())
    student, teacher = plan.needs(TERMS)
    assert student == Needs(hidden_layers=(0, 1), attention_layers=(1,), map_layers=(0,))
    assert teacher == Needs(hidden_layers=(1, 2), attention_layers=(2,), map_layers=(1,))


def _cfg(tmp_path, name, **changes):
    base = dict(
        output__dir=str(tmp_path / name),
        train__progress=False,
        train__max_steps=6,
        train__log_every=1,
        eval__every=0,
        output__report=False,
        data__synthetic_size=120,
    )
    return config_from_dict(tiny_recipe("hidden", **{**base, **changes}))


def test_the_recipe_trains_resumes_exactly_and_keeps_projections_out_of_final(tmp_path):
    full = train(_cfg(tmp_path, "full"))
    cut = train(_cfg(tmp_path, "cut", train__stop_at_step=3))
    assert (cut / "checkpoints" / "step-3" / "extras.safetensors").is_file()
    resumed = train(_cfg(tmp_path, "cut"))
    keys = ("step", "loss", "grad_norm", "term/hidden", "term/attention_maps", "term/fkl")
    a = [{k: r[k] for k in keys} for r in train_rows(full)]
    b = [{k: r[k] for k in keys} for r in train_rows(resumed)]
    assert a == b
    assert a[-1]["term/hidden"] < a[0]["term/hidden"]  # the projection and student learn
    from safetensors import safe_open

    with safe_open(str(full / "final" / "model.safetensors"), "pt") as f:
        assert not any("extras" in k or ":" in k for k in f.keys())  # noqa: SIM118
    config = json.loads((full / "final" / "config.json").read_text())
    assert config["hidden_size"] == 32


def test_grad_accumulation_gives_the_same_feature_loss(tmp_path):
    changes = dict(train__max_steps=2, train__max_grad_norm=None, train__warmup_steps=0)
    one = train_rows(train(_cfg(tmp_path, "one", train__micro_batch_size=8, **changes)))
    four = train_rows(train(_cfg(tmp_path, "four", train__micro_batch_size=2,
                                 train__grad_accum=4, **changes)))  # fmt: skip
    for a, b in zip(one, four, strict=True):
        assert a["term/hidden"] == pytest.approx(b["term/hidden"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_with_a_lora_student_cut_from_the_teacher(tmp_path):
    cfg = _cfg(
        tmp_path,
        "lora",
        train__max_steps=2,
        train__warmup_steps=0,
        student={"from_teacher": {"layers": [0, 3]}, "lora": {"r": 4}},
        objective={"terms": [{"kind": "fkl"}, {"kind": "hidden", "options": {"layers": "auto"}}]},
    )
    rows = train_rows(train(cfg))
    assert rows[0]["term/hidden"] > 0 and all(r["loss"] == r["loss"] for r in rows)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(teacher={"kind": "cache", "path": "/nonexistent"}), "teacher cache does not hold"),
        (dict(student__attn_implementation=None), "set student.attn_implementation: eager"),
        (dict(teacher__attn_implementation="sdpa"), "set teacher.attn_implementation: eager"),
        (
            dict(objective={"terms": [{"kind": "hidden", "options": {"target": "map"}}]}),
            "does not take option `target`",
        ),
        (
            dict(
                objective={
                    "terms": [{"kind": "attention", "options": {"target": "map", "loss": "mse"}}]
                }
            ),
            "compared by KL",
        ),  # fmt: skip
        (dict(objective={"terms": [{"kind": "hidden", "options": {"layers": []}}]}), "pair"),
    ],
)
def test_bad_feature_recipes_are_one_sentence(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, "bad", **change)


def test_a_layer_the_student_lacks_is_refused_before_training(tmp_path):
    terms = [{"kind": "hidden", "options": {"layers": [[2, 0]]}}]
    cfg = _cfg(tmp_path, "bad", objective={"terms": terms})
    with pytest.raises(ConfigError, match="student layer 2, but the student has 2 layers"):
        train(cfg)
    assert not (tmp_path / "bad" / "checkpoints").exists()
