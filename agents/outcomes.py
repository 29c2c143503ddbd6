"""What an agent's ``handle`` may return besides a plain result: a handoff.

How this works
--------------
An agent either answers (a JSON-able dict), fails (raises ``AgentError``), or
hands the case on: it returns a ``Handoff`` naming one or more targets, each a
capability or an agent name, with the context to carry along and why. Several
targets mean a *parallel* handoff: each target gets the case, and whoever
orchestrates joins their answers (nothing is dropped, nothing "last call wins").

A handoff travels as the task's result, so it fits the contract net unchanged:
``handoff_to_result`` makes the dict ``{"handoff": {...}}`` and
``handoff_from_result`` recognises it (``None`` for an ordinary result). The
keys are checked here, with bounds, so a malformed handoff from an agent is an
error of that task, never of the orchestrator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.contract_net.messages import CAPABILITY_CHARS_MAX
from mesh.errors import MeshError

__all__ = [
    "HANDOFF_KEY",
    "HANDOFF_TARGETS_MAX",
    "Handoff",
    "HandoffError",
    "HandoffTarget",
    "handoff_from_result",
    "handoff_to_result",
]

HANDOFF_KEY = "handoff"
"""The one key of a result that carries a handoff."""
HANDOFF_TARGETS_MAX = 16
"""Most targets of one (parallel) handoff."""
_REASON_CHARS_MAX = 1024


class HandoffError(MeshError):
    """A handoff that is malformed (no target, too many, a bad name)."""


@dataclass(frozen=True, slots=True)
class HandoffTarget:
    """Who takes the case: agents offering ``capability``, or the agent ``agent``."""

    capability: str | None = None
    agent: str | None = None

    def __post_init__(self) -> None:
        if (self.capability is None) == (self.agent is None):
            raise HandoffError("a handoff target names exactly one of capability or agent")
        name = self.capability if self.capability is not None else self.agent
        if not isinstance(name, str) or not name.strip() or len(name) > CAPABILITY_CHARS_MAX:
            raise HandoffError(f"handoff target {name!r} must be a non-empty name of at most "
                               f"{CAPABILITY_CHARS_MAX} characters")

    @property
    def label(self) -> str:
        """``capability`` or ``@agent``: how timelines and cycle checks name it."""
        return self.capability if self.capability is not None else f"@{self.agent}"

    def to_json(self) -> dict[str, str]:
        """The JSON form: ``{"capability": c}`` or ``{"agent": a}``."""
        if self.capability is not None:
            return {"capability": self.capability}
        assert self.agent is not None
        return {"agent": self.agent}


@dataclass(frozen=True, slots=True)
class Handoff:
    """Pass the case to ``targets`` (in parallel when several) with ``context``."""

    targets: tuple[HandoffTarget, ...]
    context: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.targets:
            raise HandoffError("a handoff names at least one target")
        if len(self.targets) > HANDOFF_TARGETS_MAX:
            raise HandoffError(f"a handoff names {len(self.targets)} targets, more than "
                               f"{HANDOFF_TARGETS_MAX}")
        if not isinstance(self.context, Mapping):
            raise HandoffError("a handoff's context must be a mapping")
        if not isinstance(self.reason, str) or len(self.reason) > _REASON_CHARS_MAX:
            raise HandoffError(f"a handoff's reason must be text of at most "
                               f"{_REASON_CHARS_MAX} characters")

    @staticmethod
    def to(*targets: str, context: Mapping[str, Any] | None = None,
           reason: str = "") -> Handoff:
        """A handoff to capabilities, or to agents written ``@name``."""
        return Handoff(tuple(_target(name) for name in targets), dict(context or {}), reason)


def _target(name: str) -> HandoffTarget:
    if isinstance(name, str) and name.startswith("@"):
        return HandoffTarget(agent=name[1:])
    return HandoffTarget(capability=name)


def handoff_to_result(handoff: Handoff) -> dict[str, Any]:
    """The task result carrying ``handoff``."""
    return {HANDOFF_KEY: {"targets": [t.to_json() for t in handoff.targets],
                          "context": dict(handoff.context), "reason": handoff.reason}}


def handoff_from_result(result: Mapping[str, Any]) -> Handoff | None:
    """The handoff in a task result, None for an ordinary result.

    Raises ``HandoffError`` when the result claims to be a handoff (its only key
    is ``handoff``) but is malformed.
    """
    if set(result) != {HANDOFF_KEY}:
        return None
    body = result[HANDOFF_KEY]
    if not isinstance(body, Mapping):
        raise HandoffError("a handoff result must hold a mapping")
    raw_targets = body.get("targets")
    if not isinstance(raw_targets, Sequence) or isinstance(raw_targets, str | bytes):
        raise HandoffError("a handoff result must list its targets")
    targets = []
    for raw in raw_targets:
        if not isinstance(raw, Mapping) or not set(raw) <= {"capability", "agent"}:
            raise HandoffError(f"handoff target {raw!r} must be {{capability}} or {{agent}}")
        targets.append(HandoffTarget(capability=raw.get("capability"), agent=raw.get("agent")))
    context = body.get("context", {})
    if not isinstance(context, Mapping):
        raise HandoffError("a handoff's context must be a mapping")
    reason = body.get("reason", "")
    return Handoff(tuple(targets), dict(context), reason if isinstance(reason, str) else "")
