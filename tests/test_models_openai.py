"""The Chat Completions client against a local server speaking the published API shapes."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from agents.models import (
    ChatMessage,
    ModelError,
    OpenAICompatibleClient,
    OpenAISettings,
    ToolCall,
    Usage,
)
from agents.tools import tool
from mesh.errors import ConfigError
from openai_stub import (
    ChatCompletionsStub,
    StubResponse,
    api_error,
    completion,
    function_call,
    running_stub,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def stub() -> Iterator[ChatCompletionsStub]:
    with running_stub() as server:
        yield server


class Sleeps:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@asynccontextmanager
async def client_for(stub: ChatCompletionsStub, sleeps: Sleeps | None = None,
                     **settings: Any) -> AsyncIterator[OpenAICompatibleClient]:
    options: dict[str, Any] = {"model": "stub-model", "api_key": "sk-test", "timeout_s": 5.0}
    options.update(settings)
    async with OpenAICompatibleClient(
        OpenAISettings(base_url=stub.base_url, **options),
        transport=httpx.AsyncHTTPTransport(), rng=random.Random(7),
        sleep=sleeps if sleeps is not None else Sleeps(),
    ) as client:
        yield client


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` (changed by the server thread), failing at the deadline."""
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.005)


USER = [ChatMessage(role="user", content="hello")]


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """The weather in a city."""
    return f"sunny in {city}"


# -- requests and replies --------------------------------------------------------------


async def test_a_plain_answer(stub: ChatCompletionsStub) -> None:
    stub.push(completion("Hi there!", prompt_tokens=9, completion_tokens=3))
    async with client_for(stub) as client:
        answer = await client.complete(USER)
    assert answer.content == "Hi there!"
    assert answer.tool_calls == ()
    assert answer.finish_reason == "stop"
    assert answer.usage == Usage(prompt_tokens=9, completion_tokens=3, total_tokens=12)
    (request,) = stub.received
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    # Neither tools nor max_tokens when not given.
    assert request.body == {"model": "stub-model",
                            "messages": [{"role": "user", "content": "hello"}]}


async def test_the_request_carries_every_message_shape_and_the_tools(
    stub: ChatCompletionsStub,
) -> None:
    stub.push(completion("done"))
    call = ToolCall.of("call_abc", "get_weather", '{"city": "Oslo"}')
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather in Oslo?"),
        ChatMessage(role="assistant", content=None, tool_calls=(call,)),
        ChatMessage(role="tool", content="sunny in Oslo", tool_call_id="call_abc"),
    ]
    async with client_for(stub) as client:
        await client.complete(messages, tools=[get_weather.spec()], max_tokens=50)
    (request,) = stub.received
    assert request.body == {
        "model": "stub-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_abc", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "content": "sunny in Oslo", "tool_call_id": "call_abc"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"},
                               "unit": {"type": "string", "default": "celsius"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        }}],
        "max_tokens": 50,
    }


async def test_a_tool_call_answer_has_its_arguments_parsed(stub: ChatCompletionsStub) -> None:
    stub.push(completion(None, tool_calls=[
        function_call("call_1", "get_weather", {"city": "Paris", "unit": "celsius"}),
        function_call("call_2", "get_weather", "{not json"),
        function_call("call_3", "get_weather", "[1, 2]"),
    ]))
    async with client_for(stub) as client:
        answer = await client.complete(USER, tools=[get_weather.spec()])
    assert answer.content is None
    assert answer.finish_reason == "tool_calls"
    first, unparsable, not_an_object = answer.tool_calls
    assert first == ToolCall(id="call_1", name="get_weather",
                             arguments={"city": "Paris", "unit": "celsius"},
                             raw_arguments='{"city": "Paris", "unit": "celsius"}')
    assert unparsable.arguments is None and unparsable.raw_arguments == "{not json"
    assert not_an_object.arguments is None


async def test_no_authorization_header_without_a_key(stub: ChatCompletionsStub) -> None:
    stub.push(completion("ok"))
    async with client_for(stub, api_key=None) as client:
        await client.complete(USER)
    assert "authorization" not in stub.received[0].headers


async def test_the_default_http_client_reaches_the_server(stub: ChatCompletionsStub) -> None:
    stub.push(completion("ok"))
    settings = OpenAISettings(base_url=stub.base_url + "/", model="m", timeout_s=5.0)
    async with OpenAICompatibleClient(settings) as client:
        assert (await client.complete(USER)).content == "ok"
    assert stub.received[0].path == "/v1/chat/completions"


