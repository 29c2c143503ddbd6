"""Commands of the replicated KV store, the request that carries them, and their bytes.

How this works: a client builds a command (``Put``, ``CompareAndSet``,
``LockAcquire``, ...) and wraps it in a ``Request`` with its client id and the next
sequence number of that client. The Raft leader fills in ``now_ms`` when it
proposes the request (see below), and the request's bytes (``encode_request``)
become one log entry. Every replica decodes the committed entry
(``decode_request``) and applies it (``KVStore.apply``). Writes that reach the
leader together may share one entry, a batch (``encode_entry``, ``decode_entry``):
its requests are applied in order at the entry's index, so a batch costs Raft,
the log and the network one entry instead of one per write.

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
command]``; a batch is ``[BATCH_FORMAT, [request, request, ...]]`` with at least
two requests (an entry of one request is that request). The same value always
encodes to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    "BATCH_FORMAT",
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
    "decode_entry",
    "decode_request",
    "encode_command",
    "encode_entry",
    "encode_plain_put",
    "encode_request",
    "entry_from_items",
    "entry_items",
    "item_may_share_entry",
    "item_request",
    "may_share_entry",
    "plain_put_fields",
    "request_from_wire",
    "request_item",
]

REQUEST_FORMAT = 1
"""Version of the request byte layout; a request of another version is refused."""

BATCH_FORMAT = 2
"""Marks an entry of several requests (see the module doc)."""


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
_PUT_TAG = _TAG_BY_CLASS[Put]
_SHARE_ENTRY: frozenset[type[Command]] = frozenset(
    {Put, Delete, CompareAndSet, CompareAndSetWithWrites})
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


def encode_plain_put(key: str, value: bytes) -> bytes:
    """``encode_command(Put(key, value))`` for a key and value the caller has checked
    as ``Put`` would (a non-empty ASCII str, bytes): without building the ``Put``."""
    return pack([_PUT_TAG, key, value, None])


def decode_command(data: bytes) -> Command:
    """The command in ``data`` (from ``encode_command``); ``CommandError`` for garbage."""
    items = unpack(data, "command bytes")
    return _plain_put(items) or command_from_wire(items)


def encode_request(request: Request) -> bytes:
    """Canonical msgpack bytes of a request: what the leader proposes as a log entry."""
    return pack(_request_to_wire(request))


def _request_to_wire(request: Request) -> list[Any]:
    return [REQUEST_FORMAT, request.client_id, request.seq, request.now_ms,
            command_to_wire(request.command)]


def decode_request(data: bytes) -> Request:
    """The request in ``data`` (from ``encode_request``); ``CommandError`` for garbage."""
    items = unpack(data, "request bytes")
    return _plain_put_request(items) or request_from_wire(items)


def may_share_entry(command: Command) -> bool:
    """Whether ``command`` may be one of a batch's requests: key writes may; a lease
    grant or a lock acquire may not, since its lease id or fencing token is its
    entry's index and must be unique (the rest stay alone for simplicity)."""
    return type(command) in _SHARE_ENTRY


def encode_entry(requests: Sequence[Request]) -> bytes:
    """Canonical bytes of a log entry holding ``requests`` (at least one), applied in
    order: one request's own bytes, or a batch of them (``ValueError`` if a
    command in it may not share an entry, see ``may_share_entry``)."""
    if len(requests) > 1:
        for request in requests:
            if type(request.command) not in _SHARE_ENTRY:
                raise ValueError(f"{type(request.command).__name__} may not share an entry")
    return entry_from_items([_request_to_wire(request) for request in requests])


def request_item(client_id: str, seq: int, now_ms: int, command: bytes) -> list[Any]:
    """The request ``(client_id, seq, now_ms, the command in command)`` in the list
    form an entry holds (``entry_from_items``), canonical as ``encode_request``
    makes it; ``CommandError`` for anything ``Request`` or ``decode_command`` refuses.
    What a leader builds per write, without the command and request objects."""
    items = unpack(command, "command bytes")
    if _plain_put_ok(items) and _session_fields_ok(client_id, seq, now_ms):
        return [REQUEST_FORMAT, client_id, seq, now_ms, items]
    return _request_to_wire(Request(client_id, seq, now_ms, command_from_wire(items)))


def item_may_share_entry(item: list[Any]) -> bool:
    """``may_share_entry`` for a ``request_item``."""
    return _CLASS_BY_TAG[item[4][0]] in _SHARE_ENTRY


