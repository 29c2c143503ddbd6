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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from consensus.core import Incoming, Outgoing, ProtocolCore, coalesce
from consensus.gossip import Gossip
from mesh.codec import pack
from mesh.config import NodeConfig
from mesh.envelope import (
    Envelope,
    EnvelopeOpener,
    EnvelopeSealer,
    PayloadRegistry,
    Rejected,
)
from mesh.errors import MeshError, MessageTooLarge, Overloaded, RequestTimeout
from mesh.gossip_api import NodeGossip
from mesh.identity import Certificate, Identity
from mesh.kv_client import KVClient
from mesh.kv_messages import (
    KV_ANSWER,
    KV_CALL,
    KV_WRITES,
    KV_WRITTEN,
    KVAnswer,
    KVCall,
    KVWrites,
    KVWritten,
    written_payloads,
)
from mesh.link_keys import LinkKeys
from mesh.membership import Member, Membership, MemberState
from mesh.messages import (
    GOSSIP_REQUEST,
    GOSSIP_RESPONSE,
    STATUS_REQUEST,
    STATUS_RESPONSE,
    GossipRequest,
    GossipResponse,
    StatusRequest,
    StatusResponse,
)
from mesh.parallel import SplitMap
from mesh.raft_service import RaftService
from mesh.transport import InboundFrame, Route, Transport
from mesh.trust import TrustStore

__all__ = [
    "MEMBERS_FILE_NAME",
    "RUN_FILE_NAME",
    "Handler",
    "Inbound",
    "Node",
    "NodeCounters",
    "wall_clock_ms",
]

log = logging.getLogger(__name__)

RUN_FILE_NAME = "run.json"
MEMBERS_FILE_NAME = "members.json"
NODE_METADATA_PREFIX = "node/"
_MEMBERS_FILE_INTERVAL_S = 2.0
_CERTIFICATE_FIRST_ENVELOPES = 3


def wall_clock_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Inbound:
    """A verified envelope handed to a handler, with the route to answer it on."""

    envelope: Envelope
    route: Route


Handler = Callable[[Inbound], None]


_STATUS_FIELDS = frozenset({"name", "node_id", "listen", "pid", "uptime_s", "peers",
                            "membership", "gossip", "raft", "counters"})
"""The fields ``Node.status`` always has; ``add_status`` sections may not reuse them."""


