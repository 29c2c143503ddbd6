"""The contract between a pure protocol core and the driver that runs it.

A core is fed one verified message at a time with ``step`` and advanced with
``tick(now)`` (monotonic seconds, supplied by the driver). It never sends: it
appends ``Outgoing`` items to an outbox that the driver drains with
``take_outbox`` after every step or tick, in order. The real node
(``mesh.runtime``) and the simulator (``sim``) are two such drivers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

__all__ = ["Incoming", "Outgoing", "ProtocolCore"]


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
