"""Scenario ``raft``: the replicated KV store on Raft under faults, checked for safety.

How this works. Every node runs a ``RaftHost``: the real ``RaftNode`` with the
default ``RaftSettings``, a ``SimRaftStorage`` on the node's simulated disk and
a ``KVStore``, packaged as one protocol core for the simulator. The host
carries out each ``Ready`` as the real node must: it writes the snapshot,
entries and hard state, then waits for the fsync (a small random latency, so
a crash can land between the write and the sync and lose it), and only then
sends the Ready's messages, applies its committed entries to the KV store,
serves its reads and calls ``advance``. One Ready is in flight at a time, so
whatever arrives meanwhile is written by the next one (group commit); a
leader holds the key writes submitted during an fsync and proposes them as one
batch entry after it, as the runtime's leader joins the writes that arrive
together. Every
``snapshot_interval_entries`` applied entries it snapshots the KV store and
compacts the log, so lagging and restarted nodes catch up by snapshot too. A
restarted node recovers its storage from the disk (only synced data survived;
a torn tail is cut off), its KV store from the snapshot, and replays the
committed entries after it.

Clients (``clients`` of them, one request at a time each, on ``keys`` keys)
run during the fault period: get, put, compare-and-set and delete. A client
calls a node's host directly: writes are proposed on the leader (a follower
answers with its leader, and the client follows the redirect); reads go
through ReadIndex on any node with a known leader and are served once that
node's KV store has applied the read index. A request unanswered within
``attempt_timeout_s`` is retried on another node with the same (client id,
sequence number), so the store applies it at most once; one unanswered within
``op_timeout_s`` is recorded as of unknown outcome and the client starts a new
session. Every operation goes into a linearizability ``History`` on virtual
time.

The nemesis faults the cluster for ``duration_s``; then everything heals and
the run continues until the cluster converges: one leader, followed by every
up node, everything committed and applied everywhere, equal KV states. That
must happen within ``settle_bound_s`` = 10 elections' worth of randomized
timeouts (10 * 2T, T the election timeout; 20 s with the defaults): after the
heal an election takes at most 2T, a split vote costs another round, and
catching up (log or snapshot) takes milliseconds on the simulated LAN. Then a
final read of every key through the leader goes into the history too, so an
acknowledged write that was lost shows up as a non-linearizable history.

Checked: the five Raft safety properties after every step
(``sim.raft_checkers``), convergence within the bound (when a majority is up
after healing), equal KV states, every final read answered, the history
linearizable under ``KVModel(DeleteVersioning.RESET)`` (the KV store restarts
a deleted key's version at 1), and no message storm: a node sending more than
``PAYLOADS_PER_S_MAX`` payloads in a second is reported and the excess
dropped, which Raft sees as loss, so a runaway core ends its run with a
violation instead of exhausting memory.

Metrics: ``commits`` (highest committed index), ``elections`` (terms that had
a leader), ``max_term``, ``client_ops_ok``, ``client_ops_unknown``,
``linearizable`` (1/0), ``leader_failover_s_p50`` (from a crash, pause or
minority partition of the leader until a new leader is seen, while the old one
is still out), ``converge_s``, disk losses and torn tails.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

from pydantic import BaseModel

from consensus.core import Incoming, Outgoing, ProtocolCore
from consensus.kvstore import (
    Command,
    CommandError,
    CompareAndSet,
    Delete,
    ErrorCode,
    Item,
    KVStore,
    Put,
    Request,
    Response,
    decode_entry,
    encode_entry,
    encode_request,
    may_share_entry,
)
from consensus.raft import (
    MESSAGE_KINDS,
    CompactedError,
    ConfState,
    EntryKind,
    RaftNode,
    RaftSettings,
    Ready,
    Role,
    UnavailableError,
)
from sim.linearizability import DeleteVersioning, History, KVModel, OpHandle, check
from sim.nemesis import FaultAction
from sim.network import NetworkSettings
from sim.node import NodeContext, NodeState, SimNode
from sim.raft_checkers import Applied, RaftSafety, RaftSafetyChecker, Written
from sim.raft_storage import SimRaftStorage
from sim.rng import Streams
from sim.scenario import RunOptions, RunResult, build_nemesis, heal_everything, percentile
from sim.world import Violation, World

__all__ = ["PAYLOADS_PER_S_MAX", "RaftHost", "RaftScenario", "settle_bound_s"]

PAYLOADS_PER_S_MAX = 20_000
"""Payloads one node may send per second (of its clock) before its host calls it a
message storm and drops the rest: a busy leader of 5 voters sends about a thousand
(heartbeats, a window of appends per peer per client batch, answers)."""

HELD_PER_ENTRY_MAX = 64
"""Key writes a leader host joins into one batch entry at most (those held while an
fsync was in progress)."""

_SETTLE_ELECTIONS = 10
# Client behaviour (virtual seconds). A pause between requests keeps histories a
# few thousand operations long per minute, which the linearizability check
# decides in well under a second.
_THINK_S = (0.01, 0.1)
# After a refused connection or a node without a leader: about one heartbeat.
_BACKOFF_S = 0.1
# Following a redirect: one more client round trip on the LAN.
_HOP_S = 0.001
# The first election takes one to two seconds; requests before it only retry.
_WARMUP_S = 1.0
# How often a compare-and-set uses the version the client last saw (else a guess):
# mostly successes, some failures.
_CAS_KNOWN_VERSION = 0.7
_FINAL_CLIENT = "final"
# Storms repeat on every Ready while they last: the first few tell the story.
_STORMS_REPORTED = 5


def settle_bound_s(settings: RaftSettings) -> float:
    """How long after healing the cluster must have converged (see the module doc)."""
    return _SETTLE_ELECTIONS * 2 * settings.election_timeout_ticks * settings.tick_interval_s


# -- the host: one node's Raft, storage and KV store as one core -----------------------


#: Called with a read's item (None: absent) once it may be served.
ReadCallback = Callable[[Item | None], None]
#: Called with a write's response once its entry is applied.
WriteCallback = Callable[[Response], None]
#: Schedules its argument to run once the pending fsync completes.
SyncScheduler = Callable[[Callable[[], None]], None]


@dataclass(slots=True)
class _Read:
    key: str
    done: ReadCallback
    index: int | None = None


class RaftHost:
    """One node incarnation's ``RaftNode``, ``SimRaftStorage`` and ``KVStore`` as a core.

    ``take_outbox`` carries out Readies (persist, fsync, send, apply, advance)
    until the core has nothing more or a Ready waits for its fsync;
    ``sync_later`` schedules the fsync's completion (None: fsync at once). With
    ``observe`` the host keeps what it wrote and applied for the safety checker.
    ``totals`` collects counts across incarnations (snapshots taken and
    installed, message storms, batch entries proposed, held writes dropped);
    ``on_storm`` hears of each message storm (more than ``PAYLOADS_PER_S_MAX``
    payloads in a second, the excess dropped).
    """

    def __init__(
        self,
        *,
        context: NodeContext,
        settings: RaftSettings,
        storage: SimRaftStorage,
        sync_later: SyncScheduler | None,
        snapshot_interval_entries: int,
        snapshot_keep_entries: int,
        observe: bool = True,
        totals: dict[str, int] | None = None,
        on_storm: Callable[[str], None] | None = None,
    ) -> None:
        self.storage = storage
        snapshot = storage.snapshot()
        #: The replicated state machine, as of ``applied``.
        self.kv = KVStore.restore(snapshot.data) if snapshot.index > 0 else KVStore()
        #: The last index applied to ``kv`` (Raft entries, no-ops included).
        self.applied = snapshot.index
        self.raft = RaftNode(node_id=context.node_id, settings=settings, storage=storage,
                             rng=context.rng, now=context.now())
        self._wall_ms = context.wall_ms
        self._sync_later = sync_later
        self._snapshot_interval = snapshot_interval_entries
        self._snapshot_keep = snapshot_keep_entries
        self._observe = observe
        self._read_prefix = f"{context.name}/{context.restarts}/".encode()
        self._reads_started = 0
        self._outbox: list[Outgoing] = []
        self._pending: Ready | None = None
        self._synced = True
        self._writes: dict[tuple[str, int], WriteCallback] = {}
        self._held: list[Request] = []  # key writes waiting for the next batch entry
        self._reads: dict[bytes, _Read] = {}
        self._written: list[Written] = []
        self._applied: list[Applied] = []
        #: Counts over every incarnation of every node, when the scenario passes them.
        self.totals = totals if totals is not None else {}
        self._on_storm = on_storm
        self._node_name = context.name
        self._now = context.now
        self._window = -1
        self._window_payloads = 0
        self._storm_reported = False

    # -- ProtocolCore ----------------------------------------------------------------

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """The ``raft.*`` kinds and their payload models."""
        return MESSAGE_KINDS

    def step(self, message: Incoming) -> None:
        """Feed one Raft message to the core."""
        self.raft.step(message)

    def tick(self, now: float) -> None:
        """Advance the core's clock."""
        self.raft.tick(now)

    def take_outbox(self) -> list[Outgoing]:
        """Carry out Readies as far as fsyncs allow; return what may be sent now."""
        self._pump()
        out, self._outbox = self._outbox, []
        return out

    # -- the checker's view ----------------------------------------------------------

    def take_written(self) -> list[Written]:
        """Entries persisted since the last call."""
        written, self._written = self._written, []
        return written

    def take_applied(self) -> list[Applied]:
        """Entries applied since the last call."""
        applied, self._applied = self._applied, []
        return applied

    @property
    def idle(self) -> bool:
        """True when no Ready waits for its fsync."""
        return self._pending is None

    # -- clients ---------------------------------------------------------------------

    def submit_write(self, client_id: str, seq: int, command: Command,
                     done: WriteCallback) -> tuple[bool, bytes | None]:
        """Propose a client's write if this node leads: (accepted, the leader's id).

        ``done`` gets the response when the entry is applied here (a retry that the
        store deduplicates answers with the stored response).
        """
        raft = self.raft
        if raft.role is not Role.LEADER:
            return False, raft.leader_id
        # The leader stamps the request with its clock (see consensus.kvstore.commands).
        request = Request(client_id, seq, max(0, self._wall_ms()), command)
        if not self._synced and may_share_entry(command):
            # Held until the fsync in progress completes, then proposed with the
            # others held meanwhile as one batch entry: group commit, as the
            # runtime's leader batches the writes that arrive together.
            self._held.append(request)
        elif raft.propose(encode_request(request)) is None:
            return False, None
        self._writes[(client_id, seq)] = done
        return True, raft.node_id

    def submit_read(self, key: str, done: ReadCallback) -> tuple[bytes | None, bytes | None]:
        """Start a linearizable read of ``key``: (request id or None if refused, leader)."""
        raft = self.raft
        if raft.role is not Role.LEADER and raft.leader_id is None:
            return None, None
        self._reads_started += 1
        request_id = self._read_prefix + str(self._reads_started).encode()
        self._reads[request_id] = _Read(key, done)
        raft.read_index(request_id)
        return request_id, raft.leader_id

    def cancel_write(self, client_id: str, seq: int) -> None:
        """Forget a write's callback (its client gave up on this node)."""
        self._writes.pop((client_id, seq), None)

    def cancel_read(self, request_id: bytes) -> None:
        """Forget a read (its client gave up on this node)."""
        self._reads.pop(request_id, None)

    # -- carrying out Readies ------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            ready = self._pending
            if ready is not None:
                if not self._synced:
                    return
                self._pending = None
                self._finish(ready)
            self._propose_held()
            if not self.raft.has_ready():
                return
            ready = self.raft.ready()
            self._pending = ready
            if self._persist(ready):
                self._synced = False
                if self._sync_later is None:
                    self._on_synced()
                else:
                    self._sync_later(self._on_synced)

    def _propose_held(self) -> None:
        """Propose the writes held during the last fsync, in batches of at most
        ``HELD_PER_ENTRY_MAX``; a write that cannot be proposed (leadership lost, or
        the leader busy) is left to its client's retry, as a lost message is."""
        held, self._held = self._held, []
        for start in range(0, len(held), HELD_PER_ENTRY_MAX):
            batch = held[start:start + HELD_PER_ENTRY_MAX]
            if self.raft.role is not Role.LEADER or self.raft.propose(encode_entry(batch)) is None:
                self._count("held_writes_dropped", len(batch))
            elif len(batch) > 1:
                self._count("batch_entries")

    def _on_synced(self) -> None:
        self.storage.sync()
        self._synced = True

    def _persist(self, ready: Ready) -> bool:
        """Write the Ready's snapshot, entries and hard state (in that order); True if
        anything was written (and so must be synced before the messages leave)."""
        storage, raft = self.storage, self.raft
        wrote = False
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
            wrote = True
        if ready.entries:
            storage.append(ready.entries)
            if self._observe:
                first = ready.entries[0].index
                try:
                    prev_term: int | None = storage.term(first - 1)
                except (CompactedError, UnavailableError):
                    prev_term = None
                leader_term = raft.term if raft.role is Role.LEADER else None
                self._written.append(Written(prev_term, ready.entries, leader_term))
            wrote = True
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
            wrote = True
        return wrote

    def _finish(self, ready: Ready) -> None:
        """The Ready is durable: send, apply, serve reads, advance, maybe snapshot."""
        self._send(ready.messages)
        if ready.snapshot is not None:
            self.kv = KVStore.restore(ready.snapshot.data)
            self.applied = ready.snapshot.index
            self._count("snapshots_installed")
        term = self.raft.term
        for entry in ready.committed_entries:
            if entry.index <= self.applied:
                continue  # inside a snapshot installed meanwhile
            self.applied = entry.index
            if self._observe:
                self._applied.append(Applied(term, entry))
            if entry.kind is EntryKind.NORMAL and entry.data:
                responses = self.kv.apply_entry(entry.index, entry.data)
                self._answer(entry.data, responses)
        for state in ready.read_states:
            read = self._reads.get(state.request_id)
            if read is not None:
                read.index = state.index
        self.raft.advance(ready)
        self._serve_reads()
        self._maybe_snapshot()

    def _send(self, messages: tuple[Outgoing, ...]) -> None:
        window = int(self._now())
        if window != self._window:
            self._window, self._window_payloads, self._storm_reported = window, 0, False
        budget = PAYLOADS_PER_S_MAX - self._window_payloads
        payloads = sum(len(out.payloads) for out in messages)
        if payloads <= budget:
            self._outbox.extend(messages)
            self._window_payloads += payloads
            return
        # A message storm in the core: no node of a small cluster sends anywhere near
        # this legitimately. Send only what the budget allows, which Raft sees as
        # message loss, so the run stays safe to check and ends instead of
        # exhausting memory; report it once per second.
        kinds: dict[str, int] = {}
        for out in messages:
            kinds[out.kind] = kinds.get(out.kind, 0) + len(out.payloads)
            if len(out.payloads) <= budget:
                budget -= len(out.payloads)
                self._window_payloads += len(out.payloads)
                self._outbox.append(out)
        if not self._storm_reported:
            self._storm_reported = True
            self._count("message_storms")
            if self._on_storm is not None:
                raft = self.raft
                self._on_storm(f"{self._node_name} ({raft.role.value}, term {raft.term}) sent "
                               f"over {PAYLOADS_PER_S_MAX} payloads within a second; one "
                               f"Ready alone had {payloads} ({kinds})")

    def _answer(self, data: bytes, responses: list[Response]) -> None:
        if not self._writes:
            return
        for request, response in zip(decode_entry(data), responses, strict=True):
            if isinstance(request, CommandError):
                continue
            done = self._writes.pop((request.client_id, request.seq), None)
            if done is not None:
                done(response)

    def _serve_reads(self) -> None:
        ready = [rid for rid, read in self._reads.items()
                 if read.index is not None and read.index <= self.applied]
        for request_id in ready:
            read = self._reads.pop(request_id)
            read.done(self.kv.get(read.key))

    def _maybe_snapshot(self) -> None:
        storage = self.storage
        if self.applied - storage.snapshot().index < self._snapshot_interval:
            return
        storage.create_snapshot(self.applied, self.raft.conf_state, self.kv.snapshot())
        storage.compact(self.applied - self._snapshot_keep)
        self._count("snapshots_taken")

    def _count(self, name: str, count: int = 1) -> None:
        self.totals[name] = self.totals.get(name, 0) + count


