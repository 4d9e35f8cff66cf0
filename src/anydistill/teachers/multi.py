"""Several teachers at once (`kind = "multi"`): named members, mixed or routed.

Every member is a teacher kind of its own (`LiveTeacher`, `CachedTeacher`, ...) on the
student's tokenizer. Two ways to combine them:

- mixture (weights): per token the target is p = sum_i w_i p_i, weights normalized to sum 1,
  each member tempered by the term's temperature before mixing. `signal` returns a
  `losses.engine.MixtureSignal`, which the loss engine mixes block by block. A weight-0
  member is dropped from the mixture (never asked during training), so weights [1, 0] are the
  first teacher alone, bit for bit; it is still scored by `eval`. Only online teachers mix:
  a cache's top-k plus tail bucket has no per-token value off its k ids.
- routing (`route_by`): every training sample names its teacher (the batch's `route`, one
  teacher index per row, read from a data column). `signal` asks each member about its own
  rows only and returns a `RoutedSignal`; the step scores each member's rows against it
  (`routed_loss`), with the step's global token normalizer as usual. Members may be of
  different kinds, since each row has one teacher.

Either way the step logs each member's KL to the student on the rows it teaches,
`teacher/<name>/kl`, and its top-1 agreement (`member_row`).

In a cross-tokenizer run each member is an `AlignedTeacher` on its own tokenizer and the batch
comes aligned to each (`data.members.MultiCrossTokens`); `signal` then returns
`multi_aligned.AlignedMembers`, each member with its vocabulary maps (`Member.params`), and
the step mixes the members' losses, not their distributions (`losses.cross.members`). The
train rows then log `teacher/<name>/loss` and `teacher/<name>/<term>` per member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from anydistill.data.members import MultiCrossTokens
from anydistill.data.views import StepInputs
from anydistill.errors import ConfigError, TrainingError
from anydistill.losses.engine import LossOutput, MixtureSignal, member_stats
from anydistill.teachers.base import NO_EXTRAS, Needs

# The stats every routed micro-batch reports, whichever members have rows in it (ranks sum
# stats by key, so the keys must not depend on the batch).
ROUTED_STATS = ("tokens", "student_entropy", "fkl", "agree", "teacher_entropy", "student_nll")


@dataclass
class Member:
    """One named teacher of several."""

    name: str
    weight: float
    teacher: Any  # a teachers.Teacher
    # Cross-tokenizer runs: per aligned term name, its options with the vocabulary maps of this
    # member's tokenizer and the student's (`losses.cross.prepare_cross_params`).
    params: dict[str, dict] = field(default_factory=dict)


@dataclass
class RoutedSignal:
    """Routed teachers on one micro-batch: each selected row's teacher index (`route`, [N]),
    and each member's signal on its own rows, in their order (None: no rows this time)."""

    names: tuple[str, ...]
    route: Tensor  # [N] long
    signals: tuple[Any, ...]


