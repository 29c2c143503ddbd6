"""``check``: split a history by key, search each key, and report the verdict.

How this works: every operation touches one key and the keys of the model are
independent, so a history is linearizable iff each key's sub-history is
(linearizability is compositional; Herlihy & Wing). ``check`` freezes the values,
drops operations that cannot matter (reads whose outcome is unknown, unknown
operations invoked after their key's last completion: they can always go last,
unobserved), then runs the search of ``sim.linearizability.search`` on one key
after another in sorted order, and stops at the first violation. The report
replays the deepest dead end of that key with the operations as recorded: the
longest linearizable prefix and its states, and why each operation that could
have gone next does not fit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sim.linearizability.history import History, Operation, format_operation
from sim.linearizability.models import KVModel, Model
from sim.linearizability.search import DeadEnd, KeyOutcome, Verdict, search

__all__ = ["CheckStats", "Failure", "Placement", "Result", "check"]

_PREFIX_SHOWN_MAX = 8  # the end of the prefix is what explains a failure


@dataclass(frozen=True, slots=True)
class CheckStats:
    """What the check did. Deterministic: the same history gives the same numbers."""

    #: operations in the history.
    operations: int
    #: operations left out of the search (unknown reads; unknown operations
    #: invoked after their key's last known completion).
    dropped: int
    #: keys (partitions) in the history, and how many of them were decided.
    keys: int
    keys_checked: int
    #: distinct (linearized set, model state) pairs the search entered.
    states_explored: int
    #: model steps taken, and choices undone.
    steps: int
    backtracks: int

    def to_json(self) -> dict[str, int]:
        """The numbers as a JSON-able dict."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Placement:
    """An operation and the model state around it, in a failure report."""

    index: int  # position in the checked history
    op: Operation
    #: the state after the operation (in a prefix), or why it cannot go next (a candidate).
    note: str

    def __str__(self) -> str:
        return f"{format_operation(self.op, self.index)}   {self.note}"


@dataclass(frozen=True, slots=True)
class Failure:
    """The deepest dead end of the search on a key whose sub-history is not linearizable."""

    key: str
    #: the longest linearizable prefix found, in linearization order; ``note`` is the state after.
    prefix: tuple[Placement, ...]
    #: the model state after the prefix.
    state: str
    #: the operation that had to take effect before anything else could: the earliest
    #: completion among those not in the prefix.
    blocked: Placement
    #: every operation that could have gone next, with why it does not fit.
    candidates: tuple[Placement, ...]
    #: operations of this key that took part in the search.
    key_operations: int

    def __str__(self) -> str:
        lines = [f"key {self.key!r} ({self.key_operations} operations searched) has no "
                 f"linearization; the longest linearizable prefix has {len(self.prefix)}."]
        if self.prefix:
            shown = self.prefix[-_PREFIX_SHOWN_MAX:]
            skipped = len(self.prefix) - len(shown)
            lines.append("The prefix ends with (operation, then the state after it):"
                         if skipped else "The prefix (operation, then the state after it):")
            if skipped:
                lines.append(f"  ... {skipped} earlier operation(s)")
            lines += [f"  {placement}" for placement in shown]
        else:
            lines.append("Not even the first operation can be placed.")
        done = self.blocked.op.complete
        lines.append(f"In that state ({self.state}), operation #{self.blocked.index} has "
                     f"to go before anything invoked after it completed (t={done:.6g}), "
                     "but none of the operations that may go next fits:")
        lines += [f"  {placement}" for placement in self.candidates]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict on a history."""

    #: True: linearizable. False: not. None: the time limit struck first.
    linearizable: bool | None
    #: on a violation, the key whose sub-history is not linearizable.
    bad_key: str | None
    #: the verdict for humans, with the failure report on a violation.
    explanation: str
    stats: CheckStats
    failure: Failure | None = None
    #: keys left undecided at the time limit.
    undecided_keys: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (the failure as its text)."""
        return {
            "linearizable": self.linearizable,
            "bad_key": self.bad_key,
            "explanation": self.explanation,
            "undecided_keys": list(self.undecided_keys),
            "stats": self.stats.to_json(),
        }


