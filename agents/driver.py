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

- ``submit(capability, input)`` writes ``owner/<id>`` (this node) and the open
  record (``ledger.create``, a compare-and-set on an absent key), then calls for
  proposals from the nodes whose gossip advert (``agents/<node>``) offers the
  capability and that membership holds live (this node included);
- ``AwardDecision``: a lease of ``lease_ttl_s`` and ``ledger.award`` by
  compare-and-set against the version read when the auction started, then
  ``Manager.award_committed`` (a lost CAS revokes the lease);
- ``StartTask`` (this node won): the input is read from the ledger (a call for
  proposals carries only a summary), ``AgentHost.run_task`` runs it while the
  award's lease is kept alive every ``lease_ttl_s / 3``; when the lease cannot be
  renewed within ``lease_ttl_s - lease_margin_s`` the run is cancelled. The
  outcome goes back through ``task_finished`` (the agent's JSON output as
  canonical JSON bytes) or ``task_failed``;
- ``ResultReported`` -> ``ledger.complete``; ``FailureReported`` / ``NoBids`` ->
  ``ledger.fail_attempt`` and, if the task reopened, a new auction. A result the
  manager no longer awaits (it restarted, or took the task over) is still handed
  to the ledger, whose epoch fencing refuses a stale one.

Every ``scan_interval_s`` the driver renews ``alive/<node>`` (under a lease of
``alive_ttl_s``) and reads the unfinished tasks (at most ``scan_tasks_max``):
a task it owns that is open and not auctioned here is auctioned; one awarded under
a lease that ended (its ``run/<id>`` key, written under the award's lease, is
gone) is reopened (``ledger.reopen``) and re-auctioned; a task with
no owner (written straight to the ledger, as ``agentmesh task submit`` does) or
whose owner's ``alive`` key is gone is taken over by compare-and-set on
``owner/<id>``. So any node running a driver picks up open tasks nobody manages.

Limits: every KV call is bounded by ``kv_timeout_s``; the event queue and the
tasks carrying events out are bounded (``events_max``, ``handlers_max``): what
does not fit is dropped and counted, and the periodic scan recovers the task.
Errors (KV unavailable, malformed records) are counted in ``counters``, logged,
never raised into the node.

Task input is a JSON object, stored as canonical JSON bytes; so is the result.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
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
    KEY_PREFIX,
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
from consensus.core import Incoming, Outgoing
from consensus.kvstore import Command
from mesh.errors import ConfigError, MeshError

__all__ = [
    "ALIVE_PREFIX",
    "COUNTERS",
    "OWNER_PREFIX",
    "RUN_PREFIX",
    "ContractNetDriver",
    "DriverSettings",
    "decode_json",
    "encode_json",
    "submit_open_task",
]

log = logging.getLogger(__name__)

