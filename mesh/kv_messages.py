"""Payloads between KV clients and the Raft voters that serve them.

How this works: a client sends ``kv.call`` envelopes, each carrying many
``KVCall`` payloads (every call its client made since the last send, so one
signature covers them all), to any voter. The voter answers each call with a
``KVAnswer`` under ``kv.answer``, again many per envelope, along the route the
calls came by; ``call_id`` pairs them. Writes carry an encoded KV command with
the client's session (``client_id``, ``seq``): the leader stamps the time,
proposes it, and answers with the encoded ``Response`` once the entry is applied.
Reads are linearizable (ReadIndex) and served by whichever voter was asked.

Under load a client sends its writes in columns instead (``kv.writes``, one
``KVWrites`` per batch): the same fields as the calls', with field names and a
model once per batch rather than once per write, which is most of what a call
costs to dump, pack, unpack and validate. A voter answers those of them that it
applied under ``kv.written`` (``KVWritten``, again in columns) and every other
outcome as a ``KVAnswer``.

A voter that cannot serve a call says why in ``status``: ``redirect`` (not the
leader; ``leader_id`` and ``leader_address`` say where to go, when known),
``unavailable`` (no leader yet, too busy, or leadership changed while the call
waited: retry, with the same ``seq`` for a write) or ``invalid`` (the call is
malformed and retrying will not help; ``detail`` says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from consensus.trusted import trusted

__all__ = [
    "GET_MANY_KEYS_MAX",
    "KV_ANSWER",
    "KV_CALL",
    "KV_WRITES",
    "KV_WRITTEN",
    "WRITES_PER_PAYLOAD_MAX",
    "KVAnswer",
    "KVCall",
    "KVItem",
    "KVLock",
    "KVWrites",
    "KVWritten",
    "PendingWrite",
    "ReadOp",
    "ok_answer",
    "write_call",
    "writes_payloads",
    "written_payloads",
]

KV_CALL = "kv.call"
KV_ANSWER = "kv.answer"
KV_WRITES = "kv.writes"
KV_WRITTEN = "kv.written"

_TEXT_CHARS_MAX = 4096
_COMMAND_BYTES_MAX = 16 * 1024 * 1024
_LIST_LIMIT_MAX = 100_000
_RESPONSE_BYTES_MAX = 64 * 1024
WRITES_PER_PAYLOAD_MAX = 4096
"""Most writes (or answers to writes) one ``KVWrites`` (``KVWritten``) carries."""

_Id = Annotated[int, Field(ge=0, le=2**63 - 1)]
_Text = Annotated[str, Field(max_length=_TEXT_CHARS_MAX)]

ReadOp = Literal["get", "get_many", "list", "lock"]
GET_MANY_KEYS_MAX = 1000
"""Most keys one ``get_many`` read names."""


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KVCall(_Payload):
    """One request of one client: a write (``command`` set) or a read (``read`` set)."""

    call_id: _Id
    client_id: str = Field("", max_length=_TEXT_CHARS_MAX)
    seq: _Id = 0
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

    call_id: _Id
    status: Literal["ok", "redirect", "unavailable", "invalid"]
    response: bytes | None = Field(None, max_length=_RESPONSE_BYTES_MAX)
    """A write's encoded ``consensus.kvstore.Response`` (which may be a refusal)."""
    item: KVItem | None = None
    items: list[KVItem] = Field(default_factory=list, max_length=_LIST_LIMIT_MAX)
    truncated: bool = False
    lock: KVLock | None = None
    leader_id: bytes | None = Field(None, max_length=64)
    leader_address: str | None = Field(None, max_length=_TEXT_CHARS_MAX)
    detail: str = Field("", max_length=_TEXT_CHARS_MAX)


