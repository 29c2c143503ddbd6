"""Change events: what a subscriber to gossip state is told.

How this works: whenever a local or remote write alters the visible state (a map
key gets a new value or disappears, an element enters or leaves a named set) the
core appends one ``Change``, in the order it applied the writes. Writes that change
nothing visible (an older write arriving late, a duplicate, setting a key to the
value it already has) produce no event. The runtime builds prefix subscriptions on
these; the core itself keeps no subscribers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Change", "ChangeKind"]


class ChangeKind(enum.Enum):
    """What happened to a key or a set."""

    SET = "set"
    """A map key has a new value (``value``)."""
    DELETED = "deleted"
    """A map key was deleted (``value`` is None)."""
    ELEMENT_ADDED = "element_added"
    """``value`` entered the OR-set named ``key``."""
    ELEMENT_REMOVED = "element_removed"
    """``value`` left the OR-set named ``key``."""


@dataclass(frozen=True, slots=True)
class Change:
    """One visible change. For OR-sets ``key`` is the set name and ``value`` the element.

    ``timestamp`` and ``writer`` are those of the write that caused it (for an
    element removal, the remove that killed its last tag).
    """

    key: str
    kind: ChangeKind
    value: Any
    timestamp: int
    writer: bytes
