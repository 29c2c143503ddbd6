"""Typed Python callables as tools a model may call.

How this works
--------------
``@tool`` (or ``tool(fn)``, or ``@tool(name=..., description=...)``) turns a
function into a ``Tool``: a name, a description (by default the first paragraph
of the docstring) and a JSON schema of its parameters, derived from the type
hints with pydantic. Anything pydantic validates works as a parameter type:
``int``, ``float``, ``str``, ``bool``, ``list[...]``, ``dict[...]``,
``Literal[...]``, ``X | None``, pydantic models, ``Annotated[int,
Field(description=...)]``; parameters with defaults are optional. A parameter
without an annotation, ``*args`` or ``**kwargs`` is refused with a
``ConfigError``: the model could not be told what to send.

``tool.spec()`` is what a model request lists (``{"name", "description",
"parameters"}``). ``await tool.invoke(arguments)`` validates the model's
arguments with the same pydantic model the schema came from (unknown keys are
refused), calls the function and checks that the result is JSON-able. Every
problem on the way, including an exception in the function, becomes a
``ToolError`` whose message names the tool and the problem: the caller reports
it to the model, which may correct itself, instead of failing the task.

Synchronous functions run inline on the event loop, so they must be quick
(pure computation, a dict lookup); anything slow or blocking belongs in an
``async def`` tool (which may offload to a worker thread itself).
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, overload

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from agents.agent import AgentError
from mesh.errors import ConfigError

__all__ = [
    "ERROR_CHARS_MAX",
    "TOOL_NAME_PATTERN",
    "Tool",
    "ToolError",
    "tool",
]

TOOL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""What a tool name may be: the function-name rule of the OpenAI API."""
ERROR_CHARS_MAX = 2000
"""Longest ``ToolError`` message; it goes back to the model, so it stays short."""
_INPUT_CHARS_MAX = 80  # how much of an offending value a validation message quotes