def entry_from_items(items: Sequence[list[Any]]) -> bytes:
    """``encode_entry`` for requests in the list form of ``request_item``, which the
    caller has checked with ``item_may_share_entry`` when there are several (a
    batch holding another is refused for that request by every replica)."""
    if len(items) == 1:
        return pack(items[0])
    if not items:
        raise ValueError("an entry holds at least one request")
    return pack([BATCH_FORMAT, list(items)])


def decode_entry(data: bytes) -> list[Request | CommandError]:
    """The requests of an entry (from ``encode_entry``), in order; a batch's item
    that is no request is its ``CommandError`` in its place (the others still
    apply). ``CommandError`` if ``data`` is neither a request nor a batch."""
    items, batch = entry_items(data)
    if not batch:
        return [item_request(items[0], in_batch=False)]
    requests: list[Request | CommandError] = []
    for item in items:
        try:
            requests.append(item_request(item, in_batch=True))
        except CommandError as exc:
            requests.append(exc)
    return requests


def entry_items(data: bytes) -> tuple[list[Any], bool]:
    """An entry's requests in list form, undecoded (for ``item_request``), and
    whether it is a batch; ``CommandError`` if it cannot be either."""
    items = unpack(data, "entry bytes")
    if not (type(items) is list and len(items) == 2 and type(items[0]) is int
            and items[0] == BATCH_FORMAT):
        return [items], False
    batch = items[1]
    if type(batch) is not list or len(batch) < 2:
        raise CommandError(f"a batch holds a list of at least two requests, got {show(batch)}")
    return batch, True


def item_request(item: object, *, in_batch: bool) -> Request:
    """The request an entry item stands for (see ``entry_items``); ``CommandError``
    for anything else, or for a command that may not share an entry in a batch."""
    request = _plain_put_request(item) or request_from_wire(item)
    if in_batch and type(request.command) not in _SHARE_ENTRY:
        raise CommandError(f"{type(request.command).__name__} may not share an entry")
    return request


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


def _plain_put_ok(items: Any) -> bool:
    """Whether ``items`` is a put whose fields pass its checks at once (an ASCII key)."""
    if not (type(items) is list and len(items) == 4 and type(items[0]) is int
            and items[0] == 1):
        return False
    _, key, value, lease_id = items
    return (type(key) is str and key != "" and key.isascii() and type(value) is bytes
            and (lease_id is None or (type(lease_id) is int and 1 <= lease_id <= INT_MAX)))


def _plain_put(items: Any) -> Put | None:
    """The ``Put`` that ``command_from_wire(items)`` builds, if ``_plain_put_ok``;
    otherwise None."""
    if not _plain_put_ok(items):
        return None
    put = _new_object(Put)
    _set_field(put, "key", items[1])
    _set_field(put, "value", items[2])
    _set_field(put, "lease_id", items[3])
    return put


def _plain_put_request(items: Any) -> Request | None:
    """The ``Request`` that ``request_from_wire(items)`` builds, if ``items`` is a
    plain put from a client session (an ASCII client id); otherwise None."""
    if not (type(items) is list and len(items) == 5 and type(items[0]) is int
            and items[0] == REQUEST_FORMAT):
        return None
    put = _plain_put(items[4])
    return None if put is None else _session_request(items[1], items[2], items[3], put)


def _session_fields_ok(client_id: Any, seq: Any, now_ms: Any) -> bool:
    """Whether a request's fields pass ``Request``'s checks at once, for a client
    session (an ASCII client id)."""
    return (type(client_id) is str and client_id != "" and client_id.isascii()
            and type(seq) is int and 1 <= seq <= INT_MAX
            and type(now_ms) is int and 0 <= now_ms <= INT_MAX)


def plain_put_fields(item: Any) -> tuple[str, int, int, str, bytes] | None:
    """``(client_id, seq, now_ms, key, value)`` of an entry item that is a plain put
    without a lease from a client session, every field passing its checks at once
    (ASCII texts); otherwise None. What ``item_request`` would give, without
    building it: replicas apply a batch's puts from these fields."""
    if not (type(item) is list and len(item) == 5 and type(item[0]) is int
            and item[0] == REQUEST_FORMAT):
        return None
    _, client_id, seq, now_ms, command = item
    if not (_plain_put_ok(command) and command[3] is None
            and _session_fields_ok(client_id, seq, now_ms)):
        return None
    return client_id, seq, now_ms, command[1], command[2]


def _session_request(client_id: Any, seq: Any, now_ms: Any, command: Any) -> Request | None:
    if not (_session_fields_ok(client_id, seq, now_ms) and type(command) in _TAG_BY_CLASS):
        return None
    request = _new_object(Request)
    _set_field(request, "client_id", client_id)
    _set_field(request, "seq", seq)
    _set_field(request, "now_ms", now_ms)
    _set_field(request, "command", command)
    return request
