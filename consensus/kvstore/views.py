"""What reads return: ``Item``, ``Lease`` and ``Lock``, immutable snapshots of one entry.

How this works: reads (``KVStore.get``, ``range``, ``lease``, ``lock``) answer from the
state as of ``KVStore.applied_index``; a linearizable read is one made after the
replica has applied up to the leader's ReadIndex. Views are frozen, so a caller
cannot change the store through them. Expiry only happens when an entry is applied
(see ``commands``), so a lease whose deadline has passed in real time still shows
until the next applied entry carries a later time.

Versions: a key's ``version`` is 1 when it is created and grows by 1 with every
successful write; deleting the key forgets it, so a key created again starts at
version 1. ``create_index`` and ``mod_index`` are Raft log indexes, which only grow,
so they tell a re-created key from its earlier life (its ``create_index`` is
larger) and order all writes of the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Item", "Lease", "Lock"]


class Item(NamedTuple):
    """A key, its value and its version history markers (immutable).

    A named tuple rather than a frozen dataclass: every replica builds one per
    write it applies, at a third of the cost.
    """

    key: str
    value: bytes
    version: int
    """1 at creation, +1 on each write; a re-created key starts at 1 again."""
    create_index: int
    """Log index of the write that created the key (this life of it)."""
    mod_index: int
    """Log index of the latest write."""
    lease: int | None
    """The lease the key is attached to (deleted with it), or None."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease: what it holds and when it ends unless kept alive."""

    lease_id: int
    """The log index of the entry that granted it (unique for the cluster's life)."""
    ttl_ms: int
    """The TTL each keep-alive extends it by."""
    deadline_ms: int
    """It ends at the first applied entry stamped at or after this time."""
    keys: tuple[str, ...]
    """Keys attached to it, sorted."""
    lock: str | None
    """The lock it backs, if it was granted by ``LockAcquire``."""


@dataclass(frozen=True, slots=True)
class Lock:
    """A held lock."""

    name: str
    owner: str
    token: int
    """Fencing token: the log index of the acquire; larger for every later grant."""
    lease_id: int
    """Its lease; keep it alive with ``LeaseKeepAlive``, it ends the lock when it ends."""
    deadline_ms: int
    """The lease's deadline."""
