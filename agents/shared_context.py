"""Shared context between agents: data with read and write permissions, in gossip or Raft.

How this works
--------------
A context has an id, a scope, data (a JSON object), and permissions: glob
patterns over agent names that may read it and that may write it (``read =
["agent-*"]``, ``write = ["coordinator"]``). ``SharedContexts(kv, gossip,
actor)`` is one agent's handle; every call checks ``actor`` against the
context's permissions first and refuses with ``ContextPermissionError`` (naming
the agent, the action, the context and who may) without changing anything.

Two tiers, chosen when the context is created:

- ``critical=True``: the whole context is one record in the Raft store
  (``ctx/<scope>/<id>``). Reads are linearizable; every write is a
  compare-and-set on the version read, so of two concurrent writers one wins
  and the other gets ``ContextConflict`` (or, through ``update``, reads again,
  recomputes and retries: no update is lost).
- otherwise it lives in gossip: the permissions and metadata under
  ``ctx/<scope>/<id>`` and each field of the data under
  ``ctxf/<scope>/<id>/<field>``, so concurrent writes of different fields
  all survive, and concurrent writes of one field resolve last-writer-wins by
  the gossip clock (eventual: use the critical tier when that is not enough).

``subscribe`` yields the context each time it changes: pushed by gossip for the
eventual tier, polled (``poll_s``) for the critical one.

Permissions bind agents that use this API; a node holding raw store access is
trusted, as every node with a certificate of the mesh is.
"""

from __future__ import annotations

import fnmatch
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from consensus.kvstore import ErrorCode
from mesh.errors import ConfigError, MeshError

__all__ = [
    "ContextConflict",
    "ContextError",
    "ContextPermissionError",
    "ContextSettings",
    "ContextState",
    "SharedContexts",
    "may",
]

CRITICAL_PREFIX = "ctx/"
GOSSIP_META_PREFIX = "ctx/"
GOSSIP_FIELD_PREFIX = "ctxf/"
_NAME_CHARS_MAX = 128


class ContextError(MeshError):
    """A context operation that cannot be done (unknown context, bad name...)."""


class ContextPermissionError(ContextError):
    """The acting agent may not read or write this context."""


class ContextConflict(ContextError):
    """A critical context changed since it was read (compare-and-set lost)."""

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


