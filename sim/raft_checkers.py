"""The five Raft safety properties, checked incrementally after every step.

How this works. ``RaftSafety`` is plain bookkeeping over three kinds of
observation, so tests can feed it by hand: ``wrote`` (a node persisted log
entries), ``applied`` (a node applied a committed entry) and ``observe`` (a
node's role, term and log right after a step). ``RaftSafetyChecker`` is the
simulator's step checker: after every delivery or tick batch of a node it
takes what that node's host recorded since the last batch and feeds it in.
Every check costs a few dictionary operations per entry written or applied
and two entry reads per leader step; only a new leader costs a pass over the
committed entries. Over the whole run (crashes and restarts included):

- Election safety: at most one node leads each term (term -> the first leader
  seen).
- Leader append-only: while a node leads a term, its last index never goes
  down and the entry at the tip it had at its previous step is unchanged; and
  no write it persists in that term starts at or below an index it already
  persisted in the term.
- Log matching: every persisted entry is keyed by (index, term); every node
  must hold the same data under a key, following an entry of the same term.
  By induction on the index, two logs that share an (index, term) then share
  the whole prefix up to it.
- Leader completeness: a node first seen leading term T holds every entry
  known committed before T. An entry is known committed once a node applies
  it; the lowest term of a node applying it bounds its commit term from above
  (a node learns of a commit only from a leader of its own term or an older
  one), so a leader of a later term must hold it.
- State machine safety: no two nodes apply different entries at one index
  (index -> the entry first applied there).

It also runs the core's own ``check_invariants`` after every step. Each
property keeps its first ``VIOLATIONS_KEPT`` violations and counts the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from consensus.raft import CompactedError, Entry, RaftNode, Role
from sim.node import SimNode
from sim.world import Violation, World

__all__ = [
    "ELECTION_SAFETY",
    "INVARIANTS",
    "LEADER_APPEND_ONLY",
    "LEADER_COMPLETENESS",
    "LOG_MATCHING",
    "PROPERTIES",
    "STATE_MACHINE_SAFETY",
    "VIOLATIONS_KEPT",
    "Applied",
    "LogView",
    "ObservedHost",
    "RaftSafety",
    "RaftSafetyChecker",
    "Written",
]

ELECTION_SAFETY = "raft.election_safety"
LEADER_APPEND_ONLY = "raft.leader_append_only"
LOG_MATCHING = "raft.log_matching"
LEADER_COMPLETENESS = "raft.leader_completeness"
STATE_MACHINE_SAFETY = "raft.state_machine_safety"
INVARIANTS = "raft.invariants"
PROPERTIES = (ELECTION_SAFETY, LEADER_APPEND_ONLY, LOG_MATCHING, LEADER_COMPLETENESS,
              STATE_MACHINE_SAFETY)
"""The five safety properties, by checker name."""

VIOLATIONS_KEPT = 10
"""Violations kept per property; one broken property tends to break it many times."""

# What identifies an entry's content: term, kind and data.
_Content = tuple[int, int, bytes]


def _content(entry: Entry) -> _Content:
    return entry.term, int(entry.kind), entry.data


def _show(entry_or_content: Entry | _Content | None) -> str:
    if entry_or_content is None:
        return "nothing"
    if isinstance(entry_or_content, Entry):
        entry_or_content = _content(entry_or_content)
    term, kind, data = entry_or_content
    shown = data[:24].hex() + ("..." if len(data) > 24 else "")
    return f"(term {term}, kind {kind}, data {shown or 'empty'})"


@dataclass(frozen=True, slots=True)
class Written:
    """Entries one node persisted in one Ready."""

    prev_term: int | None
    """The term of the entry before the first one (None if unknown: compacted)."""
    entries: tuple[Entry, ...]
    leader_term: int | None
    """The node's term if it was leader when it wrote them, else None."""


@dataclass(frozen=True, slots=True)
class Applied:
    """One committed entry one node applied."""

    term: int
    """The node's current term when it applied the entry."""
    entry: Entry


