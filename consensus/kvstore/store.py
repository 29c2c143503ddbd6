"""The replicated KV state machine: committed log entries in, responses out.

How this works
--------------
Raft hands every replica the same committed entries in the same order; each replica
calls ``KVStore.apply_entry(index, entry_bytes)`` for each. An entry holds one
request, or a batch of key writes that are applied in order at the entry's index
as if each had an entry of its own (they share the index: a response's ``index``
and an item's ``create_index``/``mod_index`` name the entry). Applying is a pure
function of the store's state and its arguments (no clock, no randomness, no
hash-order iteration that could leak into state), so every replica reaches the same
state and returns the same responses; snapshots of equal states are equal bytes.

One ``apply``, in order:

1. Decode the request. Garbage is answered ``invalid_request`` (the entry is still
   consumed: ``applied_index`` moves on), never raised, since every replica must
   get past it the same way.
2. Advance the store's time to the request's leader-stamped ``now_ms`` (never
   backwards: a new leader whose clock is behind cannot revive expired leases) and
   end every lease whose deadline is at or before it, in ``(deadline, id)`` order,
   deleting its keys and releasing its lock. Time is in the entries because
   replicas must agree on when a lease ends relative to the writes around it; each
   replica's local clock would put that moment at different places in the log.
3. Dedup: a ``(client_id, seq)`` applied before is answered with its stored
   response and changes nothing (``sessions``); one too old to tell is refused.
4. Execute the command; the response is stored in the client's session, refusals
   included, so a retried refusal is the same refusal.

Versions and indexes: see ``views``. In short ``version`` counts writes of the key's
current life (1 at creation, a deleted and re-created key starts at 1 again),
``create_index``/``mod_index`` are log indexes and only grow. Compare-and-set compares
``version``, with 0 meaning absent.

Leases and locks: a lease's id is the log index of its grant, unique for the
cluster's life without a counter. A lock is a lease-backed record; its fencing
token is the log index of the acquire, so any later grant of any lock has a larger
token. A lock ends when released, or when its lease is revoked or expires.

Limits (``KVSettings``) are checked before anything changes; a write beyond one is
answered ``too_large`` and stored like any other response.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import assert_never

from consensus.kvstore.commands import (
    Command,
    CompareAndSet,
    CompareAndSetWithWrites,
    Delete,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Put,
    Request,
    Tick,
    entry_items,
    item_request,
    plain_put_fields,
)
from consensus.kvstore.errors import CommandError
from consensus.kvstore.leases import LeaseRecord, LeaseTable
from consensus.kvstore.responses import ErrorCode, Response
from consensus.kvstore.sessions import Sessions
from consensus.kvstore.settings import INT_MAX, KVSettings
from consensus.kvstore.snapshot import (
    SnapshotLease,
    SnapshotLock,
    SnapshotState,
    decode_snapshot,
    encode_snapshot,
)
from consensus.kvstore.views import Item, Lease, Lock
from consensus.kvstore.wire import utf8_length

__all__ = ["RANGE_LIMIT_DEFAULT", "KVStore"]

RANGE_LIMIT_DEFAULT = 1000
"""Items ``KVStore.range`` returns when no limit is given."""

_DETAIL_CHARS_MAX = 200
_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class _HeldLock:
    owner: str
    token: int
    lease_id: int


class KVStore:
    """Keys with versions, leases and fencing locks, changed only by ``apply``."""

    def __init__(self, settings: KVSettings | None = None) -> None:
        self._settings = settings if settings is not None else KVSettings()
        self._applied_index = 0
        self._now_ms = 0
        self._items: dict[str, Item] = {}
        self._keys: list[str] = []  # sorted, for range scans by prefix
        self._leases = LeaseTable()
        self._locks: dict[str, _HeldLock] = {}
        self._sessions = Sessions(self._settings.sessions_max, self._settings.session_window)

    # ---------------------------------------------------------------- properties

    @property
    def settings(self) -> KVSettings:
        """The limits this store applies with (equal on every replica)."""
        return self._settings

    @property
    def applied_index(self) -> int:
        """Index of the last entry applied (0 before the first)."""
        return self._applied_index

    @property
    def now_ms(self) -> int:
        """The store's time: the largest ``now_ms`` stamped on an applied request."""
        return self._now_ms

    def __len__(self) -> int:
        """Number of keys."""
        return len(self._items)

    @property
    def lease_count(self) -> int:
        """Number of live leases (locks' leases included)."""
        return len(self._leases)

    # --------------------------------------------------------------------- reads

    def get(self, key: str) -> Item | None:
        """The item under ``key`` as of ``applied_index``, or None."""
        return self._items.get(key)

    def range(
        self, prefix: str = "", limit: int = RANGE_LIMIT_DEFAULT, start_after: str | None = None
    ) -> list[Item]:
        """Up to ``limit`` items whose keys start with ``prefix``, in key order.

        Key order is code point order, which is also the order of the keys' UTF-8
        bytes. To page, pass the last key of one page as ``start_after`` of the next.
        """
        if limit < 1:
            raise ValueError(f"limit ({limit}) must be at least 1")
        keys = self._keys
        if start_after is not None and start_after >= prefix:
            position = bisect.bisect_right(keys, start_after)
        else:
            position = bisect.bisect_left(keys, prefix)
        found: list[Item] = []
        while position < len(keys) and len(found) < limit:
            key = keys[position]
            if not key.startswith(prefix):
                break
            found.append(self._items[key])
            position += 1
        return found

    def lease(self, lease_id: int) -> Lease | None:
        """The live lease ``lease_id``, or None."""
        record = self._leases.get(lease_id)
        if record is None:
            return None
        return Lease(
            record.lease_id,
            record.ttl_ms,
            record.deadline_ms,
            tuple(sorted(record.keys)),
            record.lock,
        )

    def lock(self, name: str) -> Lock | None:
        """The lock ``name`` if it is held, or None."""
        held = self._locks.get(name)
        if held is None:
            return None
        record = self._leases.get(held.lease_id)
        assert record is not None, (name, held)
        return Lock(name, held.owner, held.token, held.lease_id, record.deadline_ms)

    # --------------------------------------------------------------------- apply

    def apply(self, index: int, request_bytes: bytes) -> Response:
        """Apply the committed entry at ``index`` and return its response (a batch's
        last; ``apply_entry`` gives each of a batch's requests its own).

        ``index`` must exceed ``applied_index`` (entries are applied once, in order).
        Never raises for the entry's content; see the module doc for the steps.
        """
        return self.apply_entry(index, request_bytes)[-1]

    def apply_entry(self, index: int, entry_bytes: bytes) -> list[Response]:
        """Apply the committed entry at ``index``: the response of each of its
        requests, in order (one, or a batch's; see ``encode_entry``)."""
        assert index > self._applied_index, (index, self._applied_index)
        try:
            items, batch = entry_items(entry_bytes)
            request = None if batch else item_request(items[0], in_batch=False)
        except CommandError as exc:
            self._applied_index = index
            return [Response(index, ErrorCode.INVALID_REQUEST, detail=_clip(str(exc)))]
        self._applied_index = index
        if request is not None:
            return [self._apply_one(index, request)]
        apply_item = self._apply_item
        return [apply_item(index, item) for item in items]

    def _apply_item(self, index: int, item: object) -> Response:
        """Apply one request of a batch (in list form)."""
        fields = plain_put_fields(item)
        if fields is not None:
            # Nearly every item: a put from a client session, applied from its
            # fields when it passes every check at once, as _apply_one would
            # apply it (a differential test holds the two to the same outcome).
            client_id, seq, now_ms, key, value = fields
            settings, items = self._settings, self._items
            if (len(client_id) <= settings.key_bytes_max and len(key) <= settings.key_bytes_max
                    and len(value) <= settings.value_bytes_max
                    and (key in items or len(items) < settings.keys_max)):
                if now_ms > self._now_ms:
                    self._advance_clock(now_ms)
                sessions = self._sessions
                refusal = sessions.check(client_id, seq, index)
                if refusal is not None:
                    return refusal
                response = self._write(index, key, value, None)
                sessions.record(client_id, seq, response)
                return response
        try:
            request = item_request(item, in_batch=True)
        except CommandError as exc:
            return Response(index, ErrorCode.INVALID_REQUEST, detail=_clip(str(exc)))
        return self._apply_one(index, request)

    def apply_request(self, index: int, request: Request) -> Response:
        """``apply`` for a request already decoded: the bytes of the entry at ``index``
        must be ``encode_request(request)``."""
        assert index > self._applied_index, (index, self._applied_index)
        self._applied_index = index
        return self._apply_one(index, request)

    def _apply_one(self, index: int, request: Request) -> Response:
        self._advance_clock(request.now_ms)
        client_id = request.client_id
        if client_id:
            refusal = self._check_identifier("client_id", client_id, index)
            if refusal is None:
                refusal = self._sessions.check(client_id, request.seq, index)
            if refusal is not None:
                return refusal
        response = self._execute(index, request.command)
        if client_id:
            self._sessions.record(client_id, request.seq, response)
        return response

    def _advance_clock(self, now_ms: int) -> None:
        if now_ms > self._now_ms:
            self._now_ms = now_ms
        while (record := self._leases.pop_expired(self._now_ms)) is not None:
            self._end_lease(record)

    def _execute(self, index: int, command: Command) -> Response:
        match command:
            case Put():
                return self._put(index, command)
            case Delete():
                return self._delete(index, command)
            case CompareAndSet():
                return self._compare_and_set(index, command)
            case CompareAndSetWithWrites():
                return self._compare_and_set_with_writes(index, command)
            case LeaseGrant():
                return self._lease_grant(index, command)
            case LeaseKeepAlive():
                return self._lease_keep_alive(index, command)
            case LeaseRevoke():
                return self._lease_revoke(index, command)
            case LockAcquire():
                return self._lock_acquire(index, command)
            case LockRelease():
                return self._lock_release(index, command)
            case Tick():
                return Response(index)
            case _:
                assert_never(command)

    # ---------------------------------------------------------------------- keys

    def _put(self, index: int, command: Put) -> Response:
        key, value, lease_id = command.key, command.value, command.lease_id
        settings, items = self._settings, self._items
        # The checks below, at once, for the put that passes them all (nearly every
        # one): replicas apply every write, and a call per check cost a tenth of it.
        if (key.isascii() and len(key) <= settings.key_bytes_max
                and len(value) <= settings.value_bytes_max and lease_id is None
                and (key in items or len(items) < settings.keys_max)):
            return self._write(index, key, value, None)
        refusal = self._check_write(index, command.key, command.value, command.lease_id)
        if refusal is None:
            refusal = self._check_room(index, command.key)
        if refusal is not None:
            return refusal
        return self._write(index, command.key, command.value, command.lease_id)

    def _delete(self, index: int, command: Delete) -> Response:
        item = self._items.get(command.key)
        if item is None:
            return Response(index, ErrorCode.NOT_FOUND, detail="no such key")
        self._remove(command.key)
        return Response(index, previous=item.version)

    def _compare_and_set(self, index: int, command: CompareAndSet) -> Response:
        key, value = command.key, command.value
        if value is not None:
            refusal = self._check_write(index, key, value, command.lease_id)
            if refusal is not None:
                return refusal
        item = self._items.get(key)
        current = 0 if item is None else item.version
        if current != command.expect_version:
            return Response(
                index,
                ErrorCode.CAS_FAILED,
                version=current,
                previous=current,
                detail=f"version is {current}, expected {command.expect_version}",
            )
        if value is None:
            if item is not None:
                self._remove(key)
            return Response(index, previous=current)
        refusal = self._check_room(index, key)
        if refusal is not None:
            return refusal
        return self._write(index, key, value, command.lease_id)

    def _compare_and_set_with_writes(
        self, index: int, command: CompareAndSetWithWrites
    ) -> Response:
        for key, value in command.writes:
            refusal = (self._check_identifier("key", key, index) if value is None
                       else self._check_write(index, key, value, None))
            if refusal is not None:
                return refusal
        item = self._items.get(command.key)
        current = 0 if item is None else item.version
        if current == command.expect_version:
            created = sum(value is not None and key not in self._items
                          for key, value in command.writes)
            created += command.value is not None and item is None
            limit = self._settings.keys_max
            if created and len(self._items) + created > limit:
                return _too_large(index, f"store holds keys_max ({limit}) keys")
        response = self._compare_and_set(index, CompareAndSet(
            command.key, command.value, command.expect_version, command.lease_id))
        if not response.ok:
            return response
        for key, value in command.writes:
            if value is not None:
                self._write(index, key, value, None)
            elif key in self._items:
                self._remove(key)
        return response

    def _check_write(
        self, index: int, key: str, value: bytes, lease_id: int | None
    ) -> Response | None:
        refusal = self._check_identifier("key", key, index)
        if refusal is not None:
            return refusal
        limit = self._settings.value_bytes_max
        if len(value) > limit:
            return _too_large(index, f"value is {len(value)} bytes; value_bytes_max is {limit}")
        if lease_id is not None and lease_id not in self._leases:
            return Response(index, ErrorCode.LEASE_NOT_FOUND, lease_id=lease_id)
        return None

    def _check_room(self, index: int, key: str) -> Response | None:
        limit = self._settings.keys_max
        if key not in self._items and len(self._items) >= limit:
            return _too_large(index, f"store holds keys_max ({limit}) keys")
        return None

    def _write(self, index: int, key: str, value: bytes, lease_id: int | None) -> Response:
        old = self._items.get(key)
        if old is None:
            bisect.insort(self._keys, key)
            previous, create_index = 0, index
        else:
            previous, create_index = old.version, old.create_index
            if old.lease is not None and old.lease != lease_id:
                self._lease_record(old.lease).keys.discard(key)
        if lease_id is not None:
            self._lease_record(lease_id).keys.add(key)
        # tuple.__new__ directly: a named tuple's own __new__ is a Python frame, and
        # every replica builds both per write.
        self._items[key] = _new_tuple(
            Item, (key, value, previous + 1, create_index, index, lease_id))
        return _new_tuple(
            Response, (index, None, previous + 1, previous, lease_id, None, None, None, 0, ""))

    def _remove(self, key: str) -> None:
        item = self._items.pop(key)
        position = bisect.bisect_left(self._keys, key)
        assert self._keys[position] == key, (key, position)
        del self._keys[position]
        if item.lease is not None:
            record = self._leases.get(item.lease)
            if record is not None:  # None while the lease itself is being ended
                record.keys.discard(key)

    # -------------------------------------------------------------------- leases

    def _lease_grant(self, index: int, command: LeaseGrant) -> Response:
        refusal = self._check_ttl(index, command.ttl_ms) or self._check_lease_room(index)
        if refusal is not None:
            return refusal
        record = self._grant(index, command.ttl_ms)
        return Response(index, lease_id=record.lease_id, deadline_ms=record.deadline_ms)

    def _lease_keep_alive(self, index: int, command: LeaseKeepAlive) -> Response:
        record = self._leases.get(command.lease_id)
        if record is None:
            return Response(index, ErrorCode.LEASE_NOT_FOUND, lease_id=command.lease_id)
        self._leases.renew(record.lease_id, record.ttl_ms, self._deadline(record.ttl_ms))
        return Response(index, lease_id=record.lease_id, deadline_ms=record.deadline_ms)

    def _lease_revoke(self, index: int, command: LeaseRevoke) -> Response:
        if command.lease_id not in self._leases:
            return Response(index, ErrorCode.LEASE_NOT_FOUND, lease_id=command.lease_id)
        deleted = self._end_lease(self._leases.remove(command.lease_id))
        return Response(index, lease_id=command.lease_id, deleted=deleted)

    def _grant(self, index: int, ttl_ms: int) -> LeaseRecord:
        record = LeaseRecord(index, ttl_ms, self._deadline(ttl_ms))
        self._leases.add(record)
        return record

    def _end_lease(self, record: LeaseRecord) -> int:
        """Delete what a lease (already out of the table) holds; return keys deleted."""
        assert record.lease_id not in self._leases, record
        for key in record.keys:
            self._remove(key)
        if record.lock is not None:
            del self._locks[record.lock]
        return len(record.keys)

    def _deadline(self, ttl_ms: int) -> int:
        # Clamped so every stored number stays within int64 (see settings.INT_MAX).
        return min(self._now_ms + ttl_ms, INT_MAX)

    def _lease_record(self, lease_id: int) -> LeaseRecord:
        record = self._leases.get(lease_id)
        assert record is not None, lease_id
        return record

    def _check_ttl(self, index: int, ttl_ms: int) -> Response | None:
        limit = self._settings.lease_ttl_ms_max
        if ttl_ms > limit:
            return _too_large(index, f"ttl_ms is {ttl_ms}; lease_ttl_ms_max is {limit}")
        return None

    def _check_lease_room(self, index: int) -> Response | None:
        limit = self._settings.leases_max
        if len(self._leases) >= limit:
            return _too_large(index, f"store holds leases_max ({limit}) leases")
        return None

    # --------------------------------------------------------------------- locks

    def _lock_acquire(self, index: int, command: LockAcquire) -> Response:
        name, owner = command.name, command.owner
        refusal = (
            self._check_identifier("lock name", name, index)
            or self._check_identifier("owner", owner, index)
            or self._check_ttl(index, command.ttl_ms)
        )
        if refusal is not None:
            return refusal
        held = self._locks.get(name)
        if held is not None:
            record = self._lease_record(held.lease_id)
            if held.owner != owner:
                return Response(
                    index,
                    ErrorCode.LOCK_HELD,
                    lease_id=held.lease_id,
                    deadline_ms=record.deadline_ms,
                    token=held.token,
                    holder=held.owner,
                )
            # The holder asking again renews its lease and keeps its token.
            self._leases.renew(held.lease_id, command.ttl_ms, self._deadline(command.ttl_ms))
            return Response(
                index,
                lease_id=held.lease_id,
                deadline_ms=record.deadline_ms,
                token=held.token,
                holder=owner,
            )
        limit = self._settings.locks_max
        if len(self._locks) >= limit:
            return _too_large(index, f"store holds locks_max ({limit}) locks")
        refusal = self._check_lease_room(index)
        if refusal is not None:
            return refusal
        record = self._grant(index, command.ttl_ms)
        record.lock = name
        self._locks[name] = _HeldLock(owner, index, record.lease_id)
        return Response(
            index,
            lease_id=record.lease_id,
            deadline_ms=record.deadline_ms,
            token=index,
            holder=owner,
        )

    def _lock_release(self, index: int, command: LockRelease) -> Response:
        held = self._locks.get(command.name)
        if held is None:
            return Response(index, ErrorCode.NOT_FOUND, detail="lock is not held")
        if held.owner != command.owner or held.token != command.token:
            return Response(
                index,
                ErrorCode.NOT_OWNER,
                token=held.token,
                holder=held.owner,
                detail=f"held with token {held.token}, not {command.token} of this owner",
            )
        deleted = self._end_lease(self._leases.remove(held.lease_id))
        return Response(index, lease_id=held.lease_id, token=held.token, deleted=deleted)

    # ------------------------------------------------------------------- helpers

    def _check_identifier(self, what: str, text: str, index: int) -> Response | None:
        limit = self._settings.key_bytes_max
        length = utf8_length(text)
        if length > limit:
            return _too_large(index, f"{what} is {length} bytes; key_bytes_max is {limit}")
        return None

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> bytes:
        """The whole state as canonical bytes: equal states give equal bytes."""
        state = SnapshotState(
            settings=self._settings,
            applied_index=self._applied_index,
            now_ms=self._now_ms,
            items=tuple(self._items[key] for key in self._keys),
            leases=tuple(
                SnapshotLease(r.lease_id, r.ttl_ms, r.deadline_ms) for r in self._leases.records()
            ),
            locks=tuple(
                SnapshotLock(name, held.owner, held.token, held.lease_id)
                for name, held in sorted(self._locks.items())
            ),
            sessions=tuple(
                (client_id, tuple(responses)) for client_id, responses in self._sessions.export()
            ),
        )
        return encode_snapshot(state)

    @classmethod
    def restore(cls, data: bytes, settings: KVSettings | None = None) -> KVStore:
        """A store equal to the one whose ``snapshot()`` gave ``data``.

        ``settings`` None keeps the snapshot's settings (and then
        ``restore(s).snapshot() == s``). Other settings must be given identically on
        every replica; state beyond their limits is kept, only new writes are held
        to them. Raises ``SnapshotError`` for malformed or inconsistent bytes.
        """
        state = decode_snapshot(data)
        store = cls(settings if settings is not None else state.settings)
        store._applied_index = state.applied_index
        store._now_ms = state.now_ms
        for lease in state.leases:
            store._leases.add(LeaseRecord(lease.lease_id, lease.ttl_ms, lease.deadline_ms))
        for lock in state.locks:
            store._lease_record(lock.lease_id).lock = lock.name
            store._locks[lock.name] = _HeldLock(lock.owner, lock.token, lock.lease_id)
        for item in state.items:
            store._items[item.key] = item
            store._keys.append(item.key)  # already sorted (checked on decode)
            if item.lease is not None:
                store._lease_record(item.lease).keys.add(item.key)
        for client_id, responses in state.sessions:
            store._sessions.load(client_id, list(responses))
        return store


def _too_large(index: int, detail: str) -> Response:
    return Response(index, ErrorCode.TOO_LARGE, detail=detail)


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS_MAX else text[: _DETAIL_CHARS_MAX - 3] + "..."
