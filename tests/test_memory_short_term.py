"""Short-term memory: per-conversation bounds, eviction of the oldest, LRU of conversations."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.memory import Message, ShortTermMemory
from agents.memory.scopes import MemoryInputError
from mesh.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def ticking() -> ShortTermMemory:
    clock = itertools.count(100)
    return ShortTermMemory(turns_max=3, chars_max=12, conversations_max=2,
                           clock=lambda: float(next(clock)))


def test_messages_come_back_oldest_first_with_role_and_time() -> None:
    memory = ticking()
    memory.add("c1", "user", "hi")
    memory.add("c1", "assistant", "hello")
    assert memory.recent("c1") == [Message("user", "hi", 100.0),
                                   Message("assistant", "hello", 101.0)]
    assert memory.recent("c1", 1) == [Message("assistant", "hello", 101.0)]
    assert memory.recent("c1", 0) == []
    assert memory.recent("c1", 10) == memory.recent("c1")
    assert memory.recent("unknown") == []
    with pytest.raises(MemoryInputError, match=r"n \(-1\)"):
        memory.recent("c1", -1)
    assert memory.chars("c1") == 7


def test_turns_beyond_turns_max_evict_the_oldest() -> None:
    memory = ticking()
    for text in ("a", "b", "c", "d", "e"):
        memory.add("c1", "user", text)
    assert [m.content for m in memory.recent("c1")] == ["c", "d", "e"]
    assert memory.evicted == 2


def test_characters_beyond_chars_max_evict_the_oldest() -> None:
    memory = ticking()
    memory.add("c1", "user", "aaaaa")
    memory.add("c1", "user", "bbbbb")
    assert memory.evicted == 0
    memory.add("c1", "user", "cccc")  # 14 characters: the first one goes
    assert [m.content for m in memory.recent("c1")] == ["bbbbb", "cccc"]
    assert memory.chars("c1") == 9
    assert memory.evicted == 1


def test_a_message_longer_than_chars_max_is_refused_and_changes_nothing() -> None:
    memory = ticking()
    memory.add("c1", "user", "kept")
    with pytest.raises(MemoryInputError, match=r"13 characters, more than chars_max \(12\)"):
        memory.add("c1", "user", "x" * 13)
    assert [m.content for m in memory.recent("c1")] == ["kept"]
    assert memory.evicted == 0


def test_the_least_recently_used_conversation_is_dropped_beyond_conversations_max() -> None:
    memory = ticking()
    memory.add("a", "user", "1")
    memory.add("b", "user", "2")
    memory.recent("a")  # a reading is a use: b is now the least recently used
    memory.add("c", "user", "3")
    assert memory.conversations() == ["a", "c"]
    assert "b" not in memory
    assert memory.recent("b") == []
    assert memory.conversations_dropped == 1
    memory.add("a", "user", "4")
    memory.add("d", "user", "5")
    assert memory.conversations() == ["a", "d"]
    assert len(memory) == 2


def test_clear_forgets_a_conversation() -> None:
    memory = ticking()
    memory.add("c1", "user", "a")
    memory.add("c1", "user", "b")
    assert memory.clear("c1") == 2
    assert memory.clear("c1") == 0
    assert memory.recent("c1") == []
    assert len(memory) == 0


@pytest.mark.parametrize(("field", "value"), [
    ("turns_max", 0), ("turns_max", True), ("turns_max", "5"), ("chars_max", -1),
    ("conversations_max", 0), ("chars_max", 1.5),
])
def test_bad_limits_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ShortTermMemory(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("conversation", "role", "content", "match"), [
    ("", "user", "x", "conversation id"),
    ("c", " ", "x", "role"),
    ("c", "user", 5, "content must be a string"),
    ("c" * 300, "user", "x", "300 characters"),
])
def test_bad_messages_are_refused(conversation: str, role: str, content: object,
                                  match: str) -> None:
    memory = ShortTermMemory()
    with pytest.raises(MemoryInputError, match=match):
        memory.add(conversation, role, content)  # type: ignore[arg-type]
    assert len(memory) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.text(max_size=9)), max_size=40),
       st.integers(1, 6), st.integers(9, 30))
def test_bounds_hold_and_the_newest_turns_are_kept(
    adds: list[tuple[str, str]], turns_max: int, chars_max: int
) -> None:
    memory = ShortTermMemory(turns_max, chars_max, conversations_max=2, clock=lambda: 0.0)
    added: dict[str, list[str]] = {"a": [], "b": []}
    for conversation, text in adds:
        memory.add(conversation, "user", text)
        added[conversation].append(text)
    kept_total = 0
    for conversation, texts in added.items():
        kept = [m.content for m in memory.recent(conversation)]
        assert len(kept) <= turns_max
        assert sum(map(len, kept)) <= chars_max == memory.chars_max
        assert memory.chars(conversation) == sum(map(len, kept))
        # What is kept is the newest messages, in order, and as many as fit.
        assert kept == texts[len(texts) - len(kept):]
        if len(kept) < len(texts):
            dropped = texts[len(texts) - len(kept) - 1]
            assert len(kept) == turns_max or sum(map(len, kept)) + len(dropped) > chars_max
        kept_total += len(kept)
    assert memory.evicted == len(adds) - kept_total
