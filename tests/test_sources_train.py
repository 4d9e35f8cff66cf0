"""Sources end to end: the tiny recipes, exact resume with a replay buffer, the contrastive
term against float64, upfront generation continued by a rerun, and bad configs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY, tiny_recipe, train_rows
from reference_divergences import log_probs, ref_divergence, ref_logits
from typer.testing import CliRunner

from anydistill.cli import app
from anydistill.config import config_from_dict
from anydistill.data.views import step_inputs
from anydistill.losses.objective import Objective, TermSpec
from anydistill.models.heads import HiddenStates
from anydistill.train.loop import train
from anydistill.train.step import micro_batch_loss

runner = CliRunner()
RECIPES = ["seqkd", "onpolicy", "mixture", "replay", "contrastive"]
# Few steps, short completions, a small corpus: each recipe runs in seconds.
QUICK = [
    "train.max_steps=3",
    "train.log_every=1",
    "train.progress=false",
    "eval.every=2",
    "eval.max_batches=1",
    "data.synthetic_size=96",
    "source.generation.max_new_tokens=12",
    "output.report=false",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train and decode faster on one thread (and do not stall a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", RECIPES)
def test_tiny_source_recipes_train_from_the_cli(tmp_path, name):
    out = tmp_path / name
    result = runner.invoke(
        app,
        ["train", str(TINY / f"{name}.yaml"), f"output.dir={out}", *QUICK],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert all("gen_s" in r and "train_s" in r for r in rows)
    assert (out / "final" / "config.json").is_file()
    if name == "seqkd":
        kinds = [json.loads(x)["kind"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert kinds[0] == "generate"
        assert (out / "generated" / "teacher.jsonl").is_file()
    if name in ("onpolicy", "contrastive"):
        assert all(r["gen_s"] > 0 for r in rows)


def _replay_cfg(tmp_path, name: str, **extra):
    return config_from_dict(
        tiny_recipe(
            "replay",
            output__dir=str(tmp_path / name),
            train__progress=False,
            train__max_steps=6,
            train__log_every=1,
            train__save_every=2,
            eval__every=2,
            eval__max_batches=1,
            output__report=False,
            output__save_final=False,
            data__synthetic_size=96,
            source__generation={"max_new_tokens": 10},
            source__replay={"buffer_size": 16, "init_prob": 0.5, "prob_step": 0.25},
            **extra,
        )
    )


def test_replay_buffer_survives_exact_resume(tmp_path):
    full = train(_replay_cfg(tmp_path, "full"))
    cut = train(_replay_cfg(tmp_path, "cut", train__stop_at_step=4))
    state = json.loads((cut / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["source"][0]["buffer"]  # the buffer really is in the checkpoint
    resumed = train(_replay_cfg(tmp_path, "cut"))
    keys = ("step", "loss", "grad_norm", "term/skl", "student_frac", "replay_prob", "replay_buffer")
    a = [{k: r[k] for k in keys} for r in train_rows(full)]
    b = [{k: r[k] for k in keys} for r in train_rows(resumed)]
    assert a == b
    assert {r["student_frac"] for r in a} == {0.0, 1.0}  # both kinds of batch happened
    assert json.loads((full / "eval.json").read_text()) == json.loads(
        (resumed / "eval.json").read_text()
    )


def test_upfront_generation_continues_after_a_crash(tmp_path):
    def cfg(name):
        return config_from_dict(
            tiny_recipe(
                "seqkd",
                output__dir=str(tmp_path / name),
                train__progress=False,
                train__max_steps=1,
                train__warmup_steps=0,
                eval__every=0,
                eval__max_batches=1,
                output__report=False,
                output__save_final=False,
                data__synthetic_size=64,
                source__generation={"max_new_tokens": 8, "batch_size": 16},
            )
        )

    whole = train(cfg("whole")) / "generated" / "teacher.jsonl"
    run = train(cfg("crashed"))
    # what a kill during generation leaves: the run's marker and lock, its tokenizer and one
    # chunk of generations (config.yaml is only written once set-up is done)
    for child in run.iterdir():
        if child.name not in (".anydistill-run", ".anydistill-lock", "tokenizer", "generated"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    made = run / "generated" / "teacher.jsonl"
    made.write_text("".join(made.read_text().splitlines(keepends=True)[:16]))
    train(cfg("crashed"))
    assert made.read_text() == whole.read_text()
    generate = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert generate["kind"] == "generate" and generate["sequences"] == len(
        whole.read_text().splitlines()
    )


def test_contrastive_term_matches_float64():
    from transformers import AutoConfig, AutoModelForCausalLM

    def lm(seed):
        config = AutoConfig.for_model(
            "llama",
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # spread-out distributions, so the divergences are O(1)
            model.get_output_embeddings().weight.mul_(40.0)
        return model

    student, teacher = lm(0), lm(1)
    torch.manual_seed(2)
    ids = torch.randint(3, 50, (4, 12))
    loss_mask = torch.zeros(4, 12, dtype=torch.bool)
    for row, (start, end) in enumerate([(3, 12), (5, 10), (3, 9), (5, 12)]):
        loss_mask[row, start:end] = True
    attention = torch.ones(4, 12, dtype=torch.long)
    attention[1, 10:] = attention[2, 9:] = 0
    batch = {
        "input_ids": ids,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "teacher_rows": torch.tensor([True, True, False, False]),
    }
    specs = [
        TermSpec(kind="contrastive", alpha=0.2, temperature=1.5, weight=0.7),
        TermSpec(kind="ce", weight=0.3),
    ]
    terms = Objective(specs, total_steps=1).active_terms(0)
    inputs = step_inputs(batch, torch.device("cpu"))
    n = float(inputs.select.sum())
    out = micro_batch_loss(
        HiddenStates(student), teacher, inputs, terms, 50, torch.tensor(n), "torch", 7
    )
    out.loss.backward()
    got = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad()

    # float64 reference: the same hidden states, projected and scored in float64
    def logits(model):
        hidden = HiddenStates(model)(ids, attention)[:, :-1][inputs.select]
        return ref_logits(hidden, model.get_output_embeddings().weight, None, 50)

    zs = logits(student)
    with torch.no_grad():
        zt = logits(teacher)
    on_teacher = inputs.teacher_rows
    skl = ref_divergence("skl", zs, zt, temperature=1.5, alpha=0.2)
    srkl = ref_divergence("srkl", zs, zt, temperature=1.5, alpha=0.2)
    contrastive = (skl[on_teacher].sum() + srkl[~on_teacher].sum()) / n
    ce = -log_probs(zs).gather(1, inputs.labels[:, None]).sum() / n
    ref = 0.7 * contrastive + 0.3 * ce
    ref.backward()
    assert out.terms["contrastive"].item() == pytest.approx(contrastive.item(), rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for name, p in student.named_parameters():
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-5 * scale)
    assert out.stats["tokens"].item() == n


def fails_with(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["source.kind=bogus"], "`source.kind`"),
        (["source.kind=mixture", "source.lambda=1.5"], "`source.lambda`"),
        (["source.kind=mixture", "source.lambda=-0.1"], "`source.lambda`"),
        (["objective.terms.0.kind=contrastive"], "source.kind"),
        (["source.kind=student_generated", "data.mode=text"], "source.kind"),
        (["source.kind=adaptive_replay", "eval.every=0"], "eval.every"),
    ],
)
def test_bad_source_configs_give_one_sentence(tmp_path, write_recipe, overrides, message):
    out = tmp_path / "run"
    path = write_recipe(tiny_recipe(output__dir=str(out), data__synthetic_size=64))
    fails_with(runner.invoke(app, ["train", str(path), *overrides]), message)
    assert not out.exists()


def test_missing_vllm_is_one_sentence(tmp_path, write_recipe):
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed")
    out = tmp_path / "run"
    path = write_recipe(tiny_recipe("onpolicy", output__dir=str(out), data__synthetic_size=64))
    result = runner.invoke(app, ["train", str(path), "source.generation.backend=vllm"])
    fails_with(result, "source.generation.backend is vllm")
    assert not out.exists()


def test_generating_from_text_only_data_names_the_source_key(tmp_path, write_recipe):
    from anydistill.data.synthetic import arithmetic_problems

    rows = arithmetic_problems(80, seed=2)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    out = tmp_path / "run"
    recipe = tiny_recipe(output__dir=str(out), data__path=str(data))
    del recipe["data"]["synthetic"]
    recipe["source"] = {"kind": "teacher_generated"}
    fails_with(runner.invoke(app, ["train", str(write_recipe(recipe))]), "source.kind")
    assert not out.exists()
