"""A client of the OpenAI Chat Completions API, and of servers that speak it.

How this works
--------------
``OpenAICompatibleClient(settings).complete(messages, tools=...)`` POSTs to
``{base_url}/chat/completions``::

    {"model": ..., "messages": [...],
     "tools": [{"type": "function", "function": {"name", "description", "parameters"}}],
     "max_tokens": ...}

(``tools`` and ``max_tokens`` only when given), with ``Authorization: Bearer
<key>`` when a key is set. Messages go in the API's shapes: an assistant turn
that called tools carries ``tool_calls: [{"id", "type": "function", "function":
{"name", "arguments": "<JSON text>"}}]`` and each result is a ``tool`` message
with ``tool_call_id``. From the answer it reads ``choices[0].message``
(``content`` may be null, ``tool_calls`` carry their arguments as JSON text),
``choices[0].finish_reason`` and ``usage``.

Failures: 429 and 500/502/503/504 (``OpenAISettings.retry_statuses``),
transport errors and timeouts are retried up to ``retries_max`` times, waiting
``backoff_s * 2**n`` seconds (at most ``backoff_max_s``) with random jitter, or
what a numeric ``Retry-After`` header asks, at most ``backoff_max_s``. Any other
status fails at once with a ``ModelError`` carrying the status and the API's
``error.message``. A 200 whose body is not a chat completion is a ``ModelError``
too, not retried: asking again would most likely get the same. Each attempt is
bounded by ``timeout_s`` as a whole (a server trickling bytes cannot hold it)
and its reply by ``reply_bytes_max``.

The jitter comes from an injectable ``random.Random`` and waiting from an
injectable ``sleep`` (``anyio.sleep`` by default), so tests neither wait nor
depend on chance.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType, TracebackType
from typing import Any

import anyio
import httpx

from agents.models.base import ChatMessage, ModelError, ModelReply, ToolCall, Usage
from mesh.errors import ConfigError

__all__ = [
    "COUNTERS",
    "DEFAULT_BASE_URL",
    "OpenAICompatibleClient",
    "OpenAISettings",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""Where ``OpenAISettings.from_env`` points without ``OPENAI_BASE_URL``."""
RETRIES_MAX_LIMIT = 100
"""Largest ``retries_max`` accepted."""
_ERROR_TEXT_CHARS_MAX = 500  # how much of an error body a ModelError quotes

COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "requests": "HTTP requests sent, retries included",
        "retries": "requests sent again after a retryable failure",
        "errors": "complete() calls that raised ModelError",
        "prompt_tokens": "prompt tokens the server reported",
        "completion_tokens": "completion tokens the server reported",
        "total_tokens": "total tokens the server reported",
    }
)
"""Every name in ``OpenAICompatibleClient.counters`` with what it counts."""


def _positive(name: str, value: object, *, zero_ok: bool = False) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok)):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{name} ({value!r}) must be a finite number {bound}")


