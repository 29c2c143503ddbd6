"""Last-writer-wins map: which of two writes to a key survives, and the map itself.

How this works: every write to a key (a set or a delete) is a record stamped with a
hybrid-logical-clock timestamp and its writer's node id. Between two records for
the same key the higher ``(timestamp, writer)`` wins, on every node, whatever the
order they arrive in, so replicas that have seen the same records agree. A delete
is a record too (a tombstone), so a delete can beat an older set that arrives
later; tombstones are removed only by the gossip core's collector. Exact ties can
only come from one node reusing a timestamp across restarts; they are broken by
the record's content and origin so that even then every node picks the same one.

Because timestamps come from a hybrid logical clock that folds in every timestamp
a node has seen, a write made after seeing another orders after it even when the
writers' wall clocks disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from consensus.gossip.messages import GossipRecord, writer_of
from consensus.gossip.values import decode_value

__all__ = ["Entry", "LWWMap", "entry_of", "lww_supersedes"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A map entry as readers see it; ``deleted`` entries are tombstones (value None)."""

    key: str
    value: Any
    timestamp: int
    writer: bytes
    deleted: bool


def entry_of(record: GossipRecord) -> Entry:
    """The reader's view of a map record (decodes a fresh copy of the value)."""
    value = None if record.deleted else decode_value(record.value)
    return Entry(record.key, value, record.timestamp, writer_of(record.origin), record.deleted)


def lww_supersedes(new: GossipRecord, old: GossipRecord) -> bool:
    """Whether ``new`` wins over ``old`` for the same key."""
    if new.timestamp != old.timestamp:
        return new.timestamp > old.timestamp
    return (writer_of(new.origin), new.deleted, new.value, new.origin) > (
        writer_of(old.origin),
        old.deleted,
        old.value,
        old.origin,
    )


class LWWMap:
    """Key -> winning record (live or tombstone). The gossip core decides what to put."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[str, GossipRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def record(self, key: str) -> GossipRecord | None:
        """The current record for ``key``, tombstones included."""
        return self._records.get(key)

    def put(self, record: GossipRecord) -> None:
        """Store ``record`` as the winner for its key (the caller checked ``lww_supersedes``)."""
        self._records[record.key] = record

    def discard(self, key: str) -> None:
        """Forget ``key`` entirely (tombstone collection)."""
        self._records.pop(key, None)

    def live(self, prefix: str = "") -> Iterator[GossipRecord]:
        """Live records whose key starts with ``prefix``, in key order."""
        for key in sorted(k for k in self._records if k.startswith(prefix)):
            record = self._records[key]
            if not record.deleted:
                yield record
