"""Typed events on the mesh: published by agents, delivered in order per source.

How this works
--------------
An event is one of ``TaskCompleted``, ``DataAvailable``, ``ErrorOccurred`` or
``StateChanged`` (pydantic models, each with its own fields), stamped by the
``EventBus`` with its ``source`` (an agent or node name), a sequence and the
time. ``bus.publish(event)`` writes it to gossip under
``events/<source>/<epoch>-<number>`` (``epoch``: when this bus started, in
milliseconds, so a restarted publisher never reuses a key), and gossip spreads
it to every node.

``bus.subscribe(types=..., sources=...)`` yields the events of those types from
those sources (glob patterns), on any node, in the order each source published
them: gossip may deliver two events of one source out of order, so a later one
waits until the ones before it arrive, at most ``gap_wait_s``, after which the
subscriber moves on and counts the gap (``missed``). Events from different
sources are not ordered with respect to each other.

Each source keeps its latest ``retention`` events in gossip and deletes older
ones, so the state stays bounded; a subscriber that starts late sees what is
still retained.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from mesh.errors import ConfigError, MeshError

__all__ = [
    "DataAvailable",
    "ErrorOccurred",
    "Event",
    "EventBus",
    "EventError",
    "EventSettings",
    "StateChanged",
    "TaskCompleted",
]

EVENTS_PREFIX = "events/"


class EventError(MeshError):
    """An event that cannot be published (bad source, too large...)."""


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = ""
    seq: str = ""
    at: float = 0.0


class TaskCompleted(_Event):
    """A task finished with a result."""

    type: Literal["TaskCompleted"] = "TaskCompleted"
    task_id: str
    result: Any = None


class DataAvailable(_Event):
    """New data is ready under ``key`` (a context, a KV key, a location)."""

    type: Literal["DataAvailable"] = "DataAvailable"
    key: str
    description: str = ""


class ErrorOccurred(_Event):
    """Something failed."""

    type: Literal["ErrorOccurred"] = "ErrorOccurred"
    error: str
    task_id: str | None = None


class StateChanged(_Event):
    """``subject`` went from ``old`` to ``new``."""

    type: Literal["StateChanged"] = "StateChanged"
    subject: str
    old: Any = None
    new: Any = None


Event = Annotated[TaskCompleted | DataAvailable | ErrorOccurred | StateChanged,
                  Field(discriminator="type")]
_EVENT = TypeAdapter(Event)


@dataclass(frozen=True, slots=True)
class EventSettings:
    """Limits and timings of the event bus."""

    retention: int = 256
    """Events each source keeps in gossip; older ones are deleted."""
    event_bytes_max: int = 16 * 1024
    """Largest JSON form of one event."""
    gap_wait_s: float = 2.0
    """How long a subscriber holds a source's later events for an earlier one."""

    def __post_init__(self) -> None:
        if type(self.retention) is not int or not 1 <= self.retention <= 100_000:
            raise ConfigError(f"event retention ({self.retention!r}) must be 1 to 100000")
        if type(self.event_bytes_max) is not int or not 64 <= self.event_bytes_max <= 1 << 20:
            raise ConfigError(f"event_bytes_max ({self.event_bytes_max!r}) must be 64 to "
                              f"{1 << 20}")
        if not isinstance(self.gap_wait_s, int | float) or not math.isfinite(
                self.gap_wait_s) or not 0 < self.gap_wait_s <= 600:
            raise ConfigError(f"gap_wait_s ({self.gap_wait_s!r}) must be more than 0 and at "
                              "most 600 seconds")


class EventBus:
    """Publish and subscribe to typed events through ``gossip`` (module docstring)."""

    def __init__(self, gossip: Any, source: str, *, settings: EventSettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(source, str) or not source or "/" in source or len(source) > 128:
            raise EventError(f"event source {source!r} must be 1 to 128 characters without '/'")
        self.gossip = gossip
        self.source = source
        self.settings = settings or EventSettings()
        self._clock = clock
        self._epoch = int(clock() * 1000)
        self._number = 0
        self._kept: list[str] = []
        self.missed = 0

    def publish(self, event: TaskCompleted | DataAvailable | ErrorOccurred | StateChanged) -> str:
        """Stamp and publish ``event``; its sequence (``epoch-number``)."""
        self._number += 1
        seq = f"{self._epoch:014d}-{self._number:010d}"
        stamped = event.model_copy(update={"source": self.source, "seq": seq,
                                           "at": self._clock()})
        body = stamped.model_dump(mode="json")
        size = len(stamped.model_dump_json())
        if size > self.settings.event_bytes_max:
            raise EventError(f"event of {size} bytes exceeds event_bytes_max "
                             f"({self.settings.event_bytes_max})")
        key = f"{EVENTS_PREFIX}{self.source}/{seq}"
        self.gossip.set(key, body)
        self._kept.append(key)
        while len(self._kept) > self.settings.retention:
            self.gossip.delete(self._kept.pop(0))
        return seq

    async def subscribe(self, *, types: Sequence[str] | None = None,
                        sources: Sequence[str] = ("*",)) -> AsyncIterator[Any]:
        """Events of ``types`` (default: all) from ``sources`` (glob patterns), in
        order per source (module docstring), starting with those still retained."""
        wanted = set(types) if types is not None else None
        delivered: dict[str, str] = {}  # source -> last seq delivered
        held: dict[str, dict[str, Any]] = {}  # source -> seq -> event, waiting for a gap
        held_since: dict[str, float] = {}

        def accept(key: str, value: Any) -> None:
            parts = key[len(EVENTS_PREFIX):].split("/")
            if len(parts) != 2 or not any(fnmatch.fnmatchcase(parts[0], p) for p in sources):
                return
            try:
                event = _EVENT.validate_python(value)
            except ValidationError:
                return
            if parts[1] <= delivered.get(parts[0], ""):
                return
            held.setdefault(parts[0], {})[parts[1]] = event
            held_since.setdefault(parts[0], anyio.current_time())

        def ready() -> list[Any]:
            out: list[Any] = []
            now = anyio.current_time()
            for source in sorted(held):
                pending = held[source]
                while pending:
                    seq = min(pending)
                    last = delivered.get(source, "")
                    if not _follows(last, seq) and now - held_since.get(source, now) < (
                            self.settings.gap_wait_s):
                        break
                    if not _follows(last, seq) and last:
                        self.missed += 1
                    event = pending.pop(seq)
                    delivered[source] = seq
                    held_since[source] = now
                    if wanted is None or event.type in wanted:
                        out.append(event)
                if not pending:
                    del held[source]
                    held_since.pop(source, None)
            return out

        async with self.gossip.subscribe(EVENTS_PREFIX) as changes:
            for key, value in sorted(self.gossip.items(EVENTS_PREFIX)):
                accept(key, value)
            # What is retained is history: deliver it in order without waiting for gaps.
            for source in list(held):
                held_since[source] = -math.inf
            for event in ready():
                yield event
            while True:
                wait = self.settings.gap_wait_s if held else None
                with anyio.move_on_after(wait):
                    change = await changes.next()
                    if change.value is not None:
                        accept(change.key, change.value)
                for event in ready():
                    yield event


def _follows(last: str, seq: str) -> bool:
    """Whether ``seq`` comes right after ``last`` of one source (or starts a new
    publisher epoch, or is the first seen)."""
    if not last:
        return True
    last_epoch, last_number = last.split("-")
    epoch, number = seq.split("-")
    if epoch != last_epoch:
        return number == "0000000001"
    return int(number) == int(last_number) + 1
