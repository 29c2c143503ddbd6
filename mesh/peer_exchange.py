"""Peer exchange: how nodes find each other until SWIM membership replaces it.

Every ``exchange_interval`` a node sends a signed hello (its name, address and a
random sample of the peers it knows) to every peer it knows and to its seeds.
A hello from a node teaches us that node and, through its sample, candidates we
have not heard from yet; we greet candidates and they answer, so any node
reachable through a chain of hellos becomes a peer. A node we greet for the first
time answers at once rather than waiting for its next round.

Liveness is judged by silence: a peer heard from within ``suspect_after`` is
alive, then suspect, then dead after ``dead_after``; it is forgotten after
``forget_after``. Dead peers keep being greeted until forgotten, so a node that
comes back is seen again within one round.

This module is a pure core: time arrives through ``tick(now)``, randomness
through the ``Random`` it is given, and messages leave through the outbox.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from random import Random

from pydantic import BaseModel

from consensus.core import Incoming, Outgoing
from mesh.messages import HELLO, Hello, PeerAddress

__all__ = ["PeerExchange", "PeerExchangeSettings", "PeerState", "PeerView"]


class PeerState(enum.Enum):
    """Liveness of a peer as seen from this node."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as reported in status."""

    node_id: bytes
    name: str
    address: str
    state: PeerState
    silent_for_s: float


@dataclass(frozen=True, slots=True)
class PeerExchangeSettings:
    """Timings (seconds) and bounds; built from ``mesh.config.PeersConfig``."""

    exchange_interval_s: float
    suspect_after_s: float
    dead_after_s: float
    forget_after_s: float
    peers_max: int
    exchange_entries_max: int


@dataclass(slots=True)
class _Peer:
    node_id: bytes
    address: str
    name: str | None = None  # None until heard from directly: a candidate
    last_heard: float | None = None
    first_listed: float = 0.0


class PeerExchange:
    """The peer-exchange core of one node."""

    def __init__(
        self,
        *,
        node_id: bytes,
        name: str,
        address: str,
        seeds: list[str],
        settings: PeerExchangeSettings,
        rng: Random,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.address = address
        self.seeds = [s for s in dict.fromkeys(seeds) if s != address]
        self.settings = settings
        self._rng = rng
        self._peers: dict[bytes, _Peer] = {}
        self._outbox: list[Outgoing] = []
        self._now = 0.0
        self._next_round: float | None = None

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """Consumes hellos."""
        return {HELLO: Hello}

    def take_outbox(self) -> list[Outgoing]:
        """Messages produced since the last call."""
        out, self._outbox = self._outbox, []
        return out

    def address_of(self, node_id: bytes) -> str | None:
        """The address a known peer (or candidate) can be dialled at."""
        peer = self._peers.get(node_id)
        return peer.address if peer else None

    def tick(self, now: float) -> None:
        """Advance time; greet everyone once per exchange interval."""
        assert now >= self._now, (now, self._now)
        self._now = now
        if self._next_round is None or now >= self._next_round:
            self._next_round = now + self.settings.exchange_interval_s
            self._forget_silent(now)
            self._greet_all()

    def step(self, message: Incoming) -> None:
        """Learn from one hello."""
        hello = message.payload
        assert isinstance(hello, Hello), message
        if message.sender == self.node_id:
            return
        peer = self._peers.get(message.sender)
        first_contact = peer is None or peer.last_heard is None
        if peer is None:
            if not self._has_room():
                return
            peer = self._peers[message.sender] = _Peer(message.sender, hello.address)
        peer.address, peer.name, peer.last_heard = hello.address, hello.name, self._now
        for listed in hello.peers:
            self._learn_candidate(listed)
        if first_contact:
            self._outbox.append(self._hello_to(peer.address))

    def peers(self) -> list[PeerView]:
        """Peers heard from directly, with their liveness, sorted by name."""
        views = []
        for peer in self._peers.values():
            if peer.last_heard is None or peer.name is None:
                continue
            silent = max(0.0, self._now - peer.last_heard)
            views.append(
                PeerView(peer.node_id, peer.name, peer.address, self._state(silent), silent)
            )
        return sorted(views, key=lambda v: (v.name, v.node_id))

    def _state(self, silent_for: float) -> PeerState:
        if silent_for < self.settings.suspect_after_s:
            return PeerState.ALIVE
        if silent_for < self.settings.dead_after_s:
            return PeerState.SUSPECT
        return PeerState.DEAD

    def _has_room(self) -> bool:
        return len(self._peers) < self.settings.peers_max

    def _learn_candidate(self, listed: PeerAddress) -> None:
        if listed.node_id == self.node_id or listed.node_id in self._peers:
            return
        if not self._has_room():
            return
        self._peers[listed.node_id] = _Peer(listed.node_id, listed.address, first_listed=self._now)
        self._outbox.append(self._hello_to(listed.address))

    def _forget_silent(self, now: float) -> None:
        limit = self.settings.forget_after_s
        for node_id in [
            p.node_id
            for p in self._peers.values()
            if now - (p.last_heard if p.last_heard is not None else p.first_listed) >= limit
        ]:
            del self._peers[node_id]

    def _greet_all(self) -> None:
        addresses = {p.address for p in self._peers.values()}
        addresses.update(self.seeds)
        addresses.discard(self.address)
        for address in sorted(addresses):
            self._outbox.append(self._hello_to(address))

    def _hello_to(self, address: str) -> Outgoing:
        return Outgoing(
            kind=HELLO,
            payloads=(self._hello(),),
            to_address=address,
            attach_certificate=True,
        )

    def _hello(self) -> Hello:
        heard = [p for p in self._peers.values() if p.last_heard is not None]
        if len(heard) > self.settings.exchange_entries_max:
            heard = self._rng.sample(heard, self.settings.exchange_entries_max)
        return Hello(
            name=self.name,
            address=self.address,
            peers=tuple(PeerAddress(node_id=p.node_id, address=p.address) for p in heard),
        )