# -- clients -------------------------------------------------------------------------


@dataclass(slots=True)
class _Op:
    client: _Client
    kind: str
    key: str
    args: tuple[Any, ...]
    command: Command | None
    seq: int
    handle: OpHandle
    invoked: float
    deadline: float
    attempts: int = 0
    done: bool = False
    result: Any = None


class _Client:
    """One client: a session (id, next sequence number) and what it knows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions = 0
        self.session = f"{name}.0"
        self.seq = 0
        self.ops = 0
        self.leader: int | None = None
        self.versions: dict[str, int] = {}
        self.next_cas: tuple[str, bytes, int] | None = None
        """Counters workload: the compare-and-set its last read calls for."""

    def new_session(self) -> None:
        """Start over after an operation of unknown outcome (see KV sessions)."""
        self.sessions += 1
        self.session = f"{self.name}.{self.sessions}"
        self.seq = 0


class _Workload:
    """Clients issuing requests to the nodes' hosts, recorded in ``history``."""

    def __init__(self, world: World, rng: Random, *, keys: int, attempt_timeout_s: float,
                 op_timeout_s: float, stop_s: float, counters: bool = False) -> None:
        self.counters = counters
        self.acked: dict[str, int] = {}
        """Counters workload: increments acknowledged per key."""
        self.unacked: dict[str, int] = {}
        """Counters workload: increments of unknown outcome per key."""
        self.cas_conflicts = 0
        self.world = world
        self.rng = rng
        self.keys = [f"k{i}" for i in range(keys)]
        self.attempt_timeout_s = attempt_timeout_s
        self.op_timeout_s = op_timeout_s
        self.stop_s = stop_s
        self.history = History()
        self.ok = 0
        self.unknown = 0
        self.refused = 0
        self.latencies: list[float] = []
        self.open_ops: list[_Op] = []

    # -- driving -----------------------------------------------------------------------

    def start_clients(self, count: int, at: float) -> None:
        """Start ``count`` clients, each at a random moment of the first 100 ms."""
        for i in range(count):
            client = _Client(f"c{i}")
            self.world.call_at(at + self.rng.uniform(0.0, 0.1), self._starter(client))

    def _starter(self, client: _Client) -> Callable[[], None]:
        return lambda: self._next(client)

    def final_reads(self, leader: int) -> list[_Op]:
        """Read every key once, on node ``leader``; returns the operations."""
        client = _Client(_FINAL_CLIENT)
        client.leader = leader
        return [self._invoke(client, "get", key, (), None) for key in self.keys]

    def _next(self, client: _Client) -> None:
        if self.world.now >= self.stop_s:
            return
        kind, args, command = self._draw(client)
        self._invoke(client, kind, args[0], args[1:], command)

    def _draw(self, client: _Client) -> tuple[str, tuple[Any, ...], Command | None]:
        if self.counters:
            return self._draw_increment(client)
        rng = self.rng
        key = rng.choice(self.keys)
        client.ops += 1
        value = f"{client.name}:{client.ops}".encode()
        roll = rng.random()
        if roll < 0.3:
            return "get", (key,), None
        if roll < 0.65:
            return "put", (key, value), Put(key, value)
        if roll < 0.85:
            if rng.random() < _CAS_KNOWN_VERSION:
                expect = client.versions.get(key, 0)
            else:
                expect = rng.randrange(4)
            return "cas", (key, value, expect), CompareAndSet(key, value, expect)
        return "delete", (key,), Delete(key)

    def _draw_increment(self, client: _Client) -> tuple[str, tuple[Any, ...], Command | None]:
        """Optimistic concurrency: read a counter, then compare-and-set it to one more
        at the version read; a lost compare-and-set reads again."""
        client.ops += 1
        if client.next_cas is not None:
            key, value, expect = client.next_cas
            client.next_cas = None
            return "cas", (key, value, expect), CompareAndSet(key, value, expect)
        return "get", (self.rng.choice(self.keys),), None

    def _invoke(self, client: _Client, kind: str, key: str, args: tuple[Any, ...],
                command: Command | None) -> _Op:
        now = self.world.now
        seq = 0
        if command is not None:
            client.seq += 1
            seq = client.seq
        handle = self.history.invoke(client.session, kind, key, args, at=now)
        op = _Op(client, kind, key, args, command, seq, handle, now, now + self.op_timeout_s)
        self.open_ops.append(op)
        self._attempt(op, client.leader)
        return op

    def _attempt(self, op: _Op, target: int | None) -> None:
        if op.done:
            return
        world = self.world
        if world.now >= op.deadline:
            self._give_up(op)
            return
        index = target if target is not None else self.rng.randrange(len(world.nodes))
        node = world.nodes[index]
        if node.state is NodeState.CRASHED:
            # Connection refused at once: try another node after a short back-off.
            op.client.leader = None
            self._later(_BACKOFF_S, lambda: self._attempt(op, None))
            return
        if node.state is NodeState.PAUSED:
            # The request sits unread in a stopped process: only the timeout answers.
            self._arm_timeout(op, op.attempts + 1, lambda: None)
            op.attempts += 1
            return
        host = node.core(RaftHost)
        client = op.client
        if op.command is None:
            request_id, leader = host.submit_read(op.key, lambda item: self._read_done(op, item))
            accepted = request_id is not None
            rid = request_id or b""

            def cancel() -> None:
                host.cancel_read(rid)
        else:
            accepted, leader = host.submit_write(
                client.session, op.seq, op.command,
                lambda response: self._write_done(op, index, response))
            session, seq = client.session, op.seq

            def cancel() -> None:
                host.cancel_write(session, seq)
        node.flush()
        if accepted:
            op.attempts += 1
            self._arm_timeout(op, op.attempts, cancel)
            if op.command is None and leader is not None:
                client.leader = self._index_of(leader)
            return
        hint = self._index_of(leader) if leader is not None else None
        if hint is not None and hint != index:
            client.leader = hint
            self._later(_HOP_S, lambda: self._attempt(op, hint))  # follow the redirect
        else:
            client.leader = None
            self._later(_BACKOFF_S, lambda: self._attempt(op, None))

    def _arm_timeout(self, op: _Op, attempt: int, cancel: Callable[[], None]) -> None:
        def expire() -> None:
            if op.done or op.attempts != attempt:
                return
            cancel()
            op.client.leader = None
            self._attempt(op, None)

        self._later(self.attempt_timeout_s, expire)

    def _later(self, delay: float, function: Callable[[], None]) -> None:
        self.world.call_at(self.world.now + delay, function)

    def _index_of(self, node_id: bytes) -> int | None:
        try:
            return self.world.node(node_id).index
        except KeyError:
            return None

    # -- outcomes ----------------------------------------------------------------------

    def _read_done(self, op: _Op, item: Item | None) -> None:
        result = (None, 0) if item is None else (item.value, item.version)
        self._complete(op, result)

    def _write_done(self, op: _Op, index: int, response: Response) -> None:
        if op.done:
            return
        op.client.leader = index
        error = response.error
        result: Any
        if op.kind == "put" and error is None:
            result = response.version
        elif op.kind == "delete" and error in (None, ErrorCode.NOT_FOUND):
            result = error is None
        elif op.kind == "cas" and error in (None, ErrorCode.CAS_FAILED):
            result = (error is None, response.version)
        else:
            # A refusal the workload never provokes (session_expired, too_large...):
            # it was not applied, which "unknown" covers; counted so tests can see it.
            self.refused += 1
            self._give_up(op)
            return
        self._complete(op, result)

    def _complete(self, op: _Op, result: Any) -> None:
        if op.done:
            return
        op.done = True
        op.result = result
        now = self.world.now
        self.history.complete(op.handle, result, at=now)
        self.ok += 1
        self.latencies.append(now - op.invoked)
        if self.counters and op.client.name != _FINAL_CLIENT:
            self._count_increment(op, result)
        versions = op.client.versions
        if op.kind == "get" or op.kind == "cas":
            versions[op.key] = result[1]
        elif op.kind == "put":
            versions[op.key] = result
        elif op.kind == "delete":
            versions[op.key] = 0
        self._then_next(op.client)

    def _count_increment(self, op: _Op, result: Any) -> None:
        if op.kind == "get":
            value, version = result
            op.client.next_cas = (op.key, str(int(value or b"0") + 1).encode(), version)
        elif op.kind == "cas" and result[0]:
            self.acked[op.key] = self.acked.get(op.key, 0) + 1
        elif op.kind == "cas":
            self.cas_conflicts += 1

    def _give_up(self, op: _Op) -> None:
        if op.done:
            return
        if self.counters and op.kind == "cas":
            self.unacked[op.key] = self.unacked.get(op.key, 0) + 1
        op.client.next_cas = None
        op.done = True
        self.history.unknown(op.handle)
        self.unknown += 1
        op.client.new_session()
        self._then_next(op.client)

    def _then_next(self, client: _Client) -> None:
        if client.name != _FINAL_CLIENT:
            self._later(self.rng.uniform(*_THINK_S), lambda: self._next(client))


