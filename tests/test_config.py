from pathlib import Path

import pytest
from conftest import ROOT, TINY, tiny_recipe

from anydistill.config import apply_overrides, config_from_dict, load_config
from anydistill.errors import ConfigError


def test_every_recipe_validates():
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 12
    for path in recipes:
        cfg = load_config(path)
        assert cfg.objective.terms


def test_overrides_types_and_nesting():
    cfg = load_config(
        TINY / "fkl.yaml",
        [
            "train.lr=1e-4",
            "train.max_steps=7",
            "objective.terms.0.temperature=2",
            "student.lora={r: 2}",
            "data.packing=true",
        ],
    )
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 7
    assert cfg.objective.terms[0].temperature == 2.0
    assert cfg.student.lora.r == 2 and cfg.data.packing is True


def test_override_errors_name_the_key():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"objective": {"terms": []}}, ["objective.terms.3.weight=1"])


def test_defaults_fill_optional_sections():
    data = tiny_recipe()
    del data["train"], data["eval"], data["output"]
    cfg = config_from_dict(data)
    assert cfg.train.max_steps == 100 and cfg.output.dir == "runs/anydistill"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"objective__terms": [{"kind": "fkl", "temprature": 2}]},
            "unknown key `objective.terms.0.temprature`",
        ),
        ({"train__lr": "fast"}, "`train.lr`"),
        ({"objective__terms": [{"kind": "kl"}]}, "`objective.terms.0.kind`"),
        ({"objective__terms": []}, "`objective.terms`"),
        ({"objective__terms": [{"kind": "fkl"}, {"kind": "fkl"}]}, "unique"),
        ({"objective__terms": [{"kind": "ce", "temperature": 2.0}]}, "no temperature"),
        ({"objective__terms": [{"kind": "jsd", "beta": 1.5}]}, "`objective.terms.0.beta`"),
        ({"teacher__path": "x"}, "exactly one of `path`"),
        ({"teacher__lora": {"r": 4}}, "teacher.lora"),
        ({"train__stop_at_step": 500}, "stop_at_step"),
        ({"data__path": "x.jsonl"}, "exactly one of `path` or `synthetic`"),
        ({"student__tokenizer": {"vocab_size": 400}}, "student.tokenizer"),
        ({"bogus": 1}, "unknown key `bogus`"),
    ],
)
def test_bad_configs_give_one_sentence(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", "`")) as err:
        config_from_dict(tiny_recipe(**change))
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
