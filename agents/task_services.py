"""What an agent can reach while it handles a task: shared contexts, events, the stores.

How this works: the host (``agents.host``) sets a ``TaskServices`` for the
duration of each ``handle`` call, in a context variable, so an agent calls
``current()`` instead of being handed the node. Everything it gets acts as
that agent: shared-context and memory permissions are checked against its
name, events it publishes carry its name as their source.

Outside a task (``current()`` raises ``MeshError``) code uses the same classes
directly with a ``KVClient`` and a node's gossip.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from agents.events import EventBus
from agents.memory import AccessCheck, EpisodicMemory, SemanticMemory, glob_access
from agents.shared_context import SharedContexts
from mesh.errors import MeshError

__all__ = ["TaskServices", "current", "running_as"]

_CURRENT: ContextVar[TaskServices | None] = ContextVar("agentmesh_task_services", default=None)
_BUSES: dict[tuple[bytes, str], EventBus] = {}
"""One event bus per agent and node: its sequence numbers must not restart per task."""


@dataclass(frozen=True, slots=True)
class TaskServices:
    """The services of the node running the current task, acting as ``agent``."""

    agent: str
    node: Any
    capability: str
    _contexts: list[SharedContexts] = field(default_factory=list, repr=False)

    @property
    def node_id(self) -> bytes:
        """The node running the task."""
        return bytes(self.node.node_id)

    @property
    def kv(self) -> Any:
        """The node's client of the Raft store (``MeshError`` if it has none)."""
        return self.node.kv

    @property
    def gossip(self) -> Any:
        """The node's gossip state."""
        return self.node.gossip

    @property
    def contexts(self) -> SharedContexts:
        """Shared contexts, acting as this agent."""
        if not self._contexts:
            self._contexts.append(SharedContexts(self.kv, self.gossip, self.agent))
        return self._contexts[0]

    def episodic(self, scope: str, *, read: Sequence[str] = ("*",),
                 write: Sequence[str] = ("*",)) -> EpisodicMemory:
        """Episodic memory of ``scope`` acting as this agent: ``read``/``write`` glob
        patterns over agent names; a ``private/<agent>`` scope is that agent's only."""
        return EpisodicMemory(self.kv, scope, access=_access(scope, read, write),
                              actor=self.agent)

    def semantic(self, scope: str, *, read: Sequence[str] = ("*",),
                 write: Sequence[str] = ("*",)) -> SemanticMemory:
        """Semantic memory of ``scope`` (the built-in embedder) acting as this agent;
        permissions as for ``episodic``."""
        return SemanticMemory(self.kv, scope, access=_access(scope, read, write),
                              actor=self.agent)

    @property
    def events(self) -> EventBus:
        """The event bus, publishing as this agent."""
        key = (self.node_id, self.agent)
        bus = _BUSES.get(key)
        if bus is None:
            bus = _BUSES[key] = EventBus(self.gossip, self.agent)
        return bus


def _access(scope: str, read: Sequence[str], write: Sequence[str]) -> AccessCheck:
    if scope.startswith("private/"):
        owner = scope.split("/")[1]
        return glob_access([owner], [owner])
    return glob_access(read, write)


def current() -> TaskServices:
    """The services of the task being handled; ``MeshError`` outside a task."""
    services = _CURRENT.get()
    if services is None:
        raise MeshError("no task is being handled here: task services exist only inside an "
                        "agent's handle")
    return services


def running_as(services: TaskServices) -> Token[TaskServices | None]:
    """Make ``services`` current (the host does, around ``handle``); reset with the token."""
    return _CURRENT.set(services)


def reset(token: Token[TaskServices | None]) -> None:
    """Undo ``running_as``."""
    _CURRENT.reset(token)