@dataclass(frozen=True, slots=True)
class ContextSettings:
    """Limits and timings of shared contexts."""

    data_bytes_max: int = 128 * 1024
    """Largest JSON form of a context's data."""
    fields_max: int = 256
    """Most fields of one context's data."""
    update_attempts_max: int = 16
    """Read-compute-write rounds ``update`` tries before giving up."""
    backoff_s: float = 0.01
    """Wait before the second ``update`` round; doubled each round, jittered."""
    backoff_max_s: float = 1.0
    """Longest wait between ``update`` rounds."""
    poll_s: float = 0.2
    """How often ``subscribe`` reads a critical context."""

    def __post_init__(self) -> None:
        for name in ("data_bytes_max", "fields_max", "update_attempts_max"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 100_000_000:
                raise ConfigError(f"context {name} ({value!r}) must be a positive integer")
        for name in ("backoff_s", "backoff_max_s", "poll_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not (
                    0 < value <= 60):
                raise ConfigError(f"context {name} ({value!r}) must be more than 0 and at "
                                  "most 60 seconds")


@dataclass(frozen=True, slots=True)
class ContextState:
    """A context as read: its data, permissions and who changed it last."""

    context_id: str
    scope: str
    data: dict[str, Any]
    read: tuple[str, ...]
    write: tuple[str, ...]
    critical: bool
    version: int
    updated_by: str
    updated_at: float
    history: tuple[dict[str, Any], ...] = field(default=())


def may(patterns: Sequence[str], agent: str) -> bool:
    """Whether ``agent`` matches one of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(agent, pattern) for pattern in patterns)


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _NAME_CHARS_MAX or "/" in value:
        raise ContextError(f"{what} {value!r} must be 1 to {_NAME_CHARS_MAX} characters "
                           "without '/'")
    return value


class SharedContexts:
    """One agent's view of the shared contexts (see the module docstring); ``gossip``
    may be None for a standalone client, which then reaches critical contexts only."""

    def __init__(self, kv: Any, gossip: Any, actor: str, *,
                 settings: ContextSettings | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.gossip = gossip
        self.actor = actor
        self.settings = settings or ContextSettings()
        self._rng = rng or random.Random()
        self._clock = clock
        self.counters = {"refused_read": 0, "refused_write": 0, "conflicts": 0, "retries": 0}

    # -- create and read -------------------------------------------------------------

    async def create(self, context_id: str, scope: str, *, data: Mapping[str, Any] | None = None,
                     read: Sequence[str] = ("*",), write: Sequence[str] = ("*",),
                     critical: bool = False) -> ContextState:
        """A new context (``ContextError`` if one exists under that id and scope)."""
        _check_name(context_id, "context id")
        _check_name(scope, "scope")
        body = self._checked_data(dict(data or {}))
        state = ContextState(context_id, scope, body, tuple(read), tuple(write), critical, 1,
                             self.actor, self._clock())
        if critical:
            response = await self.kv.compare_and_set(_key(scope, context_id),
                                                     _encode(state), 0)
            if not response.ok:
                raise ContextError(f"context {scope}/{context_id} exists already")
            return state
        meta_key = _key(scope, context_id)
        if self.gossip is None:
            raise ContextError("an eventual (gossip) context needs a node's gossip; this "
                               "handle has none (a standalone client): use critical=True")
        if self.gossip.get(meta_key) is not None:
            raise ContextError(f"context {scope}/{context_id} exists already")
        self.gossip.set(meta_key, {"read": list(read), "write": list(write), "critical": False,
                                   "created_by": self.actor})
        for name, value in body.items():
            self.gossip.set(_field_key(scope, context_id, name), _field(value, self.actor,
                                                                          self._clock()))
        return state

    async def get(self, context_id: str, scope: str) -> ContextState:
        """The context, if ``actor`` may read it."""
        state = await self._load(context_id, scope)
        if not may(state.read, self.actor):
            self.counters["refused_read"] += 1
            raise ContextPermissionError(
                f"agent {self.actor!r} may not read context {scope}/{context_id} "
                f"(read: {', '.join(state.read)})")
        return state

    async def _load(self, context_id: str, scope: str) -> ContextState:
        key = _key(scope, context_id)
        meta = self.gossip.get(key) if self.gossip is not None else None
        if not isinstance(meta, Mapping):
            item = await self.kv.get(key)
            if item is None:
                raise ContextError(f"no context {scope}/{context_id}")
            return _decode(item.value, item.version)
        data: dict[str, Any] = {}
        updated_by, updated_at, version = "", 0.0, 0
        for field_key, value in self.gossip.items(_field_key(scope, context_id, "")):
            if isinstance(value, Mapping) and "value" in value:
                data[field_key.rsplit("/", 1)[1]] = value["value"]
                version += 1
                if float(value.get("at", 0.0)) >= updated_at:
                    updated_at = float(value.get("at", 0.0))
                    updated_by = str(value.get("by", ""))
        return ContextState(context_id, scope, data, tuple(meta.get("read", ("*",))),
                            tuple(meta.get("write", ("*",))), False, version, updated_by,
                            updated_at)

    # -- write -----------------------------------------------------------------------

    async def write(self, context_id: str, scope: str, changes: Mapping[str, Any], *,
                    expect_version: int | None = None) -> ContextState:
        """Set fields of the context's data (a value None deletes a field).

        Critical contexts: a compare-and-set on ``expect_version`` (default: the
        version just read); ``ContextConflict`` when it changed meanwhile.
        """
        state = await self._load(context_id, scope)
        self._check_write(state)
        if not state.critical:
            for name, value in changes.items():
                _check_name(name, "field")
                key = _field_key(scope, context_id, name)
                if value is None:
                    self.gossip.delete(key)
                else:
                    self.gossip.set(key, _field(value, self.actor, self._clock()))
            return await self._load(context_id, scope)
        data = {**state.data, **changes}
        data = {name: value for name, value in data.items() if value is not None}
        expected = state.version if expect_version is None else expect_version
        new = ContextState(context_id, scope, self._checked_data(data), state.read, state.write,
                           True, expected + 1, self.actor, self._clock(),
                           (*state.history[-7:], {"by": self.actor, "version": expected + 1,
                                                   "fields": sorted(changes)}))
        response = await self.kv.compare_and_set(_key(scope, context_id), _encode(new),
                                                 expected)
        if response.ok:
            return ContextState(**{**_fields_of(new), "version": int(response.version)})
        if response.error is ErrorCode.CAS_FAILED:
            self.counters["conflicts"] += 1
            raise ContextConflict(f"context {scope}/{context_id} is at version "
                                  f"{response.version}, not {expected}",
                                  int(response.version))
        raise ContextError(f"context {scope}/{context_id} not written: "
                           f"{response.error.value}: {response.detail}")

    async def update(self, context_id: str, scope: str,
                     compute: Callable[[dict[str, Any]], Mapping[str, Any]]) -> ContextState:
        """Optimistic concurrency: read, ``compute`` the changes from the data, write
        if nothing changed meanwhile, else read again and retry (jittered backoff),
        at most ``update_attempts_max`` times. No concurrent update is lost."""
        settings = self.settings
        wait = settings.backoff_s
        for attempt in range(settings.update_attempts_max):
            state = await self._load(context_id, scope)
            self._check_write(state)
            changes = compute(dict(state.data))
            try:
                return await self.write(context_id, scope, changes,
                                        expect_version=state.version if state.critical else None)
            except ContextConflict:
                if attempt + 1 == settings.update_attempts_max:
                    break
                self.counters["retries"] += 1
                await anyio.sleep(self._rng.uniform(wait / 2, wait))
                wait = min(settings.backoff_max_s, wait * 2)
        raise ContextConflict(f"context {scope}/{context_id}: {settings.update_attempts_max} "
                              "attempts all lost to concurrent writers", -1)

    def _check_write(self, state: ContextState) -> None:
        if not may(state.write, self.actor):
            self.counters["refused_write"] += 1
            raise ContextPermissionError(
                f"agent {self.actor!r} may not write context {state.scope}/{state.context_id} "
                f"(write: {', '.join(state.write)}); nothing was changed")

    def _checked_data(self, data: dict[str, Any]) -> dict[str, Any]:
        if len(data) > self.settings.fields_max:
            raise ContextError(f"{len(data)} fields, more than fields_max "
                               f"({self.settings.fields_max})")
        try:
            size = len(json.dumps(data, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ContextError(f"context data is not JSON: {exc}") from None
        if size > self.settings.data_bytes_max:
            raise ContextError(f"context data of {size} bytes exceeds data_bytes_max "
                               f"({self.settings.data_bytes_max})")
        return data

    # -- watch -----------------------------------------------------------------------

    async def subscribe(self, context_id: str, scope: str) -> AsyncIterator[ContextState]:
        """The context now and after each change (while the caller iterates)."""
        state = await self.get(context_id, scope)
        yield state
        if state.critical:
            seen = state.version
            while True:
                await anyio.sleep(self.settings.poll_s)
                state = await self.get(context_id, scope)
                if state.version != seen:
                    seen = state.version
                    yield state
        else:
            async with self.gossip.subscribe(_field_key(scope, context_id, "")) as changes:
                async for _ in changes:
                    yield await self.get(context_id, scope)


def _key(scope: str, context_id: str) -> str:
    return f"{CRITICAL_PREFIX}{scope}/{context_id}"


def _field_key(scope: str, context_id: str, name: str) -> str:
    return f"{GOSSIP_FIELD_PREFIX}{scope}/{context_id}/{name}"


def _field(value: Any, by: str, at: float) -> dict[str, Any]:
    return {"value": value, "by": by, "at": at}


def _fields_of(state: ContextState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in ContextState.__dataclass_fields__}


def _encode(state: ContextState) -> bytes:
    body = _fields_of(state)
    body["read"], body["write"] = list(state.read), list(state.write)
    body["history"] = list(state.history)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _decode(data: bytes, version: int) -> ContextState:
    try:
        body = json.loads(data)
        return ContextState(str(body["context_id"]), str(body["scope"]), dict(body["data"]),
                            tuple(body["read"]), tuple(body["write"]), bool(body["critical"]),
                            version, str(body["updated_by"]), float(body["updated_at"]),
                            tuple(body.get("history", ())))
    except (ValueError, KeyError, TypeError) as exc:
        raise ContextError(f"malformed context record: {exc}") from None

