"""The term registry: one `register` call makes a new divergence work everywhere.

A fixture divergence (a skewed chi-squared, written on log-probs and reading `alpha`) is
registered for a test and removed after it. Through the registry alone it is accepted by the
recipe schema, runs on every engine (the triton engine computes its blocks with the torch
per-block math, since it has no kernel launch) against a float64 reference of its own
formula, and appears in `anydistill bench loss`.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from cli_helpers import fails_with, run_cli
from conftest import tiny_recipe
from torch import Tensor

from anydistill.config import CROSS_OPTION_MODELS, CROSS_OPTIONS, config_from_dict
from anydistill.errors import ConfigError
from anydistill.losses import registry
from anydistill.losses.engine import Head, SparseTeacher, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm, Objective, TermSpec
from anydistill.losses.registry import TermKind

NAME = "skew_chi2"
ENGINES = ["naive", "torch"] + (["triton"] if importlib.util.find_spec("triton") else [])
N, HS, HT, V = 17, 8, 6, 41


def skew_chi2(student_logp: Tensor, teacher_logp: Tensor, alpha: float = 0.5) -> Tensor:
    """chi^2(p || m), m = alpha p + (1 - alpha) q: sum (1 - alpha)^2 (p - q)^2 / m per row."""
    p, q = teacher_logp.exp(), student_logp.exp()
    m = alpha * p + (1.0 - alpha) * q
    live = m > 0  # where m = 0, p = q = 0 too: the entry adds nothing (and no NaN gradient)
    ratio = torch.where(live, (p - q).square() / torch.where(live, m, 1.0), 0.0)
    return (1.0 - alpha) ** 2 * ratio.sum(dim=-1)


@pytest.fixture
def chi2():
    kind = registry.register(
        TermKind(
            NAME, "divergence", "skewed chi-squared (a test fixture)",
            math=skew_chi2, params=("temperature", "alpha"), bench={"alpha": 0.5},
        )
    )  # fmt: skip
    yield kind
    registry.unregister(NAME)


def _reference(hs, s_w, ht, t_w, mask, temperature: float, alpha: float, normalizer: float):
    """Loss, d hidden and d weight in float64, from the formula in probabilities."""
    h = hs.detach().double().requires_grad_(True)
    w = s_w.detach().double().requires_grad_(True)
    rows = mask.nonzero(as_tuple=True)[0]
    q = torch.softmax(h[rows] @ w.T / temperature, dim=-1)
    p = torch.softmax(ht.double()[rows] @ t_w.double().T / temperature, dim=-1)
    m = alpha * p + (1 - alpha) * q
    value = ((1 - alpha) ** 2 * (p - q).square() / m).sum() * temperature**2 / normalizer
    value.backward()
    return value.detach(), h.grad, w.grad


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(N, HS, generator=g),
        torch.randn(V, HS, generator=g) * 0.7,
        torch.randn(N, HT, generator=g),
        torch.randn(V, HT, generator=g) * 0.9,
        torch.rand(N, generator=g) > 0.2,
    )


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_registered_divergence_runs_on_every_engine(chi2, engine):
    hs, s_w, ht, t_w, mask = _problem()
    temperature, alpha, norm = 2.0, 0.3, 9.0
    want = _reference(hs, s_w, ht, t_w, mask, temperature, alpha, norm)
    # float32 on every engine (the kernel's dtype); float64 where the engine allows it.
    dtypes = [torch.float32] + ([torch.float64] if engine != "triton" else [])
    for dtype in dtypes:
        h = hs.to(dtype).clone().requires_grad_(True)
        w = s_w.to(dtype).clone().requires_grad_(True)
        teacher = TeacherSignal(ht.to(dtype), Head(t_w.to(dtype)))
        term = ActiveTerm("chi", NAME, 1.0, temperature=temperature, alpha=alpha)
        out = distill_loss(
            h, Head(w), teacher, None, mask, [term], V, normalizer=norm, engine=engine,
            chunk_size=5,
        )  # fmt: skip
        out.loss.backward()
        tol = 1e-5 if dtype == torch.float32 else 1e-11
        for got, ref in zip((out.loss, h.grad, w.grad), want, strict=True):
            assert _rel(got.detach(), ref) <= tol, (dtype, got, ref)
        assert _rel(out.terms["chi"] * 1.0, want[0]) <= tol


def test_triton_falls_back_to_torch_rows_for_a_block_with_such_a_term(chi2):
    """Mixed with kernel kinds and ce, the triton engine equals the torch engine."""
    pytest.importorskip("triton")
    hs, s_w, ht, t_w, mask = _problem(1)
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(3))
    terms = [
        ActiveTerm("fkl", "fkl", 0.5, temperature=2.0),
        ActiveTerm("chi", NAME, 0.7, alpha=0.2),
        ActiveTerm("ce", "ce", 0.1),
    ]
    assert registry.kernel_terms(terms) is None
    assert registry.kernel_terms([terms[0], terms[2]]) is not None
    results = {}
    for engine in ("torch", "triton"):
        h = hs.clone().requires_grad_(True)
        w = s_w.clone().requires_grad_(True)
        out = distill_loss(
            h, Head(w), TeacherSignal(ht, Head(t_w)), labels, mask, terms, V,
            normalizer=5.0, engine=engine, chunk_size=4,
        )  # fmt: skip
        out.loss.backward()
        results[engine] = (out.loss.detach(), h.grad, w.grad)
    for a, b in zip(results["triton"], results["torch"], strict=True):
        assert torch.equal(a, b)


def test_a_cache_serves_it_when_it_says_so(chi2):
    """Listed with `cache`, it runs on a sparse teacher; a live-only kind is refused."""
    hs, s_w, ht, t_w, mask = _problem(2)
    lp = torch.log_softmax(ht @ t_w.T, dim=-1)
    logp, ids = lp.topk(V, dim=-1)  # k = V: the cache is the whole distribution
    sparse = SparseTeacher(ids, logp, torch.full((N,), float("-inf")), tail="renorm")
    term = [ActiveTerm("chi", NAME, 1.0, alpha=0.4)]
    cached = distill_loss(hs, Head(s_w), sparse, None, mask, term, V, normalizer=1.0).loss
    live = distill_loss(hs, Head(s_w), TeacherSignal(ht, Head(t_w)), None, mask, term, V, 1.0)
    assert _rel(cached, live.loss) <= 1e-5
    registry.register(
        TermKind("live_only", "divergence", "test", math=skew_chi2, teachers=("live",))
    )
    try:
        with pytest.raises(ValueError, match="top-k cache cannot serve a `live_only` term"):
            only = [ActiveTerm("x", "live_only", 1.0)]
            distill_loss(hs, Head(s_w), sparse, None, mask, only, V, normalizer=1.0)
    finally:
        registry.unregister("live_only")


def test_the_recipe_schema_accepts_it_only_while_registered(chi2):
    data = tiny_recipe("fkl")
    data["objective"]["terms"] = [{"kind": NAME, "alpha": 0.3, "temperature": 2.0}, {"kind": "ce"}]
    cfg = config_from_dict(data)
    assert cfg.objective.terms[0].kind == NAME and cfg.objective.terms[0].alpha == 0.3
    specs = [TermSpec(kind=t.kind, alpha=t.alpha) for t in cfg.objective.terms]
    assert Objective(specs, total_steps=3).active_terms(0)[0].kind == NAME
    data["objective"]["terms"][0]["taid"] = {"t_start": 0.5}
    with pytest.raises(ConfigError, match=f"`taid` only applies to a taid term, not {NAME}"):
        config_from_dict(data)
    registry.unregister(NAME)
    del data["objective"]["terms"][0]["taid"]
    with pytest.raises(ConfigError, match=f"unknown term kind '{NAME}'"):
        config_from_dict(data)


def test_it_appears_in_bench_loss(chi2, tmp_path):
    from anydistill.bench.loss import DIVERGENCE_TERMS, Shape, bench_loss

    assert DIVERGENCE_TERMS[NAME] == {"alpha": 0.5}
    records = bench_loss(
        [Shape(24, 41, 8, 8)], [NAME], ENGINES, torch.device("cpu"), torch.float32, 0, 1
    )
    assert {r["engine"] for r in records} == set(ENGINES)
    for r in records:
        assert r["divergence"] == NAME and "error" not in r, r
        assert r["loss_rel_err"] < 1e-5 and r["grad_rel_err"] < 1e-5, r
    # The command's default list is every registered divergence.
    args = ["bench", "loss", "--device", "cpu", "--shape", "16,23,4,4", "--json"]
    result = run_cli(*args, "--repeats", "1", "--warmup", "0", "--engine", "torch")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["divergence"] for r in rows] == list(registry.names("divergence"))
    assert NAME in [r["divergence"] for r in rows]


def test_an_unknown_kind_is_one_sentence(tmp_path, write_recipe):
    known = ", ".join(registry.names())
    data = tiny_recipe("fkl")
    data["objective"]["terms"] = [{"kind": "kl"}]
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value) == (
        f"`objective.terms.0.kind`: unknown term kind 'kl'; choose one of {known}"
    )
    path = write_recipe(tiny_recipe("fkl", output__dir=str(tmp_path / "run")))
    line = fails_with(run_cli("train", str(path), "objective.terms.0.kind=kl"), "unknown term")
    assert line.endswith(known) and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="term 'kl': `kind` is 'kl'; choose one of fkl, rkl"):
        Objective([TermSpec(kind="kl")], total_steps=1)
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        registry.divergence("kl", torch.zeros(1, 2), torch.zeros(1, 2))


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(TermKind("fkl", "divergence", "again", math=skew_chi2))
    with pytest.raises(ValueError, match="needs its math"):
        registry.register(TermKind("nomath", "divergence", "no math"))
    with pytest.raises(ValueError, match="unknown teachers"):
        registry.register(TermKind("x", "divergence", "x", math=skew_chi2, teachers=("oracle",)))
    assert "nomath" not in registry.TERMS and "x" not in registry.TERMS


def test_what_each_built_in_kind_declares():
    needs = {name: registry.get(name).needs for name in registry.names()}
    assert needs["ce"] == "nothing" and needs["fkl"] == "sparse-ok"
    assert needs["contrastive"] == "logits" and needs["mined"] == "aligned chunks"
    assert registry.names("divergence") == ("fkl", "rkl", "jsd", "tvd", "skl", "srkl", "taid")
    assert registry.names("cross") == ("alm", "uld", "gold_hybrid", "mined")
    # Every built-in divergence has a kernel launch; cross terms run outside the engine.
    assert all(registry.get(k).kernel is not None for k in registry.names("divergence"))
    assert all(registry.get(k).engines == () for k in registry.names("cross"))
    # The cross terms' option names are the registry's; config checks their values.
    assert {k: registry.get(k).options for k in registry.names("cross")} == CROSS_OPTIONS
    assert set(CROSS_OPTION_MODELS) == set(registry.names("cross"))


def test_the_kernel_module_takes_plain_numbers_only():
    """kernels/ imports nothing from the rest of anydistill (no cycle with losses/)."""
    import ast
    from pathlib import Path

    import anydistill.kernels

    for path in Path(anydistill.kernels.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("anydistill"):
                    assert name.startswith("anydistill.kernels"), (path.name, name)
