"""Runs a workflow's patterns, step by step, resumable from its checkpoints.

How this works
--------------
``WorkflowEngine(workflow_id, spec, runner, checkpoints).run()`` walks the spec.
Every step has a *key*, the path of step names (``"research/market"``,
``"review/turn-3"``), the same on every run of that workflow. Before a step does
anything it looks for its key in the checkpoints:

- a ``done`` (or ``failed``) record is the step's outcome: nothing runs again;
- otherwise the step writes a ``running`` record, does its work, and writes
  the outcome before the workflow moves on (persist, then continue).

An agent task's id is derived from the workflow id and the key, so a resumed
workflow that reaches a step whose task was in flight submits the *same* task
again, which the contract net treats as the same task (idempotent submit): it
is finished once, re-run at most at a new epoch when its contractor died, and
a late result of an older epoch is refused by the ledger. Approval gates have
ids derived the same way and are answered once (compare-and-set).

Everything the engine decides follows from the spec and the recorded outputs
(no clocks, no randomness except deadlines, which are measured from a start
time kept in the checkpoint), so replaying a workflow from its checkpoints takes
the same path as the first run. The runner (``StepRunner``) is what touches the
world: the contract net, the approval store, the clock. ``agents.workflow.
service`` drives it on a node; tests drive it with in-memory runners.

Patterns (see ``agents.workflow.spec``) each have one method below. Where a
pattern stops early (a cycle in a handoff chain, a budget spent, a stall, a
chat's end) the output says why, and every choice (the next speaker, who chose
and why) is in the step records.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import anyio

from agents.coordination.negotiation import Conflict, Proposal, ResolverConfig, resolve_conflict
from agents.coordination.priority import Claim
from agents.coordination.voting import Ballot, VotingRule, tally
from agents.outcomes import Handoff, HandoffError, handoff_from_result
from agents.workflow.spec import (
    AgentStep,
    ApprovalStep,
    ConcurrentStep,
    GroupChatStep,
    HandoffStep,
    MagenticStep,
    ResolveStep,
    SequentialStep,
    Step,
    VoteStep,
    WorkflowSpec,
    is_function_name,
)
from agents.workflow.templates import TemplateError, lookup, render
from mesh.errors import MeshError

__all__ = [
    "DONE",
    "FAILED",
    "REJECTED",
    "RUNNING",
    "Checkpoints",
    "GateDecision",
    "GateRequest",
    "LostOwnership",
    "StepFailed",
    "StepRecord",
    "StepRunner",
    "TaskOutcome",
    "WorkflowEngine",
    "WorkflowOutcome",
    "task_id_for",
]

RUNNING = "running"
DONE = "done"
FAILED = "failed"
REJECTED = "rejected"
WAITING = "waiting"
TASK_ID_CHARS_MAX = 128
_TRANSCRIPT_TEXT_CHARS_MAX = 4000


class WorkflowError(MeshError):
    """Root of the errors that end a workflow."""


class LostOwnership(MeshError):
    """Another orchestrator writes this workflow's checkpoints: this engine stops
    (not a failure of the workflow, which goes on there)."""


class StepFailed(WorkflowError):
    """A step failed; the workflow fails unless a pattern tolerates it."""

    def __init__(self, key: str, error: str) -> None:
        super().__init__(f"step {key} failed: {error}")
        self.key = key
        self.error = error


class WorkflowRejected(WorkflowError):
    """An approval gate was rejected and its step says stop."""

    def __init__(self, key: str, comment: str) -> None:
        super().__init__(f"approval {key} rejected" + (f": {comment}" if comment else ""))
        self.key = key


@dataclass(slots=True)
class StepRecord:
    """One step's checkpoint: what ran, where, when, and how it ended."""

    key: str
    name: str
    pattern: str
    state: str
    target: str | None = None
    agent: str | None = None
    node: str | None = None
    task_id: str | None = None
    epoch: int | None = None
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in the checkpoint."""
        return asdict(self)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> StepRecord:
        """Back from ``to_json``; ``WorkflowError`` for anything else."""
        try:
            return StepRecord(**dict(data))
        except TypeError as exc:
            raise WorkflowError(f"malformed step record: {exc}") from None


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one agent task ended."""

    ok: bool
    result: Any = None
    error: str | None = None
    agent: str | None = None
    node: str | None = None
    task_id: str | None = None
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class GateRequest:
    """An approval to ask a person for."""

    gate_id: str
    workflow_id: str
    step: str
    prompt: str
    shown: Any
    approvers: str
    timeout_at: float


@dataclass(frozen=True, slots=True)
class GateDecision:
    """A person's (or a timeout's) answer to a gate."""

    approved: bool
    by: str = ""
    comment: str = ""
    at: float = 0.0


