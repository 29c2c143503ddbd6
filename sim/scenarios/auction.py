"""Scenario ``auction``: contract-net task allocation under faults, checked end to end.

How this works. Every node runs one ``AuctionHost``: the real ``Manager`` and
``Contractor`` cores of ``agents.contract_net`` and the driver around them, as
``mesh.runtime`` will drive them. Each node's contractor has a capability set,
a concurrency limit and a fixed estimator (cost and duration per capability)
drawn from the seed (``profile/<index>``), the same in every incarnation; a won
task runs for its estimated duration times a seeded factor in [0.8, 1.2].

The task ledger. A single ``consensus.kvstore.KVStore`` inside the scenario
(``SharedLedger``) stands in for the Raft tier: every write is applied at once,
atomically, with the store's real compare-and-set version semantics, leases and
time (stamped with virtual time, as a leader stamps requests). Whether Raft
itself keeps the store linearizable under faults is the ``raft`` scenario's
business. Here the store is reachable only by a node that is up and can reach,
both ways, a majority of the *voters* (nodes ``n0`` .. ``n{v-1}``, ``v`` =
min(3, nodes)) that are up: so under a partition only the side holding a voter
majority reaches it, and with a voter majority down nobody does. Message loss
does not cut a node off from the ledger (the Raft client retries).

Keys: ``task/<id>`` (the ``agents.contract_net.ledger`` record), ``owner/<id>``
(the node managing the task: the client's node first) and ``alive/<node>``
(attached to a lease the node renews every ``scan_interval_s``). An award is
made under a lease of ``lease_ttl_s`` that the contractor renews while it works.

Drivers. A client submits a task through an up node that reaches the ledger
(``owner`` put, then ``ledger.create``), which auctions it at once. Every
``scan_interval_s`` each node reads the ledger's unfinished tasks: a task it
owns that is open and not being auctioned is auctioned (again); one awarded
under a lease that ended is reopened at the next epoch (``ledger.reopen``) and
re-auctioned; a task whose owner's ``alive`` key is gone is taken over by
compare-and-set on ``owner/<id>``. An award is recorded by compare-and-set
against the version read when the auction started, so an award raced by a
takeover loses. A result is recorded with ``ledger.complete``; one arriving for
an epoch the manager core no longer tracks (a restarted manager, a late or
duplicated message) is still handed to the ledger, whose fencing refuses it if
its epoch is stale (counted by refusal reason). A contractor stops a task when
it fails to renew its lease within ``lease_ttl_s - lease_margin_s``, and stops
an older epoch of a task as soon as it hears a call for a newer one.

Run: clients submit ``tasks_per_node`` * nodes tasks at seeded times from 10%
to 80% of ``duration_s``; the nemesis faults the cluster for ``duration_s``;
then everything heals and the run goes on until every submitted task is done or
failed, at most ``settle_bound_s`` (``SETTLE_ATTEMPTS`` attempts of
``attempt_bound_s``: owner takeover + lease expiry + scan + a full auction of
``no_bid_rounds_max`` rounds with backoff + the longest task).

Checked (``auction.*``): every submitted task ends ``done`` or ``failed`` with
its reasons (none lost); a done task has exactly one result write, made while
the record was awarded at that same epoch to that contractor; a failed one has
none; no contractor runs two epochs of one task at once; the ledger awards each
epoch at most once; a task's epoch never decreases; after every write the
ledger's ``unfinished/`` index holds exactly the tasks not final.

Metrics: ``tasks``, ``done``, ``failed``, ``reauctions`` (auctions at an epoch
above 1), ``takeovers``, ``stale_results_refused``, ``auction_latency_s_p50``
and ``_p99`` (call for proposals to the committed award), ``converge_s``.
``allocation_cost_ratio``: in a separate quiet world of the same seed (up to
``ALLOCATION_NODES_MAX`` nodes), a batch of up to ``allocation_batch_tasks``
tasks is submitted at once through one node (so its calls go out as one batch
and are awarded jointly); the sum of the winners' quoted costs is divided by
the exact minimum-cost assignment of the batch to contractor slots (each
contractor offering ``tasks_running_max`` slots; ``min_cost_assignment``).
``allocation_score_ratio`` does the same for what the default score weighs on
idle nodes, cost + duration (``default_score_at_rest``): the auction optimises
its score, not the cost alone, so this one is 1 and the cost ratio a little
above it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from random import Random

from pydantic import BaseModel

from agents.contract_net import ledger
from agents.contract_net.assignment import solve
from agents.contract_net.contractor import Contractor, Estimate, Estimator
from agents.contract_net.events import (
    AwardDecision,
    FailureReported,
    NoBids,
    ResultReported,
    StartTask,
)
from agents.contract_net.ledger import (
    KEY_PREFIX,
    OWNER_PREFIX,
    UNFINISHED_PREFIX,
    Refusal,
    TaskRecord,
    TaskState,
    Transition,
    decode_record,
)
from agents.contract_net.manager import AuctionPhase, Manager
from agents.contract_net.messages import CallForProposals, InformResult
from agents.contract_net.settings import ContractorSettings, ManagerSettings
from consensus.core import Incoming, Outgoing, ProtocolCore
from consensus.kvstore import (
    Command,
    CompareAndSet,
    CompareAndSetWithWrites,
    KVStore,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Put,
    Request,
    Response,
    Tick,
)
from sim.network import NetworkSettings
from sim.node import NodeContext, SimNode
from sim.rng import Streams
from sim.scenario import RunOptions, RunResult, build_nemesis, heal_everything, percentile
from sim.world import Violation, World

__all__ = [
    "ALLOCATION_NODES_MAX",
    "CAPABILITIES",
    "SETTLE_ATTEMPTS",
    "AuctionHost",
    "AuctionRun",
    "AuctionScenario",
    "LedgerWrite",
    "SharedLedger",
    "default_score_at_rest",
    "min_cost_assignment",
    "quoted_cost",
]

CAPABILITIES = ("demo.wordcount", "demo.sum", "demo.sleep")
"""What the simulated contractors can do; node ``i`` always offers ``CAPABILITIES[i % 3]``."""
SETTLE_ATTEMPTS = 4
"""Attempts' worth of time (``attempt_bound_s``) the settle phase may take."""
ALIVE_PREFIX = "alive/"
_CANDIDATES_MAX = 16
_DURATION_MAX_S = 3.0
_DURATION_SPREAD = 0.2
ALLOCATION_NODES_MAX = 50
"""Largest cluster for which the allocation batch (module doc) is run."""
_INFEASIBLE = 1e12
_WORDS = ("alpha", "beta", "gamma", "delta", "mesh", "agent", "raft", "gossip")


