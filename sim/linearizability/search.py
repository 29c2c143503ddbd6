"""The search over one key: is there a legal sequential order that respects real time?

How this works (Wing & Gong's algorithm with Lowe's just-in-time linearization
and memoization, the scheme Porcupine made fast):

1. Lay out the invocations and completions in one list sorted by time. An
   operation whose outcome is unknown has no completion: it may take effect at
   any time after its invocation, or never. At equal times invocations sort
   first, so operations that touch at an instant count as concurrent (the
   lenient reading of a clock's resolution).
2. Depth-first search over configurations (the set of operations linearized so
   far, the model state). An operation can be linearized next iff it was
   invoked before the earliest completion among the operations not yet
   linearized, i.e. its invocation appears in the list before the first
   completion. Apply it to the model; if its result fits, unlink its entries and
   go on. If the first entry left is a completion, its operation had to take
   effect already and could not: undo the last choice, try the next candidate.
3. Memoize. Paths that linearized the same set and reached the same state have
   the same future, so each (set as a bit mask, state) pair is entered once.
   The work is bounded by the reachable pairs instead of the orders.
4. Done when every operation with a known outcome is linearized: the unknown
   ones still pending can take effect after everything else, where no one
   observes them, which is the same as never.

Reductions, each an exchange argument (a linearization that does otherwise can
be rewritten into one that does this), so they lose no answer:

- Reads first, without branching. A read that fits the current state can go
  now: it changes no state, and every pending operation completes after it was
  invoked, so moving it here from wherever a linearization put it keeps that
  linearization valid. If what follows fails, the configuration fails.
- Unknown operations that would change nothing here are not taken here (not
  taking them keeps them available for later).
- Twins go in order. Unknown operations with equal ``op`` and ``args`` have the
  same effect and no completion, so they can swap places: only the earliest
  invoked one not yet taken is tried. Together with ``Model.canonical``, which
  merges written values no read returned, this turns the subsets of lost
  writes a refutation would enumerate into their counts.

And one heuristic for finding a linearization quickly: each configuration tries
the operations with a known outcome before the unknown ones, which are guesses.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.linearizability.history import Operation
from sim.linearizability.models import Model

__all__ = ["DeadEnd", "KeyOutcome", "Verdict", "search"]

_CLOCK_EVERY_ITERATIONS = 1024  # reading the clock costs; once per this many steps is enough
_HEAD = 0


class Verdict(enum.Enum):
    """The outcome of a search."""

    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class DeadEnd:
    """Where the search had to back up, as operation indices (for the failure report)."""

    #: the operations linearized, in order.
    path: tuple[int, ...]
    #: the operation whose completion came first among those left: it had to go already.
    blocked: int
    #: the operations that could have gone next.
    candidates: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KeyOutcome:
    """The verdict on one key and what it cost."""

    verdict: Verdict
    #: on a violation, the dead end that placed the most known operations.
    dead_end: DeadEnd | None
    states: int
    steps: int
    backtracks: int


def search(ops: Sequence[Operation], model: Model[Any], deadline: float | None) -> KeyOutcome:
    """Search for a linearization of one key's frozen operations, until ``deadline``.

    Unknown reads must have been dropped already (they could only add work).
    """
    canonical = model.canonical(ops)
    assert len(canonical) == len(ops) and all(
        new.op == old.op and new.invoke == old.invoke and new.complete == old.complete
        and new.result is old.result for new, old in zip(canonical, ops, strict=True)
    ), "Model.canonical may change args only"
    engine = _Search(canonical, model)
    verdict = engine.run(deadline)
    dead_end = engine.dead_end if verdict is Verdict.VIOLATION else None
    return KeyOutcome(verdict, dead_end, len(engine.seen), engine.steps, engine.backtracks)


class _Search:
    """The mutable state of one key's search: a dancing-links list and the current path."""

    def __init__(self, ops: list[Operation], model: Model[Any]) -> None:
        self.ops = ops
        self.step = model.step
        self.unknown = [op.unknown for op in ops]
        self.read_only = [model.is_read_only(op) for op in ops]
        assert not any(u and r for u, r in zip(self.unknown, self.read_only, strict=True))
        self.twin_before = _twins(ops)
        self.bits = [1 << i for i in range(len(ops))]
        # The dancing-links list of invocations and completions, see _build_list.
        self.tail = 0
        self.nxt: list[int] = []
        self.prv: list[int] = []
        self.is_call: list[bool] = []
        self.entry_op: list[int] = []
        self.return_entry: list[int] = []
        self._build_list()
        self.state: Any = model.init()
        self.linearized = 0  # bit i set: operation i is on the path
        self.known = self.remaining = self.unknown.count(False)
        self.path: list[tuple[int, Any]] = []  # (invocation entry, state before it)
        self.seen: set[tuple[int, Any]] = set()
        self.dead_end: DeadEnd | None = None
        self.dead_end_score = (-1, 0)
        self.steps = self.backtracks = 0

    def _build_list(self) -> None:
        # Entries: 0 is the head sentinel, 1..m the events in time order, m+1 a
        # tail sentinel that spares the unlinking code its end-of-list tests.
        events: list[tuple[float, int, int]] = []
        for i, op in enumerate(self.ops):
            events.append((op.invoke, 0, i))
            if op.complete is not None:
                events.append((op.complete, 1, i))
        events.sort()
        tail = self.tail = len(events) + 1
        self.nxt = [*range(1, tail + 1), tail]
        self.prv = [_HEAD, *range(tail)]
        self.is_call = [False] * (tail + 1)
        self.entry_op = [-1] * (tail + 1)
        self.return_entry = [tail] * len(self.ops)  # no completion: the tail stands in
        for entry, (_, kind, i) in enumerate(events, start=1):
            self.entry_op[entry] = i
            if kind == 0:
                self.is_call[entry] = True
            else:
                self.return_entry[i] = entry

    def run(self, deadline: float | None) -> Verdict:
        """Search until every known operation is placed, none can be, or the deadline."""
        nxt, is_call, entry_op, unknown = self.nxt, self.is_call, self.entry_op, self.unknown
        entry = _HEAD
        fresh = True  # a configuration not scanned yet: a read that fits goes first
        unknown_pass = False  # scanning the unknown operations (after the known ones)
        iterations = 0
        while self.remaining:
            iterations += 1
            if (deadline is not None and iterations % _CLOCK_EVERY_ITERATIONS == 0
                    and time.monotonic() > deadline):
                return Verdict.TIMEOUT
            if fresh:
                fresh = False
                read = self._fitting_read()
                if read < 0:
                    entry, unknown_pass = nxt[_HEAD], False
                    continue
                if self._descend(read, self.state):
                    fresh = True
                    continue
                # The read leads to a configuration already refuted: so is this one.
            elif is_call[entry]:
                after = self._worth_taking(entry, unknown_pass)
                if after is not _SKIP and self._descend(entry, after):
                    fresh = True
                    continue
                entry = nxt[entry]
                continue
            elif not unknown_pass:
                entry, unknown_pass = nxt[_HEAD], True
                continue
            else:
                self._note_dead_end(entry)
            popped = self._back_up()
            if popped < 0:
                return Verdict.VIOLATION
            entry, unknown_pass = nxt[popped], unknown[entry_op[popped]]
        return Verdict.LINEARIZABLE

    def _fitting_read(self) -> int:
        """The first read among the candidates whose result fits the state, or -1."""
        nxt, is_call, entry_op, read_only = self.nxt, self.is_call, self.entry_op, self.read_only
        entry = nxt[_HEAD]
        while is_call[entry]:
            i = entry_op[entry]
            if read_only[i]:
                self.steps += 1
                if self.step(self.state, self.ops[i])[0]:
                    return entry
            entry = nxt[entry]
        return -1

    def _worth_taking(self, entry: int, unknown_pass: bool) -> Any:
        """The state after the candidate at ``entry``, or ``_SKIP`` if it is not to be tried."""
        i = self.entry_op[entry]
        unknown = self.unknown[i]
        if self.read_only[i] or unknown is not unknown_pass:
            return _SKIP  # reads were tried by _fitting_read; the other pass takes this one
        twin = self.twin_before[i]
        if twin >= 0 and not self.linearized & self.bits[twin]:
            return _SKIP  # its earlier twin goes first: the same future, searched once
        self.steps += 1
        fits, after = self.step(self.state, self.ops[i])
        if not fits or (unknown and after == self.state):
            return _SKIP
        return after

    def _descend(self, entry: int, after: Any) -> bool:
        """Linearize the operation invoked at ``entry``; False if that configuration was seen."""
        i = self.entry_op[entry]
        marked = self.linearized | self.bits[i]
        memo = (marked, after)
        if memo in self.seen:
            return False
        self.seen.add(memo)
        self.path.append((entry, self.state))
        self.state, self.linearized = after, marked
        self.remaining -= not self.unknown[i]
        _unlink(entry, self.nxt, self.prv)
        if self.return_entry[i] != self.tail:
            _unlink(self.return_entry[i], self.nxt, self.prv)
        return True

    def _back_up(self) -> int:
        """Undo the last choice, and every read before it; return its entry, or -1 if none."""
        while self.path:
            entry, self.state = self.path.pop()
            i = self.entry_op[entry]
            self.linearized ^= self.bits[i]
            self.remaining += not self.unknown[i]
            if self.return_entry[i] != self.tail:
                _relink(self.return_entry[i], self.nxt, self.prv)  # reverse order of unlinking
            _relink(entry, self.nxt, self.prv)
            self.backtracks += 1
            if not self.read_only[i]:
                return entry
            # A read that fit was this configuration's only choice: it fails too.
        return -1

    def _note_dead_end(self, blocked: int) -> None:
        # Keep the dead end that placed the most known operations, with the
        # fewest speculative (unknown-outcome) ones: the least surprising story.
        placed = self.known - self.remaining
        score = (placed, placed - len(self.path))  # (known placed, -unknown placed)
        if score <= self.dead_end_score:
            return
        self.dead_end_score = score
        candidates = []
        entry = self.nxt[_HEAD]
        while entry != blocked:
            if self.is_call[entry]:
                candidates.append(self.entry_op[entry])
            entry = self.nxt[entry]
        self.dead_end = DeadEnd(tuple(self.entry_op[e] for e, _ in self.path),
                                self.entry_op[blocked], tuple(candidates))


class _Skip:
    """Marks a candidate not to try (states may be any value, None included)."""


_SKIP: Any = _Skip()


def _twins(ops: list[Operation]) -> list[int]:
    """For each unknown operation, the latest earlier-invoked one with equal ``op`` and ``args``.

    Such twins have no completion and the same effect on every state, so any
    linearization that applies a later twin while an earlier one is pending can
    swap them. The search therefore applies twins in invocation order only.
    """
    twin_before = [-1] * len(ops)
    latest: dict[tuple[str, tuple[Any, ...]], int] = {}
    for i in sorted(range(len(ops)), key=lambda i: (ops[i].invoke, i)):  # the list's order
        op = ops[i]
        if op.unknown:
            twin_before[i] = latest.get((op.op, op.args), -1)
            latest[(op.op, op.args)] = i
    return twin_before


def _unlink(entry: int, nxt: list[int], prv: list[int]) -> None:
    # The entry keeps its own links, so _relink can put it back (dancing links).
    before, after = prv[entry], nxt[entry]
    nxt[before] = after
    prv[after] = before


def _relink(entry: int, nxt: list[int], prv: list[int]) -> None:
    nxt[prv[entry]] = entry
    prv[nxt[entry]] = entry