@dataclass(frozen=True, slots=True)
class OpenAISettings:
    """Where and how to reach a Chat Completions server.

    ``base_url``: the API root, ``.../v1``; requests go to ``{base_url}/chat/completions``.
    ``model``: the model name sent with each request.
    ``api_key``: sent as a bearer token; None for servers that need none.
    ``timeout_s``: longest one attempt may take, connecting to the last byte.
    ``retries_max``: retries after the first attempt (0: never retry).
    ``backoff_s``: the wait before the first retry, doubled before each next one.
    ``backoff_max_s``: longest wait between attempts, ``Retry-After`` included.
    ``reply_bytes_max``: largest response body read; a bigger one fails.
    ``retry_statuses``: HTTP statuses worth retrying.
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    retries_max: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    reply_bytes_max: int = 4 * 1024 * 1024
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(
                ("http://", "https://")):
            raise ConfigError(f"base_url {self.base_url!r} must be an http:// or https:// URL")
        try:
            url = httpx.URL(self.base_url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ConfigError(f"base_url {self.base_url!r} is not a URL: {exc}") from exc
        if not url.host:
            raise ConfigError(f"base_url {self.base_url!r} has no host")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model {self.model!r} must be a non-empty name")
        if self.api_key is not None and (not isinstance(self.api_key, str)
                                         or not self.api_key.strip()):
            # The key itself stays out of the message: it is a secret.
            raise ConfigError("api_key must be a non-empty string or None")
        _positive("timeout_s", self.timeout_s)
        _positive("backoff_s", self.backoff_s, zero_ok=True)
        _positive("backoff_max_s", self.backoff_max_s, zero_ok=True)
        if self.backoff_max_s < self.backoff_s:
            raise ConfigError(f"backoff_max_s ({self.backoff_max_s!r}) must be >= backoff_s "
                              f"({self.backoff_s!r})")
        retries = self.retries_max
        if (isinstance(retries, bool) or not isinstance(retries, int)
                or not 0 <= retries <= RETRIES_MAX_LIMIT):
            raise ConfigError(f"retries_max ({retries!r}) must be an integer from 0 to "
                              f"{RETRIES_MAX_LIMIT}")
        limit = self.reply_bytes_max
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
            raise ConfigError(f"reply_bytes_max ({limit!r}) must be an integer >= 2")
        statuses = self.retry_statuses
        if not isinstance(statuses, frozenset) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599
                for s in statuses):
            raise ConfigError(f"retry_statuses ({statuses!r}) must be a frozenset of HTTP "
                              "error statuses (400-599)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /,
                 **overrides: Any) -> OpenAISettings:
        """Settings from ``OPENAI_BASE_URL`` (default ``DEFAULT_BASE_URL``),
        ``OPENAI_API_KEY`` and ``AGENTMESH_MODEL`` (else ``OPENAI_MODEL``).

        ``overrides`` (any field) win over the environment; ``environ`` replaces
        ``os.environ``. Empty variables count as unset. Raises ``ConfigError``
        when no model is named or a value is invalid.
        """
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown OpenAI setting(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {
            "base_url": env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            "api_key": env.get("OPENAI_API_KEY") or None,
            "model": env.get("AGENTMESH_MODEL") or env.get("OPENAI_MODEL") or None,
        }
        values.update(overrides)
        if values["model"] is None:
            raise ConfigError("no model named: set AGENTMESH_MODEL or OPENAI_MODEL, "
                              "or pass model=")
        return cls(**values)


def _message_json(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name,
                          "arguments": call.raw_arguments or json.dumps(call.arguments or {})}}
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"tool spec {spec!r} must be a mapping with a name "
                          "(see Tool.spec())")
    function: dict[str, Any] = {"name": spec["name"]}
    if spec.get("description"):
        function["description"] = spec["description"]
    function["parameters"] = spec.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _error_text(body: bytes) -> str:
    """The API's ``error.message``, else the start of the body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return _clip(message)
    return _clip(body.decode("utf-8", errors="replace").strip()) or "(empty body)"


def _clip(text: str) -> str:
    if len(text) > _ERROR_TEXT_CHARS_MAX:
        text = text[: _ERROR_TEXT_CHARS_MAX - 3] + "..."
    return text


