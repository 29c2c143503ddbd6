"""Episodic memory on a real KV state machine: records, queries, bounds, scopes, access."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from agents.memory import (
    Episode,
    EpisodicMemory,
    MemoryAccessError,
    MemoryInputError,
    MemoryStoreError,
    glob_access,
)
from agents.memory.episodic import EPISODIC_META_PREFIX
from consensus.kvstore import Command, KVSettings, KVStore
from memory_kv import MemoryKV
from mesh.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(test)


def episode(number: int, *, scope: str = "", agent: str = "agent-a", capability: str = "search",
            outcome: str = "done", tags: tuple[str, ...] = (), text: str = "",
            finished: float | None = None, output: Any = None) -> Episode:
    end = T0 + number if finished is None else finished
    return Episode(f"ep-{number}", scope, agent, capability, {"n": number},
                   {"found": number} if output is None else output, outcome,  # type: ignore[arg-type]
                   end - 0.5, end, tags, text or f"episode number {number}")


def test_an_episode_is_kept_as_canonical_json_under_a_time_ordered_key() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team/research")
        stored = await memory.record(episode(1, tags=("web",)))
        assert stored.scope == "team/research" and stored.tags == ("web",)
        assert await memory.get("ep-1") == stored
        assert await memory.get("ep-2") is None
        key = f"mem/episodic/team/research/{int((T0 + 1) * 1000):016d}-ep-1"
        item = kv.store.get(key)
        assert item is not None
        assert item.value == json.dumps(stored.to_json(), sort_keys=True,
                                        separators=(",", ":")).encode()
        assert Episode.from_json(json.loads(item.value)) == stored
        assert await memory.count() == 1

    run(main)


def test_query_is_newest_first_whatever_the_recording_order() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team")
        for number in (5, 1, 9, 3, 7, 2):
            await memory.record(episode(number))
        found = await memory.query()
        assert [e.episode_id for e in found] == ["ep-9", "ep-7", "ep-5", "ep-3", "ep-2", "ep-1"]
        assert [e.episode_id for e in await memory.query(limit=2)] == ["ep-9", "ep-7"]
        keys = kv.keys("mem/episodic/team/")
        assert keys == sorted(keys)
        assert [k.rsplit("-", 1)[1] for k in keys] == ["1", "2", "3", "5", "7", "9"]

    run(main)


def test_query_filters_combine() -> None:
    async def main() -> None:
        memory = EpisodicMemory(MemoryKV(), "team")
        await memory.record(episode(1, agent="agent-a", capability="search", tags=("web",),
                                    text="Looked up the Raft paper"))
        await memory.record(episode(2, agent="agent-b", capability="search", outcome="failed",
                                    tags=("web", "timeout")))
        await memory.record(episode(3, agent="agent-a", capability="summarise",
                                    text="Summarised RAFT and Paxos"))
        await memory.record(episode(4, agent="agent-b", capability="summarise",
                                    tags=("long",)))

        async def ids(**filters: Any) -> list[str]:
            return [e.episode_id for e in await memory.query(**filters)]

        assert await ids(agent="agent-a") == ["ep-3", "ep-1"]
        assert await ids(capability="summarise") == ["ep-4", "ep-3"]
        assert await ids(outcome="failed") == ["ep-2"]
        assert await ids(outcome="done", agent="agent-b") == ["ep-4"]
        assert await ids(tag="web") == ["ep-2", "ep-1"]
        assert await ids(tag="web", agent="agent-a") == ["ep-1"]
        assert await ids(text="raft") == ["ep-3", "ep-1"]
        assert await ids(text="PAXOS") == ["ep-3"]
        assert await ids(since=T0 + 2, until=T0 + 3) == ["ep-3", "ep-2"]  # inclusive
        assert await ids(since=T0 + 2.5) == ["ep-4", "ep-3"]
        assert await ids(until=T0 + 1.5) == ["ep-1"]
        assert await ids(since=T0 + 3, until=T0 + 2) == []
        assert await ids(agent="nobody") == []

    run(main)


def test_a_query_from_since_reads_only_the_newer_episodes() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team", value_bytes_max=256 * 1024)  # 2 per page
        for number in range(20):
            await memory.record(episode(number))
        before = kv.reads
        assert [e.episode_id for e in await memory.query(since=T0 + 17)] == [
            "ep-19", "ep-18", "ep-17"]
        assert kv.reads - before <= 2
        before = kv.reads
        assert len(await memory.query(limit=1000)) == 20
        assert kv.reads - before >= 10  # the whole scope, two a page

    run(main)


def test_the_oldest_episodes_are_deleted_beyond_episodes_max() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team", episodes_max=3)
        for number in (4, 2, 5, 3, 6):
            await memory.record(episode(number))
        assert [e.episode_id for e in await memory.query()] == ["ep-6", "ep-5", "ep-4"]
        assert await memory.count() == 3 == len(kv.keys("mem/episodic/team/"))
        assert await memory.get("ep-2") is None and await memory.get("ep-3") is None
        assert sorted(kv.keys("mem/episodic-ids/team/")) == [
            "mem/episodic-ids/team/ep-4", "mem/episodic-ids/team/ep-5",
            "mem/episodic-ids/team/ep-6"]
        assert memory.evicted == 2
        # Older than everything kept in the full scope: dropped at once.
        snapshot = kv.store.snapshot()
        await memory.record(episode(1))
        assert kv.store.snapshot() == snapshot
        assert memory.evicted == 3
        assert await memory.get("ep-1") is None

    run(main)


def test_a_lowered_episodes_max_shrinks_the_scope_on_the_next_record() -> None:
    async def main() -> None:
        kv = MemoryKV()
        roomy = EpisodicMemory(kv, "team", episodes_max=100)
        for number in range(20):
            await roomy.record(episode(number))
        tight = EpisodicMemory(kv, "team", episodes_max=2)
        await tight.record(episode(20))
        assert [e.episode_id for e in await tight.query()] == ["ep-20", "ep-19"]
        assert await tight.count() == 2
        assert len(kv.keys("mem/episodic-ids/team/")) == 2
        assert tight.evicted == 19

    run(main)


def test_recording_again_is_idempotent_and_an_id_cannot_change_content() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team")
        await memory.record(episode(1))
        writes = kv.writes
        await memory.record(episode(1))  # a retry after an unknown outcome
        assert kv.writes == writes
        snapshot = kv.store.snapshot()
        with pytest.raises(MemoryInputError, match="ep-1 is already recorded"):
            await memory.record(episode(1, text="something else"))
        assert kv.store.snapshot() == snapshot
        assert await memory.count() == 1

    run(main)


def test_an_episode_too_large_is_refused_with_the_limit_and_nothing_written() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team", value_bytes_max=2048)
        with pytest.raises(MemoryInputError, match=r"more than value_bytes_max \(2048\)"):
            await memory.record(episode(1, output="x" * 3000))
        assert kv.writes == 0 and kv.keys() == []

    run(main)


@pytest.mark.parametrize(("change", "match"), [
    ({"episode_id": "a/b"}, "episode id"),
    ({"scope": "other"}, "names scope 'other'"),
    ({"agent": ""}, "agent"),
    ({"outcome": "maybe"}, "outcome"),
    ({"started": T0 + 10}, "before it started"),
    ({"finished": float("nan")}, "finished"),
    ({"input": {1, 2}}, "not JSON-able"),
    ({"output": float("inf")}, "not JSON-able"),
    ({"tags": ("",)}, "tag"),
])
def test_invalid_episodes_are_refused(change: dict[str, Any], match: str) -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team")
        data = {**episode(1).to_json(), "episode_id": "ep-1"}
        del data["id"]
        data.update(change)
        with pytest.raises(MemoryInputError, match=match):
            await memory.record(Episode(**data))
        assert kv.writes == 0

    run(main)


def test_private_scope_refuses_other_agents_and_changes_nothing() -> None:
    async def main() -> None:
        kv = MemoryKV()
        private = glob_access(read=["agent-a"], write=["agent-a"])
        mine = EpisodicMemory(kv, "private/agent-a", access=private, actor="agent-a")
        await mine.record(episode(1))
        snapshot, writes, reads = kv.store.snapshot(), kv.writes, kv.reads
        theirs = EpisodicMemory(kv, "private/agent-a", access=private, actor="agent-b")
        with pytest.raises(MemoryAccessError) as refused:
            await theirs.record(episode(2))
        assert str(refused.value) == "'agent-b' may not write memory scope 'private/agent-a'"
        assert (refused.value.actor, refused.value.action, refused.value.scope) == (
            "agent-b", "write", "private/agent-a")
        with pytest.raises(MemoryAccessError, match="'agent-b' may not read"):
            await theirs.query()
        with pytest.raises(MemoryAccessError, match="may not read"):
            await theirs.get("ep-1")
        with pytest.raises(MemoryAccessError, match="may not read"):
            await theirs.count()
        assert (kv.store.snapshot(), kv.writes, kv.reads) == (snapshot, writes, reads)
        assert [e.episode_id for e in await mine.query()] == ["ep-1"]

    run(main)


def test_shared_scope_is_read_by_agents_and_written_by_the_coordinator() -> None:
    async def main() -> None:
        kv = MemoryKV()
        team = glob_access(read=["agent-*", "coordinator"], write=["coordinator"])
        coordinator = EpisodicMemory(kv, "team/research", access=team, actor="coordinator")
        await coordinator.record(episode(1, agent="agent-7"))
        reader = EpisodicMemory(kv, "team/research", access=team, actor="agent-7")
        assert [e.episode_id for e in await reader.query()] == ["ep-1"]
        snapshot = kv.store.snapshot()
        with pytest.raises(MemoryAccessError, match="'agent-7' may not write"):
            await reader.record(episode(2))
        outsider = EpisodicMemory(kv, "team/research", access=team, actor="mallory")
        with pytest.raises(MemoryAccessError, match="'mallory' may not read"):
            await outsider.query()
        assert kv.store.snapshot() == snapshot

    run(main)


def test_glob_access_patterns_and_pinning() -> None:
    team = glob_access(read=["agent-*"], write=["coordinator"])
    assert team("agent-1", "read") is True
    assert team("agent-1", "write") is False
    assert team("coordinator", "write") is True
    assert team("coordinator", "read") is False  # writing does not imply reading
    assert team("Agent-1", "read") is False  # case-sensitive everywhere
    pinned = glob_access(read=["agent-*"], write=[], actor="agent-1")
    assert pinned("agent-1", "read") is True
    assert pinned("agent-2", "read") is False
    with pytest.raises(ConfigError, match="list of patterns"):
        glob_access(read="agent-*", write=[])
    with pytest.raises(ConfigError, match="non-empty"):
        glob_access(read=[""], write=[])


def test_a_policy_that_returns_anything_but_true_refuses() -> None:
    async def main() -> None:
        truthy = lambda actor, action: 1  # noqa: E731
        memory = EpisodicMemory(MemoryKV(), "team", access=truthy, actor="agent-a")
        with pytest.raises(MemoryAccessError):
            await memory.query()

    run(main)


def test_nested_scopes_keep_their_episodes_apart() -> None:
    async def main() -> None:
        kv = MemoryKV()
        team = EpisodicMemory(kv, "team", episodes_max=2)
        research = EpisodicMemory(kv, "team/research")
        for number in range(3):
            await research.record(episode(number))
        for number in range(10, 14):
            await team.record(episode(number))
        assert [e.episode_id for e in await team.query()] == ["ep-13", "ep-12"]
        assert [e.episode_id for e in await research.query()] == ["ep-2", "ep-1", "ep-0"]
        assert await research.count() == 3
        assert await team.get("ep-1") is None

    run(main)


def test_episodes_survive_a_restart_from_the_snapshot() -> None:
    async def main() -> None:
        kv = MemoryKV()
        await EpisodicMemory(kv, "team").record(episode(1, tags=("x",)))
        after = EpisodicMemory(kv.restored(), "team")
        assert [e.episode_id for e in await after.query(tag="x")] == ["ep-1"]
        await after.record(episode(2))
        assert await after.count() == 2

    run(main)


def test_a_concurrent_writer_makes_the_compare_fail_and_the_record_retries() -> None:
    async def main() -> None:
        kv = MemoryKV()
        first = EpisodicMemory(kv, "team", episodes_max=2)
        other = EpisodicMemory(kv, "team", episodes_max=2)
        await first.record(episode(1))

        async def race(_: Command) -> None:
            await other.record(episode(3))

        kv.before_write = race
        await first.record(episode(2))
        # Both landed; the bound held through the race (ep-1 went).
        assert [e.episode_id for e in await first.query()] == ["ep-3", "ep-2"]
        assert await first.count() == 2

    run(main)


def test_a_lost_count_is_found_again_by_listing() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = EpisodicMemory(kv, "team")
        for number in range(3):
            await memory.record(episode(number))
        await kv.delete(EPISODIC_META_PREFIX + "team")
        assert await memory.count() == 3
        await memory.record(episode(3))
        assert await memory.count() == 4

    run(main)


def test_a_store_refusal_is_reported_and_changes_nothing() -> None:
    async def main() -> None:
        kv = MemoryKV(KVStore(KVSettings(keys_max=3)))
        memory = EpisodicMemory(kv, "team")
        await memory.record(episode(1))  # three keys: record, id, count
        with pytest.raises(MemoryStoreError, match="too_large"):
            await memory.record(episode(2))
        assert await memory.count() == 1

    run(main)


@pytest.mark.parametrize(("arguments", "match"), [
    ({"scope": ""}, "memory scope"),
    ({"scope": "team/"}, "memory scope"),
    ({"scope": "team/2024"}, "memory scope"),
    ({"scope": "a" * 200}, "200 characters"),
    ({"episodes_max": 0}, "episodes_max"),
    ({"value_bytes_max": 10}, "value_bytes_max"),
    ({"actor": " a"}, "actor"),
    ({"access": "everyone"}, "access"),
])
def test_bad_configuration_is_refused_by_name(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(match)):
        EpisodicMemory(MemoryKV(), **{"scope": "team", **arguments})


def test_bad_queries_are_refused() -> None:
    async def main() -> None:
        memory = EpisodicMemory(MemoryKV(), "team")
        with pytest.raises(MemoryInputError, match="limit"):
            await memory.query(limit=0)
        with pytest.raises(MemoryInputError, match="outcome"):
            await memory.query(outcome="maybe")  # type: ignore[arg-type]
        with pytest.raises(MemoryInputError, match="since"):
            await memory.query(since=float("inf"))
        with pytest.raises(MemoryInputError, match="agent"):
            await memory.query(agent=3)  # type: ignore[arg-type]
        with pytest.raises(MemoryInputError, match="episode id"):
            await memory.get("no/slash")

    run(main)
