"""Payload types of the mesh layer itself (peer exchange and node status).

Payloads are frozen pydantic models; the envelope layer validates every received
payload against the model registered for its kind before any handler sees it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "HELLO",
    "STATUS_REQUEST",
    "STATUS_RESPONSE",
    "Hello",
    "PeerAddress",
    "StatusRequest",
    "StatusResponse",
]

HELLO = "mesh.hello"
STATUS_REQUEST = "mesh.status_request"
STATUS_RESPONSE = "mesh.status_response"

_ADDRESS_CHARS_MAX = 256


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PeerAddress(_Payload):
    """A node id and the address it can be dialled at."""

    node_id: bytes = Field(min_length=16, max_length=16)
    address: str = Field(min_length=1, max_length=_ADDRESS_CHARS_MAX)


class Hello(_Payload):
    """Peer exchange: who I am, where to reach me, and a sample of peers I know."""

    name: str = Field(min_length=1, max_length=64)
    address: str = Field(min_length=1, max_length=_ADDRESS_CHARS_MAX)
    peers: tuple[PeerAddress, ...] = Field(default=(), max_length=4096)


class StatusRequest(_Payload):
    """Ask a node for its status."""


class StatusResponse(_Payload):
    """A node's status, as ``agentmesh status --json`` shows it."""

    status: dict[str, Any]
