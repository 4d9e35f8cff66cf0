"""Bits per byte of raw text with each model's own tokenizer (the cross-tokenizer yardstick)."""

from __future__ import annotations

import json
import math

import torch
from test_bad_input import fails_with, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from anydistill.eval.text_bpb import text_bits_per_byte

TEXTS = ["Question: Sam has 3 apples and buys 4 more. Answer: 7", "Tom reads 12 pages a day."]


def _direct(model, tok, text):
    """Full-logits NLL of every text token after bos, in float64, and the text's bytes."""
    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    logits = model(input_ids=ids).logits[0, :-1].double()
    nll = -torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum()
    return float(nll), len(text.encode())


def test_matches_a_direct_computation_for_two_tokenizers(tiny_pair):
    results = []
    for path in tiny_pair:  # different tokenizers (vocab 384 vs 320)
        model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        got = text_bits_per_byte(model, tok, TEXTS, batch_size=2)
        parts = [_direct(model, tok, t) for t in TEXTS]
        nll, nbytes = sum(p[0] for p in parts), sum(p[1] for p in parts)
        assert got["bytes"] == nbytes  # the same bytes for every tokenizer
        assert math.isclose(got["bits_per_byte"], nll / math.log(2) / nbytes, rel_tol=1e-5)
        results.append(got)
    assert results[0]["tokens"] != results[1]["tokens"]


def test_eval_texts_option(tmp_path):
    from conftest import tiny_recipe

    from anydistill.config import config_from_dict
    from anydistill.train.loop import train

    recipe = tiny_recipe(
        "fkl",
        output__dir=str(tmp_path / "run"),
        train__max_steps=2,
        train__warmup_steps=0,
        train__progress=False,
        eval__every=0,
        output__report=False,
    )
    run = train(config_from_dict(recipe))
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    result = run_cli("eval", str(run), "--texts", str(texts), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["student/text_bits_per_byte"] > 0 and scores["teacher/text_bits_per_byte"] > 0
    fails_with(run_cli("eval", str(run), "--texts", str(tmp_path / "no.txt")), "no.txt")