# -- the scenario ---------------------------------------------------------------------


class RaftScenario:
    """Raft and the KV store under the nemesis; see the module docstring.

    ``torn_writes``: a crash keeps a random prefix of unsynced log appends.
    ``fsync``: False builds a deliberately broken storage that never syncs (for
    proving the checkers catch it). ``fsync_latency_s``: (low, high) of the
    uniform delay between writing a Ready and its fsync completing.
    """

    name = "raft"

    def __init__(
        self,
        settings: RaftSettings | None = None,
        *,
        clients: int = 4,
        keys: int = 4,
        torn_writes: bool = False,
        fsync: bool = True,
        fsync_latency_s: tuple[float, float] = (0.0005, 0.003),
        snapshot_interval_entries: int = 128,
        snapshot_keep_entries: int = 32,
        attempt_timeout_s: float = 1.0,
        op_timeout_s: float = 6.0,
        linearizability_time_limit_s: float = 60.0,
        counters: bool = False,
    ) -> None:
        self.settings = settings or RaftSettings()
        self.counters = counters
        if counters:
            self.name = "coordination"
        if clients < 0 or keys < 1:
            raise ValueError(f"clients ({clients}) must be >= 0 and keys ({keys}) >= 1")
        low, high = fsync_latency_s
        if not 0 <= low <= high:
            raise ValueError(f"fsync_latency_s ({fsync_latency_s}) must be 0 <= low <= high")
        if snapshot_interval_entries < 1 or snapshot_keep_entries < 0:
            raise ValueError(
                f"snapshot_interval_entries ({snapshot_interval_entries}) must be >= 1 and "
                f"snapshot_keep_entries ({snapshot_keep_entries}) >= 0")
        if not 0 < attempt_timeout_s <= op_timeout_s:
            raise ValueError(f"attempt_timeout_s ({attempt_timeout_s}) must be positive and at "
                             f"most op_timeout_s ({op_timeout_s})")
        self.clients = clients
        self.keys = keys
        self.torn_writes = torn_writes
        self.fsync = fsync
        self.fsync_latency_s = fsync_latency_s
        self.snapshot_interval_entries = snapshot_interval_entries
        self.snapshot_keep_entries = snapshot_keep_entries
        self.attempt_timeout_s = attempt_timeout_s
        self.op_timeout_s = op_timeout_s
        self.linearizability_time_limit_s = linearizability_time_limit_s

    def describe(self) -> str:
        """The scenario's own options, for the run header."""
        s = self.settings
        return (f"# raft: election_timeout_ticks={s.election_timeout_ticks} "
                f"heartbeat_interval_ticks={s.heartbeat_interval_ticks} "
                f"tick_interval_s={s.tick_interval_s} pre_vote={s.pre_vote} "
                f"check_quorum={s.check_quorum} clients={self.clients} keys={self.keys} "
                f"fsync={self.fsync} fsync_latency_s={self.fsync_latency_s} "
                f"torn_writes={self.torn_writes} "
                f"snapshot_interval_entries={self.snapshot_interval_entries} "
                f"snapshot_keep_entries={self.snapshot_keep_entries} "
                f"attempt_timeout_s={self.attempt_timeout_s} op_timeout_s={self.op_timeout_s}")

    def run(self, options: RunOptions) -> RunResult:
        """Run one seed; see the module docstring for what is checked."""
        n, settings = options.nodes, self.settings
        nemesis = build_nemesis(options, heal_at=options.duration_s)
        conf = ConfState.of(World.node_ids_for(options.seed, n))
        streams = Streams(options.seed)
        worlds: list[World] = []  # the world, once built (the first cores start inside it)
        recoveries = {"torn_bytes": 0, "torn_tails_repaired": 0, "dropped_for_snapshot": 0}
        totals = {"snapshots_taken": 0, "snapshots_installed": 0, "message_storms": 0,
                  "batch_entries": 0, "held_writes_dropped": 0}
        storms: list[Violation] = []

        def on_storm(message: str) -> None:
            at = worlds[0].now if worlds else 0.0
            storms.append(Violation("raft.message_storm", at, message))

        def factory(context: NodeContext) -> list[ProtocolCore]:
            storage = SimRaftStorage.open(context.disk, conf, fsync=self.fsync)
            report = storage.report
            recoveries["torn_bytes"] += report.torn_bytes
            recoveries["torn_tails_repaired"] += 1 if report.torn_bytes else 0
            recoveries["dropped_for_snapshot"] += report.dropped_for_snapshot
            rng = streams.stream(f"fsync/{context.index}/{context.restarts}")
            sync_later = self._sync_scheduler(worlds, context.index, context.restarts, rng)
            return [RaftHost(context=context, settings=settings, storage=storage,
                             sync_later=sync_later,
                             snapshot_interval_entries=self.snapshot_interval_entries,
                             snapshot_keep_entries=self.snapshot_keep_entries,
                             totals=totals, on_storm=on_storm)]

        checker = RaftSafetyChecker(_host)
        world = World(
            options.seed, n, factory,
            network=NetworkSettings(loss=options.loss or 0.0),
            tick_interval_s=settings.tick_interval_s,
            nemesis=nemesis,
            checkers=[checker],
            torn_writes=self.torn_writes,
        )
        worlds.append(world)
        description = world.describe() + "\n" + self.describe()
        workload = _Workload(world, streams.stream("clients"), keys=self.keys,
                             attempt_timeout_s=self.attempt_timeout_s,
                             op_timeout_s=self.op_timeout_s, stop_s=options.duration_s,
                             counters=self.counters)
        workload.start_clients(self.clients, min(_WARMUP_S, options.duration_s / 2))
        world.advance(options.duration_s)
        heal_everything(world, options.loss or 0.0)
        settle = settle_bound_s(settings)
        deadline = options.duration_s + settle
        violations: list[Violation] = []
        quorum = len(world.up_nodes()) > n // 2
        converged = quorum and world.run_until(lambda: _converged(world), deadline)
        converge_s = world.now - options.duration_s if converged else math.nan
        if quorum and not converged:
            violations.append(Violation("raft.convergence", world.now,
                                        f"not converged {settle:.1f} s after healing: "
                                        + _disagreement(world)))
        finals: list[_Op] = []
        acked_before_finals: dict[str, int] = {}
        if converged:
            violations += _kv_divergence(world)
            acked_before_finals = dict(workload.acked)
            finals = workload.final_reads(_leader_index(world))
            answered = world.run_until(lambda: all(op.done for op in finals),
                                       world.now + settle)
            if not answered:
                missing = [op.key for op in finals if not op.done]
                violations.append(Violation("raft.final_read", world.now,
                                            f"final reads of {missing} unanswered after "
                                            f"{settle:.1f} s"))

        # Let every client operation still open finish or time out, so the history
        # holds each one's final outcome.
        last_deadline = max((op.deadline for op in workload.open_ops), default=0.0)
        world.run_until(lambda: all(op.done for op in workload.open_ops),
                        max(world.now, last_deadline + self.attempt_timeout_s))
        if self.counters and finals and all(op.done for op in finals):
            violations += _lost_increments(workload, acked_before_finals, finals, world.now)
        violations = world.check() + storms[:_STORMS_REPORTED] + violations
        verdict = check(workload.history, KVModel(DeleteVersioning.RESET),
                        time_limit_s=self.linearizability_time_limit_s)
        if verdict.linearizable is not True:
            violations.append(Violation("raft.linearizability", world.now,
                                        verdict.explanation))
        safety = checker.safety
        failovers = _failovers(nemesis.actions() if nemesis else [], safety, n)
        disk_lost = sum(node.disk.counters.bytes_lost for node in world.nodes)
        torn_tails = sum(node.disk.counters.torn_tails for node in world.nodes)
        return RunResult(
            scenario=self.name,
            seed=options.seed,
            violations=violations,
            trace_digest=world.trace_digest(),
            metrics={
                "commits": float(safety.highest_committed),
                "elections": float(len(safety.leaders)),
                "max_term": float(safety.max_term),
                "client_ops_ok": float(workload.ok),
                "client_ops_unknown": float(workload.unknown),
                "client_ops_refused": float(workload.refused),
                "client_latency_s_p50": percentile(workload.latencies, 0.5),
                "client_latency_s_p99": percentile(workload.latencies, 0.99),
                "linearizable": 1.0 if verdict.linearizable else 0.0,
                "leader_failover_s_p50": percentile(failovers, 0.5),
                "leader_failover_s_p99": percentile(failovers, 0.99),
                "leader_failover_samples": float(len(failovers)),
                "converge_s": converge_s,
                "settle_bound_s": settle,
                "disk_bytes_lost": float(disk_lost),
                "disk_torn_tails": float(torn_tails),
                "torn_tails_repaired": float(recoveries["torn_tails_repaired"]),
                "torn_bytes_cut": float(recoveries["torn_bytes"]),
                "log_entries_dropped_for_snapshot": float(recoveries["dropped_for_snapshot"]),
                "snapshots_taken": float(totals["snapshots_taken"]),
                "snapshots_installed": float(totals["snapshots_installed"]),
                "message_storms": float(totals["message_storms"]),
                "batch_entries": float(totals["batch_entries"]),
                "held_writes_dropped": float(totals["held_writes_dropped"]),
                "linearizability_states": float(verdict.stats.states_explored),
                **({"increments_acked": float(sum(workload.acked.values())),
                    "increments_unknown": float(sum(workload.unacked.values())),
                    "cas_conflicts": float(workload.cas_conflicts)} if self.counters else {}),
            },
            samples={"leader_failover_s": failovers, "client_latency_s": workload.latencies},
            series={"leadership": [[at, node, term] for at, node, term in safety.leadership]},
            description=description,
            stats=world.stats(),
        )

    def _sync_scheduler(self, worlds: list[World], index: int, restarts: int,
                        rng: Random) -> SyncScheduler:
        """The fsync of node ``index``'s incarnation ``restarts``: completes after a
        random latency unless that incarnation crashed meanwhile; a paused process
        continues once resumed (the kernel completes the fsync meanwhile)."""
        low, high = self.fsync_latency_s

        def sync_later(done: Callable[[], None]) -> None:
            if not worlds:
                done()  # before the world exists (the first start): nothing to wait for
                return
            world = worlds[0]
            node = world.nodes[index]

            def complete() -> None:
                if node.restarts != restarts or node.state is NodeState.CRASHED:
                    return  # that process is gone, and the unsynced writes with it
                done()
                if node.state is NodeState.UP:
                    node.flush()

            world.call_at(world.now + rng.uniform(low, high), complete)

        return sync_later


