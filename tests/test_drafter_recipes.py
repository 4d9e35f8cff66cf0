"""The drafter recipes end to end: DistillSpec (on-policy TVD), then AdaSPEC selection."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_recipe, train_rows

from anydistill.config import config_from_dict
from anydistill.errors import ConfigError
from anydistill.train.loop import train


def test_distillspec_then_adaspec(tmp_path):
    spec = tiny_recipe(
        "drafter_distillspec",
        output__dir=str(tmp_path / "ref"),
        train__max_steps=4,
        eval__every=0,
        train__progress=False,
    )
    ref = train(config_from_dict(spec))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows(ref))
    ada = tiny_recipe(
        "drafter_adaspec",
        output__dir=str(tmp_path / "ada"),
        train__max_steps=4,
        eval__every=0,
        train__progress=False,
        objective__token_selection={"reference": str(ref), "keep": 0.4},
    )
    rows = train_rows(train(config_from_dict(ada)))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # keep = 1 selects every token: the same run as plain KD, step for step.
    full = tiny_recipe(
        "drafter_adaspec",
        output__dir=str(tmp_path / "all"),
        train__max_steps=2,
        train__warmup_steps=0,
        train__log_every=1,
        eval__every=0,
        train__progress=False,
        objective__token_selection={"reference": str(ref), "keep": 1.0},
    )
    plain = {
        **full,
        "objective": {"terms": [{"kind": "fkl"}]},
        "output": {**full["output"], "dir": str(tmp_path / "plain")},
    }
    a = train_rows(train(config_from_dict(full)))
    b = train_rows(train(config_from_dict(plain)))
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)


def test_token_selection_needs_a_live_teacher(tmp_path):
    data = tiny_recipe("drafter_adaspec")
    data["teacher"] = {"kind": "cache", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match="token_selection"):
        config_from_dict(data)
