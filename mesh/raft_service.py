"""A Raft voter in a running node: the core, its log on disk and the KV store.

How this works. ``RaftService`` owns one ``RaftNode`` (the pure core), its
``FileStorage`` in ``<node dir>/raft`` and the ``KVStore`` it replicates. The
node delivers ``raft.*`` messages to ``step`` and ticks it like any core; the
core's output is carried out one ``Ready`` at a time, in the order the core
requires: when the node has delivered a batch of received frames, or by a
callback queued on the loop for anything else (with the fsync on the event loop
there is nothing to await, and waking a task costs more), and by ``run`` for any
Ready that leaves, or with ``fsync_on_thread``:

1. write the Ready's snapshot, entries and hard state to the log (buffered);
2. the fsync (on the event loop, or with ``fsync_on_thread`` on a worker
   thread while the loop keeps receiving); whatever arrives meanwhile goes into
   the next Ready, so one fsync covers every entry that arrived (group commit);
3. send the Ready's messages. A leader's appends and heartbeats go out first
   instead, before step 1 (Raft thesis 10.2.1): they depend on nothing the
   leader has yet to persist, and the leader counts its own copy toward a
   commit only once it is durable. Votes, acknowledgements and anything after
   a term change wait for the fsync;
4. apply committed entries to the KV store; serve reads whose read index is
   applied; answer the clients; ``advance``; snapshot and compact every
   ``snapshot_interval_entries``.

Clients reach it through ``submit`` with a ``KVCall`` (from the network, or from
this node's own ``KVClient``) and a callback for the ``KVAnswer``, or through
``submit_writes`` with the columns of a ``KVWrites`` (``submit_write`` for one).
Writes are stamped with the leader's wall clock and proposed; the key writes of
one ``KVWrites`` share entries, up to ``writes_per_entry_max`` each (a batch, see
``consensus.kvstore.commands``), so Raft, the log and the followers pay for one
entry per batch rather than per write. The answer is sent when the entry is
applied here. Reads go through ReadIndex. Every pending call is bounded
(``calls_pending_max``) and expires (``call_timeout_ms``); a leader that loses its
leadership answers its pending writes ``unavailable`` so their clients retry at
the new leader with the same sequence number, and the store's sessions apply
each write once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
from pydantic import BaseModel

from consensus.core import Incoming, Outgoing
from consensus.kvstore import (
    CommandError,
    KVStore,
    Request,
    Response,
    Tick,
    encode_request,
    encode_response,
)
from consensus.kvstore.commands import entry_from_items, item_may_share_entry, request_item
from consensus.raft import MESSAGE_KINDS, ConfState, EntryKind, RaftNode, Ready, Role
from consensus.raft.messages import APPEND, HEARTBEAT, SNAPSHOT
from mesh.config import RaftConfig
from mesh.kv_messages import KVAnswer, KVCall, KVItem, KVLock, ok_answer
from mesh.raft_storage import FileStorage

if TYPE_CHECKING:
    from mesh.runtime import Node

__all__ = ["RAFT_DIR_NAME", "AnswerCallback", "RaftService", "WrittenCallback"]

log = logging.getLogger(__name__)

RAFT_DIR_NAME = "raft"
AnswerCallback = Callable[[KVAnswer], None]
WrittenCallback = Callable[[list[int], list[bytes]], None]
"""Called with applied writes' call ids and their encoded ``Response``s (in columns:
an entry's writes that share the callback in one call)."""

# A leader may send these before its own fsync (see the module doc).
_EARLY_KINDS = frozenset({APPEND, HEARTBEAT, SNAPSHOT})
_ROLE_NAMES = {
    Role.LEADER: "leader",
    Role.FOLLOWER: "follower",
    Role.PRE_CANDIDATE: "candidate",
    Role.CANDIDATE: "candidate",
    Role.LEARNER: "learner",
}
_EXPIRY_SWEEP_S = 0.25
_new_tuple = tuple.__new__
_BATCH_ITEM_OVERHEAD = 48
"""Bytes a request adds to a batch besides its command and client id, at most
(its list, format tag, seq, now_ms and the headers of its fields)."""


