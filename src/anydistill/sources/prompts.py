"""Prompts out of examples, and examples out of prompts plus sampled completions.

An `Example`'s loss mask says where its completion starts: everything before the first
target token is the prompt (for chat data: up to and including the assistant header). A
generated example keeps that prompt, appends the sampled tokens, and marks exactly those
as targets, so the objective and trainer see the same kind of example as from a dataset.
"""

from __future__ import annotations

from anydistill.data.tokenize import Example
from anydistill.errors import ConfigError, DataError


def prompt_length(ex: Example) -> int:
    """Index of the first target token (the length of the prompt)."""
    mask = ex["loss_mask"]
    return mask.index(True) if True in mask else len(mask)


def prompt_of(ex: Example) -> list[int]:
    n = prompt_length(ex)
    if n == 0:
        raise DataError(
            "data: an example starts with a target token, so it has no prompt to generate "
            "from; use prompt/completion or messages data"
        )
    return list(ex["input_ids"][:n])


def with_completion(prompt: list[int], completion: list[int], seq_len: int) -> Example:
    """prompt + completion cut to `seq_len`; exactly the completion tokens are targets."""
    ids = (prompt + completion)[:seq_len]
    mask = ([False] * len(prompt) + [True] * len(completion))[:seq_len]
    return Example(input_ids=ids, loss_mask=mask)


def require_prompts(kind: str, mode: str) -> None:
    """Generating sources need a prompt part; plain text has none."""
    if kind != "dataset" and mode == "text":
        raise ConfigError(
            f"source.kind: `{kind}` needs prompts, but the training data is plain text; "
            "give prompt/completion or messages data"
        )