def check(history: History | Sequence[Operation], model: Model[Any] | None = None, *,
          time_limit_s: float | None = None) -> Result:
    """Decide whether ``history`` is linearizable with respect to ``model`` (``KVModel()``).

    ``time_limit_s`` bounds the whole check; when it strikes before a violation
    is found the result's ``linearizable`` is None. Raises ``ValueError`` for an
    operation the model cannot apply or whose completion precedes its invocation.
    """
    model = KVModel() if model is None else model
    ops = history.operations if isinstance(history, History) else tuple(history)
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    partitions, dropped = _partition(ops, model)
    keys = sorted(partitions)
    outcomes: list[KeyOutcome] = []
    for key in keys:
        items = partitions[key]
        outcome = search([op for _, op in items], model, deadline)
        outcomes.append(outcome)
        if outcome.verdict is Verdict.LINEARIZABLE:
            continue
        if outcome.verdict is Verdict.TIMEOUT:
            stats = _stats(ops, dropped, keys, outcomes, decided=len(outcomes) - 1)
            undecided = tuple(keys[len(outcomes) - 1:])
            text = (f"unknown: the time limit of {time_limit_s} s struck with "
                    f"{len(undecided)} of {len(keys)} key(s) undecided (first {key!r}); "
                    f"{stats.states_explored} states explored")
            return Result(None, None, text, stats, undecided_keys=undecided)
        assert outcome.dead_end is not None
        failure = _failure(key, items, model, outcome.dead_end)
        stats = _stats(ops, dropped, keys, outcomes, decided=len(outcomes))
        return Result(False, key, f"not linearizable: {failure}", stats, failure)
    stats = _stats(ops, dropped, keys, outcomes, decided=len(outcomes))
    text = (f"linearizable: {len(ops)} operations on {len(keys)} key(s), "
            f"{stats.states_explored} states explored")
    return Result(True, None, text, stats)


def _stats(ops: Sequence[Operation], dropped: int, keys: list[str],
           outcomes: list[KeyOutcome], decided: int) -> CheckStats:
    return CheckStats(operations=len(ops), dropped=dropped, keys=len(keys),
                      keys_checked=decided,
                      states_explored=sum(o.states for o in outcomes),
                      steps=sum(o.steps for o in outcomes),
                      backtracks=sum(o.backtracks for o in outcomes))


def _partition(ops: Sequence[Operation], model: Model[Any],
               ) -> tuple[dict[str, list[tuple[int, Operation]]], int]:
    """Split by key, freeze values, drop what cannot matter; return (partitions, dropped)."""
    partitions: dict[str, list[tuple[int, Operation]]] = {}
    dropped = 0
    for index, raw in enumerate(ops):
        op = raw.frozen()
        model.validate(op)
        if op.complete is not None and not op.complete >= op.invoke:
            raise ValueError(f"{format_operation(op, index)} completes before it is invoked")
        if op.unknown and model.is_read_only(op):
            dropped += 1  # a read nobody saw cannot constrain anything
            continue
        partitions.setdefault(op.key, []).append((index, op))
    for key, items in partitions.items():
        last = max((op.complete for _, op in items if op.complete is not None), default=None)
        # An unknown operation invoked after every completion can always go last,
        # where no one observes it: keeping it would only widen the search.
        kept = [(i, op) for i, op in items
                if not op.unknown or (last is not None and op.invoke <= last)]
        dropped += len(items) - len(kept)
        partitions[key] = kept
    return partitions, dropped


def _failure(key: str, items: list[tuple[int, Operation]], model: Model[Any],
             dead_end: DeadEnd) -> Failure:
    """Turn the deepest dead end into a report: prefix with states, and why nothing fits next."""
    # The search ran on canonical operations (see Model.canonical); replay the
    # prefix with the operations as recorded so the report shows real values.
    prefix = []
    state = model.init()
    for i in dead_end.path:
        index, op = items[i]
        _, state = model.step(state, op)
        prefix.append(Placement(index, op, f"=> {model.describe(state)}"))
    candidates = []
    for i in dead_end.candidates:
        index, op = items[i]
        fits, _ = model.step(state, op)
        if op.unknown:
            note = "outcome unknown; taking effect here does not help either"
        else:
            note = model.explain(state, op)
            if fits:
                note += "; but no linearization of the rest follows from it"
        candidates.append(Placement(index, op, f"-- {note}"))
    blocked_index, blocked_op = items[dead_end.blocked]
    return Failure(key=key, prefix=tuple(prefix), state=model.describe(state),
                   blocked=Placement(blocked_index, blocked_op, "must take effect by now"),
                   candidates=tuple(candidates), key_operations=len(items))
