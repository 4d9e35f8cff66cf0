"""Students of another architecture in a run: `student.from_teacher.convert`, the `mixer` term,
`stages:` (boundaries, exact resume inside and across them) and `anydistill convert`."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import fails_with, run_cli
from conftest import TINY, tiny_recipe, train_rows
from safetensors.torch import load_file

from anydistill.config import RunConfig, config_from_dict
from anydistill.train.loop import train

QUICK = dict(
    train__progress=False,
    train__log_every=1,
    eval__every=0,
    eval__max_batches=1,
    output__report=False,
    train__device="cpu",
    data__synthetic_size=120,
)
STAGES = [
    {"name": "align", "steps": 3, "terms": ["mixer"], "trainable": "mixers", "lr": 3e-3},
    {"name": "distill", "steps": 3, "terms": ["fkl"], "trainable": "all", "lr": 1e-3},
]


def _run(tmp_path, name: str, recipe: str = "hybrid_mamba2", **changes):
    data = tiny_recipe(recipe, output__dir=str(tmp_path / name), stages=STAGES, **QUICK)
    for key, value in changes.items():
        node = data
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return train(config_from_dict(data))


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


@pytest.mark.parametrize("stop", [3, 4])
def test_resume_at_a_stage_boundary_and_inside_stage_two_is_exact(tmp_path, stop):
    whole = _run(tmp_path, "whole")
    cut = _run(tmp_path, "cut", train__stop_at_step=stop, train__save_every=1)
    assert not (cut / "final").exists()
    state = json.loads((cut / "checkpoints" / f"step-{stop}" / "state.json").read_text())
    assert state["stage"] == ("align" if stop == 3 else "distill")
    _run(tmp_path, "cut", train__save_every=1)
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("step", "loss", "lr", "grad_norm")
    assert [[r.get(k) for k in keys] for r in train_rows(whole)] == [
        [r.get(k) for k in keys] for r in train_rows(cut)
    ]
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    stages = [(r["step"], r["stage"]) for r in rows if r["kind"] == "stage"]
    assert stages == [(0, "align"), (3, "distill")]
    terms = [sorted(k for k in r if k.startswith("term/")) for r in train_rows(whole)]
    assert terms == [["term/mixer"]] * 3 + [["term/fkl"]] * 3
    plan = json.loads((cut / "converted" / "convert_plan.json").read_text())
    assert plan["kept"] == [2]  # 25% of 4 layers, the resume rebuilt it from this plan


def test_the_align_stage_moves_only_the_mixers(tmp_path):
    from convert_helpers import tiny_teacher

    from anydistill.models.convert import ConvertSpec, convert, mixer_parameters, plan_conversion
    from anydistill.models.heads import HiddenStates
    from anydistill.train.stages import Stages

    teacher = tiny_teacher(layers=4)
    student = convert(teacher, plan_conversion(teacher.config, ConvertSpec("bamba", count=1)))
    cfg = RunConfig.model_validate(tiny_recipe("hybrid_mamba2", stages=STAGES))
    model = HiddenStates(student)
    stages = Stages(cfg, model)
    optimizer, _ = stages.enter(stages.at(0))
    mixers = {id(p) for p in mixer_parameters(student)}
    assert mixers and all(p.requires_grad == (id(p) in mixers) for p in student.parameters())
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == mixers
    stages.enter(stages.at(3))
    assert all(p.requires_grad for p in student.parameters())


def test_with_lora_the_align_stage_trains_whole_mixers_and_then_the_adapters():
    from convert_helpers import tiny_teacher

    from anydistill.models.convert import ConvertSpec, convert, mixer_parameters, plan_conversion
    from anydistill.models.heads import HiddenStates, unwrap
    from anydistill.models.lora import add_lora
    from anydistill.train.stages import Stages

    teacher = tiny_teacher(layers=4)
    student = convert(teacher, plan_conversion(teacher.config, ConvertSpec("bamba", count=1)))
    student = add_lora(student, 4, 8, 0.0, "all-linear")
    lora = {id(p) for n, p in student.named_parameters() if "lora_" in n}
    cfg = RunConfig.model_validate(tiny_recipe("hybrid_mamba2", stages=STAGES))
    stages = Stages(cfg, HiddenStates(student))
    stages.enter(stages.at(0))
    mixers = {id(p) for p in mixer_parameters(unwrap(student))}
    assert {id(p) for p in student.parameters() if p.requires_grad} == mixers
    stages.enter(stages.at(3))  # `all` is the LoRA student's own set: its adapters
    assert {id(p) for p in student.parameters() if p.requires_grad} == lora


def test_mixer_term_is_the_mean_squared_error_of_each_mixer_on_the_teachers_input():
    from convert_helpers import tiny_teacher

    from anydistill.losses.mixer import converted_layers, mixer_loss
    from anydistill.models.convert import ConvertSpec, convert, plan_conversion
    from anydistill.models.convert.align import mixer_of

    teacher = tiny_teacher(layers=4)
    student = convert(teacher, plan_conversion(teacher.config, ConvertSpec("bamba", count=1)))
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    value = mixer_loss(student, teacher, ids, mask, torch.tensor(7.0))
    layers = converted_layers(student)
    expected = 0.0
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args, kwargs, out):
        seen.update(x=kwargs["hidden_states"], y=out[0])

    for layer in layers:
        attn = teacher.model.layers[layer].self_attn
        handle = attn.register_forward_hook(keep, with_kwargs=True)
        with torch.no_grad():
            teacher(input_ids=ids, attention_mask=mask)
        handle.remove()
        for row in range(2):
            n = int(mask[row].sum())
            pred = mixer_of(student, layer)(hidden_states=seen["x"][row : row + 1, :n])
            expected += float((pred - seen["y"][row : row + 1, :n]).pow(2).mean(-1).sum())
    assert float(value) == pytest.approx(expected / (len(layers) * 7.0), rel=1e-5)


def test_stage_and_mixer_refusals():
    def refused(**changes) -> str:
        with pytest.raises(ValueError) as err:
            RunConfig.model_validate(tiny_recipe("hybrid_mamba2", **changes))
        return str(err.value)

    bad_term = [{**STAGES[0], "terms": ["nope"]}, STAGES[1]]
    assert "stages.0.terms: `nope`" in refused(stages=bad_term)
    assert "train.max_steps is 7" in refused(train__max_steps=7, stages=STAGES)
    assert "names must be unique" in refused(stages=[STAGES[0], {**STAGES[1], "name": "align"}])
    plain = tiny_recipe("fkl", stages=[{"name": "a", "steps": 2, "trainable": "mixers"}])
    with pytest.raises(ValueError, match="stages.0.trainable"):
        RunConfig.model_validate(plain)
    no_convert = tiny_recipe("fkl", objective__terms=[{"kind": "mixer"}])
    with pytest.raises(ValueError, match="mixer"):
        RunConfig.model_validate(no_convert)
    cfg = RunConfig.model_validate(tiny_recipe("hybrid_mamba2"))
    assert cfg.train.max_steps == 20  # the stages set it


def test_convert_command_writes_a_loadable_hybrid_and_refuses_a_full_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hybrid"
    result = run_cli("convert", TINY / "hybrid_mamba2.yaml", "--out", out)
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "bamba" and model.config.attn_layer_indices == [2]
    assert (out / "convert_plan.json").is_file() and (out / "tokenizer.json").is_file()
    ids = torch.arange(3, 20)[None]
    assert torch.isfinite(model(ids).logits).all()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    fails_with(run_cli("convert", TINY / "hybrid_mamba2.yaml", "--out", mine), "--out")
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1


def test_the_real_size_hybrid_recipe_validates():
    from conftest import ROOT

    from anydistill.config import load_config

    cfg = load_config(ROOT / "recipes" / "qwen3-4b-to-gdn-hybrid.yaml")
    convert = cfg.student.from_teacher.convert
    assert convert.to == "qwen3_5_text" and convert.keep_attention.fraction == 0.25
    assert [s.name for s in cfg.stages] == ["align", "distill"] and cfg.train.max_steps == 3500
