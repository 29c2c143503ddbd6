"""A node's workflow service: orchestrates workflows, and resumes the orphaned ones.

How this works
--------------
``WorkflowService(node, driver).install()`` runs beside the node's contract-net
driver. Its scan (every ``scan_interval_s``) lists the unfinished workflows
(``wfactive/``) and starts an engine for each one this node should orchestrate:

- one it owns (``wfowner/<id>`` is this node) that no engine here runs, e.g.
  after this node restarted;
- one with no owner (just submitted) or whose owner's ``alive/`` key is gone
  (that node died): it claims it by compare-and-set on ``wfowner/<id>``, at once
  if it is the live node the id hashes to (rendezvous), otherwise after
  ``claim_delay_s``, so nodes do not all race for every workflow.

An engine resumes from the workflow's checkpoints (``agents.workflow.store``):
finished steps are not run again, a step whose task was in flight rejoins that
same task. Each step is a contract-net task submitted through this node's
driver (``DriverRunner``), so it is auctioned among the agents of the mesh that
offer its capability; ``@name`` targets are the capability ``agent:name``.

At most ``workflows_max`` engines run here at once; the others wait for the
next scan. When an engine ends, the outcome is recorded (``done``, ``failed``
or ``rejected``); an engine that loses its ownership (``LostOwnership``) stops
without recording anything.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from agents.contract_net import ledger
from agents.contract_net.ledger import LedgerError, TaskState, decode_record
from agents.driver import ALIVE_PREFIX, ContractNetDriver, decode_json, preferred_node
from agents.host import AGENT_CAPABILITY_PREFIX
from agents.workflow.engine import (
    GateDecision,
    GateRequest,
    LostOwnership,
    TaskOutcome,
    WorkflowEngine,
    WorkflowError,
)
from agents.workflow.store import WorkflowStore
from mesh.errors import ConfigError, MeshError, exception_leaves

__all__ = ["DriverRunner", "WorkflowService", "WorkflowSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkflowSettings:
    """Timings and limits of a node's workflow service."""

    scan_interval_s: float = 0.5
    """How often unfinished workflows are looked for (new, orphaned, own)."""
    claim_delay_s: float = 2.0
    """How long an orphaned workflow waits for the node it hashes to before any
    node claims it."""
    workflows_max: int = 64
    """Engines running on this node at once."""
    gate_poll_s: float = 0.2
    """How often a waiting approval gate is read."""
    kv_timeout_s: float = 10.0
    """Bound on each store call of the scan."""

    def __post_init__(self) -> None:
        for name in ("scan_interval_s", "claim_delay_s", "gate_poll_s", "kv_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not (
                    0 < value <= 3600):
                raise ConfigError(f"workflow {name} ({value!r}) must be more than 0 and at "
                                  "most 3600 seconds")
        if type(self.workflows_max) is not int or not 1 <= self.workflows_max <= 10_000:
            raise ConfigError(f"workflows_max ({self.workflows_max!r}) must be an integer "
                              "from 1 to 10000")


class DriverRunner:
    """The engine's ``StepRunner`` on a node: steps as contract-net tasks."""

    def __init__(self, driver: ContractNetDriver, store: WorkflowStore,
                 settings: WorkflowSettings) -> None:
        self.driver = driver
        self.store = store
        self.settings = settings

    def now(self) -> float:
        return time.time()

    async def run_task(self, task_id: str, target: str, task_input: Mapping[str, Any], *,
                       max_attempts: int, timeout_s: float) -> TaskOutcome:
        capability = (AGENT_CAPABILITY_PREFIX + target[1:] if target.startswith("@")
                      else target)
        try:
            await self.driver.submit(capability, task_input, task_id=task_id,
                                     max_attempts=max_attempts)
            record = await self.driver.wait(task_id, timeout_s)
        except LedgerError as exc:
            return TaskOutcome(False, error=str(exc), task_id=task_id)
        except TimeoutError:
            await self.cancel_task(task_id, f"no result within {timeout_s:g} s")
            return TaskOutcome(False, error=f"no result within {timeout_s:g} s",
                               task_id=task_id)
        except MeshError as exc:
            return TaskOutcome(False, error=f"the ledger could not be used: {exc}",
                               task_id=task_id)
        node = record.contractor.hex() if record.contractor else None
        if record.state is TaskState.DONE:
            return TaskOutcome(True, result=decode_json(record.result), agent=record.agent,
                               node=node, task_id=task_id, epoch=record.epoch)
        reasons = "; ".join(record.failure_reasons) or record.state.value
        return TaskOutcome(False, error=f"task {record.state.value}: {reasons}",
                           agent=record.agent, node=node, task_id=task_id,
                           epoch=record.epoch)

    async def cancel_task(self, task_id: str, reason: str) -> None:
        kv = self.driver.node.kv
        for _ in range(5):
            item = await kv.get(ledger.task_key(task_id))
            if item is None:
                return
            step = ledger.cancel(decode_record(item.value), item.version, reason=reason)
            if isinstance(step, ledger.Refusal):
                return  # final already
            if (await kv.write(step.command)).ok:
                return

    async def open_gate(self, gate: GateRequest) -> float:
        return (await self.store.open_gate(gate)).timeout_at

    async def await_gate(self, gate_id: str, timeout_s: float) -> GateDecision | None:
        with anyio.move_on_after(timeout_s):
            while True:
                gate = await self.store.gate(gate_id)
                if gate is not None and gate.decision is not None:
                    return gate.decision
                await anyio.sleep(self.settings.gate_poll_s)
        gate = await self.store.gate(gate_id)
        return None if gate is None else gate.decision

    async def decide_gate(self, gate_id: str, decision: GateDecision) -> GateDecision:
        return await self.store.decide(gate_id, decision)


