"""What every model client speaks: chat messages, tool calls, replies and errors.

How this works
--------------
A conversation is a sequence of ``ChatMessage``: a ``system`` message with the
instructions, ``user`` messages, ``assistant`` messages (the model's turns, which
may request ``ToolCall`` s) and one ``tool`` message per call with its result.
``ModelClient.complete(messages, tools=..., max_tokens=...)`` sends it with the
tools' specs (``agents.tools.Tool.spec()``) and returns a ``ModelReply``: text,
tool calls, why the model stopped and the tokens it used.

A model sends tool arguments as a JSON string it wrote itself, which may not be
JSON at all: ``ToolCall.raw_arguments`` keeps the string and ``arguments`` is the
parsed object, or None when it does not parse to one, so the caller can tell the
model rather than crash.

Clients raise ``ModelError`` for anything that prevents a reply; ``status`` is
the HTTP status when there was one and ``retryable`` says whether trying again
later may help (after a client's own retries ran out, say).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from agents.agent import AgentError
from mesh.errors import ConfigError

__all__ = [
    "ROLES",
    "ChatMessage",
    "ModelClient",
    "ModelError",
    "ModelReply",
    "Role",
    "ToolCall",
    "Usage",
    "parse_arguments",
]

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})
"""The roles a ``ChatMessage`` may have."""


class ModelError(AgentError):
    """A model request failed; ``status`` is the HTTP status when the server answered.

    ``retryable``: the failure is transient (rate limit, server error, timeout,
    unreachable server). ``retry_after_s``: how long the server asked to wait.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def parse_arguments(raw: str) -> dict[str, Any] | None:
    """The JSON object in ``raw``, or None when ``raw`` is not one."""
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks to call tool ``name``; ``id`` pairs the call with its result.

    ``arguments`` is None when ``raw_arguments`` (what the model sent) is not a
    JSON object.
    """

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str

    def __post_init__(self) -> None:
        for label in ("id", "name", "raw_arguments"):
            value = getattr(self, label)
            if not isinstance(value, str):
                raise ConfigError(f"tool call {label} {value!r} must be a string")
        if self.arguments is not None and not isinstance(self.arguments, dict):
            raise ConfigError(f"tool call arguments {self.arguments!r} must be a dict or None")

    @staticmethod
    def of(id: str, name: str, raw_arguments: str) -> ToolCall:
        """A call as a model sent it, its arguments parsed from ``raw_arguments``."""
        return ToolCall(id=id, name=name, arguments=parse_arguments(raw_arguments),
                        raw_arguments=raw_arguments)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation.

    ``tool_calls`` only on ``assistant`` messages; ``tool_call_id`` exactly on
    ``tool`` messages (the id of the call it answers). ``content`` may be None
    only on an assistant message that calls tools.
    """

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"message role {self.role!r} must be one of {sorted(ROLES)}")
        if self.content is not None and not isinstance(self.content, str):
            raise ConfigError(f"{self.role} message content must be text or None, not "
                              f"{type(self.content).__name__}")
        if not isinstance(self.tool_calls, tuple) or not all(
                isinstance(call, ToolCall) for call in self.tool_calls):
            raise ConfigError("tool_calls must be a tuple of ToolCall")
        if self.tool_calls and self.role != "assistant":
            raise ConfigError(f"a {self.role} message cannot carry tool calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ConfigError("tool_call_id is required on tool messages and only there "
                              f"(role {self.role!r}, tool_call_id {self.tool_call_id!r})")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ConfigError(f"a {self.role} message needs content")


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelReply:
    """What the model answered: ``content`` and/or ``tool_calls``.

    ``finish_reason`` is the API's word for why it stopped (``"stop"``,
    ``"tool_calls"``, ``"length"``...).
    """

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: Usage = Usage()


@runtime_checkable
class ModelClient(Protocol):
    """A chat model that may call tools."""

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> ModelReply:
        """The model's reply to ``messages``; ``tools`` are ``Tool.spec()`` dicts.

        ``max_tokens`` bounds the reply's length. Raises ``ModelError``.
        """
        ...

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of requests, retries, errors and tokens, read-only."""
        ...
