"""Short-term memory: the recent turns of each conversation, bounded, in-process.

How this works
--------------
``ShortTermMemory`` keeps, per conversation id, the latest messages (role,
content, time) in the order they were added. Two bounds hold per conversation
after every ``add``: at most ``turns_max`` messages and at most ``chars_max``
characters of content in total; the oldest messages go first until both hold
(each one counted in ``evicted``). A single message longer than ``chars_max``
could never fit, so it is refused rather than emptying the conversation.

The number of conversations is bounded too (``conversations_max``): adding to a
new conversation beyond it drops the least recently used one whole (counted in
``conversations_dropped``). ``add`` and ``recent`` both count as use.

It is plain Python state of one process: nothing is shared or survives a
restart (``agents.memory.episodic`` and ``semantic`` live in the Raft KV
store). Every call is O(1) amortised except ``recent``, which copies at most
``turns_max`` messages. Not thread-safe; use it from one event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.memory.scopes import MemoryInputError, check_int
from mesh.errors import ConfigError

__all__ = [
    "CONVERSATION_ID_CHARS_MAX",
    "ROLE_CHARS_MAX",
    "Message",
    "ShortTermMemory",
]

CONVERSATION_ID_CHARS_MAX = 256
"""Longest conversation id."""
ROLE_CHARS_MAX = 64
"""Longest role name (``"user"``, ``"assistant"``, ``"tool"``, an agent's name...)."""
_TURNS_LIMIT = 1_000_000
_CHARS_LIMIT = 100_000_000
_CONVERSATIONS_LIMIT = 10_000_000


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str
    at: float
    """When it was added (the memory's clock, seconds since the epoch by default)."""


@dataclass(slots=True)
class _Conversation:
    messages: deque[Message] = field(default_factory=deque)
    chars: int = 0


class ShortTermMemory:
    """Bounded recent messages per conversation (see the module doc)."""

    def __init__(
        self,
        turns_max: int = 50,
        chars_max: int = 20_000,
        *,
        conversations_max: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``turns_max``: messages kept per conversation; ``chars_max``: characters of
        content kept per conversation; ``conversations_max``: conversations kept (the
        least recently used beyond it is dropped); ``clock`` stamps ``Message.at``."""
        self._turns_max = check_int("turns_max", turns_max, 1, _TURNS_LIMIT)
        self._chars_max = check_int("chars_max", chars_max, 1, _CHARS_LIMIT)
        self._conversations_max = check_int("conversations_max", conversations_max, 1,
                                            _CONVERSATIONS_LIMIT)
        if not callable(clock):
            raise ConfigError(f"clock ({clock!r}) must be callable")
        self._clock = clock
        # Least recently used first: ``move_to_end`` on every use.
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        #: Messages dropped to keep a conversation within ``turns_max``/``chars_max``.
        self.evicted = 0
        #: Whole conversations dropped to keep within ``conversations_max``.
        self.conversations_dropped = 0

    @property
    def turns_max(self) -> int:
        """Messages kept per conversation."""
        return self._turns_max

    @property
    def chars_max(self) -> int:
        """Characters of content kept per conversation."""
        return self._chars_max

    @property
    def conversations_max(self) -> int:
        """Conversations kept."""
        return self._conversations_max

    def add(self, conversation_id: str, role: str, content: str) -> Message:
        """Append a message to the conversation (created if new); the message.

        ``MemoryInputError`` for an invalid id, role or content, or content longer
        than ``chars_max``; nothing changes then.
        """
        _check_text("conversation id", conversation_id, CONVERSATION_ID_CHARS_MAX)
        _check_text("role", role, ROLE_CHARS_MAX)
        if not isinstance(content, str):
            raise MemoryInputError(f"content must be a string, got {type(content).__name__}")
        if len(content) > self._chars_max:
            raise MemoryInputError(f"content has {len(content)} characters, more than "
                                   f"chars_max ({self._chars_max})")
        message = Message(role, content, float(self._clock()))
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            while len(self._conversations) >= self._conversations_max:
                self._conversations.popitem(last=False)
                self.conversations_dropped += 1
            conversation = self._conversations[conversation_id] = _Conversation()
        else:
            self._conversations.move_to_end(conversation_id)
        conversation.messages.append(message)
        conversation.chars += len(content)
        messages = conversation.messages
        while len(messages) > self._turns_max or conversation.chars > self._chars_max:
            conversation.chars -= len(messages.popleft().content)
            self.evicted += 1
        return message

    def recent(self, conversation_id: str, n: int | None = None) -> list[Message]:
        """The conversation's last ``n`` messages (all kept when None), oldest first;
        empty for an unknown conversation."""
        if n is not None:
            check_int("n", n, 0, _TURNS_LIMIT, error=MemoryInputError)
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            return []
        self._conversations.move_to_end(conversation_id)
        messages = conversation.messages
        if n is None or n >= len(messages):
            return list(messages)
        return list(messages)[len(messages) - n:]

    def clear(self, conversation_id: str) -> int:
        """Forget the conversation; how many messages it held (0 if unknown)."""
        conversation = self._conversations.pop(conversation_id, None)
        return 0 if conversation is None else len(conversation.messages)

    def chars(self, conversation_id: str) -> int:
        """Characters of content the conversation holds now."""
        conversation = self._conversations.get(conversation_id)
        return 0 if conversation is None else conversation.chars

    def conversations(self) -> list[str]:
        """Ids of the conversations kept, least recently used first."""
        return list(self._conversations)

    def __len__(self) -> int:
        """Number of conversations kept."""
        return len(self._conversations)

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self._conversations


def _check_text(what: str, value: object, chars_max: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise MemoryInputError(f"{what} {value!r} must be a non-empty string")
    if len(value) > chars_max:
        raise MemoryInputError(f"{what} {value[:40]!r}... has {len(value)} characters, "
                               f"more than {chars_max}")
