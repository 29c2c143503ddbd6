"""What applying a request answers: ``Response`` and its ``ErrorCode``, and their bytes.

How this works: applying a request always yields a ``Response``, never an exception,
because the leader sends it back to the client and a session keeps it to answer a
retry identically. A response is a flat value: ``error`` None means success, and the
other fields are filled when the command has something to say (each command's
docstring says which). It holds no values of keys: responses are stored in every
client's dedup window, and values there would multiply memory by
``sessions_max * session_window``. A client wanting the old value reads it and then
writes with ``CompareAndSet``. ``detail`` is a human-readable explanation built only
from replicated data, so it is the same on every replica.

Bytes: the msgpack list of the fields in declaration order, the error by its
string value (``encode_response``, ``decode_response``).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from consensus.kvstore.errors import CommandError
from consensus.kvstore.settings import INT_MAX
from consensus.kvstore.wire import (
    expect_int,
    expect_list,
    expect_optional_int,
    expect_optional_text,
    expect_text,
    pack,
    show,
    unpack,
)

__all__ = [
    "ErrorCode",
    "Response",
    "decode_response",
    "encode_response",
    "response_from_wire",
    "response_to_wire",
]


class ErrorCode(enum.Enum):
    """Why a request was refused. Its value is the stable wire and JSON spelling."""

    CAS_FAILED = "cas_failed"
    """A compare-and-set found another version; ``version`` is the current one (0 if
    the key is absent)."""
    NOT_FOUND = "not_found"
    """The key to delete, or the lock to release, does not exist."""
    LEASE_NOT_FOUND = "lease_not_found"
    """The lease named does not exist (never granted, revoked or expired)."""
    LOCK_HELD = "lock_held"
    """Another owner holds the lock: ``holder``, its ``token``, ``lease_id`` and
    ``deadline_ms``."""
    NOT_OWNER = "not_owner"
    """A release named an owner or token that does not hold the lock now (e.g. its
    lease expired and another owner took it); ``holder`` and ``token`` say who does."""
    STALE_REQUEST = "stale_request"
    """``seq`` is older than every response kept for this client, so whether it was
    applied cannot be known; it is not applied now."""
    SESSION_EXPIRED = "session_expired"
    """No session for this client id and ``seq`` is not 1: its session was dropped
    (least recently used, beyond ``sessions_max``), so earlier requests' fate cannot
    be known. Nothing is applied; the client must start over with a new client id."""
    TOO_LARGE = "too_large"
    """A size or count limit of ``KVSettings`` refused the request (``detail`` names
    it)."""
    INVALID_REQUEST = "invalid_request"
    """The log entry is not a well-formed request (``detail`` says why)."""


class Response(NamedTuple):
    """The result of applying one request at Raft ``index`` (immutable).

    A named tuple rather than a frozen dataclass: every replica builds one per
    write it applies, and the client one per answer it reads; a frozen dataclass
    of ten fields costs four times as much to construct.
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    """Log index at which the request was applied (for a retry: the first time).
    After a successful write it is the key's ``mod_index``."""
    error: ErrorCode | None = None
    """None on success."""
    version: int = 0
    """The key's version after a write; the current version after ``cas_failed``."""
    previous: int = 0
    """The key's version before a write or delete (0 = it was absent)."""
    lease_id: int | None = None
    """The lease granted, renewed or revoked; a lock's lease."""
    deadline_ms: int | None = None
    """When that lease ends, in the leader-stamped time of requests."""
    token: int | None = None
    """A lock's fencing token (granted, or the current holder's)."""
    holder: str | None = None
    """A lock's owner (the caller on success, the other one on refusal)."""
    deleted: int = 0
    """Keys deleted together with a revoked or released lease."""
    detail: str = ""
    """Why a request was refused, for humans."""

    @property
    def ok(self) -> bool:
        """True when the request succeeded."""
        return self.error is None


_ERROR_BY_VALUE = {code.value: code for code in ErrorCode}
_new_tuple = tuple.__new__


def response_to_wire(response: Response) -> list[Any]:
    """The msgpack-ready list form of ``response``."""
    r = response
    error = None if r.error is None else r.error.value
    return [
        r.index,
        error,
        r.version,
        r.previous,
        r.lease_id,
        r.deadline_ms,
        r.token,
        r.holder,
        r.deleted,
        r.detail,
    ]


def response_from_wire(obj: object) -> Response:
    """Build a response from its list form; ``CommandError`` for anything else."""
    items = expect_list(obj, "response", 10)
    error_value = items[1]
    error = None
    if error_value is not None:
        error = _ERROR_BY_VALUE.get(error_value) if type(error_value) is str else None
        if error is None:
            raise CommandError(f"unknown error code {show(error_value)}")
    index, _, version, previous, lease_id, deadline_ms, token, holder, deleted, detail = items
    # A client reads one per write, and nearly every one is a plain write's answer:
    # checked in one expression here, each field by name below only if that fails.
    if (
        type(index) is int and 0 <= index <= INT_MAX
        and type(version) is int and 0 <= version <= INT_MAX
        and type(previous) is int and 0 <= previous <= INT_MAX
        and lease_id is None and deadline_ms is None and token is None and holder is None
        and deleted == 0 and type(deleted) is int and detail == "" and type(detail) is str
    ):
        # tuple.__new__ directly: Response() runs a Python-level __new__ (a frame).
        return _new_tuple(Response, (index, error, version, previous, None, None, None,
                                     None, 0, ""))
    return Response(
        index=expect_int(items[0], "index"),
        error=error,
        version=expect_int(items[2], "version"),
        previous=expect_int(items[3], "previous"),
        lease_id=expect_optional_int(items[4], "lease_id", 1),
        deadline_ms=expect_optional_int(items[5], "deadline_ms"),
        token=expect_optional_int(items[6], "token", 1),
        holder=expect_optional_text(items[7], "holder"),
        deleted=expect_int(items[8], "deleted"),
        detail=expect_text(items[9], "detail", empty_ok=True),
    )


def encode_response(response: Response) -> bytes:
    """Canonical msgpack bytes of a response (for the leader's reply to a client)."""
    if response.error is None:  # its fields in order are its list form: packed as is
        return pack(response)
    return pack(response_to_wire(response))


def decode_response(data: bytes) -> Response:
    """The response in ``data``; ``CommandError`` for garbage."""
    return response_from_wire(unpack(data, "response bytes"))
