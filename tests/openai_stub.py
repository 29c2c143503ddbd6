"""A local Chat Completions server for tests, scripted one response at a time.

It speaks the request and response shapes of the OpenAI Chat Completions API as
published: it checks every request it gets against them (answering 400 with an
API error body when one does not fit, so a client bug shows up as a failure),
records it, and answers with the next scripted ``StubResponse``. A response may
hold the handler until ``release`` is set (to make a client time out), or drop
the connection without answering (a transport error).

``running_stub()`` starts it on 127.0.0.1, port 0, in a thread and always shuts
it down, releasing any held handler first.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_MAX_S = 30.0
"""Longest a held handler waits for ``release``; only hit if a test forgets it."""
_ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class StubResponse:
    """One scripted answer: a status, a JSON body (or raw bytes) and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False
    drop: bool = False


@dataclass(frozen=True)
class Received:
    """A request the stub got: path, headers (lower-case names) and its JSON body."""

    path: str
    headers: dict[str, str]
    body: Any


_ids = itertools.count(1)


def completion(content: str | None = None, *, tool_calls: Sequence[Mapping[str, Any]] = (),
               finish_reason: str | None = None, prompt_tokens: int = 10,
               completion_tokens: int = 5, model: str = "stub-model") -> StubResponse:
    """A 200 chat completion in the published shape."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    body = {
        "id": f"chatcmpl-stub{next(_ids)}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop"),
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return StubResponse(body=body)


def function_call(call_id: str, name: str, arguments: Mapping[str, Any] | str) -> dict[str, Any]:
    """A tool call as the API sends it: arguments are JSON text."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def api_error(status: int, message: str, *, type_: str = "invalid_request_error",
              code: str | None = None, headers: dict[str, str] | None = None) -> StubResponse:
    """An error response with the API's ``{"error": {...}}`` body."""
    return StubResponse(status=status, headers=dict(headers or {}),
                        body={"error": {"message": message, "type": type_, "param": None,
                                        "code": code}})


def request_problems(body: Any) -> list[str]:
    """Where ``body`` departs from a Chat Completions request; empty when it fits."""
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    problems = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model must be a non-empty string")
    known = {"model", "messages", "tools", "max_tokens"}
    problems += [f"unexpected key {key!r}" for key in sorted(set(body) - known)]
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*problems, "messages must be a non-empty array"]
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            problems.append(f"{where} has no valid role")
            continue
        role, content = message["role"], message.get("content")
        if role == "assistant":
            calls = message.get("tool_calls")
            if content is None and not calls:
                problems.append(f"{where}: assistant message needs content or tool_calls")
            for call in calls or []:
                function = call.get("function") if isinstance(call, dict) else None
                if (not isinstance(call, dict) or not isinstance(call.get("id"), str)
                        or call.get("type") != "function" or not isinstance(function, dict)
                        or not isinstance(function.get("name"), str)
                        or not isinstance(function.get("arguments"), str)):
                    problems.append(f"{where}: malformed tool call {call!r}")
        elif not isinstance(content, str):
            problems.append(f"{where}: {role} message needs string content")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            problems.append(f"{where}: tool message needs tool_call_id")
    if "tools" in body:
        tools = body["tools"]
        if not isinstance(tools, list) or not tools:
            problems.append("tools must be a non-empty array when present")
        for tool in tools if isinstance(tools, list) else []:
            function = tool.get("function") if isinstance(tool, dict) else None
            if (not isinstance(tool, dict) or tool.get("type") != "function"
                    or not isinstance(function, dict)
                    or not isinstance(function.get("name"), str)
                    or not isinstance(function.get("parameters", {}), dict)):
                problems.append(f"malformed tool {tool!r}")
    if "max_tokens" in body and (not isinstance(body["max_tokens"], int)
                                 or body["max_tokens"] < 1):
        problems.append("max_tokens must be a positive integer")
    return problems


class ChatCompletionsStub:
    """The server's state: scripted responses, what it received, the hold release."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: list[StubResponse] = []
        self._received: list[Received] = []
        self.release = threading.Event()
        """Set to let held handlers answer (the fixture sets it when done)."""
        self.base_url = ""

    def push(self, *responses: StubResponse) -> None:
        """Queue ``responses``, answered in order."""
        with self._lock:
            self._script.extend(responses)

    @property
    def received(self) -> list[Received]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._received)

    @property
    def unused(self) -> int:
        """Scripted responses not yet sent."""
        with self._lock:
            return len(self._script)

    def _next(self, received: Received) -> StubResponse:
        with self._lock:
            self._received.append(received)
            if self._script:
                return self._script.pop(0)
        return api_error(500, "the stub has no scripted response left", type_="server_error")


def _handler(stub: ChatCompletionsStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            headers = {name.lower(): value for name, value in self.headers.items()}
            response = stub._next(Received(self.path, headers, body))
            problems = request_problems(body)
            if self.path != "/v1/chat/completions":
                problems.insert(0, f"unknown path {self.path}")
            if problems:
                response = api_error(400, "; ".join(problems))
            if response.hold:
                stub.release.wait(HOLD_MAX_S)
            if response.drop:
                self.close_connection = True
                return
            payload = (response.body if isinstance(response.body, bytes)
                       else json.dumps(response.body).encode())
            try:
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                self.close_connection = True  # the client gave up already

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up on a held handler is expected here


@contextmanager
def running_stub() -> Iterator[ChatCompletionsStub]:
    """A started stub on 127.0.0.1; shut down on exit, even after a failure."""
    stub = ChatCompletionsStub()
    server = _Server(("127.0.0.1", 0), _handler(stub))
    port = server.server_address[1]
    stub.base_url = f"http://127.0.0.1:{port}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="openai-stub", daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
