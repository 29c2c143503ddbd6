"""An agent driven by a model: instructions, tools, handoffs and limits.

How this works
--------------
``ModelAgent.handle(capability, task_input)`` opens a conversation: a system
message with the instructions (and the agent's description) and a user message
holding the task as ``{"capability": ..., "input": ...}`` in JSON. Then it loops:

1. ask the model, offering the tools' specs;
2. if the reply calls tools, run each call, append the assistant turn and one
   ``tool`` message per call with the result, and go to 1;
3. otherwise the reply's text is the answer: ``{"text": ...}``, or with
   ``output="json"`` the JSON object the model wrote.

A tool call that cannot be run (no such tool, arguments that are not a JSON
object, a ``ToolError``) goes back to the model as ``"error: ..."`` in the tool
message: models usually correct themselves, and a task should not fail on one
bad guess. A failing model (``ModelError``) does fail the task.

With ``handoffs`` configured (capability names, or agent names written
``@name``) the model is also offered a built-in ``handoff`` tool; calling it with
configured targets ends the task at once with a ``Handoff`` (several targets: a
parallel handoff). Targets outside the configuration are reported to the model
as an error, never followed.

``AgentLimits`` bounds each task: model calls, tool calls, tokens per reply and
wall time; going over fails the task with an ``AgentError`` that names the limit.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Literal

import anyio

from agents.agent import Agent, AgentError, AgentInputError, Estimate, validate_capability
from agents.models.base import ChatMessage, ModelClient, ModelReply, ToolCall
from agents.outcomes import Handoff, HandoffError
from agents.tools import Tool, ToolError, tool
from mesh.errors import ConfigError

__all__ = [
    "COUNTERS",
    "HANDOFF_TOOL",
    "AgentLimits",
    "ModelAgent",
]

HANDOFF_TOOL = "handoff"
"""Name of the built-in tool that hands the case on."""
_ERROR_ECHO_CHARS_MAX = 200  # how much of unparsable arguments an error quotes back

COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "model_calls": "requests to the model",
        "tool_calls": "tool calls the model made, handoff calls included",
        "tool_errors": "tool calls reported back to the model as errors",
        "handoffs": "tasks ended by a handoff",
        "prompt_tokens": "prompt tokens the model reported",
        "completion_tokens": "completion tokens the model reported",
    }
)
"""Every name in ``ModelAgent.counters`` with what it counts; all start at zero."""


def _count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} ({value!r}) must be an integer >= {low}")


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """Bounds of one task of a ``ModelAgent``.

    ``max_tokens``: longest reply per model call (None: the model's own limit).
    ``max_tool_calls``: tool calls per task, handoff calls included.
    ``max_model_calls``: model requests per task.
    ``timeout_s``: longest a task may take, model and tools together.
    """

    max_tokens: int | None = None
    max_tool_calls: int = 16
    max_model_calls: int = 32
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            _count("max_tokens", self.max_tokens, 1)
        _count("max_tool_calls", self.max_tool_calls, 0)
        _count("max_model_calls", self.max_model_calls, 1)
        value = self.timeout_s
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= 0):
            raise ConfigError(f"timeout_s ({value!r}) must be a finite number > 0")


def _handoff_name(name: object) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"handoff target {name!r} must be a string")
    if name.startswith("@"):
        agent = name[1:]
        if not agent.strip() or agent != agent.strip():
            raise ConfigError(f"handoff target {name!r} must name an agent after '@'")
        return name
    return validate_capability(name)


class ModelAgent(Agent):
    """An agent whose work a model does; see the module docstring.

    ``tools`` may be ``Tool`` s or plain typed functions (wrapped with ``tool``).
    ``output``: ``"text"`` answers ``{"text": reply}``; ``"json"`` expects the
    model to answer with a JSON object and returns that object.
    """

    def __init__(
        self,
        name: str,
        capabilities: Sequence[str],
        *,
        model: ModelClient,
        instructions: str = "",
        description: str = "",
        tools: Sequence[Tool | Callable[..., Any]] = (),
        handoffs: Sequence[str] = (),
        limits: AgentLimits = AgentLimits(),
        concurrency_max: int = 1,
        output: Literal["text", "json"] = "text",
    ) -> None:
        super().__init__(name, capabilities, concurrency_max=concurrency_max)
        if not isinstance(model, ModelClient):
            raise ConfigError(f"agent {name!r}: model {model!r} is not a ModelClient "
                              "(it needs complete() and counters)")
        for label, text in (("instructions", instructions), ("description", description)):
            if not isinstance(text, str):
                raise ConfigError(f"agent {name!r}: {label} must be text, not "
                                  f"{type(text).__name__}")
        if not isinstance(limits, AgentLimits):
            raise ConfigError(f"agent {name!r}: limits must be AgentLimits, not "
                              f"{type(limits).__name__}")
        if output not in ("text", "json"):
            raise ConfigError(f"agent {name!r}: output {output!r} must be 'text' or 'json'")
        if isinstance(tools, str | bytes) or isinstance(handoffs, str | bytes):
            raise ConfigError(f"agent {name!r}: tools and handoffs must be sequences, "
                              "not a single string")
        wrapped = tuple(t if isinstance(t, Tool) else tool(t) for t in tools)
        names = [t.name for t in wrapped]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"agent {name!r}: tool names repeat: {repeated}")
        targets = tuple(_handoff_name(target) for target in handoffs)
        if len(set(targets)) != len(targets):
            raise ConfigError(f"agent {name!r}: a handoff target repeats: {list(targets)}")
        if targets and HANDOFF_TOOL in names:
            raise ConfigError(f"agent {name!r}: a tool named {HANDOFF_TOOL!r} clashes with "
                              "the built-in handoff tool")
        self._model = model
        self._instructions = instructions
        self._description = description
        self._tools = {t.name: t for t in wrapped}
        self._handoffs = targets
        self._limits = limits
        self._output = output
        self._specs = [t.spec() for t in wrapped]
        if targets:
            self._specs.append(self._handoff_spec())
        self._counters = dict.fromkeys(COUNTERS, 0)

    # -- what it is ------------------------------------------------------------------

    @property
    def model(self) -> ModelClient:
        """The model client."""
        return self._model

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The tools, in the order given (the handoff tool not included)."""
        return tuple(self._tools.values())

    @property
    def handoffs(self) -> tuple[str, ...]:
        """Where it may hand a case: capabilities, or ``@agent`` names."""
        return self._handoffs

    @property
    def limits(self) -> AgentLimits:
        """Its per-task limits."""
        return self._limits

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts over all its tasks (see ``COUNTERS``), read-only."""
        return MappingProxyType(self._counters)

    def tool_specs(self) -> list[dict[str, Any]]:
        """What each model request offers: the tools' specs, then the handoff tool's."""
        return copy.deepcopy(self._specs)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for listings."""
        return {
            "name": self.name,
            "description": self._description,
            "capabilities": list(self.capabilities),
            "tools": [t.spec() for t in self._tools.values()],
            "handoffs": list(self._handoffs),
            "limits": asdict(self._limits),
            "output": self._output,
        }

    def estimate(
        self, capability: str, task_input: Mapping[str, Any] | None
    ) -> Estimate | None:
        """The base agent's flat quote.

        What a model task costs shows only while it runs (how many calls, how many
        tokens), so there is nothing better to quote up front.
        """
        return super().estimate(capability, task_input)

    # -- doing a task ----------------------------------------------------------------

    async def handle(
        self, capability: str, task_input: Mapping[str, Any]
    ) -> dict[str, Any] | Handoff:
        """Do one task with the model; returns the answer or a ``Handoff``.

        Raises ``AgentInputError`` for input that is not a JSON object,
        ``ModelError`` when the model fails, and ``AgentError`` when a limit is
        exceeded or a JSON answer is not a JSON object.
        """
        if capability not in self.capabilities:
            raise AgentInputError(f"agent {self.name!r} does not offer {capability!r}")
        if not isinstance(task_input, Mapping):
            raise AgentInputError(f"task input must be an object, not "
                                  f"{type(task_input).__name__}")
        try:
            task = json.dumps({"capability": capability, "input": dict(task_input)},
                              sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AgentInputError(f"task input is not JSON: {exc}") from exc
        messages: list[ChatMessage] = []
        system = "\n\n".join(part for part in (self._instructions, self._description) if part)
        if system:
            messages.append(ChatMessage(role="system", content=system))
        messages.append(ChatMessage(role="user", content=task))
        limit_s = self._limits.timeout_s
        try:
            with anyio.fail_after(limit_s):
                return await self._converse(messages)
        except TimeoutError:
            raise AgentError(f"agent {self.name!r} ran longer than timeout_s "
                             f"({limit_s:g} s)") from None

    async def _converse(self, messages: list[ChatMessage]) -> dict[str, Any] | Handoff:
        limits = self._limits
        model_calls = tool_calls = 0
        while True:
            if model_calls >= limits.max_model_calls:
                raise AgentError(f"agent {self.name!r} exceeded max_model_calls "
                                 f"({limits.max_model_calls}) without an answer")
            model_calls += 1
            self._counters["model_calls"] += 1
            answer = await self._model.complete(messages, tools=self._specs,
                                                max_tokens=limits.max_tokens)
            self._counters["prompt_tokens"] += answer.usage.prompt_tokens
            self._counters["completion_tokens"] += answer.usage.completion_tokens
            if not answer.tool_calls:
                return self._final(answer)
            messages.append(ChatMessage(role="assistant", content=answer.content,
                                        tool_calls=answer.tool_calls))
            for requested in answer.tool_calls:
                if tool_calls >= limits.max_tool_calls:
                    raise AgentError(f"agent {self.name!r} exceeded max_tool_calls "
                                     f"({limits.max_tool_calls})")
                tool_calls += 1
                self._counters["tool_calls"] += 1
                outcome = await self._run(requested)
                if isinstance(outcome, Handoff):
                    self._counters["handoffs"] += 1
                    return outcome
                messages.append(ChatMessage(role="tool", content=outcome,
                                            tool_call_id=requested.id))

    async def _run(self, requested: ToolCall) -> str | Handoff:
        """The tool message content for ``requested``, or the handoff it asks for."""
        if requested.arguments is None:
            return self._tool_error(f"the arguments of {requested.name!r} are not a JSON "
                                    f"object: {requested.raw_arguments[:_ERROR_ECHO_CHARS_MAX]!r}")
        if self._handoffs and requested.name == HANDOFF_TOOL:
            return self._handoff(requested.arguments)
        chosen = self._tools.get(requested.name)
        if chosen is None:
            offered = ", ".join(spec["name"] for spec in self._specs) or "none"
            return self._tool_error(f"there is no tool named {requested.name!r} "
                                    f"(the tools are: {offered})")
        try:
            result = await chosen.invoke(requested.arguments)
        except ToolError as exc:
            return self._tool_error(str(exc))
        return result if isinstance(result, str) else json.dumps(result)

    def _handoff(self, arguments: Mapping[str, Any]) -> str | Handoff:
        unknown = sorted(set(arguments) - {"targets", "reason", "context"})
        if unknown:
            return self._tool_error(f"handoff takes targets, reason and context, not {unknown}")
        targets = arguments.get("targets")
        if (not isinstance(targets, list) or not targets
                or not all(isinstance(t, str) for t in targets)):
            return self._tool_error("handoff needs targets: a non-empty list of names")
        refused = [t for t in targets if t not in self._handoffs]
        if refused:
            return self._tool_error(f"cannot hand off to {refused}: the targets are "
                                    f"{list(self._handoffs)}")
        # Models often send null for an argument they mean to leave out.
        reason = arguments.get("reason") if arguments.get("reason") is not None else ""
        context = arguments.get("context") if arguments.get("context") is not None else {}
        if not isinstance(reason, str):
            return self._tool_error("handoff reason must be text")
        if not isinstance(context, dict):
            return self._tool_error("handoff context must be a JSON object")
        try:
            return Handoff.to(*dict.fromkeys(targets), context=context, reason=reason)
        except HandoffError as exc:
            return self._tool_error(f"handoff refused: {exc}")

    def _tool_error(self, problem: str) -> str:
        self._counters["tool_errors"] += 1
        return f"error: {problem}"

    def _final(self, answer: ModelReply) -> dict[str, Any]:
        content = answer.content
        if content is None:
            raise AgentError(f"agent {self.name!r}: the model gave neither an answer nor a "
                             f"tool call (finish_reason {answer.finish_reason!r})")
        if self._output == "text":
            return {"text": content}
        text = content.strip()
        # Models often wrap JSON in a Markdown code fence despite being told not to.
        if text.startswith("```") and text.endswith("```") and len(text) >= 6:
            text = text[3:-3]
            first, _, rest = text.partition("\n")
            text = rest if first.strip().isalnum() or not first.strip() else text
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise AgentError(f"agent {self.name!r} was to answer with a JSON object, but "
                             f"answered {content[:_ERROR_ECHO_CHARS_MAX]!r}")
        return value

    def _handoff_spec(self) -> dict[str, Any]:
        return {
            "name": HANDOFF_TOOL,
            "description": (
                "Hand this task on instead of answering it: to capabilities, or to agents "
                "written @name. Several targets each get the task in parallel."),
            "parameters": {
                "type": "object",
                "properties": {
                    "targets": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(self._handoffs)},
                        "minItems": 1,
                        "description": "where the task goes",
                    },
                    "reason": {"type": "string", "description": "why it is handed on"},
                    "context": {"type": "object",
                                "description": "what the targets need to know"},
                },
                "required": ["targets", "reason"],
                "additionalProperties": False,
            },
        }

    def __repr__(self) -> str:
        return (f"ModelAgent(name={self.name!r}, capabilities={self.capabilities!r}, "
                f"tools={list(self._tools)!r}, handoffs={list(self._handoffs)!r})")