# -- convergence and reporting ----------------------------------------------------------


def _lost_increments(workload: _Workload, acked_before: dict[str, int], finals: list[_Op],
                     at: float) -> list[Violation]:
    """Counters: each final read sees at least the increments acknowledged before it
    began, and at most all increments acknowledged or of unknown outcome once every
    client operation ended (some were still in flight during the final read)."""
    found = []
    for op in finals:
        value = int(op.result[0] or b"0") if op.result else 0
        acked = acked_before.get(op.key, 0)
        unknown = workload.unacked.get(op.key, 0)
        if value < acked:
            found.append(Violation("coordination.lost_update", at,
                                   f"{op.key} is {value} after {acked} acknowledged increments"))
        elif value > workload.acked.get(op.key, 0) + unknown:
            found.append(Violation("coordination.phantom_update", at,
                                   f"{op.key} is {value}: more than "
                                   f"{workload.acked.get(op.key, 0)} acknowledged + "
                                   f"{unknown} unknown increments"))
    return found


def _host(node: SimNode) -> RaftHost | None:
    if node.state is not NodeState.UP:
        return None
    return node.core(RaftHost)


def _up_hosts(world: World) -> list[tuple[SimNode, RaftHost]]:
    return [(node, node.core(RaftHost)) for node in world.up_nodes()]