# -- the ledger: one KV store standing in for the Raft tier ----------------------------


@dataclass(frozen=True, slots=True)
class LedgerWrite:
    """A committed write of a task record: who, when, the record before and after."""

    at: float
    node: int
    before: TaskRecord | None
    after: TaskRecord


class SharedLedger:
    """The task ledger as one KV store; see the module docstring for reachability."""

    def __init__(self, nodes: int, voters: int = 3) -> None:
        self.store = KVStore()
        self.voters = tuple(range(min(voters, nodes)))
        self.world: World | None = None  # set once the world exists
        self.index = 0
        #: Every committed task-record write, in commit order.
        self.writes: list[LedgerWrite] = []
        #: Ids of tasks not final, in id order (what a range scan of ``task/`` finds).
        self.unfinished: dict[str, None] = {}
        self.index_disagreements: list[str] = []
        """Tasks whose ``unfinished/`` index key disagreed with the record after a write."""
        #: Refused transitions by reason (``RefusalReason`` value).
        self.refusals: dict[str, int] = {}

    def _now_ms(self) -> int:
        assert self.world is not None
        return round(self.world.now * 1000)

    def reachable(self, index: int) -> bool:
        """Can node ``index`` reach a majority of the up voters, both ways?"""
        world = self.world
        if world is None or not world.nodes[index].up:
            return False
        node = world.nodes[index]
        blocked = world.network.is_blocked
        count = 0
        for voter_index in self.voters:
            voter = world.nodes[voter_index]
            if voter.up and (voter_index == index or (
                not blocked(node.node_id, voter.node_id)
                and not blocked(voter.node_id, node.node_id)
            )):
                count += 1
        return count > len(self.voters) // 2

    def apply(self, node: int, command: Command) -> Response:
        """Commit ``command`` for node ``node`` (the caller checked ``reachable``)."""
        key = command.key if isinstance(command, CompareAndSet | CompareAndSetWithWrites) \
            else None
        before = self._record(key) if key is not None and key.startswith(KEY_PREFIX) else None
        self.index += 1
        response = self.store.apply_request(self.index, Request("", 0, self._now_ms(), command))
        if response.ok and key is not None and key.startswith(KEY_PREFIX):
            after = self._record(key)
            assert after is not None, key
            assert self.world is not None
            self.writes.append(LedgerWrite(self.world.now, node, before, after))
            if after.final:
                self.unfinished.pop(after.task_id, None)
            else:
                self.unfinished[after.task_id] = None
            indexed = self.store.get(UNFINISHED_PREFIX + after.task_id) is not None
            if indexed == after.final:
                self.index_disagreements.append(after.task_id)
            self.world.trace.note(
                f"ledger n{node} {after.task_id} {after.state.value} e{after.epoch}")
        return response

    def transition(self, node: int, step: Transition | Refusal) -> bool:
        """Commit a ledger transition; count a refusal. True if written."""
        if isinstance(step, Refusal):
            self.refusals[step.reason.value] = self.refusals.get(step.reason.value, 0) + 1
            return False
        return self.apply(node, step.command).ok

    def advance(self) -> None:
        """Let the store's time catch up with virtual time (leases expire)."""
        if self.store.now_ms < self._now_ms():
            self.index += 1
            self.store.apply_request(self.index, Request("", 0, self._now_ms(), Tick()))

    def read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        """The task's record and KV version, or None."""
        self.advance()
        item = self.store.get(ledger.task_key(task_id))
        return None if item is None else (decode_record(item.value), item.version)

    def get(self, key: str) -> tuple[bytes, int] | None:
        """A raw key's value and version, or None."""
        self.advance()
        item = self.store.get(key)
        return None if item is None else (item.value, item.version)

    def lease_alive(self, lease_id: int | None) -> bool:
        """Is the lease still live (in the store's time, after ``advance``)?"""
        self.advance()
        return lease_id is not None and self.store.lease(lease_id) is not None

    def _record(self, key: str) -> TaskRecord | None:
        item = self.store.get(key)
        return None if item is None else decode_record(item.value)

    def final_records(self) -> dict[str, TaskRecord]:
        """Every task record now, by id."""
        return {decode_record(i.value).task_id: decode_record(i.value)
                for i in self.store.range(KEY_PREFIX, limit=1_000_000)}


