"""In-memory stand-ins for the workflow engine's runner and checkpoints (tests only).

``FakeRunner`` runs "agents" that are Python functions (or coroutine functions,
e.g. a ``ModelAgent``'s bound ``handle``) of the task input,
keyed by target, and counts every run per task id, so a test can say that a
resumed workflow did not run a finished step again. Gates are answered through
``answer``; a task can be made to block until a test releases it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from agents.workflow.engine import GateDecision, GateRequest, StepRecord, TaskOutcome

Behaviour = Callable[[Mapping[str, Any]], Any]


class AgentFailure(Exception):
    """Raised by a fake agent to fail its task."""


@dataclass
class FakeRunner:
    agents: dict[str, Behaviour]
    runs: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    gates: dict[str, GateRequest] = field(default_factory=dict)
    decisions: dict[str, GateDecision] = field(default_factory=dict)
    blocked: dict[str, anyio.Event] = field(default_factory=dict)
    started: dict[str, anyio.Event] = field(default_factory=dict)
    _gate_events: dict[str, anyio.Event] = field(default_factory=dict)

    def now(self) -> float:
        return time.time()

    def block(self, target: str) -> anyio.Event:
        """Tasks for ``target`` wait until the returned event is set."""
        event = self.blocked[target] = anyio.Event()
        return event

    def started_event(self, target: str) -> anyio.Event:
        event = self.started.setdefault(target, anyio.Event())
        return event

    async def run_task(self, task_id: str, target: str, task_input: Mapping[str, Any], *,
                       max_attempts: int, timeout_s: float) -> TaskOutcome:
        self.runs[task_id] = self.runs.get(task_id, 0) + 1
        self.inputs[task_id] = task_input
        self.started_event(target).set()
        if target in self.blocked:
            await self.blocked[target].wait()
        behaviour = self.agents.get(target)
        if behaviour is None:
            return TaskOutcome(False, error=f"no agent offers {target}", task_id=task_id)
        try:
            result = behaviour(task_input)
            if inspect.isawaitable(result):
                result = await result
        except AgentFailure as exc:
            return TaskOutcome(False, error=str(exc), agent=target, node="n1",
                               task_id=task_id, epoch=1)
        return TaskOutcome(True, result=result, agent=target, node="n1", task_id=task_id,
                           epoch=1)

    async def cancel_task(self, task_id: str, reason: str) -> None:
        self.cancelled.append(task_id)

    async def open_gate(self, gate: GateRequest) -> float:
        standing = self.gates.setdefault(gate.gate_id, gate)
        self._gate_events.setdefault(gate.gate_id, anyio.Event())
        return standing.timeout_at

    async def await_gate(self, gate_id: str, timeout_s: float) -> GateDecision | None:
        event = self._gate_events.setdefault(gate_id, anyio.Event())
        with anyio.move_on_after(timeout_s):
            await event.wait()
        return self.decisions.get(gate_id)

    async def decide_gate(self, gate_id: str, decision: GateDecision) -> GateDecision:
        return self.answer(gate_id, decision)

    def answer(self, gate_id: str, decision: GateDecision) -> GateDecision:
        """Decide the gate once: a second answer gets the first one back."""
        if gate_id in self.decisions:
            return self.decisions[gate_id]
        self.decisions[gate_id] = decision
        self._gate_events.setdefault(gate_id, anyio.Event()).set()
        return decision


@dataclass
class MemoryCheckpoints:
    records: dict[str, StepRecord] = field(default_factory=dict)
    writes: list[StepRecord] = field(default_factory=list)

    def get(self, key: str) -> StepRecord | None:
        record = self.records.get(key)
        return None if record is None else StepRecord.from_json(record.to_json())

    async def put(self, record: StepRecord) -> None:
        copy = StepRecord.from_json(record.to_json())
        self.records[record.key] = copy
        self.writes.append(copy)
