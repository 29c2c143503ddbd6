"""Wire payloads of SWIM membership.

How this works: every payload starts with the same header (the sender's name,
address and incarnation) so that whoever receives it can answer, even when the
sender is not yet in its table. Probing uses ``Ping``/``Ack`` matched by ``seq``;
an indirect probe is a ``PingReq`` to a helper, which answers the requester with
the target's ``Ack`` (relayed, carrying the requester's ``seq``) or with a
``Nack`` when the target stayed silent. ``Sync`` carries a whole membership table
(push-pull); ``wants_reply`` marks a request that expects the receiver's table
back. Ping, ack, nack and ping-req piggyback a few ``MemberUpdate`` entries: that
is how membership changes spread (gossip by infection).

Limits here are hard caps independent of settings, so that the envelope layer
can reject oversized payloads before any core sees them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ACK",
    "ADDRESS_CHARS_MAX",
    "ENTRIES_MAX",
    "INCARNATION_MAX",
    "NACK",
    "NAME_CHARS_MAX",
    "NODE_ID_BYTES",
    "PING",
    "PING_REQ",
    "SEQ_MAX",
    "SYNC",
    "Ack",
    "MemberUpdate",
    "Nack",
    "Ping",
    "PingReq",
    "StateName",
    "Sync",
]

PING = "swim.ping"
ACK = "swim.ack"
PING_REQ = "swim.ping_req"
NACK = "swim.nack"
SYNC = "swim.sync"

NODE_ID_BYTES = 16
NAME_CHARS_MAX = 256
ADDRESS_CHARS_MAX = 512
ENTRIES_MAX = 4096
# Far below 2**63 so that a refutation (incarnation + 1) never overflows a
# signed 64-bit integer in another implementation.
INCARNATION_MAX = 2**62
SEQ_MAX = 2**63 - 1

StateName = Literal["alive", "suspect", "dead", "left"]
"""A member state on the wire: the value of a ``MemberState``."""

_NodeId = Annotated[bytes, Field(min_length=NODE_ID_BYTES, max_length=NODE_ID_BYTES)]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Header(_Payload):
    """Who sent this and how to reach them back."""

    name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    address: str = Field(min_length=1, max_length=ADDRESS_CHARS_MAX)
    incarnation: int = Field(ge=0, le=INCARNATION_MAX)


class MemberUpdate(_Payload):
    """What one node believes about one member, at an incarnation.

    ``suspector`` names the node that raised a suspicion (only meaningful with
    state ``suspect``); suspicions about the same member and incarnation from
    distinct suspectors are the Lifeguard confirmations that shorten the
    suspicion timeout.
    """

    node_id: _NodeId
    name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    address: str = Field(min_length=1, max_length=ADDRESS_CHARS_MAX)
    incarnation: int = Field(ge=0, le=INCARNATION_MAX)
    state: StateName
    suspector: _NodeId | None = None


class Ping(_Header):
    """A probe of ``target``; answered by an ``Ack`` with the same ``seq``."""

    seq: int = Field(ge=0, le=SEQ_MAX)
    target: _NodeId
    updates: tuple[MemberUpdate, ...] = Field(default=(), max_length=ENTRIES_MAX)


class Ack(_Header):
    """``target`` answered the probe ``seq`` (directly, or relayed by a helper)."""

    seq: int = Field(ge=0, le=SEQ_MAX)
    target: _NodeId
    updates: tuple[MemberUpdate, ...] = Field(default=(), max_length=ENTRIES_MAX)


class PingReq(_Header):
    """Ask a helper to probe ``target`` on the requester's behalf (probe ``seq``)."""

    seq: int = Field(ge=0, le=SEQ_MAX)
    target: _NodeId
    target_address: str = Field(min_length=1, max_length=ADDRESS_CHARS_MAX)
    updates: tuple[MemberUpdate, ...] = Field(default=(), max_length=ENTRIES_MAX)


class Nack(_Header):
    """A helper is alive but ``target`` did not answer its ping for probe ``seq``."""

    seq: int = Field(ge=0, le=SEQ_MAX)
    target: _NodeId
    updates: tuple[MemberUpdate, ...] = Field(default=(), max_length=ENTRIES_MAX)


class Sync(_Header):
    """Push-pull: the sender's whole (bounded) table; ``wants_reply`` asks for ours."""

    wants_reply: bool
    members: tuple[MemberUpdate, ...] = Field(default=(), max_length=ENTRIES_MAX)
