"""Raft payloads: the wire boundary of the Raft core.

How this works. Every message between Raft peers is one of the frozen models
below, under a ``raft.*`` kind. Messages of the protocol proper carry the
sender's ``term``; whoever sees a higher term adopts it (pre-votes excepted).

- Replication: ``raft.append`` (entries after ``prev_index``, whose indices are
  implied: ``prev_index + 1 + position``) and ``raft.append_resp`` (success with
  the index now matched, or a rejection with a back-off hint: the follower's
  ``hint_index`` and the term it holds there, so the leader skips a whole term of
  mismatches per round trip).
- Liveness and reads: ``raft.heartbeat`` / ``raft.heartbeat_resp``; the leader
  numbers its read rounds (``read_seq``) and a read is confirmed once a quorum
  echoed a round at least as new as the read.
- Elections: ``raft.prevote`` / ``raft.prevote_resp`` (a trial run at ``term + 1``
  that changes nobody's term), ``raft.vote`` / ``raft.vote_resp``, and
  ``raft.timeout_now`` (leader transfer: campaign now, skipping the pre-vote).
- Snapshots: ``raft.snapshot`` carries one chunk (``offset``, ``data``, ``done``);
  ``raft.snapshot_resp`` acknowledges the bytes received in order.
- Forwarding: ``raft.propose`` (a non-leader hands proposals to the leader),
  ``raft.read_index`` / ``raft.read_index_resp`` (a non-leader's linearizable read).

Limits here are hard caps independent of the settings, so that the envelope
layer rejects oversized payloads before any core sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from consensus.raft.types import NODE_ID_BYTES_MAX

__all__ = [
    "APPEND",
    "APPEND_RESP",
    "CHUNK_BYTES_WIRE_MAX",
    "ENTRIES_WIRE_MAX",
    "ENTRY_BYTES_WIRE_MAX",
    "HEARTBEAT",
    "HEARTBEAT_RESP",
    "INDEX_MAX",
    "MESSAGE_KINDS",
    "NODES_WIRE_MAX",
    "PREVOTE",
    "PREVOTE_RESP",
    "PROPOSALS_WIRE_MAX",
    "PROPOSE",
    "READ_INDEX",
    "READ_INDEX_RESP",
    "REQUEST_ID_BYTES_MAX",
    "SNAPSHOT",
    "SNAPSHOT_BYTES_WIRE_MAX",
    "SNAPSHOT_RESP",
    "TIMEOUT_NOW",
    "VOTE",
    "VOTE_RESP",
    "Append",
    "AppendResp",
    "Heartbeat",
    "HeartbeatResp",
    "PreVote",
    "PreVoteResp",
    "Propose",
    "ReadIndex",
    "ReadIndexResp",
    "SnapshotChunk",
    "SnapshotResp",
    "TimeoutNow",
    "Vote",
    "VoteResp",
    "WireEntry",
]

APPEND = "raft.append"
APPEND_RESP = "raft.append_resp"
HEARTBEAT = "raft.heartbeat"
HEARTBEAT_RESP = "raft.heartbeat_resp"
VOTE = "raft.vote"
VOTE_RESP = "raft.vote_resp"
PREVOTE = "raft.prevote"
PREVOTE_RESP = "raft.prevote_resp"
SNAPSHOT = "raft.snapshot"
SNAPSHOT_RESP = "raft.snapshot_resp"
TIMEOUT_NOW = "raft.timeout_now"
READ_INDEX = "raft.read_index"
READ_INDEX_RESP = "raft.read_index_resp"
PROPOSE = "raft.propose"

INDEX_MAX = 2**63 - 1
"""Largest term, index or counter on the wire (a signed 64-bit integer)."""
ENTRIES_WIRE_MAX = 65_536
"""Most entries in one append."""
ENTRY_BYTES_WIRE_MAX = 16 * 1024 * 1024
"""Largest data of one entry or forwarded proposal."""
CHUNK_BYTES_WIRE_MAX = 16 * 1024 * 1024
"""Largest snapshot chunk."""
SNAPSHOT_BYTES_WIRE_MAX = 2**40
"""Largest whole snapshot a chunk may announce."""
NODES_WIRE_MAX = 1024
"""Most voters or learners in a snapshot's configuration."""
PROPOSALS_WIRE_MAX = 4096
"""Most proposals forwarded in one message."""
REQUEST_ID_BYTES_MAX = 256
"""Longest read request id."""