async def test_an_injected_http_client_is_used_and_left_open(stub: ChatCompletionsStub) -> None:
    stub.push(completion("ok"))
    async with httpx.AsyncClient(trust_env=False) as http:
        client = OpenAICompatibleClient(OpenAISettings(base_url=stub.base_url, model="m"),
                                        http_client=http)
        assert (await client.complete(USER)).content == "ok"
        await client.aclose()
        assert not http.is_closed


async def test_usage_counters_add_up(stub: ChatCompletionsStub) -> None:
    stub.push(completion("a", prompt_tokens=10, completion_tokens=2),
              completion("b", prompt_tokens=20, completion_tokens=4))
    async with client_for(stub) as client:
        await client.complete(USER)
        await client.complete(USER)
        assert dict(client.counters) == {"requests": 2, "retries": 0, "errors": 0,
                                         "prompt_tokens": 30, "completion_tokens": 6,
                                         "total_tokens": 36}


# -- failures and retries --------------------------------------------------------------


async def test_a_400_is_not_retried_and_its_message_surfaces(stub: ChatCompletionsStub) -> None:
    stub.push(api_error(400, "Invalid 'messages[0].role': bad role.", code="invalid_value"))
    sleeps = Sleeps()
    async with client_for(stub, sleeps) as client:
        with pytest.raises(ModelError, match=r"400: Invalid 'messages\[0\].role'") as caught:
            await client.complete(USER)
        assert client.counters["requests"] == 1 and client.counters["errors"] == 1
    assert caught.value.status == 400 and not caught.value.retryable
    assert len(stub.received) == 1 and sleeps.waits == []


async def test_a_429_is_retried_after_what_retry_after_asks(stub: ChatCompletionsStub) -> None:
    stub.push(api_error(429, "Rate limit reached", type_="requests",
                        headers={"Retry-After": "2"}),
              completion("after the wait"))
    sleeps = Sleeps()
    async with client_for(stub, sleeps) as client:
        answer = await client.complete(USER)
        assert client.counters["retries"] == 1 and client.counters["requests"] == 2
    assert answer.content == "after the wait"
    assert sleeps.waits == [2.0]
    assert len(stub.received) == 2


async def test_retry_after_is_capped_at_backoff_max(stub: ChatCompletionsStub) -> None:
    stub.push(api_error(429, "slow down", headers={"Retry-After": "3600"}), completion("ok"))
    sleeps = Sleeps()
    async with client_for(stub, sleeps, backoff_max_s=4.0) as client:
        await client.complete(USER)
    assert sleeps.waits == [4.0]


async def test_server_errors_back_off_exponentially_then_succeed(
    stub: ChatCompletionsStub,
) -> None:
    stub.push(api_error(500, "internal", type_="server_error"),
              api_error(503, "overloaded", type_="server_error"),
              StubResponse(status=502, body=b"<html>bad gateway</html>"),
              completion("finally"))
    sleeps = Sleeps()
    async with client_for(stub, sleeps, backoff_s=0.5, backoff_max_s=8.0) as client:
        answer = await client.complete(USER)
        assert client.counters["retries"] == 3 and client.counters["errors"] == 0
    assert answer.content == "finally"
    # Each wait is the doubling ceiling with jitter in its upper half.
    assert len(sleeps.waits) == 3
    for wait, ceiling in zip(sleeps.waits, (0.5, 1.0, 2.0), strict=True):
        assert ceiling / 2 <= wait <= ceiling


async def test_retries_run_out_with_a_retryable_error(stub: ChatCompletionsStub) -> None:
    stub.push(*[api_error(503, "still overloaded", type_="server_error")] * 3)
    sleeps = Sleeps()
    async with client_for(stub, sleeps, retries_max=2) as client:
        with pytest.raises(ModelError, match="503: still overloaded") as caught:
            await client.complete(USER)
        assert dict(client.counters)["retries"] == 2 and client.counters["errors"] == 1
    assert caught.value.status == 503 and caught.value.retryable
    assert len(stub.received) == 3 and stub.unused == 0


@pytest.mark.parametrize("body", [
    b"this is not json",
    {"object": "chat.completion", "choices": []},
    {"choices": [{"index": 0, "finish_reason": "stop"}]},
    {"choices": [{"message": {"role": "assistant", "content": 42}, "finish_reason": "stop"}]},
    {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
        "finish_reason": "tool_calls"}]},
    {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": "many"}},
])
async def test_a_malformed_200_is_an_error_and_not_retried(
    stub: ChatCompletionsStub, body: Any
) -> None:
    stub.push(StubResponse(body=body), completion("never reached"))
    async with client_for(stub) as client:
        with pytest.raises(ModelError, match="malformed chat completion") as caught:
            await client.complete(USER)
    assert caught.value.status == 200 and not caught.value.retryable
    assert len(stub.received) == 1