OWNER_PREFIX = "owner/"
"""``owner/<task id>``: the node id of the node managing the task."""
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
        "errors": "other errors while carrying out an event (logged)",
    }
)
"""Every name in ``ContractNetDriver.counters`` with what it counts."""


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """The driver's timings and limits (seconds)."""

    scan_interval_s: float = 1.0
    """How often the ledger is scanned for tasks to (re)auction, reopen or take over."""
    lease_ttl_s: float = 5.0
    """The lease of an award: a dead contractor's task reopens this long after."""
    lease_margin_s: float = 1.0
    """A run stops when its lease was not renewed for ``lease_ttl_s`` minus this."""
    alive_ttl_s: float = 5.0
    """The lease of ``alive/<node>``: a dead manager's tasks are taken over after it."""
    max_attempts: int = 3
    """Attempts of a task submitted here before it fails."""
    kv_timeout_s: float = 10.0
    """Bound of every KV call."""
    events_max: int = 1024
    """Core events queued at once."""
    handlers_max: int = 256
    """Events carried out at once (task runs included)."""
    scan_tasks_max: int = 1000
    """Tasks read per scan."""
    wait_poll_s: float = 0.1
    """How often ``wait`` reads the ledger."""

    def __post_init__(self) -> None:
        for name in ("scan_interval_s", "lease_ttl_s", "alive_ttl_s", "kv_timeout_s",
                     "wait_poll_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} ({value!r}) must be a positive number of seconds")
        if not 0 <= self.lease_margin_s < self.lease_ttl_s:
            raise ConfigError("lease_margin_s must be at least 0 and below lease_ttl_s")
        for name in ("max_attempts", "events_max", "handlers_max", "scan_tasks_max"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer")


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

    def send_core_message(self, out: Outgoing) -> None: ...


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
        raise LedgerError(f"task {task_id} could not be created: "
                          f"{response.error.value if response.error else response.detail}")
    return step.record


class _ManagerCore:
    """The manager as the node drives it, with results it no longer awaits set aside
    for the ledger (see the module docstring)."""

    def __init__(self, manager: Manager, adopt: Callable[[ResultReported], None]) -> None:
        self.manager = manager
        self._adopt = adopt

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        return self.manager.message_kinds

    def step(self, message: Incoming) -> None:
        payload = message.payload
        if isinstance(payload, InformResult) and not (
            self.manager.epoch(payload.task_id) == payload.epoch
            and self.manager.phase(payload.task_id) is AuctionPhase.RUNNING
        ):
            self._adopt(ResultReported(payload.task_id, payload.epoch, message.sender,
                                       payload.result, payload.digest, payload.location))
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
    at: float


_Event = AwardDecision | NoBids | ResultReported | FailureReported | StartTask


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
        self.manager = Manager(node_id=node.node_id, settings=manager_settings)
        self.contractor = Contractor(
            node_id=node.node_id,
            capabilities=host.capabilities,
            settings=contractor_settings or ContractorSettings(
                tasks_running_max=max(1, host.limit)),
            estimator=estimator_for(host),
            now=clock(),
        )
        self._manager_core = _ManagerCore(self.manager, self._adopt)
        self._queue = _Queue()
        self._handlers = 0
        self._started: dict[str, _Started] = {}
        self._alive_lease: int | None = None
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._installed = False
        self._last_kv_failed = False

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
        if run_host:
            self.node.add_service(self.host.run)

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of what happened (see ``COUNTERS``), read-only."""
        return MappingProxyType(self._counters)

    def _collect(self) -> None:
        events: list[_Event] = [*self.manager.take_events(), *self.contractor.take_events()]
        room = self.settings.events_max - len(self._queue.events)
        if len(events) > room:
            self._counters["events_dropped"] += len(events) - max(room, 0)
            events = events[:max(room, 0)]
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
        for out in self.manager.take_outbox() + self.contractor.take_outbox():
            self.node.send_core_message(out)
        self._collect()

    # -- the service -----------------------------------------------------------------

    async def run(self) -> None:
        """Carry out the cores' events and scan the ledger, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._scan_loop)
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

    def _fail_dropped(self, event: _Event) -> None:
        if isinstance(event, StartTask):
            self.contractor.task_failed(event.task_id, event.epoch, "contractor overloaded")
        elif isinstance(event, AwardDecision):
            self.manager.award_committed(event.task_id, event.epoch, False)
        self._flush()

    async def _handle(self, event: _Event) -> None:
        try:
            if isinstance(event, AwardDecision):
                await self._award(event)
            elif isinstance(event, ResultReported):
                await self._record_result(event)
            elif isinstance(event, FailureReported | NoBids):
                await self._fail(event)
            else:
                await self._run_task(event)
        except Exception:
            self._counters["errors"] += 1
            log.exception("contract net: carrying out %s failed", type(event).__name__)
        finally:
            self._handlers -= 1

    # -- KV helpers (bounded, errors counted) ------------------------------------------

    async def _kv(self, call: Callable[[], Awaitable[Any]]) -> Any | None:
        self._last_kv_failed = False
        try:
            with anyio.fail_after(self.settings.kv_timeout_s):
                return await call()
        except (MeshError, TimeoutError) as exc:
            self._last_kv_failed = True
            self._counters["kv_errors"] += 1
            log.debug("contract net: KV call failed: %s", exc)
            return None

    async def _write(self, command: Command) -> bool:
        response = await self._kv(lambda: self.node.kv.write(command))
        return response is not None and bool(response.ok)

    async def _transition(self, step: Transition | Refusal) -> bool:
        if isinstance(step, Refusal):
            self._counters["refusals"] += 1
            log.debug("contract net: refused %s: %s", step.reason.value, step.detail)
            return False
        return await self._write(step.command)

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
        *, task_id: str | None = None,
    ) -> str:
        """Record a new task (managed here) and auction it; its id.

        ``LedgerError`` for a malformed task, ``TimeoutError`` or a ``MeshError`` when
        the ledger cannot be written within ``timeout_s`` (default ``kv_timeout_s``).
        """
        task_id = task_id or uuid.uuid4().hex
        step = ledger.create(task_id, capability, encode_json(dict(task_input)),
                             max_attempts=self.settings.max_attempts)
        kv = self.node.kv
        with anyio.fail_after(timeout_s or self.settings.kv_timeout_s):
            await kv.put(OWNER_PREFIX + task_id, self.node.node_id)
            response = await kv.write(step.command)
            if not response.ok:
                raise LedgerError(f"task {task_id} could not be created: {response.error}")
        self._counters["submitted"] += 1
        self._auction(step.record, response.version)
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
        if self.manager.start_auction(record, self.candidates(record.capability), now,
                                      input_summary=f"{len(record.input)} bytes"):
            self._counters["auctions_started"] += 1
            self._started[record.task_id] = _Started(record, version, now)
            if len(self._started) > self.settings.events_max:
                for stale in [t for t in self._started if self.manager.epoch(t) is None]:
                    del self._started[stale]
        self._flush()

    async def _award(self, event: AwardDecision) -> None:
        started = self._started.get(event.task_id)
        ok = False
        lease_id = None
        if started is not None and started.record.epoch == event.epoch:
            granted = await self._kv(lambda: self.node.kv.lease_grant(self.settings.lease_ttl_s))
            if granted is not None and granted.ok and granted.lease_id is not None:
                lease_id = granted.lease_id
                # A key under the lease: it vanishes when the lease ends (see _manage).
                await self._kv(lambda: self.node.kv.put(RUN_PREFIX + event.task_id,
                                                        str(event.epoch), lease_id=lease_id))
                step = ledger.award(started.record, started.version, epoch=event.epoch,
                                    contractor=event.winner.node_id, lease_id=lease_id)
                ok = await self._transition(step)
                if not ok:
                    await self._kv(lambda: self.node.kv.lease_revoke(lease_id))
        self._counters["awards_committed" if ok else "awards_lost"] += 1
        self.manager.award_committed(event.task_id, event.epoch, ok, lease_id if ok else None)
        self._flush()

    async def _record_result(self, event: ResultReported) -> None:
        read = await self._read(event.task_id)
        if read is None:
            return
        step = ledger.complete(read[0], read[1], epoch=event.epoch, contractor=event.contractor,
                               result=event.result, digest=event.digest,
                               location=event.location)
        if await self._transition(step):
            self._counters["results_recorded"] += 1
            self._started.pop(event.task_id, None)

    async def _fail(self, event: FailureReported | NoBids) -> None:
        read = await self._read(event.task_id)
        if read is None:
            return
        if isinstance(event, NoBids):
            reason = f"no bids in {event.rounds} rounds"
        else:
            reason = f"{event.contractor.hex()[:8]}: {event.reason}"
        await self._after_failure(
            event.task_id, ledger.fail_attempt(read[0], read[1], epoch=event.epoch,
                                               reason=reason))

    async def _after_failure(self, task_id: str, step: Transition | Refusal) -> None:
        if not await self._transition(step):
            return
        self._counters["attempts_failed"] += 1
        read = await self._read(task_id)
        if read is not None and read[0].state is TaskState.OPEN:
            self._auction(*read)
        else:
            self.manager.cancel(task_id)
            self._started.pop(task_id, None)
            self._flush()

    # -- the periodic scan -------------------------------------------------------------

    async def _scan_loop(self) -> None:
        while True:
            try:
                await self._scan()
            except Exception:
                self._counters["errors"] += 1
                log.exception("contract net: scan failed")
            await anyio.sleep(self.settings.scan_interval_s)

    async def _keep_alive(self) -> None:
        kv = self.node.kv
        if self._alive_lease is not None:
            renewed = await self._kv(lambda: kv.lease_keep_alive(self._alive_lease))
            if renewed is not None and renewed.ok:
                return
            if renewed is None:
                return  # unknown: try again next scan
        granted = await self._kv(lambda: kv.lease_grant(self.settings.alive_ttl_s))
        if granted is not None and granted.ok and granted.lease_id is not None:
            self._alive_lease = granted.lease_id
            await self._kv(lambda: kv.put(ALIVE_PREFIX + self.node.node_id.hex(), b"1",
                                          lease_id=granted.lease_id))

    async def _scan(self) -> None:
        self._counters["scans"] += 1
        await self._keep_alive()
        kv = self.node.kv
        records: list[tuple[TaskRecord, int]] = []
        start_after: str | None = None
        while len(records) < self.settings.scan_tasks_max:
            listed = await self._kv(lambda after=start_after: kv.list(  # type: ignore[misc]
                KEY_PREFIX, limit=min(1000, self.settings.scan_tasks_max),
                start_after=after))
            if listed is None:
                return
            items, more = listed
            for item in items:
                try:
                    record = decode_record(item.value)
                except LedgerError:
                    continue
                if not record.final:
                    records.append((record, item.version))
            if not more or not items:
                break
            start_after = items[-1].key
        for record, version in records[:self.settings.scan_tasks_max]:
            if await self._owned(record.task_id):
                await self._manage(record, version)

    async def _owned(self, task_id: str) -> bool:
        """Whether this node manages ``task_id`` (taking it over if its owner is gone)."""
        kv = self.node.kv
        owner = await self._kv(lambda: kv.get(OWNER_PREFIX + task_id))
        if owner is not None and owner.value == self.node.node_id:
            return True
        expect = 0
        if owner is not None:
            if self.manager.epoch(task_id) is not None:
                self.manager.cancel(task_id)
                self._flush()
            alive = await self._kv(lambda: kv.get(ALIVE_PREFIX + owner.value.hex()))
            if alive is not None:
                return False
            expect = owner.version
        taken = await self._kv(lambda: kv.compare_and_set(
            OWNER_PREFIX + task_id, self.node.node_id, expect))
        if taken is None or not taken.ok:
            return False
        self._counters["takeovers"] += 1
        return True

    async def _manage(self, record: TaskRecord, version: int) -> None:
        if record.state is TaskState.OPEN:
            epoch = self.manager.epoch(record.task_id)
            if epoch is None or epoch < record.epoch:
                self._auction(record, version)
        elif record.state is TaskState.AWARDED and record.lease_id is not None:
            held = await self._kv(lambda: self.node.kv.get(RUN_PREFIX + record.task_id))
            if held is None and self._last_kv_failed:
                return  # unknown: try again next scan
            if held is None or held.lease_id != record.lease_id:
                contractor = record.contractor.hex()[:8] if record.contractor else "nobody"
                step = ledger.reopen(record, version, epoch=record.epoch,
                                     reason=f"lease of contractor {contractor} ended")
                await self._after_failure(record.task_id, step)

    # -- contractor side -----------------------------------------------------------------

    async def _run_task(self, event: StartTask) -> None:
        self._counters["tasks_run"] += 1
        read = await self._read(event.task_id)
        record = read[0] if read is not None else None
        if (record is None or record.state is not TaskState.AWARDED
                or record.epoch != event.epoch or record.contractor != self.node.node_id):
            self.contractor.task_failed(event.task_id, event.epoch, "award not in the ledger")
            self._flush()
            return
        task_input = decode_json(record.input)
        if not isinstance(task_input, dict):
            self.contractor.task_failed(event.task_id, event.epoch, "task input is not an object")
            self._flush()
            return
        outcome: Any = None
        lease_lost = False
        async with anyio.create_task_group() as tg:

            async def work() -> None:
                nonlocal outcome
                outcome = await self.host.run_task(event.capability, task_input)
                tg.cancel_scope.cancel()

            async def keep_lease() -> None:
                nonlocal lease_lost
                lease_id = event.lease_id if event.lease_id is not None else record.lease_id
                if lease_id is None:
                    return
                renewed_at = self._clock()
                limit = self.settings.lease_ttl_s - self.settings.lease_margin_s
                while True:
                    await anyio.sleep(self.settings.lease_ttl_s / 3)
                    with anyio.move_on_after(max(0.1, renewed_at + limit - self._clock())):
                        response = await self._kv(
                            lambda: self.node.kv.lease_keep_alive(lease_id))
                        if response is not None and response.ok:
                            renewed_at = self._clock()
                            continue
                        if response is not None:  # the lease is gone: the task was reopened
                            lease_lost = True
                            tg.cancel_scope.cancel()
                            return
                    if self._clock() >= renewed_at + limit:
                        lease_lost = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(work)
            tg.start_soon(keep_lease)
        if lease_lost or outcome is None:
            self._counters["tasks_lease_lost"] += 1
            self.contractor.task_failed(event.task_id, event.epoch, "lease lost")
        elif isinstance(outcome, TaskDone):
            if not self.contractor.task_finished(event.task_id, event.epoch,
                                                 result=encode_json(outcome.output)):
                self.contractor.task_failed(event.task_id, event.epoch, "result too large")
        else:
            self.contractor.task_failed(event.task_id, event.epoch,
                                        f"{outcome.cause.value}: {outcome.reason}")
        self._flush()
