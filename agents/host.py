"""A node hosts agents: runs their tasks within limits and advertises them in gossip.

How this works
--------------
``AgentHost(node, agents)`` owns a node's agents. ``run_task(capability, input)``
picks the agent offering that capability with the most free slots, runs its
``handle`` under ``task_timeout_s``, and always returns an outcome: ``TaskDone``
with the JSON-normalised output, or ``TaskFailure`` with a cause and a reason
short enough for a contract-net failure message. Bad input, a crashing agent, a
timeout, an unusable result or no free slot are failures of the task, counted
(``COUNTERS``), never exceptions out of the host. Cancellation still propagates.

``run()`` keeps this node's advert current in gossip, under
``agents/<node id hex>``::

    {"capabilities": [...], "load": running tasks, "limit": total slots,
     "agents": [names]}

It publishes at once, then after each change in load, at most once per
``publish_interval_s``: a change after a quiet spell is written at once, a burst
of starts and finishes coalesces into one write, and nothing is written when the
load is back where it was. It waits on an event
between changes, never polls. When it stops it withdraws the advert.

``capabilities_of(node.gossip.items("agents/"), capability)`` reads the adverts
of every node back, skipping (and counting) malformed ones: the manager's list
of candidates. ``estimator_for(host)`` lets a contract-net ``Contractor`` quote
bids through the agents' own ``estimate``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any, Protocol

import anyio

from agents.agent import Agent, AgentInputError, validate_capability
from agents.contract_net.contractor import Estimate, Estimator
from agents.contract_net.messages import (
    REASON_CHARS_MAX,
    RESULT_BYTES_WIRE_MAX,
    CallForProposals,
)
from agents.outcomes import Handoff, handoff_to_result
from agents.task_services import TaskServices, reset, running_as
from mesh.errors import ConfigError, MeshError

__all__ = [
    "AGENTS_PREFIX",
    "AGENT_CAPABILITY_PREFIX",
    "COUNTERS",
    "AgentAdvert",
    "AgentHost",
    "CapabilityListing",
    "FailureCause",
    "HostGossip",
    "HostNode",
    "HostSettings",
    "TaskDone",
    "TaskFailure",
    "TaskOutcome",
    "advert_key",
    "capabilities_of",
    "estimator_for",
    "parse_advert",
]

log = logging.getLogger(__name__)

AGENT_CAPABILITY_PREFIX = "agent:"
"""``agent:<name>`` is the capability of one agent by name (``@name`` in workflows)."""
AGENTS_PREFIX = "agents/"
"""Gossip key prefix of the agent adverts; the rest of the key is the node id in hex."""
_NODE_ID_HEX_CHARS = 32


def advert_key(node_id: bytes) -> str:
    """The gossip key of ``node_id``'s advert."""
    return AGENTS_PREFIX + node_id.hex()


class HostGossip(Protocol):
    """The part of ``node.gossip`` the host writes to."""

    def set(self, key: str, value: Any) -> object: ...

    def delete(self, key: str) -> bool: ...


class HostNode(Protocol):
    """The part of a ``mesh.runtime.Node`` the host needs."""

    @property
    def node_id(self) -> bytes: ...

    @property
    def gossip(self) -> HostGossip: ...


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Limits of an agent host.

    ``task_timeout_s``: longest a task may run before it fails as a timeout
    (a ``run_task`` caller may pass a shorter one).
    ``publish_interval_s``: shortest gap between two writes of the advert; lower
    means fresher load in gossip and more gossip traffic.
    ``result_bytes_max``: largest result (compact JSON); by default what fits
    inline in a contract-net result message.
    ``queue_per_slot``: tasks that may wait for each agent slot beside the one
    running in it. A contractor bids while promised tasks fit the slots plus this
    queue, since most bids lose; one that wins more than its free slots runs the
    extra tasks as slots free up (its bids report the load, so managers prefer
    idler nodes). 0: no queue, a task that finds every slot taken fails as busy.
    """

    task_timeout_s: float = 60.0
    publish_interval_s: float = 0.2
    result_bytes_max: int = RESULT_BYTES_WIRE_MAX
    queue_per_slot: int = 1

    def __post_init__(self) -> None:
        for name in ("task_timeout_s", "publish_interval_s"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"{name} ({value!r}) must be a finite number > 0")
        limit = self.result_bytes_max
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
            raise ConfigError(f"result_bytes_max ({limit!r}) must be an integer >= 2")
        queue = self.queue_per_slot
        if isinstance(queue, bool) or not isinstance(queue, int) or not 0 <= queue <= 1000:
            raise ConfigError(f"queue_per_slot ({queue!r}) must be an integer from 0 to 1000")


class FailureCause(Enum):
    """Why a task failed on this host."""

    NO_CAPABILITY = "no_capability"
    BUSY = "busy"
    BAD_INPUT = "bad_input"
    TIMEOUT = "timeout"
    AGENT_ERROR = "agent_error"
    BAD_OUTPUT = "bad_output"


@dataclass(frozen=True, slots=True)
class TaskDone:
    """A task's result: ``output`` is a JSON object (plain dicts, lists, str, numbers)."""

    agent: str
    output: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """A task that failed, with why; ``reason`` fits a contract-net failure message."""

    cause: FailureCause
    reason: str
    agent: str | None = None


