"""The teacher seam: each kind answers `signal(inputs, needs)` for the same batch view."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from anydistill.data.views import step_inputs
from anydistill.errors import ConfigError, TrainingError
from anydistill.losses.engine import TeacherSignal
from anydistill.teachers import AlignedTeacher, LiveTeacher, Needs, as_teacher, teacher_signal


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0
    loss_mask = attention.bool().clone()
    loss_mask[:, :2] = False
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}


def test_live_teacher_gives_final_rows_and_the_requested_layers():
    model = _model()
    inputs = step_inputs(_batch(), torch.device("cpu"))
    signal = LiveTeacher(model).signal(inputs, Needs(hidden_layers=(0, 2), attention_layers=(1,)))
    assert isinstance(signal, TeacherSignal)
    n = int(inputs.select.sum())
    assert signal.hidden.shape == (n, 16)
    with torch.no_grad():
        out = model.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            output_hidden_states=True,
        )
    rows = lambda x: x[:, :-1][inputs.select]  # noqa: E731
    torch.testing.assert_close(signal.hidden, rows(out.last_hidden_state))
    assert sorted(signal.features.hidden) == [0, 2]
    torch.testing.assert_close(signal.features.hidden[0], rows(out.hidden_states[1]))
    # The last block's output is taken before the final norm (transformers' last hidden
    # state is after it).
    with torch.no_grad():
        normed = model.model.norm(signal.features.hidden[2])
    torch.testing.assert_close(normed, rows(out.last_hidden_state))
    assert signal.features.attention[1].shape == (n, 16)
    plain = LiveTeacher(model).signal(inputs)
    assert plain.features is None
    torch.testing.assert_close(plain.hidden, signal.hidden)


def test_the_attention_output_is_what_the_layer_adds_before_its_mlp():
    """Layer 0's attention output plus its input embedding is the residual stream the MLP
    reads: a check that the hook caught the attention module's output, not something else."""
    model = _model()
    inputs = step_inputs(_batch(), torch.device("cpu"))
    signal = LiveTeacher(model).signal(inputs, Needs(hidden_layers=(0,), attention_layers=(0,)))
    with torch.no_grad():
        embed = model.model.embed_tokens(inputs.input_ids)[:, :-1][inputs.select]
        residual = embed + signal.features.attention[0]
        block = model.model.layers[0]
        after = residual + block.mlp(block.post_attention_layernorm(residual))
    torch.testing.assert_close(after, signal.features.hidden[0])


@pytest.mark.parametrize("needs", [Needs(hidden_layers=(3,)), Needs(attention_layers=(-1,))])
def test_a_layer_the_teacher_lacks_is_one_sentence(needs):
    inputs = step_inputs(_batch(), torch.device("cpu"))
    with pytest.raises(ConfigError, match="layer"):
        LiveTeacher(_model()).signal(inputs, needs)


def test_an_aligned_teacher_refuses_a_batch_without_alignment():
    inputs = step_inputs(_batch(), torch.device("cpu"))
    with pytest.raises(TrainingError, match="align stage"):
        AlignedTeacher(_model()).signal(inputs)


def test_a_bare_model_is_a_live_teacher_and_none_is_none():
    model = _model()
    assert isinstance(as_teacher(model), LiveTeacher)
    assert as_teacher(None) is None
    inputs = step_inputs(_batch(), torch.device("cpu"))
    assert teacher_signal(None, inputs) is None
    torch.testing.assert_close(
        teacher_signal(model, inputs).hidden, LiveTeacher(model).signal(inputs).hidden
    )
