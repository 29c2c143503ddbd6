"""Episodic memory: the past tasks of an agent or a team, kept in the Raft KV store.

How this works
--------------
An ``Episode`` is one finished task: who did it (``agent``), what
(``capability``, ``input``), how it went (``output``, ``outcome``), when
(``started``, ``finished``, seconds since the epoch), ``tags`` and a free
``text`` (a summary to search). ``EpisodicMemory(kv, scope)`` records and
queries the episodes of one scope (see ``agents.memory.scopes``). Keys (values
are canonical JSON)::

    mem/episodic/<scope>/<finished ms, 16 digits>-<episode id>   the episode
    mem/episodic-ids/<scope>/<episode id>                        its key (for get)
    mem/episodic-meta/<scope>                                    {"count": n}

The zero-padded time makes a prefix listing of the scope oldest-first, ties by
episode id. Every write of a scope is one ``CompareAndSetWithWrites`` on the
scope's meta key, carrying the episode, its id entry and the evictions as side
writes: the count, the records and the id entries never disagree, and two
writers of one scope are serialised by the compare (the loser reads again and
retries). An episode id is recorded once: recording it again with the same
content changes nothing (so a retry after an unknown outcome is safe), with
other content it is refused.

Bounds: at most ``episodes_max`` episodes per scope; a record beyond it deletes
the oldest (by ``finished``) in the same write, and an episode older than all
of a full scope is dropped at once (both counted in ``evicted``). One episode's
canonical JSON may take ``value_bytes_max`` bytes; more is refused with
``MemoryInputError`` saying how much.

Cost: ``record`` and ``get`` read and write a few keys. ``query`` returns the
newest matches first but the store lists keys oldest-first only, so it reads
every episode of the scope between ``since`` and ``until`` (the whole scope
without them): O(episodes in range), at most ``episodes_max`` values, in pages
that fit one envelope. Pass ``since`` to keep it small.

Because the episodes live in Raft, they survive the restart of any node (and
of the agent that wrote them), and every node reads the same ones. Access is
checked before anything is read or written (``access``, ``actor``).
"""

from __future__ import annotations

import math
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from agents.agent import AGENT_NAME_CHARS_MAX
from agents.contract_net.messages import CAPABILITY_CHARS_MAX
from agents.memory.scopes import (
    CAS_ATTEMPTS_MAX,
    LIST_PAGE_BYTES,
    AccessCheck,
    KVLike,
    MemoryInputError,
    MemoryStoreError,
    canonical_json,
    cas_applied,
    check_access,
    check_int,
    load_json,
    oldest_keys,
    scope_records,
    validate_actor,
    validate_scope,
)
from consensus.kvstore import CompareAndSetWithWrites
from consensus.kvstore.commands import SIDE_WRITES_MAX
from mesh.errors import ConfigError
from mesh.kv_messages import KVItem

__all__ = [
    "EPISODE_ID_CHARS_MAX",
    "EPISODIC_IDS_PREFIX",
    "EPISODIC_META_PREFIX",
    "EPISODIC_PREFIX",
    "QUERY_LIMIT_MAX",
    "TAGS_MAX",
    "TAG_CHARS_MAX",
    "Episode",
    "EpisodicMemory",
    "Outcome",
    "new_episode_id",
]

EPISODIC_PREFIX = "mem/episodic/"
EPISODIC_IDS_PREFIX = "mem/episodic-ids/"
EPISODIC_META_PREFIX = "mem/episodic-meta/"
EPISODE_ID_CHARS_MAX = 64
"""Longest episode id (letters, digits and ``_ . : -``, starting with a letter or digit)."""
TAGS_MAX = 32
"""Most tags of one episode."""
TAG_CHARS_MAX = 64
"""Longest tag."""
QUERY_LIMIT_MAX = 1_000
"""Most episodes one query returns."""
EPISODES_MAX_LIMIT = 100_000
"""Largest ``episodes_max`` (a query may read that many values)."""
VALUE_BYTES_LIMIT = 256 * 1024
"""Largest ``value_bytes_max``: the store's default ``kv_value_bytes_max``."""
TIME_S_MAX = 10**13 - 1
"""Latest time an episode may name: its milliseconds fill the key's 16 digits."""

Outcome = Literal["done", "failed"]
_OUTCOMES = ("done", "failed")
_EPISODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_MS_DIGITS = 16
# A record name is "<16 digits>-<id>": the id starts after the dash.
_ID_AT = _MS_DIGITS + 1
# A record's side writes: itself and its id entry; each eviction deletes two keys.
_EVICTIONS_WITH_RECORD = (SIDE_WRITES_MAX - 2) // 2
_EVICTIONS_ALONE = SIDE_WRITES_MAX // 2


def new_episode_id() -> str:
    """A fresh random episode id."""
    return uuid.uuid4().hex[:20]