class ToolError(AgentError):
    """A tool call failed: bad arguments, an exception in the tool, a non-JSON result."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines()).strip()


def _compact(schema: Any) -> Any:
    """``schema`` without pydantic's ``title`` keywords.

    Only keyword positions are touched: a property that happens to be called
    ``title`` lives in a ``properties`` mapping, whose keys are names, not keywords.
    """
    if isinstance(schema, list):
        return [_compact(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = {name: _compact(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "contains", "if", "then",
                     "else", "anyOf", "oneOf", "allOf", "prefixItems"):
            out[key] = _compact(value)
        else:
            out[key] = value  # enum, const, default, examples: values, left as they are
    return out


def _object_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """The parameters schema in a stable, compact order, ``required`` always present."""
    raw = _compact(raw)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": raw.get("properties", {}),
        "required": raw.get("required", []),
        "additionalProperties": False,
    }
    if "$defs" in raw:
        schema["$defs"] = raw["$defs"]
    return schema


def _describe_errors(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        text = f"{where}: {error['msg']}"
        if error["type"] not in ("missing", "extra_forbidden"):
            try:
                shown = json.dumps(error["input"])
            except (TypeError, ValueError):
                shown = repr(error["input"])
            text += f" (got {_clip(shown, _INPUT_CHARS_MAX)})"
        parts.append(text)
    return "; ".join(parts)


@dataclass(frozen=True, eq=False)
class Tool:
    """A callable a model may use: ``name``, ``description``, ``fn`` and the derived
    JSON schema ``parameters``.

    Build one with ``tool``; constructing it directly works too and derives
    ``parameters`` the same way. Calling the tool object calls ``fn`` directly,
    so a decorated function stays usable from Python.
    """

    name: str
    description: str
    fn: Callable[..., Any]
    parameters: dict[str, Any] = field(init=False)
    _model: type[BaseModel] = field(init=False, repr=False)
    _positional: tuple[str, ...] = field(init=False, repr=False)
    _fields: tuple[tuple[str, str], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not TOOL_NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"tool name {self.name!r} must be 1 to 64 letters, digits, "
                              "'_' or '-'")
        if not isinstance(self.description, str):
            raise ConfigError(f"tool {self.name!r}: description must be text, not "
                              f"{type(self.description).__name__}")
        if not callable(self.fn):
            raise ConfigError(f"tool {self.name!r}: {self.fn!r} is not callable")
        try:
            signature = inspect.signature(self.fn, eval_str=True)
        except (NameError, TypeError, ValueError, SyntaxError) as exc:
            raise ConfigError(f"tool {self.name!r}: cannot read its signature "
                              f"({type(exc).__name__}: {exc})") from exc
        variadic = [p.name for p in signature.parameters.values()
                    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if variadic:
            raise ConfigError(f"tool {self.name!r}: *args and **kwargs cannot be described "
                              f"to a model ({', '.join(variadic)}); list the parameters")
        untyped = [p.name for p in signature.parameters.values() if p.annotation is p.empty]
        if untyped:
            raise ConfigError(f"tool {self.name!r}: parameter(s) {', '.join(untyped)} "
                              "have no type annotation")
        # Fields get neutral names and the parameter name as alias: pydantic would
        # refuse or warn about parameters such as "_x", "json" or "model_id".
        definitions: dict[str, Any] = {}
        names: list[tuple[str, str]] = []
        positional: list[str] = []
        for index, param in enumerate(signature.parameters.values()):
            key = f"p{index}"
            default = ... if param.default is param.empty else param.default
            definitions[key] = (Annotated[param.annotation, Field(alias=param.name)], default)
            names.append((key, param.name))
            if param.kind is param.POSITIONAL_ONLY:
                positional.append(param.name)
        try:
            model = pydantic.create_model(
                f"{self.name}_arguments",
                __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
                **definitions,
            )
            raw_schema = model.model_json_schema()
        except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError,
                TypeError, ValueError) as exc:
            raise ConfigError(f"tool {self.name!r}: cannot derive a JSON schema from its "
                              f"type hints: {_clip(str(exc), 300)}") from exc
        object.__setattr__(self, "parameters", _object_schema(raw_schema))
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_positional", tuple(positional))
        object.__setattr__(self, "_fields", tuple(names))

    def spec(self) -> dict[str, Any]:
        """``{"name", "description", "parameters"}``: the tool as a model request lists it."""
        return {"name": self.name, "description": self.description,
                "parameters": copy.deepcopy(self.parameters)}

    async def invoke(self, arguments: Mapping[str, Any]) -> Any:
        """Validate ``arguments``, call the tool and return its JSON-able result.

        Raises ``ToolError`` for arguments that do not fit the schema (unknown keys
        included), for any exception the tool raises and for a result ``json.dumps``
        cannot encode. Cancellation is never turned into a ``ToolError``.
        """
        if not isinstance(arguments, Mapping):
            raise ToolError(self._message(f"arguments must be a JSON object, not "
                                          f"{type(arguments).__name__}"))
        try:
            validated = self._model.model_validate(dict(arguments))
        except pydantic.ValidationError as exc:
            raise ToolError(self._message(f"invalid arguments: {_describe_errors(exc)}")) from exc
        values = {name: getattr(validated, key) for key, name in self._fields}
        args = [values.pop(name) for name in self._positional]
        try:
            result = self.fn(*args, **values)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise ToolError(self._message(f"failed: {type(exc).__name__}: {exc}")) from exc
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ToolError(self._message(f"returned a result that is not JSON "
                                          f"({type(result).__name__}): {exc}")) from exc
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def _message(self, problem: str) -> str:
        return _clip(f"tool {self.name!r} {problem}", ERROR_CHARS_MAX)


@overload
def tool(fn: Callable[..., Any], /, *, name: str | None = None,
         description: str | None = None) -> Tool: ...


@overload
def tool(fn: None = None, /, *, name: str | None = None,
         description: str | None = None) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
         description: str | None = None) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make ``fn`` a ``Tool``: ``@tool``, ``@tool(name=..., description=...)`` or ``tool(fn)``.

    ``name`` defaults to the function's ``__name__``, ``description`` to the first
    paragraph of its docstring. Raises ``ConfigError`` for a bad name, a parameter
    without annotation, ``*args``/``**kwargs`` or a type pydantic cannot describe.
    """

    def make(function: Callable[..., Any]) -> Tool:
        if isinstance(function, Tool):
            raise ConfigError(f"{function.name!r} is a Tool already")
        tool_name = name if name is not None else getattr(function, "__name__", None)
        if tool_name is None:
            raise ConfigError(f"{function!r} has no __name__: pass name=")
        text = description if description is not None else _first_paragraph(
            inspect.getdoc(function))
        return Tool(name=tool_name, description=text, fn=function)

    if fn is None:
        return make
    return make(fn)