class StepRunner(Protocol):
    """What the engine needs from the world."""

    def now(self) -> float:
        """Wall-clock seconds (timelines and deadlines)."""
        ...

    async def run_task(self, task_id: str, target: str, task_input: Mapping[str, Any], *,
                       max_attempts: int, timeout_s: float) -> TaskOutcome:
        """Run (or rejoin) the task ``task_id`` for ``target`` until it ends."""
        ...

    async def cancel_task(self, task_id: str, reason: str) -> None:
        """Give up the task ``task_id`` (a deadline passed); no error if it ended."""
        ...

    async def open_gate(self, gate: GateRequest) -> float:
        """Record the pending gate durably (idempotent); the gate's ``timeout_at`` as
        first recorded, so a resumed workflow keeps the original deadline."""
        ...

    async def await_gate(self, gate_id: str, timeout_s: float) -> GateDecision | None:
        """The gate's decision, or None when none came within ``timeout_s``."""
        ...

    async def decide_gate(self, gate_id: str, decision: GateDecision) -> GateDecision:
        """Decide the gate unless someone did first; the decision that stands."""
        ...


class Checkpoints(Protocol):
    """Where step records live (durably, for ``agents.workflow.store``)."""

    def get(self, key: str) -> StepRecord | None:
        """The record of ``key``, if any."""
        ...

    async def put(self, record: StepRecord) -> None:
        """Store ``record`` durably before returning."""
        ...


@dataclass(frozen=True, slots=True)
class WorkflowOutcome:
    """How the whole workflow ended: ``done``, ``failed`` or ``rejected``."""

    state: str
    result: Any = None
    error: str | None = None


def task_id_for(workflow_id: str, key: str) -> str:
    """The contract-net task id of step ``key``: the same on every run."""
    plain = f"{workflow_id}/{key}"
    if len(plain) <= TASK_ID_CHARS_MAX:
        return plain
    digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    return f"{workflow_id[:TASK_ID_CHARS_MAX - 28]}/h-{digest}"


Aggregator = Callable[[list[dict[str, Any]]], Any]
Predicate = Callable[[list[dict[str, Any]]], bool]


def _aggregate_merge(branches: list[dict[str, Any]]) -> Any:
    return {b["name"]: b["output"] for b in branches if b["state"] == DONE}


def _aggregate_list(branches: list[dict[str, Any]]) -> Any:
    return [b["output"] for b in branches if b["state"] == DONE]


def _aggregate_first(branches: list[dict[str, Any]]) -> Any:
    return next((b["output"] for b in branches if b["state"] == DONE), None)


AGGREGATORS: Mapping[str, Aggregator] = {
    "merge": _aggregate_merge, "list": _aggregate_list, "first": _aggregate_first}
"""Built-in aggregators of concurrent branches."""


