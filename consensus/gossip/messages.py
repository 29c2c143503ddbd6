"""Gossip payloads: the wire boundary of the gossip core.

How this works: one push-pull exchange is at most three messages.

1. ``gossip.digest`` (initiator -> responder): the initiator's digest, i.e. per
   origin the highest version it has fully received, its 16-byte summary (an
   order-independent hash of the digest: a responder whose own summary is equal
   is in sync and need not read the digest), plus piggybacked rumours (records
   recently written or learned).
2. ``gossip.deltas`` (responder -> initiator): the records the initiator lacks, an
   ``advances`` list saying up to which version the initiator may move each
   origin's watermark, and a ``request``: the responder's own versions for the
   origins where it lags the initiator. Not sent at all when both are in sync.
3. ``gossip.deltas`` (initiator -> responder): the records asked for by that
   request, with an empty ``request``, which ends the exchange.

A record is one versioned write: a map entry (``tag`` is None) or one tag of an
observed-remove set (``key`` is the set name, ``tag`` the add's unique tag).
Values travel as canonical msgpack bytes (see ``values``). An *origin* is a
writer's node id followed by an 8-byte incarnation number chosen when its core
starts, so a restarted node begins a fresh version sequence without colliding
with the versions it issued before (see ``writer_of``).

Every list and string has a hard cap here, independent of the settings; the core
applies the (smaller) configured limits itself and counts what it refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from consensus.trusted import trusted

__all__ = [
    "DELTAS",
    "DIGEST",
    "INCARNATION_BYTES",
    "KEY_CHARS_WIRE_MAX",
    "MESSAGE_KINDS",
    "NODE_ID_BYTES_MAX",
    "ORIGINS_WIRE_MAX",
    "RECORDS_WIRE_MAX",
    "RECORD_OVERHEAD_BYTES",
    "SUMMARY_BYTES_MAX",
    "VALUE_BYTES_WIRE_MAX",
    "VERSION_MAX",
    "GossipDeltas",
    "GossipDigest",
    "GossipRecord",
    "make_origin",
    "record_size_bytes",
    "trusted",
    "writer_of",
]

DIGEST = "gossip.digest"
DELTAS = "gossip.deltas"

INCARNATION_BYTES = 8
NODE_ID_BYTES_MAX = 64
KEY_CHARS_WIRE_MAX = 4096
VALUE_BYTES_WIRE_MAX = 16 * 1024 * 1024
RECORDS_WIRE_MAX = 65_536
ORIGINS_WIRE_MAX = 65_536
VERSION_MAX = 2**63 - 1
SUMMARY_BYTES_MAX = 16
# Framing of one record besides its key and value (field tags, ints, origin, tag),
# a generous estimate used to keep messages under ``message_bytes_max``.
RECORD_OVERHEAD_BYTES = 200

Origin = Annotated[
    bytes, Field(min_length=INCARNATION_BYTES + 1, max_length=NODE_ID_BYTES_MAX + INCARNATION_BYTES)
]
Version = Annotated[int, Field(ge=0, le=VERSION_MAX)]
Timestamp = Annotated[int, Field(ge=0, le=VERSION_MAX)]


def make_origin(node_id: bytes, incarnation: int) -> bytes:
    """The origin id of one incarnation of a node."""
    assert 1 <= len(node_id) <= NODE_ID_BYTES_MAX, node_id
    return node_id + incarnation.to_bytes(INCARNATION_BYTES, "big")


def writer_of(origin: bytes) -> bytes:
    """The node id inside an origin id."""
    return origin[:-INCARNATION_BYTES]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GossipRecord(_Payload):
    """One versioned write: a map entry or an OR-set tag, as stored and as sent."""

    key: str = Field(min_length=1, max_length=KEY_CHARS_WIRE_MAX)
    """Map key, or the OR-set's name when ``tag`` is set."""
    value: bytes = Field(max_length=VALUE_BYTES_WIRE_MAX)
    """Canonical msgpack of the value or set element; empty for tombstones."""
    deleted: bool
    """A map tombstone, or a removed OR-set tag."""
    timestamp: Timestamp
    """Hybrid logical clock time of the write."""
    origin: Origin
    """Writer node id plus incarnation; versions count per origin."""
    version: Annotated[int, Field(ge=1, le=VERSION_MAX)]
    """This write's number in its origin's sequence."""
    tag: tuple[Origin, Timestamp] | None = None
    """OR-set tag (adding origin, add timestamp); None for map entries."""


def record_size_bytes(record: GossipRecord) -> int:
    """An upper estimate of a record's encoded size, for message budgets."""
    return len(record.value) + 4 * len(record.key) + RECORD_OVERHEAD_BYTES


class GossipDigest(_Payload):
    """Start of a push-pull exchange: the sender's digest and piggybacked rumours."""

    digest: tuple[tuple[Origin, Version], ...] = Field(max_length=ORIGINS_WIRE_MAX)
    """(origin, highest version fully received) for every origin the sender knows."""
    summary: bytes = Field(default=b"", max_length=SUMMARY_BYTES_MAX)
    """Order-independent hash of the sender's whole digest (``versions``); empty when
    the digest was cut to the wire's origin limit, or unknown."""
    rumors: tuple[GossipRecord, ...] = Field(default=(), max_length=RECORDS_WIRE_MAX)
    """Recent records pushed to random peers ahead of anti-entropy."""


class GossipDeltas(_Payload):
    """Records the receiver lacks, how far it may advance, and what the sender lacks."""

    records: tuple[GossipRecord, ...] = Field(default=(), max_length=RECORDS_WIRE_MAX)
    """Per origin in increasing version order (lowest first when cut short)."""
    advances: tuple[tuple[Origin, Version, Version], ...] = Field(
        default=(), max_length=ORIGINS_WIRE_MAX
    )
    """(origin, from, to): if the receiver has everything of origin up to ``from``,
    after these records it has everything up to ``to`` (versions it never got there
    were overwritten or collected)."""
    request: tuple[tuple[Origin, Version], ...] = Field(default=(), max_length=ORIGINS_WIRE_MAX)
    """The sender's versions for the origins where it lags; non-empty asks for deltas."""


MESSAGE_KINDS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {DIGEST: GossipDigest, DELTAS: GossipDeltas}
)
"""Message kinds the gossip core consumes, with their payload models."""