class KVWrites(_Payload):
    """Writes in columns: write ``i`` is ``KVCall(call_id=call_ids[i],
    client_id=client_ids[i], seq=seqs[i], command=commands[i])``."""

    call_ids: list[_Id] = Field(max_length=WRITES_PER_PAYLOAD_MAX)
    client_ids: list[_Text] = Field(max_length=WRITES_PER_PAYLOAD_MAX)
    seqs: list[_Id] = Field(max_length=WRITES_PER_PAYLOAD_MAX)
    commands: list[Annotated[bytes, Field(max_length=_COMMAND_BYTES_MAX)]] = Field(
        max_length=WRITES_PER_PAYLOAD_MAX)

    @model_validator(mode="after")
    def _columns_line_up(self) -> KVWrites:
        lengths = {len(self.call_ids), len(self.client_ids), len(self.seqs), len(self.commands)}
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths: {len(self.call_ids)} call ids, "
                             f"{len(self.client_ids)} client ids, {len(self.seqs)} seqs, "
                             f"{len(self.commands)} commands")
        return self


class KVWritten(_Payload):
    """Answers ``ok`` in columns: ``responses[i]`` (an encoded ``Response``, which
    may be a refusal) answers the write ``call_ids[i]``."""

    call_ids: list[_Id] = Field(max_length=WRITES_PER_PAYLOAD_MAX)
    responses: list[Annotated[bytes, Field(max_length=_RESPONSE_BYTES_MAX)]] = Field(
        max_length=WRITES_PER_PAYLOAD_MAX)

    @model_validator(mode="after")
    def _columns_line_up(self) -> KVWritten:
        if len(self.call_ids) != len(self.responses):
            raise ValueError(f"columns of different lengths: {len(self.call_ids)} call ids, "
                             f"{len(self.responses)} responses")
        return self


def write_call(call_id: int, client_id: str, seq: int, command: bytes) -> KVCall:
    """A write's ``KVCall``, built without validation from values already checked."""
    return trusted(KVCall, {
        "call_id": call_id, "client_id": client_id, "seq": seq, "command": command,
        "read": None, "key": "", "limit": 1000, "start_after": None, "keys": [],
    })


def ok_answer(call_id: int, response: bytes) -> KVAnswer:
    """An applied write's ``KVAnswer``, built without validation from values already
    checked (our own, or a validated ``KVWritten``'s)."""
    return trusted(KVAnswer, {
        "call_id": call_id, "status": "ok", "response": response, "item": None,
        "items": [], "truncated": False, "lock": None, "leader_id": None,
        "leader_address": None, "detail": "",
    })


class PendingWrite(NamedTuple):
    """A write a client has yet to send: the fields its ``KVCall`` would have.

    Writes leave in columns (``writes_payloads``), so a client queues them as
    these and builds a ``KVCall`` (``as_call``) only for one that must go alone.
    """

    call_id: int
    client_id: str
    seq: int
    command: bytes

    def as_call(self) -> KVCall:
        """This write as a ``KVCall``."""
        return write_call(self.call_id, self.client_id, self.seq, self.command)


def writes_payloads(calls: Sequence[PendingWrite], bytes_max: int) -> list[KVWrites]:
    """``calls`` in columns, split so that no payload holds more than
    ``WRITES_PER_PAYLOAD_MAX`` writes or, unless a single write does, more than
    ``bytes_max`` bytes of commands."""
    payloads: list[KVWrites] = []
    for chunk in _chunks([len(call.command) for call in calls], bytes_max):
        part = calls[chunk.start : chunk.stop]
        payloads.append(trusted(KVWrites, {
            "call_ids": [call.call_id for call in part],
            "client_ids": [call.client_id for call in part],
            "seqs": [call.seq for call in part],
            "commands": [call.command for call in part],
        }))
    return payloads


def written_payloads(call_ids: list[int], responses: list[bytes],
                     bytes_max: int) -> list[KVWritten]:
    """Answers in columns, split as ``writes_payloads`` splits writes."""
    return [
        trusted(KVWritten, {"call_ids": call_ids[chunk.start : chunk.stop],
                            "responses": responses[chunk.start : chunk.stop]})
        for chunk in _chunks([len(response) for response in responses], bytes_max)
    ]


def _chunks(sizes: list[int], bytes_max: int) -> list[range]:
    if len(sizes) <= WRITES_PER_PAYLOAD_MAX and sum(sizes) <= bytes_max:
        return [range(len(sizes))]  # the usual case: one payload
    chunks: list[range] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= WRITES_PER_PAYLOAD_MAX
                              or total + size > bytes_max):
            chunks.append(range(start, index))
            start, total = index, 0
        total += size
    chunks.append(range(start, len(sizes)))
    return chunks
