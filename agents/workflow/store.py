"""Workflows, their step checkpoints and approval gates in the Raft KV store.

How this works
--------------
Keys (values are canonical JSON)::

    wf/<id>                 the workflow: spec, input, state, result, times
    wfactive/<id>           index of the workflows not finished (empty value)
    wfowner/<id>            the node orchestrating it (node id bytes)
    wfstep/<id>/<step key>  one step's checkpoint (``engine.StepRecord``)
    gate/<gate id>          an approval gate: prompt, what is shown, decision
    gatepending/<gate id>   index of the gates not yet answered (empty value)

Every write that moves a workflow or a gate between unfinished and finished is
one ``CompareAndSetWithWrites``, so the indexes never disagree with the records.
A workflow is created open (``submit``) with no owner or with the submitting
node as owner; a node's ``WorkflowService`` claims an ownerless one, or one
whose owner's ``alive/`` key is gone, by compare-and-set on ``wfowner/<id>``.

Checkpoints (``KVCheckpoints``) write each step record by compare-and-set on the
version this orchestrator last saw: a second orchestrator of the same workflow
(the first was only paused) makes the first one's next write fail, and it stops
(``LostOwnership``) instead of racing. Both would have written the same outcomes
anyway, since every step's task and gate id is derived from the step's key.

A gate is answered once: ``decide`` is a compare-and-set from the pending
record, so a second answer (or a timeout racing a person) gets the standing
decision back and changes nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.driver import encode_json
from agents.workflow.engine import (
    DONE,
    GateDecision,
    GateRequest,
    LostOwnership,
    StepRecord,
    WorkflowError,
    WorkflowOutcome,
)
from agents.workflow.spec import WorkflowSpec, parse_workflow
from consensus.kvstore import CompareAndSetWithWrites, ErrorCode
from mesh.errors import MeshError
from mesh.kv_messages import GET_MANY_KEYS_MAX

__all__ = [
    "ACTIVE_PREFIX",
    "GATE_PENDING_PREFIX",
    "GATE_PREFIX",
    "OWNER_PREFIX",
    "STEP_PREFIX",
    "WORKFLOW_PREFIX",
    "Gate",
    "KVCheckpoints",
    "LostOwnership",
    "WorkflowRecord",
    "WorkflowStore",
]

WORKFLOW_PREFIX = "wf/"
ACTIVE_PREFIX = "wfactive/"
OWNER_PREFIX = "wfowner/"
STEP_PREFIX = "wfstep/"
GATE_PREFIX = "gate/"
GATE_PENDING_PREFIX = "gatepending/"
WORKFLOW_ID_CHARS_MAX = 64
PENDING = "pending"
APPROVED = "approved"
REJECTED_GATE = "rejected"


def _load(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise WorkflowError(f"{what} is not JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """A workflow as stored under ``wf/<id>``."""

    workflow_id: str
    spec: WorkflowSpec
    input: dict[str, Any]
    state: str
    created: float
    finished: float | None = None
    result: Any = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored JSON form."""
        return {"id": self.workflow_id, "spec": self.spec.model_dump(mode="json"),
                "input": self.input, "state": self.state, "created": self.created,
                "finished": self.finished, "result": self.result, "error": self.error}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> WorkflowRecord:
        """Back from ``to_json``; ``WorkflowError`` for anything else."""
        try:
            return WorkflowRecord(str(data["id"]), parse_workflow(data["spec"]),
                                  dict(data.get("input") or {}), str(data["state"]),
                                  float(data["created"]), data.get("finished"),
                                  data.get("result"), data.get("error"))
        except (KeyError, TypeError, ValueError, MeshError) as exc:
            raise WorkflowError(f"malformed workflow record: {exc}") from None

    @property
    def final(self) -> bool:
        """Whether it finished (done, failed or rejected)."""
        return self.state != "running"