# -- what every host reports to the checkers ---------------------------------------------


@dataclass(slots=True)
class Observations:
    """Shared across hosts: what the checkers and metrics need."""

    #: (node, incarnation) -> task id -> epochs running there now
    running: dict[tuple[int, int], dict[str, set[int]]] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    auctions_at: dict[tuple[str, int], float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    reauctions: int = 0
    takeovers: int = 0
    results_adopted: int = 0
    abandoned: int = 0

    def started(self, at: float, node: int, incarnation: int, task_id: str, epoch: int) -> None:
        epochs = self.running.setdefault((node, incarnation), {}).setdefault(task_id, set())
        if epochs:
            self.violations.append(Violation(
                "auction.concurrent_awards", at,
                f"n{node} starts {task_id} epoch {epoch} while running epoch(s) "
                f"{sorted(epochs)}"))
        epochs.add(epoch)

    def stopped(self, node: int, incarnation: int, task_id: str, epoch: int) -> None:
        self.running.get((node, incarnation), {}).get(task_id, set()).discard(epoch)


# -- the host: one node's manager, contractor and their driver ---------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """A node's contractor: capabilities, concurrency and per-capability (cost, seconds)."""

    capabilities: tuple[str, ...]
    tasks_running_max: int
    quotes: Mapping[str, tuple[float, float]]

    @staticmethod
    def draw(index: int, rng: Random) -> Profile:
        own = CAPABILITIES[index % len(CAPABILITIES)]
        capabilities = tuple(c for c in CAPABILITIES if c == own or rng.random() < 0.4)
        quotes = {c: (round(rng.uniform(1.0, 10.0), 2), round(rng.uniform(0.5, _DURATION_MAX_S), 2))
                  for c in CAPABILITIES}
        return Profile(capabilities, rng.randint(1, 3), quotes)

    def estimator(self) -> Estimator:
        def estimate(cfp: CallForProposals) -> Estimate | None:
            quote = self.quotes.get(cfp.capability)
            return None if quote is None else Estimate(cost=quote[0], duration_s=quote[1])
        return estimate


@dataclass(frozen=True, slots=True)
class HostSettings:
    """The driver's timings (seconds)."""

    scan_interval_s: float = 0.5
    lease_ttl_s: float = 3.0
    lease_margin_s: float = 0.5
    alive_ttl_s: float = 3.0
    max_attempts: int = 8


@dataclass(slots=True)
class _Run:
    lease_id: int | None
    capability: str
    finish_at: float
    renewed_at: float


@dataclass(slots=True)
class _Started:
    record: TaskRecord
    version: int
    at: float


def _result_of(capability: str, data: bytes) -> bytes:
    if capability == "demo.wordcount":
        return str(len(data.split())).encode()
    if capability == "demo.sum":
        return str(sum(int(x) for x in data.split())).encode()
    return b"slept"


class AuctionHost:
    """One node's contract-net cores and their driver, as one simulator core."""

    def __init__(self, *, context: NodeContext, ledger_: SharedLedger, peers: list[bytes],
                 profile: Profile, manager_settings: ManagerSettings,
                 contractor_settings: ContractorSettings, settings: HostSettings,
                 observations: Observations) -> None:
        self.context = context
        self.index = context.index
        self.node_id = context.node_id
        self.ledger = ledger_
        self.settings = settings
        self.profile = profile
        self.obs = observations
        self.rng = context.rng
        self.manager = Manager(node_id=context.node_id, settings=manager_settings,
                               first_batch_id=context.rng.getrandbits(48))
        self.contractor = Contractor(node_id=context.node_id, capabilities=profile.capabilities,
                                     settings=contractor_settings,
                                     estimator=profile.estimator(), now=context.now())
        self._kinds: dict[str, type[BaseModel]] = {**self.manager.message_kinds,
                                                   **self.contractor.message_kinds}
        if len(peers) > _CANDIDATES_MAX:
            peers = sorted(self.rng.sample(peers, _CANDIDATES_MAX))
        self.candidates = peers
        self._started: dict[str, _Started] = {}
        self._runs: dict[tuple[str, int], _Run] = {}
        self._pending: list[ResultReported] = []
        self._alive_lease: int | None = None
        self._next_scan = context.now()

    # -- ProtocolCore --------------------------------------------------------------

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        return self._kinds

    def step(self, message: Incoming) -> None:
        payload = message.payload
        if isinstance(payload, InformResult) and not self._expects(payload.task_id,
                                                                    payload.epoch):
            # Not an outcome the manager core awaits (restarted, late, duplicated):
            # the ledger decides, and fences off a stale epoch.
            self.obs.results_adopted += 1
            self._record_result(ResultReported(payload.task_id, payload.epoch, message.sender,
                                               payload.result, payload.digest,
                                               payload.location, payload.agent))
        elif isinstance(payload, CallForProposals):
            for task_id, epoch in list(self._runs):
                if task_id == payload.task_id and epoch < payload.epoch:
                    self._abandon(task_id, epoch, "superseded by a newer epoch")
            self.contractor.step(message)
        elif message.kind in self.manager.message_kinds:
            self.manager.step(message)
        else:
            self.contractor.step(message)
        self._handle_events()

    def tick(self, now: float) -> None:
        self.manager.tick(now)
        self.contractor.tick(now)
        self._handle_events()
        self._tick_runs(now)
        if now >= self._next_scan:
            self._next_scan = now + self.settings.scan_interval_s
            if self.ledger.reachable(self.index):
                self._scan(now)
        self._handle_events()

    def take_outbox(self) -> list[Outgoing]:
        return self.manager.take_outbox() + self.contractor.take_outbox()

    # -- client entry ----------------------------------------------------------------

    def submit(self, task_id: str, capability: str, data: bytes) -> bool:
        """Record a new task (owned here) and auction it. False if the ledger is out of reach."""
        if not self.ledger.reachable(self.index):
            return False
        step = ledger.create(task_id, capability, data, max_attempts=self.settings.max_attempts,
                             owner=self.node_id)
        if not self.ledger.transition(self.index, step):
            return False
        read = self.ledger.read(task_id)
        assert read is not None
        self._auction(*read)
        self._handle_events()
        return True

    # -- manager side ----------------------------------------------------------------

    def _expects(self, task_id: str, epoch: int) -> bool:
        return (self.manager.epoch(task_id) == epoch
                and self.manager.phase(task_id) is AuctionPhase.RUNNING)

    def _now(self) -> float:
        return self.context.now()

    def _auction(self, record: TaskRecord, version: int) -> None:
        now = self._now()
        if self.manager.start_auction(record, self.candidates, now,
                                      input_summary=f"{len(record.input)} bytes"):
            self._started[record.task_id] = _Started(record, version, now)
            key = (record.task_id, record.epoch)
            if key not in self.obs.auctions_at:
                self.obs.auctions_at[key] = now
                if record.epoch > 1:
                    self.obs.reauctions += 1

    def _scan(self, now: float) -> None:
        self._keep_alive()
        for pending in self._pending[:]:
            self._pending.remove(pending)
            self._record_result(pending)
        for task_id in list(self.ledger.unfinished):
            owner = self.ledger.get(OWNER_PREFIX + task_id)
            if owner is None:
                continue
            if owner[0] != self.node_id:
                if self.manager.epoch(task_id) is not None:
                    self.manager.cancel(task_id)
                if self.ledger.get(ALIVE_PREFIX + owner[0].hex()) is not None:
                    continue
                taken = self.ledger.apply(self.index, CompareAndSet(
                    OWNER_PREFIX + task_id, self.node_id, owner[1]))
                if not taken.ok:
                    continue
                self.obs.takeovers += 1
            read = self.ledger.read(task_id)
            if read is not None:
                self._manage(*read)

    def _keep_alive(self) -> None:
        ledger_ = self.ledger
        if self._alive_lease is not None and ledger_.lease_alive(self._alive_lease):
            ledger_.apply(self.index, LeaseKeepAlive(self._alive_lease))
            return
        granted = ledger_.apply(self.index, LeaseGrant(int(self.settings.alive_ttl_s * 1000)))
        if granted.ok and granted.lease_id is not None:
            self._alive_lease = granted.lease_id
            ledger_.apply(self.index, Put(ALIVE_PREFIX + self.node_id.hex(), b"1",
                                          granted.lease_id))

    def _manage(self, record: TaskRecord, version: int) -> None:
        if record.state is TaskState.OPEN:
            epoch = self.manager.epoch(record.task_id)
            if epoch is None or epoch < record.epoch:
                self._auction(record, version)
        elif record.state is TaskState.AWARDED and not self.ledger.lease_alive(record.lease_id):
            step = ledger.reopen(record, version, epoch=record.epoch,
                                 reason=f"lease of contractor {_short(record.contractor)} ended")
            self._after_failure(record.task_id, step)

    def _after_failure(self, task_id: str, step: Transition | Refusal) -> None:
        if self.ledger.transition(self.index, step):
            read = self.ledger.read(task_id)
            assert read is not None
            if read[0].state is TaskState.OPEN:
                self._auction(*read)
            else:
                self.manager.cancel(task_id)

    def _handle_events(self) -> None:
        for _ in range(100):
            events = self.manager.take_events() + self.contractor.take_events()
            if not events:
                return
            for event in events:
                if isinstance(event, AwardDecision):
                    self._award(event)
                elif isinstance(event, ResultReported):
                    self._record_result(event)
                elif isinstance(event, FailureReported | NoBids):
                    self._fail(event)
                elif isinstance(event, StartTask):
                    self._start(event)

    def _award(self, event: AwardDecision) -> None:
        started = self._started.get(event.task_id)
        ledger_ = self.ledger
        if (started is None or started.record.epoch != event.epoch
                or not ledger_.reachable(self.index)):
            self.manager.award_committed(event.task_id, event.epoch, False)
            return
        granted = ledger_.apply(self.index, LeaseGrant(int(self.settings.lease_ttl_s * 1000)))
        lease_id = granted.lease_id
        ok = False
        if granted.ok and lease_id is not None:
            step = ledger.award(started.record, started.version, epoch=event.epoch,
                                contractor=event.winner.node_id, lease_id=lease_id)
            ok = ledger_.transition(self.index, step)
            if not ok:
                ledger_.apply(self.index, LeaseRevoke(lease_id))
        if ok:
            self.obs.latencies.append(self._now() - started.at)
        self.manager.award_committed(event.task_id, event.epoch, ok,
                                     lease_id if ok else None)

    def _record_result(self, event: ResultReported) -> None:
        if not self.ledger.reachable(self.index):
            self._pending.append(event)
            return
        read = self.ledger.read(event.task_id)
        if read is None:
            return
        step = ledger.complete(read[0], read[1], epoch=event.epoch, contractor=event.contractor,
                               result=event.result, digest=event.digest,
                               location=event.location)
        self.ledger.transition(self.index, step)

    def _fail(self, event: FailureReported | NoBids) -> None:
        if not self.ledger.reachable(self.index):
            return  # the next scan re-auctions (open) or reopens (lease ends)
        read = self.ledger.read(event.task_id)
        if read is None:
            return
        if isinstance(event, NoBids):
            reason = f"no bids in {event.rounds} rounds"
        else:
            reason = f"{_short(event.contractor)}: {event.reason}"
        self._after_failure(event.task_id,
                            ledger.fail_attempt(read[0], read[1], epoch=event.epoch,
                                                reason=reason))

    # -- contractor side -------------------------------------------------------------

    def _start(self, event: StartTask) -> None:
        now = self._now()
        quote = self.profile.quotes[event.capability]
        duration = quote[1] * self.rng.uniform(1 - _DURATION_SPREAD, 1 + _DURATION_SPREAD)
        self._runs[(event.task_id, event.epoch)] = _Run(event.lease_id, event.capability,
                                                         now + duration, now)
        self.obs.started(now, self.index, self.context.restarts, event.task_id, event.epoch)
        self._renew(event.task_id, event.epoch, now)

    def _renew(self, task_id: str, epoch: int, now: float) -> None:
        run = self._runs[(task_id, epoch)]
        if run.lease_id is None or not self.ledger.reachable(self.index):
            return
        if self.ledger.apply(self.index, LeaseKeepAlive(run.lease_id)).ok:
            run.renewed_at = now
        else:
            self._abandon(task_id, epoch, "lease lost")

    def _tick_runs(self, now: float) -> None:
        for (task_id, epoch), run in list(self._runs.items()):
            if now >= run.finish_at:
                del self._runs[(task_id, epoch)]
                self.obs.stopped(self.index, self.context.restarts, task_id, epoch)
                # The contractor fetches the input from the ledger (the CFP has a summary).
                reachable = self.ledger.reachable(self.index)
                read = self.ledger.read(task_id) if reachable else None
                data = read[0].input if read is not None else b""
                self.contractor.task_finished(task_id, epoch,
                                              result=_result_of(run.capability, data))
            elif now >= run.renewed_at + self.settings.lease_ttl_s - self.settings.lease_margin_s:
                self._abandon(task_id, epoch, "lease not renewed in time")
            elif now - run.renewed_at >= self.settings.scan_interval_s:
                self._renew(task_id, epoch, now)

    def _abandon(self, task_id: str, epoch: int, reason: str) -> None:
        if self._runs.pop((task_id, epoch), None) is None:
            return
        self.obs.abandoned += 1
        self.obs.stopped(self.index, self.context.restarts, task_id, epoch)
        self.contractor.task_failed(task_id, epoch, reason)


def _short(node: bytes | None) -> str:
    return "nobody" if node is None else node.hex()[:8]


# -- clients ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Task:
    task_id: str
    capability: str
    data: bytes
    submitted_at: float | None = None
    via: int | None = None


class _Clients:
    """Submit the planned tasks through random up nodes that reach the ledger."""

    retry_s = 0.5

    def __init__(self, world: World, rng: Random, count: int, start: float, stop: float) -> None:
        self.world = world
        self.rng = rng
        self.tasks: list[_Task] = []
        for number in range(count):
            capability = CAPABILITIES[rng.randrange(len(CAPABILITIES))]
            if capability == "demo.sum":
                data = " ".join(str(rng.randrange(100)) for _ in range(5)).encode()
            else:
                data = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 8))).encode()
            task = _Task(f"t{number:04d}", capability, data)
            self.tasks.append(task)
            at = rng.uniform(start, stop)
            world.call_at(at, self._submitter(task))

    def _submitter(self, task: _Task) -> Callable[[], None]:
        return lambda: self._submit(task)

    def _submit(self, task: _Task) -> None:
        up = self.world.up_nodes()
        if up:
            node = up[self.rng.randrange(len(up))]
            if _host(node).submit(task.task_id, task.capability, task.data):
                task.submitted_at = self.world.now
                task.via = node.index
                node.flush()
                return
            node.flush()
        self.world.call_at(self.world.now + self.retry_s, self._submitter(task))

    @property
    def all_submitted(self) -> bool:
        return all(task.submitted_at is not None for task in self.tasks)


