"""Members, their states, the events that report changes, and which news wins.

How this works: each member is known at an incarnation, a counter that only the
member itself raises (to refute a rumour about it, or to leave). Of two claims
about a member, the one with the higher incarnation wins; at equal incarnation
the worse state wins (alive < suspect < dead < left). So "alive" news overrides
a suspicion only when the member itself has raised its incarnation, and "left"
is final for its incarnation. ``supersedes`` is that rule in one place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "LIVE_STATES",
    "Member",
    "MemberState",
    "MembershipEvent",
    "MembershipEventKind",
    "supersedes",
]


_PRECEDENCE = ("alive", "suspect", "dead", "left")
_LIVE = ("alive", "suspect")


class MemberState(enum.Enum):
    """A member's state as seen from this node.

    ``rank`` orders the states for precedence and ``live`` says whether the
    state is in ``LIVE_STATES``; they are plain attributes because the tables
    of a large cluster ask millions of times, and hashing an enum member (for a
    dict or set lookup) runs Python code.
    """

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    rank: int
    live: bool

    def __init__(self, value: str) -> None:
        self.rank = _PRECEDENCE.index(value)
        self.live = value in _LIVE


LIVE_STATES = frozenset(state for state in MemberState if state.live)
"""States in which a member is still considered part of the cluster (probed, gossiped to)."""


def supersedes(
    incarnation: int, state: MemberState, known_incarnation: int, known_state: MemberState
) -> bool:
    """Whether news (``incarnation``, ``state``) replaces what is known (SWIM precedence)."""
    if incarnation != known_incarnation:
        return incarnation > known_incarnation
    return state.rank > known_state.rank


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it."""

    node_id: bytes
    name: str
    address: str
    incarnation: int
    state: MemberState
    state_since: float
    """Local monotonic time of the last state change."""


class MembershipEventKind(enum.Enum):
    """What changed about a member."""

    JOINED = "joined"
    """First heard of (or back after having left or been forgotten)."""
    SUSPECTED = "suspected"
    """Stopped answering probes; may still refute. May follow DIED if it comes back suspect."""
    ALIVE = "alive"
    """Back to alive from suspect or dead (it refuted)."""
    DIED = "died"
    """Declared dead: the suspicion ran out, or news of its death arrived."""
    LEFT = "left"
    """Left the cluster gracefully."""
    FORGOTTEN = "forgotten"
    """Removed from the table, ``dead_forget_after_s`` after it died or left."""


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """A change in the membership table, at local time ``at``."""

    kind: MembershipEventKind
    member: Member
    at: float
