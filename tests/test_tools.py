"""Tools: JSON schemas derived from type hints, validated invocation, clear errors."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from agents.agent import AgentError
from agents.tools import ERROR_CHARS_MAX, TOOL_NAME_PATTERN, Tool, ToolError, tool
from mesh.errors import ConfigError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Point(BaseModel):
    """A point on the plane."""

    x: float
    y: float
    title: str = "origin"


@tool
def add(a: int, b: int = 2) -> int:
    """Add two integers.

    The second paragraph is not part of the description.
    """
    return a + b


@tool(name="search-docs", description="Search the documentation.")
def search(query: str, limit: int | None = None, mode: Literal["fast", "exact"] = "fast",
           tags: list[str] | None = None) -> list[str]:
    return [query, str(limit), mode, *(tags or [])]


@tool
def mean(values: list[int], weights: dict[str, float] | None = None) -> float:
    """Mean of the values."""
    return sum(values) / len(values)


@tool
def distance(point: Point, title: Annotated[str, Field(description="a label")] = "") -> float:
    """Distance from the origin."""
    return float((point.x ** 2 + point.y ** 2) ** 0.5)


@tool
async def slow_echo(text: str) -> str:
    """Echo after yielding to the loop."""
    await anyio.sleep(0)
    return text


# -- schemas ---------------------------------------------------------------------------


def test_schema_with_a_default_and_a_docstring_description() -> None:
    assert add.spec() == {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}},
            "required": ["a"],
            "additionalProperties": False,
        },
    }


def test_schema_with_optional_literal_and_lists() -> None:
    spec = search.spec()
    assert spec["name"] == "search-docs"
    assert spec["description"] == "Search the documentation."
    assert spec["parameters"] == {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "mode": {"type": "string", "enum": ["fast", "exact"], "default": "fast"},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}},
                               {"type": "null"}], "default": None},
        },
        "required": ["query"],
        "additionalProperties": False,
    }


def test_schema_with_a_list_of_ints_and_a_dict() -> None:
    assert mean.parameters["properties"] == {
        "values": {"type": "array", "items": {"type": "integer"}},
        "weights": {"anyOf": [{"type": "object", "additionalProperties": {"type": "number"}},
                              {"type": "null"}], "default": None},
    }
    assert mean.parameters["required"] == ["values"]


def test_schema_with_a_pydantic_model_keeps_a_property_named_title() -> None:
    parameters = distance.parameters
    assert parameters["required"] == ["point"]
    assert parameters["properties"]["point"] == {"$ref": "#/$defs/Point"}
    assert parameters["properties"]["title"] == {"type": "string", "default": "",
                                                 "description": "a label"}
    point = parameters["$defs"]["Point"]
    assert point["properties"] == {"x": {"type": "number"}, "y": {"type": "number"},
                                   "title": {"type": "string", "default": "origin"}}
    assert point["required"] == ["x", "y"]
    assert point["description"] == "A point on the plane."
    assert "title" not in point  # pydantic's title keyword, not the property, is dropped


def test_a_tool_without_parameters_or_docstring() -> None:
    def ping() -> str:
        return "pong"

    made = tool(ping)
    assert made.spec() == {"name": "ping", "description": "", "parameters": {
        "type": "object", "properties": {}, "required": [], "additionalProperties": False}}
    assert made() == "pong"  # a tool is still callable from Python


def test_specs_are_json_and_copies() -> None:
    spec = search.spec()
    assert json.loads(json.dumps(spec)) == spec
    spec["parameters"]["properties"].clear()
    assert search.parameters["properties"]


def test_parameter_names_pydantic_would_refuse_work() -> None:
    @tool
    def odd(json: str, model_id: int, _private: bool = False) -> list[Any]:
        """Odd names."""
        return [json, model_id, _private]

    assert sorted(odd.parameters["properties"]) == ["_private", "json", "model_id"]
    assert anyio.run(odd.invoke, {"json": "x", "model_id": 3}) == ["x", 3, False]


# -- refused definitions ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "has space", "dot.name", "x" * 65, "ünï", 5])
def test_bad_names_are_config_errors(name: Any) -> None:
    with pytest.raises(ConfigError, match="tool name"):
        tool(add.fn, name=name)


def test_lambdas_need_a_name() -> None:
    with pytest.raises(ConfigError, match="'<lambda>'"):
        tool(lambda x: x)


def test_missing_annotations_are_refused_by_name() -> None:
    def untyped(a: int, b, c) -> int:  # type: ignore[no-untyped-def]
        return a

    with pytest.raises(ConfigError, match=r"untyped.*b, c have no type annotation"):
        tool(untyped)


def test_variadic_parameters_are_refused() -> None:
    def variadic(a: int, *rest: int, **options: str) -> int:
        return a

    with pytest.raises(ConfigError, match=r"\*args and \*\*kwargs.*rest, options"):
        tool(variadic)


def test_types_without_a_schema_are_refused() -> None:
    def needs_a_lock(lock: anyio.Lock) -> None:
        pass

    with pytest.raises(ConfigError, match=r"needs_a_lock.*cannot derive a JSON schema"):
        tool(needs_a_lock)


def test_a_tool_cannot_be_wrapped_twice() -> None:
    with pytest.raises(ConfigError, match="is a Tool already"):
        tool(add)


# -- invoking --------------------------------------------------------------------------


async def test_invoke_validates_and_calls() -> None:
    assert await add.invoke({"a": 1}) == 3
    assert await add.invoke({"a": 1, "b": 5}) == 6
    assert await add.invoke({"a": "7"}) == 9  # lax mode: a numeric string is an int
    assert await search.invoke({"query": "q", "mode": "exact", "tags": ["t"]}) == [
        "q", "None", "exact", "t"]
    assert await distance.invoke({"point": {"x": 3, "y": 4}}) == 5.0


async def test_async_tools_are_awaited() -> None:
    assert await slow_echo.invoke({"text": "hi"}) == "hi"


async def test_positional_only_parameters_work() -> None:
    @tool
    def scale(value: float, /, factor: float = 2.0) -> float:
        """Scale a value."""
        return value * factor

    assert await scale.invoke({"value": 1.5}) == 3.0


@pytest.mark.parametrize(("arguments", "message"), [
    ({}, r"a: Field required"),
    ({"a": "seven"}, r"a: Input should be a valid integer.*\(got \"seven\"\)"),
    ({"a": 1, "c": 3}, r"c: Extra inputs are not permitted"),
    ({"a": 1.5}, r"a: Input should be a valid integer"),
])
async def test_bad_arguments_are_tool_errors_naming_tool_and_field(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError, match=rf"tool 'add' invalid arguments: {message}"):
        await add.invoke(arguments)


async def test_bad_nested_and_literal_arguments() -> None:
    with pytest.raises(ToolError, match=r"point.y: Field required"):
        await distance.invoke({"point": {"x": 1}})
    with pytest.raises(ToolError, match=r"mode: Input should be 'fast' or 'exact'"):
        await search.invoke({"query": "q", "mode": "slow"})
    with pytest.raises(ToolError, match="arguments must be a JSON object, not list"):
        await add.invoke([1, 2])  # type: ignore[arg-type]


async def test_exceptions_in_a_tool_become_tool_errors() -> None:
    @tool
    def divide(a: float, b: float) -> float:
        """Divide."""
        return a / b

    with pytest.raises(ToolError, match="tool 'divide' failed: ZeroDivisionError") as caught:
        await divide.invoke({"a": 1, "b": 0})
    assert isinstance(caught.value, AgentError)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


async def test_exceptions_in_an_async_tool_become_tool_errors() -> None:
    @tool
    async def broken() -> None:
        """Always fails."""
        raise RuntimeError("backend down")

    with pytest.raises(ToolError, match="tool 'broken' failed: RuntimeError: backend down"):
        await broken.invoke({})


@pytest.mark.parametrize("result", [{1, 2}, object(), float("nan"), {"bytes": b"x"}])
async def test_results_that_are_not_json_are_tool_errors(result: Any) -> None:
    @tool
    def weird() -> Any:
        """Returns something odd."""
        return result

    with pytest.raises(ToolError, match="tool 'weird' returned a result that is not JSON"):
        await weird.invoke({})


async def test_error_messages_are_bounded() -> None:
    @tool
    def loud() -> None:
        """Fails at length."""
        raise ValueError("x" * 10_000)

    with pytest.raises(ToolError) as caught:
        await loud.invoke({})
    assert len(str(caught.value)) == ERROR_CHARS_MAX


async def test_cancellation_is_not_a_tool_error() -> None:
    started = anyio.Event()

    @tool
    async def forever() -> None:
        """Never returns."""
        started.set()
        await anyio.sleep_forever()

    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(forever.invoke, {})
            await started.wait()
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught


def test_a_directly_built_tool_derives_its_schema() -> None:
    made = Tool(name="adder", description="Adds.", fn=add.fn)
    assert made.parameters == add.parameters


# -- properties ------------------------------------------------------------------------


@given(st.integers(min_value=-(2 ** 53), max_value=2 ** 53),
       st.integers(min_value=-(2 ** 53), max_value=2 ** 53))
def test_property_invoke_matches_a_direct_call(a: int, b: int) -> None:
    assert anyio.run(add.invoke, {"a": a, "b": b}) == a + b


@given(st.text(max_size=70))
def test_property_names_follow_the_api_rule(name: str) -> None:
    allowed = re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name) is not None
    assert (TOOL_NAME_PATTERN.fullmatch(name) is not None) == allowed
    if allowed:
        assert tool(add.fn, name=name).name == name
    else:
        with pytest.raises(ConfigError):
            tool(add.fn, name=name)
