"""Payloads between KV clients and the Raft voters that serve them.

How this works: a client sends ``kv.call`` envelopes, each carrying many
``KVCall`` payloads (every call its client made since the last send, so one
signature covers them all), to any voter. The voter answers each call with a
``KVAnswer`` under ``kv.answer``, again many per envelope, along the route the
calls came by; ``call_id`` pairs them. Writes carry an encoded KV command with
the client's session (``client_id``, ``seq``): the leader stamps the time,
proposes it, and answers with the encoded ``Response`` once the entry is applied.
Reads are linearizable (ReadIndex) and served by whichever voter was asked.

A voter that cannot serve a call says why in ``status``: ``redirect`` (not the
leader; ``leader_id`` and ``leader_address`` say where to go, when known),
``unavailable`` (no leader yet, too busy, or leadership changed while the call
waited: retry, with the same ``seq`` for a write) or ``invalid`` (the call is
malformed and retrying will not help; ``detail`` says why).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "GET_MANY_KEYS_MAX",
    "KV_ANSWER",
    "KV_CALL",
    "KVAnswer",
    "KVCall",
    "KVItem",
    "KVLock",
    "ReadOp",
]

KV_CALL = "kv.call"
KV_ANSWER = "kv.answer"

_TEXT_CHARS_MAX = 4096
_COMMAND_BYTES_MAX = 16 * 1024 * 1024
_LIST_LIMIT_MAX = 100_000

ReadOp = Literal["get", "get_many", "list", "lock"]
GET_MANY_KEYS_MAX = 1000
"""Most keys one ``get_many`` read names."""


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KVCall(_Payload):
    """One request of one client: a write (``command`` set) or a read (``read`` set)."""

    call_id: Annotated[int, Field(ge=0, le=2**63 - 1)]
    client_id: str = Field("", max_length=_TEXT_CHARS_MAX)
    seq: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    command: bytes | None = Field(None, max_length=_COMMAND_BYTES_MAX)
    """An encoded ``consensus.kvstore`` command (``encode_command``)."""
    read: ReadOp | None = None
    key: str = Field("", max_length=_TEXT_CHARS_MAX)
    """The key (``get``), prefix (``list``) or lock name (``lock``)."""
    limit: Annotated[int, Field(ge=1, le=_LIST_LIMIT_MAX)] = 1000
    start_after: str | None = Field(None, max_length=_TEXT_CHARS_MAX)
    keys: list[Annotated[str, Field(max_length=_TEXT_CHARS_MAX)]] = Field(
        default_factory=list, max_length=GET_MANY_KEYS_MAX)
    """The keys of a ``get_many`` read."""


class KVItem(_Payload):
    """A key as a read found it."""

    key: str
    value: bytes
    version: int
    create_index: int
    mod_index: int
    lease_id: int | None = None


class KVLock(_Payload):
    """A held lock as a read found it."""

    name: str
    owner: str
    token: int
    lease_id: int
    deadline_ms: int


class KVAnswer(_Payload):
    """The outcome of one ``KVCall``."""

    call_id: Annotated[int, Field(ge=0, le=2**63 - 1)]
    status: Literal["ok", "redirect", "unavailable", "invalid"]
    response: bytes | None = Field(None, max_length=64 * 1024)
    """A write's encoded ``consensus.kvstore.Response`` (which may be a refusal)."""
    item: KVItem | None = None
    items: list[KVItem] = Field(default_factory=list, max_length=_LIST_LIMIT_MAX)
    truncated: bool = False
    lock: KVLock | None = None
    leader_id: bytes | None = Field(None, max_length=64)
    leader_address: str | None = Field(None, max_length=_TEXT_CHARS_MAX)
    detail: str = Field("", max_length=_TEXT_CHARS_MAX)