TaskOutcome = TaskDone | TaskFailure

COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "tasks_started": "tasks handed to an agent",
        "tasks_done": "tasks that returned a usable result",
        "handoffs": "tasks whose agent handed the case on (a handoff result)",
        "failed_no_capability": "tasks refused: no agent here offers the capability",
        "failed_busy": "tasks refused: every slot and queue place for the capability taken",
        "tasks_queued": "tasks that waited for a slot before an agent took them",
        "failed_bad_input": "tasks failed: the input was not an object or the agent "
                            "raised AgentInputError",
        "failed_timeout": "tasks failed: ran longer than their timeout",
        "failed_agent_error": "tasks failed: the agent raised another exception",
        "failed_bad_output": "tasks failed: the result was not a JSON object or too large",
        "estimate_errors": "estimates that raised (the bid is declined)",
        "publications": "adverts written to gossip",
        "publish_errors": "adverts gossip refused (too large, node stopped)",
    }
)
"""Every name in ``AgentHost.counters`` with what it counts; all start at zero."""

_FAILURE_COUNTER = {cause: f"failed_{cause.value}" for cause in FailureCause}


def _clip(reason: str) -> str:
    return reason if len(reason) <= REASON_CHARS_MAX else reason[: REASON_CHARS_MAX - 3] + "..."


