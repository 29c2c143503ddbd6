"""Memory scopes, who may read and write them, and the errors memory raises.

How this works
--------------
A *scope* names one body of memory in the Raft KV store: ``"team/research"``
for what a team shares, ``"private/agent-a"`` for one agent's own. It is a path
of segments separated by ``/``; each segment starts with a letter and goes on
with letters, digits and ``_ . : @ -``. Keys put the scope first and then a
record name that starts with a digit (a zero-padded time), so in a prefix
listing of one scope the records of the scope come first and those of a nested
scope (``"team"`` and ``"team/research"``) only after them, where a reader
stops.

Who may do what is the caller's policy, given as an ``access`` callback: it is
asked ``access(actor, action)`` (``action`` is ``"read"`` or ``"write"``) before
a memory touches the store, and only ``True`` grants (anything else refuses,
so a callback that forgets to return fails closed). A refusal raises
``MemoryAccessError`` naming the actor, the action and the scope, and nothing
has been read or written. ``glob_access`` builds the usual policy from
``fnmatch``-style patterns over agent names. The check is advisory: it guards
well-behaved agents against mistakes, not a hostile process holding a KV
client, which could write the keys directly.

``KVLike`` is what the memories need of ``mesh.kv_client.KVClient``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, Protocol

from consensus.kvstore import Command, ErrorCode, Response
from mesh.errors import ConfigError, MeshError
from mesh.kv_messages import KVItem

__all__ = [
    "ACTOR_CHARS_MAX",
    "SCOPE_CHARS_MAX",
    "AccessCheck",
    "Action",
    "AgentMemoryError",
    "EmbedderMismatch",
    "KVLike",
    "MemoryAccessError",
    "MemoryInputError",
    "MemoryStoreError",
    "glob_access",
    "validate_scope",
]

SCOPE_CHARS_MAX = 128
"""Longest scope name; keys add a prefix and a record name, well below the
store's ``key_bytes_max`` (512 bytes)."""
ACTOR_CHARS_MAX = 128
"""Longest actor (agent) name, as ``agents.agent.AGENT_NAME_CHARS_MAX``."""
PATTERNS_MAX = 64
"""Most patterns ``glob_access`` takes per action."""

Action = Literal["read", "write"]
"""What an actor asks to do with a scope."""
AccessCheck = Callable[[str, Action], bool]
"""``access(actor, action)``: True grants, anything else refuses."""

_SEGMENT = r"[A-Za-z][A-Za-z0-9_.:@-]*"
_SCOPE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_ACTIONS = ("read", "write")


class AgentMemoryError(MeshError):
    """Root of the errors of agent memory (``MemoryError`` is Python's own)."""


class MemoryAccessError(AgentMemoryError):
    """The access policy refused an actor an action on a scope; nothing changed."""

    def __init__(self, actor: str, action: Action, scope: str) -> None:
        super().__init__(f"{actor!r} may not {action} memory scope {scope!r}")
        self.actor = actor
        self.action = action
        self.scope = scope


class MemoryInputError(AgentMemoryError):
    """A value given to a memory is invalid (wrong type, too long, not JSON...)."""


class EmbedderMismatch(MemoryInputError):
    """A scope's facts were embedded by another embedder (or with other dimensions)."""


class MemoryStoreError(AgentMemoryError):
    """The store refused a write, or holds a record this code cannot read."""


_Items = list[KVItem]  # ``list`` alone would name the method ``KVLike.list`` in the class


class KVLike(Protocol):
    """The part of ``mesh.kv_client.KVClient`` memory uses."""

    async def get(self, key: str) -> KVItem | None:
        """The item under ``key``, or None."""
        ...

    async def list(
        self, prefix: str = "", *, limit: int = 1000, start_after: str | None = None
    ) -> tuple[_Items, bool]:
        """Items under ``prefix`` in key order, and whether more follow."""
        ...

    async def write(self, command: Command) -> Response:
        """Apply one KV command."""
        ...