@dataclass(frozen=True, slots=True)
class Gate:
    """An approval gate as stored under ``gate/<gate id>``."""

    gate_id: str
    workflow_id: str
    step: str
    prompt: str
    shown: Any
    approvers: str
    created: float
    timeout_at: float
    state: str = PENDING
    by: str = ""
    comment: str = ""
    decided: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored JSON form."""
        return {"gate": self.gate_id, "workflow": self.workflow_id, "step": self.step,
                "prompt": self.prompt, "shown": self.shown, "approvers": self.approvers,
                "created": self.created, "timeout_at": self.timeout_at, "state": self.state,
                "by": self.by, "comment": self.comment, "decided": self.decided}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Gate:
        """Back from ``to_json``; ``WorkflowError`` for anything else."""
        try:
            return Gate(str(data["gate"]), str(data["workflow"]), str(data["step"]),
                        str(data["prompt"]), data.get("shown"), str(data.get("approvers", "")),
                        float(data["created"]), float(data["timeout_at"]), str(data["state"]),
                        str(data.get("by", "")), str(data.get("comment", "")),
                        data.get("decided"))
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkflowError(f"malformed gate record: {exc}") from None

    @property
    def decision(self) -> GateDecision | None:
        """The decision, or None while pending."""
        if self.state == PENDING:
            return None
        return GateDecision(self.state == APPROVED, self.by, self.comment, self.decided or 0.0)


class WorkflowStore:
    """Reads and writes workflows and gates through a ``KVClient``-like ``kv``."""

    def __init__(self, kv: Any, clock: Any = time.time) -> None:
        self.kv = kv
        self._clock = clock

    # -- workflows -----------------------------------------------------------------

    async def submit(self, spec: WorkflowSpec, run_input: Mapping[str, Any] | None = None, *,
                     workflow_id: str | None = None, owner: bytes | None = None) -> str:
        """Record a new workflow, open (orchestrated by ``owner``, or by whichever node
        claims it); its id. Idempotent for an id already holding the same spec and
        input; ``WorkflowError`` for an id used by another workflow."""
        workflow_id = workflow_id or uuid.uuid4().hex[:20]
        if not 1 <= len(workflow_id) <= WORKFLOW_ID_CHARS_MAX or "/" in workflow_id:
            raise WorkflowError(f"workflow id {workflow_id!r} must be 1 to "
                                f"{WORKFLOW_ID_CHARS_MAX} characters without '/'")
        record = WorkflowRecord(workflow_id, spec, dict(run_input or {}), "running",
                                self._clock())
        writes: list[tuple[str, bytes | None]] = [(ACTIVE_PREFIX + workflow_id, b"")]
        if owner is not None:
            writes.append((OWNER_PREFIX + workflow_id, owner))
        response = await self.kv.write(CompareAndSetWithWrites(
            WORKFLOW_PREFIX + workflow_id, encode_json(record.to_json()), 0, None, tuple(writes)))
        if response.ok:
            return workflow_id
        if response.error is not ErrorCode.CAS_FAILED:
            raise WorkflowError(f"workflow {workflow_id} not recorded: "
                                f"{response.error.value}: {response.detail}")
        existing = await self.workflow(workflow_id)
        if existing is None or existing.spec != spec or existing.input != record.input:
            raise WorkflowError(f"workflow id {workflow_id} is used by another workflow")
        return workflow_id

    async def workflow(self, workflow_id: str) -> WorkflowRecord | None:
        """The workflow, or None."""
        item = await self.kv.get(WORKFLOW_PREFIX + workflow_id)
        if item is None:
            return None
        return WorkflowRecord.from_json(_load(item.value, f"workflow {workflow_id}"))

    async def finish(self, workflow_id: str, outcome: WorkflowOutcome) -> bool:
        """Record the outcome and leave the indexes; False if it had finished already."""
        item = await self.kv.get(WORKFLOW_PREFIX + workflow_id)
        if item is None:
            return False
        record = WorkflowRecord.from_json(_load(item.value, f"workflow {workflow_id}"))
        if record.final:
            return False
        data = record.to_json() | {"state": outcome.state, "result": outcome.result,
                                   "error": outcome.error, "finished": self._clock()}
        response = await self.kv.write(CompareAndSetWithWrites(
            WORKFLOW_PREFIX + workflow_id, encode_json(data), item.version, None,
            ((ACTIVE_PREFIX + workflow_id, None), (OWNER_PREFIX + workflow_id, None))))
        return bool(response.ok)

    async def active(self, most: int = 1000) -> list[str]:
        """Ids of the workflows not finished, at most ``most``."""
        items, _ = await self.kv.list(ACTIVE_PREFIX, limit=most)
        return [item.key[len(ACTIVE_PREFIX):] for item in items]

    async def owner(self, workflow_id: str) -> tuple[bytes | None, int]:
        """The orchestrating node (or None) and the owner key's version (0: absent)."""
        item = await self.kv.get(OWNER_PREFIX + workflow_id)
        return (None, 0) if item is None else (item.value, item.version)

    async def owners(self, workflow_ids: list[str]) -> dict[str, tuple[bytes, int]]:
        """The orchestrating node and owner-key version of those of ``workflow_ids``
        that have an owner, read at once."""
        found: dict[str, tuple[bytes, int]] = {}
        for start in range(0, len(workflow_ids), GET_MANY_KEYS_MAX):
            keys = [OWNER_PREFIX + w for w in workflow_ids[start:start + GET_MANY_KEYS_MAX]]
            for item in await self.kv.get_many(keys):
                found[item.key[len(OWNER_PREFIX):]] = (item.value, item.version)
        return found

    async def claim(self, workflow_id: str, node_id: bytes, expect_version: int) -> bool:
        """Become the orchestrator by compare-and-set on the owner key."""
        response = await self.kv.compare_and_set(OWNER_PREFIX + workflow_id, node_id,
                                                 expect_version)
        return bool(response.ok)

    async def steps(self, workflow_id: str) -> dict[str, tuple[StepRecord, int]]:
        """Every step record of the workflow, with its KV version."""
        prefix = f"{STEP_PREFIX}{workflow_id}/"
        found: dict[str, tuple[StepRecord, int]] = {}
        start_after: str | None = None
        while True:
            items, more = await self.kv.list(prefix, limit=1000, start_after=start_after)
            for item in items:
                record = StepRecord.from_json(_load(item.value, item.key))
                found[record.key] = (record, item.version)
            if not more or not items:
                return found
            start_after = items[-1].key

    async def checkpoints(self, workflow_id: str) -> KVCheckpoints:
        """The workflow's checkpoints, loaded, for an engine to resume from."""
        return KVCheckpoints(self, workflow_id, await self.steps(workflow_id))

    # -- gates ---------------------------------------------------------------------

    async def open_gate(self, request: GateRequest) -> Gate:
        """Create the pending gate unless it exists; the gate as it stands."""
        gate = Gate(request.gate_id, request.workflow_id, request.step, request.prompt,
                    request.shown, request.approvers, self._clock(), request.timeout_at)
        response = await self.kv.write(CompareAndSetWithWrites(
            GATE_PREFIX + request.gate_id, encode_json(gate.to_json()), 0, None,
            ((GATE_PENDING_PREFIX + request.gate_id, b""),)))
        if response.ok:
            return gate
        existing = await self.gate(request.gate_id)
        if existing is None:
            raise WorkflowError(f"gate {request.gate_id} not recorded: {response.detail}")
        return existing

    async def gate(self, gate_id: str) -> Gate | None:
        """The gate, or None."""
        item = await self.kv.get(GATE_PREFIX + gate_id)
        return None if item is None else Gate.from_json(_load(item.value, f"gate {gate_id}"))

    async def decide(self, gate_id: str, decision: GateDecision) -> GateDecision:
        """Answer the gate once; the decision that stands (an earlier one wins).
        ``WorkflowError`` for an unknown gate."""
        for _ in range(8):
            item = await self.kv.get(GATE_PREFIX + gate_id)
            if item is None:
                raise WorkflowError(f"no approval gate {gate_id}")
            gate = Gate.from_json(_load(item.value, f"gate {gate_id}"))
            if gate.decision is not None:
                return gate.decision
            data = gate.to_json() | {
                "state": APPROVED if decision.approved else REJECTED_GATE, "by": decision.by,
                "comment": decision.comment, "decided": decision.at or self._clock()}
            response = await self.kv.write(CompareAndSetWithWrites(
                GATE_PREFIX + gate_id, encode_json(data), item.version, None,
                ((GATE_PENDING_PREFIX + gate_id, None),)))
            if response.ok:
                return GateDecision(decision.approved, decision.by, decision.comment,
                                    data["decided"])
        raise WorkflowError(f"gate {gate_id} kept changing while it was answered")

    async def pending_gates(self, most: int = 1000) -> list[Gate]:
        """The gates waiting for an answer."""
        items, _ = await self.kv.list(GATE_PENDING_PREFIX, limit=most)
        keys = [GATE_PREFIX + item.key[len(GATE_PENDING_PREFIX):] for item in items]
        gates = await self.kv.get_many(keys) if keys else []
        return [Gate.from_json(_load(item.value, item.key)) for item in gates]

    # -- the view ------------------------------------------------------------------

    async def view(self, workflow_id: str) -> dict[str, Any] | None:
        """What ``agentmesh workflow show`` prints: the workflow and its steps by start."""
        record = await self.workflow(workflow_id)
        if record is None:
            return None
        steps = sorted((step for step, _ in (await self.steps(workflow_id)).values()),
                       key=lambda s: (s.started or 0.0, s.key))
        owner, _ = await self.owner(workflow_id)
        return {"workflow_id": workflow_id, "name": record.spec.name, "state": record.state,
                "result": record.result, "error": record.error, "created": record.created,
                "finished": record.finished, "orchestrator": owner.hex() if owner else None,
                "steps": [step_view(step) for step in steps]}


