"""Offline agents that coordinate through shared context and events (``--agents team``).

How this works: each agent does one coordination act with the services of the
node it runs on (``agents.task_services.current()``), so a test or a workflow
can pin it to a node (``@name@<node id hex>``) and watch what other nodes see:

- ``ctx-writer`` (``coord.write``): increments a critical context's counter
  ``increments`` times by optimistic concurrency, and counts its own writes in a
  field named after its node;
- ``intruder`` (``coord.intrude``): tries to write a context and reports the
  refusal;
- ``publisher`` (``coord.publish``): publishes ``count`` ``StateChanged`` events
  and a ``TaskCompleted``;
- ``listener`` (``coord.listen``): collects ``count`` events from a source, in
  the order it receives them, within ``timeout_s``;
- ``archivist`` (``coord.memory``): records and queries episodes, remembers and
  recalls facts, in a memory scope (``op``: ``record``, ``query``,
  ``remember``, ``recall``);
- ``voter`` (``coord.vote``): votes as its input's ``context.preferences`` say
  for the node it runs on (a map of node id hex to option);
- ``waiter`` (``coord.wait``): as task ``me``, waits for task ``holder`` to be
  done (the key ``done/<holder>``), through the mesh-wide wait-for graph, and
  marks itself done whatever happened: a wait that would close a cycle is
  refused at once and reported;
- ``reporter`` (``coord.report``): reports a value and when it read it;
- ``stepper`` (``coord.step``) sets a context field to 1, 2, ... and
  ``watcher`` (``coord.watch``) follows it from another node.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio

from agents.agent import Agent, AgentInputError
from agents.coordination.raft_waits import MeshWaits
from agents.coordination.waits import DeadlockError, WaitTimeout, bounded_wait
from agents.events import StateChanged, TaskCompleted
from agents.memory import Episode, new_episode_id
from agents.shared_context import ContextPermissionError
from agents.task_services import current
from mesh.errors import MeshError

__all__ = ["coordination_agents"]

_COUNT_MAX = 1000


def _text(task_input: Mapping[str, Any], name: str) -> str:
    value = task_input.get(name)
    if not isinstance(value, str) or not value:
        raise AgentInputError(f"the input needs a non-empty {name!r}")
    return value


def _count(task_input: Mapping[str, Any], name: str) -> int:
    value = task_input.get(name, 1)
    if type(value) is not int or not 1 <= value <= _COUNT_MAX:
        raise AgentInputError(f"{name} must be an integer from 1 to {_COUNT_MAX}")
    return value


class ContextWriter(Agent):
    def __init__(self) -> None:
        super().__init__("ctx-writer", ["coord.write"], concurrency_max=4)

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        scope, context_id = _text(task_input, "scope"), _text(task_input, "context")
        services = current()
        mine = f"by_{services.node_id.hex()[:8]}"
        state = None
        for _ in range(_count(task_input, "increments")):
            state = await services.contexts.update(context_id, scope, lambda data: {
                "counter": int(data.get("counter", 0)) + 1,
                mine: int(data.get(mine, 0)) + 1})
        assert state is not None
        return {"field": mine, "version": state.version,
                "retries": services.contexts.counters["retries"]}


class Intruder(Agent):
    def __init__(self) -> None:
        super().__init__("intruder", ["coord.intrude"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        scope, context_id = _text(task_input, "scope"), _text(task_input, "context")
        try:
            await current().contexts.write(context_id, scope, {"counter": -1})
        except ContextPermissionError as exc:
            return {"refused": str(exc)}
        return {"refused": None}


class Publisher(Agent):
    def __init__(self) -> None:
        super().__init__("publisher", ["coord.publish"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        count = _count(task_input, "count")
        bus = current().events
        for number in range(1, count + 1):
            bus.publish(StateChanged(subject="progress", old=number - 1, new=number))
        bus.publish(TaskCompleted(task_id=str(task_input.get("task", "publishing")),
                                  result={"published": count}))
        return {"published": count + 1}


class Listener(Agent):
    def __init__(self) -> None:
        super().__init__("listener", ["coord.listen"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        source, count = _text(task_input, "source"), _count(task_input, "count")
        timeout_s = float(task_input.get("timeout_s", 30.0))
        bus = current().events
        seen: list[dict[str, Any]] = []
        with anyio.move_on_after(min(timeout_s, 120.0)):
            async for event in bus.subscribe(sources=[source]):
                seen.append({"type": event.type, "seq": event.seq,
                             "new": getattr(event, "new", None)})
                if len(seen) >= count:
                    break
        return {"events": seen, "missed": bus.missed}


class Archivist(Agent):
    def __init__(self) -> None:
        super().__init__("archivist", ["coord.memory"], concurrency_max=2)

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        services, scope = current(), _text(task_input, "scope")
        operation = task_input.get("op")
        if operation == "record":
            episodes = services.episodic(scope)
            recorded = []
            for text in task_input.get("texts", []):
                now = time.time()
                episode = await episodes.record(Episode(
                    new_episode_id(), scope, self.name, "coord.memory", {"text": text},
                    {"kept": True}, "done", now, now, tuple(task_input.get("tags", ())), text))
                recorded.append(episode.episode_id)
            return {"recorded": recorded}
        if operation == "query":
            found = await services.episodic(scope).query(text=task_input.get("text"),
                                                         limit=int(task_input.get("limit", 20)))
            return {"episodes": [episode.text for episode in found]}
        if operation == "remember":
            semantic = services.semantic(scope)
            facts = [await semantic.remember(text, source=self.name)
                     for text in task_input.get("facts", [])]
            return {"remembered": len(facts)}
        if operation == "recall":
            hits = await services.semantic(scope).recall(_text(task_input, "query"),
                                                         k=int(task_input.get("k", 3)))
            return {"facts": [[fact.text, round(score, 4)] for fact, score in hits]}
        raise AgentInputError(f"op {operation!r} must be record, query, remember or recall")


class Voter(Agent):
    def __init__(self) -> None:
        super().__init__("voter", ["coord.vote"], concurrency_max=2)

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        context = task_input.get("context") or {}
        preferences = context.get("preferences", {}) if isinstance(context, Mapping) else {}
        choice = preferences.get(current().node_id.hex())
        return {"choice": choice, "reason": f"the preference of node {current().node_id.hex()[:8]}"}


class Waiter(Agent):
    def __init__(self) -> None:
        super().__init__("waiter", ["coord.wait"], concurrency_max=4)

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        me, holder = _text(task_input, "me"), _text(task_input, "holder")
        timeout_s = float(task_input.get("timeout_s", 30.0))
        services = current()
        kv = services.kv
        waits = MeshWaits(kv, node=services.node_id.hex())

        async def holder_done() -> bool:
            return await kv.get(f"done/{holder}") is not None

        try:
            async with waits.waiting(me, holder, timeout_s=timeout_s):
                await bounded_wait(f"task {holder} to be done", holder_done, timeout_s,
                                   poll_interval_s=0.1)
            outcome: dict[str, Any] = {"waited_for": holder}
        except DeadlockError as exc:
            outcome = {"deadlock": str(exc), "cycle": exc.cycle}
        except WaitTimeout as exc:
            outcome = {"timeout": str(exc)}
        finally:
            with anyio.CancelScope(shield=True):
                await kv.put(f"done/{me}", b"1")
        return outcome


class Watcher(Agent):
    """Follows a context from its node: the values a field took, as it saw them."""

    def __init__(self) -> None:
        super().__init__("watcher", ["coord.watch"], concurrency_max=2)

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        scope, context_id = _text(task_input, "scope"), _text(task_input, "context")
        name, until = _text(task_input, "field"), _count(task_input, "until")
        seen: list[Any] = []
        contexts = current().contexts

        async def exists() -> bool:
            try:
                await contexts.get(context_id, scope)
            except ContextPermissionError:
                raise
            except MeshError:
                return False  # not here yet: gossip is still spreading it
            return True

        timeout_s = min(float(task_input.get("timeout_s", 30.0)), 120.0)
        await bounded_wait(f"context {scope}/{context_id}", exists, timeout_s)
        with anyio.move_on_after(timeout_s):
            async for state in contexts.subscribe(context_id, scope):
                value = state.data.get(name)
                if value is not None and (not seen or seen[-1] != value):
                    seen.append(value)
                if isinstance(value, int) and value >= until:
                    break
        return {"seen": seen}


class Stepper(Agent):
    """Sets a context field to 1, 2, ... ``to``, one write after another."""

    def __init__(self) -> None:
        super().__init__("stepper", ["coord.step"], concurrency_max=2)

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        scope, context_id = _text(task_input, "scope"), _text(task_input, "context")
        name, to = _text(task_input, "field"), _count(task_input, "to")
        contexts = current().contexts
        if task_input.get("create") is True:
            await contexts.create(context_id, scope, data={name: 0})
        for value in range(1, to + 1):
            await contexts.write(context_id, scope, {name: value})
            await anyio.sleep(0.05)  # a pace the watcher may see every step at
        return {"last": to}


class Reporter(Agent):
    """Reports a value with when it was read on its node (a claim for ``resolve``)."""

    def __init__(self) -> None:
        super().__init__("reporter", ["coord.report"], concurrency_max=2)

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        return {"value": task_input.get("value"), "updated_at": time.time(),
                "node": current().node_id.hex()}


def coordination_agents() -> list[Agent]:
    """The coordination agents, as ``--agents team`` hosts them."""
    return [ContextWriter(), Intruder(), Publisher(), Listener(), Archivist(), Voter(),
            Waiter(), Reporter(), Watcher(), Stepper()]