@dataclass(slots=True)
class NodeCounters:
    """What the node did with the frames it saw and the envelopes it sent."""

    received: int = 0
    sent: int = 0
    send_dropped: int = 0
    handler_errors: int = 0
    unhandled: int = 0
    responses_unmatched: int = 0
    loop_lag_max_ms: int = 0
    sent_local: int = 0
    """Core messages to this node itself, handed over in memory (never sealed)."""
    received_local: int = 0


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
        self.links = LinkKeys(identity, self.trust, config.envelope.trusted_senders_max)
        self.sealer = EnvelopeSealer(
            identity, certificate, first_seq=time.time_ns() // 1000,
            links=self.links if config.envelope.link_macs else None,
        )
        self.opener = EnvelopeOpener(
            local_node_id=identity.node_id,
            limits=config.envelope,
            trust=self.trust,
            registry=self.registry,
            clock=self.sealer.clock,
            links=self.links,
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
        self.membership: Membership | None = None
        self._gossip: NodeGossip | None = None
        self._after_flush: dict[int, Callable[[], None]] = {}
        self._members_dirty = False
        self._certificates_sent: dict[bytes, int] = {}  # insertion order: oldest first
        # Who answered from a peer address we send to: envelopes sent to the address
        # then name that node as recipient, and so may carry a link MAC.
        self._address_ids: dict[str, bytes] = {}  # insertion order: oldest first
        self._services: list[Callable[[], Any]] = []
        self._status_sections: dict[str, Callable[[], Any]] = {}
        self._local: deque[Outgoing] = deque()
        self._local_wanted = anyio.Event()
        self._run_started = False
        #: This node's Raft voter, if it is one (``config.raft.voters``).
        self.raft: RaftService | None = None
        self._kv: KVClient | None = None
        self._kv_answers: dict[tuple[Route, bytes], list[KVAnswer]] = {}
        # Applied writes that came in columns, answered in columns: call ids, responses.
        self._kv_written: dict[tuple[Route, bytes], tuple[list[int], list[bytes]]] = {}
        self.registry.register(STATUS_REQUEST, StatusRequest)
        self.registry.register(STATUS_RESPONSE, StatusResponse)
        self.registry.register(GOSSIP_RESPONSE, GossipResponse)
        if listen:
            self.on(STATUS_REQUEST, StatusRequest, self._answer_status)
            self.on(GOSSIP_REQUEST, GossipRequest, self._answer_gossip)
        else:
            self.registry.register(GOSSIP_REQUEST, GossipRequest)

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

    def register_core(
        self, core: ProtocolCore, *, after_flush: Callable[[], None] | None = None
    ) -> None:
        """Drive ``core``: deliver its message kinds to it, tick it, send its outbox.

        ``after_flush`` runs after every step batch and tick of the core, once its
        outbox is sent: the place to collect the core's other outputs.
        """
        for kind, model in core.message_kinds.items():
            self.registry.register(kind, model)
            if kind in self._handlers or kind in self._core_by_kind:
                raise ValueError(f"message kind {kind!r} already has a handler")
            self._core_by_kind[kind] = core
        self._cores.append(core)
        if after_flush is not None:
            self._after_flush[id(core)] = after_flush

    def add_service(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Start ``fn()`` as a long-running task with the node, in its task group.

        Call before ``run``; the task is cancelled when the node stops. An exception
        out of ``fn`` stops the node like any of its own loops, so a service should
        catch and count its own errors. ``MeshError`` if the node already runs.
        """
        if self._run_started:
            raise MeshError("add_service: the node is already running")
        self._services.append(fn)

    def add_status(self, name: str, section: Callable[[], Any]) -> None:
        """Report ``section()`` (JSON-able) under ``name`` in ``status()``, e.g. a
        service's counters. ``ValueError`` if the name is taken."""
        if name in self._status_sections or name in _STATUS_FIELDS:
            raise ValueError(f"status section {name!r} already exists")
        self._status_sections[name] = section

    # -- running -----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[str | None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, start every loop, report the address via ``task_status``; run until cancelled."""
        self._run_started = True
        if self.listens:
            bound = self.transport.bind(self.config.listen)
            self.address = self.config.advertise or bound
            self._start_protocols(self.address)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.transport.serve)
                for service in self._services:
                    tg.start_soon(service)
                tg.start_soon(self._local_loop)
                if self.listens:
                    self._write_run_file()
                    tg.start_soon(self._tick_loop)
                log.info("node %s (%s) up at %s", self.config.name, self.node_id.hex(),
                         self.address)
                task_status.started(self.address)
        finally:
            self._verify_map.close()
            if self.raft is not None:
                self.raft.storage.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Node]:
        """Run the node for the duration of an ``async with`` block."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    def _start_protocols(self, address: str) -> None:
        now = time.monotonic()
        membership = Membership(
            node_id=self.node_id,
            name=self.config.name,
            address=address,
            settings=self.config.membership.to_settings(),
            rng=self._rng,
            seeds=[*self.config.seeds, *self._remembered_addresses(address)],
            now=now,
        )
        gossip = Gossip(
            node_id=self.node_id,
            settings=self.config.gossip.to_settings(),
            rng=self._rng,
            wall_ms=wall_clock_ms,
            now=now,
        )
        self.membership = membership
        self._gossip = NodeGossip(
            gossip,
            subscription_queue_max=self.config.gossip.subscription_queue_max,
            after_write=lambda: self._flush(gossip),
        )
        self.register_core(membership, after_flush=self._after_membership)
        self.register_core(gossip, after_flush=self._after_gossip)
        self._gossip.set(
            NODE_METADATA_PREFIX + self.node_id.hex(),
            {"name": self.config.name, "listen": address, "pid": os.getpid()},
        )
        self._start_raft()

    def _start_raft(self) -> None:
        voters = self.config.raft.voter_ids()
        if not voters:
            return
        if self.node_id in voters:
            if self.node_dir is None:
                raise MeshError("a Raft voter needs a node directory for its log")
            service = self.raft = RaftService(self, self.config.raft, self.node_dir)
            service.after_answers = self.flush_kv_answers
            self.register_core(service)
            self.on(KV_CALL, KVCall, self._on_kv_calls)
            self.on(KV_WRITES, KVWrites, self._on_kv_writes)
            self.registry.register(KV_WRITTEN, KVWritten)
            self._services.append(service.run)
        others = [v for v in voters if v != self.node_id]
        self._kv = KVClient(self, self.config.raft, lambda: others, local=self.raft)
        self._services.append(self._kv.run)

    @property
    def kv(self) -> KVClient:
        """The replicated KV store (linearizable): put, get, cas, delete, list, locks."""
        if self._kv is None:
            raise MeshError("this node has no replicated store: raft.voters is empty "
                            "(agentmesh up --voters N sets it)")
        return self._kv

    def _kv_answerer(self, inbound: Inbound) -> Callable[[KVAnswer], None]:
        """Collects answers to ``inbound``'s calls for the next flush, by route and sender."""
        key = (inbound.route, inbound.envelope.sender)

        def answer(reply: KVAnswer) -> None:
            # Looked up at answer time: a flush replaces the dict, and most answers
            # come after one (once their write is applied or their read index is).
            self._kv_answers.setdefault(key, []).append(reply)

        return answer

    def _on_kv_calls(self, inbound: Inbound) -> None:
        assert self.raft is not None
        answer = self._kv_answerer(inbound)
        for call in inbound.envelope.payloads:
            assert isinstance(call, KVCall)
            self.raft.submit(call, answer)
        self.flush_kv_answers()

    def _on_kv_writes(self, inbound: Inbound) -> None:
        assert self.raft is not None
        key = (inbound.route, inbound.envelope.sender)
        # Applied writes are answered in columns too; refusals and retries as calls.
        answer = self._kv_answerer(inbound)

        def written(call_ids: list[int], responses: list[bytes]) -> None:
            columns = self._kv_written.get(key)
            if columns is None:
                columns = self._kv_written[key] = ([], [])
            columns[0].extend(call_ids)
            columns[1].extend(responses)

        for writes in inbound.envelope.payloads:
            assert isinstance(writes, KVWrites)
            self.raft.submit_writes(writes.call_ids, writes.client_ids, writes.seqs,
                                    writes.commands, answer, written)
        self.flush_kv_answers()

    def flush_kv_answers(self) -> None:
        """Send the KV answers collected so far, many per envelope, along their routes."""
        if self._kv_written:
            written, self._kv_written = self._kv_written, {}
            budget = self.config.envelope.envelope_size_bytes_max // 2
            for (route, recipient), (call_ids, responses) in written.items():
                self._reply_kv(route, recipient, KV_WRITTEN,
                               written_payloads(call_ids, responses, budget))
        if self._kv_answers:
            batches, self._kv_answers = self._kv_answers, {}
            for (route, recipient), answers in batches.items():
                self._reply_kv(route, recipient, KV_ANSWER, answers)

    def _reply_kv(self, route: Route, recipient: bytes, kind: str,
                  payloads: Sequence[BaseModel]) -> None:
        try:
            frames = self._seal_batches(kind, payloads, recipient, None, None,
                                        attach_certificate=True)
        except MessageTooLarge as exc:
            self.counters.send_dropped += 1
            log.error("kv answers dropped: %s", exc)
            return
        for frame in frames:
            self._count_send(self.transport.reply(route, frame))

    @property
    def gossip(self) -> NodeGossip:
        """The gossip state shared with every node: get, set, delete, subscribe."""
        if self._gossip is None:
            raise MeshError("this node holds no gossip state: it is a client or not running")
        return self._gossip

    def _after_membership(self) -> None:
        assert self.membership is not None
        events = self.membership.take_events()
        if not events:
            return
        for event in events:
            log.info("member %s (%s) %s", event.member.name, event.member.node_id.hex(),
                     event.kind.value)
        if self._gossip is not None:
            self._gossip.core.update_members([m.node_id for m in self.membership.live_members()])
        self._members_dirty = True

    def _after_gossip(self) -> None:
        if self._gossip is not None:
            self._gossip.deliver(self._gossip.core.take_changes())

    def _remembered_addresses(self, own_address: str) -> list[str]:
        """Addresses of the members alive when this node last ran: seeds for a restart."""
        if self.node_dir is None:
            return []
        try:
            data = json.loads((self.node_dir / MEMBERS_FILE_NAME).read_text(encoding="utf-8"))
            addresses = [str(a) for a in data["addresses"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [a for a in addresses if a != own_address][: self.config.membership.members_max]

    def _write_members_file(self) -> None:
        """Remember live members' addresses (atomically, synced) for the next start."""
        if self.node_dir is None or self.membership is None:
            return
        addresses = [m.address for m in self.membership.live_members()]
        temporary = self.node_dir / (MEMBERS_FILE_NAME + ".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump({"addresses": addresses}, file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self.node_dir / MEMBERS_FILE_NAME)

    async def leave(self) -> None:
        """Tell the mesh this node is leaving, and give the news a moment to go out."""
        if self.membership is None:
            return
        self.membership.leave()
        self._flush(self.membership)
        await anyio.sleep(self.config.leave_grace_ms / 1000)

    async def _tick_loop(self) -> None:
        interval_s = self.config.tick_interval_ms / 1000
        members_written = 0.0
        previous = time.monotonic()
        while True:
            now = time.monotonic()
            # A late tick means the event loop was busy elsewhere: every protocol timer
            # was late by as much (reported in status as loop_lag_max_ms).
            lag_ms = int((now - previous - interval_s) * 1000)
            previous = now
            if lag_ms > self.counters.loop_lag_max_ms:
                self.counters.loop_lag_max_ms = lag_ms
                if lag_ms >= 100:
                    log.warning("the event loop was blocked for about %d ms", lag_ms)
            if lag_ms > 0:
                # Late: let the receivers hand over what arrived meanwhile first, so
                # that a core does not time out peers whose answers are waiting in
                # our own socket (a leader would step down for want of a quorum).
                for _ in range(2):
                    await anyio.lowlevel.checkpoint()
                now = time.monotonic()
            for core in self._cores:
                core.tick(now)
                self._flush(core)
            if self._members_dirty and now - members_written >= _MEMBERS_FILE_INTERVAL_S:
                self._members_dirty = False
                members_written = now
                try:
                    self._write_members_file()
                except OSError as exc:
                    log.warning("could not remember members: %s", exc)
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
            if isinstance(to, str):
                self.forget_address(to)
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
            return to, self._address_ids.get(to)
        address = self.membership.address_of(to) if self.membership else None
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
        wall_us = time.time_ns() // 1000
        seq, frame = self.sealer.seal(
            kind,
            payloads,
            wall_ms=wall_us // 1000,
            wall_us=wall_us,
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
        self.send_core_messages(core.take_outbox())
        after = self._after_flush.get(id(core))
        if after is not None:
            after()

    def send_core_message(self, out: Outgoing) -> None:
        """Send one message a protocol core produced (for cores with their own driver)."""
        self._send_outgoing(out)

    def send_core_messages(self, outbox: Sequence[Outgoing]) -> None:
        """Send a core's outbox, runs of one kind to one peer in one envelope
        (``consensus.core.coalesce``)."""
        for out in coalesce(outbox) if len(outbox) > 1 else outbox:
            self._send_outgoing(out)

    def _send_outgoing(self, out: Outgoing) -> None:
        if out.to_node == self.node_id and out.kind in self._core_by_kind:
            # To ourselves: hand it over in memory (after this flush, not inside it).
            if len(self._local) >= self.config.local_queue_messages_max:
                self.counters.send_dropped += 1
                return
            self._local.append(out)
            self._local_wanted.set()
            self.counters.sent_local += 1
            return
        target: bytes | str = out.to_address if out.to_address is not None else out.to_node  # type: ignore[assignment]
        try:
            self.send_nowait(target, out.kind, out.payloads,
                             attach_certificate=out.attach_certificate
                             or self._first_contact(out.to_node))
        except MessageTooLarge as exc:
            self.counters.send_dropped += 1
            log.error("core message dropped: %s", exc)

    def _first_contact(self, node_id: bytes | None) -> bool:
        """Whether to attach our certificate because this peer may not have it yet.

        A core that learns of a member through others (gossip picking a peer
        membership heard of second-hand) would otherwise send it envelopes it
        must refuse as ``unknown_sender``. The first few envelopes to each
        node carry the certificate; the map is bounded like the trust store.
        """
        if node_id is None:
            return False
        sent = self._certificates_sent.get(node_id, 0)
        self._remember_newest(self._certificates_sent, node_id, sent + 1)
        return sent < _CERTIFICATE_FIRST_ENVELOPES

    def forget_address(self, address: str) -> None:
        """Stop naming the node last heard from at ``address`` as the recipient of what
        is sent there: it went silent, and another node may have taken the address
        (one that would refuse envelopes addressed to the old one). Signed envelopes
        go there until it answers again."""
        self._address_ids.pop(address, None)

    def _remember_newest(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        """Set ``key`` as the newest of ``mapping`` (insertion order, oldest first),
        forgetting the oldest beyond the trust store's bound."""
        mapping.pop(key, None)
        mapping[key] = value
        if len(mapping) > self.config.envelope.trusted_senders_max:
            del mapping[next(iter(mapping))]

    # -- receiving ---------------------------------------------------------------

    def _on_frames(self, frames: list[InboundFrame]) -> None:
        raft = self.raft
        if raft is None:
            self._deliver(frames)
            return
        raft.begin_batch()
        try:
            self._deliver(frames)
        finally:
            raft.end_batch()

    def _deliver(self, frames: list[InboundFrame]) -> None:
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
        address_ids = self._address_ids
        for inbound_frame, opened in zip(frames, outcomes, strict=True):
            if isinstance(opened, Rejected):
                log.debug("rejected %s: %s", opened.reason.value, opened.detail)
                continue
            address = inbound_frame.route.address
            if address is not None and address_ids.get(address) != opened.sender:
                self._remember_newest(address_ids, address, opened.sender)
            self._dispatch(Inbound(opened, inbound_frame.route), stepped)
        for core in self._cores:
            if id(core) in stepped:
                self._flush(core)

    async def _local_loop(self) -> None:
        """Deliver the core messages this node sent itself, as if received."""
        while True:
            if not self._local:
                self._local_wanted = anyio.Event()
                await self._local_wanted.wait()
            batch = list(self._local)
            self._local.clear()
            stepped: set[int] = set()
            for out in batch:
                core = self._core_by_kind[out.kind]
                for payload in out.payloads:
                    core.step(Incoming(self.node_id, out.kind, payload))
                stepped.add(id(core))
            self.counters.received_local += len(batch)
            for core in self._cores:
                if id(core) in stepped:
                    self._flush(core)
            await anyio.lowlevel.checkpoint()

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
        members = self.membership.members() if self.membership else []
        counters = self.counters
        return {
            "name": self.config.name,
            "node_id": self.node_id.hex(),
            "listen": self.address,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "peers": [_member_status(m) for m in members],
            "membership": self._membership_status(),
            "gossip": self._gossip_status(),
            "raft": self._raft_status(),
            "counters": {
                "received": counters.received,
                "accepted": self.opener.accepted,
                "accepted_by_link_mac": self.opener.accepted_by_link_mac,
                "sent": counters.sent,
                "send_dropped": counters.send_dropped,
                "handler_errors": counters.handler_errors,
                "unhandled": counters.unhandled,
                "responses_unmatched": counters.responses_unmatched,
                "loop_lag_max_ms": counters.loop_lag_max_ms,
                "sent_local": counters.sent_local,
                "received_local": counters.received_local,
                "rejected": self.opener.rejected_by_name(),
                "transport": self.transport.counters.as_dict(),
            },
            **self._section_statuses(),
        }

    def _section_statuses(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for name, section in self._status_sections.items():
            try:
                sections[name] = section()
            except Exception as exc:  # a broken section must not break status
                log.exception("status section %s failed", name)
                sections[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return sections

    def _membership_status(self) -> dict[str, Any] | None:
        if self.membership is None:
            return None
        return {
            "incarnation": self.membership.incarnation,
            "health_score": self.membership.health_score,
            "counters": dict(self.membership.counters),
        }

    def _gossip_status(self) -> dict[str, Any] | None:
        if self._gossip is None:
            return None
        core = self._gossip.core
        return {
            "keys": len(core.items()),
            "rounds": core.rounds,
            "fingerprint": core.state_fingerprint().hex(),
            "counters": dict(core.counters),
        }

    def _raft_status(self) -> dict[str, Any] | None:
        if self.raft is not None:
            status = self.raft.status()
            if self._kv is not None:
                status = {**status, "client": dict(self._kv.counters)}
            return status
        if not self.config.raft.voters:
            return None
        return {"role": "client", "term": None, "leader_id": None, "commit_index": None,
                "applied_index": None, "voters": list(self.config.raft.voters),
                "client": dict(self._kv.counters) if self._kv is not None else None}

    def _answer_status(self, inbound: Inbound) -> None:
        self.reply(inbound, STATUS_RESPONSE, StatusResponse(status=self.status()))

    def _answer_gossip(self, inbound: Inbound) -> None:
        request = inbound.envelope.payloads[0]
        assert isinstance(request, GossipRequest)
        try:
            answer = self._gossip_operation(request)
        except (MeshError, ValueError) as exc:
            answer = GossipResponse(ok=False, error=str(exc))
        self.reply(inbound, GOSSIP_RESPONSE, answer)

    def _gossip_operation(self, request: GossipRequest) -> GossipResponse:
        gossip = self.gossip
        if request.op == "get":
            entry = gossip.entry(request.key)
            found = entry is not None and not entry.deleted
            return GossipResponse(ok=found, value=entry.value if found else None,  # type: ignore[union-attr]
                                  error=None if found else f"no key {request.key!r}")
        if request.op == "set":
            gossip.set(request.key, request.value)
            return GossipResponse(ok=True)
        if request.op == "delete":
            deleted = gossip.delete(request.key)
            return GossipResponse(ok=deleted, error=None if deleted else f"no key {request.key!r}")
        return self._gossip_listing(request.key, request.limit)

    def _gossip_listing(self, prefix: str, limit: int) -> GossipResponse:
        # The answer must fit one envelope: stop at the item limit or half the size limit.
        budget = self.config.envelope.envelope_size_bytes_max // 2
        items: list[tuple[str, Any]] = []
        for key, value in self.gossip.items(prefix):
            size = len(pack([key, value]))
            if len(items) >= limit or size > budget:
                return GossipResponse(ok=True, items=items, truncated=True)
            budget -= size
            items.append((key, value))
        return GossipResponse(ok=True, items=items)


def _member_status(member: Member) -> dict[str, Any]:
    # LEFT is shown as dead (gone), flagged as a departure rather than a failure.
    state = "dead" if member.state is MemberState.LEFT else member.state.value
    return {
        "node_id": member.node_id.hex(),
        "name": member.name,
        "address": member.address,
        "state": state,
        "left": member.state is MemberState.LEFT,
        "incarnation": member.incarnation,
    }


def _show(to: bytes | str) -> str:
    return to if isinstance(to, str) else to.hex()