def step_view(step: StepRecord) -> dict[str, Any]:
    """One step as ``workflow show`` and the demo print it."""
    return {"name": step.name, "key": step.key, "pattern": step.pattern,
            "agent": step.agent, "node": step.node, "target": step.target,
            "started": step.started, "finished": step.finished, "state": step.state,
            "task_id": step.task_id, "epoch": step.epoch, "error": step.error,
            "meta": step.meta}


class KVCheckpoints:
    """The ``engine.Checkpoints`` of one workflow, in the KV store (module doc)."""

    def __init__(self, store: WorkflowStore, workflow_id: str,
                 loaded: dict[str, tuple[StepRecord, int]]) -> None:
        self._store = store
        self._prefix = f"{STEP_PREFIX}{workflow_id}/"
        self._records = loaded

    def get(self, key: str) -> StepRecord | None:
        """The record of ``key`` as last written or loaded."""
        found = self._records.get(key)
        return None if found is None else StepRecord.from_json(found[0].to_json())

    async def put(self, record: StepRecord) -> None:
        """Write ``record`` (compare-and-set on the version seen); ``LostOwnership``
        when another orchestrator wrote it meanwhile."""
        _, version = self._records.get(record.key, (None, 0))
        response = await self._store.kv.compare_and_set(self._prefix + record.key,
                                                        encode_json(record.to_json()), version)
        if response.ok:
            self._records[record.key] = (StepRecord.from_json(record.to_json()),
                                         int(response.version))
            return
        if response.error is ErrorCode.CAS_FAILED:
            raise LostOwnership(f"step {record.key} was written by another orchestrator")
        raise WorkflowError(f"checkpoint of step {record.key} not written: "
                            f"{response.error.value}: {response.detail}")

    def done_keys(self) -> list[str]:
        """Keys of the steps that finished (tests and timelines)."""
        return [key for key, (record, _) in self._records.items() if record.state == DONE]
