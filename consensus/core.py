"""The contract between a pure protocol core and the driver that runs it.

A core is fed one verified message at a time with ``step`` and advanced with
``tick(now)`` (monotonic seconds, supplied by the driver). It never sends: it
appends ``Outgoing`` items to an outbox that the driver drains with
``take_outbox`` after every step or tick, in order. The real node
(``mesh.runtime``) and the simulator (``sim``) are two such drivers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

__all__ = ["Incoming", "Outgoing", "ProtocolCore", "coalesce"]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One verified payload delivered to a core."""

    sender: bytes
    kind: str
    payload: BaseModel


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a core asks its driver to send.

    Exactly one of ``to_node`` (a node id the driver knows an address for) and
    ``to_address`` (a transport address, e.g. a seed) is set. ``payloads`` of one
    kind travel in one signed envelope.
    """

    kind: str
    payloads: tuple[BaseModel, ...]
    to_node: bytes | None = None
    to_address: str | None = None
    attach_certificate: bool = False

    def __post_init__(self) -> None:
        assert (self.to_node is None) != (self.to_address is None), self
        assert self.payloads, self


def coalesce(outbox: Sequence[Outgoing]) -> list[Outgoing]:
    """``outbox`` with runs of one kind to one destination merged into one message.

    Per destination the order of payloads is kept (only neighbours in that
    destination's own sequence merge, so a kind never overtakes another);
    destinations come in the order of their first message. A burst of calls to
    one peer then costs one signed envelope instead of one each (the driver still
    splits what exceeds an envelope's entry or size limit).
    """
    runs: dict[tuple[bytes | None, str | None], list[tuple[Outgoing, list[BaseModel]]]] = {}
    for out in outbox:
        sequence = runs.setdefault((out.to_node, out.to_address), [])
        if sequence:
            last, payloads = sequence[-1]
            if last.kind == out.kind and last.attach_certificate == out.attach_certificate:
                payloads.extend(out.payloads)
                continue
        sequence.append((out, list(out.payloads)))
    merged: list[Outgoing] = []
    for sequence in runs.values():
        for out, payloads in sequence:
            merged.append(out if len(payloads) == len(out.payloads) else Outgoing(
                out.kind, tuple(payloads), out.to_node, out.to_address, out.attach_certificate))
    return merged


class ProtocolCore(Protocol):
    """What a driver needs from a core."""

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """The message kinds this core consumes, with their payload models."""
        ...

    def step(self, message: Incoming) -> None:
        """Feed one received, verified message."""
        ...

    def tick(self, now: float) -> None:
        """Advance the core's notion of time to ``now`` (monotonic seconds)."""
        ...

    def take_outbox(self) -> list[Outgoing]:
        """Remove and return the messages produced since the last call, in order."""
        ...
