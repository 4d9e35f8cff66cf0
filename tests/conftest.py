"""Shared fixtures: tiny recipes pointed at a temp dir, CLI runner, shared data location."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a few shared cores: one thread per process avoids the oversubscription that
# makes small ops ~10x slower; it is inherited by the CLI subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Without a GPU, Triton kernels run in Triton's interpreter; it must be chosen before the
# first `import triton`, so here rather than in the test modules that use it.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"

# Rough seconds of the slowest files on a shared 2-core machine. `make test` runs xdist's
# worksteal: each of two workers starts on its half of the collection and an idle one takes
# the tail of the other's queue. Each half therefore starts with an equal share of these, so
# no slow file is left to run alone at the end.
SLOW_FILES = {
    "test_demo.py": 150,
    "test_ddp.py": 75,
    "test_fsdp2.py": 40,
    "test_train_options.py": 70,
    "test_cache.py": 45,
    "test_resume_safety.py": 45,
    "test_gpu_check.py": 35,
    "test_prune_recipes.py": 35,
    "test_zero_weight_invariance.py": 30,
    "test_run_dir_safety.py": 30,
    "test_traces_cli.py": 25,
    "test_feature_terms.py": 20,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow files split into two groups of about equal seconds, one at the start of each half
    of the collection; everything else keeps its order."""
    groups: tuple[list[str], list[str]] = ([], [])
    load = [0, 0]
    for name, seconds in sorted(SLOW_FILES.items(), key=lambda kv: -kv[1]):
        side = 0 if load[0] <= load[1] else 1
        groups[side].append(name)
        load[side] += seconds

    def of(group: list[str]) -> list[pytest.Item]:
        return sorted(
            (it for it in items if it.path.name in group),
            key=lambda it: group.index(it.path.name),
        )

    first, second = of(groups[0]), of(groups[1])
    rest = [it for it in items if it.path.name not in SLOW_FILES]
    split = max(0, len(items) // 2 - len(first))
    items[:] = first + rest[:split] + second + rest[split:]


def train_rows(run_dir: Path) -> list[dict]:
    """The `kind: train` rows of a run's metrics.jsonl."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def tiny_recipe(name: str = "fkl", **changes) -> dict:
    """A tiny recipe as a dict; `changes` are dotted keys (train__max_steps -> train.max_steps)."""
    data = yaml.safe_load((TINY / f"{name}.yaml").read_text())
    for key, value in changes.items():
        node = data
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


@pytest.fixture
def write_recipe(tmp_path):
    def write(data: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two saved tiny models: the second has a different tokenizer (vocab 320 vs 384)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from anydistill.data.synthetic import arithmetic_problems
    from anydistill.models.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_pair")
    texts = [r["text"] for r in arithmetic_problems(400, seed=0)]
    dirs = []
    for name, vocab in (("teacher", 384), ("other", 320)):
        tok = train_tokenizer(texts, vocab_size=vocab)
        config = AutoConfig.for_model(
            "llama",
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        )
        torch.manual_seed(0)  # the same weights whatever ran before this fixture
        model = AutoModelForCausalLM.from_config(config)
        out = root / name
        model.save_pretrained(out)
        tok.save_pretrained(out)
        dirs.append(out)
    return dirs[0], dirs[1]
