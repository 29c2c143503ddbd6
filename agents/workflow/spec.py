"""What a workflow is: its steps and patterns, as data (a TOML file or Python objects).

How this works
--------------
A workflow is a list of steps run in order. Each step is one *pattern*:

``agent``
    One task for one target through the contract net: ``target`` is a
    capability (``"research.market"``) or an agent name written ``"@name"``.
``sequential``
    Its ``steps`` in order; each sees the one before as ``$previous``.
``concurrent``
    Its ``branches`` at once; an ``aggregator`` joins their outputs, a
    ``failure`` policy says how many may fail, and ``deadline_s`` bounds them.
``group_chat``
    ``participants`` take turns; the next speaker is chosen round-robin, by an
    orchestrator agent or by a model-driven selector agent (``selector``); the
    chat ends after ``max_turns``, when a turn's text contains ``until_contains``,
    when a predicate (``until``) says so, or when a speaker says it is done.
``handoff``
    Starts with ``start``; an agent may hand the case on to one or several
    targets (parallel handoff, joined); hops are bounded and cycles stopped.
``magentic``
    A ``manager`` agent keeps a plan and a progress ledger and assigns steps to
    ``workers``; stalls lead to a re-plan; ``step_budget`` bounds the work.
``approval``
    Waits, durably, until a person answers (``agentmesh approve``); a timeout
    rejects, approves or escalates as configured.
``vote``
    ``voters`` choose among ``options``; a ``majority``, ``supermajority``
    (``threshold``), ``unanimous`` or ``plurality`` rule decides, and a vote that
    does not decide is escalated to a person through an approval gate.
``resolve``
    Contradictory ``claims`` (earlier outputs) about one ``subject`` are settled
    by priority (rank, confidence or freshness), by a vote, or by a bounded
    negotiation between the claimants' agents, falling back to a vote or a
    person; the record says who decided what and why.

Inputs are *templates* (``agents.workflow.templates``): ``"$input.topic"`` is a
value from the workflow input, ``"$research"`` a whole earlier step's output,
``"{previous.text}"`` text interpolated into a string. ``output`` picks part
of a step's result (``"$result.summary"``). Aggregators and predicates are
named: built-in names, or ``"package.module:function"`` importable on every node
(a workflow may be resumed by any node, so it holds no Python objects).

Every size is bounded here (names, counts, turns, budgets), so a workflow file
is refused with a clear message before anything runs.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from mesh.errors import ConfigError

__all__ = [
    "AgentStep",
    "ApprovalStep",
    "ConcurrentStep",
    "GroupChatStep",
    "HandoffStep",
    "MagenticStep",
    "MembershipChange",
    "ResolveStep",
    "SequentialStep",
    "Step",
    "VoteStep",
    "WorkflowSpec",
    "load_workflow",
    "parse_workflow",
]

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
STEPS_MAX = 256
BRANCHES_MAX = 64
PARTICIPANTS_MAX = 32
TURNS_MAX = 256
HOPS_MAX = 256
BUDGET_MAX = 1000
TIMEOUT_S_MAX = 7 * 24 * 3600.0

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Target = Annotated[str, Field(min_length=1, max_length=129)]
"""A capability, or ``@agent``."""
Seconds = Annotated[float, Field(gt=0, le=TIMEOUT_S_MAX, allow_inf_nan=False)]
FunctionName = Annotated[str, Field(min_length=1, max_length=256)]
"""A built-in name or ``package.module:function``."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentStep(_Spec):
    """One task for ``target`` (see the module docstring)."""

    pattern: Literal["agent"] = "agent"
    name: Name
    target: Target
    input: Any = "$previous"
    output: str | None = None
    max_attempts: int = Field(3, ge=1, le=100)
    timeout_s: Seconds = 600.0


class SequentialStep(_Spec):
    """``steps`` in order; the output is the last one's (or ``output``)."""

    pattern: Literal["sequential"]
    name: Name
    steps: list[Step] = Field(min_length=1, max_length=STEPS_MAX)
    output: str | None = None

    @field_validator("steps")
    @classmethod
    def _unique(cls, steps: list[Step]) -> list[Step]:
        return _unique_names(steps)


