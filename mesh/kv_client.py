"""``KVClient``: the async Python API of the replicated KV store, locks and leases.

How this works. Every operation becomes one call: a ``KVCall``, or for a write a
``PendingWrite`` (its fields, sent in columns with the others). A write gets its
client's next sequence number once, and keeps it through every retry, so the
store applies it once whatever happens to the messages. The call goes to the
voter last known to lead (or, at first, to the first target): over the mesh in a
``kv.writes`` or ``kv.call`` envelope, or straight to this node's own
``RaftService`` when the node is a voter. Calls made while the previous ones are
on their way are sent together, many per envelope (one signature), by a loop
callback. The answer decides what happens next:

- ``ok``: done (a write's ``Response`` may still be a refusal, e.g. a failed
  compare-and-set; that is an answer, not an error);
- ``redirect``: go to the leader it names, at once;
- ``unavailable`` (no leader yet, leadership changed, busy): pause
  ``client_retry_interval_ms`` and retry, at the leader if one was named;
- no answer within ``client_attempt_timeout_ms``: try the next target.

A voter that left an attempt unanswered is silent until it answers anything.
For twice ``election_timeout_ms`` a redirect to it is taken as
``unavailable``: the call goes to another voter after the pause. The voters
that survive a crashed leader keep naming it until their election timeouts run
out; following them back to it would cost a second, longer silent attempt,
while asking them again finds the new leader as soon as it is elected. Named
after that time, it is alive and only this client cannot reach it, so it is
tried again. A silent voter is also the last choice when the next target is
picked by turn.

After ``client_timeout_ms`` it raises ``KVUnavailable``; a write's outcome is
then unknown. ``invalid`` raises ``KVInvalid`` at once.

Use it from a running node (``node.kv``) or standalone:
``async with KVClient.connect(cluster_dir) as kv: await kv.put("k", b"v")``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from pydantic import ValidationError

from consensus.kvstore import (
    Command,
    CommandError,
    CompareAndSet,
    Delete,
    ErrorCode,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Put,
    Response,
    decode_response,
    encode_command,
)
from consensus.kvstore.commands import encode_plain_put
from mesh.config import RaftConfig
from mesh.errors import MeshError, MessageTooLarge
from mesh.kv_messages import (
    GET_MANY_KEYS_MAX,
    KV_ANSWER,
    KV_CALL,
    KV_WRITES,
    KV_WRITTEN,
    KVAnswer,
    KVCall,
    KVItem,
    KVLock,
    KVWritten,
    PendingWrite,
    ReadOp,
    writes_payloads,
)

if TYPE_CHECKING:
    from mesh.raft_service import RaftService
    from mesh.runtime import Inbound, Node

__all__ = ["LOCAL", "KVClient", "KVError", "KVInvalid", "KVUnavailable", "Target"]


class KVError(MeshError):
    """A KV operation could not be carried out."""


class KVUnavailable(KVError):
    """No voter answered in time (a write's outcome is unknown)."""


class KVInvalid(KVError):
    """The cluster refused the request as malformed; retrying will not help."""


_Calls = list[KVCall | PendingWrite]  # ``list`` alone would name KVClient.list in the class
_Answer = KVAnswer | bytes
"""What a call gets: a ``KVAnswer``, or the encoded ``Response`` of an applied write
(answered in columns: nothing else to say, so no answer object is built for it)."""


class _NotYet:
    """No outcome yet: the call's next attempt is still to be made."""


_NOT_YET = _NotYet()

_WriteFields = tuple[str, int, bytes]
"""A write's client id, seq and command for ``_call``: each attempt's ``PendingWrite``."""
_new_tuple = tuple.__new__


_SESSION_RESTARTS_MAX = 3
"""A write refused as session_expired is sent again under a new session this many
times at most (each refusal means nothing was applied)."""


@dataclass(slots=True)
class _Session:
    """One client session of the store: its id, next sequence number, writes in flight.

    The store remembers a session's last ``kv_session_window`` responses; a retried
    write older than those is refused as ``stale_request`` (its fate unknown). So a
    session takes a new write only while all its writes in flight stay within one
    window of sequence numbers, and, because a session is created by its seq 1,
    takes a second write only once its first has been answered.
    """

    client_id: str
    next_seq: int = 1
    started: bool = False
    in_flight: set[int] = field(default_factory=set)
    # Sequence numbers in the order they were taken; those no longer in flight are
    # dropped from the front lazily, so the oldest in flight costs O(1) amortized.
    _order: deque[int] = field(default_factory=deque)

    def take(self) -> int:
        """The next sequence number, now in flight."""
        seq = self.next_seq
        self.next_seq += 1
        self.in_flight.add(seq)
        self._order.append(seq)
        return seq

    def may_take(self, window: int) -> bool:
        """Whether one more write keeps this session's writes in flight in one window."""
        if not self.started:
            return not self.in_flight
        order = self._order
        while order and order[0] not in self.in_flight:
            order.popleft()
        return not order or self.next_seq - order[0] < window


@dataclass(slots=True)
class _Attempt:
    future: asyncio.Future[_Answer | None]  # gets the answer, or None from the watchdog
    target: object
    silence_s: float
    give_up_at: float
    check_at: float

    def resolve(self, answer: _Answer | None) -> None:
        if not self.future.done():
            self.future.set_result(answer)


class _Rotation:
    """The targets a call tries in turn, as listed when it was made."""

    __slots__ = ("listed", "turns")

    def __init__(self, listed: list[Target]) -> None:
        self.listed = listed
        self.turns: Iterator[Target] = itertools.cycle(listed)


class _Local:
    def __repr__(self) -> str:
        return "LOCAL"


LOCAL = _Local()
"""The target meaning "this node's own Raft voter"."""

Target = str | bytes | _Local
"""Where to send a call: an address, a node id, or ``LOCAL``."""


class KVClient:
    """Reads and writes of the replicated store through any node (see the module doc)."""

    def __init__(
        self,
        node: Node,
        config: RaftConfig,
        targets: Callable[[], Sequence[Target]],
        *,
        local: RaftService | None = None,
        client_id: str | None = None,
    ) -> None:
        """``targets`` lists where calls may go, best first (asked again on each retry)."""
        self._node = node
        self._config = config
        self._targets = targets
        self._local = local
        #: This client's session in the store: unique to this client for its life.
        self.client_id = client_id or f"{node.node_id.hex()}/{os.getpid()}/{time.time_ns()}"
        # Sessions in the store: more than one when more writes are in flight than a
        # session's window of remembered responses covers.
        self._sessions: list[_Session] = []
        # Writes waiting for a session with room, woken one at a time (see
        # _session_for_write): waking them all at every answer cost a client with
        # thousands waiting a search of every session per waiter per answer.
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._freed_session: _Session | None = None
        self._call_ids = itertools.count(1)
        self._session_numbers = itertools.count()
        self._outgoing: dict[str | bytes, _Calls] = {}
        self._send_queued = False  # a callback will send what _outgoing holds
        self._leader: Target | None = None
        self._heard: dict[object, float] = {}  # target -> when it last answered anything
        # Silent targets (an attempt went unanswered) -> since when; see the module
        # doc. Node ids too, so that a redirect naming one by id is caught.
        self._silent: dict[object, float] = {}
        self._node_ids: dict[str, bytes] = {}  # address -> the node id answering there
        self._attempts: dict[int, _Attempt] = {}  # by call id: the attempt in flight
        # The loop ``run`` runs in, kept: asyncio.get_running_loop() makes a system
        # call (a fork check), which here cost a write 2 of its 16 us in-process.
        self._running_loop: asyncio.AbstractEventLoop | None = None
        self.counters = dict.fromkeys(
            ("calls", "attempts", "redirects", "redirects_to_silent", "retries_unavailable",
             "attempt_timeouts", "answers_unmatched", "envelopes_sent", "sessions_restarted",
             "calls_too_large"),
            0)
        node.on(KV_ANSWER, KVAnswer, self._on_answers)
        node.on(KV_WRITTEN, KVWritten, self._on_written)

    @classmethod
    @asynccontextmanager
    async def connect(cls, cluster_dir: Path | str) -> AsyncIterator[KVClient]:
        """A standalone client of the cluster in ``cluster_dir`` (its CLI identity),
        running for the ``async with`` block."""
        from mesh.status import open_client

        cluster = Path(cluster_dir)
        listing = _ClusterListing(cluster)
        node = open_client(cluster)
        async with cls.running(node, node.config.raft, listing.addresses) as client:
            yield client

    @classmethod
    @asynccontextmanager
    async def running(cls, node: Node, config: RaftConfig,
                      targets: Callable[[], Sequence[Target]]) -> AsyncIterator[KVClient]:
        """A client sending through client node ``node`` to ``targets``, with the node
        and the client's watchdog running for the ``async with`` block."""
        client = cls(node, config, targets)
        async with node.running(), anyio.create_task_group() as tg:
            tg.start_soon(client.run)
            try:
                yield client
            finally:
                tg.cancel_scope.cancel()

    @property
    def node(self) -> Node:
        """The node this client sends through (a client node when standalone)."""
        return self._node

    def targets(self) -> Sequence[Target]:
        """Where this client's calls may go, voters first (re-read from
        ``cluster.json`` at most once a second when standalone)."""
        return self._targets()

    # -- the store's operations ----------------------------------------------------------

    async def put(self, key: str, value: bytes | str, *, lease_id: int | None = None) -> Response:
        """Write ``value`` under ``key``; the response has the new ``version``."""
        if type(key) is str and key and key.isascii() and type(value) is bytes and lease_id is None:
            # The common put passes Put's checks at once; encoded without building one.
            return await self._write_encoded(encode_plain_put(key, value))
        return await self.write(_checked(Put, key, _bytes(value), lease_id))

    async def get(self, key: str) -> KVItem | None:
        """The item under ``key`` (linearizable), or None if absent."""
        return (await self._read("get", key)).item

    async def compare_and_set(
        self, key: str, value: bytes | str | None, expect_version: int,
        *, lease_id: int | None = None,
    ) -> Response:
        """Write (``value`` None: delete) only if the key's version is ``expect_version``
        (0: absent). On a mismatch the response's error is ``cas_failed`` and its
        ``version`` the current one."""
        data = None if value is None else _bytes(value)
        return await self.write(_checked(CompareAndSet, key, data, expect_version, lease_id))

    async def delete(self, key: str) -> Response:
        """Remove ``key``; the response's error is ``not_found`` if it was absent."""
        return await self.write(_checked(Delete, key))

    async def get_many(self, keys: Sequence[str]) -> list[KVItem]:
        """The items of those of ``keys`` that exist, in the order asked, read at one
        point of the log (linearizable); at most ``GET_MANY_KEYS_MAX`` keys."""
        if len(keys) > GET_MANY_KEYS_MAX:
            raise ValueError(f"{len(keys)} keys, more than {GET_MANY_KEYS_MAX} in one read")
        if not keys:
            return []
        return (await self._read_call({"read": "get_many", "keys": list(keys)})).items

    async def list(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> tuple[list[KVItem], bool]:
        """Items whose key starts with ``prefix`` in key order, and whether more follow."""
        answer = await self._read("list", prefix, limit=limit, start_after=start_after)
        return answer.items, answer.truncated

    async def lease_grant(self, ttl_s: float) -> Response:
        """A new lease (``lease_id``, ``deadline_ms``) ending ``ttl_s`` from now."""
        return await self.write(_checked(LeaseGrant, _ms(ttl_s)))

    async def lease_keep_alive(self, lease_id: int) -> Response:
        """Push the lease's end one TTL ahead."""
        return await self.write(_checked(LeaseKeepAlive, lease_id))

    async def lease_revoke(self, lease_id: int) -> Response:
        """End the lease now, deleting its keys and releasing its lock."""
        return await self.write(_checked(LeaseRevoke, lease_id))

    async def lock_acquire(self, name: str, ttl_s: float, *, owner: str | None = None) -> Response:
        """Take the lock for ``owner`` (default: this client's id) with a lease of
        ``ttl_s``: the response has the fencing ``token`` and ``lease_id``, or the
        error ``lock_held`` with the ``holder``."""
        return await self.write(
            _checked(LockAcquire, name, owner or self.client_id, _ms(ttl_s)))

    async def lock_release(
        self, name: str, *, token: int | None = None, owner: str | None = None
    ) -> Response:
        """Release the lock held by ``owner`` (default: this client's id) with ``token``
        (default: the token it holds now, read first)."""
        owner = owner or self.client_id
        if token is None:
            held = await self.lock_holder(name)
            if held is None:
                return await self.write(_checked(LockRelease, name, owner, 1))  # answers not_found
            token = held.token
        return await self.write(_checked(LockRelease, name, owner, token))

    async def lock_holder(self, name: str) -> KVLock | None:
        """Who holds the lock now (linearizable), or None."""
        return (await self._read("lock", name)).lock

    async def write(self, command: Command) -> Response:
        """Apply any KV command once; its ``Response``."""
        return await self._write_encoded(encode_command(command))

    async def _write_encoded(self, data: bytes) -> Response:
        if len(data) > self._config.max_bytes_per_append:
            raise KVInvalid(f"the request takes {len(data)} bytes, above "
                            f"raft.max_bytes_per_append ({self._config.max_bytes_per_append})")
        for _ in range(_SESSION_RESTARTS_MAX):
            # Awaited only when every session is full; most writes find room at once.
            session = self._session_with_room() or await self._session_for_write()
            seq = session.take()
            fields = (session.client_id, seq, data)
            try:
                leader = self._leader
                if leader is None:
                    answer = await self._call(fields)
                else:
                    # The first attempt, to the leader the last answer came from, made
                    # here: nearly every write needs no other, and a coroutine level
                    # less (with _call's bookkeeping for retries) is a tenth of a
                    # client's work per write.
                    counters = self.counters
                    counters["calls"] += 1
                    counters["attempts"] += 1
                    call = self._new_call(fields)
                    config = self._config
                    started = time.monotonic()
                    future = self._start_attempt(leader, call,
                                                 config.client_attempt_timeout_ms / 1000,
                                                 config.client_timeout_ms / 1000)
                    try:
                        first = await future
                    finally:
                        del self._attempts[call.call_id]
                    answer = (first if isinstance(first, bytes)
                              else await self._call(fields, after=(leader, first, started)))
                session.started = True
            except BaseException:
                if not session.started:
                    # Its first write's fate is unknown, so the store may not know the
                    # session: a later seq would be refused as session_expired.
                    self._retire(session)
                raise
            finally:
                session.in_flight.discard(seq)
                self._freed_session = session
                if self._room_waiters:
                    self._wake_one_waiter()
            encoded = answer if isinstance(answer, bytes) else answer.response
            assert encoded is not None, answer
            response = decode_response(encoded)
            if response.error is not ErrorCode.SESSION_EXPIRED:
                return response
            # The store dropped (or never had) this session and applied nothing:
            # the write goes again under a new one.
            self.counters["sessions_restarted"] += 1
            self._retire(session)
        return response

    def _retire(self, session: _Session) -> None:
        if session in self._sessions:
            self._sessions.remove(session)
        if self._freed_session is session:
            self._freed_session = None
        if self._room_waiters:
            self._wake_one_waiter()  # a new session may be opened in its place

    async def _session_for_write(self) -> _Session:
        """A session that may take one more write now (see ``_Session``), waiting in
        line for one if need be.

        An answered write wakes the first in line. A writer that finds room wakes
        the next, since one answer can make room for many (a new session's first);
        one that finds none goes back to the head of the line and the chain stops.
        """
        loop = self._loop()
        first = True
        while (session := self._session_with_room()) is None:
            waiter: asyncio.Future[None] = loop.create_future()
            if first:
                self._room_waiters.append(waiter)
                first = False
            else:
                self._room_waiters.appendleft(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one_waiter()  # woken, then cancelled: pass it on
                raise
        if self._room_waiters:
            self._wake_one_waiter()
        return session

    def _wake_one_waiter(self) -> None:
        waiters = self._room_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # skip those cancelled while in line
                waiter.set_result(None)
                return

    def _session_with_room(self) -> _Session | None:
        window = self._config.kv_session_window
        # The session that just finished a write most likely has room: try it first.
        freed = self._freed_session
        if freed is not None and freed.may_take(window):
            return freed
        if self._sessions and self._sessions[-1].may_take(window):
            return self._sessions[-1]
        for session in self._sessions:
            if session.may_take(window):
                return session
        # A new session only when every session is open and full: one still
        # waiting for its first answer will soon take a window's worth.
        if len(self._sessions) < self._config.client_sessions_max and all(
            session.started for session in self._sessions
        ):
            session = _Session(f"{self.client_id}/{next(self._session_numbers)}")
            self._sessions.append(session)
            return session
        return None

    # -- calls -----------------------------------------------------------------------------

    async def _read(self, read: ReadOp, key: str, *, limit: int = 1000,
                    start_after: str | None = None) -> KVAnswer:
        return await self._read_call({"read": read, "key": key, "limit": limit,
                                      "start_after": start_after})

    async def _read_call(self, fields: dict[str, object]) -> KVAnswer:
        answer = await self._call(fields)
        assert isinstance(answer, KVAnswer), answer  # only applied writes come as bytes
        return answer

    async def _call(
        self, fields: dict[str, object] | _WriteFields,
        after: tuple[Target, _Answer | None, float] | None = None,
    ) -> _Answer:
        """The answer to a call, retried within ``client_timeout_ms``. ``after``: its
        first attempt was made already (the target, its outcome, when it began)."""
        counters = self.counters
        config = self._config
        timeout_s = config.client_timeout_ms / 1000
        first_patience_s = config.client_attempt_timeout_ms / 1000
        # The voters are listed only when the leader is unknown or fails: most calls
        # go straight to the leader the last answer came from.
        rotation: _Rotation | None = None
        outcome: _Answer | _NotYet | None
        if after is None:
            counters["calls"] += 1
            deadline = time.monotonic() + timeout_s
            target = self._leader
            if target is None:
                rotation = self._rotation(None)
                target = next(rotation.turns)
            outcome, retry = _NOT_YET, False
        else:
            target, outcome, started = after
            deadline, retry = started + timeout_s, True
        last_problem = "no answer"
        silences: dict[Target, int] = {}
        while True:
            if outcome is _NOT_YET:
                if retry:
                    timeout_s = deadline - time.monotonic()
                    if timeout_s <= 0:
                        break
                retry = True
                call = self._new_call(fields)
                counters["attempts"] += 1
                # Each silence of a target doubles the patience it gets next (up to
                # 16x): a dead leader is left after one, but a leader slowed by load is
                # not answered with a storm of retries through the other voters, which
                # slows it more. Per target, not per call, so that one dead voter (or an
                # address a voter left) does not make the call wait longer and longer
                # on the others; but after any silence every target gets at least twice
                # the first patience, since a survivor busy with an election answers
                # late, and one taken for silent is not followed when it wins.
                silence_s = (first_patience_s * 2 ** min(silences.get(target, 1), 4)
                             if silences else first_patience_s)
                # Awaited here rather than in a coroutine of its own: every level of
                # coroutine a write passes through costs it a frame on each resume.
                future = self._start_attempt(target, call, silence_s, timeout_s)
                try:
                    outcome = await future
                finally:
                    del self._attempts[call.call_id]
            answer, outcome = outcome, _NOT_YET
            if isinstance(answer, bytes):  # an applied write
                self._leader = target
                return answer
            if answer is None:
                silences[target] = silences.get(target, 0) + 1
                counters["attempt_timeouts"] += 1
                last_problem = f"{_show(target)} did not answer"
                self._leader = None
                self._note_silent(target)
                rotation = self._rotation(rotation)
                target = self._next_target(rotation, target)
                continue
            assert isinstance(answer, KVAnswer)
            if answer.status == "ok":
                self._leader = target
                return answer
            if answer.status == "invalid":
                raise KVInvalid(answer.detail)
            last_problem = answer.detail or answer.status
            self._leader = None
            named = self._leader_target(answer)
            if named is not None and self._recently_silent(named, answer.leader_id):
                counters["redirects_to_silent"] += 1
                last_problem = f"{answer.detail or answer.status} ({_show(named)} is silent)"
                named = None
            elif answer.status == "redirect" and named is not None and named != target:
                counters["redirects"] += 1
                target = named
                continue
            else:
                counters["retries_unavailable"] += 1
            await anyio.sleep(config.client_retry_interval_ms / 1000)
            if named is None:
                rotation = self._rotation(rotation)
                named = self._next_target(rotation, target)
            target = named
        raise KVUnavailable(
            f"no voter served the request within {config.client_timeout_ms} ms "
            f"(last: {last_problem}); a write's outcome is unknown"
        )

    def _rotation(self, rotation: _Rotation | None) -> _Rotation:
        """The voters to try in turn, this node's own first: ``rotation`` while the
        listing is the same, a new one once it changed (a voter restarted at another
        address during the call, whose old address will never answer)."""
        targets: list[Target] = list(self._targets())
        if self._local is not None:
            targets.insert(0, LOCAL)
        if not targets:
            raise KVUnavailable("no voter to ask: the cluster lists none")
        if rotation is not None and rotation.listed == targets:
            return rotation
        return _Rotation(targets)

    def _next_target(self, rotation: _Rotation, current: Target) -> Target:
        """The next target in ``rotation`` other than ``current``, skipping silent
        ones unless every other one is."""
        silent = self._silent
        if silent:
            for _ in range(len(rotation.listed) + 1):
                candidate = next(rotation.turns)
                if candidate != current and candidate not in silent:
                    return candidate
        return _next_other(rotation.turns, current)

    def _note_silent(self, target: Target) -> None:
        now = time.monotonic()
        self._silent[target] = now
        node_id = self._node_ids.get(target) if isinstance(target, str) else None
        if node_id is not None:
            self._silent[node_id] = now

    def _recently_silent(self, target: Target, node_id: bytes | None) -> bool:
        """Whether a redirect to ``target`` (or ``node_id``) is not to be followed."""
        silent = self._silent
        if not silent:
            return False
        since = max(silent.get(target, -math.inf), silent.get(node_id, -math.inf))
        return time.monotonic() - since < 2 * self._config.election_timeout_ms / 1000

    def _new_call(self, fields: dict[str, object] | _WriteFields) -> KVCall | PendingWrite:
        call_id = next(self._call_ids)
        if isinstance(fields, tuple):
            # Writes are the hot path, and their fields are ours and checked (``write``);
            # tuple.__new__ skips the Python-level __new__ of a named tuple.
            return _new_tuple(PendingWrite, (call_id, *fields))
        try:
            return KVCall(call_id=call_id, client_id=self.client_id, **fields)
        except ValidationError as exc:  # a read's key, limit or keys out of bounds
            raise KVInvalid(_first_problem(exc)) from None

    def _leader_target(self, answer: KVAnswer) -> Target | None:
        if answer.leader_id is not None and answer.leader_id == self._node.node_id:
            return LOCAL if self._local is not None else None
        if answer.leader_address is not None:
            return answer.leader_address
        if answer.leader_id is not None and self._node.membership is not None:
            return answer.leader_id
        return None

    def _start_attempt(
        self, target: Target, call: KVCall | PendingWrite, silence_s: float, timeout_s: float
    ) -> asyncio.Future[_Answer | None]:
        """Send ``call`` to ``target``; the future gets its answer, or None once the
        watchdog gives up. The caller awaits it and then forgets the attempt."""
        # A bare future, watched by one watchdog for all calls: a cancel scope, an
        # event or even a timer per call would cost more than the rest of a write.
        future: asyncio.Future[_Answer | None] = self._loop().create_future()
        now = time.monotonic()
        attempt = self._attempts[call.call_id] = _Attempt(
            future, target, silence_s, now + timeout_s, now + min(silence_s, timeout_s)
        )
        if isinstance(target, _Local):
            assert self._local is not None
            resolve = attempt.resolve
            if isinstance(call, PendingWrite):
                self._local.submit_write(*call, resolve,
                                         lambda _call_ids, responses: resolve(responses[0]))
            else:
                self._local.submit(call, resolve)
        else:
            queued = self._outgoing.setdefault(target, [])
            queued.append(call)
            if len(queued) >= self._config.client_batch_calls_max:
                # Full: send it now, so the voter starts on it while we make more.
                del self._outgoing[target]
                self._send(target, queued)
            elif not self._send_queued:
                # Sent by a callback after this loop turn's other callbacks and tasks,
                # so calls made meanwhile share the envelope, without a task to wake.
                self._send_queued = True
                self._loop().call_soon(self._send_outgoing)
        return future

    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._running_loop or asyncio.get_running_loop()

    async def run(self) -> None:
        """Watch for silent voters until cancelled (the node, or ``connect``, starts it)."""
        self._running_loop = asyncio.get_running_loop()
        try:
            await self._run_watchdog()
        finally:
            self._running_loop = None

    async def _run_watchdog(self) -> None:
        # Give up on a target only after it has been silent for a whole attempt timeout:
        # a busy leader still answers other calls, and resending to it would only add
        # work; a dead or cut-off one goes quiet.
        period_s = max(0.005, self._config.client_attempt_timeout_ms / 1000 / 8)
        while True:
            await anyio.sleep(period_s)
            now = time.monotonic()
            heard_of = self._heard
            for attempt in list(self._attempts.values()):
                if now < attempt.check_at:
                    continue
                heard = now if attempt.target is LOCAL else heard_of.get(attempt.target, 0.0)
                if now >= attempt.give_up_at or now - heard >= attempt.silence_s:
                    if isinstance(attempt.target, str):
                        self._node.forget_address(attempt.target)
                    attempt.resolve(None)
                else:
                    attempt.check_at = now + attempt.silence_s

    def _send_outgoing(self) -> None:
        self._send_queued = False
        outgoing, self._outgoing = self._outgoing, {}
        for target, calls in outgoing.items():
            self._send(target, calls)

    def _send(self, target: str | bytes, calls: _Calls) -> None:
        self.counters["envelopes_sent"] += 1
        # The certificate rides along on every batch: a voter that restarted, or
        # never met this client, could not check the signature otherwise, and it
        # costs a few hundred bytes per batch of calls.
        writes = [call for call in calls if isinstance(call, PendingWrite)]
        if writes:
            budget = self._node.config.envelope.envelope_size_bytes_max // 2
            try:
                self._node.send_nowait(target, KV_WRITES, writes_payloads(writes, budget),
                                       attach_certificate=True)
            except MessageTooLarge:
                self._send_one_by_one(target, writes)
        reads = ([call for call in calls if isinstance(call, KVCall)]
                 if len(writes) < len(calls) else [])
        if reads:
            try:
                self._node.send_nowait(target, KV_CALL, reads, attach_certificate=True)
            except MessageTooLarge:
                self._send_one_by_one(target, reads)

    def _send_one_by_one(self, target: str | bytes,
                         calls: Sequence[KVCall | PendingWrite]) -> None:
        for call in calls:  # find the call no envelope can hold; send the others
            try:
                self._node.send_nowait(
                    target, KV_CALL, [call.as_call() if isinstance(call, PendingWrite) else call],
                    attach_certificate=True)
            except MessageTooLarge as exc:
                self.counters["calls_too_large"] += 1
                attempt = self._attempts.get(call.call_id)
                if attempt is not None:
                    attempt.resolve(KVAnswer(call_id=call.call_id, status="invalid",
                                             detail=f"call too large to send: {exc}"))

    def _on_answers(self, inbound: Inbound) -> None:
        now = self._note_heard(inbound)
        for answer in inbound.envelope.payloads:
            assert isinstance(answer, KVAnswer)
            self._resolve(answer.call_id, answer, now)

    def _on_written(self, inbound: Inbound) -> None:
        now = self._note_heard(inbound)
        for written in inbound.envelope.payloads:
            assert isinstance(written, KVWritten)
            for call_id, response in zip(written.call_ids, written.responses, strict=True):
                self._resolve(call_id, response, now)

    def _note_heard(self, inbound: Inbound) -> float:
        now = time.monotonic()
        sender, address = inbound.envelope.sender, inbound.route.address
        self._heard[sender] = now
        if address is not None:
            self._heard[address] = now
            self._node_ids[address] = sender
        if self._silent:  # it answers after all
            self._silent.pop(sender, None)
            self._silent.pop(address, None)
        return now

    def _resolve(self, call_id: int, answer: _Answer, now: float) -> None:
        attempt = self._attempts.get(call_id)
        if attempt is None or attempt.target is LOCAL:
            self.counters["answers_unmatched"] += 1
            return
        # The target as the call named it (an address after a redirect, a node id
        # otherwise): the watchdog looks it up under that name.
        self._heard[attempt.target] = now
        future = attempt.future
        if not future.done():
            future.set_result(answer)


class _ClusterListing:
    """The addresses in ``cluster.json``, read again (at most once a second) when asked,
    so that a long-lived client follows nodes that restarted on other ports."""

    def __init__(self, cluster: Path) -> None:
        self._cluster = cluster
        self._read_at = -math.inf
        self._addresses: list[str] = []
        self.addresses()  # a missing or broken cluster.json fails here, at connect

    def addresses(self) -> list[str]:
        from mesh.layout import read_cluster_file

        now = time.monotonic()
        if now - self._read_at >= 1.0:
            try:
                self._addresses = _voters_first(read_cluster_file(self._cluster))
            except MeshError:
                if not self._addresses:
                    raise
            self._read_at = now
        return self._addresses


def _voters_first(listed: Sequence[dict[str, Any]]) -> list[str]:
    """The listed nodes' addresses, the Raft voters first (as their ``node.toml`` says)."""
    from mesh.config import load_config

    voters: set[str] = set()
    for entry in listed:
        try:
            voters = set(load_config(Path(str(entry["dir"]))).raft.voters)
        except (MeshError, OSError, KeyError):
            continue
        if voters:
            break
    ordered = sorted(listed, key=lambda entry: str(entry.get("node_id")) not in voters)
    return [str(entry["listen"]) for entry in ordered]


def _next_other(rotation: Iterator[Target], current: Target) -> Target:
    first = next(rotation)
    if first != current:
        return first
    return next(rotation)


_C = TypeVar("_C", bound=Command)


def _checked(make: Callable[..., _C], *fields: object) -> _C:
    """The command ``make(*fields)``; fields it refuses (an empty key, a negative
    TTL) raise ``KVInvalid``, the error every refused request raises, naming the field."""
    try:
        return make(*fields)
    except CommandError as exc:
        raise KVInvalid(str(exc)) from None


def _first_problem(error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in problem["loc"])
    return f"{where}: {problem['msg']}" + (" (and more)" if error.error_count() > 1 else "")


def _bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    # bytes() would turn an int into that many zero bytes, a list of ints into bytes.
    raise KVInvalid(f"a value must be bytes or str, got {type(value).__name__}")


def _ms(seconds: float) -> int:
    if not 0 < seconds < math.inf:
        raise KVInvalid(f"a TTL must be a positive, finite number of seconds, got {seconds!r}")
    return max(1, round(seconds * 1000))


def _show(target: Target) -> str:
    return target.hex() if isinstance(target, bytes) else str(target)