class MultiTeacher:
    """Named teachers behind the one teacher seam; see the module docstring."""

    kind = "multi"

    def __init__(self, members: Sequence[Member], route: bool = False) -> None:
        if not members:
            raise ValueError("MultiTeacher needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        if not route and not any(m.weight > 0 for m in members):
            raise ValueError("a teacher mixture needs a member with a weight > 0")
        self.members = list(members)
        self.route = route

    @property
    def model(self) -> torch.nn.Module | None:
        """The first member's model: it samples for generating sources and is what
        `student.from_teacher` cuts (None when the first member is a cache)."""
        return getattr(self.members[0].teacher, "model", None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def prefetch(self, batches: Sequence[dict]) -> None:
        """Hand coming micro-batches to the members that fetch ahead (server teachers): under
        routing only the rows routed to each; a weight-0 mixture member is never asked."""
        for index, member in enumerate(self.members):
            fetch = getattr(member.teacher, "prefetch", None)
            if fetch is None or (not self.route and member.weight == 0):
                continue
            fetch([_rows_of(b, index) for b in batches] if self.route else list(batches))

    def close(self) -> None:
        for member in self.members:
            close = getattr(member.teacher, "close", None)
            if close is not None:
                close()

    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> Any:
        """`MixtureSignal` or `RoutedSignal`; `AlignedMembers` for a batch aligned to each
        member's own tokenizer."""
        if isinstance(inputs.aligned, MultiCrossTokens):
            from anydistill.teachers.multi_aligned import aligned_signal

            return aligned_signal(self, inputs, needs)
        if self.route:
            return self._routed(inputs, needs)
        active = [m for m in self.members if m.weight > 0]
        return MixtureSignal(
            names=tuple(m.name for m in active),
            weights=tuple(m.weight for m in active),
            signals=tuple(m.teacher.signal(inputs, needs) for m in active),
        )

    def _routed(self, inputs: StepInputs, needs: Needs) -> RoutedSignal:
        if inputs.route is None:
            raise TrainingError(
                "route_by: this batch carries no route per sample; routed teachers train on "
                "the dataset's records (source.kind dataset)"
            )
        route = inputs.route.to(inputs.select.device)
        if route.numel() and (int(route.min()) < 0 or int(route.max()) >= len(self.members)):
            raise TrainingError(
                f"route_by: a batch routes to teacher index {int(route.max())}, but there are "
                f"only {len(self.members)} teachers"
            )
        batch = inputs.select.shape[0]
        row_of = torch.arange(batch, device=route.device)[:, None].expand_as(inputs.select)
        signals = []
        for i, member in enumerate(self.members):
            rows = (route == i).nonzero(as_tuple=True)[0]
            if rows.numel() == 0 or not bool(inputs.select[rows].any()):
                signals.append(None)
                continue
            signals.append(member.teacher.signal(sub_inputs(inputs, rows), needs))
        return RoutedSignal(self.names, route[row_of[inputs.select]], tuple(signals))

    def eval_teacher(self) -> MultiTeacher | None:
        """What held-out metrics score as "the teacher": the mixture; None when routed (eval
        records carry no route; each member is scored on its own instead)."""
        return None if self.route else self

    def check_caches(self, tokenizer: Any, seq_len: int, examples: list) -> None:
        """Each cache member must hold the samples it teaches (all of them in a mixture)."""
        from anydistill.teachers.cache.keys import example_key

        for i, member in enumerate(self.members):
            cache = getattr(member.teacher, "cache", None)
            if cache is None:
                continue
            mine = [ex for ex in examples if not self.route or ex.get("route") == i]
            try:
                cache.check_compatible(tokenizer, seq_len, [example_key(ex) for ex in mine])
            except ConfigError as err:
                raise ConfigError(
                    f"teachers.{i} ({member.name}): {str(err).removeprefix('teacher.path: ')}"
                ) from None


def sub_inputs(inputs: StepInputs, rows: Tensor) -> StepInputs:
    """The batch view of some of a batch's rows (sequences), in their order."""
    ids, select = inputs.input_ids[rows], inputs.select[rows]
    route = inputs.route[rows] if inputs.route is not None else None
    return StepInputs(ids, inputs.attention_mask[rows], select, ids[:, 1:][select], route=route)


Score = Callable[[Tensor, Tensor, Tensor, Any], LossOutput]


def routed_loss(
    signal: RoutedSignal, rows: Tensor, labels: Tensor, term_names: Sequence[str], score: Score
) -> LossOutput:
    """Each member's rows scored against that member, summed: `score(rows, labels, mask,
    member_signal)` is the engine on those rows (normalized by the step's global tokens).
    Stats: `ROUTED_STATS` plus each member's `teacher/<name>/{kl,agree,tokens}`, zero for a
    member with no rows in this micro-batch."""
    zero = rows.new_zeros((), dtype=torch.float32)
    loss = rows.sum() * 0.0  # keeps the graph (and DDP's hooks) when no row has a teacher
    terms = {name: zero for name in term_names}
    stats = {key: zero for key in ROUTED_STATS}
    for i, (name, member) in enumerate(zip(signal.names, signal.signals, strict=True)):
        index = (signal.route == i).nonzero(as_tuple=True)[0]
        if member is None or index.numel() == 0:
            stats.update(member_stats(name, {"fkl": zero, "agree": zero, "tokens": zero}))
            continue
        mask = torch.ones(index.numel(), dtype=torch.bool, device=rows.device)
        out = score(rows.index_select(0, index), labels.index_select(0, index), mask, member)
        loss = loss + out.loss
        terms = {k: terms[k] + out.terms[k] for k in terms}
        for key in ROUTED_STATS:
            if key in out.stats:
                stats[key] = stats[key] + out.stats[key]
        stats.update(member_stats(name, out.stats))
    return LossOutput(loss=loss, terms=terms, stats=stats)


def member_row(stats: dict[str, float]) -> dict[str, float]:
    """`teacher/<name>/kl` and `teacher/<name>/agreement` per member, from a step's summed
    stats (each over the tokens that member teaches); with members on their own tokenizers,
    `teacher/<name>/loss` and `teacher/<name>/<term>` (already divided by that member's
    units, from the stats `aligned/<name>/...`)."""
    row: dict[str, float] = {}
    for key, value in stats.items():
        if key.startswith("aligned/"):
            row["teacher/" + key.removeprefix("aligned/")] = value
        if key.startswith("teacher/") and key.endswith("/kl"):
            name = key[len("teacher/") : -len("/kl")]
            tokens = max(stats.get(f"teacher/{name}/tokens", 0.0), 1.0)
            row[key] = value / tokens
            row[f"teacher/{name}/agreement"] = stats.get(f"teacher/{name}/agree", 0.0) / tokens
    return row


def _rows_of(batch: dict, index: int) -> dict:
    """The rows of a collated batch routed to member `index` (per-row tensors sliced)."""
    rows = batch["route"] == index
    return {
        k: v[rows] if isinstance(v, torch.Tensor) and v.shape[:1] == rows.shape else v
        for k, v in batch.items()
    }