def _host(node: SimNode) -> AuctionHost:
    return node.core(AuctionHost)


# -- the scenario -------------------------------------------------------------------------


class AuctionScenario:
    """Contract-net auctions under the nemesis; see the module docstring."""

    name = "auction"

    def __init__(
        self,
        *,
        tasks_per_node: int = 5,
        voters: int = 3,
        tick_interval_s: float = 0.1,
        host_settings: HostSettings | None = None,
        manager_settings: ManagerSettings | None = None,
        award_grace_s: float = 1.0,
        allocation_batch_tasks: int = 8,
    ) -> None:
        if tasks_per_node < 0 or voters < 1:
            raise ValueError(f"tasks_per_node ({tasks_per_node}) must be >= 0 and voters "
                             f"({voters}) >= 1")
        self.tasks_per_node = tasks_per_node
        self.voters = voters
        self.tick_interval_s = tick_interval_s
        self.host_settings = host_settings or HostSettings()
        self.manager_settings = manager_settings or ManagerSettings(
            bid_window_s=0.5, no_bid_backoff_s=0.5, no_bid_rounds_max=3)
        self.award_grace_s = award_grace_s
        self.allocation_batch_tasks = allocation_batch_tasks

    def attempt_bound_s(self) -> float:
        """The longest one attempt may take once the cluster is whole (module doc)."""
        h, m = self.host_settings, self.manager_settings
        backoff = m.no_bid_backoff_s * float(2 ** max(0, m.no_bid_rounds_max - 1) - 1)
        auction = m.no_bid_rounds_max * m.bid_window_s + backoff
        longest_task = _DURATION_MAX_S * (1 + _DURATION_SPREAD)
        return h.alive_ttl_s + h.lease_ttl_s + 2 * h.scan_interval_s + auction + longest_task

    def settle_bound_s(self) -> float:
        """How long after healing every task must be done or failed."""
        return SETTLE_ATTEMPTS * self.attempt_bound_s()

    def describe(self) -> str:
        h, m = self.host_settings, self.manager_settings
        return (f"# auction: tasks_per_node={self.tasks_per_node} voters={self.voters} "
                f"scan_interval_s={h.scan_interval_s} lease_ttl_s={h.lease_ttl_s} "
                f"alive_ttl_s={h.alive_ttl_s} max_attempts={h.max_attempts} "
                f"bid_window_s={m.bid_window_s} no_bid_rounds_max={m.no_bid_rounds_max} "
                f"settle_bound_s={self.settle_bound_s():g}")

    def build(self, options: RunOptions) -> AuctionRun:
        """The world for ``options``, not yet run (tests drive it by hand)."""
        n = options.nodes
        streams = Streams(options.seed)
        ids = World.node_ids_for(options.seed, n)
        profiles = [Profile.draw(i, streams.stream(f"profile/{i}")) for i in range(n)]
        shared = SharedLedger(n, self.voters)
        obs = Observations()
        contractor_settings = [ContractorSettings(tasks_running_max=p.tasks_running_max,
                                                  award_grace_s=self.award_grace_s)
                               for p in profiles]

        def factory(context: NodeContext) -> list[ProtocolCore]:
            return [AuctionHost(context=context, ledger_=shared, peers=list(ids),
                                profile=profiles[context.index],
                                manager_settings=self.manager_settings,
                                contractor_settings=contractor_settings[context.index],
                                settings=self.host_settings, observations=obs)]

        world = World(options.seed, n, factory,
                      network=NetworkSettings(loss=options.loss or 0.0),
                      tick_interval_s=self.tick_interval_s,
                      nemesis=build_nemesis(options, heal_at=options.duration_s))
        shared.world = world
        return AuctionRun(self, options, world, shared, obs, profiles)

    def run(self, options: RunOptions) -> RunResult:
        """Run one seed; see the module docstring for what is checked."""
        run = self.build(options)
        run.start_clients(self.tasks_per_node * options.nodes)
        result = run.finish()
        (actual, optimal), (scored, best_score) = self.allocation_measures(
            options.seed, options.nodes, [quoted_cost, default_score_at_rest])
        result.metrics["allocation_cost"] = actual
        result.metrics["allocation_cost_optimal"] = optimal
        result.metrics["allocation_cost_ratio"] = _ratio(actual, optimal)
        result.metrics["allocation_score_ratio"] = _ratio(scored, best_score)
        return result

    def allocation_batch(self, seed: int, nodes: int, *,
                         measure: Callable[[Profile, str], float] | None = None
                         ) -> tuple[float, float]:
        """(winners' quoted cost, optimal cost) of one batch in a quiet world (module doc).

        ``measure(profile, capability)`` prices a task on a contractor instead of its
        quoted cost (``default_score_at_rest``: what the default score weighs).
        NaN, NaN when the cluster is above ``ALLOCATION_NODES_MAX`` or the batch is
        empty or does not finish.
        """
        return self.allocation_measures(seed, nodes, [measure or quoted_cost])[0]

    def allocation_measures(self, seed: int, nodes: int,
                            measures: list[Callable[[Profile, str], float]]
                            ) -> list[tuple[float, float]]:
        """``allocation_batch`` for several measures of one run of the batch."""
        nothing = [(math.nan, math.nan)] * len(measures)
        if nodes > ALLOCATION_NODES_MAX or self.allocation_batch_tasks < 1:
            return nothing
        scenario = AuctionScenario(tasks_per_node=0, voters=self.voters,
                                   tick_interval_s=self.tick_interval_s,
                                   host_settings=self.host_settings,
                                   manager_settings=self.manager_settings,
                                   award_grace_s=self.award_grace_s, allocation_batch_tasks=0)
        built = scenario.build(RunOptions(seed=seed, nodes=nodes, duration_s=1.0))
        profiles = built.profiles
        slots = [(i, c) for i, p in enumerate(profiles) for c in range(p.tasks_running_max)]
        rng = built.world.streams.stream("allocation")
        batch: list[str] = []
        for _ in range(4 * self.allocation_batch_tasks):
            if len(batch) == self.allocation_batch_tasks:
                break
            capability = CAPABILITIES[rng.randrange(len(CAPABILITIES))]
            trial = [*batch, capability]
            if len(trial) <= len(slots) and min_cost_assignment(
                _cost_matrix(trial, slots, profiles, quoted_cost)) < _INFEASIBLE:
                batch = trial
        if not batch:
            return nothing
        world = built.world
        world.advance(1.0)
        built.submit_batch(0, [(f"b{number}", capability, b"1 2 3")
                               for number, capability in enumerate(batch)])
        if not world.run_until(lambda: not built.ledger.unfinished,
                               1.0 + self.settle_bound_s(), check_every_s=0.5):
            return nothing
        winners: dict[str, bytes] = {}
        for write in built.ledger.writes:
            if write.after.state is TaskState.AWARDED and write.after.contractor is not None:
                winners[write.after.task_id] = write.after.contractor
        chosen: list[Profile] = []
        for number in range(len(batch)):
            winner = winners.get(f"b{number}")
            if winner is None:
                return nothing
            chosen.append(profiles[world.node(winner).index])
        return [(sum(measure(profile, capability) for profile, capability in zip(
                    chosen, batch, strict=True)),
                 min_cost_assignment(_cost_matrix(batch, slots, profiles, measure)))
                for measure in measures]