@dataclass(frozen=True, slots=True)
class Episode:
    """One finished task, as recorded in episodic memory.

    ``input`` and ``output`` are any JSON values; ``scope`` may be left empty and
    is then filled in by ``EpisodicMemory.record``. ``tags`` is kept as a tuple.
    """

    episode_id: str
    scope: str
    agent: str
    capability: str
    input: Any
    output: Any
    outcome: Outcome
    started: float
    finished: float
    tags: Sequence[str] = ()
    text: str = ""

    def __post_init__(self) -> None:
        # Frozen, so a list given by the caller cannot change the episode later.
        if isinstance(self.tags, str) or not isinstance(self.tags, Sequence):
            raise MemoryInputError(f"tags must be a list of strings, got {self.tags!r}")
        object.__setattr__(self, "tags", tuple(self.tags))

    def to_json(self) -> dict[str, Any]:
        """The stored JSON form."""
        return {"id": self.episode_id, "scope": self.scope, "agent": self.agent,
                "capability": self.capability, "input": self.input, "output": self.output,
                "outcome": self.outcome, "started": self.started, "finished": self.finished,
                "tags": list(self.tags), "text": self.text}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Episode:
        """Back from ``to_json``; ``MemoryStoreError`` for anything else."""
        try:
            outcome = data["outcome"]
            if outcome not in _OUTCOMES:
                raise ValueError(f"outcome {outcome!r}")
            return Episode(str(data["id"]), str(data["scope"]), str(data["agent"]),
                           str(data["capability"]), data.get("input"), data.get("output"),
                           outcome, float(data["started"]), float(data["finished"]),
                           [str(tag) for tag in data.get("tags") or ()],
                           str(data.get("text", "")))
        except (KeyError, TypeError, ValueError, MemoryInputError) as exc:
            raise MemoryStoreError(f"malformed episode record: {exc}") from None


