"""Commands of the replicated KV store, the request that carries them, and their bytes.

How this works: a client builds a command (``Put``, ``CompareAndSet``,
``LockAcquire``, ...) and wraps it in a ``Request`` with its client id and the next
sequence number of that client. The Raft leader fills in ``now_ms`` when it
proposes the request (see below), and the request's bytes (``encode_request``)
become one log entry. Every replica decodes the committed entry
(``decode_request``) and applies it (``KVStore.apply``).

Why time is in the request: a lease expires at a point in time, and every replica
must expire it at the same point *in the log*, or one replica would still serve a
key that another has deleted. A replica's own clock cannot give that (clocks differ
and each replica applies an entry at a different moment), so the leader stamps each
proposal with its clock and replicas read time only from applied entries. The
leader also proposes ``Tick`` periodically so that leases expire without traffic.
The stamp should come from a clock comparable across nodes (wall-clock or HLC
milliseconds), because a new leader keeps stamping where the old one stopped. The
store never lets its time go backwards (see ``KVStore``), so a new leader whose
clock is behind only delays expiries until it catches up; one whose clock is ahead
expires leases early (as soon as its first entry applies), so voters' clocks must
be kept in step (NTP) to within a small fraction of the shortest TTL in use.

Every command validates its fields on construction and raises ``CommandError``
naming the bad one, so a malformed command cannot be built, proposed or decoded.
Limits that depend on ``KVSettings`` (key and value sizes, TTL bounds, counts) are
checked by the store when applying, since settings belong to the state machine.

Bytes: a command is the msgpack list ``[tag, field, ...]`` with fields in
declaration order; a request is ``[REQUEST_FORMAT, client_id, seq, now_ms,
command]``. The same value always encodes to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, TypeAlias

from consensus.kvstore.errors import CommandError
from consensus.kvstore.settings import INT_MAX
from consensus.kvstore.wire import (
    expect_bytes,
    expect_int,
    expect_list,
    expect_optional_int,
    expect_text,
    pack,
    show,
    unpack,
)

__all__ = [
    "REQUEST_FORMAT",
    "SIDE_WRITES_MAX",
    "Command",
    "CompareAndSet",
    "CompareAndSetWithWrites",
    "Delete",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseRevoke",
    "LockAcquire",
    "LockRelease",
    "Put",
    "Request",
    "Tick",
    "command_from_wire",
    "command_to_wire",
    "decode_command",
    "decode_request",
    "encode_command",
    "encode_request",
    "request_from_wire",
    "session_request",
]

REQUEST_FORMAT = 1
"""Version of the request byte layout; a request of another version is refused."""


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` under ``key``, creating it (version 1) or bumping its version.

    ``lease_id`` attaches the key to that lease (it is deleted when the lease ends);
    None detaches it from any lease it had. Answers ``version`` (the new one) and
    ``previous`` (the version before, 0 if the key was absent); refused with
    ``lease_not_found`` or ``too_large``.
    """

    key: str
    value: bytes
    lease_id: int | None = None

    def __post_init__(self) -> None:
        expect_text(self.key, "key")
        expect_bytes(self.value, "value")
        expect_optional_int(self.lease_id, "lease_id", 1)


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``key``. Answers ``previous`` (the version removed) or ``not_found``."""

    key: str

    def __post_init__(self) -> None:
        expect_text(self.key, "key")


@dataclass(frozen=True, slots=True)
class CompareAndSet:
    """Write (or, with ``value`` None, delete) ``key`` only if its version is ``expect_version``.

    ``expect_version`` 0 means "only if absent". On success it answers like ``Put``
    (a delete answers version 0; deleting an absent key with ``expect_version`` 0
    succeeds and changes nothing). On failure it answers ``cas_failed`` with
    ``version`` = the key's current version (0 if absent). ``lease_id`` works as in
    ``Put``.
    """

    key: str
    value: bytes | None
    expect_version: int
    lease_id: int | None = None

    def __post_init__(self) -> None:
        expect_text(self.key, "key")
        if self.value is not None:
            expect_bytes(self.value, "value")
        expect_int(self.expect_version, "expect_version")
        expect_optional_int(self.lease_id, "lease_id", 1)


SIDE_WRITES_MAX = 8
"""Most side writes one ``CompareAndSetWithWrites`` carries."""


@dataclass(frozen=True, slots=True)
class CompareAndSetWithWrites:
    """``CompareAndSet`` that, when it succeeds, also applies ``writes`` in the same step.

    Each write is ``(key, value)``: put ``value`` under ``key`` (no lease), or with
    ``value`` None delete ``key`` (an absent key is no error). Nothing at all is
    written when the compare fails or any write would be refused, so an index kept
    beside a record (e.g. the keys of the unfinished tasks) can never disagree with
    it. At most ``SIDE_WRITES_MAX`` writes, on keys distinct from ``key`` and from
    each other. Answers as ``CompareAndSet`` does, for ``key``.
    """

    key: str
    value: bytes | None
    expect_version: int
    lease_id: int | None
    writes: tuple[tuple[str, bytes | None], ...]

    def __post_init__(self) -> None:
        expect_text(self.key, "key")
        if self.value is not None:
            expect_bytes(self.value, "value")
        expect_int(self.expect_version, "expect_version")
        expect_optional_int(self.lease_id, "lease_id", 1)
        if type(self.writes) not in (tuple, list):
            raise CommandError(f"writes must be a list, got {show(self.writes)}")
        if len(self.writes) > SIDE_WRITES_MAX:
            raise CommandError(f"{len(self.writes)} writes, more than {SIDE_WRITES_MAX}")
        writes: list[tuple[str, bytes | None]] = []
        for number, write in enumerate(self.writes):
            key, value = expect_list(list(write) if type(write) is tuple else write,
                                     f"writes[{number}]", 2)
            expect_text(key, f"writes[{number}] key")
            if value is not None:
                expect_bytes(value, f"writes[{number}] value")
            writes.append((key, value))
        keys = [self.key, *(key for key, _ in writes)]
        if len(set(keys)) != len(keys):
            raise CommandError(f"writes name a key twice (or the compared key): {keys}")
        # Decoded from the wire the writes are lists: keep one canonical form.
        object.__setattr__(self, "writes", tuple(writes))


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """Create a lease that ends ``ttl_ms`` after the request's stamped time.

    Answers ``lease_id`` and ``deadline_ms``; refused with ``too_large`` beyond
    ``leases_max`` or ``lease_ttl_ms_max``.
    """

    ttl_ms: int

    def __post_init__(self) -> None:
        expect_int(self.ttl_ms, "ttl_ms", 1)


@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    """Move a lease's deadline to ``ttl_ms`` after the request's stamped time."""

    lease_id: int

    def __post_init__(self) -> None:
        expect_int(self.lease_id, "lease_id", 1)


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """End a lease now: its keys are deleted and its lock released (``deleted`` = keys)."""

    lease_id: int

    def __post_init__(self) -> None:
        expect_int(self.lease_id, "lease_id", 1)


@dataclass(frozen=True, slots=True)
class LockAcquire:
    """Take the lock ``name`` for ``owner``, backed by a new lease of ``ttl_ms``.

    A free lock (never taken, released, or whose lease expired) is granted with a
    fencing ``token`` (the Raft index of this entry, so every grant's token is larger
    than all earlier ones) and the ``lease_id`` to keep it alive with
    ``LeaseKeepAlive``. If ``owner`` already holds it, the lease is renewed and the
    same token answered. Otherwise ``lock_held`` with the ``holder``, its ``token``
    and ``deadline_ms``.
    """

    name: str
    owner: str
    ttl_ms: int

    def __post_init__(self) -> None:
        expect_text(self.name, "name")
        expect_text(self.owner, "owner")
        expect_int(self.ttl_ms, "ttl_ms", 1)


@dataclass(frozen=True, slots=True)
class LockRelease:
    """Release the lock ``name`` if ``owner`` holds it with fencing ``token``.

    Ends the lock's lease (deleting keys attached to it). ``not_found`` if the lock
    is not held; ``not_owner`` (with the current holder and token) if the owner or
    token differ, e.g. a release from a holder whose lease expired meanwhile.
    """

    name: str
    owner: str
    token: int

    def __post_init__(self) -> None:
        expect_text(self.name, "name")
        expect_text(self.owner, "owner")
        expect_int(self.token, "token", 1)


@dataclass(frozen=True, slots=True)
class Tick:
    """Does nothing but let the stamped time advance (and leases expire)."""


Command: TypeAlias = (
    Put
    | Delete
    | CompareAndSet
    | CompareAndSetWithWrites
    | LeaseGrant
    | LeaseKeepAlive
    | LeaseRevoke
    | LockAcquire
    | LockRelease
    | Tick
)
"""Any command the store applies."""

# Wire tags: fixed forever (they are in every log entry and snapshot ever written).
_CLASS_BY_TAG: dict[int, type[Command]] = {
    1: Put,
    2: Delete,
    3: CompareAndSet,
    4: LeaseGrant,
    5: LeaseKeepAlive,
    6: LeaseRevoke,
    7: LockAcquire,
    8: LockRelease,
    9: Tick,
    10: CompareAndSetWithWrites,
}
_TAG_BY_CLASS: dict[type[Command], int] = {cls: tag for tag, cls in _CLASS_BY_TAG.items()}
_FIELD_NAMES: dict[type[Command], tuple[str, ...]] = {
    cls: tuple(field.name for field in fields(cls)) for cls in _TAG_BY_CLASS
}


def _wire_former(cls: type[Command]) -> Callable[[Any], list[Any]]:
    # One C-level attribute getter per class: a generator of getattr calls costs
    # about three times as much, and the client and the leader do this per write.
    tag, names = _TAG_BY_CLASS[cls], _FIELD_NAMES[cls]
    if not names:
        return lambda _command: [tag]
    if len(names) == 1:
        get_one = attrgetter(names[0])
        return lambda command: [tag, get_one(command)]
    get_all = attrgetter(*names)
    return lambda command: [tag, *get_all(command)]


_TO_WIRE: dict[type[Command], Callable[[Any], list[Any]]] = {
    cls: _wire_former(cls) for cls in _TAG_BY_CLASS
}


@dataclass(frozen=True, slots=True)
class Request:
    """One command from one client, as proposed to Raft.

    ``client_id`` names the client's session and ``seq`` numbers its requests from 1
    upwards: the store applies each ``(client_id, seq)`` once and answers retries
    with the stored response. A client id must be unique to one client process for
    its whole life (e.g. node id plus a random suffix); a restarted client takes a
    new one. The empty client id means "no session": the request is applied every
    time it is committed (meant for the leader's ``Tick``), and ``seq`` must be 0.
    ``now_ms`` is stamped by the leader (see the module doc), not by the client.
    """

    client_id: str
    seq: int
    now_ms: int
    command: Command

    def __post_init__(self) -> None:
        expect_text(self.client_id, "client_id", empty_ok=True)
        if self.client_id:
            expect_int(self.seq, "seq", 1)
        else:
            expect_int(self.seq, "seq (of a request without client_id)", 0, 0)
        expect_int(self.now_ms, "now_ms")
        if type(self.command) not in _TAG_BY_CLASS:
            raise CommandError(f"command must be a KV command, got {show(self.command)}")


def command_to_wire(command: Command) -> list[Any]:
    """The msgpack-ready list form of ``command``."""
    return _TO_WIRE[type(command)](command)


def command_from_wire(obj: object) -> Command:
    """Build a command from its list form; ``CommandError`` for anything else."""
    items = expect_list(obj, "command")
    if not items:
        raise CommandError("command must not be an empty list")
    tag = items[0]
    cls = _CLASS_BY_TAG.get(tag) if type(tag) is int else None
    if cls is None:
        raise CommandError(f"unknown command tag {show(tag)}")
    values = items[1:]
    expected = len(_FIELD_NAMES[cls])
    if len(values) != expected:
        raise CommandError(f"{cls.__name__} takes {expected} fields, got {len(values)}")
    return cls(*values)


def encode_command(command: Command) -> bytes:
    """Canonical msgpack bytes of one command (without a request around it)."""
    return pack(command_to_wire(command))


def decode_command(data: bytes) -> Command:
    """The command in ``data`` (from ``encode_command``); ``CommandError`` for garbage."""
    items = unpack(data, "command bytes")
    return _plain_put(items) or command_from_wire(items)


def encode_request(request: Request) -> bytes:
    """Canonical msgpack bytes of a request: what the leader proposes as a log entry."""
    return pack(
        [
            REQUEST_FORMAT,
            request.client_id,
            request.seq,
            request.now_ms,
            command_to_wire(request.command),
        ]
    )


def decode_request(data: bytes) -> Request:
    """The request in ``data`` (from ``encode_request``); ``CommandError`` for garbage."""
    items = unpack(data, "request bytes")
    return _plain_put_request(items) or request_from_wire(items)


def request_from_wire(obj: object) -> Request:
    """Build a request from its list form, checking every field; ``CommandError``
    for anything else."""
    items = expect_list(obj, "request", 5)
    if items[0] != REQUEST_FORMAT or type(items[0]) is not int:
        raise CommandError(f"unknown request format {show(items[0])}, expected {REQUEST_FORMAT}")
    return Request(items[1], items[2], items[3], command_from_wire(items[4]))


# -- the common case, decoded at once ----------------------------------------------------
#
# Every replica decodes every entry, and nearly every entry is a plain put from a
# client session. Checked field by field (a function per check, then the
# dataclasses' own checks) that took 2.9 us of a follower's 14 per write. For
# those entries the checks below are the same ones, in one expression, and the
# objects are built without running them again. Anything they do not pass
# (another command, a non-ASCII text, a bad field) takes the checked path, which
# accepts or refuses it with its usual error.

_new_object = object.__new__
_set_field = object.__setattr__


def _plain_put(items: Any) -> Put | None:
    """The ``Put`` that ``command_from_wire(items)`` builds, if ``items`` is a put
    whose fields pass its checks at once (an ASCII key); otherwise None."""
    if not (type(items) is list and len(items) == 4 and type(items[0]) is int
            and items[0] == 1):
        return None
    _, key, value, lease_id = items
    if not (type(key) is str and key and key.isascii() and type(value) is bytes
            and (lease_id is None or (type(lease_id) is int and 1 <= lease_id <= INT_MAX))):
        return None
    put = _new_object(Put)
    _set_field(put, "key", key)
    _set_field(put, "value", value)
    _set_field(put, "lease_id", lease_id)
    return put


def _plain_put_request(items: Any) -> Request | None:
    """The ``Request`` that ``request_from_wire(items)`` builds, if ``items`` is a
    plain put from a client session (an ASCII client id); otherwise None."""
    if not (type(items) is list and len(items) == 5 and type(items[0]) is int
            and items[0] == REQUEST_FORMAT):
        return None
    put = _plain_put(items[4])
    return None if put is None else _session_request(items[1], items[2], items[3], put)


def session_request(client_id: str, seq: int, now_ms: int, command: Command) -> Request:
    """``Request(client_id, seq, now_ms, command)``, built at once when a session's
    fields pass the checks at once (the leader builds one per write it proposes)."""
    return (_session_request(client_id, seq, now_ms, command)
            or Request(client_id, seq, now_ms, command))


def _session_request(client_id: Any, seq: Any, now_ms: Any, command: Any) -> Request | None:
    if not (type(client_id) is str and client_id and client_id.isascii()
            and type(seq) is int and 1 <= seq <= INT_MAX
            and type(now_ms) is int and 0 <= now_ms <= INT_MAX
            and type(command) in _TAG_BY_CLASS):
        return None
    request = _new_object(Request)
    _set_field(request, "client_id", client_id)
    _set_field(request, "seq", seq)
    _set_field(request, "now_ms", now_ms)
    _set_field(request, "command", command)
    return request
