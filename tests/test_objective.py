"""Weight schedules, TAID's adaptive t, and the objective's validation and state."""

from __future__ import annotations

import json
import math

import pytest

from anydistill.losses.objective import Objective, TermSpec
from anydistill.losses.schedules import WeightSchedule
from anydistill.losses.taid import TaidSchedule

# --- WeightSchedule ---------------------------------------------------------------------


def test_constant_schedule():
    s = WeightSchedule(kind="constant", start=0.3, end=9.0)
    assert [s.value(i) for i in (0, 5, 10_000)] == [0.3, 0.3, 0.3]


def test_linear_schedule_with_warmup():
    s = WeightSchedule(kind="linear", start=1.0, end=0.0, warmup_steps=10, steps=20)
    assert s.value(0) == 1.0 and s.value(10) == 1.0
    assert s.value(15) == pytest.approx(0.75)
    assert s.value(20) == pytest.approx(0.5)
    assert s.value(30) == 0.0 and s.value(500) == 0.0


def test_cosine_schedule():
    s = WeightSchedule(kind="cosine", start=0.0, end=2.0, steps=100)
    assert s.value(0) == 0.0
    assert s.value(50) == pytest.approx(1.0)
    assert s.value(25) == pytest.approx(1.0 - math.cos(math.pi / 4))
    assert s.value(100) == pytest.approx(2.0) and s.value(1000) == pytest.approx(2.0)
    values = [s.value(i) for i in range(101)]
    assert values == sorted(values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "step", "start": 0.0, "end": 1.0, "steps": 3}, "kind must be one of"),
        ({"kind": "linear", "start": 0.0, "end": 1.0}, "needs steps >= 1"),
        ({"kind": "linear", "start": 0.0, "end": 1.0, "steps": 0}, "needs steps >= 1"),
        (
            {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 3, "warmup_steps": -1},
            "warmup_steps",
        ),
        ({"kind": "constant", "start": float("nan"), "end": 1.0}, "start must be a finite"),
    ],
)
def test_schedule_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightSchedule(**kwargs)


# --- TaidSchedule -----------------------------------------------------------------------


def _losses(n: int) -> list[float]:
    # A noisy, mostly decreasing loss curve with a few plateaus and bumps.
    return [2.0 / (1 + 0.05 * i) + 0.05 * math.sin(1.7 * i) for i in range(n)]


def test_taid_defaults_follow_the_paper():
    s = TaidSchedule(total_steps=100)
    assert (s.t_start, s.t_end, s.alpha, s.beta) == (0.4, 1.0, 5e-4, 0.99)
    assert s.value == 0.4


def test_taid_monotone_bounded_and_above_linear():
    s = TaidSchedule(total_steps=200, alpha=0.05)
    seen = [s.value]
    for i, loss in enumerate(_losses(300)):
        s.update(loss)
        seen.append(s.value)
        assert s.value >= s.linear(i + 1) - 1e-15
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    assert all(0.4 <= t <= 1.0 for t in seen)
    assert seen[-1] == 1.0


def test_taid_adaptive_rule_by_hand():
    s = TaidSchedule(total_steps=1_000_000, t_start=0.4, t_end=1.0, alpha=0.1, beta=0.9)
    s.update(2.0)  # first step: only records the loss (and the tiny linear floor)
    t1 = s.value
    assert t1 == pytest.approx(0.4 + 0.6 / 1_000_000)
    s.update(1.0)  # relative improvement 0.5 -> momentum 0.05
    m = 0.1 * 0.5
    expected = t1 + 0.1 * (1 / (1 + math.exp(-m))) * (1 - t1)
    assert s.value == pytest.approx(expected, rel=1e-12)
    # Faster improvement moves t faster than stagnation does.
    fast, slow = TaidSchedule(100_000, alpha=0.1), TaidSchedule(100_000, alpha=0.1)
    for i in range(20):
        fast.update(1.0 / (i + 1))
        slow.update(1.0)
    assert fast.value > slow.value


def test_taid_non_adaptive_is_linear_and_nan_is_ignored():
    s = TaidSchedule(total_steps=10, adaptive=False)
    for i in range(12):
        s.update(1.0)
        assert s.value == pytest.approx(min(1.0, 0.4 + 0.06 * (i + 1)))
    a = TaidSchedule(total_steps=1000, alpha=0.1)
    a.update(1.0)
    before = a.state_dict()
    a.update(float("nan"))
    assert a.state_dict()["momentum"] == before["momentum"]
    assert a.state_dict()["prev_loss"] == before["prev_loss"]


def test_taid_resume_reproduces_t_bitwise():
    losses = _losses(120)
    full = TaidSchedule(total_steps=100, alpha=0.02)
    reference = []
    for loss in losses:
        full.update(loss)
        reference.append(full.value)
    first = TaidSchedule(total_steps=100, alpha=0.02)
    for loss in losses[:47]:
        first.update(loss)
    state = json.loads(json.dumps(first.state_dict()))  # must survive plain serialization
    resumed = TaidSchedule(total_steps=100, alpha=0.02)
    resumed.load_state_dict(state)
    resumed_values = []
    for loss in losses[47:]:
        resumed.update(loss)
        resumed_values.append(resumed.value)
    assert resumed_values == reference[47:]  # exact equality, not approx


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 10, "t_start": 0.9, "t_end": 0.5}, "t_start <= t_end"),
        ({"total_steps": 10, "alpha": 2.0}, "alpha"),
        ({"total_steps": 10, "beta": 1.0}, "beta"),
    ],
)
def test_taid_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaidSchedule(**kwargs)