def _retry_after(headers: httpx.Headers) -> float | None:
    """A numeric ``Retry-After`` in seconds; None when absent or a date."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class _Malformed(Exception):
    """The 200 body is not a chat completion."""


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise _Malformed(problem)


def _int_field(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key, 0)
    if value is None:
        return 0
    _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"usage.{key} {value!r} is not a count")
    return int(value)


def _parse_reply(body: bytes) -> ModelReply:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Malformed(f"body is not JSON ({exc})") from exc
    _expect(isinstance(data, dict), "body is not a JSON object")
    choices = data.get("choices")
    _expect(isinstance(choices, list) and len(choices) > 0, "no choices")
    choice = choices[0]
    _expect(isinstance(choice, dict), "choices[0] is not an object")
    message = choice.get("message")
    _expect(isinstance(message, dict), "choices[0].message is not an object")
    content = message.get("content")
    _expect(content is None or isinstance(content, str), "message.content is not text")
    raw_calls = message.get("tool_calls") or []
    _expect(isinstance(raw_calls, list), "message.tool_calls is not a list")
    calls = []
    for index, raw in enumerate(raw_calls):
        where = f"message.tool_calls[{index}]"
        _expect(isinstance(raw, dict), f"{where} is not an object")
        _expect(raw.get("type", "function") == "function", f"{where} is not a function call")
        function = raw.get("function")
        _expect(isinstance(function, dict), f"{where}.function is not an object")
        call_id, name, arguments = raw.get("id"), function.get("name"), function.get("arguments")
        _expect(isinstance(call_id, str) and bool(call_id), f"{where}.id is not text")
        _expect(isinstance(name, str), f"{where}.function.name is not text")
        _expect(isinstance(arguments, str), f"{where}.function.arguments is not text")
        calls.append(ToolCall.of(call_id, name, arguments))
    finish_reason = choice.get("finish_reason")
    _expect(finish_reason is None or isinstance(finish_reason, str),
            "choices[0].finish_reason is not text")
    usage_data = data.get("usage") or {}
    _expect(isinstance(usage_data, dict), "usage is not an object")
    prompt = _int_field(usage_data, "prompt_tokens")
    completion = _int_field(usage_data, "completion_tokens")
    total = _int_field(usage_data, "total_tokens") or prompt + completion
    return ModelReply(content=content, tool_calls=tuple(calls),
                      finish_reason=finish_reason or "",
                      usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                                  total_tokens=total))


class OpenAICompatibleClient:
    """A ``ModelClient`` over the Chat Completions API; see the module docstring.

    ``http_client``: an ``httpx.AsyncClient`` to use; it stays the caller's to
    close. ``transport``: a transport for a client this object makes and closes
    (tests). Give at most one. ``rng`` draws the backoff jitter; ``sleep`` waits
    between attempts.
    """

    def __init__(
        self,
        settings: OpenAISettings | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if http_client is not None and transport is not None:
            raise ConfigError("give an http_client or a transport, not both")
        self._settings = settings if settings is not None else OpenAISettings.from_env()
        if not isinstance(self._settings, OpenAISettings):
            raise ConfigError(f"settings must be OpenAISettings, not "
                              f"{type(self._settings).__name__}")
        self._owns_http = http_client is None
        # With a transport given (tests), proxy variables must not reroute requests.
        self._http = http_client if http_client is not None else httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(self._settings.timeout_s),
            trust_env=transport is None)
        self._url = self._settings.base_url.rstrip("/") + "/chat/completions"
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._counters = dict.fromkeys(COUNTERS, 0)

    @property
    def settings(self) -> OpenAISettings:
        """The settings in use."""
        return self._settings

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of what happened (see ``COUNTERS``), read-only."""
        return MappingProxyType(self._counters)

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> OpenAICompatibleClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def request_body(self, messages: Sequence[ChatMessage], *,
                     tools: Sequence[Mapping[str, Any]] = (),
                     max_tokens: int | None = None) -> dict[str, Any]:
        """The JSON body ``complete`` would POST."""
        if isinstance(messages, str | bytes) or not messages:
            raise ConfigError("messages must be a non-empty sequence of ChatMessage")
        bad = [m for m in messages if not isinstance(m, ChatMessage)]
        if bad:
            raise ConfigError(f"{bad[0]!r} is not a ChatMessage")
        body: dict[str, Any] = {"model": self._settings.model,
                                "messages": [_message_json(m) for m in messages]}
        if tools:
            body["tools"] = [_tool_json(spec) for spec in tools]
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise ConfigError(f"max_tokens ({max_tokens!r}) must be an integer >= 1")
            body["max_tokens"] = max_tokens
        return body

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> ModelReply:
        """Send ``messages`` and return the model's reply; raises ``ModelError``."""
        body = self.request_body(messages, tools=tools, max_tokens=max_tokens)
        try:
            reply = await self._with_retries(body)
        except ModelError:
            self._counters["errors"] += 1
            raise
        self._counters["prompt_tokens"] += reply.usage.prompt_tokens
        self._counters["completion_tokens"] += reply.usage.completion_tokens
        self._counters["total_tokens"] += reply.usage.total_tokens
        return reply

    async def _with_retries(self, body: dict[str, Any]) -> ModelReply:
        attempt = 0
        while True:
            try:
                return await self._attempt(body)
            except ModelError as exc:
                if not exc.retryable or attempt >= self._settings.retries_max:
                    raise
                delay = self._delay(attempt, exc.retry_after_s)
            attempt += 1
            self._counters["retries"] += 1
            await self._sleep(delay)

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        settings = self._settings
        if retry_after_s is not None:
            return min(retry_after_s, settings.backoff_max_s)
        ceiling = min(settings.backoff_max_s, settings.backoff_s * 2.0 ** attempt)
        # Half fixed, half random: clients that failed together spread out, yet
        # none retries almost at once.
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _attempt(self, body: dict[str, Any]) -> ModelReply:
        settings = self._settings
        headers = {"Accept": "application/json"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._counters["requests"] += 1
        try:
            with anyio.fail_after(settings.timeout_s):
                async with self._http.stream("POST", self._url, json=body,
                                             headers=headers) as response:
                    data = await self._read(response)
                    status, response_headers = response.status_code, response.headers
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ModelError(f"no reply from {self._url} within timeout_s "
                             f"({settings.timeout_s:g} s)", retryable=True) from exc
        except httpx.TransportError as exc:
            raise ModelError(f"cannot reach {self._url}: {type(exc).__name__}: {exc}",
                             retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ModelError(f"request to {self._url} failed: {type(exc).__name__}: "
                             f"{exc}") from exc
        if 200 <= status < 300:
            try:
                return _parse_reply(data)
            except _Malformed as exc:
                raise ModelError(f"malformed chat completion from {self._url}: {exc}",
                                 status=status) from exc
        retryable = status in settings.retry_statuses
        raise ModelError(f"{self._url} answered {status}: {_error_text(data)}", status=status,
                         retryable=retryable,
                         retry_after_s=_retry_after(response_headers) if retryable else None)

    async def _read(self, response: httpx.Response) -> bytes:
        limit = self._settings.reply_bytes_max
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ModelError(f"reply of {declared} bytes exceeds reply_bytes_max ({limit})",
                             status=response.status_code)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise ModelError(f"reply exceeds reply_bytes_max ({limit} bytes)",
                                 status=response.status_code)
            chunks.append(chunk)
        return b"".join(chunks)