def _leader_index(world: World) -> int:
    return next(node.index for node, host in _up_hosts(world) if host.raft.role is Role.LEADER)


def _converged(world: World) -> bool:
    hosts = _up_hosts(world)
    leaders = [host.raft for _, host in hosts if host.raft.role is Role.LEADER]
    if len(leaders) != 1:
        return False
    leader = leaders[0]
    if leader.commit_index != leader.last_index:
        return False
    return all(host.idle and host.applied == leader.commit_index
               and host.raft.leader_id == leader.node_id for _, host in hosts)


def _disagreement(world: World) -> str:
    parts = []
    for node, host in _up_hosts(world):
        raft = host.raft
        leader = raft.leader_id.hex()[:8] if raft.leader_id else None
        parts.append(f"{node.name}: {raft.role.value} term {raft.term} leader {leader} "
                     f"commit {raft.commit_index} applied {host.applied} last {raft.last_index}")
    return "; ".join(parts)


def _kv_divergence(world: World) -> list[Violation]:
    groups: dict[bytes, list[str]] = {}
    for node, host in _up_hosts(world):
        groups.setdefault(host.kv.snapshot(), []).append(node.name)
    if len(groups) <= 1:
        return []
    summary = "; ".join(str(names) for names in groups.values())
    return [Violation("raft.kv_divergence", world.now,
                      f"{len(groups)} different KV states at one applied index: {summary}")]


def _failovers(actions: Sequence[FaultAction], safety: RaftSafety, n: int) -> list[float]:
    """Seconds from the leader's crash, pause or cut into a minority until a new leader
    was seen, counted only when that happened before the old leader came back."""
    samples: list[float] = []
    leadership = safety.leadership
    for position, action in enumerate(actions):
        at = action.at
        current = max((entry for entry in leadership if entry[0] <= at),
                      key=lambda entry: entry[2], default=None)
        if current is None:
            continue
        _, leader, term = current
        if action.kind in ("crash", "pause"):
            if action.node != leader:
                continue
            back = "restart" if action.kind == "crash" else "resume"
            end = next((a.at for a in actions[position + 1:]
                        if a.kind == back and a.node == leader), math.inf)
        elif action.kind == "partition":
            group = next(g for g in action.groups if leader in g)
            if len(group) > n // 2:
                continue
            end = next((a.at for a in actions[position + 1:] if a.kind == "heal"), math.inf)
        else:
            continue
        successor = next((entry[0] for entry in leadership if entry[0] > at and entry[2] > term),
                         None)
        if successor is not None and successor <= end:
            samples.append(successor - at)
    return samples