class LogView(Protocol):
    """What the checks read of a node's log (``RaftNode`` is one)."""

    @property
    def first_index(self) -> int:
        """The first index held as an entry."""
        ...

    @property
    def last_index(self) -> int:
        """The last index, persisted or not."""
        ...

    def log_entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo <= index < hi``."""
        ...


class ObservedHost(Protocol):
    """What the step checker needs of a node's Raft host."""

    @property
    def raft(self) -> RaftNode:
        """The node's Raft core."""
        ...

    def take_written(self) -> list[Written]:
        """The writes since the last call, oldest first."""
        ...

    def take_applied(self) -> list[Applied]:
        """The entries applied since the last call, in order."""
        ...


@dataclass(slots=True)
class _Tenure:
    term: int
    tip_index: int
    tip: _Content | None  # None: the tip was compacted away


class RaftSafety:
    """The five properties over hand-fed or simulator observations (see module doc)."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        #: violations found per checker name, kept or not.
        self.counts: dict[str, int] = {}
        #: term -> the node that led it.
        self.leaders: dict[int, str] = {}
        #: (time first seen, node, term) for every leadership, in order.
        self.leadership: list[tuple[float, str, int]] = []
        self.max_term = 0
        #: index -> the content applied there, and the lowest applier's term.
        self.committed: dict[int, _Content] = {}
        self.commit_term: dict[int, int] = {}
        self._entries: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self._tenures: dict[str, _Tenure] = {}
        self._write_tips: dict[tuple[str, int], int] = {}
        self._second_leaders: set[tuple[int, str]] = set()

    @property
    def highest_committed(self) -> int:
        """The highest index known committed (applied by some node)."""
        return max(self.committed, default=0)

    def violate(self, checker: str, at: float, message: str) -> None:
        """Record a violation (kept only while fewer than ``VIOLATIONS_KEPT``)."""
        count = self.counts.get(checker, 0) + 1
        self.counts[checker] = count
        if count <= VIOLATIONS_KEPT:
            self.violations.append(Violation(checker, at, message))

    # -- observations ----------------------------------------------------------------

    def wrote(self, at: float, node: str, written: Written) -> None:
        """``node`` persisted ``written``: log matching and leader append-only."""
        entries = written.entries
        if not entries:
            return
        if written.leader_term is not None:
            key = (node, written.leader_term)
            tip = self._write_tips.get(key)
            if tip is not None and entries[0].index <= tip:
                self.violate(LEADER_APPEND_ONLY, at,
                             f"{node}, leader of term {written.leader_term}, rewrote its log "
                             f"from index {entries[0].index} after persisting up to {tip}")
            self._write_tips[key] = max(entries[-1].index, tip or 0)
        prev = written.prev_term
        for entry in entries:
            key2 = (entry.index, entry.term)
            value = (int(entry.kind), entry.data, prev)
            seen = self._entries.get(key2)
            if seen is None:
                self._entries[key2] = value
            elif seen[:2] != value[:2]:
                self.violate(LOG_MATCHING, at,
                             f"{node} holds {_show(entry)} at index {entry.index}, another log "
                             f"holds {_show((entry.term, seen[0], seen[1]))} with the same "
                             f"index and term")
            elif seen[2] is not None and prev is not None and seen[2] != prev:
                self.violate(LOG_MATCHING, at,
                             f"{node} holds entry ({entry.index}, term {entry.term}) after an "
                             f"entry of term {prev}, another log after one of term {seen[2]}")
            elif seen[2] is None and prev is not None:
                self._entries[key2] = value
            prev = entry.term

    def applied(self, at: float, node: str, applied: Applied) -> None:
        """``node`` applied a committed entry: state machine safety."""
        entry = applied.entry
        value = _content(entry)
        seen = self.committed.setdefault(entry.index, value)
        if seen != value:
            self.violate(STATE_MACHINE_SAFETY, at,
                         f"{node} applied {_show(value)} at index {entry.index}, where another "
                         f"node applied {_show(seen)}")
        known = self.commit_term.get(entry.index)
        if known is None or applied.term < known:
            self.commit_term[entry.index] = applied.term

    def observe(self, at: float, node: str, term: int, leading: bool, log: LogView) -> None:
        """``node``'s state after a step: election safety, leader append-only (the
        tip) and, for a new leader, leader completeness."""
        if term > self.max_term:
            self.max_term = term
        if not leading:
            self._tenures.pop(node, None)
            return
        leader = self.leaders.setdefault(term, node)
        if leader != node and (term, node) not in self._second_leaders:
            self._second_leaders.add((term, node))  # once per pair, not once per step
            self.violate(ELECTION_SAFETY, at, f"{node} and {leader} both lead term {term}")
        tenure = self._tenures.get(node)
        if tenure is None or tenure.term != term:
            self.leadership.append((at, node, term))
            self._check_complete(at, node, term, log)
        else:
            self._check_tip(at, node, tenure, log)
        last = log.last_index
        self._tenures[node] = _Tenure(term, last, self._content_at(log, last))

    # -- checks ----------------------------------------------------------------------

    @staticmethod
    def _content_at(log: LogView, index: int) -> _Content | None:
        if index < log.first_index or index < 1:
            return None
        try:
            return _content(log.log_entries(index, index + 1)[0])
        except CompactedError:
            return None

    def _check_tip(self, at: float, node: str, tenure: _Tenure, log: LogView) -> None:
        if log.last_index < tenure.tip_index:
            self.violate(LEADER_APPEND_ONLY, at,
                         f"{node}, leader of term {tenure.term}, shrank its log from "
                         f"{tenure.tip_index} to {log.last_index}")
            return
        if tenure.tip is None:
            return
        now = self._content_at(log, tenure.tip_index)
        if now is not None and now != tenure.tip:
            self.violate(LEADER_APPEND_ONLY, at,
                         f"{node}, leader of term {tenure.term}, replaced {_show(tenure.tip)} "
                         f"at index {tenure.tip_index} by {_show(now)}")

    def _check_complete(self, at: float, node: str, term: int, log: LogView) -> None:
        due = [index for index, commit_term in self.commit_term.items() if commit_term < term]
        if not due:
            return
        highest = max(due)
        if log.last_index < highest:
            self.violate(LEADER_COMPLETENESS, at,
                         f"{node} leads term {term} with a log ending at {log.last_index}, "
                         f"without entry {highest} committed in term "
                         f"{self.commit_term[highest]} or before")
            return
        lo = max(1, log.first_index)
        if lo > highest:
            return  # everything due is inside its snapshot
        entries = _entries_from(log, lo, highest + 1)
        if entries is None:
            return
        for entry in entries:
            index = entry.index
            commit_term = self.commit_term.get(index)
            if commit_term is None or commit_term >= term:
                continue
            if _content(entry) != self.committed[index]:
                self.violate(LEADER_COMPLETENESS, at,
                             f"{node} leads term {term} holding {_show(entry)} at index "
                             f"{index}, where {_show(self.committed[index])} was committed "
                             f"in term {commit_term} or before")
                return


def _entries_from(log: LogView, lo: int, hi: int) -> Sequence[Entry] | None:
    try:
        return log.log_entries(lo, hi)
    except CompactedError:
        return None


class RaftSafetyChecker:
    """A ``StepChecker`` feeding ``RaftSafety`` from each node's host after every step.

    ``host_of(node)`` returns the node's current Raft host (None when it has none).
    """

    def __init__(self, host_of: Callable[[SimNode], ObservedHost | None]) -> None:
        self.safety = RaftSafety()
        self._host_of = host_of

    def on_step(self, world: World, node: SimNode) -> None:
        """Feed what ``node`` wrote and applied in this batch, then its state."""
        host = self._host_of(node)
        if host is None:
            return
        safety, at, name = self.safety, world.now, node.name
        for written in host.take_written():
            safety.wrote(at, name, written)
        for applied in host.take_applied():
            safety.applied(at, name, applied)
        raft = host.raft
        safety.observe(at, name, raft.term, raft.role is Role.LEADER, raft)
        try:
            raft.check_invariants()
        except AssertionError as exc:
            safety.violate(INVARIANTS, at, f"{name}: {exc!r}")

    def at_end(self, world: World) -> list[Violation]:
        """Every violation kept, with a count of those dropped."""
        violations = list(self.safety.violations)
        for checker, count in sorted(self.safety.counts.items()):
            if count > VIOLATIONS_KEPT:
                violations.append(Violation(checker, world.now,
                                            f"... and {count - VIOLATIONS_KEPT} more"))
        return violations
