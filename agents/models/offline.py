"""A deterministic model client that needs no network: scripted replies.

How this works
--------------
``ScriptedModel`` answers ``complete`` either from a list of ``ModelReply``, in
order (one more request than replies is a ``ModelError``), or by calling a
function ``(messages, tools) -> ModelReply`` (which may be async, and may wait on
an event to let a test hold the model mid-request). Every request is recorded in
``requests`` so a test can check what the model was shown.

A reply with zero ``usage`` gets one counted as words: the prompt's words (every
message's content and tool-call arguments) and the reply's words, so token
counters and limits can be exercised offline. A reply that states its usage keeps it.

``reply(text)`` and ``call(name, **arguments)`` build replies. ``call`` numbers
its tool calls ``call_1``, ``call_2``... in the order they are built in this
process, so ids are unique and reproducible for a given run of a script.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from agents.models.base import ChatMessage, ModelError, ModelReply, ToolCall, Usage
from mesh.errors import ConfigError

__all__ = [
    "Responder",
    "ScriptedModel",
    "ScriptedRequest",
    "call",
    "calls",
    "reply",
]

Responder = Callable[
    [Sequence[ChatMessage], Sequence[Mapping[str, Any]]], ModelReply | Awaitable[ModelReply]
]
"""A function answering a request: ``(messages, tools) -> ModelReply`` (or awaitable)."""

_call_ids = itertools.count(1)


def reply(content: str, *, finish_reason: str = "stop") -> ModelReply:
    """A plain answer ``content``."""
    return ModelReply(content=content, finish_reason=finish_reason)


def calls(*requested: tuple[str, Mapping[str, Any]], content: str | None = None) -> ModelReply:
    """A reply calling several tools at once: ``calls(("add", {"a": 1}), ("log", {}))``."""
    if not requested:
        raise ConfigError("calls() needs at least one (name, arguments) pair")
    tool_calls = []
    for name, arguments in requested:
        raw = json.dumps(dict(arguments), sort_keys=True)
        tool_calls.append(ToolCall(id=f"call_{next(_call_ids)}", name=name,
                                   arguments=json.loads(raw), raw_arguments=raw))
    return ModelReply(content=content, tool_calls=tuple(tool_calls), finish_reason="tool_calls")


def call(name: str, /, **arguments: Any) -> ModelReply:
    """A reply calling tool ``name`` with ``arguments``."""
    return calls((name, arguments))


@dataclass(frozen=True, slots=True)
class ScriptedRequest:
    """One request a ``ScriptedModel`` got."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[Mapping[str, Any], ...]
    max_tokens: int | None


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _prompt_words(messages: Sequence[ChatMessage]) -> int:
    return sum(_words(m.content) + sum(_words(c.raw_arguments) for c in m.tool_calls)
               for m in messages)


class ScriptedModel:
    """A ``ModelClient`` answering from a script; see the module docstring."""

    def __init__(self, script: Iterable[ModelReply] | Responder) -> None:
        self._responder: Responder | None = None
        self._replies: list[ModelReply] = []
        if callable(script):
            self._responder = script
        else:
            self._replies = list(script)
            bad = [r for r in self._replies if not isinstance(r, ModelReply)]
            if bad:
                raise ConfigError(f"script item {bad[0]!r} is not a ModelReply")
        self._next = 0
        self.requests: list[ScriptedRequest] = []
        """Every request received, in order."""
        self._counters = {"requests": 0, "retries": 0, "errors": 0, "prompt_tokens": 0,
                          "completion_tokens": 0, "total_tokens": 0}

    @property
    def counters(self) -> Mapping[str, int]:
        """requests, retries (always 0), errors and tokens (words), read-only."""
        return MappingProxyType(self._counters)

    @property
    def remaining(self) -> int:
        """Scripted replies not yet given (0 for a function script)."""
        return len(self._replies) - self._next

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> ModelReply:
        """The next scripted reply (or the function's); raises ``ModelError`` when out."""
        self._counters["requests"] += 1
        self.requests.append(ScriptedRequest(tuple(messages), tuple(tools), max_tokens))
        try:
            answer = await self._answer(messages, tools)
        except ModelError:
            self._counters["errors"] += 1
            raise
        if answer.usage == Usage():
            prompt = _prompt_words(messages)
            completion = _words(answer.content) + sum(_words(c.raw_arguments)
                                                      for c in answer.tool_calls)
            answer = ModelReply(answer.content, answer.tool_calls, answer.finish_reason,
                                Usage(prompt, completion, prompt + completion))
        self._counters["prompt_tokens"] += answer.usage.prompt_tokens
        self._counters["completion_tokens"] += answer.usage.completion_tokens
        self._counters["total_tokens"] += answer.usage.total_tokens
        return answer

    async def _answer(self, messages: Sequence[ChatMessage],
                      tools: Sequence[Mapping[str, Any]]) -> ModelReply:
        if self._responder is not None:
            result = self._responder(messages, tools)
            answer = await result if inspect.isawaitable(result) else result
            if not isinstance(answer, ModelReply):
                raise ModelError(f"scripted responder returned {type(answer).__name__}, "
                                 "not a ModelReply")
            return answer
        if self._next >= len(self._replies):
            raise ModelError(f"script ran out: request {self._next + 1} but only "
                             f"{len(self._replies)} scripted replies")
        answer = self._replies[self._next]
        self._next += 1
        return answer
