"""Where the training sequences come from.

Every source yields collated micro-batches of token sequences with a loss mask — from the
dataset, from the teacher's or the current student's sampled completions of the dataset's
prompts, or a mix of these — so the objective and the trainer do not care which. Kinds:
`dataset`, `teacher_generated` (seq-KD, upfront or on the fly), `student_generated`
(on-policy), `mixture` (GKD's lambda), `adaptive_replay` (DistiLLM) and `paired` (teacher and
student responses per prompt, for DistiLLM-2's `contrastive` term).
"""

from anydistill.sources.base import GeneratedSource, Source
from anydistill.sources.build import SourceParts, build_source
from anydistill.sources.completer import Completer
from anydistill.sources.mixture import LambdaSampler, MixtureSource
from anydistill.sources.paired import PairedSource
from anydistill.sources.replay import AdaptiveProbability, ReplayBuffer, ReplaySource

__all__ = [
    "AdaptiveProbability",
    "Completer",
    "GeneratedSource",
    "LambdaSampler",
    "MixtureSource",
    "PairedSource",
    "ReplayBuffer",
    "ReplaySource",
    "Source",
    "SourceParts",
    "build_source",
]