class ConcurrentStep(_Spec):
    """``branches`` at once, joined by ``aggregator``.

    ``failure``: ``"all"`` (every branch must succeed), ``"any"`` (one is enough)
    or ``"quorum:N"``. ``aggregator``: ``"merge"`` (branch name -> output),
    ``"list"``, ``"first"`` or ``"module:function"`` called with a list of
    ``{"name", "state", "output", "error"}``.
    """

    pattern: Literal["concurrent"]
    name: Name
    branches: list[Step] = Field(min_length=1, max_length=BRANCHES_MAX)
    aggregator: FunctionName = "merge"
    failure: str = Field("all", pattern=r"^(all|any|quorum:[0-9]{1,3})$")
    deadline_s: Seconds | None = None
    output: str | None = None

    @field_validator("branches")
    @classmethod
    def _unique(cls, steps: list[Step]) -> list[Step]:
        return _unique_names(steps)


class MembershipChange(_Spec):
    """Before turn ``at_turn``, ``join`` adds a participant or ``leave`` removes one."""

    at_turn: int = Field(ge=1, le=TURNS_MAX)
    join: Target | None = None
    leave: Target | None = None

    @model_validator(mode="after")
    def _one(self) -> MembershipChange:
        if (self.join is None) == (self.leave is None):
            raise ValueError("a membership change names exactly one of join or leave")
        return self


class GroupChatStep(_Spec):
    """A chat among ``participants`` (see the module docstring)."""

    pattern: Literal["group_chat"]
    name: Name
    participants: list[Target] = Field(min_length=1, max_length=PARTICIPANTS_MAX)
    speaker: Literal["round_robin", "orchestrator", "model"] = "round_robin"
    selector: Target | None = None
    """The agent choosing the next speaker (``orchestrator`` or ``model``)."""
    max_turns: int = Field(8, ge=1, le=TURNS_MAX)
    until_contains: str | None = Field(None, min_length=1, max_length=256)
    until: FunctionName | None = None
    stop_when_done: bool = True
    history_max: int = Field(20, ge=1, le=TURNS_MAX)
    """Turns of the transcript each speaker is shown (the latest)."""
    membership: list[MembershipChange] = Field(default_factory=list, max_length=TURNS_MAX)
    input: Any = "$previous"
    output: str | None = None

    @model_validator(mode="after")
    def _selector(self) -> GroupChatStep:
        if self.speaker != "round_robin" and self.selector is None:
            raise ValueError(f"speaker {self.speaker!r} needs a selector agent")
        return self


class HandoffStep(_Spec):
    """Triage by ``start``, then wherever the agents hand the case."""

    pattern: Literal["handoff"]
    name: Name
    start: Target
    max_hops: int = Field(8, ge=1, le=HOPS_MAX)
    input: Any = "$previous"
    output: str | None = None


class MagenticStep(_Spec):
    """A manager agent planning and assigning work to ``workers``."""

    pattern: Literal["magentic"]
    name: Name
    manager: Target
    workers: list[Target] = Field(min_length=1, max_length=PARTICIPANTS_MAX)
    step_budget: int = Field(12, ge=1, le=BUDGET_MAX)
    stall_max: int = Field(2, ge=1, le=BUDGET_MAX)
    """Rounds in a row without progress before the manager is asked to re-plan."""
    replans_max: int = Field(2, ge=0, le=BUDGET_MAX)
    input: Any = "$previous"
    output: str | None = None


class ApprovalStep(_Spec):
    """Wait for a person (see the module docstring)."""

    pattern: Literal["approval"]
    name: Name
    prompt: str = Field(min_length=1, max_length=4096)
    show: Any = "$previous"
    """What the approver is shown with the prompt (a template)."""
    timeout_s: Seconds = 3600.0
    on_timeout: Literal["reject", "approve", "escalate"] = "reject"
    escalate_to: str | None = Field(None, min_length=1, max_length=128)
    escalation_timeout_s: Seconds = 3600.0
    on_reject: Literal["stop", "continue"] = "stop"
    approvers: str = Field("", max_length=128)

    @model_validator(mode="after")
    def _escalation(self) -> ApprovalStep:
        if self.on_timeout == "escalate" and self.escalate_to is None:
            raise ValueError("on_timeout = 'escalate' needs escalate_to")
        return self


def _pattern_of(value: Any) -> str:
    """A step's pattern; a step that names none is an ``agent`` step."""
    if isinstance(value, dict):
        return str(value.get("pattern", "agent"))
    return str(getattr(value, "pattern", "agent"))


