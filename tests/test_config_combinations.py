"""Settings that are valid alone but not together: refused at validation, in one sentence."""

from __future__ import annotations

import pytest
from conftest import tiny_recipe

from anydistill.config import config_from_dict
from anydistill.errors import ConfigError


def test_token_selection_with_a_contrastive_term_is_refused():
    """The step would run the contrastive halves on every row and drop the selection."""
    data = tiny_recipe("contrastive")
    data["objective"]["token_selection"] = {"reference": "runs/ref", "keep": 0.4}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    message = str(err.value)
    assert "objective.token_selection" in message and "contrastive" in message
    assert len(message.splitlines()) == 1
    # Each alone is fine.
    config_from_dict(tiny_recipe("contrastive"))
    del data["objective"]["token_selection"]
    config_from_dict(data)
