"""ModelAgent: the tool loop, errors reported to the model, handoffs, limits and output."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import httpx
import pytest

from agents.agent import AgentError, AgentInputError
from agents.host import AgentHost, TaskDone
from agents.model_agent import HANDOFF_TOOL, AgentLimits, ModelAgent
from agents.models import (
    ChatMessage,
    ModelError,
    ModelReply,
    OpenAICompatibleClient,
    OpenAISettings,
    ScriptedModel,
    ToolCall,
    call,
    calls,
    reply,
)
from agents.outcomes import Handoff, HandoffTarget
from agents.tools import tool
from mesh.errors import ConfigError
from openai_stub import ChatCompletionsStub, completion, function_call, running_stub

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


@tool
def get_weather(city: str) -> dict[str, Any]:
    """The weather in a city."""
    return {"city": city, "sky": "sunny", "celsius": 21}


def agent_with(model: ScriptedModel | OpenAICompatibleClient, **options: Any) -> ModelAgent:
    options.setdefault("tools", [add, divide, get_weather])
    options.setdefault("instructions", "Use the tools.")
    options.setdefault("description", "A helpful agent.")
    return ModelAgent("helper", ["math.add", "support"], model=model, **options)


def tool_messages(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    return [m for m in messages if m.role == "tool"]


# -- the tool loop ---------------------------------------------------------------------


async def test_a_tool_round_trip_reaches_the_model() -> None:
    asked = call("add", a=2, b=3)
    model = ScriptedModel([asked, reply("The sum is 5.")])
    agent = agent_with(model, limits=AgentLimits(max_tokens=100))
    assert await agent.handle("math.add", {"a": 2, "b": 3}) == {"text": "The sum is 5."}

    first, second = model.requests
    system, user = first.messages
    assert system == ChatMessage(role="system", content="Use the tools.\n\nA helpful agent.")
    assert user.role == "user"
    assert user.content == json.dumps({"capability": "math.add", "input": {"a": 2, "b": 3}},
                                      sort_keys=True)
    assert [spec["name"] for spec in first.tools] == ["add", "divide", "get_weather"]
    assert list(first.tools) == agent.tool_specs()
    assert first.max_tokens == 100

    assistant, result = second.messages[2:]
    assert assistant == ChatMessage(role="assistant", content=None,
                                    tool_calls=asked.tool_calls)
    assert result == ChatMessage(role="tool", content="5",
                                 tool_call_id=asked.tool_calls[0].id)
    assert dict(agent.counters) == {"model_calls": 2, "tool_calls": 1, "tool_errors": 0,
                                    "handoffs": 0,
                                    "prompt_tokens": model.counters["prompt_tokens"],
                                    "completion_tokens": model.counters["completion_tokens"]}
    assert agent.counters["prompt_tokens"] > 0


async def test_several_calls_in_one_reply_each_get_a_tool_message() -> None:
    asked = calls(("get_weather", {"city": "Oslo"}), ("add", {"a": 1, "b": 1}))
    model = ScriptedModel([asked, reply("done")])
    agent = agent_with(model)
    await agent.handle("support", {})
    weather, total = tool_messages(model.requests[1].messages)
    assert json.loads(weather.content or "") == {"city": "Oslo", "sky": "sunny", "celsius": 21}
    assert total.content == "2"
    assert [weather.tool_call_id, total.tool_call_id] == [c.id for c in asked.tool_calls]
    assert agent.counters["tool_calls"] == 2


async def test_tool_problems_are_reported_to_the_model_not_raised() -> None:
    garbled = ModelReply(content=None, tool_calls=(
        ToolCall.of("call_x", "add", '{"a": 1, "b": '),), finish_reason="tool_calls")
    model = ScriptedModel([
        call("multiply", a=2, b=3),
        call("add", a="two", b=3),
        call("divide", a=1, b=0),
        garbled,
        reply("I could not compute it."),
    ])
    agent = agent_with(model)
    assert await agent.handle("math.add", {}) == {"text": "I could not compute it."}
    contents = [m.content or "" for m in tool_messages(model.requests[-1].messages)]
    assert len(contents) == 4
    assert all(text.startswith("error: ") for text in contents)
    assert "no tool named 'multiply'" in contents[0]
    assert "add, divide, get_weather" in contents[0]
    assert "tool 'add' invalid arguments: a: Input should be a valid integer" in contents[1]
    assert "tool 'divide' failed: ZeroDivisionError" in contents[2]
    assert "arguments of 'add' are not a JSON object" in contents[3]
    assert agent.counters["tool_errors"] == 4 and agent.counters["tool_calls"] == 4


async def test_a_failing_model_fails_the_task() -> None:
    agent = agent_with(ScriptedModel([]))
    with pytest.raises(ModelError, match="script ran out"):
        await agent.handle("support", {})


async def test_a_reply_with_neither_text_nor_calls_is_an_error() -> None:
    agent = agent_with(ScriptedModel([ModelReply(content=None, finish_reason="length")]))
    with pytest.raises(AgentError, match=r"neither an answer nor a tool call.*'length'"):
        await agent.handle("support", {})


async def test_bad_task_input_is_an_input_error() -> None:
    agent = agent_with(ScriptedModel([reply("unused")]))
    with pytest.raises(AgentInputError, match="not JSON"):
        await agent.handle("support", {"when": object()})
    with pytest.raises(AgentInputError, match="does not offer 'other'"):
        await agent.handle("other", {})
    with pytest.raises(AgentInputError, match="must be an object, not list"):
        await agent.handle("support", [1])  # type: ignore[arg-type]


# -- handoffs --------------------------------------------------------------------------


async def test_the_handoff_tool_hands_the_case_on() -> None:
    model = ScriptedModel([call(HANDOFF_TOOL, targets=["billing"], reason="an invoice question",
                                context={"invoice": 7})])
    agent = agent_with(model, handoffs=["billing", "@refunds"])
    outcome = await agent.handle("support", {"question": "Why was I charged twice?"})
    assert outcome == Handoff((HandoffTarget(capability="billing"),), {"invoice": 7},
                              "an invoice question")
    spec = model.requests[0].tools[-1]
    assert spec["name"] == HANDOFF_TOOL
    assert spec["parameters"]["properties"]["targets"]["items"]["enum"] == ["billing", "@refunds"]
    assert agent.counters["handoffs"] == 1


async def test_a_parallel_handoff_names_both_targets() -> None:
    model = ScriptedModel([call(HANDOFF_TOOL, targets=["billing", "@refunds", "billing"],
                                reason="both apply", context=None)])
    agent = agent_with(model, handoffs=["billing", "@refunds"])
    outcome = await agent.handle("support", {})
    assert isinstance(outcome, Handoff)
    assert outcome.targets == (HandoffTarget(capability="billing"),
                               HandoffTarget(agent="refunds"))
    assert outcome.context == {} and outcome.reason == "both apply"


async def test_an_unconfigured_target_is_reported_to_the_model() -> None:
    model = ScriptedModel([
        call(HANDOFF_TOOL, targets=["legal"], reason="lawyers"),
        call(HANDOFF_TOOL, targets=[], reason="nobody"),
        call(HANDOFF_TOOL, targets=["billing"], reason="r", context=[1]),
        reply("I will answer myself."),
    ])
    agent = agent_with(model, handoffs=["billing"])
    assert await agent.handle("support", {}) == {"text": "I will answer myself."}
    first, second, third = (m.content or "" for m in tool_messages(model.requests[-1].messages))
    assert first == "error: cannot hand off to ['legal']: the targets are ['billing']"
    assert "non-empty list" in second
    assert "context must be a JSON object" in third
    assert agent.counters["handoffs"] == 0 and agent.counters["tool_errors"] == 3


async def test_without_handoffs_there_is_no_handoff_tool() -> None:
    model = ScriptedModel([call(HANDOFF_TOOL, targets=["billing"], reason="r"), reply("ok")])
    agent = agent_with(model)
    assert await agent.handle("support", {}) == {"text": "ok"}
    assert HANDOFF_TOOL not in [spec["name"] for spec in model.requests[0].tools]
    (message,) = tool_messages(model.requests[1].messages)
    assert (message.content or "").startswith("error: there is no tool named 'handoff'")


# -- limits ----------------------------------------------------------------------------


async def test_max_tool_calls_is_enforced() -> None:
    model = ScriptedModel([calls(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2}),
                                 ("add", {"a": 3, "b": 3})), reply("never")])
    agent = agent_with(model, limits=AgentLimits(max_tool_calls=2))
    with pytest.raises(AgentError, match=r"exceeded max_tool_calls \(2\)"):
        await agent.handle("math.add", {})
    assert agent.counters["tool_calls"] == 2


async def test_max_model_calls_is_enforced() -> None:
    model = ScriptedModel(lambda messages, tools: call("add", a=1, b=1))
    agent = agent_with(model, limits=AgentLimits(max_model_calls=3))
    with pytest.raises(AgentError, match=r"exceeded max_model_calls \(3\)"):
        await agent.handle("math.add", {})
    assert len(model.requests) == 3


async def test_the_whole_task_times_out() -> None:
    never = anyio.Event()

    async def stuck(messages: Sequence[ChatMessage],
                    tools: Sequence[Mapping[str, Any]]) -> ModelReply:
        await never.wait()
        return reply("too late")

    agent = agent_with(ScriptedModel(stuck), limits=AgentLimits(timeout_s=0.05))
    with anyio.fail_after(10):
        with pytest.raises(AgentError, match=r"ran longer than timeout_s \(0.05 s\)"):
            await agent.handle("support", {})
    never.set()


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_tokens": 0}, r"max_tokens \(0\)"),
    ({"max_tool_calls": -1}, r"max_tool_calls \(-1\)"),
    ({"max_model_calls": 0}, r"max_model_calls \(0\)"),
    ({"max_model_calls": 2.5}, r"max_model_calls \(2.5\)"),
    ({"timeout_s": 0}, r"timeout_s \(0\)"),
    ({"timeout_s": float("nan")}, r"timeout_s \(nan\)"),
])
def test_bad_limits_are_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentLimits(**fields)


# -- output ----------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ['{"answer": 42, "unit": "none"}',
                                    '```json\n{"answer": 42, "unit": "none"}\n```',
                                    '  {"answer": 42, "unit": "none"}\n'])
async def test_json_output_returns_the_object(answer: str) -> None:
    agent = agent_with(ScriptedModel([reply(answer)]), output="json")
    assert await agent.handle("support", {}) == {"answer": 42, "unit": "none"}


@pytest.mark.parametrize("answer", ["forty-two", "[42]", '{"answer": '])
async def test_json_output_refuses_anything_but_an_object(answer: str) -> None:
    agent = agent_with(ScriptedModel([reply(answer)]), output="json")
    with pytest.raises(AgentError, match="was to answer with a JSON object"):
        await agent.handle("support", {})


# -- definition ------------------------------------------------------------------------


def test_describe_is_json_for_listings() -> None:
    agent = agent_with(ScriptedModel([]), handoffs=["billing"],
                       limits=AgentLimits(max_tool_calls=4))
    described = agent.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["name"] == "helper"
    assert described["description"] == "A helpful agent."
    assert described["capabilities"] == ["math.add", "support"]
    assert [spec["name"] for spec in described["tools"]] == ["add", "divide", "get_weather"]
    assert described["handoffs"] == ["billing"]
    assert described["limits"] == {"max_tokens": None, "max_tool_calls": 4,
                                   "max_model_calls": 32, "timeout_s": 120.0}
    assert agent.estimate("support", None) is not None


@pytest.mark.parametrize(("options", "message"), [
    ({"tools": [add, tool(add)]}, r"tool names repeat: \['add'\]"),
    ({"tools": [tool(add, name=HANDOFF_TOOL)], "handoffs": ["x"]}, "clashes with the built-in"),
    ({"handoffs": ["billing", "billing"]}, "handoff target repeats"),
    ({"handoffs": ["@"]}, "must name an agent"),
    ({"handoffs": [" billing"]}, "leading or trailing spaces"),
    ({"handoffs": "billing"}, "not a single string"),
    ({"output": "xml"}, "output 'xml'"),
    ({"limits": {"max_tool_calls": 1}}, "limits must be AgentLimits"),
    ({"instructions": None}, "instructions must be text"),
])
def test_bad_definitions_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        agent_with(ScriptedModel([]), **options)


def test_the_model_must_be_a_model_client() -> None:
    with pytest.raises(ConfigError, match="is not a ModelClient"):
        ModelAgent("x", ["c"], model=object())  # type: ignore[arg-type]


async def test_a_host_runs_a_model_agent() -> None:
    class Gossip:
        def set(self, key: str, value: Any) -> None:
            pass

        def delete(self, key: str) -> bool:
            return False

    class Node:
        node_id = bytes(16)
        gossip = Gossip()

    host = AgentHost(Node(), [agent_with(ScriptedModel([call("add", a=1, b=2), reply("3")]))])
    assert await host.run_task("math.add", {"a": 1, "b": 2}) == TaskDone("helper", {"text": "3"})


# -- end to end over HTTP --------------------------------------------------------------


@pytest.fixture
def stub() -> Iterator[ChatCompletionsStub]:
    with running_stub() as server:
        yield server


async def test_end_to_end_with_the_openai_client(stub: ChatCompletionsStub) -> None:
    stub.push(
        completion(None, tool_calls=[function_call("call_w1", "get_weather", {"city": "Oslo"})],
                   prompt_tokens=40, completion_tokens=12),
        completion("It is sunny and 21 °C in Oslo.", prompt_tokens=70, completion_tokens=9),
    )
    settings = OpenAISettings(base_url=stub.base_url, model="gpt-test", api_key="sk-e2e",
                              timeout_s=5.0)
    async with OpenAICompatibleClient(settings, transport=httpx.AsyncHTTPTransport(),
                                      rng=random.Random(1)) as client:
        agent = agent_with(client, tools=[get_weather])
        answer = await agent.handle("support", {"question": "Weather in Oslo?"})
    assert answer == {"text": "It is sunny and 21 °C in Oslo."}

    first, second = (r.body for r in stub.received)
    assert first["model"] == "gpt-test"
    assert first["tools"] == [{"type": "function", "function": get_weather.spec()}]
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert second["messages"][2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_w1",
         "content": json.dumps({"city": "Oslo", "sky": "sunny", "celsius": 21})},
    ]
    assert stub.received[1].headers["authorization"] == "Bearer sk-e2e"
    assert agent.counters["prompt_tokens"] == 110
    assert agent.counters["completion_tokens"] == 21
    assert client.counters["requests"] == 2