Term = Annotated[int, Field(ge=0, le=INDEX_MAX)]
Index = Annotated[int, Field(ge=0, le=INDEX_MAX)]
NodeId = Annotated[bytes, Field(min_length=1, max_length=NODE_ID_BYTES_MAX)]
RequestId = Annotated[bytes, Field(max_length=REQUEST_ID_BYTES_MAX)]
EntryData = Annotated[bytes, Field(max_length=ENTRY_BYTES_WIRE_MAX)]
EntryKindValue = Annotated[int, Field(ge=0, le=1)]

WireEntry = tuple[Term, EntryKindValue, EntryData]
"""One entry on the wire: (term, ``EntryKind`` value, data); its index is implied."""


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Append(_Payload):
    """AppendEntries: entries following ``prev_index`` and the leader's commit index."""

    term: Term
    prev_index: Index
    prev_term: Term
    entries: tuple[WireEntry, ...] = Field(default=(), max_length=ENTRIES_WIRE_MAX)
    commit: Index


class AppendResp(_Payload):
    """Answer to an append (or to a completed snapshot install)."""

    term: Term
    index: Index
    """Success: the last index now known to match the leader. Rejection: the
    ``prev_index`` that did not match."""
    reject: bool = False
    hint_index: Index = 0
    """Rejection only: the follower's proposal where to probe next."""
    hint_term: Term = 0
    """Rejection only: the follower's term at ``hint_index`` (0 if unknown)."""


class Heartbeat(_Payload):
    """Leader liveness, the commit index the receiver can safely adopt, a read round."""

    term: Term
    commit: Index
    read_seq: Index = 0


class HeartbeatResp(_Payload):
    """Echo of a heartbeat's read round."""

    term: Term
    read_seq: Index = 0


class Vote(_Payload):
    """RequestVote at ``term`` from a candidate whose log ends at (last_index, last_term)."""

    term: Term
    last_index: Index
    last_term: Term
    transfer: bool = False
    """Set by a leader transfer: voters disregard their recent leader (stickiness)."""


class VoteResp(_Payload):
    """A vote granted or refused, at the voter's term (the candidate's when granted)."""

    term: Term
    granted: bool


class PreVote(_Payload):
    """A trial vote at ``term`` (the candidate's term + 1); nobody changes term for it."""

    term: Term
    last_index: Index
    last_term: Term
    transfer: bool = False


class PreVoteResp(_Payload):
    """Answer to a pre-vote; when granted its ``term`` is the pre-vote's."""

    term: Term
    granted: bool


class SnapshotChunk(_Payload):
    """One chunk of the leader's snapshot at ``index``/``snap_term``."""

    term: Term
    index: Index
    snap_term: Term
    voters: tuple[NodeId, ...] = Field(max_length=NODES_WIRE_MAX)
    learners: tuple[NodeId, ...] = Field(default=(), max_length=NODES_WIRE_MAX)
    total_bytes: Annotated[int, Field(ge=0, le=SNAPSHOT_BYTES_WIRE_MAX)]
    offset: Annotated[int, Field(ge=0, le=SNAPSHOT_BYTES_WIRE_MAX)]
    data: bytes = Field(max_length=CHUNK_BYTES_WIRE_MAX)
    done: bool


class SnapshotResp(_Payload):
    """The follower holds the first ``offset`` bytes of the snapshot at ``index``."""

    term: Term
    index: Index
    offset: Annotated[int, Field(ge=0, le=SNAPSHOT_BYTES_WIRE_MAX)]


class TimeoutNow(_Payload):
    """Leader transfer: the receiver campaigns at once, without a pre-vote."""

    term: Term


class ReadIndex(_Payload):
    """A non-leader asks the leader for a read index on behalf of ``request_id``."""

    request_id: RequestId


class ReadIndexResp(_Payload):
    """The read ``request_id`` may be served once ``index`` is applied."""

    term: Term
    request_id: RequestId
    index: Index


class Propose(_Payload):
    """Proposals a non-leader forwards to the leader (application entries only)."""

    entries: tuple[EntryData, ...] = Field(min_length=1, max_length=PROPOSALS_WIRE_MAX)


MESSAGE_KINDS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {
        APPEND: Append,
        APPEND_RESP: AppendResp,
        HEARTBEAT: Heartbeat,
        HEARTBEAT_RESP: HeartbeatResp,
        VOTE: Vote,
        VOTE_RESP: VoteResp,
        PREVOTE: PreVote,
        PREVOTE_RESP: PreVoteResp,
        SNAPSHOT: SnapshotChunk,
        SNAPSHOT_RESP: SnapshotResp,
        TIMEOUT_NOW: TimeoutNow,
        READ_INDEX: ReadIndex,
        READ_INDEX_RESP: ReadIndexResp,
        PROPOSE: Propose,
    }
)
"""The ``raft.*`` kinds the Raft core consumes, with their payload models."""
