"""The node: transport, envelopes and protocol cores, driven by one anyio task group.

Received frames arrive in batches from the transport; each is opened (verified
and counted by ``EnvelopeOpener``), then answers to our own requests resolve
their waiters, other messages go to the handler or core registered for their
kind. Cores are ticked on a timer and their outboxes are sent after every step
and tick, in order. Handlers and cores run on the event loop and must not block;
an exception in a handler is logged and counted, never allowed to stop the node.

The same class serves as a client (``Node.client``): no listening socket, no
peer exchange, just signed requests and their answers, as the CLI uses it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from consensus.core import Incoming, Outgoing, ProtocolCore
from mesh.config import NodeConfig
from mesh.envelope import (
    Envelope,
    EnvelopeOpener,
    EnvelopeSealer,
    PayloadRegistry,
    Rejected,
)
from mesh.errors import MessageTooLarge, Overloaded, RequestTimeout
from mesh.identity import Certificate, Identity
from mesh.messages import (
    STATUS_REQUEST,
    STATUS_RESPONSE,
    StatusRequest,
    StatusResponse,
)
from mesh.parallel import SplitMap
from mesh.peer_exchange import PeerExchange, PeerExchangeSettings
from mesh.transport import InboundFrame, Route, Transport
from mesh.trust import TrustStore

__all__ = ["RUN_FILE_NAME", "Handler", "Inbound", "Node", "NodeCounters", "wall_clock_ms"]

log = logging.getLogger(__name__)

RUN_FILE_NAME = "run.json"


def wall_clock_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Inbound:
    """A verified envelope handed to a handler, with the route to answer it on."""

    envelope: Envelope
    route: Route


Handler = Callable[[Inbound], None]


@dataclass(slots=True)
class NodeCounters:
    """What the node did with the frames it saw and the envelopes it sent."""

    received: int = 0
    sent: int = 0
    send_dropped: int = 0
    handler_errors: int = 0
    unhandled: int = 0
    responses_unmatched: int = 0


@dataclass(slots=True)
class _Pending:
    expected_sender: bytes | None
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Envelope | None = None


class Node:
    """One agentmesh node (or, with ``listen=False``, a client)."""

    def __init__(
        self,
        *,
        config: NodeConfig,
        identity: Identity,
        certificate: Certificate,
        authority_public_key: bytes,
        node_dir: Path | None = None,
        listen: bool = True,
        rng: Random | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.certificate = certificate
        self.node_dir = node_dir
        self.listens = listen
        self.counters = NodeCounters()
        self.registry = PayloadRegistry()
        self.trust = TrustStore(authority_public_key, config.envelope.trusted_senders_max)
        self.trust.add(certificate, time.time())
        self.sealer = EnvelopeSealer(identity, certificate, first_seq=time.time_ns() // 1000)
        self.opener = EnvelopeOpener(
            local_node_id=identity.node_id,
            limits=config.envelope,
            trust=self.trust,
            registry=self.registry,
            clock=self.sealer.clock,
        )
        self.transport = Transport(config.transport, self._on_frames)
        self._verify_map = SplitMap(config.envelope.verify_threads)
        self._rng = rng or Random()
        self._handlers: dict[str, Handler] = {}
        self._cores: list[ProtocolCore] = []
        self._core_by_kind: dict[str, ProtocolCore] = {}
        self._pending: dict[int, _Pending] = {}
        self._started_monotonic = time.monotonic()
        self.address: str | None = None
        self.peer_exchange: PeerExchange | None = None
        self.registry.register(STATUS_REQUEST, StatusRequest)
        self.registry.register(STATUS_RESPONSE, StatusResponse)
        if listen:
            self.on(STATUS_REQUEST, StatusRequest, self._answer_status)

    # -- construction ------------------------------------------------------------

    @classmethod
    def client(
        cls,
        *,
        config: NodeConfig,
        identity: Identity,
        certificate: Certificate,
        authority_public_key: bytes,
    ) -> Node:
        """A node that listens nowhere: it sends requests and reads their answers."""
        return cls(
            config=config,
            identity=identity,
            certificate=certificate,
            authority_public_key=authority_public_key,
            listen=False,
        )

    @property
    def node_id(self) -> bytes:
        """This node's id."""
        return self.identity.node_id

    def on(self, kind: str, model: type[BaseModel], handler: Handler) -> None:
        """Register ``model`` as the payload type of ``kind`` and ``handler`` to receive it."""
        self.registry.register(kind, model)
        if kind in self._handlers or kind in self._core_by_kind:
            raise ValueError(f"message kind {kind!r} already has a handler")
        self._handlers[kind] = handler

    def register_core(self, core: ProtocolCore) -> None:
        """Drive ``core``: deliver its message kinds to it, tick it, send its outbox."""
        for kind, model in core.message_kinds.items():
            self.registry.register(kind, model)
            if kind in self._handlers or kind in self._core_by_kind:
                raise ValueError(f"message kind {kind!r} already has a handler")
            self._core_by_kind[kind] = core
        self._cores.append(core)

    # -- running -----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[str | None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, start every loop, report the address via ``task_status``; run until cancelled."""
        if self.listens:
            bound = self.transport.bind(self.config.listen)
            self.address = self.config.advertise or bound
            self._start_peer_exchange(self.address)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.transport.serve)
                if self.listens:
                    self._write_run_file()
                    tg.start_soon(self._tick_loop)
                log.info("node %s (%s) up at %s", self.config.name, self.node_id.hex(),
                         self.address)
                task_status.started(self.address)
        finally:
            self._verify_map.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Node]:
        """Run the node for the duration of an ``async with`` block."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    def _start_peer_exchange(self, address: str) -> None:
        peers = self.config.peers
        core = PeerExchange(
            node_id=self.node_id,
            name=self.config.name,
            address=address,
            seeds=list(self.config.seeds),
            settings=PeerExchangeSettings(
                exchange_interval_s=peers.exchange_interval_ms / 1000,
                suspect_after_s=peers.suspect_after_ms / 1000,
                dead_after_s=peers.dead_after_ms / 1000,
                forget_after_s=peers.forget_after_ms / 1000,
                peers_max=peers.peers_max,
                exchange_entries_max=peers.exchange_entries_max,
            ),
            rng=self._rng,
        )
        self.peer_exchange = core
        self.register_core(core)

    async def _tick_loop(self) -> None:
        interval_s = self.config.peers.tick_interval_ms / 1000
        while True:
            now = time.monotonic()
            for core in self._cores:
                core.tick(now)
                self._flush(core)
            await anyio.sleep(interval_s)

    def _write_run_file(self) -> None:
        if self.node_dir is None:
            return
        info = {
            "name": self.config.name,
            "node_id": self.node_id.hex(),
            "listen": self.address,
            "pid": os.getpid(),
        }
        temporary = self.node_dir / (RUN_FILE_NAME + ".tmp")
        temporary.write_text(json.dumps(info) + "\n", encoding="utf-8")
        temporary.replace(self.node_dir / RUN_FILE_NAME)

    # -- sending -----------------------------------------------------------------

    async def send(
        self,
        to: bytes | str,
        kind: str,
        payloads: Sequence[BaseModel],
        *,
        trace: str | None = None,
        on_behalf_of: str | None = None,
    ) -> bool:
        """Send ``payloads`` of ``kind`` to a node id or address, as few envelopes as fit.

        Waits for room in a full send queue up to ``send_timeout_ms``; returns
        False when any envelope was dropped (counted).
        """
        address, recipient = self._resolve(to)
        if address is None:
            return False
        delivered = True
        for frame in self._seal_batches(kind, payloads, recipient, trace, on_behalf_of):
            delivered = self._count_send(await self.transport.send(address, frame)) and delivered
        return delivered

    def send_nowait(
        self,
        to: bytes | str,
        kind: str,
        payloads: Sequence[BaseModel],
        *,
        attach_certificate: bool = False,
    ) -> bool:
        """Like ``send`` but never waits: a full queue drops (and counts) at once."""
        address, recipient = self._resolve(to)
        if address is None:
            return False
        delivered = True
        for frame in self._seal_batches(
            kind, payloads, recipient, None, None, attach_certificate=attach_certificate
        ):
            delivered = self._count_send(self.transport.send_nowait(address, frame)) and delivered
        return delivered

    async def request(
        self,
        to: bytes | str,
        kind: str,
        payload: BaseModel,
        *,
        timeout_s: float | None = None,
        trace: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Envelope:
        """Send one request and wait for the envelope that answers it.

        Raises ``RequestTimeout`` when no answer arrives within ``timeout_s``
        (default ``request_timeout_ms``), ``Overloaded`` when too many requests
        are already waiting.
        """
        if len(self._pending) >= self.config.requests_in_flight_max:
            raise Overloaded(
                f"requests_in_flight_max ({self.config.requests_in_flight_max}) requests are "
                "already waiting for answers"
            )
        timeout = self.config.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        address, recipient = self._resolve(to)
        if address is None:
            raise RequestTimeout(f"no address known for node {_show(to)}")
        seq, frame = self._seal(
            kind, [payload], recipient, trace, on_behalf_of, attach_certificate=True
        )
        pending = self._pending[seq] = _Pending(expected_sender=recipient)
        try:
            with anyio.move_on_after(timeout):
                if self._count_send(await self.transport.send(address, frame)):
                    await pending.done.wait()
        finally:
            del self._pending[seq]
        if pending.answer is None:
            raise RequestTimeout(f"no answer to {kind} from {_show(to)} within {timeout:.3g} s")
        return pending.answer

    def reply(self, inbound: Inbound, kind: str, payload: BaseModel) -> bool:
        """Answer a request along the route it came by."""
        request = inbound.envelope
        _, frame = self._seal(
            kind,
            [payload],
            request.sender,
            request.trace,
            None,
            reply_to=request.seq,
            attach_certificate=True,
        )
        return self._count_send(self.transport.reply(inbound.route, frame))

    def _resolve(self, to: bytes | str) -> tuple[str | None, bytes | None]:
        if isinstance(to, str):
            return to, None
        address = self.peer_exchange.address_of(to) if self.peer_exchange else None
        if address is None:
            self.counters.send_dropped += 1
            log.debug("no address known for node %s", to.hex())
        return address, to

    def _seal(
        self,
        kind: str,
        payloads: Sequence[BaseModel],
        recipient: bytes | None,
        trace: str | None,
        on_behalf_of: str | None,
        *,
        reply_to: int | None = None,
        attach_certificate: bool = False,
    ) -> tuple[int, bytes]:
        seq, frame = self.sealer.seal(
            kind,
            payloads,
            wall_ms=wall_clock_ms(),
            recipient=recipient,
            trace=trace,
            on_behalf_of=on_behalf_of,
            reply_to=reply_to,
            attach_certificate=attach_certificate,
        )
        limit = self.config.envelope.envelope_size_bytes_max
        if len(frame) > limit:
            raise MessageTooLarge(
                f"{kind}: an envelope of {len(payloads)} payload(s) takes {len(frame)} bytes, "
                f"above envelope_size_bytes_max ({limit})"
            )
        return seq, frame

    def _seal_batches(
        self,
        kind: str,
        payloads: Sequence[BaseModel],
        recipient: bytes | None,
        trace: str | None,
        on_behalf_of: str | None,
        *,
        attach_certificate: bool = False,
    ) -> list[bytes]:
        """Seal ``payloads`` into as few envelopes as the entry and size limits allow."""
        per_envelope = self.config.envelope.batch_entries_max
        frames: list[bytes] = []
        for start in range(0, len(payloads), per_envelope):
            chunk = payloads[start : start + per_envelope]
            try:
                frames.append(
                    self._seal(kind, chunk, recipient, trace, on_behalf_of,
                               attach_certificate=attach_certificate)[1]
                )
            except MessageTooLarge:
                if len(chunk) == 1:
                    raise
                half = len(chunk) // 2
                for part in (chunk[:half], chunk[half:]):
                    frames += self._seal_batches(kind, part, recipient, trace, on_behalf_of,
                                                 attach_certificate=attach_certificate)
        return frames

    def _count_send(self, queued: bool) -> bool:
        if queued:
            self.counters.sent += 1
        else:
            self.counters.send_dropped += 1
        return queued

    def _flush(self, core: ProtocolCore) -> None:
        for out in core.take_outbox():
            self._send_outgoing(out)

    def _send_outgoing(self, out: Outgoing) -> None:
        target: bytes | str = out.to_address if out.to_address is not None else out.to_node  # type: ignore[assignment]
        try:
            self.send_nowait(target, out.kind, out.payloads,
                             attach_certificate=out.attach_certificate)
        except MessageTooLarge as exc:
            self.counters.send_dropped += 1
            log.error("core message dropped: %s", exc)

    # -- receiving ---------------------------------------------------------------

    def _on_frames(self, frames: list[InboundFrame]) -> None:
        wall_ms = wall_clock_ms()
        now_unix_s = wall_ms / 1000
        stepped: set[int] = set()
        self.counters.received += len(frames)
        outcomes = self.opener.open_many(
            [f.frame for f in frames],
            wall_ms=wall_ms,
            now_unix_s=now_unix_s,
            parallel_map=self._verify_map,
        )
        for inbound_frame, opened in zip(frames, outcomes, strict=True):
            if isinstance(opened, Rejected):
                log.debug("rejected %s: %s", opened.reason.value, opened.detail)
                continue
            self._dispatch(Inbound(opened, inbound_frame.route), stepped)
        for core in self._cores:
            if id(core) in stepped:
                self._flush(core)

    def _dispatch(self, inbound: Inbound, stepped: set[int]) -> None:
        envelope = inbound.envelope
        if envelope.reply_to is not None:
            pending = self._pending.get(envelope.reply_to)
            if pending is None or pending.answer is not None or (
                pending.expected_sender not in (None, envelope.sender)
            ):
                self.counters.responses_unmatched += 1
                return
            pending.answer = envelope
            pending.done.set()
            return
        handler = self._handlers.get(envelope.kind)
        if handler is not None:
            try:
                handler(inbound)
            except Exception:
                self.counters.handler_errors += 1
                log.exception("handler for %s failed", envelope.kind)
            return
        core = self._core_by_kind.get(envelope.kind)
        if core is None:
            self.counters.unhandled += 1
            return
        for payload in envelope.payloads:
            core.step(Incoming(envelope.sender, envelope.kind, payload))
        stepped.add(id(core))

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This node's status, as ``agentmesh status --json`` reports it."""
        peers = self.peer_exchange.peers() if self.peer_exchange else []
        counters = self.counters
        return {
            "name": self.config.name,
            "node_id": self.node_id.hex(),
            "listen": self.address,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "peers": [
                {
                    "node_id": p.node_id.hex(),
                    "name": p.name,
                    "address": p.address,
                    "state": p.state.value,
                    "silent_for_s": round(p.silent_for_s, 3),
                }
                for p in peers
            ],
            "counters": {
                "received": counters.received,
                "accepted": self.opener.accepted,
                "sent": counters.sent,
                "send_dropped": counters.send_dropped,
                "handler_errors": counters.handler_errors,
                "unhandled": counters.unhandled,
                "responses_unmatched": counters.responses_unmatched,
                "rejected": self.opener.rejected_by_name(),
                "transport": self.transport.counters.as_dict(),
            },
        }

    def _answer_status(self, inbound: Inbound) -> None:
        self.reply(inbound, STATUS_RESPONSE, StatusResponse(status=self.status()))


def _show(to: bytes | str) -> str:
    return to if isinstance(to, str) else to.hex()