class EpisodicMemory:
    """Records and queries the episodes of one scope (see the module doc)."""

    def __init__(
        self,
        kv: KVLike,
        scope: str,
        *,
        access: AccessCheck | None = None,
        actor: str = "",
        episodes_max: int = 1_000,
        value_bytes_max: int = 32 * 1024,
    ) -> None:
        """``kv``: a ``KVClient`` (or alike); ``access(actor, action)``: the scope's
        policy (None grants all); ``episodes_max``: episodes kept in the scope;
        ``value_bytes_max``: largest episode, as canonical JSON bytes."""
        self.kv = kv
        self._scope = validate_scope(scope)
        if access is not None and not callable(access):
            raise ConfigError(f"access ({access!r}) must be callable or None")
        self._access = access
        self._actor = validate_actor(actor)
        self._episodes_max = check_int("episodes_max", episodes_max, 1, EPISODES_MAX_LIMIT)
        self._value_bytes_max = check_int("value_bytes_max", value_bytes_max, 1024,
                                          VALUE_BYTES_LIMIT)
        self._page = max(1, LIST_PAGE_BYTES // self._value_bytes_max)
        self._records = f"{EPISODIC_PREFIX}{self._scope}/"
        self._ids = f"{EPISODIC_IDS_PREFIX}{self._scope}/"
        self._meta = f"{EPISODIC_META_PREFIX}{self._scope}"
        #: Episodes this object deleted (or dropped at once) to keep ``episodes_max``.
        self.evicted = 0

    @property
    def scope(self) -> str:
        """The scope this memory reads and writes."""
        return self._scope

    @property
    def actor(self) -> str:
        """Who the access policy is asked about."""
        return self._actor

    @property
    def episodes_max(self) -> int:
        """Episodes kept in the scope."""
        return self._episodes_max

    @property
    def value_bytes_max(self) -> int:
        """Largest episode, as canonical JSON bytes."""
        return self._value_bytes_max

    # -- writing ---------------------------------------------------------------------

    async def record(self, episode: Episode) -> Episode:
        """Keep ``episode`` in the scope (its ``scope`` empty or this one); the episode
        as stored. Deletes the oldest beyond ``episodes_max`` in the same write.

        ``MemoryAccessError`` when the actor may not write; ``MemoryInputError`` for an
        invalid or too large episode, or an id recorded with other content;
        ``MemoryStoreError`` when the store refuses. Nothing changes on any of them.
        """
        check_access(self._access, self._actor, "write", self._scope)
        if not isinstance(episode, Episode):
            raise MemoryInputError(f"expected an Episode, got {type(episode).__name__}")
        if episode.scope == "":
            episode = replace(episode, scope=self._scope)
        _check_episode(episode, self._scope)
        value = canonical_json(episode.to_json(), f"episode {episode.episode_id}")
        if len(value) > self._value_bytes_max:
            raise MemoryInputError(
                f"episode {episode.episode_id} takes {len(value)} bytes as JSON, more than "
                f"value_bytes_max ({self._value_bytes_max}): shorten its input, output or "
                "text")
        key = self._key(episode)
        id_key = self._ids + episode.episode_id
        failures = 0
        while failures < CAS_ATTEMPTS_MAX:
            count, meta_version = await self._read_meta()
            known = await self.kv.get(id_key)
            if known is not None:
                stored = await self.kv.get(_text(known))
                if stored is not None and stored.value == value:
                    return episode
                if stored is not None:
                    raise MemoryInputError(
                        f"episode id {episode.episode_id} is already recorded in scope "
                        f"{self._scope!r} with other content")
                # A stale id entry (its record is gone): this write replaces it.
            excess = count + 1 - self._episodes_max
            if excess > _EVICTIONS_WITH_RECORD:
                # Far over (episodes_max was lowered): shrink in writes of their own
                # first, then record.
                if not await self._evict(count, meta_version,
                                         excess - _EVICTIONS_WITH_RECORD):
                    failures += 1
                continue
            oldest = await self._oldest(excess) if excess > 0 else []
            if len(oldest) < excess:
                # The count says more than the scope holds (a key removed behind this
                # class's back): what the listing found is all there is.
                count = len(oldest)
                excess = count + 1 - self._episodes_max
            if excess > 0 and key < oldest[excess - 1]:
                # Older than everything kept in a full scope: it would go first.
                self.evicted += 1
                return episode
            # ``key`` is among them only if its id entry was lost: it is written anyway.
            doomed = [old for old in oldest[:max(0, excess)] if old != key]
            writes: list[tuple[str, bytes | None]] = [(key, value), (id_key, key.encode())]
            for old in doomed:
                writes += [(old, None), (self._id_key_of(old), None)]
            new_count = count + 1 - len(doomed)
            response = await self.kv.write(CompareAndSetWithWrites(
                self._meta, canonical_json({"count": new_count}, "meta"), meta_version, None,
                tuple(writes)))
            if cas_applied(response, f"episode {episode.episode_id}"):
                self.evicted += len(doomed)
                return episode
            failures += 1
        raise MemoryStoreError(f"scope {self._scope!r} kept changing while episode "
                               f"{episode.episode_id} was recorded")

    async def _evict(self, count: int, meta_version: int, wanted: int) -> bool:
        """Delete up to ``wanted`` oldest episodes in one write; False if the scope
        changed meanwhile (nothing deleted: the caller reads again)."""
        asked = min(wanted, _EVICTIONS_ALONE)
        doomed = await self._oldest(asked)
        # Fewer than asked means the listing saw the whole scope: none remain.
        remaining = count - len(doomed) if len(doomed) == asked else 0
        writes: list[tuple[str, bytes | None]] = []
        for old in doomed:
            writes += [(old, None), (self._id_key_of(old), None)]
        response = await self.kv.write(CompareAndSetWithWrites(
            self._meta, canonical_json({"count": remaining}, "meta"), meta_version, None,
            tuple(writes)))
        if not cas_applied(response, f"eviction from scope {self._scope!r}"):
            return False
        self.evicted += len(doomed)
        return True

    # -- reading ---------------------------------------------------------------------

    async def get(self, episode_id: str) -> Episode | None:
        """The episode, or None if this scope holds none of that id."""
        check_access(self._access, self._actor, "read", self._scope)
        _check_episode_id(episode_id)
        known = await self.kv.get(self._ids + episode_id)
        if known is None:
            return None
        item = await self.kv.get(_text(known))
        if item is None:
            return None  # evicted between the two reads
        return Episode.from_json(load_json(item.value, item.key))

    async def count(self) -> int:
        """Episodes in the scope now."""
        check_access(self._access, self._actor, "read", self._scope)
        count, _ = await self._read_meta()
        return count

    async def query(
        self,
        *,
        agent: str | None = None,
        capability: str | None = None,
        outcome: Outcome | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        limit: int = 20,
    ) -> list[Episode]:
        """The newest ``limit`` episodes matching every filter given, newest first
        (by ``finished``, ties by id, the later id first).

        ``since``/``until`` bound ``finished`` (inclusive, seconds); ``text`` is a
        case-insensitive substring of the episode's text; ``tag`` one of its tags.
        Reads the scope's episodes in the time range (see the module doc).
        """
        check_access(self._access, self._actor, "read", self._scope)
        check_int("limit", limit, 1, QUERY_LIMIT_MAX, error=MemoryInputError)
        if outcome is not None and outcome not in _OUTCOMES:
            raise MemoryInputError(f"outcome {outcome!r} must be one of {list(_OUTCOMES)}")
        for name, value in (("agent", agent), ("capability", capability), ("tag", tag),
                            ("text", text)):
            if value is not None and not isinstance(value, str):
                raise MemoryInputError(f"{name} {value!r} must be a string or None")
        low = None if since is None else _check_time("since", since)
        high = None if until is None else _check_time("until", until)
        if low is not None and high is not None and low > high:
            return []
        needle = None if text is None else text.casefold()
        start_after = None if low is None else f"{self._records}{_ms(low):0{_MS_DIGITS}d}"
        stop_ms = None if high is None else _ms(high)
        found: deque[Episode] = deque(maxlen=limit)
        async for item in self._scan(start_after):
            if stop_ms is not None and int(item.key[len(self._records):][:_MS_DIGITS]) > stop_ms:
                break
            episode = Episode.from_json(load_json(item.value, item.key))
            if ((agent is not None and episode.agent != agent)
                    or (capability is not None and episode.capability != capability)
                    or (outcome is not None and episode.outcome != outcome)
                    or (tag is not None and tag not in episode.tags)
                    or (low is not None and episode.finished < low)
                    or (high is not None and episode.finished > high)
                    or (needle is not None and needle not in episode.text.casefold())):
                continue
            found.append(episode)
        found.reverse()
        return list(found)

    # -- helpers ---------------------------------------------------------------------

    def _key(self, episode: Episode) -> str:
        return f"{self._records}{_ms(episode.finished):0{_MS_DIGITS}d}-{episode.episode_id}"

    def _id_key_of(self, record_key: str) -> str:
        return self._ids + record_key[len(self._records) + _ID_AT:]

    async def _read_meta(self) -> tuple[int, int]:
        """The scope's episode count and its meta key's version (0: absent, and the
        count is then found by listing, in case the key was lost)."""
        item = await self.kv.get(self._meta)
        if item is None:
            return sum([1 async for _ in self._scan(None)]), 0
        data = load_json(item.value, item.key)
        count = data.get("count") if isinstance(data, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise MemoryStoreError(f"{item.key} holds no count: {data!r}")
        return count, item.version

    async def _oldest(self, n: int) -> list[str]:
        """Keys of the ``n`` oldest episodes (fewer if the scope holds fewer)."""
        return await oldest_keys(self.kv, self._records, self._page, n)

    def _scan(self, start_after: str | None) -> AsyncIterator[KVItem]:
        """The scope's episodes oldest first, from after ``start_after``."""
        return scope_records(self.kv, self._records, self._page, start_after)


def _text(item: KVItem) -> str:
    try:
        return item.value.decode()
    except UnicodeDecodeError:
        raise MemoryStoreError(f"{item.key} holds no key: {item.value[:40]!r}") from None


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


def _check_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MemoryInputError(f"{name} ({value!r}) must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= TIME_S_MAX:
        raise MemoryInputError(f"{name} ({value!r}) must be a time from 0 to {TIME_S_MAX} s")
    return seconds


def _check_episode_id(episode_id: object) -> str:
    if (not isinstance(episode_id, str) or len(episode_id) > EPISODE_ID_CHARS_MAX
            or not _EPISODE_ID.fullmatch(episode_id)):
        raise MemoryInputError(
            f"episode id {episode_id!r} must be 1 to {EPISODE_ID_CHARS_MAX} letters, digits "
            "or '_.:-', starting with a letter or digit")
    return episode_id


def _check_name(what: str, value: object, chars_max: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise MemoryInputError(f"{what} {value!r} must be a non-empty string")
    if len(value) > chars_max:
        raise MemoryInputError(f"{what} {value[:40]!r}... has {len(value)} characters, "
                               f"more than {chars_max}")


def _check_episode(episode: Episode, scope: str) -> None:
    _check_episode_id(episode.episode_id)
    if episode.scope != scope:
        raise MemoryInputError(f"episode {episode.episode_id} names scope {episode.scope!r}, "
                               f"not {scope!r}")
    _check_name("agent", episode.agent, AGENT_NAME_CHARS_MAX)
    _check_name("capability", episode.capability, CAPABILITY_CHARS_MAX)
    if episode.outcome not in _OUTCOMES:
        raise MemoryInputError(f"outcome {episode.outcome!r} must be one of {list(_OUTCOMES)}")
    started = _check_time("started", episode.started)
    finished = _check_time("finished", episode.finished)
    if started > finished:
        raise MemoryInputError(f"episode {episode.episode_id} finished ({finished}) before it "
                               f"started ({started})")
    if len(episode.tags) > TAGS_MAX:
        raise MemoryInputError(f"{len(episode.tags)} tags, more than {TAGS_MAX}")
    for tag in episode.tags:
        _check_name("tag", tag, TAG_CHARS_MAX)
    if not isinstance(episode.text, str):
        raise MemoryInputError(f"text must be a string, got {type(episode.text).__name__}")
