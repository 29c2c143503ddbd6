"""``node.gossip``: the node's view of the eventually consistent shared state.

The gossip core (``consensus.gossip``) holds the replicated map and OR-sets and
spreads them; this module is the application-facing side the runtime builds
around it: reads, writes that start spreading at once, and subscriptions to the
changes under a key prefix, local or remote, in the order they were applied.

Subscribers never slow the node down: each has a bounded buffer, and one that
falls behind loses its oldest changes and is told how many (``missed``).
Callbacks run on the event loop and must not block; an exception in one is
logged and counted, never allowed to stop the node.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import anyio

from consensus.gossip import Change, Entry, Gossip

__all__ = ["ChangeCallback", "GossipSubscription", "NodeGossip"]

log = logging.getLogger(__name__)

ChangeCallback = Callable[[Change], None]


class GossipSubscription:
    """Changes under one key prefix, as an async iterator; close it when done.

    Use as ``async with node.gossip.subscribe("agents/") as changes:`` then
    ``async for change in changes``.
    """

    def __init__(self, prefix: str, capacity: int, on_close: Callable[[GossipSubscription], None]):
        self.prefix = prefix
        self.missed = 0
        self._capacity = capacity
        self._buffer: deque[Change] = deque()
        self._ready = anyio.Event()
        self._closed = False
        self._on_close = on_close

    def _offer(self, change: Change) -> None:
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self.missed += 1
        self._buffer.append(change)
        self._ready.set()

    def pending(self) -> int:
        """Changes buffered and not yet read."""
        return len(self._buffer)

    async def next(self) -> Change:
        """The next change; waits for one. Raises ``StopAsyncIteration`` once closed."""
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._ready = anyio.Event()
            await self._ready.wait()
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop receiving changes; a waiting reader ends its iteration."""
        if not self._closed:
            self._closed = True
            self._on_close(self)
            self._ready.set()

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        return await self.next()

    async def __aenter__(self) -> GossipSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class NodeGossip:
    """Read, write and watch the gossip state of one running node."""

    def __init__(self, core: Gossip, *, subscription_queue_max: int,
                 after_write: Callable[[], None]) -> None:
        self.core = core
        self._queue_max = subscription_queue_max
        self._after_write = after_write
        self._subscriptions: list[GossipSubscription] = []
        self._callbacks: list[tuple[str, ChangeCallback]] = []
        self.callback_errors = 0

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        """The value under ``key``, or None when absent or deleted."""
        return self.core.get(key)

    def entry(self, key: str) -> Entry | None:
        """The entry under ``key`` with its timestamp and writer, tombstones included."""
        return self.core.entry(key)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """Live ``(key, value)`` pairs under ``prefix``, sorted by key."""
        return self.core.items(prefix)

    def set_elements(self, name: str) -> list[Any]:
        """The elements of the observed-remove set ``name``."""
        return self.core.set_elements(name)

    # -- writes --------------------------------------------------------------------

    def set(self, key: str, value: Any) -> Entry:
        """Write ``value`` under ``key``; raises ``ValueError`` for oversized keys or values."""
        entry = self.core.set(key, value)
        self._after_write()
        return entry

    def delete(self, key: str) -> bool:
        """Delete ``key``; False when there was nothing to delete."""
        deleted = self.core.delete(key) is not None
        self._after_write()
        return deleted

    def set_add(self, name: str, element: Any) -> None:
        """Add ``element`` to the observed-remove set ``name``."""
        self.core.set_add(name, element)
        self._after_write()

    def set_remove(self, name: str, element: Any) -> None:
        """Remove ``element`` from the observed-remove set ``name`` (as observed here)."""
        self.core.set_remove(name, element)
        self._after_write()

    # -- watching ------------------------------------------------------------------

    def subscribe(self, prefix: str = "") -> GossipSubscription:
        """Changes to keys starting with ``prefix``, from now on, in the order applied."""
        subscription = GossipSubscription(prefix, self._queue_max, self._subscriptions.remove)
        self._subscriptions.append(subscription)
        return subscription

    def on_change(self, prefix: str, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` for each change under ``prefix``; returns the unsubscriber."""
        registration = (prefix, callback)
        self._callbacks.append(registration)

        def unsubscribe() -> None:
            if registration in self._callbacks:
                self._callbacks.remove(registration)

        return unsubscribe

    def deliver(self, changes: list[Change]) -> None:
        """Hand changes taken from the core to every matching subscriber (runtime use)."""
        if not changes or not (self._subscriptions or self._callbacks):
            return
        for change in changes:
            for subscription in self._subscriptions:
                if change.key.startswith(subscription.prefix):
                    subscription._offer(change)
            for prefix, callback in list(self._callbacks):
                if change.key.startswith(prefix):
                    try:
                        callback(change)
                    except Exception:
                        self.callback_errors += 1
                        log.exception("gossip change callback failed")
