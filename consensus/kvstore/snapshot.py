"""Snapshot bytes of the KV store: canonical on the way out, checked on the way in.

How this works: a snapshot is the msgpack list ``[SNAPSHOT_FORMAT, settings,
applied_index, now_ms, items, leases, locks, sessions]``. Items are sorted by key,
leases by id, locks by name, each session's responses by seq, and sessions in
least-recently-used order (that order is state: it decides which session is dropped
next). Settings are a map sorted by field name. With every collection in a fixed
order, equal states give equal bytes, so replicas can compare snapshots byte for
byte and a restored store snapshots to the very bytes it came from.

What leases hold (keys, lock) is not written twice: it is rebuilt from the items'
and locks' lease fields. Decoding checks types and cross references (every lease
referenced exists, at most one lock per lease, indexes not beyond
``applied_index``, keys unique and sorted) and raises ``SnapshotError`` naming the
first problem, so a store is never built from an inconsistent state.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

from consensus.kvstore.errors import CommandError, SnapshotError
from consensus.kvstore.responses import Response, response_from_wire, response_to_wire
from consensus.kvstore.settings import KVSettings
from consensus.kvstore.views import Item
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
    "SNAPSHOT_FORMAT",
    "SnapshotLease",
    "SnapshotLock",
    "SnapshotState",
    "decode_snapshot",
    "encode_snapshot",
]

SNAPSHOT_FORMAT = 1
"""Version of the snapshot byte layout; another version is refused."""


class SnapshotLease(NamedTuple):
    """A lease as a snapshot stores it (what it holds is derived)."""

    lease_id: int
    ttl_ms: int
    deadline_ms: int


class SnapshotLock(NamedTuple):
    """A held lock as a snapshot stores it."""

    name: str
    owner: str
    token: int
    lease_id: int


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """Everything a KV store is, in canonical order (see the module doc)."""

    settings: KVSettings
    applied_index: int
    now_ms: int
    items: tuple[Item, ...]
    leases: tuple[SnapshotLease, ...]
    locks: tuple[SnapshotLock, ...]
    sessions: tuple[tuple[str, tuple[tuple[int, Response], ...]], ...]


def encode_snapshot(state: SnapshotState) -> bytes:
    """Canonical bytes of ``state``."""
    settings = {f.name: getattr(state.settings, f.name) for f in fields(KVSettings)}
    return pack(
        [
            SNAPSHOT_FORMAT,
            dict(sorted(settings.items())),
            state.applied_index,
            state.now_ms,
            [
                [i.key, i.value, i.version, i.create_index, i.mod_index, i.lease]
                for i in state.items
            ],
            [list(lease) for lease in state.leases],
            [list(lock) for lock in state.locks],
            [
                [client_id, [[seq, response_to_wire(r)] for seq, r in responses]]
                for client_id, responses in state.sessions
            ],
        ]
    )


def decode_snapshot(data: bytes) -> SnapshotState:
    """The state in ``data``; ``SnapshotError`` if it is malformed or inconsistent."""
    try:
        return _decode(data)
    except CommandError as exc:
        raise SnapshotError(f"bad snapshot: {exc}") from None


def _decode(data: bytes) -> SnapshotState:
    top = expect_list(unpack(data, "snapshot bytes"), "snapshot", 8)
    if type(top[0]) is not int or top[0] != SNAPSHOT_FORMAT:
        raise CommandError(f"unknown snapshot format {show(top[0])}, expected {SNAPSHOT_FORMAT}")
    settings = _settings(top[1])
    applied = expect_int(top[2], "applied_index")
    now_ms = expect_int(top[3], "now_ms")
    leases = _leases(top[5], applied)
    locks = _locks(top[6], applied, {lease.lease_id for lease in leases})
    items = _items(top[4], applied, {lease.lease_id for lease in leases})
    sessions = _sessions(top[7])
    return SnapshotState(settings, applied, now_ms, items, leases, locks, sessions)


def _settings(obj: object) -> KVSettings:
    if type(obj) is not dict:
        raise CommandError(f"settings must be a map, got {show(obj)}")
    try:
        return KVSettings(**obj)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"settings: {exc}") from None


def _leases(obj: object, applied: int) -> tuple[SnapshotLease, ...]:
    leases: list[SnapshotLease] = []
    for raw in expect_list(obj, "leases"):
        fields_ = expect_list(raw, "lease", 3)
        lease = SnapshotLease(
            expect_int(fields_[0], "lease_id", 1, applied),
            expect_int(fields_[1], "ttl_ms", 1),
            expect_int(fields_[2], "deadline_ms"),
        )
        if leases and lease.lease_id <= leases[-1].lease_id:
            raise CommandError(f"lease ids not increasing at {lease.lease_id}")
        leases.append(lease)
    return tuple(leases)


def _locks(obj: object, applied: int, lease_ids: set[int]) -> tuple[SnapshotLock, ...]:
    locks: list[SnapshotLock] = []
    backing: set[int] = set()
    for raw in expect_list(obj, "locks"):
        fields_ = expect_list(raw, "lock", 4)
        lock = SnapshotLock(
            expect_text(fields_[0], "lock name"),
            expect_text(fields_[1], "lock owner"),
            expect_int(fields_[2], "token", 1, applied),
            expect_int(fields_[3], "lock lease_id", 1),
        )
        if locks and lock.name <= locks[-1].name:
            raise CommandError(f"lock names not increasing at {show(lock.name)}")
        if lock.lease_id not in lease_ids or lock.lease_id in backing:
            raise CommandError(f"lock {show(lock.name)} has a missing or shared lease")
        backing.add(lock.lease_id)
        locks.append(lock)
    return tuple(locks)


def _items(obj: object, applied: int, lease_ids: set[int]) -> tuple[Item, ...]:
    items: list[Item] = []
    for raw in expect_list(obj, "items"):
        fields_ = expect_list(raw, "item", 6)
        key = expect_text(fields_[0], "key")
        create_index = expect_int(fields_[3], "create_index", 1, applied)
        item = Item(
            key,
            expect_bytes(fields_[1], "value"),
            expect_int(fields_[2], "version", 1),
            create_index,
            expect_int(fields_[4], "mod_index", create_index, applied),
            expect_optional_int(fields_[5], "lease", 1),
        )
        if items and key <= items[-1].key:
            raise CommandError(f"keys not increasing at {show(key)}")
        if item.lease is not None and item.lease not in lease_ids:
            raise CommandError(f"key {show(key)} names missing lease {item.lease}")
        items.append(item)
    return tuple(items)


def _sessions(obj: object) -> tuple[tuple[str, tuple[tuple[int, Response], ...]], ...]:
    sessions: list[tuple[str, tuple[tuple[int, Response], ...]]] = []
    seen: set[str] = set()
    for raw in expect_list(obj, "sessions"):
        client_raw, responses_raw = expect_list(raw, "session", 2)
        client_id = expect_text(client_raw, "client_id")
        if client_id in seen:
            raise CommandError(f"client {show(client_id)} has two sessions")
        seen.add(client_id)
        responses: list[tuple[int, Response]] = []
        for pair in expect_list(responses_raw, "session responses"):
            seq_raw, response_raw = expect_list(pair, "session response", 2)
            seq = expect_int(seq_raw, "seq", 1)
            if responses and seq <= responses[-1][0]:
                raise CommandError(f"seqs of client {show(client_id)} not increasing")
            responses.append((seq, response_from_wire(response_raw)))
        if not responses:
            raise CommandError(f"session of client {show(client_id)} is empty")
        sessions.append((client_id, tuple(responses)))
    return tuple(sessions)