class _Writer(NamedTuple):
    """Who a write is from and how to answer it: its ``KVCall``'s fields but the command."""

    call_id: int
    client_id: str
    seq: int


@dataclass(slots=True)
class _Waiting:
    call: KVCall | _Writer  # a read's call, or a write's writer
    answer: AnswerCallback
    since: float
    data: bytes = b""  # a write's proposed entry (shared by a batch's writes)
    item: list[Any] | None = None  # a write's request in list form, until proposed
    written: WrittenCallback | None = None  # answers an applied write, if given
    read_index: int | None = None  # a read's index, once known


class RaftService:
    """One node's Raft voter, storage and replicated KV store (see the module doc)."""

    def __init__(self, node: Node, config: RaftConfig, node_dir: Path) -> None:
        self._node = node
        self._config = config
        self.storage = FileStorage.open(
            node_dir / RAFT_DIR_NAME,
            conf=ConfState.of(config.voter_ids()),
            fsync=config.fsync,
        )
        try:
            snapshot = self.storage.snapshot()
            kv_settings = config.kv_settings()
            self.kv = (KVStore.restore(snapshot.data, kv_settings) if snapshot.index > 0
                       else KVStore(kv_settings))
            self.raft = RaftNode(node_id=node.node_id, settings=config.raft_settings(),
                                 storage=self.storage, rng=Random(), now=time.monotonic())
        except BaseException:
            self.storage.close()
            raise
        recovery = self.storage.log.recovery
        if recovery.bytes_truncated > recovery.zero_bytes_truncated:
            log.warning("raft log: cut a torn tail of %d bytes off %s at offset %s (%s)",
                        recovery.bytes_truncated, recovery.truncated_file,
                        recovery.truncated_at, recovery.tail_problem)
        elif recovery.bytes_truncated:  # only the preallocated zeros: no write was torn
            log.info("raft log: cut %d preallocated zero bytes off %s at offset %s",
                     recovery.bytes_truncated, recovery.truncated_file,
                     recovery.truncated_at)
        self._applied = snapshot.index
        self._wake = anyio.Event()
        # Set while run() runs (the storage is open): Readies may be carried out by
        # callbacks on this loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handling_queued = False  # a carry-out is queued on the loop
        self._in_batch = False  # the node is delivering a batch of received frames
        self._wanted_after_batch = False  # and the core has a Ready for its end
        self._failure: Exception | None = None
        # The writes of each proposed entry (one, or a batch's in order), by log index.
        self._writes: dict[int, list[_Waiting]] = {}
        self._writes_pending = 0  # in all of them
        self._proposed: dict[tuple[str, int], _Waiting] = {}  # by (client id, seq)
        # (index, requests applied through it) of each entry applied since the node
        # started, above the last compaction: snapshots and compaction count requests,
        # not entries, since a batch entry holds many.
        self._request_marks: deque[tuple[int, int]] = deque()
        self._requests_applied = 0
        self._requests_at_snapshot = 0
        self._reads: dict[bytes, _Waiting] = {}  # by read request id
        self._reads_started = 0
        self._read_prefix = node.node_id[:4] + int(time.time_ns()).to_bytes(8, "big")
        self._last_sweep = 0.0
        self._last_lease_tick = 0.0
        initial = self.storage.hard_state
        self._persisted_vote: tuple[int, bytes | None] = (initial.term, initial.vote)
        #: Called after a batch of answers was produced outside ``submit`` (set by the
        #: node, which sends the answers it collected).
        self.after_answers: Callable[[], None] = lambda: None
        self.counters: dict[str, int] = dict.fromkeys(
            ("calls", "calls_invalid", "calls_refused_busy", "calls_expired", "redirects",
             "writes_applied", "batch_entries", "reads_served", "readies", "fsyncs",
             "snapshots_taken",
             "snapshots_installed", "leader_changes"), 0)

    # -- the core's side, for Node.register_core ---------------------------------------

    @property
    def message_kinds(self) -> dict[str, type[BaseModel]]:
        """The ``raft.*`` kinds and their payload models."""
        return dict(MESSAGE_KINDS)

    def step(self, message: Incoming) -> None:
        """Feed one verified Raft message to the core."""
        self.raft.step(message)

    def tick(self, now: float) -> None:
        """Advance the core's clock; expire old calls; keep lease time moving."""
        self.raft.tick(now)
        if now - self._last_sweep >= _EXPIRY_SWEEP_S:
            self._last_sweep = now
            self._expire(now)
            self.after_answers()
        if (self.raft.role is Role.LEADER and self.kv.lease_count
                and now - self._last_lease_tick >= self._config.lease_tick_interval_ms / 1000):
            self._last_lease_tick = now
            self._propose(Request("", 0, _wall_ms(), Tick()))
        self._kick()

    def take_outbox(self) -> list[Outgoing]:
        """Nothing to hand over: each Ready's messages are sent when their turn comes
        in carrying it out (see the module doc)."""
        self._kick()
        return []

    # -- clients ------------------------------------------------------------------------

    def submit(self, call: KVCall, answer: AnswerCallback) -> None:
        """Serve one client call; ``answer`` is called once with its outcome."""
        if call.command is not None:
            self.submit_write(call.call_id, call.client_id, call.seq, call.command, answer)
            return
        self.counters["calls"] += 1
        if self._full(call.call_id, answer):
            return
        if call.read is not None:
            self._submit_read(call, answer)
        else:
            self._invalid(call.call_id, answer, "a call needs a command or a read")
        self._kick()

    def submit_write(self, call_id: int, client_id: str, seq: int, command: bytes,
                     answer: AnswerCallback, written: WrittenCallback | None = None) -> None:
        """Serve one write, given as the fields of its ``KVCall`` (writes arrive in
        columns, and building a call each would cost more than proposing it).
        ``written``, if given, takes the answer of an applied write instead of
        ``answer``: call ids and encoded responses, without a ``KVAnswer``."""
        self.submit_writes((call_id,), (client_id,), (seq,), (command,), answer, written)

    def submit_writes(self, call_ids: Sequence[int], client_ids: Sequence[str],
                      seqs: Sequence[int], commands: Sequence[bytes], answer: AnswerCallback,
                      written: WrittenCallback | None = None) -> None:
        """Serve writes given in columns (a ``KVWrites``'s), as ``submit_write`` would
        one by one, but with the key writes among them joined into batch entries
        (in their order): every write proposed here is stamped with the same time."""
        self.counters["calls"] += len(call_ids)
        if self.raft.role is not Role.LEADER:
            for call_id in call_ids:
                self._redirect(call_id, answer)
            return
        now_ms, since = _wall_ms(), time.monotonic()
        config, reads = self._config, self._reads
        limit, per_entry_max = config.calls_pending_max, config.writes_per_entry_max
        # Leave room for the batch's own framing within the bound on an entry.
        bytes_max = config.max_bytes_per_append - _BATCH_ITEM_OVERHEAD
        proposed = self._proposed
        batch: list[_Waiting] = []
        batch_bytes = 0
        # One pass, a write at a time, without a call per write: this is a leader's
        # work for every write it serves.
        for call_id, client_id, seq, command in zip(
                call_ids, client_ids, seqs, commands, strict=True):
            if self._writes_pending + len(batch) + len(reads) >= limit:
                self._refuse_full(call_id, answer)
                continue
            writer = _new_tuple(_Writer, (call_id, client_id, seq))
            if client_id:
                pending = proposed.get((client_id, seq))
                if pending is not None:
                    # A retry of a write still in flight here: answer it when that
                    # commits, rather than propose it again (the store would apply
                    # it once anyway).
                    pending.call, pending.answer, pending.written = writer, answer, written
                    continue
            try:
                item = request_item(client_id, seq, now_ms, command)
            except CommandError as exc:
                self._invalid(call_id, answer, str(exc))
                continue
            waiting = _Waiting(writer, answer, since, b"", item, written)
            size = len(command) + len(client_id) + _BATCH_ITEM_OVERHEAD
            if batch and (len(batch) >= per_entry_max or batch_bytes + size > bytes_max):
                self._propose_writes(batch)
                batch, batch_bytes = [], 0
            if item_may_share_entry(item):
                batch.append(waiting)
                batch_bytes += size
                continue
            if batch:  # in order: the batch so far, then this one alone
                self._propose_writes(batch)
                batch, batch_bytes = [], 0
            self._propose_writes([waiting])
        if batch:
            self._propose_writes(batch)
        self._kick()

    def _full(self, call_id: int, answer: AnswerCallback) -> bool:
        if self._writes_pending + len(self._reads) < self._config.calls_pending_max:
            return False
        self._refuse_full(call_id, answer)
        return True

    def _refuse_full(self, call_id: int, answer: AnswerCallback) -> None:
        self.counters["calls_refused_busy"] += 1
        answer(KVAnswer(call_id=call_id, status="unavailable",
                        detail="this voter holds calls_pending_max requests already"))

    def _propose_writes(self, writes: list[_Waiting]) -> None:
        """Propose ``writes`` as one entry (``writes_per_entry_max`` and the bytes
        bound them beforehand); answer each if it cannot be."""
        data = entry_from_items([waiting.item for waiting in writes])  # type: ignore[misc]
        try:
            index = self.raft.propose(data)
        except ValueError as exc:  # larger than max_bytes_per_append
            if len(writes) > 1:  # the estimate fell short: halve it
                half = len(writes) // 2
                self._propose_writes(writes[:half])
                self._propose_writes(writes[half:])
                return
            self._invalid(writes[0].call.call_id, writes[0].answer, str(exc))
            return
        if index is None:
            for waiting in writes:
                self.counters["calls_refused_busy"] += 1
                waiting.answer(KVAnswer(
                    call_id=waiting.call.call_id, status="unavailable",
                    detail="the leader is busy (uncommitted bytes) or transferring"))
            return
        proposed = self._proposed
        for waiting in writes:
            waiting.data, waiting.item = data, None
            if waiting.call.client_id:
                proposed[(waiting.call.client_id, waiting.call.seq)] = waiting
        self._writes[index] = writes
        self._writes_pending += len(writes)
        if len(writes) > 1:
            self.counters["batch_entries"] += 1

    def _submit_read(self, call: KVCall, answer: AnswerCallback) -> None:
        raft = self.raft
        if raft.role is not Role.LEADER and raft.leader_id is None:
            answer(KVAnswer(call_id=call.call_id, status="unavailable",
                            detail="no leader is known yet"))
            return
        self._reads_started += 1
        request_id = self._read_prefix + self._reads_started.to_bytes(8, "big")
        self._reads[request_id] = _Waiting(call, answer, time.monotonic())
        raft.read_index(request_id)

    def _redirect(self, call_id: int, answer: AnswerCallback) -> None:
        leader = self.raft.leader_id
        if leader is None:
            answer(KVAnswer(call_id=call_id, status="unavailable",
                            detail="no leader is known yet"))
            return
        self.counters["redirects"] += 1
        membership = self._node.membership
        address = membership.address_of(leader) if membership is not None else None
        answer(KVAnswer(call_id=call_id, status="redirect", leader_id=leader,
                        leader_address=address, detail="not the leader"))

    def _invalid(self, call_id: int, answer: AnswerCallback, detail: str) -> None:
        self.counters["calls_invalid"] += 1
        answer(KVAnswer(call_id=call_id, status="invalid", detail=detail))

    def _propose(self, request: Request) -> None:
        self.raft.propose(encode_request(request))

    def _expire(self, now: float) -> None:
        limit = self._config.call_timeout_ms / 1000
        expired: list[_Waiting] = []
        for index in [i for i, ws in self._writes.items() if now - ws[0].since > limit]:
            writes = self._writes.pop(index)
            self._forget(writes)
            expired.extend(writes)
        for request_id in [r for r, w in self._reads.items() if now - w.since > limit]:
            expired.append(self._reads.pop(request_id))
        for waiting in expired:
            self.counters["calls_expired"] += 1
            waiting.answer(KVAnswer(call_id=waiting.call.call_id, status="unavailable",
                                    detail="no outcome within call_timeout_ms"))

    # -- carrying out Readies ----------------------------------------------------------

    async def run(self) -> None:
        """Carry out the core's Readies until cancelled (see the module doc)."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._failure is not None:
                    raise self._failure
                while self.raft.has_ready():
                    await self._handle(self.raft.ready())
                    # Let the node receive and tick between Readies: with the fsync
                    # on the loop nothing else in a Ready yields.
                    await anyio.lowlevel.checkpoint()
        finally:
            self._loop = None
            self.storage.close()

    def begin_batch(self) -> None:
        """The node starts delivering a batch of received frames: a Ready they cause
        waits for ``end_batch``, so that one Ready (and one fsync) covers the batch."""
        self._in_batch = True

    def end_batch(self) -> None:
        """The batch is delivered: carry out its Ready now (see ``_kick``)."""
        self._in_batch = False
        if self._wanted_after_batch:
            self._wanted_after_batch = False
            self._carry_out_next()

    def _kick(self) -> None:
        """The core may have a Ready: have it carried out soon.

        With the fsync on the event loop: at the end of the batch of received
        frames being delivered, or else by a plain callback after the loop's
        callbacks of this turn. Either is cheaper than waking ``run`` (a task),
        three times on a write's path. Every frame that had arrived is in the
        batch, so its end joins as many messages into one Ready and fsync as a
        callback would, without a turn of the loop between receiving a frame and
        acting on it (a few tens of microseconds at each of those three steps).
        ``run`` carries out any Ready that leaves, and every Ready with
        ``fsync_on_thread``.
        """
        if self._loop is None or self._config.fsync_on_thread:
            self._wake.set()
        elif self._in_batch:
            self._wanted_after_batch = True
        elif not self._handling_queued:
            self._handling_queued = True
            self._loop.call_soon(self._carry_out_queued)

    def _carry_out_queued(self) -> None:
        self._handling_queued = False
        self._carry_out_next()

    def _carry_out_next(self) -> None:
        if self._loop is None or self._failure is not None or not self.raft.has_ready():
            return
        try:
            self._carry_out(self.raft.ready())
        except Exception as exc:  # a storage failure: run raises it, ending the node
            self._failure = exc
            self._wake.set()
            return
        if self.raft.has_ready():
            self._wake.set()

    async def _handle(self, ready: Ready) -> None:
        if not self._config.fsync_on_thread:
            self._carry_out(ready)
            return
        late, must_sync = self._persist(ready)
        if must_sync:
            await anyio.to_thread.run_sync(self.storage.make_durable)
        self._finish(ready, late, must_sync)

    def _carry_out(self, ready: Ready) -> None:
        """The whole Ready on the loop's thread, the fsync included."""
        late, must_sync = self._persist(ready)
        if must_sync:
            self.storage.make_durable()
        self._finish(ready, late, must_sync)

    def _persist(self, ready: Ready) -> tuple[Sequence[Outgoing], bool]:
        """Write the Ready to the log (not yet durable) and send what may leave before
        the fsync; returns the messages that must wait and whether to fsync."""
        self.counters["readies"] += 1
        storage = self.storage
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)  # durable when it returns
        hard = ready.hard_state
        # A new commit index alone need not be durable before anything leaves: after
        # a crash it is recomputed from the cluster. A term or vote must be.
        vote_changed = hard is not None and (hard.term, hard.vote) != self._persisted_vote
        must_sync = bool(ready.entries) or vote_changed
        late: Sequence[Outgoing] = ready.messages
        if must_sync and self.raft.role is Role.LEADER and not vote_changed:
            # Before the entries are even encoded: the followers start on them sooner.
            early = [m for m in late if m.kind in _EARLY_KINDS]
            late = [m for m in late if m.kind not in _EARLY_KINDS]
            self._send(early)
        if ready.entries:
            storage.append(ready.entries)
        if hard is not None:
            storage.set_hard_state(hard)
            self._persisted_vote = (hard.term, hard.vote)
        if must_sync:
            storage.write_out()
        return late, must_sync

    def _finish(self, ready: Ready, late: Sequence[Outgoing], synced: bool) -> None:
        """After the fsync: send the rest, apply, answer, advance the core."""
        if synced:
            self.storage.finish_sync()
            self.counters["fsyncs"] += 1
        self._send(late)
        if ready.soft_state is not None:
            self._on_role_change()
        self._apply(ready)
        self._serve_reads()
        self.after_answers()  # before the core's bookkeeping: the clients wait
        self.raft.advance(ready)
        self._maybe_snapshot()

    def _send(self, messages: Sequence[Outgoing]) -> None:
        self._node.send_core_messages(messages)

    def _on_role_change(self) -> None:
        self.counters["leader_changes"] += 1
        log.info("raft: %s in term %d, leader %s", _ROLE_NAMES[self.raft.role], self.raft.term,
                 self.raft.leader_id.hex() if self.raft.leader_id else None)
        if self.raft.role is Role.LEADER:
            return
        # Reads the deposed leader had not confirmed never will be.
        unconfirmed = [rid for rid, read in self._reads.items() if read.read_index is None]
        for request_id in unconfirmed:
            read = self._reads.pop(request_id)
            read.answer(KVAnswer(call_id=read.call.call_id, status="unavailable",
                                 leader_id=self.raft.leader_id,
                                 detail="leadership changed; retry"))
        if not self._writes:
            return
        # Proposals of a deposed leader may or may not commit: the client retries at the
        # new leader with the same sequence number and the store answers it once.
        pending, self._writes = self._writes, {}
        self._proposed.clear()
        self._writes_pending = 0
        for waiting in (waiting for writes in pending.values() for waiting in writes):
            waiting.answer(KVAnswer(call_id=waiting.call.call_id, status="unavailable",
                                    leader_id=self.raft.leader_id,
                                    detail="leadership changed; retry"))

    def _apply(self, ready: Ready) -> None:
        if ready.snapshot is not None and ready.snapshot.index > self._applied:
            self.kv = KVStore.restore(ready.snapshot.data, self._config.kv_settings())
            self._applied = ready.snapshot.index
            self._request_marks.clear()  # the log below is the snapshot's now
            self._requests_at_snapshot = self._requests_applied
            self.counters["snapshots_installed"] += 1
        kv = self.kv
        writes = self._writes
        marks = self._request_marks
        for entry in ready.committed_entries:
            index = entry.index
            if index <= self._applied:
                continue
            self._applied = index
            if entry.kind is not EntryKind.NORMAL or not entry.data:
                continue
            responses = kv.apply_entry(index, entry.data)
            applied = len(responses)
            waiting = writes.pop(index, None) if writes else None
            if waiting is not None:
                self._forget(waiting)
                if waiting[0].data == entry.data:
                    self._answer_applied(waiting, responses)
                else:  # another leader's entry took the slot: retry decides
                    for write in waiting:
                        write.answer(KVAnswer(call_id=write.call.call_id, status="unavailable",
                                              detail="the request lost its log slot; retry"))
            self.counters["writes_applied"] += applied
            self._requests_applied += applied
            marks.append((index, self._requests_applied))
        for state in ready.read_states:
            read = self._reads.get(state.request_id)
            if read is not None:
                read.read_index = state.index

    def _answer_applied(self, writes: list[_Waiting], responses: list[Response]) -> None:
        """Answer an entry's ``writes`` with their ``responses``: in one call when
        they share their ``written`` callback (the writes of one payload do)."""
        written = writes[0].written
        if written is not None and all(write.written is written for write in writes):
            written([write.call.call_id for write in writes],
                    [encode_response(response) for response in responses])
            return
        for write, response in zip(writes, responses, strict=True):
            if write.written is not None:
                write.written([write.call.call_id], [encode_response(response)])
            else:
                write.answer(ok_answer(write.call.call_id, encode_response(response)))

    def _forget(self, writes: list[_Waiting]) -> None:
        """``writes`` (one entry's) are answered or about to be: no longer pending."""
        self._writes_pending -= len(writes)
        proposed = self._proposed
        if proposed:
            for waiting in writes:
                proposed.pop((waiting.call.client_id, waiting.call.seq), None)

    def _serve_reads(self) -> None:
        if not self._reads:
            return
        applied = self._applied
        done = [rid for rid, read in self._reads.items()
                if read.read_index is not None and read.read_index <= applied]
        for request_id in done:
            read = self._reads.pop(request_id)
            assert isinstance(read.call, KVCall)
            read.answer(self._read(read.call))
            self.counters["reads_served"] += 1

    def _read(self, call: KVCall) -> KVAnswer:
        kv = self.kv
        if call.read == "get":
            item = kv.get(call.key)
            return KVAnswer(call_id=call.call_id, status="ok",
                            item=None if item is None else _item(item))
        if call.read == "get_many":
            present = (kv.get(key) for key in call.keys)
            return KVAnswer(call_id=call.call_id, status="ok",
                            items=[_item(item) for item in present if item is not None])
        if call.read == "list":
            found = kv.range(call.key, call.limit + 1, call.start_after)
            return KVAnswer(call_id=call.call_id, status="ok",
                            items=[_item(i) for i in found[: call.limit]],
                            truncated=len(found) > call.limit)
        lock = kv.lock(call.key)
        return KVAnswer(call_id=call.call_id, status="ok", lock=None if lock is None else KVLock(
            name=lock.name, owner=lock.owner, token=lock.token, lease_id=lock.lease_id,
            deadline_ms=lock.deadline_ms))

    def _maybe_snapshot(self) -> None:
        config, storage = self._config, self.storage
        if self._requests_applied - self._requests_at_snapshot < config.snapshot_interval_entries:
            return
        if self.raft.applied_index < self._applied:
            return  # the core has not caught up with what we applied (next Ready)
        storage.create_snapshot(self._applied, self.raft.conf_state, self.kv.snapshot())
        self._requests_at_snapshot = self._requests_applied
        # Keep the entries that hold the last snapshot_keep_entries requests.
        keep_from, marks, compact_to = (
            self._requests_applied - config.snapshot_keep_entries, self._request_marks, 0)
        while marks and marks[0][1] <= keep_from:
            compact_to = marks.popleft()[0]
        if compact_to:
            storage.compact(compact_to)
        self.counters["snapshots_taken"] += 1

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``raft`` section of the node's status."""
        raft = self.raft
        return {
            "role": _ROLE_NAMES[raft.role],
            "term": raft.term,
            "leader_id": raft.leader_id.hex() if raft.leader_id else None,
            "commit_index": raft.commit_index,
            "applied_index": self._applied,
            "voters": [v.hex() for v in raft.voters],
            "learners": [v.hex() for v in raft.learners],
            "keys": len(self.kv),
            "last_index": raft.last_index,
            "progress": raft.progress_status(),
            "pending_calls": self._writes_pending + len(self._reads),
            "counters": {**self.counters, **raft.counters},
            "log": self.storage.log.stats,
        }


def _item(item: Any) -> KVItem:
    return KVItem(key=item.key, value=item.value, version=item.version,
                  create_index=item.create_index, mod_index=item.mod_index,
                  lease_id=item.lease)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000