class VoteStep(_Spec):
    """Voters choose among ``options`` (see the module docstring)."""

    pattern: Literal["vote"]
    name: Name
    question: str = Field(min_length=1, max_length=1024)
    options: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=2, max_length=32)
    voters: list[Target] = Field(min_length=1, max_length=PARTICIPANTS_MAX)
    rule: Literal["majority", "supermajority", "unanimous", "plurality"] = "majority"
    threshold: float = Field(2 / 3, gt=0.5, le=1.0)
    """The share a supermajority needs."""
    escalate: bool = True
    """An undecided vote asks a person (an approval gate for the leading option)."""
    escalation_timeout_s: Seconds = 3600.0
    on_undecided: Literal["fail", "continue"] = "fail"
    input: Any = "$previous"
    """What the voters are shown besides the question and options."""
    timeout_s: Seconds = 120.0
    """How long each voter has; one that does not answer counts as absent."""


class ResolveStep(_Spec):
    """Settle contradictory claims (see the module docstring)."""

    pattern: Literal["resolve"]
    name: Name
    subject: str = Field(min_length=1, max_length=512)
    kind: Literal["data", "resource"] = "data"
    claims: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Any] = Field(
        min_length=2, max_length=PARTICIPANTS_MAX)
    """Claimant -> a template of its claim: a value, or an object with ``value`` and
    optionally ``rank``, ``confidence``, ``updated_at`` and ``version``."""
    strategy: Literal["priority", "vote", "negotiate"] = "priority"
    priority: Literal["rank", "confidence", "freshness"] = "freshness"
    ranks: dict[str, int] = Field(default_factory=dict)
    negotiators: dict[str, Target] = Field(default_factory=dict)
    """Claimant -> the agent that negotiates for it (``negotiate``)."""
    voters: list[Target] = Field(default_factory=list, max_length=PARTICIPANTS_MAX)
    rounds_max: int = Field(3, ge=1, le=32)
    fallback: Literal["vote", "person"] = "person"
    rule: Literal["majority", "supermajority", "unanimous", "plurality"] = "majority"
    on_unresolved: Literal["fail", "continue"] = "fail"
    timeout_s: Seconds = 120.0
    """Bound on each agent's answer (a round's counter-proposal, a ballot)."""
    person_timeout_s: Seconds = 3600.0


Step = Annotated[
    Annotated[AgentStep, Tag("agent")] | Annotated[SequentialStep, Tag("sequential")]
    | Annotated[ConcurrentStep, Tag("concurrent")] | Annotated[GroupChatStep, Tag("group_chat")]
    | Annotated[HandoffStep, Tag("handoff")] | Annotated[MagenticStep, Tag("magentic")]
    | Annotated[ApprovalStep, Tag("approval")] | Annotated[VoteStep, Tag("vote")]
    | Annotated[ResolveStep, Tag("resolve")],
    Discriminator(_pattern_of),
]


class WorkflowSpec(_Spec):
    """A whole workflow: ``steps`` in order, over ``input``."""

    name: str = Field(min_length=1, max_length=128)
    description: str = Field("", max_length=4096)
    input: dict[str, Any] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1, max_length=STEPS_MAX)
    output: Any = None
    """A template of the result over the steps' outputs (default: the last one's)."""

    @field_validator("steps")
    @classmethod
    def _unique(cls, steps: list[Step]) -> list[Step]:
        return _unique_names(steps)


for _model in (SequentialStep, ConcurrentStep, WorkflowSpec):
    _model.model_rebuild()


def _unique_names(steps: list[Step]) -> list[Step]:
    seen: set[str] = set()
    for step in steps:
        if step.name in seen:
            raise ValueError(f"two steps are named {step.name!r}")
        seen.add(step.name)
    return steps


def parse_workflow(data: dict[str, Any]) -> WorkflowSpec:
    """The workflow in ``data`` (a parsed file, or JSON); ``ConfigError`` naming what
    is wrong and where."""
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'workflow'}: {error['msg']}"
            for error in exc.errors()[:8])
        raise ConfigError(f"invalid workflow: {problems}") from None


def load_workflow(path: Path) -> WorkflowSpec:
    """The workflow in the TOML file ``path``; ``ConfigError`` for an unreadable,
    malformed or invalid file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read workflow file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_workflow(data)


def is_function_name(name: str) -> bool:
    """Whether ``name`` looks like ``package.module:function``."""
    return re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name) is not None