def _ratio(actual: float, optimal: float) -> float:
    return actual / optimal if optimal > 0 and not math.isnan(actual) else math.nan


def quoted_cost(profile: Profile, capability: str) -> float:
    """What ``profile``'s contractor quotes as the cost of a ``capability`` task."""
    return profile.quotes[capability][0]


def default_score_at_rest(profile: Profile, capability: str) -> float:
    """The default score of ``profile``'s bid for a ``capability`` task on an idle
    node, less the time of the call (the same for every bid): cost + duration."""
    cost, duration = profile.quotes[capability]
    return cost + duration


def _cost_matrix(batch: list[str], slots: list[tuple[int, int]], profiles: list[Profile],
                 measure: Callable[[Profile, str], float]) -> list[list[float]]:
    return [[measure(profiles[node], capability)
             if capability in profiles[node].capabilities else _INFEASIBLE
             for node, _ in slots] for capability in batch]


def min_cost_assignment(costs: list[list[float]]) -> float:
    """The exact minimum total cost of giving each row its own column (rows <= columns),
    by the solver the managers award batches with; an empty matrix costs 0."""
    if costs and len(costs) > len(costs[0]):
        raise ValueError(f"{len(costs)} rows cannot each get their own of {len(costs[0])} "
                         "columns")
    placed = solve(costs)
    return sum(costs[row][column] for row, column in enumerate(placed) if column is not None)


