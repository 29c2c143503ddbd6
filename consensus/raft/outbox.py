"""The Raft core's outgoing messages, grouped into envelopes for the driver.

How this works: the core queues each message with an estimate of its size; when
the driver takes a ``Ready``, messages of the same kind to the same peer are
grouped into one ``Outgoing`` (one signed envelope, one signature), up to
``payloads_max`` payloads and ``bytes_max`` estimated bytes per envelope, so that
a burst of appends or answers costs few signatures without any envelope growing
past the transport's size limit. Groups keep the order of their first message;
Raft tolerates any reordering between them.
"""

from __future__ import annotations

from pydantic import BaseModel

from consensus.core import Outgoing

__all__ = ["MESSAGE_OVERHEAD_BYTES", "Outbox"]

MESSAGE_OVERHEAD_BYTES = 64
"""Estimated framing of one payload besides its entry or chunk data."""


class Outbox:
    """Messages queued since the driver last took them."""

    __slots__ = ("_bytes_max", "_payloads_max", "_queued")

    def __init__(self, *, bytes_max: int, payloads_max: int) -> None:
        """Group at most ``payloads_max`` payloads and ``bytes_max`` estimated bytes."""
        self._bytes_max = bytes_max
        self._payloads_max = payloads_max
        self._queued: list[tuple[bytes, str, BaseModel, int]] = []

    def __bool__(self) -> bool:
        return bool(self._queued)

    def send(self, to: bytes, kind: str, payload: BaseModel, data_bytes: int = 0) -> None:
        """Queue ``payload`` of ``kind`` for ``to``; ``data_bytes`` is its bulk data."""
        self._queued.append((to, kind, payload, data_bytes + MESSAGE_OVERHEAD_BYTES))

    def take(self) -> tuple[Outgoing, ...]:
        """Remove and return the queued messages, grouped into envelopes."""
        groups: list[tuple[bytes, str, list[BaseModel]]] = []
        open_groups: dict[tuple[bytes, str], tuple[int, int]] = {}  # -> (group, bytes)
        for to, kind, payload, size in self._queued:
            key = (to, kind)
            found = open_groups.get(key)
            if found is not None:
                position, used = found
                payloads = groups[position][2]
                if len(payloads) < self._payloads_max and used + size <= self._bytes_max:
                    payloads.append(payload)
                    open_groups[key] = (position, used + size)
                    continue
            open_groups[key] = (len(groups), size)
            groups.append((to, kind, [payload]))
        self._queued = []
        return tuple(
            Outgoing(kind=kind, payloads=tuple(payloads), to_node=to)
            for to, kind, payloads in groups
        )
