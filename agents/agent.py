"""The minimal agent: a name, capabilities, a concurrency limit and ``handle``.

How this works
--------------
An agent offers one or more *capabilities* (short strings such as
``"demo.wordcount"``) and handles a task of one of them: ``await
agent.handle(capability, task_input)`` takes a JSON-like mapping and returns a
JSON-able dict. It runs at most ``concurrency_max`` tasks at a time; the host
(``agents.host``) enforces that and publishes the capabilities and live load in
gossip so that managers invite only nodes that can do the work.

Bad input is an operating error of the task, not of the node: an agent raises
``AgentInputError`` with a message naming the offending value, and the host turns
it into a task failure with that reason. ``estimate`` quotes a bid for the
contract net; at bid time the full input is usually not known (a call for
proposals carries only a summary), so it is called with ``task_input=None`` then.

``agents.model_agent.ModelAgent`` adds instructions, tools, limits and a model
client; ``agents.outcomes.Handoff`` is how any agent passes a case on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from agents.contract_net.contractor import Estimate
from agents.contract_net.messages import CAPABILITY_CHARS_MAX
from agents.outcomes import Handoff
from mesh.errors import ConfigError, MeshError

__all__ = [
    "AGENT_NAME_CHARS_MAX",
    "CONCURRENCY_MAX",
    "Agent",
    "AgentError",
    "AgentInputError",
    "Estimate",
    "validate_capability",
]

AGENT_NAME_CHARS_MAX = 128
"""Longest agent name."""
CONCURRENCY_MAX = 1024
"""Largest ``concurrency_max`` of one agent."""


class AgentError(MeshError):
    """Root of the errors an agent raises while handling a task."""


class AgentInputError(AgentError):
    """The task input is invalid (wrong type, too large, not finite...): the task fails."""


def validate_capability(capability: object) -> str:
    """``capability`` if it is a usable capability name; raises ``ConfigError`` otherwise."""
    if not isinstance(capability, str) or not capability.strip():
        raise ConfigError(f"capability {capability!r} must be a non-empty string")
    if len(capability) > CAPABILITY_CHARS_MAX:
        raise ConfigError(
            f"capability {capability[:40]!r}... has {len(capability)} characters, "
            f"more than {CAPABILITY_CHARS_MAX}"
        )
    if capability != capability.strip():
        raise ConfigError(f"capability {capability!r} has leading or trailing spaces")
    return capability


class Agent(ABC):
    """Base of every agent: subclass it and implement ``handle``.

    ``handle`` may be called concurrently, up to ``concurrency_max`` times; it runs
    on the event loop and must not block (await, or offload to a worker thread).
    """

    def __init__(
        self, name: str, capabilities: Iterable[str], *, concurrency_max: int = 1
    ) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ConfigError(f"agent name {name!r} must be a non-empty string without "
                              "leading or trailing spaces")
        if len(name) > AGENT_NAME_CHARS_MAX:
            raise ConfigError(f"agent name {name[:40]!r}... has {len(name)} characters, "
                              f"more than {AGENT_NAME_CHARS_MAX}")
        caps = tuple(validate_capability(c) for c in capabilities)
        if not caps:
            raise ConfigError(f"agent {name!r} offers no capability")
        if len(set(caps)) != len(caps):
            raise ConfigError(f"agent {name!r} lists a capability twice: {list(caps)}")
        if (
            isinstance(concurrency_max, bool)
            or not isinstance(concurrency_max, int)
            or not 1 <= concurrency_max <= CONCURRENCY_MAX
        ):
            raise ConfigError(f"agent {name!r}: concurrency_max ({concurrency_max!r}) must be "
                              f"an integer from 1 to {CONCURRENCY_MAX}")
        self._name = name
        self._capabilities = caps
        self._concurrency_max = concurrency_max

    @property
    def name(self) -> str:
        """The agent's name, unique on its node."""
        return self._name

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The capabilities it handles, in the order given."""
        return self._capabilities

    @property
    def concurrency_max(self) -> int:
        """How many tasks it may run at once."""
        return self._concurrency_max

    @abstractmethod
    async def handle(
        self, capability: str, task_input: Mapping[str, Any]
    ) -> dict[str, Any] | Handoff:
        """Do one task of ``capability``; return a JSON-able dict, or a ``Handoff``
        passing the case to other agents (``agents.outcomes``).

        Raise ``AgentInputError`` when ``task_input`` is invalid. Any other exception
        also fails the task (counted as an agent error) without harming the node.
        """

    def estimate(
        self, capability: str, task_input: Mapping[str, Any] | None
    ) -> Estimate | None:
        """Quote a bid for a task of ``capability``, or decline it with None.

        ``task_input`` is None when only a summary is known (contract-net bids).
        Must be quick and must not block: it runs inline when a call arrives.
        The default quotes a cost of 1 and one second with full confidence.
        """
        return Estimate(cost=1.0, duration_s=1.0, confidence=1.0)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self._name!r}, "
                f"capabilities={self._capabilities!r}, "
                f"concurrency_max={self._concurrency_max})")