@dataclass(slots=True)
class AuctionRun:
    """One built run: the world, its ledger and what the hosts observed."""

    scenario: AuctionScenario
    options: RunOptions
    world: World
    ledger: SharedLedger
    obs: Observations
    profiles: list[Profile]
    clients: _Clients | None = None

    def start_clients(self, count: int) -> None:
        d = self.options.duration_s
        self.clients = _Clients(self.world, self.world.streams.stream("clients"), count,
                                0.1 * d, 0.8 * d)

    def submit(self, node: int, task_id: str, capability: str, data: bytes) -> bool:
        """Submit one task through ``node`` now (tests)."""
        ok = _host(self.world.nodes[node]).submit(task_id, capability, data)
        self.world.nodes[node].flush()
        return ok

    def submit_batch(self, node: int, tasks: list[tuple[str, str, bytes]]) -> bool:
        """Submit (task id, capability, input) tasks through ``node`` at once: their
        calls for proposals go out as one batch (tests)."""
        host = _host(self.world.nodes[node])
        ok = all([host.submit(*task) for task in tasks])
        self.world.nodes[node].flush()
        return ok

    def record(self, task_id: str) -> TaskRecord | None:
        read = self.ledger.read(task_id)
        return None if read is None else read[0]

    def settled(self) -> bool:
        return (self.clients is None or self.clients.all_submitted) and not self.ledger.unfinished

    def finish(self) -> RunResult:
        """Fault period, heal, settle, check."""
        world, options = self.world, self.options
        description = world.describe() + "\n" + self.scenario.describe()
        world.advance(options.duration_s)
        heal_everything(world, options.loss or 0.0)
        settle = self.scenario.settle_bound_s()
        settled = world.run_until(self.settled, options.duration_s + settle, check_every_s=0.5)
        violations = world.check() + self.violations(settled, settle)
        records = self.ledger.final_records()
        stale = self.ledger.refusals.get("stale_epoch", 0)
        return RunResult(
            scenario=self.scenario.name,
            seed=options.seed,
            violations=violations,
            trace_digest=world.trace_digest(),
            metrics={
                "tasks": float(len(records)),
                "done": float(sum(r.state is TaskState.DONE for r in records.values())),
                "failed": float(sum(r.state is TaskState.FAILED for r in records.values())),
                "reauctions": float(self.obs.reauctions),
                "takeovers": float(self.obs.takeovers),
                "stale_results_refused": float(stale),
                "results_adopted": float(self.obs.results_adopted),
                "tasks_abandoned": float(self.obs.abandoned),
                "auction_latency_s_p50": percentile(self.obs.latencies, 0.5),
                "auction_latency_s_p99": percentile(self.obs.latencies, 0.99),
                "converge_s": world.now - options.duration_s if settled else math.nan,
                "settle_bound_s": settle,
            },
            samples={"auction_latency_s": list(self.obs.latencies)},
            description=description,
            stats=world.stats(),
        )

    def violations(self, settled: bool, settle: float) -> list[Violation]:
        """Every checker's findings (module docstring), double awards included."""
        now = self.world.now
        found = list(self.obs.violations)
        records = self.ledger.final_records()
        planned = self.clients.tasks if self.clients is not None else []
        for task in planned:
            if task.submitted_at is None:
                found.append(Violation("auction.lost", now,
                                       f"{task.task_id} never accepted by the ledger"))
        for task_id in self.ledger.index_disagreements:
            found.append(Violation("auction.index", now,
                                   f"{task_id}: unfinished/ index disagrees with its record"))
        for task_id, record in sorted(records.items()):
            if record.state is TaskState.FAILED and not record.failure_reasons:
                found.append(Violation("auction.lost", now, f"{task_id} failed without reasons"))
            elif record.state not in (TaskState.DONE, TaskState.FAILED):
                found.append(Violation(
                    "auction.lost", now,
                    f"{task_id} is {record.state.value} at epoch {record.epoch} "
                    f"{settle:.1f} s after healing"))
        results: dict[str, int] = {}
        awards: dict[tuple[str, int], int] = {}
        last: dict[str, TaskRecord] = {}
        for write in self.ledger.writes:
            after, before = write.after, write.before
            task_id = after.task_id
            if before is not None and after.epoch < before.epoch:
                found.append(Violation("auction.epoch_regressed", write.at,
                                       f"{task_id} from epoch {before.epoch} to {after.epoch}"))
            if task_id in last and last[task_id] != before:
                found.append(Violation("auction.lost_write", write.at,
                                       f"{task_id} written over a record never seen"))
            last[task_id] = after
            if after.state is TaskState.AWARDED:
                key = (task_id, after.epoch)
                awards[key] = awards.get(key, 0) + 1
                if awards[key] > 1:
                    found.append(Violation("auction.double_award", write.at,
                                           f"{task_id} epoch {after.epoch} awarded twice"))
            if after.state is TaskState.DONE:
                results[task_id] = results.get(task_id, 0) + 1
                if (before is None or before.state is not TaskState.AWARDED
                        or before.epoch != after.epoch or before.contractor != after.contractor):
                    found.append(Violation(
                        "auction.result_epoch", write.at,
                        f"{task_id} result at epoch {after.epoch} recorded over "
                        f"{before.state.value if before else 'nothing'} epoch "
                        f"{before.epoch if before else 0}"))
        for task_id, record in sorted(records.items()):
            count = results.get(task_id, 0)
            expected = 1 if record.state is TaskState.DONE else 0
            if count != expected:
                found.append(Violation("auction.results", now,
                                       f"{task_id} ({record.state.value}) has {count} results"))
        return found

