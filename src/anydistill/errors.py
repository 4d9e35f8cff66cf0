"""User-facing errors: each carries one sentence that names the field or file and the fix.

The CLI prints the sentence (no traceback) and exits non-zero.
"""


class AnydistillError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class ConfigError(AnydistillError):
    """The YAML recipe or a `key=value` override is wrong."""


class DataError(AnydistillError):
    """The dataset is missing, empty, or lacks the needed columns."""


class ModelError(AnydistillError):
    """A model or tokenizer cannot be loaded or does not fit the run."""


class ServerError(ModelError):
    """A served model (an OpenAI-compatible server) cannot be reached, refuses, times out,
    or serves something other than the recipe asks for."""


class TrainingError(AnydistillError):
    """Training hit a state it cannot continue from (e.g. a NaN loss)."""
