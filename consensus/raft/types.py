"""Value types of the Raft core: log entries, persisted state, snapshots, roles.

How this works: everything here is a frozen value. ``Entry`` is one log slot;
``HardState`` is what must reach stable storage before any message that depends
on it leaves the node (term, vote, commit index); ``ConfState`` is the voter and
learner sets; ``Snapshot`` is the state machine image up to an index with the
configuration in force there. ``SoftState`` (leader, role) and ``ReadState``
(a linearizable read that may now be served) are volatile outputs of a ``Ready``.
A ``ConfChange`` travels inside an entry of kind ``CONF_CHANGE`` in a small
fixed binary encoding (one kind byte, then the node id).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "NODE_ID_BYTES_MAX",
    "ConfChange",
    "ConfChangeKind",
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "ReadState",
    "Role",
    "Snapshot",
    "SoftState",
]

NODE_ID_BYTES_MAX = 64
"""Longest node id the Raft core accepts (agentmesh ids are 16 bytes)."""

ENTRY_OVERHEAD_BYTES = 16
"""Bytes counted per entry on top of its data, for append and uncommitted budgets
(term, kind and framing on the wire)."""


class Role(enum.Enum):
    """What a node is doing in the protocol right now."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"
    """Not a voter: receives the log but never campaigns or votes."""


class EntryKind(enum.IntEnum):
    """What an entry's data means (the int value travels on the wire)."""

    NORMAL = 0
    """Application data; empty data is the no-op a new leader appends."""
    CONF_CHANGE = 1
    """An encoded ``ConfChange``; it takes effect when applied."""


class Entry(NamedTuple):
    """One slot of the replicated log (immutable).

    A named tuple rather than a frozen dataclass: entries are built once per entry
    per node on the replication hot path, and a frozen dataclass costs about 2.5
    times as much to construct.
    """

    term: int
    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    @property
    def size_bytes(self) -> int:
        """Bytes this entry counts for in append and uncommitted-proposal budgets."""
        return len(self.data) + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be durable before dependent messages are sent."""

    term: int = 0
    vote: bytes | None = None
    """The candidate voted for in ``term`` (None: no vote cast yet)."""
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """The cluster configuration: voters (counted in quorums) and learners (not)."""

    voters: tuple[bytes, ...] = ()
    learners: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        # Canonical form (sorted, no duplicates, disjoint) so equal sets compare equal.
        assert list(self.voters) == sorted(set(self.voters)), self
        assert list(self.learners) == sorted(set(self.learners)), self
        assert not set(self.voters) & set(self.learners), self

    @classmethod
    def of(cls, voters: Iterable[bytes] = (), learners: Iterable[bytes] = ()) -> ConfState:
        """Build from any iterables of node ids (sorted and deduplicated here; a node in
        both sets is a voter)."""
        voter_set = {bytes(v) for v in voters}
        return cls(
            tuple(sorted(voter_set)), tuple(sorted({bytes(x) for x in learners} - voter_set))
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine image at ``index`` (whose entry had ``term``).

    ``index == 0`` is the empty snapshot a fresh log starts from.
    """

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting when it changes (not persisted)."""

    leader_id: bytes | None
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine applied ``index``."""

    request_id: bytes
    index: int


class ConfChangeKind(enum.IntEnum):
    """One single-server configuration change."""

    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2
    PROMOTE_LEARNER = 3


@dataclass(frozen=True, slots=True)
class ConfChange:
    """Add a voter or a learner, remove a node, or promote a learner to voter."""

    kind: ConfChangeKind
    node_id: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.node_id) <= NODE_ID_BYTES_MAX:
            raise ValueError(
                f"node_id ({self.node_id.hex()}) must be 1 to {NODE_ID_BYTES_MAX} bytes"
            )

    def encode(self) -> bytes:
        """The entry data of this change: one kind byte, then the node id."""
        return bytes([int(self.kind)]) + self.node_id

    @classmethod
    def decode(cls, data: bytes) -> ConfChange | None:
        """The change in an entry's data, or None if the data is not a valid change."""
        if len(data) < 2 or data[0] > max(ConfChangeKind) or len(data) > NODE_ID_BYTES_MAX + 1:
            return None
        return cls(ConfChangeKind(data[0]), bytes(data[1:]))

    def apply(self, conf: ConfState) -> ConfState:
        """The configuration after this change (a no-op change returns ``conf``)."""
        voters, learners = set(conf.voters), set(conf.learners)
        node = self.node_id
        if self.kind is ConfChangeKind.ADD_VOTER:
            learners.discard(node)
            voters.add(node)
        elif self.kind is ConfChangeKind.ADD_LEARNER:
            if node not in voters:  # demoting a voter is not a single-server change here
                learners.add(node)
        elif self.kind is ConfChangeKind.REMOVE_NODE:
            voters.discard(node)
            learners.discard(node)
        elif node in learners:  # PROMOTE_LEARNER
            learners.discard(node)
            voters.add(node)
        return ConfState.of(voters, learners)