def load_function(name: str) -> Callable[..., Any]:
    """``package.module:function`` imported; ``WorkflowError`` naming what failed."""
    if not is_function_name(name):
        raise WorkflowError(f"{name!r} is neither a built-in nor package.module:function")
    module_name, function_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowError(f"cannot import {module_name} for {name}: {exc}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise WorkflowError(f"{name} is not a function")
    return function  # type: ignore[no-any-return]


class WorkflowEngine:
    """Runs one workflow (see the module docstring)."""

    def __init__(self, workflow_id: str, spec: WorkflowSpec, runner: StepRunner,
                 checkpoints: Checkpoints, *, run_input: Mapping[str, Any] | None = None
                 ) -> None:
        self.workflow_id = workflow_id
        self.spec = spec
        self.runner = runner
        self.checkpoints = checkpoints
        self.input = {**spec.input, **dict(run_input or {})}
        self._in_flight: set[str] = set()

    async def run(self) -> WorkflowOutcome:
        """Run (or resume) the workflow to its end."""
        scope: dict[str, Any] = {"input": self.input, "previous": self.input}
        try:
            for step in self.spec.steps:
                output = await self._step(step, scope, "")
                scope[step.name] = output
                scope["previous"] = output
            result = (scope["previous"] if self.spec.output is None
                      else render(self.spec.output, scope))
        except WorkflowRejected as exc:
            return WorkflowOutcome(REJECTED, error=str(exc))
        except (WorkflowError, TemplateError) as exc:
            return WorkflowOutcome(FAILED, error=str(exc))
        return WorkflowOutcome(DONE, result=result)

    # -- steps ---------------------------------------------------------------------

    async def _step(self, step: Step, scope: Mapping[str, Any], parent: str) -> Any:
        key = f"{parent}/{step.name}" if parent else step.name
        record = self.checkpoints.get(key)
        if record is not None and record.state == DONE:
            return record.result
        if record is not None and record.state == FAILED:
            raise StepFailed(key, record.error or "failed")
        if record is not None and record.state == REJECTED:
            raise WorkflowRejected(key, record.error or "")
        started = record.started if record is not None and record.started else self.runner.now()
        if isinstance(step, AgentStep):
            task_input = self._render(step.input, scope, key)
            result = await self._agent_task(key, step.name, "agent", step.target, task_input,
                                            started=started, max_attempts=step.max_attempts,
                                            timeout_s=step.timeout_s)
            return self._select(step.output, {**scope, "result": result}, result)
        if isinstance(step, ApprovalStep):
            return await self._approval(step, scope, key, started)
        if isinstance(step, VoteStep):
            return await self._vote(step, scope, key, started)
        if isinstance(step, ResolveStep):
            return await self._resolve(step, scope, key, started)
        await self._put(StepRecord(key, step.name, step.pattern, RUNNING, started=started))
        try:
            if isinstance(step, SequentialStep):
                result = await self._sequential(step, scope, key)
            elif isinstance(step, ConcurrentStep):
                result = await self._concurrent(step, scope, key, started)
            elif isinstance(step, GroupChatStep):
                result = await self._group_chat(step, scope, key)
            elif isinstance(step, HandoffStep):
                result = await self._handoff(step, scope, key)
            else:
                result = await self._magentic(step, scope, key)
            result = self._select(step.output, {**scope, "result": result}, result)
        except StepFailed as exc:
            await self._put(StepRecord(key, step.name, step.pattern, FAILED, started=started,
                                       finished=self.runner.now(), error=exc.error))
            raise StepFailed(key, exc.error) from None
        except TemplateError as exc:
            await self._put(StepRecord(key, step.name, step.pattern, FAILED, started=started,
                                       finished=self.runner.now(), error=str(exc)))
            raise StepFailed(key, str(exc)) from None
        await self._put(StepRecord(key, step.name, step.pattern, DONE, started=started,
                                   finished=self.runner.now(), result=result))
        return result

    async def _agent_task(self, key: str, name: str, pattern: str, target: str,
                          task_input: Any, *, started: float | None = None,
                          max_attempts: int = 3, timeout_s: float = 600.0,
                          meta: Mapping[str, Any] | None = None) -> Any:
        """One contract-net task as a checkpointed step; its result (or StepFailed)."""
        record = self.checkpoints.get(key)
        if record is not None and record.state == DONE:
            return record.result
        if record is not None and record.state == FAILED:
            raise StepFailed(key, record.error or "failed")
        if record is not None and record.started:
            started = record.started
        started = started if started is not None else self.runner.now()
        task_id = task_id_for(self.workflow_id, key)
        if not isinstance(task_input, Mapping):
            task_input = {"input": task_input}
        base = StepRecord(key, name, pattern, RUNNING, target=target, task_id=task_id,
                          started=started, meta=dict(meta or {}))
        await self._put(base)
        self._in_flight.add(task_id)
        # Left in flight when cancelled: a deadline then gives the task up (_give_up).
        outcome = await self.runner.run_task(task_id, target, task_input,
                                             max_attempts=max_attempts, timeout_s=timeout_s)
        self._in_flight.discard(task_id)
        base.agent, base.node, base.epoch = outcome.agent, outcome.node, outcome.epoch
        base.finished = self.runner.now()
        if not outcome.ok:
            base.state, base.error = FAILED, outcome.error or "failed"
            await self._put(base)
            raise StepFailed(key, base.error)
        base.state, base.result = DONE, outcome.result
        await self._put(base)
        return outcome.result

    async def _sequential(self, step: SequentialStep, scope: Mapping[str, Any],
                          key: str) -> Any:
        inner = dict(scope)
        output: Any = inner.get("previous")
        for child in step.steps:
            output = await self._step(child, inner, key)
            inner[child.name] = output
            inner["previous"] = output
        return output

    async def _concurrent(self, step: ConcurrentStep, scope: Mapping[str, Any], key: str,
                          started: float) -> Any:
        outcomes: dict[str, dict[str, Any]] = {}

        async def branch(child: Step) -> None:
            try:
                output = await self._step(child, scope, key)
            except StepFailed as exc:
                outcomes[child.name] = {"name": child.name, "state": FAILED, "output": None,
                                        "error": exc.error}
            else:
                outcomes[child.name] = {"name": child.name, "state": DONE, "output": output,
                                        "error": None}

        remaining = None
        if step.deadline_s is not None:
            remaining = max(0.0, started + step.deadline_s - self.runner.now())
        with anyio.move_on_after(remaining):
            async with anyio.create_task_group() as group:
                for child in step.branches:
                    group.start_soon(branch, child)
        for child in step.branches:
            if child.name not in outcomes:
                child_key = f"{key}/{child.name}"
                await self._give_up(child_key, f"the deadline of {step.deadline_s:g} s passed")
                outcomes[child.name] = {"name": child.name, "state": FAILED, "output": None,
                                        "error": "deadline passed"}
                await self._put(StepRecord(child_key, child.name, child.pattern, FAILED,
                                           finished=self.runner.now(),
                                           error="deadline passed"))
        ordered = [outcomes[child.name] for child in step.branches]
        succeeded = sum(o["state"] == DONE for o in ordered)
        needed = {"all": len(ordered), "any": 1}.get(step.failure)
        if needed is None:
            needed = int(step.failure.split(":")[1])
        if succeeded < needed:
            failures = "; ".join(f"{o['name']}: {o['error']}" for o in ordered
                                 if o["state"] != DONE)
            raise StepFailed(key, f"{succeeded} of {len(ordered)} branches succeeded, "
                             f"{needed} needed ({failures})")
        aggregate = AGGREGATORS.get(step.aggregator)
        if aggregate is None:
            try:
                aggregate = load_function(step.aggregator)
                return aggregate(ordered)
            except WorkflowError as exc:
                raise StepFailed(key, str(exc)) from None
            except Exception as exc:  # a user's aggregator: its bug fails the step only
                raise StepFailed(key, f"aggregator {step.aggregator} raised {exc!r}") from None
        return aggregate(ordered)

    async def _give_up(self, prefix: str, reason: str) -> None:
        for task_id in sorted(self._in_flight):
            if task_id == task_id_for(self.workflow_id, prefix) or task_id.startswith(
                    f"{self.workflow_id}/{prefix}/"):
                self._in_flight.discard(task_id)
                await self.runner.cancel_task(task_id, reason)

    # -- group chat ------------------------------------------------------------------

    async def _group_chat(self, step: GroupChatStep, scope: Mapping[str, Any],
                          key: str) -> Any:
        topic = self._render(step.input, scope, key)
        participants = list(dict.fromkeys(step.participants))
        transcript: list[dict[str, Any]] = []
        selections: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        until = None
        if step.until is not None:
            try:
                until = load_function(step.until)
            except WorkflowError as exc:
                raise StepFailed(key, str(exc)) from None
        rotation = 0
        stopped = f"max_turns ({step.max_turns}) reached"
        for turn in range(1, step.max_turns + 1):
            for change in step.membership:
                if change.at_turn == turn:
                    self._change_members(participants, change.join, change.leave, turn,
                                         "scheduled", changes)
            if not participants:
                stopped = "no participant left"
                break
            speaker, chosen_by, why = await self._choose_speaker(
                step, key, turn, participants, transcript, rotation, topic)
            rotation = participants.index(speaker) + 1
            selections.append({"turn": turn, "speaker": speaker, "chosen_by": chosen_by,
                               "why": why})
            output = await self._agent_task(
                f"{key}/turn-{turn}", f"{step.name} turn {turn}", "group_chat", speaker,
                {"topic": topic, "turn": turn, "participants": list(participants),
                 "transcript": transcript[-step.history_max:]},
                meta={"turn": turn, "speaker": speaker, "chosen_by": chosen_by, "why": why})
            text = _text_of(output)
            transcript.append({"turn": turn, "speaker": speaker, "text": text})
            if isinstance(output, Mapping):
                for invited in _names(output.get("invite")):
                    self._change_members(participants, invited, None, turn, speaker, changes)
                if output.get("leave") is True:
                    self._change_members(participants, None, speaker, turn, speaker, changes)
                if step.stop_when_done and output.get("done") is True:
                    stopped = f"{speaker} said it is done"
                    break
            if step.until_contains is not None and step.until_contains in text:
                stopped = f"turn {turn} contains {step.until_contains!r}"
                break
            if until is not None and _call_predicate(until, transcript, key):
                stopped = f"{step.until} said stop after turn {turn}"
                break
        return {"transcript": transcript, "selections": selections, "membership": changes,
                "participants": participants, "turns": len(transcript), "stopped": stopped,
                "final": transcript[-1]["text"] if transcript else None}

    @staticmethod
    def _change_members(participants: list[str], join: str | None, leave: str | None,
                        turn: int, by: str, changes: list[dict[str, Any]]) -> None:
        if join is not None and join not in participants:
            participants.append(join)
            changes.append({"turn": turn, "join": join, "by": by})
        if leave is not None and leave in participants:
            participants.remove(leave)
            changes.append({"turn": turn, "leave": leave, "by": by})

    async def _choose_speaker(self, step: GroupChatStep, key: str, turn: int,
                              participants: list[str], transcript: list[dict[str, Any]],
                              rotation: int, topic: Any) -> tuple[str, str, str]:
        in_turn = participants[rotation % len(participants)]
        if step.speaker == "round_robin":
            return in_turn, "round_robin", "next in turn"
        assert step.selector is not None
        choice = await self._agent_task(
            f"{key}/select-{turn}", f"{step.name} select {turn}", "group_chat",
            step.selector, {"topic": topic, "turn": turn, "participants": list(participants),
                            "transcript": transcript[-step.history_max:],
                            "mode": step.speaker})
        chooser = f"{step.speaker}:{step.selector}"
        chosen = choice.get("next") if isinstance(choice, Mapping) else None
        why = str(choice.get("why", "")) if isinstance(choice, Mapping) else ""
        if isinstance(chosen, str) and chosen in participants:
            return chosen, chooser, why or "chosen"
        return in_turn, "round_robin", (f"{chooser} chose {chosen!r}, not a participant; "
                                        "next in turn instead")

    # -- handoff -------------------------------------------------------------------

    async def _handoff(self, step: HandoffStep, scope: Mapping[str, Any], key: str) -> Any:
        case = self._render(step.input, scope, key)
        # Chains advance level by level, in a fixed order, so the hop budget cuts
        # the same chains on every run.
        level: list[_Chain] = [_Chain(label="1", target=step.start, path=[], context={})]
        finished: list[_Chain] = []
        hops = 0
        while level:
            runnable: list[_Chain] = []
            for chain in level:
                if hops >= step.max_hops:
                    chain.stopped = f"hop budget of {step.max_hops} spent"
                    chain.failed = True
                    finished.append(chain)
                else:
                    hops += 1
                    runnable.append(chain)
            results: dict[str, Any] = {}

            async def hop(chain: _Chain, results: dict[str, Any] = results) -> None:
                try:
                    results[chain.label] = await self._agent_task(
                        f"{key}/hop-{chain.label}", f"{step.name} hop {chain.label}",
                        "handoff", chain.target,
                        {"case": case, "context": chain.context, "path": chain.path},
                        meta={"path": [*chain.path, chain.target]})
                except StepFailed as exc:
                    results[chain.label] = exc

            async with anyio.create_task_group() as group:
                for chain in runnable:
                    group.start_soon(hop, chain)
            level = []
            for chain in runnable:
                self._advance(chain, results[chain.label], finished, level)
        finished.sort(key=lambda chain: [int(part) for part in chain.label.split(".")])
        chains = [{"path": c.path, "result": c.result, "stopped": c.stopped} for c in finished]
        failed = [c for c in finished if c.failed]
        if failed and len(failed) == len(finished):
            raise StepFailed(key, "; ".join(f"{' -> '.join(c.path)}: {c.stopped}"
                                            for c in failed))
        answered = [c.result for c in finished if not c.failed]
        return {"result": answered[0] if len(finished) == 1 else answered,
                "chains": chains, "hops": hops}

    @staticmethod
    def _advance(chain: _Chain, outcome: Any, finished: list[_Chain],
                 level: list[_Chain]) -> None:
        path = [*chain.path, chain.target]
        if isinstance(outcome, StepFailed):
            finished.append(_Chain(chain.label, chain.target, path, chain.context,
                                   stopped=outcome.error, failed=True))
            return
        try:
            handoff = handoff_from_result(outcome) if isinstance(outcome, Mapping) else None
        except HandoffError as exc:
            finished.append(_Chain(chain.label, chain.target, path, chain.context,
                                   stopped=f"malformed handoff: {exc}", failed=True))
            return
        if handoff is None:
            finished.append(_Chain(chain.label, chain.target, path, chain.context,
                                   result=outcome))
            return
        context = {**chain.context, **dict(handoff.context)}
        for number, target in enumerate(_labels(handoff), start=1):
            if target in path:
                finished.append(_Chain(
                    f"{chain.label}.{number}", target, path, context, failed=True,
                    stopped=f"cycle: {' -> '.join([*path, target])} (stopped)"))
                continue
            level.append(_Chain(f"{chain.label}.{number}", target, path, context))

    # -- magentic ------------------------------------------------------------------

    async def _magentic(self, step: MagenticStep, scope: Mapping[str, Any], key: str) -> Any:
        task = self._render(step.input, scope, key)
        ledger: dict[str, Any] = {"plan": [], "progress": [], "replans": 0}
        work_done = 0
        stalls = 0
        replan_reason: str | None = None
        seen: set[str] = set()
        rounds_max = 2 * step.step_budget + step.replans_max + 2
        for manager_round in range(1, rounds_max + 1):
            decision = await self._agent_task(
                f"{key}/manager-{manager_round}", f"{step.name} manager {manager_round}",
                "magentic", step.manager,
                {"task": task, "ledger": ledger, "workers": list(step.workers),
                 "replan": replan_reason is not None, "why": replan_reason or ""})
            if not isinstance(decision, Mapping):
                raise StepFailed(key, f"manager answered {type(decision).__name__}, "
                                 "not an object")
            if isinstance(decision.get("plan"), list):
                ledger["plan"] = decision["plan"]
            replan_reason = None
            if decision.get("done") is True:
                return {"answer": decision.get("answer"), "ledger": ledger,
                        "worker_steps": work_done, "stopped": None}
            wanted = decision.get("next")
            worker = wanted.get("worker") if isinstance(wanted, Mapping) else None
            instruction = wanted.get("instruction", "") if isinstance(wanted, Mapping) else ""
            problem = None
            if worker not in step.workers:
                problem = f"manager chose {worker!r}, not a worker"
            elif json.dumps([worker, instruction], sort_keys=True) in seen:
                problem = f"repeated the step {worker}: {instruction!r}"
            if problem is None:
                if work_done >= step.step_budget:
                    return {"answer": None, "ledger": ledger, "worker_steps": work_done,
                            "stopped": f"step budget of {step.step_budget} spent"}
                assert isinstance(worker, str)
                seen.add(json.dumps([worker, instruction], sort_keys=True))
                work_done += 1
                result = await self._agent_task(
                    f"{key}/work-{work_done}", f"{step.name} work {work_done}", "magentic",
                    worker, {"instruction": instruction, "task": task, "ledger": ledger},
                    meta={"assigned_by": step.manager, "round": manager_round})
                ledger["progress"].append({"step": work_done, "worker": worker,
                                           "instruction": instruction, "result": result})
                if decision.get("progress") is False:
                    problem = "manager reports no progress"
                else:
                    stalls = 0
            if problem is not None:
                stalls += 1
                ledger["progress"].append({"stall": stalls, "why": problem})
                if stalls >= step.stall_max:
                    if ledger["replans"] >= step.replans_max:
                        return {"answer": None, "ledger": ledger, "worker_steps": work_done,
                                "stopped": f"stalled ({problem}) after "
                                           f"{ledger['replans']} re-plans"}
                    ledger["replans"] += 1
                    replan_reason = problem
                    stalls = 0
                    seen.clear()
        return {"answer": None, "ledger": ledger, "worker_steps": work_done,
                "stopped": f"{rounds_max} manager rounds without an answer"}

    # -- approval ------------------------------------------------------------------

    async def _approval(self, step: ApprovalStep, scope: Mapping[str, Any], key: str,
                        started: float) -> Any:
        gate_id = f"{self.workflow_id}/{key}"
        shown = self._render(step.show, scope, key)
        await self._put(StepRecord(key, step.name, "approval", WAITING, started=started,
                                   meta={"gate": gate_id}))
        decision = await self._gate(gate_id, key, step.prompt, shown, step.approvers,
                                    started + step.timeout_s)
        escalated = False
        if decision is None and step.on_timeout == "escalate":
            assert step.escalate_to is not None
            escalated = True
            escalated_id = f"{gate_id}/escalated"
            await self._put(StepRecord(key, step.name, "approval", WAITING, started=started,
                                       meta={"gate": escalated_id, "escalated_from": gate_id}))
            await self.runner.decide_gate(gate_id, GateDecision(
                False, "timeout", f"escalated to {step.escalate_to}", self.runner.now()))
            decision = await self._gate(escalated_id, key, step.prompt, shown,
                                        step.escalate_to,
                                        self.runner.now() + step.escalation_timeout_s)
            gate_id = escalated_id
        if decision is None:
            approve = step.on_timeout == "approve" and not escalated
            decision = await self.runner.decide_gate(gate_id, GateDecision(
                approve, "timeout", "no answer in time", self.runner.now()))
        result = {"approved": decision.approved, "by": decision.by,
                  "comment": decision.comment, "gate": gate_id, "escalated": escalated}
        state = DONE if decision.approved or step.on_reject == "continue" else REJECTED
        await self._put(StepRecord(key, step.name, "approval", state, started=started,
                                   finished=self.runner.now(), result=result,
                                   error=None if state == DONE else decision.comment,
                                   meta={"gate": gate_id, "by": decision.by}))
        if state == REJECTED:
            raise WorkflowRejected(key, decision.comment)
        return result

    async def _gate(self, gate_id: str, key: str, prompt: str, shown: Any, approvers: str,
                    timeout_at: float) -> GateDecision | None:
        timeout_at = await self.runner.open_gate(GateRequest(
            gate_id, self.workflow_id, key, prompt, shown, approvers, timeout_at))
        return await self.runner.await_gate(gate_id, max(0.0, timeout_at - self.runner.now()))

    async def _ask_person(self, key: str, prompt: str, shown: Any,
                          timeout_s: float) -> GateDecision:
        """A gate ``WORKFLOW/KEY`` for a person to approve; unanswered, rejected."""
        gate_id = f"{self.workflow_id}/{key}"
        decision = await self._gate(gate_id, key, prompt, shown, "",
                                    self.runner.now() + timeout_s)
        if decision is None:
            decision = await self.runner.decide_gate(gate_id, GateDecision(
                False, "timeout", "no answer in time", self.runner.now()))
        return decision

    # -- vote ----------------------------------------------------------------------

    async def _vote(self, step: VoteStep, scope: Mapping[str, Any], key: str,
                    started: float) -> Any:
        context = self._render(step.input, scope, key)
        await self._put(StepRecord(key, step.name, "vote", RUNNING, started=started))
        ballots: dict[int, Ballot] = {}
        absent: list[str] = []

        async def ask(number: int, voter: str) -> None:
            try:
                answer = await self._agent_task(
                    f"{key}/voter-{number}", f"{step.name} voter {number}", "vote", voter,
                    {"question": step.question, "options": list(step.options),
                     "context": context}, timeout_s=step.timeout_s, max_attempts=1)
            except StepFailed:
                absent.append(voter)
                return
            choice = answer.get("choice") if isinstance(answer, Mapping) else None
            if choice in step.options:
                ballots[number] = Ballot(voter, str(choice), reason=str(answer.get("reason", "")))
            else:
                absent.append(voter)

        async with anyio.create_task_group() as group:
            for number, voter in enumerate(step.voters, start=1):
                group.start_soon(ask, number, voter)
        rule = VotingRule(kind=step.rule, threshold=step.threshold)
        counted = [ballots[n] for n in sorted(ballots)]
        outcome = tally(counted, rule, electorate=len(step.voters), closed=True)
        result: dict[str, Any] = {
            "question": step.question, "decided": outcome.decided, "choice": outcome.choice,
            "by": "vote" if outcome.decided else "nobody", "reason": outcome.reason,
            "counts": outcome.counts, "absent": sorted(absent),
            "ballots": [{"voter": b.voter, "choice": b.choice, "reason": b.reason}
                        for b in counted]}
        if not outcome.decided and step.escalate:
            leader = max(step.options, key=lambda option: (outcome.counts.get(option, 0.0),
                                                           -step.options.index(option)))
            decision = await self._ask_person(
                key, f"The vote on {step.question!r} was not decided ({outcome.reason}). "
                f"Approve {leader!r}?", result, step.escalation_timeout_s)
            result |= {"escalated": True, "decided": decision.approved,
                       "choice": leader if decision.approved else None,
                       "by": f"person:{decision.by}",
                       "reason": (f"{decision.by} approved {leader!r}" if decision.approved
                                  else f"{decision.by} rejected {leader!r}: "
                                       f"{decision.comment}")}
        state = DONE if result["decided"] or step.on_undecided == "continue" else FAILED
        await self._put(StepRecord(key, step.name, "vote", state, started=started,
                                   finished=self.runner.now(), result=result,
                                   error=None if state == DONE else result["reason"],
                                   meta={"by": result["by"]}))
        if state == FAILED:
            raise StepFailed(key, f"vote not decided: {result['reason']}")
        return result

    # -- conflict resolution -------------------------------------------------------

    async def _resolve(self, step: ResolveStep, scope: Mapping[str, Any], key: str,
                       started: float) -> Any:
        await self._put(StepRecord(key, step.name, "resolve", RUNNING, started=started))
        claims = [_claim(source, self._render(template, scope, key))
                  for source, template in step.claims.items()]
        try:
            conflict = Conflict(step.kind, step.subject, claims)
            config = ResolverConfig(strategy=step.strategy, priority=step.priority,
                                    ranks=dict(step.ranks), rounds_max=step.rounds_max,
                                    fallback=step.fallback,
                                    rule=VotingRule(kind=step.rule),
                                    timeout_s=step.timeout_s * 1.5)
        except MeshError as exc:
            raise StepFailed(key, str(exc)) from None
        negotiators = {source: _TaskNegotiator(self, key, source, target)
                       for source, target in step.negotiators.items()} or None
        voters = {f"{target}#{number}": self._task_voter(key, number, target)
                  for number, target in enumerate(step.voters, start=1)} or None

        async def person(conflict: Conflict, why: str) -> Any:
            proposal = claims[0].value
            decision = await self._ask_person(
                key, f"Settle {conflict.subject!r} ({why}). Approve {proposal!r}?",
                {"claims": {c.source: c.value for c in claims}}, step.person_timeout_s)
            return proposal if decision.approved else None

        try:
            record = await resolve_conflict(conflict, config, negotiators=negotiators,
                                            voters=voters, person=person)
        except MeshError as exc:
            raise StepFailed(key, str(exc)) from None
        result = record.to_json()
        state = DONE if record.resolved or step.on_unresolved == "continue" else FAILED
        await self._put(StepRecord(key, step.name, "resolve", state, started=started,
                                   finished=self.runner.now(), result=result,
                                   error=None if state == DONE else record.why,
                                   meta={"decided_by": record.decided_by}))
        if state == FAILED:
            raise StepFailed(key, f"conflict unresolved: {record.why}")
        return result

    def _task_voter(self, key: str, number: int, target: str) -> Any:
        async def vote(question: str, options: Sequence[str]) -> Ballot:
            answer = await self._agent_task(
                f"{key}/voter-{number}", f"voter {number}", "resolve", target,
                {"question": question, "options": list(options)}, max_attempts=1)
            choice = answer.get("choice") if isinstance(answer, Mapping) else None
            return Ballot(f"{target}#{number}", str(choice),
                          reason=str(answer.get("reason", "")) if isinstance(answer, Mapping)
                          else "")
        return vote

    # -- helpers -------------------------------------------------------------------

    async def _put(self, record: StepRecord) -> None:
        await self.checkpoints.put(record)

    @staticmethod
    def _render(template: Any, scope: Mapping[str, Any], key: str) -> Any:
        try:
            return render(template, scope)
        except TemplateError as exc:
            raise StepFailed(key, f"input: {exc}") from None

    @staticmethod
    def _select(selector: str | None, scope: Mapping[str, Any], default: Any) -> Any:
        if selector is None:
            return default
        if not selector.startswith("$"):
            raise TemplateError(f"output {selector!r} must be a $path")
        return lookup(scope, selector[1:])


class _TaskNegotiator:
    """A claimant's side of a negotiation: each round a task for its agent, given
    the conflict and everyone's latest proposals, answering ``{"value", "concede",
    "reason"}``."""

    def __init__(self, engine: WorkflowEngine, key: str, source: str, target: str) -> None:
        self.engine, self.key, self.source, self.target = engine, key, source, target

    async def counter(self, conflict: Conflict, round: int,
                      proposals: Mapping[str, Proposal]) -> Proposal:
        answer = await self.engine._agent_task(
            f"{self.key}/round-{round}/{self.source}", f"round {round} {self.source}",
            "resolve", self.target,
            {"subject": conflict.subject, "kind": conflict.kind, "round": round,
             "me": self.source,
             "proposals": {source: {"value": p.value, "concede": p.concede,
                                    "reason": p.reason} for source, p in proposals.items()}},
            max_attempts=1)
        if not isinstance(answer, Mapping):
            answer = {"value": answer}
        return Proposal(self.source, answer.get("value"), bool(answer.get("concede", False)),
                        str(answer.get("reason", "")))


def _claim(source: str, rendered: Any) -> Claim:
    if isinstance(rendered, Mapping) and "value" in rendered:
        return Claim(source, rendered["value"], rank=rendered.get("rank"),
                     confidence=rendered.get("confidence"),
                     updated_at=rendered.get("updated_at"), version=rendered.get("version"))
    return Claim(source, rendered)


@dataclass(slots=True)
class _Chain:
    """One line of handoffs: where it is, how it got there, how it ended."""

    label: str
    target: str
    path: list[str]
    context: dict[str, Any]
    result: Any = None
    stopped: str | None = None
    failed: bool = False


def _labels(handoff: Handoff) -> list[str]:
    return [target.label for target in handoff.targets]


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [item for item in value if isinstance(item, str)]
    return []


def _text_of(output: Any) -> str:
    if isinstance(output, Mapping) and isinstance(output.get("text"), str):
        text: str = output["text"]
    elif isinstance(output, str):
        text = output
    else:
        text = json.dumps(output, sort_keys=True)
    return text[:_TRANSCRIPT_TEXT_CHARS_MAX]


def _call_predicate(predicate: Callable[..., Any], transcript: list[dict[str, Any]],
                    key: str) -> bool:
    try:
        return bool(predicate(list(transcript)))
    except Exception as exc:  # a user's predicate: its bug fails the step only
        raise StepFailed(key, f"until predicate raised {exc!r}") from None
