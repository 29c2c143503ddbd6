"""SWIM membership with the Lifeguard refinements, as a pure protocol core.

How this works: ``Membership`` (``core.py``) is driven like every core in
agentmesh: ``step`` feeds it verified ``swim.*`` messages, ``tick(now)`` advances
its clock, and the driver drains ``take_outbox`` and ``take_events``. The
concepts live in small modules: ``messages`` (wire payloads), ``settings``,
``members`` (states, events, precedence), ``probing`` (round-robin order and
probes in flight), ``awareness`` (local health), ``suspicion`` (shrinking
timeouts) and ``broadcasts`` (the piggyback queue).
"""

from mesh.membership.core import COUNTER_NAMES, MESSAGE_MODELS, Membership
from mesh.membership.members import (
    LIVE_STATES,
    Member,
    MembershipEvent,
    MembershipEventKind,
    MemberState,
)
from mesh.membership.messages import (
    ACK,
    NACK,
    PING,
    PING_REQ,
    SYNC,
    Ack,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
    Sync,
)
from mesh.membership.settings import MembershipSettings

__all__ = [
    "ACK",
    "COUNTER_NAMES",
    "LIVE_STATES",
    "MESSAGE_MODELS",
    "NACK",
    "PING",
    "PING_REQ",
    "SYNC",
    "Ack",
    "Member",
    "MemberState",
    "MemberUpdate",
    "Membership",
    "MembershipEvent",
    "MembershipEventKind",
    "MembershipSettings",
    "Nack",
    "Ping",
    "PingReq",
    "Sync",
]
