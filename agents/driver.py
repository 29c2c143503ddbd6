"""The contract-net driver of a running node: the cores, the Raft task ledger, the agents.

It lives outside ``agents.contract_net`` because that package holds pure cores only
(no I/O, no clock: see check_layers.py).

How this works
--------------
``ContractNetDriver(node, host)`` registers a ``Manager`` and a ``Contractor`` on
the node (``register_core``: the node delivers their message kinds, ticks them
and sends their outboxes) and collects their events after every flush into a
bounded queue. A service the node starts with itself (``install`` calls
``node.add_service``) carries the events out with ``node.kv``, each in its own
task, mirroring ``sim.scenarios.auction.AuctionHost`` (read that module's
docstring for the scheme):

- ``submit(capability, input)`` (also served to clients as ``cnet.submit``, see
  ``agents.submission``) writes the open record (``ledger.create``) and, in the
  same write, ``owner/<id>`` (this node); a task recorded before (a retry) is
  claimed by compare-and-set on an absent owner key instead. Then it calls for
  proposals from the nodes whose gossip advert (``agents/<node>``) offers the
  capability and that membership holds live (this node included: messages to
  itself stay in memory);
- the node's lease: ``alive/<node>`` is kept under a lease of ``alive_ttl_s``,
  renewed every third of it; the contractor offers that lease with its bids;
- ``AwardDecision``: ``ledger.award`` by compare-and-set against the version read
  when the auction started, under the winner's node lease (one write; a bid with
  no lease gets a lease of ``lease_ttl_s`` for the award, with ``run/<id>`` under
  it), with the ranked bids; then ``Manager.award_committed``;
- ``StartTask`` (this node won): the accept carries the input, ``AgentHost``
  runs it (waiting for a slot if the node won more than it has free) while the
  award's lease is held: the node lease, whose renewals are watched (the run is
  cancelled once one is ``alive_ttl_s - lease_margin_s`` old and renewing fails),
  or the award's own lease, renewed every ``lease_ttl_s / 3``. The outcome goes
  back through ``task_finished`` (the agent's JSON output as canonical JSON
  bytes) or ``task_failed``; a run that ends without either is reported failed;
- ``ResultReported`` -> ``ledger.complete`` (with the version the award left, a
  read first only if that fails); ``FailureReported`` / ``NoBids`` ->
  ``ledger.fail_attempt`` and, if the task reopened, a new auction. A result the
  manager no longer awaits (it restarted, or took the task over) is still handed
  to the ledger, whose epoch fencing refuses a stale one.

A node that dies takes its lease with it: its ``alive`` key goes, and with it
every award under that lease. The manager's progress queries (``cnet.query``)
cover the messages that can be lost while both ends live: a lost accept or
result ends the attempt or brings the result again.

The periodic scan (every ``scan_interval_s``, ``scan_busy_interval_s`` after one
that found work) reads the unfinished tasks (at most ``scan_tasks_max``, found
through the ledger's ``unfinished/`` index, so a scan costs what is in flight,
not what the mesh ever ran) and the ``owner/``, ``alive/`` and ``run/`` keys,
then: a task it owns that is open and not auctioned here is auctioned; one
awarded under a lease that no longer holds its contractor's ``alive`` key (nor
its ``run`` key) is reopened (``ledger.reopen``) and re-auctioned; one awarded
by a manager that stopped is adopted (progress queries); a task with no owner
(written straight to the ledger, as ``agentmesh task submit`` does when no node
takes it) or whose owner's ``alive`` key is gone is claimed by compare-and-set
on ``owner/<id>``, at once by the live node it hashes to, by others after
``claim_delay_s``. A snapshot older than what this driver wrote since is not
acted on.

Limits: every KV call is bounded by ``kv_timeout_s``; the event queue and the
tasks carrying events out are bounded (``events_max``, ``handlers_max``): what
does not fit is refused to the cores (a run fails, an award is lost) and counted,
and the periodic scan recovers the task. Errors (KV unavailable, malformed
records) are counted in ``counters``, logged, never raised into the node.

Task input is a JSON object, stored as canonical JSON bytes; so is the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import anyio
from pydantic import BaseModel

from agents.contract_net import ledger
from agents.contract_net.contractor import Contractor
from agents.contract_net.events import (
    AwardDecision,
    FailureReported,
    NoBids,
    ResultReported,
    StartTask,
)
from agents.contract_net.ledger import (
    OWNER_PREFIX,
    UNFINISHED_PREFIX,
    BidRecord,
    LedgerError,
    Refusal,
    TaskRecord,
    TaskState,
    Transition,
    decode_record,
)
from agents.contract_net.manager import AuctionPhase, Manager
from agents.contract_net.messages import InformResult
from agents.contract_net.settings import ContractorSettings, ManagerSettings
from agents.host import AGENTS_PREFIX, AgentHost, TaskDone, capabilities_of, estimator_for
from agents.latency import LatencyRecord
from agents.submission import SUBMIT, SUBMIT_ANSWER, SubmitAnswer, SubmitTask
from consensus.core import Incoming, Outgoing
from consensus.kvstore import ErrorCode
from mesh.errors import ConfigError, MeshError
from mesh.kv_messages import GET_MANY_KEYS_MAX
from mesh.runtime import Inbound

__all__ = [
    "ALIVE_PREFIX",
    "COUNTERS",
    "OWNER_PREFIX",
    "RUN_PREFIX",
    "ContractNetDriver",
    "DriverSettings",
    "decode_json",
    "encode_json",
    "preferred_node",
    "submit_open_task",
]

log = logging.getLogger(__name__)

ALIVE_PREFIX = "alive/"
"""``alive/<node id hex>``: present (under a lease) while that node's driver runs."""
RUN_PREFIX = "run/"
"""``run/<task id>``: the epoch, under the award's lease: gone once the lease ends."""

COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "submitted": "tasks submitted through this driver",
        "auctions_started": "auctions started (first or re-auction)",
        "awards_committed": "awards written to the ledger",
        "awards_lost": "awards whose compare-and-set lost or could not be written",
        "results_recorded": "results written to the ledger",
        "results_adopted": "results for an epoch the manager no longer awaited",
        "attempts_failed": "attempts ended in the ledger (failure, no bids, lease ended)",
        "refusals": "ledger transitions refused (stale epoch, wrong state ...)",
        "takeovers": "tasks taken over from a missing owner",
        "tasks_run": "tasks run here as the contractor",
        "tasks_lease_lost": "runs cancelled: the award's lease could not be renewed",
        "scans": "periodic scans of the ledger",
        "events_dropped": "core events dropped: the queue or the handler limit was full",
        "kv_errors": "KV calls that failed or timed out",
        "records_malformed": "unfinished task records the scan could not decode",
        "errors": "other errors while carrying out an event (logged)",
    }
)
"""Every name in ``ContractNetDriver.counters`` with what it counts."""


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """The driver's timings and limits (seconds)."""

    scan_interval_s: float = 1.0
    """How often the ledger is scanned for tasks to (re)auction, reopen or take over."""
    scan_busy_interval_s: float = 0.05
    """The next scan's delay after one that claimed or auctioned tasks: a burst of
    submissions is taken up in a few quick passes, an idle ledger read once a
    ``scan_interval_s``."""
    claim_delay_s: float = 1.0
    """A task with no live owner is claimed at once by the live driver it hashes to
    (rendezvous hashing), by any other once it has been seen unowned this long."""
    scan_concurrency: int = 64
    """Tasks claimed or managed at once during a scan."""
    lease_ttl_s: float = 5.0
    """The lease of an award whose winner offered none (see ``alive_ttl_s``)."""
    lease_margin_s: float = 1.0
    """A run stops when its lease was not renewed for ``lease_ttl_s`` minus this."""
    alive_ttl_s: float = 5.0
    """The node's lease (``alive/<node>`` and the awards it won are under it): a dead
    node's tasks are reopened, and the tasks it managed taken over, this long after."""
    max_attempts: int = 3
    """Attempts of a task submitted here before it fails."""
    retry_backoff_s: float = 0.2
    """Wait after a failed attempt before the task is auctioned again; it doubles
    with each attempt, up to ``retry_backoff_max_s``."""
    retry_backoff_max_s: float = 5.0
    """Longest wait before auctioning a task again."""
    kv_timeout_s: float = 10.0
    """Bound of every KV call."""
    events_max: int = 4096
    """Core events queued at once."""
    handlers_max: int = 1024
    """Events carried out at once (task runs, and tasks waiting for a slot, included)."""
    scan_tasks_max: int = 1000
    """Tasks read per scan."""
    wait_poll_s: float = 0.1
    """How often ``wait`` reads the ledger."""

    def __post_init__(self) -> None:
        for name in ("scan_interval_s", "scan_busy_interval_s", "claim_delay_s",
                     "lease_ttl_s", "alive_ttl_s", "kv_timeout_s", "wait_poll_s",
                     "retry_backoff_s", "retry_backoff_max_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} ({value!r}) must be a positive number of seconds")
        if not 0 <= self.lease_margin_s < self.lease_ttl_s:
            raise ConfigError("lease_margin_s must be at least 0 and below lease_ttl_s")
        for name in ("max_attempts", "events_max", "handlers_max", "scan_tasks_max",
                     "scan_concurrency"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer")


VERSIONS_KEPT = 16_384
"""Tasks whose latest ledger version a driver remembers."""
class DriverNode(Protocol):
    """What the driver needs of ``mesh.runtime.Node``."""

    @property
    def node_id(self) -> bytes: ...

    @property
    def kv(self) -> Any: ...

    @property
    def gossip(self) -> Any: ...

    @property
    def membership(self) -> Any: ...

    def register_core(self, core: Any, *, after_flush: Callable[[], None] | None = None) -> None:
        ...

    def add_service(self, fn: Callable[[], Awaitable[None]]) -> None: ...

    def add_status(self, name: str, section: Callable[[], Any]) -> None: ...

    def on(self, kind: str, model: type[BaseModel], handler: Callable[[Inbound], None]) -> None:
        ...

    def reply(self, inbound: Inbound, kind: str, payload: BaseModel) -> bool: ...

    def send_core_messages(self, outbox: Sequence[Outgoing]) -> None: ...


def encode_json(value: Any) -> bytes:
    """Canonical JSON bytes of ``value`` (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def decode_json(data: bytes | None) -> Any:
    """``data`` as JSON, or the text itself when it is not JSON (None for None)."""
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return data.decode("utf-8", errors="replace")


def preferred_node(key: str, live: set[bytes]) -> bytes:
    """The live node that claims the ownerless ``key`` (a task, a workflow) first:
    rendezvous hashing, so that nodes do not all race for every one."""
    data = key.encode()
    return max(live, key=lambda node: hashlib.blake2b(data + node, digest_size=8).digest())


async def submit_open_task(
    kv: Any, capability: str, task_input: Mapping[str, Any], *,
    task_id: str | None = None, max_attempts: int = 3,
) -> TaskRecord:
    """Write a new open task to the ledger (no owner: a node's driver takes it over).

    ``LedgerError`` for a malformed task or a task id already used.
    """
    task_id = task_id or uuid.uuid4().hex
    step = ledger.create(task_id, capability, encode_json(dict(task_input)),
                         max_attempts=max_attempts)
    response = await kv.write(step.command)
    if not response.ok:
        existing = await kv.get(ledger.task_key(task_id))
        if existing is not None and _same_task(decode_record(existing.value), step.record):
            return decode_record(existing.value)  # an earlier attempt of ours wrote it
        raise LedgerError(f"task {task_id} could not be created: "
                          f"{response.error.value if response.error else response.detail}")
    return step.record


def _lease_gone(response: Any) -> bool:
    """Whether a keep-alive's answer says the lease no longer exists (any other
    refusal, or none, leaves its fate unknown)."""
    return response is not None and response.error is ErrorCode.LEASE_NOT_FOUND


def _same_task(found: TaskRecord, wanted: TaskRecord) -> bool:
    return (found.capability, found.input, found.max_attempts) == (
        wanted.capability, wanted.input, wanted.max_attempts)


class _ManagerCore:
    """The manager as the node drives it, with results it no longer awaits set aside
    for the ledger (see the module docstring)."""

    def __init__(self, manager: Manager, adopt: Callable[[ResultReported], None],
                 clock: Callable[[], float]) -> None:
        self.manager = manager
        self._adopt = adopt
        self._clock = clock

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        return self.manager.message_kinds

    def step(self, message: Incoming) -> None:
        self.manager.note_time(self._clock())
        payload = message.payload
        if isinstance(payload, InformResult) and not (
            self.manager.epoch(payload.task_id) == payload.epoch
            and self.manager.phase(payload.task_id) is AuctionPhase.RUNNING
        ):
            self._adopt(ResultReported(payload.task_id, payload.epoch, message.sender,
                                       payload.result, payload.digest, payload.location,
                                       payload.agent))
            return
        self.manager.step(message)

    def tick(self, now: float) -> None:
        self.manager.tick(now)

    def take_outbox(self) -> list[Outgoing]:
        return self.manager.take_outbox()


@dataclass(slots=True)
class _Started:
    record: TaskRecord
    version: int
    """The ledger version of ``record``: after the award, that of the awarded record,
    so the result is one compare-and-set with no read before it."""


@dataclass(frozen=True, slots=True)
class _SubmitRequest:
    inbound: Inbound


_Event = AwardDecision | NoBids | ResultReported | FailureReported | StartTask | _SubmitRequest


@dataclass(slots=True)
class _Queue:
    events: list[_Event] = field(default_factory=list)
    wanted: anyio.Event = field(default_factory=anyio.Event)


class ContractNetDriver:
    """One node's contract net, carried out with ``node.kv``; see the module docstring."""

    def __init__(
        self,
        node: DriverNode,
        host: AgentHost,
        *,
        settings: DriverSettings | None = None,
        manager_settings: ManagerSettings | None = None,
        contractor_settings: ContractorSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.host = host
        self.settings = settings or DriverSettings()
        self._clock = clock
        # Batch ids of an earlier life of this node must not be taken for new ones.
        self.manager = Manager(node_id=node.node_id, settings=manager_settings,
                               first_batch_id=secrets.randbits(48))
        self.contractor = Contractor(
            node_id=node.node_id,
            capabilities=host.capabilities,
            settings=contractor_settings or ContractorSettings(
                tasks_running_max=max(1, host.admit_limit)),
            estimator=estimator_for(host),
            room=host.has_room,
            now=clock(),
        )
        self._manager_core = _ManagerCore(self.manager, self._adopt, clock)
        self._queue = _Queue()
        self._calls_waiting = anyio.Event()
        self._handlers = 0
        self._started: dict[str, _Started] = {}
        self._decision_ms = LatencyRecord()
        """Per award: the latest round's call for proposals to the decision (ms)."""
        self._award_ms = LatencyRecord()
        """Per award: the latest round's call for proposals to the award committed in
        the ledger (ms), what the contract net's auction latency is."""
        self._unowned_since: dict[str, float] = {}
        self._versions: dict[str, int] = {}
        """Task -> the latest ledger version this driver read or wrote (the newest
        ``VERSIONS_KEPT``): a scan's snapshot older than that is not acted on, so a
        task finished since the scan read it is not auctioned again."""
        self._alive_lease: int | None = None
        self._alive_renewed_at = 0.0
        self._alive_lock = anyio.Lock()
        """When the latest renewal of ``_alive_lease`` that succeeded was asked for."""
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._installed = False

    # -- wiring ----------------------------------------------------------------------

    def install(self, *, run_host: bool = True) -> None:
        """Register the cores and the driver's service on the node (before it runs);
        with ``run_host`` also the host's advert service (``AgentHost.run``)."""
        if self._installed:
            raise MeshError("the contract-net driver is already installed")
        self._installed = True
        self.node.register_core(self._manager_core, after_flush=self._collect)
        self.node.register_core(self.contractor, after_flush=self._collect)
        self.node.add_service(self.run)
        self.node.add_status("contract_net", self.status)
        self.node.on(SUBMIT, SubmitTask, self._on_submit)
        if run_host:
            self.node.add_service(self.host.run)

    def status(self) -> dict[str, Any]:
        """Counters of the driver, its cores and its host, and the auction latencies
        of the latest awards made here (``agentmesh status --json``)."""
        return {
            "counters": dict(self._counters),
            "manager": dict(self.manager.counters),
            "contractor": dict(self.contractor.counters),
            "host": dict(self.host.counters),
            "auctions_in_progress": len(self.manager),
            "decision_ms": self._decision_ms.status(),
            "award_ms": self._award_ms.status(),
        }

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of what happened (see ``COUNTERS``), read-only."""
        return MappingProxyType(self._counters)

    def _collect(self) -> None:
        events: list[_Event] = [*self.manager.take_events(), *self.contractor.take_events()]
        room = max(self.settings.events_max - len(self._queue.events), 0)
        if len(events) > room:
            self._counters["events_dropped"] += len(events) - room
            for event in events[room:]:
                self._refuse_event(event)
            events = events[:room]
            # Sent here: the node sent the cores' outboxes before calling us.
            self.node.send_core_messages(self.manager.take_outbox()
                                         + self.contractor.take_outbox())
        if events:
            self._queue.events.extend(events)
            self._queue.wanted.set()

    def _adopt(self, result: ResultReported) -> None:
        self._counters["results_adopted"] += 1
        if len(self._queue.events) >= self.settings.events_max:
            self._counters["events_dropped"] += 1
            return
        self._queue.events.append(result)
        self._queue.wanted.set()

    def _flush(self) -> None:
        """Send what the cores produced on a call from the driver, collect their events."""
        self.node.send_core_messages(self.manager.take_outbox() + self.contractor.take_outbox())
        self._collect()

    # -- the service -----------------------------------------------------------------

    async def run(self) -> None:
        """Carry out the cores' events and scan the ledger, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._alive_loop)
            tg.start_soon(self._scan_loop)
            tg.start_soon(self._call_loop)
            while True:
                if not self._queue.events:
                    self._queue.wanted = anyio.Event()
                    await self._queue.wanted.wait()
                events, self._queue.events = self._queue.events, []
                for event in events:
                    if self._handlers >= self.settings.handlers_max:
                        self._counters["events_dropped"] += 1
                        self._fail_dropped(event)
                        continue
                    self._handlers += 1
                    tg.start_soon(self._handle, event)

    async def _call_loop(self) -> None:
        """Send the calls for proposals of auctions started since the last send.

        Auctions are started by handlers that resume together (one Raft answer
        completes many writes); deferring the send by one turn of the event loop
        lets their calls go out as one batch, awarded jointly."""
        while True:
            await self._calls_waiting.wait()
            self._calls_waiting = anyio.Event()
            self._flush()

    def _on_submit(self, inbound: Inbound) -> None:
        if len(self._queue.events) >= self.settings.events_max:
            self._counters["events_dropped"] += 1
            self._answer_submit(inbound, SubmitAnswer(
                ok=False, task_id="", error="node busy", retry_elsewhere=True))
            return
        self._queue.events.append(_SubmitRequest(inbound))
        self._queue.wanted.set()

    def _answer_submit(self, inbound: Inbound, answer: SubmitAnswer) -> None:
        self.node.reply(inbound, SUBMIT_ANSWER, answer)

    async def _serve_submit(self, inbound: Inbound) -> None:
        request = inbound.envelope.payloads[0]
        assert isinstance(request, SubmitTask)
        task_input = decode_json(request.input)
        if not isinstance(task_input, dict):
            self._answer_submit(inbound, SubmitAnswer(
                ok=False, task_id=request.task_id, error="task input must be a JSON object"))
            return
        try:
            await self.submit(request.capability, task_input, task_id=request.task_id,
                              max_attempts=request.max_attempts)
        except LedgerError as exc:
            answer = SubmitAnswer(ok=False, task_id=request.task_id, error=str(exc)[:512])
        except (MeshError, TimeoutError) as exc:
            answer = SubmitAnswer(ok=False, task_id=request.task_id, retry_elsewhere=True,
                                  error=f"the ledger could not be written: {exc}"[:512])
        else:
            answer = SubmitAnswer(ok=True, task_id=request.task_id)
        self._answer_submit(inbound, answer)

    def _fail_dropped(self, event: _Event) -> None:
        self._refuse_event(event)
        self._flush()

    def _refuse_event(self, event: _Event) -> None:
        """Tell the cores that ``event`` will not be carried out (no room), so that
        nothing waits for it: a dropped run is reported failed, a dropped award lost.
        Results and failures dropped here are found again by the manager's progress
        queries."""
        if isinstance(event, _SubmitRequest):
            self._answer_submit(event.inbound, SubmitAnswer(
                ok=False, task_id="", error="node busy", retry_elsewhere=True))
        elif isinstance(event, StartTask):
            self.contractor.task_failed(event.task_id, event.epoch, "contractor overloaded")
        elif isinstance(event, AwardDecision):
            self.manager.award_committed(event.task_id, event.epoch, False)

    async def _handle(self, event: _Event) -> None:
        try:
            if isinstance(event, AwardDecision):
                await self._award(event)
            elif isinstance(event, ResultReported):
                await self._record_result(event)
            elif isinstance(event, FailureReported | NoBids):
                await self._fail(event)
            elif isinstance(event, _SubmitRequest):
                await self._serve_submit(event.inbound)
            else:
                try:
                    await self._run_task(event)
                finally:
                    if self.contractor.holds(event.task_id, event.epoch):
                        # Ended (an error, a cancel) without a report: report one, or
                        # the manager would hear "running" for ever.
                        self.contractor.task_failed(event.task_id, event.epoch,
                                                    "the run ended without an outcome")
                        self._flush()
        except Exception:
            self._counters["errors"] += 1
            log.exception("contract net: carrying out %s failed", type(event).__name__)
        finally:
            self._handlers -= 1

    # -- KV helpers (bounded, errors counted) ------------------------------------------

    async def _kv(self, call: Callable[[], Awaitable[Any]]) -> Any | None:
        try:
            with anyio.fail_after(self.settings.kv_timeout_s):
                return await call()
        except (MeshError, TimeoutError) as exc:
            self._counters["kv_errors"] += 1
            log.debug("contract net: KV call failed: %s", exc)
            return None

    async def _transition(self, step: Transition | Refusal) -> int | None:
        """Write the transition; the record's new version, or None if refused or lost."""
        if isinstance(step, Refusal):
            self._counters["refusals"] += 1
            log.debug("contract net: refused %s: %s", step.reason.value, step.detail)
            return None
        response = await self._kv(lambda: self.node.kv.write(step.command))
        if response is None or not response.ok:
            return None
        self._note_version(step.record.task_id, int(response.version))
        return int(response.version)

    def _note_version(self, task_id: str, version: int) -> None:
        known = self._versions.pop(task_id, 0)
        self._versions[task_id] = max(known, version)
        if len(self._versions) > VERSIONS_KEPT:
            del self._versions[next(iter(self._versions))]

    def _stale(self, task_id: str, version: int) -> bool:
        return version < self._versions.get(task_id, 0)

    async def _read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        item = await self._kv(lambda: self.node.kv.get(ledger.task_key(task_id)))
        if item is None:
            return None
        try:
            return decode_record(item.value), item.version
        except LedgerError as exc:
            self._counters["errors"] += 1
            log.warning("contract net: task %s: %s", task_id, exc)
            return None

    # -- manager side ----------------------------------------------------------------

    async def submit(
        self, capability: str, task_input: Mapping[str, Any], timeout_s: float | None = None,
        *, task_id: str | None = None, max_attempts: int | None = None,
    ) -> str:
        """Record a new task managed here and call for proposals at once; its id.

        Idempotent for a ``task_id`` already recorded with the same capability,
        input and attempts (a client's retry): nothing is written twice, and the
        task is auctioned here if this node owns it and is not auctioning it yet.
        ``LedgerError`` for a malformed task or an id used for another task,
        ``TimeoutError`` or a ``MeshError`` when the ledger cannot be written within
        ``timeout_s`` (default ``kv_timeout_s``).
        """
        task_id = task_id or uuid.uuid4().hex
        step = ledger.create(task_id, capability, encode_json(dict(task_input)),
                             max_attempts=max_attempts or self.settings.max_attempts,
                             owner=self.node.node_id)
        kv = self.node.kv
        with anyio.fail_after(timeout_s or self.settings.kv_timeout_s):
            if self._alive_lease is None:
                # Other nodes' scans take over tasks whose owner has no alive/ key:
                # a node that has only just started must write its own first.
                await self._keep_alive()
            # One write records the task and makes this node its owner.
            created = await kv.write(step.command)
            if created.ok:
                record, version, owns = step.record, created.version, True
            else:
                # Recorded before: a client's retry, here or through another node,
                # or a task written straight to the ledger. Own it if nobody does.
                existing = await kv.get(ledger.task_key(task_id))
                found = decode_record(existing.value) if existing is not None else None
                if found is None or not _same_task(found, step.record):
                    raise LedgerError(f"task id {task_id} is used for another task")
                record, version = found, existing.version
                if record.final:
                    owns = False  # nothing left to manage, and no owner key to leave behind
                elif (await kv.compare_and_set(OWNER_PREFIX + task_id, self.node.node_id,
                                               0)).ok:
                    owns = True
                else:
                    holder = await kv.get(OWNER_PREFIX + task_id)
                    owns = holder is not None and holder.value == self.node.node_id
        self._counters["submitted"] += 1
        if owns and record.state is TaskState.OPEN and self.manager.epoch(task_id) is None:
            self._auction(record, version)
        return task_id

    async def wait(self, task_id: str, timeout_s: float) -> TaskRecord:
        """The task's record once final (done, failed, cancelled); ``TimeoutError`` after
        ``timeout_s``, ``LedgerError`` for an unknown task."""
        with anyio.fail_after(timeout_s):
            while True:
                item = await self._kv(lambda: self.node.kv.get(ledger.task_key(task_id)))
                if item is not None:
                    record = decode_record(item.value)
                    if record.final:
                        return record
                await anyio.sleep(self.settings.wait_poll_s)

    def candidates(self, capability: str) -> list[bytes]:
        """Nodes advertising ``capability`` that membership holds live (and this one)."""
        try:
            items = self.node.gossip.items(AGENTS_PREFIX)
        except MeshError:
            return []
        live = {self.node.node_id}
        membership = self.node.membership
        if membership is not None:
            live.update(m.node_id for m in membership.live_members())
        return [n for n in capabilities_of(items, capability).node_ids if n in live]

    def _auction(self, record: TaskRecord, version: int) -> None:
        now = self._clock()
        self._note_version(record.task_id, version)
        if self.manager.start_auction(record, self.candidates(record.capability), now,
                                      input_summary=f"{len(record.input)} bytes"):
            self._counters["auctions_started"] += 1
            self._started[record.task_id] = _Started(record, version)
            if len(self._started) > self.settings.events_max:
                for stale in [t for t in self._started if self.manager.epoch(t) is None]:
                    del self._started[stale]
        self._calls_waiting.set()

    async def _grant_run_lease(self, task_id: str, epoch: int) -> int | None:
        """A lease of ``lease_ttl_s`` with ``run/<task>`` = epoch under it (the scan
        reopens an awarded task once that key is gone); None if not granted."""
        kv = self.node.kv
        granted = await self._kv(lambda: kv.lease_grant(self.settings.lease_ttl_s))
        if granted is None or not granted.ok or granted.lease_id is None:
            return None
        lease_id: int = granted.lease_id
        put = await self._kv(lambda: kv.put(RUN_PREFIX + task_id, str(epoch), lease_id=lease_id))
        if put is None or not put.ok:
            await self._kv(lambda: kv.lease_revoke(lease_id))
            return None
        return lease_id

    async def _revoke(self, lease_id: int) -> None:
        await self._kv(lambda: self.node.kv.lease_revoke(lease_id))

    async def _award(self, event: AwardDecision) -> None:
        started = self._started.get(event.task_id)
        ok = False
        lease_id = None
        round_started = self.manager.round_started(event.task_id)
        if round_started is not None:
            self._decision_ms.add((self._clock() - round_started) * 1000)
        if started is not None and started.record.epoch == event.epoch:
            # The winner's node lease when it offered one (the award is then one
            # write), else a lease for this award with run/<id> under it.
            own_lease = event.winner.lease_id is None
            lease_id = (await self._grant_run_lease(event.task_id, event.epoch) if own_lease
                        else event.winner.lease_id)
            if lease_id is not None:
                bids = tuple(BidRecord(bid.node_id, float(bid.cost), float(bid.duration_s),
                                       float(bid.load), float(bid.confidence))
                             for bid in event.ranked)
                step = ledger.award(started.record, started.version, epoch=event.epoch,
                                    contractor=event.winner.node_id, lease_id=lease_id,
                                    bids=bids)
                version = await self._transition(step)
                ok = version is not None
                if version is not None and isinstance(step, Transition):
                    self._started[event.task_id] = _Started(step.record, version)
                elif own_lease:
                    await self._revoke(lease_id)
        self._counters["awards_committed" if ok else "awards_lost"] += 1
        if ok and round_started is not None:
            self._award_ms.add((self._clock() - round_started) * 1000)
        self.manager.award_committed(event.task_id, event.epoch, ok, lease_id if ok else None)
        self._flush()

    async def _record_result(self, event: ResultReported) -> None:
        started = self._started.get(event.task_id)
        recorded = None
        if (started is not None and started.record.epoch == event.epoch
                and started.record.state is TaskState.AWARDED):
            # Nothing else writes an awarded task but its result or its reopening:
            # try the version the award left before paying for a read.
            recorded = await self._transition(self._complete(started.record, started.version,
                                                             event))
        if recorded is None:
            read = await self._read(event.task_id)
            if read is None:
                return
            recorded = await self._transition(self._complete(read[0], read[1], event))
        if recorded is not None:
            self._counters["results_recorded"] += 1
            self._started.pop(event.task_id, None)

    @staticmethod
    def _complete(record: TaskRecord, version: int, event: ResultReported
                  ) -> Transition | Refusal:
        return ledger.complete(record, version, epoch=event.epoch, contractor=event.contractor,
                               result=event.result, digest=event.digest,
                               location=event.location, agent=event.agent)

    async def _fail(self, event: FailureReported | NoBids) -> None:
        read = await self._read(event.task_id)
        if read is None:
            return
        if isinstance(event, NoBids) and event.busy:
            reason = f"every capable contractor busy for {event.rounds} rounds"
        elif isinstance(event, NoBids):
            reason = f"no bids in {event.rounds} rounds"
        else:
            reason = f"{event.contractor.hex()[:8]}: {event.reason}"
        await self._after_failure(
            event.task_id, ledger.fail_attempt(read[0], read[1], epoch=event.epoch,
                                               reason=reason))

    async def _after_failure(self, task_id: str, step: Transition | Refusal) -> None:
        version = await self._transition(step)
        if version is None:
            return
        self._counters["attempts_failed"] += 1
        assert isinstance(step, Transition)
        if step.record.state is TaskState.OPEN:
            # Not at once: what made this attempt fail (a contractor's lost lease while
            # the store elects a leader, say) would fail the next ones just as fast.
            settings = self.settings
            await anyio.sleep(min(settings.retry_backoff_max_s, settings.retry_backoff_s
                                  * 2 ** min(step.record.attempts - 1, 30)))
            if self._stale(task_id, version):
                return  # moved on meanwhile (the scan or another node took it up)
            self._auction(step.record, version)
        else:
            self.manager.cancel(task_id)
            self._started.pop(task_id, None)
            self._flush()

    # -- the periodic scan -------------------------------------------------------------

    async def _scan_loop(self) -> None:
        while True:
            busy = False
            try:
                busy = await self._scan()
            except Exception:
                self._counters["errors"] += 1
                log.exception("contract net: scan failed")
            settings = self.settings
            await anyio.sleep(settings.scan_busy_interval_s if busy else settings.scan_interval_s)

    async def _alive_loop(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._offer_loop)
            while True:
                try:
                    await self._keep_alive()
                except Exception:
                    self._counters["errors"] += 1
                    log.exception("contract net: keeping alive/<node> failed")
                await anyio.sleep(self.settings.alive_ttl_s / 3)

    async def _offer_loop(self) -> None:
        """Offer the node lease with bids only while its last renewal is recent (half
        its TTL): a renewal held up (the store electing a leader) must not get awards
        recorded under a lease about to end. Meanwhile bids carry no lease and an
        award gets a lease of its own."""
        while True:
            lease = self._alive_lease
            recent = lease is not None and (
                self._clock() - self._alive_renewed_at < self.settings.alive_ttl_s / 2)
            self.contractor.set_lease(lease if recent else None)
            await anyio.sleep(self.settings.alive_ttl_s / 10)

    async def _keep_alive(self) -> None:
        """Renew this node's lease (``alive/<node>`` is under it, and so are the
        awards of the bids it offers it with), or grant a new one if it is gone."""
        async with self._alive_lock:  # one renewal at a time: never two new leases
            await self._renew_or_grant()

    async def _renew_or_grant(self) -> None:
        kv = self.node.kv
        if self._alive_lease is not None:
            asked_at = self._clock()
            renewed = await self._kv(lambda: kv.lease_keep_alive(self._alive_lease))
            if renewed is not None and renewed.ok:
                self._alive_renewed_at = asked_at
                return
            if not _lease_gone(renewed):
                return  # unknown (no answer, or refused for another reason): try again
            self._alive_lease = None  # expired: tasks awarded under it are reopened
            self.contractor.set_lease(None)
        asked_at = self._clock()
        granted = await self._kv(lambda: kv.lease_grant(self.settings.alive_ttl_s))
        if granted is not None and granted.ok and granted.lease_id is not None:
            put = await self._kv(lambda: kv.put(ALIVE_PREFIX + self.node.node_id.hex(), b"1",
                                                lease_id=granted.lease_id))
            if put is not None and put.ok:
                self._alive_lease = granted.lease_id
                self._alive_renewed_at = asked_at
                self.contractor.set_lease(granted.lease_id)

    def _node_lease_fresh(self, lease_id: int) -> bool:
        """Whether ``lease_id`` is this node's lease and surely not expired yet."""
        limit = self.settings.alive_ttl_s - self.settings.lease_margin_s
        return lease_id == self._alive_lease and self._clock() - self._alive_renewed_at < limit

    async def _list_all(self, prefix: str, pick: Callable[[Any], Any] | None = None,
                        most: int | None = None) -> list[Any] | None:
        """Every item under ``prefix`` in pages (or what ``pick`` makes of it, those it
        makes None left out), at most ``most``; None when a page could not be read."""
        kv = self.node.kv
        found: list[Any] = []
        start_after: str | None = None
        while most is None or len(found) < most:
            listed = await self._kv(lambda after=start_after: kv.list(  # type: ignore[misc]
                prefix, limit=1000, start_after=after))
            if listed is None:
                return None
            items, more = listed
            picked = items if pick is None else (pick(item) for item in items)
            found.extend(value for value in picked if value is not None)
            if not more or not items:
                break
            start_after = items[-1].key
        return found if most is None else found[:most]

    async def _scan(self) -> bool:
        """One pass over the unfinished tasks; True if it claimed or auctioned any (the
        next pass then comes after ``scan_busy_interval_s``)."""
        self._counters["scans"] += 1
        task_ids: list[str] | None = await self._list_all(
            UNFINISHED_PREFIX, lambda item: item.key[len(UNFINISHED_PREFIX):],
            self.settings.scan_tasks_max)
        if task_ids is None:
            return False
        records = await self._read_unfinished(task_ids)
        if records is None:
            return False
        owners = await self._list_all(OWNER_PREFIX)
        alive = await self._list_all(ALIVE_PREFIX)
        runs = await self._list_all(RUN_PREFIX) if any(
            r.state is TaskState.AWARDED for r, _ in records) else []
        if owners is None or alive is None or runs is None:
            return False
        owner_of = {item.key[len(OWNER_PREFIX):]: item for item in owners}
        lease_of_run = {item.key[len(RUN_PREFIX):]: item.lease_id for item in runs}
        node_lease: dict[bytes, int | None] = {}
        for item in alive:
            try:
                node_lease[bytes.fromhex(item.key[len(ALIVE_PREFIX):])] = item.lease_id
            except ValueError:
                continue
        live = {self.node.node_id, *node_lease}

        def lease_held(record: TaskRecord) -> bool:
            lease = record.lease_id
            return lease is not None and (
                lease_of_run.get(record.task_id) == lease
                or (record.contractor is not None and node_lease.get(record.contractor) == lease))

        now = self._clock()
        unowned: dict[str, float] = {}
        work: list[tuple[TaskRecord, int, int | None]] = []  # record, version, owner version
        for record, version in records:
            owner = owner_of.get(record.task_id)
            if owner is not None and owner.value == self.node.node_id:
                work.append((record, version, None))
            elif owner is not None and owner.value in live:
                if self.manager.epoch(record.task_id) is not None:
                    self.manager.cancel(record.task_id)  # another node took it over
                    self._flush()
            else:
                since = self._unowned_since.get(record.task_id, now)
                unowned[record.task_id] = since
                if (now - since >= self.settings.claim_delay_s
                        or preferred_node(record.task_id, live) == self.node.node_id):
                    work.append((record, version, owner.version if owner is not None else 0))
        self._unowned_since = unowned
        busy = False
        limiter = anyio.CapacityLimiter(self.settings.scan_concurrency)

        async def one(record: TaskRecord, version: int, claim_version: int | None) -> None:
            nonlocal busy
            async with limiter:
                if claim_version is not None:
                    if not await self._claim(record.task_id, claim_version):
                        return
                    busy = True
                busy |= await self._manage(record, version, lease_held(record))

        async with anyio.create_task_group() as tg:
            for record, version, claim_version in work:
                tg.start_soon(one, record, version, claim_version)
        return busy

    async def _read_unfinished(self, task_ids: list[str]) -> list[tuple[TaskRecord, int]] | None:
        """The records (and versions) of ``task_ids`` still unfinished, read in pages of
        ``GET_MANY_KEYS_MAX`` keys; None when a read failed."""
        kv = self.node.kv
        found: list[tuple[TaskRecord, int]] = []
        for start in range(0, len(task_ids), GET_MANY_KEYS_MAX):
            keys = [ledger.task_key(t) for t in task_ids[start:start + GET_MANY_KEYS_MAX]]
            items = await self._kv(lambda keys=keys: kv.get_many(keys))  # type: ignore[misc]
            if items is None:
                return None
            for item in items:
                try:
                    record = decode_record(item.value)
                except LedgerError:
                    self._counters["records_malformed"] += 1
                    continue
                if not record.final:
                    found.append((record, item.version))
        return found

    async def _claim(self, task_id: str, expect_version: int) -> bool:
        """Become the task's owner by compare-and-set on ``owner/<id>`` (absent or the
        dead owner's version)."""
        self._unowned_since.pop(task_id, None)
        taken = await self._kv(lambda: self.node.kv.compare_and_set(
            OWNER_PREFIX + task_id, self.node.node_id, expect_version))
        if taken is None or not taken.ok:
            return False
        self._counters["takeovers"] += 1
        return True

    async def _manage(self, record: TaskRecord, version: int, lease_held: bool) -> bool:
        """Auction an open task not auctioned here; reopen an awarded one whose lease
        ended (``lease_held``: its lease still holds the contractor's ``alive`` key or
        the task's ``run`` key). True if an auction started."""
        if self._stale(record.task_id, version):
            return False  # this driver moved the task on since the scan read it
        if record.state is TaskState.OPEN:
            epoch = self.manager.epoch(record.task_id)
            if epoch is None or epoch < record.epoch:
                self._auction(record, version)
                return True
        elif record.state is TaskState.AWARDED and record.lease_id is not None:
            if lease_held and self.manager.epoch(record.task_id) is None:
                # Awarded by a manager that stopped: watch it (progress queries).
                self.manager.adopt(record, self._clock())
                self._flush()
            if not lease_held:
                contractor = record.contractor.hex()[:8] if record.contractor else "nobody"
                step = ledger.reopen(record, version, epoch=record.epoch,
                                     reason=f"lease of contractor {contractor} ended")
                await self._after_failure(record.task_id, step)
                return True
        return False

    # -- contractor side -----------------------------------------------------------------

    async def _hold_node_lease(self, lease_id: int) -> None:
        """Return when this node's lease ``lease_id`` (which _alive_loop renews) has
        ended: the store said it is gone, or its last renewal is older than its TTL.
        A renewal merely late (the store is electing a leader) is retried meanwhile:
        giving up then would fail a task whose award still stands."""
        settings = self.settings
        while True:
            while self._node_lease_fresh(lease_id):
                await anyio.sleep(min(1.0, settings.alive_ttl_s / 6))
            await self._keep_alive()
            if self._node_lease_fresh(lease_id):
                continue
            if (lease_id != self._alive_lease
                    or self._clock() - self._alive_renewed_at >= settings.alive_ttl_s):
                return
            await anyio.sleep(min(0.2, settings.alive_ttl_s / 10))

    async def _hold_task_lease(self, lease_id: int) -> None:
        """Renew an award's own lease every ``lease_ttl_s / 3``; return when it is
        gone (the task was reopened) or could not be renewed in time."""
        settings = self.settings
        renewed_at = self._clock()
        limit = settings.lease_ttl_s - settings.lease_margin_s
        while True:
            await anyio.sleep(settings.lease_ttl_s / 3)
            with anyio.move_on_after(max(0.1, renewed_at + limit - self._clock())):
                response = await self._kv(lambda: self.node.kv.lease_keep_alive(lease_id))
                if response is not None and response.ok:
                    renewed_at = self._clock()
                    continue
                if _lease_gone(response):
                    return
            if self._clock() >= renewed_at + limit:
                return

    async def _run_task(self, event: StartTask) -> None:
        self._counters["tasks_run"] += 1
        lease_id = event.lease_id
        task_bytes = event.input
        if task_bytes is None:  # the award did not carry the input: read the ledger's
            read = await self._read(event.task_id)
            record = read[0] if read is not None else None
            if (record is None or record.state is not TaskState.AWARDED
                    or record.epoch != event.epoch or record.contractor != self.node.node_id):
                self.contractor.task_failed(event.task_id, event.epoch,
                                            "award not in the ledger")
                self._flush()
                return
            task_bytes = record.input
            lease_id = lease_id if lease_id is not None else record.lease_id
        task_input = decode_json(task_bytes)
        if not isinstance(task_input, dict):
            self.contractor.task_failed(event.task_id, event.epoch, "task input is not an object")
            self._flush()
            return
        outcome: Any = None
        async with anyio.create_task_group() as tg:

            async def work() -> None:
                nonlocal outcome
                outcome = await self.host.run_task(event.capability, task_input, admitted=True)
                tg.cancel_scope.cancel()

            async def keep_lease() -> None:
                """Return (cancelling the run) once the award's lease is surely lost."""
                if lease_id is None:
                    await anyio.sleep_forever()
                elif lease_id == self._alive_lease:
                    await self._hold_node_lease(lease_id)
                else:
                    await self._hold_task_lease(lease_id)
                tg.cancel_scope.cancel()

            tg.start_soon(work)
            tg.start_soon(keep_lease)
        if outcome is None:  # a result that came in time is reported (the ledger fences it)
            self._counters["tasks_lease_lost"] += 1
            self.contractor.task_failed(event.task_id, event.epoch, "lease lost")
        elif isinstance(outcome, TaskDone):
            if not self.contractor.task_finished(event.task_id, event.epoch,
                                                 result=encode_json(outcome.output),
                                                 agent=outcome.agent):
                self.contractor.task_failed(event.task_id, event.epoch, "result too large")
        else:
            self.contractor.task_failed(event.task_id, event.epoch,
                                        f"{outcome.cause.value}: {outcome.reason}")
        self._flush()