# --- Objective --------------------------------------------------------------------------


def test_active_terms_carry_current_weights_and_t():
    obj = Objective(
        [
            TermSpec(
                kind="fkl",
                weight=2.0,
                temperature=2.0,
                schedule={"kind": "linear", "start": 0.0, "end": 1.0, "steps": 10},
            ),
            TermSpec(kind="jsd", beta=0.2),
            TermSpec(kind="taid", taid={"t_start": 0.5, "alpha": 0.1}),
            TermSpec(kind="ce", name="labels", weight=0.1),
        ],
        total_steps=100,
    )
    terms = {t.name: t for t in obj.active_terms(5)}
    assert list(terms) == ["fkl", "jsd", "taid", "labels"]
    assert terms["fkl"].weight == pytest.approx(1.0)  # 2.0 x schedule 0.5
    assert terms["fkl"].temperature == 2.0
    assert terms["jsd"].beta == 0.2 and terms["jsd"].weight == 1.0
    assert terms["taid"].taid_t == 0.5
    assert terms["labels"].kind == "ce" and terms["labels"].weight == 0.1
    assert obj.active_terms(50)[0].weight == pytest.approx(2.0)
    assert obj.needs_teacher()
    assert not Objective([TermSpec(kind="ce")], total_steps=1).needs_teacher()


def test_schedule_steps_default_to_the_run_length():
    obj = Objective(
        [
            TermSpec(
                kind="fkl",
                schedule={"kind": "linear", "start": 1.0, "end": 0.0, "warmup_steps": 20},
            )
        ],
        total_steps=120,
    )
    assert obj.active_terms(70)[0].weight == pytest.approx(0.5)
    assert obj.active_terms(120)[0].weight == pytest.approx(0.0)


def test_after_step_advances_taid_and_state_round_trips():
    specs = [TermSpec(kind="taid", taid={"alpha": 0.05}), TermSpec(kind="ce")]
    obj = Objective(specs, total_steps=50)
    with pytest.raises(ValueError, match="TAID term 'taid'"):
        obj.after_step({"ce": 1.0})
    losses = _losses(60)
    seq = []
    for i, loss in enumerate(losses):
        if i == 25:
            state = json.loads(json.dumps(obj.state_dict()))
        obj.after_step({"taid": loss, "ce": 3.0})
        seq.append(obj.active_terms(i + 1)[0].taid_t)
    assert seq == sorted(seq) and seq[-1] == 1.0
    again = Objective(specs, total_steps=50)
    again.load_state_dict(state)
    replay = []
    for loss in losses[25:]:
        again.after_step({"taid": loss})
        replay.append(again.active_terms(0)[0].taid_t)
    assert replay == seq[25:]
    with pytest.raises(ValueError, match="same objective"):
        Objective([TermSpec(kind="fkl")], total_steps=50).load_state_dict(state)


@pytest.mark.parametrize(
    ("terms", "match"),
    [
        ([TermSpec(kind="kl")], r"term 'kl': `kind` is 'kl'"),
        ([TermSpec(kind="fkl"), TermSpec(kind="fkl")], r"term 'fkl': `name` is used twice"),
        ([TermSpec(kind="rkl", temperature=0.0)], r"term 'rkl': `temperature` must be > 0"),
        ([TermSpec(kind="ce", temperature=2.0)], r"term 'ce': `temperature` must be 1.0"),
        ([TermSpec(kind="jsd", name="j", beta=1.5)], r"term 'j': `beta` must be in \[0, 1\]"),
        ([TermSpec(kind="skl", alpha=-0.1)], r"term 'skl': `alpha` must be in \[0, 1\]"),
        ([TermSpec(kind="fkl", weight=-1.0)], r"term 'fkl': `weight`"),
        (
            [TermSpec(kind="fkl", schedule={"kind": "exp", "start": 0, "end": 1})],
            r"term 'fkl': `schedule` is invalid",
        ),
        (
            [TermSpec(kind="fkl", schedule={"kind": "linear", "begin": 0})],
            r"term 'fkl': `schedule` is invalid",
        ),
        ([TermSpec(kind="taid", taid={"t_start": 2.0})], r"term 'taid': `taid` is invalid"),
        ([TermSpec(kind="taid", taid={"total_steps": 5})], r"`taid` must not set total_steps"),
        ([TermSpec(kind="fkl", taid={"alpha": 0.1})], r"term 'fkl': `taid` only applies"),
        ([], "at least one term"),
    ],
)
def test_objective_validation(terms, match):
    with pytest.raises(ValueError, match=match):
        Objective(terms, total_steps=10)