def validate_scope(scope: object) -> str:
    """``scope`` if it is a usable scope name; ``ConfigError`` naming it otherwise."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise ConfigError(
            f"memory scope {scope!r} must be segments separated by '/', each starting "
            "with a letter and going on with letters, digits or '_.:@-'")
    if len(scope) > SCOPE_CHARS_MAX:
        raise ConfigError(f"memory scope {scope[:40]!r}... has {len(scope)} characters, "
                          f"more than {SCOPE_CHARS_MAX}")
    return scope


def validate_actor(actor: object) -> str:
    """``actor`` if it is a usable actor name (the empty string included: anonymous);
    ``ConfigError`` otherwise."""
    if not isinstance(actor, str) or actor != actor.strip():
        raise ConfigError(f"actor {actor!r} must be a string without leading or "
                          "trailing spaces")
    if len(actor) > ACTOR_CHARS_MAX:
        raise ConfigError(f"actor {actor[:40]!r}... has {len(actor)} characters, "
                          f"more than {ACTOR_CHARS_MAX}")
    return actor


def check_access(access: AccessCheck | None, actor: str, action: Action, scope: str) -> None:
    """Raise ``MemoryAccessError`` unless ``access`` grants ``actor`` the ``action``
    (no policy grants everything)."""
    if access is not None and access(actor, action) is not True:
        raise MemoryAccessError(actor, action, scope)


def glob_access(
    read: Sequence[str], write: Sequence[str], actor: str | None = None
) -> AccessCheck:
    """A policy granting ``read`` to actors matching any pattern of ``read`` and
    ``write`` to those matching any of ``write`` (``fnmatch`` patterns, matched
    case-sensitively: ``"agent-*"``, ``"coordinator"``). Writing does not imply
    reading: list a writer in both when it should read too.

    With ``actor`` the policy is that one actor's: it grants nothing to any other
    name, so a memory handed the wrong actor is refused instead of trusted.

    Example: a team scope read by the agents and the coordinator, written by the
    coordinator: ``glob_access(["agent-*", "coordinator"], ["coordinator"])``; a
    private one: ``glob_access(["agent-a"], ["agent-a"])``.
    """
    patterns = {"read": _patterns(read, "read"), "write": _patterns(write, "write")}
    pinned = None if actor is None else validate_actor(actor)

    def check(name: str, action: Action) -> bool:
        if action not in _ACTIONS:
            return False
        if pinned is not None and name != pinned:
            return False
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns[action])

    return check


def _patterns(patterns: Sequence[str], action: str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        raise ConfigError(f"{action} patterns must be a list of patterns, not the "
                          f"string {patterns!r}")
    found = tuple(patterns)
    if len(found) > PATTERNS_MAX:
        raise ConfigError(f"{len(found)} {action} patterns, more than {PATTERNS_MAX}")
    for pattern in found:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConfigError(f"{action} pattern {pattern!r} must be a non-empty string")
        if len(pattern) > ACTOR_CHARS_MAX:
            raise ConfigError(f"{action} pattern {pattern[:40]!r}... has {len(pattern)} "
                              f"characters, more than {ACTOR_CHARS_MAX}")
    return found


# -- shared by the KV-backed memories ------------------------------------------------------

LIST_PAGE_BYTES = 512 * 1024
"""Value bytes one listing page may carry at most: a page travels in one envelope
(``envelope_size_bytes_max``, 1 MiB by default), so pages hold
``LIST_PAGE_BYTES // value_bytes_max`` items."""
CAS_ATTEMPTS_MAX = 32
"""Compare-and-set attempts of one write before giving up on a scope that keeps
changing under it (each failure means another writer succeeded)."""


def canonical_json(value: Any, what: str) -> bytes:
    """``value`` as canonical JSON bytes (sorted keys, no spaces, UTF-8);
    ``MemoryInputError`` naming ``what`` when it is not JSON (NaN included)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MemoryInputError(f"{what} is not JSON-able: {exc}") from None
    return text.encode()


def load_json(data: bytes, what: str) -> Any:
    """The JSON in ``data``; ``MemoryStoreError`` naming ``what`` for anything else."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise MemoryStoreError(f"{what} is not JSON: {exc}") from None


def check_int(name: str, value: object, low: int, high: int, *,
              error: type[MeshError] = ConfigError) -> int:
    """``value`` if it is an int from ``low`` to ``high``; ``error`` naming it otherwise
    (``ConfigError`` for settings, ``MemoryInputError`` for a call's arguments)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{name} ({value!r}) must be an integer from {low} to {high}")
    return value


async def scope_records(kv: KVLike, prefix: str, limit: int,
                        start_after: str | None = None) -> AsyncIterator[KVItem]:
    """The records under ``prefix`` oldest first, in pages of ``limit``, from after
    ``start_after``. Record names start with a digit and nested scopes' with a
    letter, so the first key that does not is the end of this scope's records."""
    while True:
        items, more = await kv.list(prefix, limit=limit, start_after=start_after)
        for item in items:
            if not item.key[len(prefix):len(prefix) + 1].isdigit():
                return
            yield item
        if not more or not items:
            return
        start_after = items[-1].key


async def oldest_keys(kv: KVLike, prefix: str, page_limit: int, n: int) -> list[str]:
    """Keys of the ``n`` oldest records under ``prefix`` (fewer if it holds fewer)."""
    keys: list[str] = []
    if n <= 0:
        return keys
    async for item in scope_records(kv, prefix, min(page_limit, n)):
        keys.append(item.key)
        if len(keys) >= n:
            break
    return keys


def refused(response: Response, what: str) -> MemoryStoreError:
    """The error for a write the store refused."""
    code = "refused" if response.error is None else response.error.value
    return MemoryStoreError(f"{what} was refused by the store: {code}: {response.detail}")


def cas_applied(response: Response, what: str) -> bool:
    """Whether a compare-and-set was applied: False when another writer won (read
    again and retry); any other refusal raises ``MemoryStoreError`` naming ``what``."""
    if response.ok:
        return True
    if response.error is not ErrorCode.CAS_FAILED:
        raise refused(response, what)
    return False
