"""Observed-remove set (OR-set): concurrent add and remove of an element, add wins.

How this works: every ``add`` creates a tag unique to that add (replica id and a
counter). An element is in the set while at least one of its tags is live.
``remove`` kills only the tags this replica has observed, so an add made
concurrently elsewhere carries a tag the remove never saw and survives the merge:
add wins. A killed tag stays as a tombstone, so that the add it killed, arriving
late from another replica, stays dead. ``merge`` is a union of live tags and of
tombstones, minus the tombstoned tags: commutative, associative and idempotent,
which makes replicas that have seen the same operations equal in any order.

Elements are identified by their canonical msgpack bytes (see ``values``), so
``1`` and ``1.0`` are different elements and lists are fine as elements;
``elements`` returns them in the order of those bytes, the same on every node.

The gossip core keeps one ``ORSet`` per named set and drives it with the tag-level
methods (``add_tag``, ``remove_tag``, ``forget``): there a tag is the adding
origin and the add's hybrid-logical-clock timestamp, and each tag travels as one
versioned record.
"""

from __future__ import annotations

from typing import Any

from consensus.gossip.messages import GossipRecord, writer_of
from consensus.gossip.values import decode_value, encode_value

__all__ = ["ORSet", "Tag", "tag_supersedes"]

Tag = tuple[bytes, int]
"""A unique add: (replica or origin id, counter or timestamp)."""


def tag_supersedes(new: GossipRecord, old: GossipRecord) -> bool:
    """Whether tag record ``new`` wins over ``old`` (same set, same tag).

    A removal beats the add, so a tag once removed never comes back; between
    removals of one tag (two nodes removed it concurrently) the later one is kept,
    so every node stores the same record.
    """
    if new.deleted != old.deleted:
        return new.deleted
    return (new.timestamp, writer_of(new.origin), new.value, new.origin) > (
        old.timestamp,
        writer_of(old.origin),
        old.value,
        old.origin,
    )


class ORSet:
    """A state-based observed-remove set of msgpack-able elements.

    ``replica`` must be unique among the replicas that will ever be merged.
    """

    __slots__ = ("_adds", "_counter", "_live", "_removed", "_replica")

    def __init__(self, replica: bytes = b"") -> None:
        self._replica = replica
        self._counter = 0
        self._adds: dict[Tag, bytes] = {}  # live tag -> element bytes
        self._removed: set[Tag] = set()  # tombstoned tags
        self._live: dict[bytes, set[Tag]] = {}  # element bytes -> its live tags

    # -- element level ---------------------------------------------------------

    def add(self, element: Any) -> Tag:
        """Add ``element`` under a fresh tag and return the tag."""
        data = encode_value(element)
        self._counter += 1
        tag = (self._replica, self._counter)
        self.add_tag(tag, data)
        return tag

    def remove(self, element: Any) -> list[Tag]:
        """Remove ``element`` as far as this replica has observed it; return the killed tags."""
        tags = self.tags_of(encode_value(element))
        for tag in tags:
            self.remove_tag(tag)
        return tags

    def elements(self) -> list[Any]:
        """The elements present, in canonical-bytes order."""
        return [decode_value(data) for data in self.element_bytes()]

    def element_bytes(self) -> list[bytes]:
        """Canonical bytes of the elements present, sorted."""
        return sorted(self._live)

    def __contains__(self, element: object) -> bool:
        return encode_value(element) in self._live

    def __len__(self) -> int:
        return len(self._live)

    def merge(self, other: ORSet) -> None:
        """Fold ``other``'s state into this one (a join: order and repetition do not matter)."""
        for tag in sorted(other._removed):
            self.remove_tag(tag)
        for tag, data in other._adds.items():
            self.add_tag(tag, data)

    def copy(self) -> ORSet:
        """An independent copy with the same replica id (for tests and snapshots)."""
        twin = ORSet(self._replica)
        twin._counter = self._counter
        twin.merge(self)
        return twin

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORSet):
            return NotImplemented
        return self._adds == other._adds and self._removed == other._removed

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"ORSet({self.elements()!r})"

    # -- tag level (the gossip core drives these) ---------------------------------

    def add_tag(self, tag: Tag, element: bytes) -> bool:
        """Record the add ``tag`` of ``element`` bytes; True if the element became present."""
        if tag[0] == self._replica and tag[1] > self._counter:
            # A replica merging its own earlier state never reuses a tag.
            self._counter = tag[1]
        if tag in self._removed or tag in self._adds:
            return False
        self._adds[tag] = element
        tags = self._live.get(element)
        if tags is None:
            self._live[element] = {tag}
            return True
        tags.add(tag)
        return False

    def remove_tag(self, tag: Tag) -> bytes | None:
        """Tombstone ``tag``; return the element's bytes if that made it absent."""
        if tag in self._removed:
            return None
        self._removed.add(tag)
        element = self._adds.pop(tag, None)
        if element is None:
            return None
        tags = self._live[element]
        tags.discard(tag)
        if tags:
            return None
        del self._live[element]
        return element

    def forget(self, tag: Tag) -> None:
        """Drop the tombstone of ``tag`` (once every replica is known to have it)."""
        self._removed.discard(tag)

    def tags_of(self, element: bytes) -> list[Tag]:
        """The live tags of ``element`` bytes, sorted."""
        return sorted(self._live.get(element, ()))

    def is_empty(self) -> bool:
        """No live tags and no tombstones: nothing left worth keeping."""
        return not self._adds and not self._removed