class AgentHost:
    """The agents of one node; see the module docstring."""

    def __init__(
        self, node: HostNode, agents: Iterable[Agent], *, settings: HostSettings | None = None
    ) -> None:
        self._node = node
        self._agents = tuple(agents)
        names = [agent.name for agent in self._agents]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"agent names must be unique on a node: {duplicates} repeat")
        bad = [a for a in self._agents if not isinstance(a, Agent)]
        if bad:
            raise ConfigError(f"{type(bad[0]).__name__} is not an Agent")
        self._settings = settings or HostSettings()
        here = node.node_id.hex()
        # Per agent: its capability by name, and by name on this node (bids check
        # these for every call, so they are built once).
        self._by_name = {name: (AGENT_CAPABILITY_PREFIX + name,
                                f"{AGENT_CAPABILITY_PREFIX}{name}@{here}") for name in names}
        self._running = dict.fromkeys(names, 0)
        self._waiting: dict[str, int] = {}  # capability -> tasks waiting for a slot
        self._slot_freed = anyio.Event()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._changed: anyio.Event | None = None
        self._published: dict[str, Any] | None = None

    # -- what it hosts ---------------------------------------------------------------

    @property
    def agents(self) -> tuple[Agent, ...]:
        """The hosted agents, in the order given."""
        return self._agents

    @property
    def capabilities(self) -> list[str]:
        """Every capability offered here, sorted, each once: the agents' own, and for
        each agent ``agent:<name>`` (that agent, on any node) and
        ``agent:<name>@<node id hex>`` (that agent on this node: a task pinned here)."""
        return sorted({c for agent in self._agents for c in agent.capabilities}
                      | {AGENT_CAPABILITY_PREFIX + agent.name for agent in self._agents}
                      | {self._pinned(agent) for agent in self._agents})

    def _pinned(self, agent: Agent) -> str:
        return self._by_name[agent.name][1]

    def _offers(self, agent: Agent, capability: str) -> bool:
        """Whether ``agent`` takes tasks of ``capability`` (its own, or it by name)."""
        return capability in agent.capabilities or capability in self._by_name[agent.name]

    @property
    def load(self) -> int:
        """Tasks running now."""
        return sum(self._running.values())

    @property
    def limit(self) -> int:
        """Tasks that may run at once: the agents' ``concurrency_max`` summed."""
        return sum(agent.concurrency_max for agent in self._agents)

    @property
    def admit_limit(self) -> int:
        """Tasks that may be running or waiting for a slot at once."""
        return self.limit * (1 + self._settings.queue_per_slot)

    def running(self, agent_name: str) -> int:
        """Tasks ``agent_name`` runs now."""
        return self._running[agent_name]

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of what happened (see ``COUNTERS``), read-only."""
        return MappingProxyType(self._counters)

    def advert(self) -> dict[str, Any]:
        """The value published under ``agents/<node id hex>``."""
        return {
            "capabilities": self.capabilities,
            "load": self.load,
            "limit": self.limit,
            "agents": [agent.name for agent in self._agents],
        }

    def pick(self, capability: str) -> Agent | None:
        """The agent with ``capability`` and the most free slots (first on ties), or None."""
        best: Agent | None = None
        best_free = 0
        for agent in self._agents:
            if self._offers(agent, capability):
                free = agent.concurrency_max - self._running[agent.name]
                if free > best_free:
                    best, best_free = agent, free
        return best

    def has_room(self, held: Mapping[str, int], capability: str) -> bool:
        """Whether one more ``capability`` task fits beside ``held`` (tasks per
        capability, running or promised), each agent taking at most its
        ``concurrency_max`` times (1 + ``queue_per_slot``).

        Tasks go to agents greedily, the capability with the fewest slots first and
        the most specialised agents first. That is exact when each capability's
        agents offer only it and conservative otherwise: it may refuse a task that
        would fit, never admit one that does not.
        """
        if not any(self._offers(agent, capability) for agent in self._agents):
            return False
        demand = {cap: count for cap, count in held.items() if count > 0}
        demand[capability] = demand.get(capability, 0) + 1
        places = 1 + self._settings.queue_per_slot
        free = {agent.name: agent.concurrency_max * places for agent in self._agents}

        offering = {cap: sorted((a for a in self._agents if self._offers(a, cap)),
                                key=lambda agent: len(agent.capabilities)) for cap in demand}
        for cap in sorted(demand, key=lambda c: sum(a.concurrency_max for a in offering[c])):
            able = offering[cap]
            if not able:
                continue  # held for a capability no agent here offers now: no slot of theirs
            need = demand[cap]
            for agent in able:
                taken = min(need, free[agent.name])
                free[agent.name] -= taken
                need -= taken
            if need > 0:
                return False
        return True

    # -- running tasks ---------------------------------------------------------------

    async def run_task(
        self, capability: str, task_input: Mapping[str, Any], *, timeout_s: float | None = None,
        admitted: bool = False,
    ) -> TaskOutcome:
        """Run one task on an agent offering ``capability``; never raises for a task's fault.

        When every such agent is at its limit the task waits for a slot, if fewer
        than their slots times ``queue_per_slot`` tasks wait already; otherwise it
        fails at once with ``BUSY``; an ``admitted`` task (the contract net awarded
        it here: its caller bounds how many it hands over) always waits.
        ``NO_CAPABILITY`` when no agent offers it.
        ``timeout_s`` (default ``task_timeout_s``, never more) bounds the wait for
        a slot and the agent's ``handle`` together.
        """
        able = [agent for agent in self._agents if self._offers(agent, capability)]
        if not able:
            return self._failed(FailureCause.NO_CAPABILITY, f"no agent offers {capability!r}")
        if not isinstance(task_input, Mapping):
            return self._failed(FailureCause.BAD_INPUT, "task input must be an object, not "
                                f"{type(task_input).__name__}")
        limit_s = self._settings.task_timeout_s
        if timeout_s is not None:
            limit_s = min(limit_s, max(timeout_s, 0.0))
        started = anyio.current_time()
        agent = self.pick(capability)
        if agent is None:
            queue = sum(a.concurrency_max for a in able) * self._settings.queue_per_slot
            if not admitted and self._waiting.get(capability, 0) >= queue:
                return self._failed(FailureCause.BUSY, f"every agent offering {capability!r} "
                                    "is at its concurrency limit and its queue is full")
            self._counters["tasks_queued"] += 1
            self._waiting[capability] = self._waiting.get(capability, 0) + 1
            try:
                with anyio.move_on_after(limit_s):
                    while (agent := self.pick(capability)) is None:
                        await self._slot_freed.wait()
            finally:
                self._waiting[capability] -= 1
            if agent is None:
                return self._failed(FailureCause.TIMEOUT, f"no {capability} slot came free "
                                    f"within {limit_s:g} s")
            limit_s = max(0.0, limit_s - (anyio.current_time() - started))
        self._counters["tasks_started"] += 1
        self._running[agent.name] += 1
        self._mark_changed()
        try:
            return await self._handle(agent, capability, task_input, limit_s)
        finally:
            self._running[agent.name] -= 1
            self._slot_freed.set()
            self._slot_freed = anyio.Event()
            self._mark_changed()

    async def _handle(
        self, agent: Agent, capability: str, task_input: Mapping[str, Any], limit_s: float
    ) -> TaskOutcome:
        output: object = None
        if capability.startswith(AGENT_CAPABILITY_PREFIX):
            capability = agent.capabilities[0]  # asked for by name: its first capability
        token = running_as(TaskServices(agent.name, self._node, capability))
        try:
            with anyio.move_on_after(limit_s) as scope:
                output = await agent.handle(capability, task_input)
        except AgentInputError as exc:
            return self._failed(FailureCause.BAD_INPUT, str(exc) or "bad input", agent)
        except Exception as exc:
            log.warning("agent %s failed a %s task", agent.name, capability, exc_info=True)
            return self._failed(FailureCause.AGENT_ERROR, f"{type(exc).__name__}: {exc}", agent)
        finally:
            reset(token)
        if scope.cancelled_caught:
            return self._failed(FailureCause.TIMEOUT, f"{capability} ran longer than "
                                f"{limit_s:g} s", agent)
        return self._checked_output(agent, output)

    def _checked_output(self, agent: Agent, output: object) -> TaskOutcome:
        if isinstance(output, Handoff):
            self._counters["handoffs"] += 1
            output = handoff_to_result(output)
        if not isinstance(output, dict) or not all(isinstance(k, str) for k in output):
            return self._failed(FailureCause.BAD_OUTPUT, "result must be a JSON object with "
                                f"string keys, not {type(output).__name__}", agent)
        try:
            text = json.dumps(output, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            return self._failed(FailureCause.BAD_OUTPUT, f"result is not JSON: {exc}", agent)
        size = len(text.encode())
        if size > self._settings.result_bytes_max:
            return self._failed(FailureCause.BAD_OUTPUT, f"result of {size} bytes exceeds "
                                f"result_bytes_max ({self._settings.result_bytes_max})", agent)
        self._counters["tasks_done"] += 1
        return TaskDone(agent=agent.name, output=json.loads(text))

    def _failed(self, cause: FailureCause, reason: str, agent: Agent | None = None) -> TaskFailure:
        self._counters[_FAILURE_COUNTER[cause]] += 1
        return TaskFailure(cause=cause, reason=_clip(reason),
                           agent=agent.name if agent is not None else None)

    # -- bids ------------------------------------------------------------------------

    def estimate(
        self, capability: str, task_input: Mapping[str, Any] | None = None
    ) -> Estimate | None:
        """The quote of the agent that would run it (the freest one now); None when no
        agent has the capability (or it raised). Whether a slot is free is
        ``has_room``'s question, not this one's."""
        agent = self.pick(capability) or next(
            (a for a in self._agents if self._offers(a, capability)), None)
        if agent is None:
            return None
        if capability.startswith(AGENT_CAPABILITY_PREFIX):
            capability = agent.capabilities[0]
        try:
            return agent.estimate(capability, task_input)
        except Exception:
            self._counters["estimate_errors"] += 1
            log.warning("agent %s failed to estimate a %s task", agent.name, capability,
                        exc_info=True)
            return None

    # -- advertising -----------------------------------------------------------------

    def _mark_changed(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def run(self) -> None:
        """Keep the advert in gossip current until cancelled; then withdraw it.

        Start it once the node runs (its gossip exists from then on), in the
        node's task group or next to it; one ``run()`` at a time.
        """
        if self._changed is not None:
            raise MeshError("this AgentHost is already advertising: run() it once")
        key = advert_key(self._node.node_id)
        interval_s = self._settings.publish_interval_s
        try:
            while True:
                changed = self._changed = anyio.Event()
                self._publish(key)
                # Rate limit: changes during the pause are written together after it;
                # after a quiet spell the next change is written at once.
                await anyio.sleep(interval_s)
                await changed.wait()
        finally:
            self._changed = None
            self._withdraw(key)

    def _publish(self, key: str) -> None:
        advert = self.advert()
        if advert == self._published:
            return
        try:
            self._node.gossip.set(key, advert)
        except (MeshError, ValueError, TypeError) as exc:
            self._counters["publish_errors"] += 1
            log.error("agent advert not published: %s", exc)
            return
        self._published = advert
        self._counters["publications"] += 1

    def _withdraw(self, key: str) -> None:
        if self._published is None:
            return
        self._published = None
        try:
            self._node.gossip.delete(key)
        except Exception as exc:  # the node may be stopping too: nothing left to tell
            log.debug("agent advert not withdrawn: %s", exc)


def estimator_for(host: AgentHost) -> Estimator:
    """A contract-net ``Estimator`` quoting through ``host``'s agents.

    A call for proposals carries no full input, so agents estimate with
    ``task_input=None``. Give the ``Contractor`` ``host.capabilities``,
    ``room=host.has_room`` and ``tasks_running_max=host.admit_limit``.
    """

    def estimate(cfp: CallForProposals) -> Estimate | None:
        return host.estimate(cfp.capability)

    return estimate


# -- reading the adverts back ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentAdvert:
    """One node's advert as read from gossip."""

    node_id: bytes
    capabilities: tuple[str, ...]
    load: int
    limit: int
    agents: tuple[str, ...]

    @property
    def free(self) -> int:
        """Slots not in use (as of the advert)."""
        return max(self.limit - self.load, 0)

    @property
    def load_ratio(self) -> float:
        """Running tasks per slot."""
        return self.load / self.limit if self.limit else math.inf


