"""Payload types of the mesh layer itself: node status and gossip administration.

Payloads are frozen pydantic models; the envelope layer validates every received
payload against the model registered for its kind before any handler sees it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "GOSSIP_REQUEST",
    "GOSSIP_RESPONSE",
    "STATUS_REQUEST",
    "STATUS_RESPONSE",
    "GossipOperation",
    "GossipRequest",
    "GossipResponse",
    "StatusRequest",
    "StatusResponse",
]

GOSSIP_REQUEST = "mesh.gossip_request"
GOSSIP_RESPONSE = "mesh.gossip_response"
STATUS_REQUEST = "mesh.status_request"
STATUS_RESPONSE = "mesh.status_response"

_KEY_CHARS_MAX = 1024


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StatusRequest(_Payload):
    """Ask a node for its status."""


class StatusResponse(_Payload):
    """A node's status, as ``agentmesh status --json`` shows it."""

    status: dict[str, Any]


GossipOperation = Literal["get", "set", "delete", "list"]


class GossipRequest(_Payload):
    """Read or write a node's gossip state from outside (the ``agentmesh gossip`` CLI)."""

    op: GossipOperation
    key: str = Field("", max_length=_KEY_CHARS_MAX)
    value: Any = None
    limit: int = Field(1_000, ge=1, le=100_000)


class GossipResponse(_Payload):
    """The answer to a ``GossipRequest``: a value, a listing, or the reason it failed."""

    ok: bool
    value: Any = None
    items: list[tuple[str, Any]] = Field(default_factory=list)
    truncated: bool = False
    error: str | None = None