class WorkflowService:
    """Runs and resumes workflows on one node (see the module docstring)."""

    def __init__(self, node: Any, driver: ContractNetDriver,
                 settings: WorkflowSettings | None = None) -> None:
        self.node = node
        self.driver = driver
        self.settings = settings or WorkflowSettings()
        self._store: WorkflowStore | None = None  # the node's KV client exists once it runs
        self._running: set[str] = set()
        self._orphaned_since: dict[str, float] = {}
        self._group: TaskGroup | None = None
        self._counters = {"started": 0, "resumed": 0, "claimed": 0, "done": 0, "failed": 0,
                          "rejected": 0, "lost_ownership": 0, "errors": 0, "scans": 0}

    @property
    def store(self) -> WorkflowStore:
        """The workflow store over this node's KV client."""
        if self._store is None:
            self._store = WorkflowStore(self.node.kv)
        return self._store

    def install(self) -> None:
        """Register the service and its status section on the node (before it runs)."""
        self.node.add_service(self.run)
        self.node.add_status("workflows", self.status)

    def status(self) -> dict[str, Any]:
        """The ``workflows`` section of the node's status."""
        return {"running": sorted(self._running), **self._counters}

    async def run(self) -> None:
        """Scan and run workflows until cancelled."""
        async with anyio.create_task_group() as group:
            self._group = group
            while True:
                try:
                    with anyio.fail_after(self.settings.kv_timeout_s):
                        await self._scan()
                except (MeshError, TimeoutError) as exc:
                    self._counters["errors"] += 1
                    log.debug("workflow scan failed: %s", exc)
                await anyio.sleep(self.settings.scan_interval_s)

    async def _scan(self) -> None:
        self._counters["scans"] += 1
        me = self.node.node_id
        waiting = [workflow_id for workflow_id in await self.store.active()
                   if workflow_id not in self._running]
        orphaned: dict[str, float] = {}
        if waiting:
            owners = await self.store.owners(waiting)
            live = await self._live_nodes()
        now = time.monotonic()
        for workflow_id in waiting:
            if len(self._running) >= self.settings.workflows_max:
                break
            owner, version = owners.get(workflow_id, (None, 0))
            if owner == me:
                self._launch(workflow_id, resumed=True)
                continue
            if owner is not None and owner in live:
                continue
            since = self._orphaned_since.get(workflow_id, now)
            orphaned[workflow_id] = since
            if (now - since < self.settings.claim_delay_s
                    and preferred_node(workflow_id, live | {me}) != me):
                continue
            if await self.store.claim(workflow_id, me, version):
                self._counters["claimed"] += 1
                orphaned.pop(workflow_id, None)
                self._launch(workflow_id, resumed=owner is not None)
        self._orphaned_since = orphaned

    async def _live_nodes(self) -> set[bytes]:
        """The nodes whose ``alive/`` key (under their node lease) exists."""
        items, _ = await self.node.kv.list(ALIVE_PREFIX, limit=10_000)
        live: set[bytes] = set()
        for item in items:
            try:
                live.add(bytes.fromhex(item.key[len(ALIVE_PREFIX):]))
            except ValueError:
                continue
        return live

    def _launch(self, workflow_id: str, *, resumed: bool) -> None:
        assert self._group is not None
        self._running.add(workflow_id)
        self._counters["resumed" if resumed else "started"] += 1
        self._group.start_soon(self._orchestrate, workflow_id)

    async def _orchestrate(self, workflow_id: str) -> None:
        try:
            record = await self.store.workflow(workflow_id)
            if record is None or record.final:
                return
            checkpoints = await self.store.checkpoints(workflow_id)
            runner = DriverRunner(self.driver, self.store, self.settings)
            engine = WorkflowEngine(workflow_id, record.spec, runner, checkpoints,
                                    run_input=record.input)
            outcome = await engine.run()
            await self.store.finish(workflow_id, outcome)
            self._counters[outcome.state] = self._counters.get(outcome.state, 0) + 1
            log.info("workflow %s %s", workflow_id, outcome.state)
        except Exception as exc:
            leaves = exception_leaves(exc)
            if all(isinstance(leaf, LostOwnership) for leaf in leaves):
                self._counters["lost_ownership"] += 1
            elif all(isinstance(leaf, WorkflowError | MeshError | TimeoutError)
                     for leaf in leaves):
                self._counters["errors"] += 1
                log.warning("workflow %s stopped here: %s (the next scan retries)",
                            workflow_id, "; ".join(map(str, leaves)))
            else:
                raise
        finally:
            self._running.discard(workflow_id)