@dataclass(frozen=True, slots=True)
class CapabilityListing:
    """The nodes advertising a capability, least loaded first, and adverts skipped."""

    nodes: tuple[AgentAdvert, ...]
    malformed: int

    @property
    def node_ids(self) -> list[bytes]:
        """The nodes' ids, in order."""
        return [advert.node_id for advert in self.nodes]


def _count(value: object, minimum: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return None
    return value


def _strings(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


def parse_advert(key: str, value: object) -> AgentAdvert | None:
    """The advert stored as ``key: value``, or None when either is malformed."""
    hex_id = key[len(AGENTS_PREFIX):] if key.startswith(AGENTS_PREFIX) else ""
    if len(hex_id) != _NODE_ID_HEX_CHARS or not isinstance(value, Mapping):
        return None
    try:
        node_id = bytes.fromhex(hex_id)
    except ValueError:
        return None
    capabilities = _strings(value.get("capabilities"))
    agents = _strings(value.get("agents"))
    load = _count(value.get("load"), 0)
    limit = _count(value.get("limit"), 0)
    if capabilities is None or agents is None or load is None or limit is None:
        return None
    try:
        for capability in capabilities:
            validate_capability(capability)
    except ConfigError:
        return None
    return AgentAdvert(node_id, capabilities, load, limit, agents)


def capabilities_of(
    items: Iterable[tuple[str, Any]], capability: str, *, free_only: bool = False
) -> CapabilityListing:
    """The nodes whose advert in ``items`` offers ``capability``, least loaded first.

    ``items`` is ``node.gossip.items("agents/")`` (other keys are ignored). Adverts
    that do not parse are skipped and counted in ``malformed``. ``free_only``
    keeps only nodes advertising a free slot. Ties go to the lower node id, so the
    order is the same on every node that holds the same state.
    """
    found: list[AgentAdvert] = []
    malformed = 0
    for key, value in items:
        if not key.startswith(AGENTS_PREFIX):
            continue
        advert = parse_advert(key, value)
        if advert is None:
            malformed += 1
        elif capability in advert.capabilities and (advert.free or not free_only):
            found.append(advert)
    found.sort(key=lambda a: (a.load_ratio, a.node_id))
    return CapabilityListing(nodes=tuple(found), malformed=malformed)