async def test_a_dropped_connection_is_retried(stub: ChatCompletionsStub) -> None:
    stub.push(StubResponse(drop=True), completion("second try"))
    sleeps = Sleeps()
    async with client_for(stub, sleeps) as client:
        assert (await client.complete(USER)).content == "second try"
        assert client.counters["retries"] == 1
    assert len(sleeps.waits) == 1


async def test_a_reply_over_reply_bytes_max_fails(stub: ChatCompletionsStub) -> None:
    stub.push(completion("x" * 5000))
    async with client_for(stub, reply_bytes_max=1024) as client:
        with pytest.raises(ModelError, match=r"reply_bytes_max \(1024\)"):
            await client.complete(USER)
    assert len(stub.received) == 1


async def test_a_silent_server_times_out_and_is_retried(stub: ChatCompletionsStub) -> None:
    stub.push(StubResponse(hold=True, body=completion("late").body),
              StubResponse(hold=True, body=completion("late").body))
    sleeps = Sleeps()
    async with client_for(stub, sleeps, timeout_s=0.2, retries_max=1) as client:
        with anyio.fail_after(10):
            with pytest.raises(ModelError, match=r"within timeout_s \(0.2 s\)") as caught:
                await client.complete(USER)
        assert client.counters["requests"] == 2 and client.counters["retries"] == 1
    assert caught.value.retryable and caught.value.status is None
    await until(lambda: len(stub.received) == 2)
    assert len(sleeps.waits) == 1


# -- settings --------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-env",
           "OPENAI_MODEL": "fallback", "AGENTMESH_MODEL": "preferred"}
    settings = OpenAISettings.from_env(env)
    assert (settings.base_url, settings.model, settings.api_key) == (
        "http://127.0.0.1:9/v1", "preferred", "sk-env")
    assert "sk-env" not in repr(settings)
    fallback = OpenAISettings.from_env({"OPENAI_MODEL": "fallback", "OPENAI_API_KEY": ""},
                                       timeout_s=3.0)
    assert fallback.base_url == "https://api.openai.com/v1"
    assert fallback.model == "fallback" and fallback.api_key is None
    assert fallback.timeout_s == 3.0
    assert OpenAISettings.from_env({}, model="given").model == "given"


def test_settings_from_the_environment_need_a_model() -> None:
    with pytest.raises(ConfigError, match="AGENTMESH_MODEL or OPENAI_MODEL"):
        OpenAISettings.from_env({"OPENAI_API_KEY": "sk"})
    with pytest.raises(ConfigError, match="unknown OpenAI setting"):
        OpenAISettings.from_env({}, model="m", temperature=0.2)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"base_url": "ftp://example.com"}, "base_url 'ftp://example.com'"),
    ({"base_url": "http://"}, "base_url"),
    ({"model": " "}, "model ' '"),
    ({"api_key": ""}, "api_key"),
    ({"timeout_s": 0}, r"timeout_s \(0\)"),
    ({"timeout_s": float("inf")}, "timeout_s"),
    ({"retries_max": -1}, r"retries_max \(-1\)"),
    ({"retries_max": True}, "retries_max"),
    ({"backoff_s": -0.1}, "backoff_s"),
    ({"backoff_s": 2.0, "backoff_max_s": 1.0}, r"backoff_max_s \(1.0\) must be >= backoff_s"),
    ({"reply_bytes_max": 1}, r"reply_bytes_max \(1\)"),
    ({"retry_statuses": frozenset({200})}, "retry_statuses"),
])
def test_bad_settings_are_config_errors(overrides: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    values.update(overrides)
    with pytest.raises(ConfigError, match=message):
        OpenAISettings(**values)


async def test_bad_requests_are_refused_before_sending(stub: ChatCompletionsStub) -> None:
    async with client_for(stub) as client:
        with pytest.raises(ConfigError, match="non-empty sequence"):
            await client.complete([])
        with pytest.raises(ConfigError, match=r"max_tokens \(0\)"):
            await client.complete(USER, max_tokens=0)
        body = client.request_body(USER, tools=[get_weather.spec()])
    assert json.loads(json.dumps(body)) == body
    assert stub.received == []


async def test_a_client_and_a_transport_together_are_refused() -> None:
    settings = OpenAISettings(base_url="http://127.0.0.1:1/v1", model="m")
    async with httpx.AsyncClient() as http:
        with pytest.raises(ConfigError, match="not both"):
            OpenAICompatibleClient(settings, http_client=http,
                                   transport=httpx.AsyncHTTPTransport())
