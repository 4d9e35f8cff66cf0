"""DistiLLM's adaptive off-policy scheme: a replay buffer of student generations, used with a
probability that grows when the validation loss stalls.

Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models"
(ICML). What is implemented here (the paper pairs it with the skew KL / skew reverse KL
terms, `skl` / `srkl`):

- `phi`, the probability of training on student-generated outputs (SGOs), starts at
  `init_prob`. At every periodic evaluation the monitored metric (`monitor`, default the
  held-out `student/ce`) is compared with the previous evaluation's; if it improved by no
  more than `tolerance` (it stalled or rose), `phi <- min(phi + prob_step, max_prob)`. (The
  authors' code compares against the loss at the last increase, with a tolerance of 0.1;
  here the reference is always the previous evaluation.)
- Per micro-batch a uniform u is drawn. If u < phi * (1 - step / max_steps), or u < phi
  while the buffer is not yet full, the current student completes this batch's prompts; the
  completions go into the buffer (FIFO, `buffer_size` sequences) and are trained on. Else if
  u < phi, a batch is drawn uniformly without replacement from the buffer (reuse: no
  generation cost). Else the batch is off-policy: the dataset's completions, or the
  teacher's (`off_policy: teacher`). The fresh share phi * (1 - t/T) is the authors'
  "decreasing" replay ratio: generation cost falls as the buffer fills with recent SGOs.

The buffer, phi, the previous metric and the RNG are checkpointed, so a resumed run makes
the same choices and replays the same sequences as an unbroken one.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from anydistill.data import BatchStream
from anydistill.data.tokenize import Example
from anydistill.errors import ConfigError
from anydistill.sources.base import Batch, Source
from anydistill.sources.completer import Completer
from anydistill.sources.prompts import prompt_length
from anydistill.sources.rng import SourceRng


class ReplayBuffer:
    """The newest `capacity` student generations."""

    def __init__(self, capacity: int) -> None:
        self.items: deque[Example] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) == self.items.maxlen

    def add(self, examples: list[Example]) -> None:
        self.items.extend(examples)

    def sample(self, k: int, rng: SourceRng) -> list[Example]:
        return [self.items[i] for i in rng.sample(len(self.items), k)]

    def state_dict(self) -> list[dict[str, Any]]:
        """Generated examples are prompt + completion, so the prompt length is their mask."""
        return [
            {"prompt_len": prompt_length(ex), "input_ids": ex["input_ids"]} for ex in self.items
        ]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.items.clear()
        for row in state:
            ids, n = row["input_ids"], int(row["prompt_len"])
            self.items.append(
                Example(input_ids=ids, loss_mask=[False] * n + [True] * (len(ids) - n))
            )


class AdaptiveProbability:
    """phi: raised by `step` (capped at `cap`) each time the metric stalls."""

    def __init__(self, init: float, step: float, cap: float, tolerance: float) -> None:
        self.value = init
        self.step = step
        self.cap = cap
        self.tolerance = tolerance
        self.previous: float | None = None

    def observe(self, metric: float) -> None:
        if self.previous is not None and self.previous - metric <= self.tolerance:
            self.value = min(self.value + self.step, self.cap)
        self.previous = metric

    def state_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.previous = None if state["previous"] is None else float(state["previous"])


class ReplaySource(Source):
    kind = "adaptive_replay"

    def __init__(
        self,
        stream: BatchStream,
        pad_id: int,
        student: Completer,
        off_policy: Completer | None,
        prob: AdaptiveProbability,
        buffer: ReplayBuffer,
        rng: SourceRng,
        max_steps: int,
        monitor: str,
        rank: int,
    ) -> None:
        completers = [student] + ([off_policy] if off_policy is not None else [])
        super().__init__(stream, pad_id, completers)
        self.student = student
        self.off_policy = off_policy
        self.prob = prob
        self.buffer = buffer
        self.rng = rng
        self.max_steps = max_steps
        self.monitor = monitor
        self.rank = rank
        self._counts = {"fresh": 0, "replayed": 0, "off": 0}

    def choose(self, step: int, batch_size: int) -> str:
        """fresh | replayed | off for the next micro-batch (draws one uniform)."""
        u = self.rng.uniform()
        phi = self.prob.value
        fresh = phi * (1.0 - step / self.max_steps)
        if u < fresh or (u < phi and (not self.buffer.full or len(self.buffer) < batch_size)):
            return "fresh"
        return "replayed" if u < phi else "off"

    def micro_batch(self, step: int, index: int) -> Batch:
        examples = self.stream.next_batch()
        choice = self.choose(step, len(examples))
        self._counts[choice] += 1
        key = (step, index, self.rank)
        if choice == "fresh":
            made = self.student.complete(examples, *key)
            self.buffer.add(made)
            return self.collate(made)
        if choice == "replayed":
            return self.collate(self.buffer.sample(len(examples), self.rng))
        if self.off_policy is not None:
            return self.collate(self.off_policy.complete(examples, *key))
        return self.collate(examples)

    def observe_eval(self, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise ConfigError(
                f"source.replay.monitor: the evaluation has no `{self.monitor}`; choose one of "
                f"{', '.join(sorted(metrics)) or 'nothing (is there eval data?)'}"
            )
        self.prob.observe(float(metrics[self.monitor]))

    def take_metrics(self) -> dict[str, float]:
        total = sum(self._counts.values())
        student = self._counts["fresh"] + self._counts["replayed"]
        row = {
            **super().take_metrics(),
            "student_frac": student / total if total else 0.0,
            "replay_prob": self.prob.value,
            "replay_buffer": float(len(self.buffer)),
        }
        self._counts = dict.fromkeys(self._counts, 0)
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.state_dict(),
            "prob": self.prob.state_dict(),
            "buffer": self.buffer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.load_state_dict(state["rng"])
        self.prob.load_state_dict(state["prob"])
        self.buffer.load_state_dict(state["buffer"])
