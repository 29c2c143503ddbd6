"""The SWIM membership core of one node, with the Lifeguard refinements.

How this works. Once per (health-stretched) probe interval the node pings the
next member of a shuffled round-robin. No ack within the probe timeout: it asks
``indirect_probes`` other members to ping the target for it (ping-req); they
relay the target's ack, or answer with a nack when it stays silent. No ack by
the verdict (the end of the interval, or three timeouts if later): the target
becomes SUSPECT and the suspicion is gossiped. A suspect that hears of it
refutes by raising its incarnation; if nobody refutes before the suspicion
timeout (which shrinks as other nodes confirm the suspicion), the member is
declared DEAD.

Every change is queued and piggybacked on pings, acks, ping-reqs and nacks a
limited number of times (infection-style gossip). A full table exchange
(push-pull sync) happens on join through the seeds and periodically with one
random member; while seeds or dead members are not alive they are synced with
too, which is how two halves of a healed partition find each other again.

Lifeguard parts: local health awareness (``awareness.py``) stretches this
node's own probe timing when it misses acks and nacks it expected; suspicion
timeouts shrink with independent confirmations (``suspicion.py``); nacks from
helpers tell the requester that the helpers, and so its own links, are fine;
a member we believe suspect or dead is told so first in every message we send
it, so that it refutes at once.

The core is pure: time comes from ``tick(now)``, randomness from the ``Random``
it is given, messages leave through ``take_outbox`` and table changes through
``take_events``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from random import Random
from types import MappingProxyType

from pydantic import BaseModel

from consensus.core import Incoming, Outgoing
from consensus.trusted import trusted
from mesh.membership.awareness import Awareness
from mesh.membership.broadcasts import BroadcastQueue, retransmit_limit
from mesh.membership.members import (
    LIVE_STATES,
    Member,
    MembershipEvent,
    MembershipEventKind,
    MemberState,
    supersedes,
)
from mesh.membership.messages import (
    ACK,
    ADDRESS_CHARS_MAX,
    INCARNATION_MAX,
    NACK,
    NAME_CHARS_MAX,
    NODE_ID_BYTES,
    PING,
    PING_REQ,
    SEQ_MAX,
    SYNC,
    Ack,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
    StateName,
    Sync,
)
from mesh.membership.probing import Probe, ProbeOrder, Relay
from mesh.membership.settings import MembershipSettings
from mesh.membership.suspicion import Suspicion, suspicion_timeout_min_s

__all__ = ["COUNTER_NAMES", "MESSAGE_MODELS", "Membership"]

MESSAGE_MODELS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {PING: Ping, ACK: Ack, PING_REQ: PingReq, NACK: Nack, SYNC: Sync}
)
"""The message kinds of SWIM membership and their payload models."""

# A helper nacks after this fraction of the probe timeout, so that the nack
# reaches the requester before its probe interval ends (Lifeguard).
_NACK_AFTER_FRACTION = 0.8
# A probe's verdict comes at least this many probe timeouts after it started.
_VERDICT_TIMEOUTS = 3
_PROBES_IN_FLIGHT_MAX = 8
_RELAYS_MAX = 1024
_EVENTS_MAX = 65_536
_SEEDS_MAX = 1024

COUNTER_NAMES = (
    "probes_sent",
    "probes_skipped",
    "probe_successes",
    "probe_failures",
    "indirect_probes",
    "indirect_pings_relayed",
    "acks_sent",
    "acks_relayed",
    "acks_unmatched",
    "nacks_sent",
    "nacks_received",
    "nacks_missed",
    "nacks_unmatched",
    "relays_dropped_over_limit",
    "suspicions_raised",
    "suspicion_confirmations",
    "refutations",
    "deaths_declared",
    "members_joined",
    "members_forgotten",
    "members_ignored_over_limit",
    "updates_applied",
    "updates_stale",
    "updates_ignored",
    "self_updates_ignored",
    "syncs_sent",
    "syncs_received",
    "sync_entries_ignored",
    "joins_sent",
    "pings_misdirected",
    "messages_from_self",
    "messages_unexpected",
    "messages_ignored_after_leave",
    "sends_unroutable",
    "events_dropped",
    "broadcasts_dropped",
)
"""Every counter ``Membership.counters`` reports (all start at 0)."""

_STATE_NAME: Mapping[MemberState, StateName] = {
    MemberState.ALIVE: "alive",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "dead",
    MemberState.LEFT: "left",
}
# Wire name -> state: a str-keyed dict is much cheaper than calling MemberState(name).
_STATE_OF_NAME: Mapping[str, MemberState] = {name: state for state, name in _STATE_NAME.items()}
_ALIVE = MemberState.ALIVE
_SUSPECT = MemberState.SUSPECT
_DEAD = MemberState.DEAD
_JOINED = MembershipEventKind.JOINED


@dataclass(slots=True)
class _Record:
    """A member's mutable entry in the table (``Member`` is its frozen snapshot)."""

    node_id: bytes
    name: str
    address: str
    incarnation: int
    state: MemberState
    state_since: float
    # It answered one of our messages since it was last (re)born, so it has our
    # certificate; until then we attach it.
    knows_us: bool = False
    suspicion: Suspicion | None = None
    # ``update()`` as last built; whoever changes a field it shows (name, address,
    # incarnation, state, suspicion) resets it to None.
    cached_update: MemberUpdate | None = None

    def snapshot(self) -> Member:
        return Member(
            self.node_id, self.name, self.address, self.incarnation, self.state, self.state_since
        )

    def set_contact(self, name: str, address: str) -> bool:
        """Record the member's name and address (as it states them itself); True if
        that changed them."""
        if name != self.name or address != self.address:
            self.name, self.address = name, address
            self.cached_update = None
            return True
        return False

    def update(self, suspector: bytes | None = None) -> MemberUpdate:
        """What we believe about this member, as news; ``suspector`` (for a suspect)
        names a confirmer instead of the suspicion's originator."""
        if suspector is None or self.state is not _SUSPECT:
            # The same update is sent many times (piggyback, syncs of the whole
            # table): build it once per change.
            cached = self.cached_update
            if cached is None:
                suspicion = self.suspicion
                originator = suspicion.originator if suspicion is not None else None
                cached = self.cached_update = self._build(
                    originator if self.state is _SUSPECT else None
                )
            return cached
        return self._build(suspector)  # a confirmation: passed on once

    def shown_by(self, update: MemberUpdate) -> bool:
        """Whether ``update`` says exactly what ``update()`` would say now."""
        suspicion = self.suspicion
        suspector = (
            suspicion.originator if suspicion is not None and self.state is _SUSPECT else None
        )
        return (
            update.incarnation == self.incarnation
            and _STATE_OF_NAME[update.state] is self.state
            and update.suspector == suspector
            and update.name == self.name
            and update.address == self.address
        )

    def _build(self, suspector: bytes | None) -> MemberUpdate:
        state = _STATE_NAME[self.state]
        return _member_update(
            self.node_id, self.name, self.address, self.incarnation, state, suspector
        )


# Equal updates are one object: they are immutable values, and the cores of one process
# (a simulated cluster is thousands of them) build the same news about each member again
# and again, a few hundred bytes each. Cleared when full, so it stays small.
_UPDATES: dict[tuple[bytes, str, str, int, StateName, bytes | None], MemberUpdate] = {}
_UPDATES_MAX = 1 << 16


def _member_update(
    node_id: bytes,
    name: str,
    address: str,
    incarnation: int,
    state: StateName,
    suspector: bytes | None,
) -> MemberUpdate:
    """The ``MemberUpdate`` with these values (a shared instance, see ``_UPDATES``)."""
    key = (node_id, name, address, incarnation, state, suspector)
    update = _UPDATES.get(key)
    if update is None:
        if len(_UPDATES) >= _UPDATES_MAX:
            _UPDATES.clear()
        # Values from this core's own valid table: no validation on this hot path.
        update = _UPDATES[key] = trusted(
            MemberUpdate,
            {
                "node_id": node_id,
                "name": name,
                "address": address,
                "incarnation": incarnation,
                "state": state,
                "suspector": suspector,
            },
        )
    return update


class Membership:
    """SWIM membership with Lifeguard for one node: a pure core (see module doc)."""

    def __init__(
        self,
        *,
        node_id: bytes,
        name: str,
        address: str,
        settings: MembershipSettings,
        rng: Random,
        seeds: Sequence[str] = (),
        now: float = 0.0,
        incarnation: int = 0,
        known_members: Sequence[tuple[bytes, str, str]] = (),
    ) -> None:
        """``known_members``: (node id, name, address) of members to start with as
        alive at incarnation 0, as if already joined (no join, no broadcast); a
        node that knows members does not contact its seeds."""
        _check_identity(node_id, name, address, incarnation)
        self._node_id = node_id
        self._name = name
        self._address = address
        self._incarnation = incarnation
        self._settings = settings
        self._rng = rng
        self._now = now
        self._left = False
        self._members: dict[bytes, _Record] = {}
        self._live_count = 0
        # Suspects in the order they became suspect (value: that suspicion's number),
        # and a heap of their deadlines, so a tick need not look at every suspect:
        # (deadline, suspicion number, node id). An entry left behind by a refutation
        # or by a confirmation (which moves the deadline earlier) is skipped when it
        # surfaces: its number is no longer the node's, or it is not due yet.
        self._suspects: dict[bytes, int] = {}
        self._suspicions_started = 0
        self._deadlines: list[tuple[float, int, bytes]] = []
        self._live_sorted: list[bytes] | None = None  # live_node_ids(), until it changes
        self._gone: dict[bytes, None] = {}  # DEAD or LEFT members, insertion-ordered
        self._order = ProbeOrder(rng)
        self._probes: dict[int, Probe] = {}  # by seq; a few overlap (see _start_probe)
        self._relays: dict[int, Relay] = {}
        self._seq = 0
        self._awareness = Awareness(settings.awareness_max)
        self._broadcasts = BroadcastQueue(capacity=settings.members_max + 1)
        self._outbox: list[Outgoing] = []
        self._events: list[MembershipEvent] = []
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._seeds: list[str] = []
        self._add_seed_addresses(seeds)
        # What ``_send_sync`` sends before sampling; None after any change of the table
        # (or of this node's own entry).
        self._sync_entries: tuple[MemberUpdate, ...] | None = None
        # Random phases, so that nodes started together do not probe and sync in lockstep.
        self._next_probe_at = now + rng.uniform(0.0, settings.probe_interval_s)
        self._next_push_pull_at = now + rng.uniform(0.5, 1.0) * settings.push_pull_interval_s
        self._next_join_at = now
        self._next_reap_at = now + settings.probe_interval_s
        self._add_known(known_members)
        self._order.extend_shuffled(list(self._members))

    # -- identity and views ----------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        """This node's id."""
        return self._node_id

    @property
    def name(self) -> str:
        """This node's name."""
        return self._name

    @property
    def address(self) -> str:
        """This node's transport address."""
        return self._address

    @property
    def incarnation(self) -> int:
        """This node's incarnation: raised to refute rumours about it and to leave."""
        return self._incarnation

    @property
    def settings(self) -> MembershipSettings:
        """The settings this core runs with."""
        return self._settings

    @property
    def has_left(self) -> bool:
        """Whether ``leave`` was called; the core is then inert."""
        return self._left

    @property
    def health_score(self) -> int:
        """Lifeguard local health: 0 when healthy, up to ``awareness_max``."""
        return self._awareness.score

    @property
    def probe_interval_effective_s(self) -> float:
        """The probe interval stretched by the health score."""
        return self._awareness.scale(self._settings.probe_interval_s)

    @property
    def probe_timeout_effective_s(self) -> float:
        """The probe timeout stretched by the health score."""
        return self._awareness.scale(self._settings.probe_timeout_s)

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters (names in ``COUNTER_NAMES``)."""
        counters = dict(self._counters)
        counters["broadcasts_dropped"] = self._broadcasts.dropped
        return counters

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """The five ``swim.*`` kinds and their payload models."""
        return MESSAGE_MODELS

    def members(self) -> list[Member]:
        """Every member known (any state), this node excluded, sorted by node id."""
        return [self._members[key].snapshot() for key in sorted(self._members)]

    def live_members(self) -> list[Member]:
        """Members ALIVE or SUSPECT (suspects still take part), sorted by node id."""
        return [m for m in self.members() if m.state.live]

    def live_node_ids(self) -> list[bytes]:
        """Ids of the live members, sorted: ``live_members`` without building snapshots."""
        # Drivers ask after every change of the table (a large cluster's partition is
        # thousands of changes): sorted once per change of the live set.
        live = self._live_sorted
        if live is None:
            members = self._members
            live = self._live_sorted = [key for key in sorted(members) if members[key].state.live]
        return list(live)

    def member(self, node_id: bytes) -> Member | None:
        """The member ``node_id``, or None if unknown (or this node)."""
        record = self._members.get(node_id)
        return record.snapshot() if record is not None else None

    def address_of(self, node_id: bytes) -> str | None:
        """Where ``node_id`` can be reached (kept for dead members until forgotten)."""
        if node_id == self._node_id:
            return self._address
        record = self._members.get(node_id)
        return record.address if record is not None else None

    # -- driver interface ------------------------------------------------------------

    def take_outbox(self) -> list[Outgoing]:
        """Messages produced since the last call, in order."""
        out = self._outbox
        if out:  # drivers ask after every batch, mostly in vain
            self._outbox = []
            return out
        return []

    def take_events(self) -> list[MembershipEvent]:
        """Membership changes since the last call, in order."""
        events = self._events
        if events:
            self._events = []
            return events
        return []

    def add_seeds(self, addresses: Sequence[str]) -> None:
        """Add seed addresses and sync with the new ones at once."""
        for address in self._add_seed_addresses(addresses):
            if not self._left:
                self._send_sync(None, address, wants_reply=True)
                self._counters["joins_sent"] += 1

    def leave(self) -> None:
        """Leave gracefully: tell some members at once, gossip it, then go quiet.

        The LEFT news (at a raised incarnation, so it beats anything said about
        this node before) goes straight to as many random live members as one
        update is retransmitted to. Afterwards the core neither probes nor
        answers: a left node is gone for everybody.
        """
        if self._left:
            return
        self._left = True
        self._incarnation = min(self._incarnation + 1, INCARNATION_MAX)
        self._sync_entries = None
        self._probes.clear()
        self._relays.clear()
        news = self._self_update()
        self._broadcasts.enqueue(news)
        live = self._live_ids()
        fanout = min(len(live), self._retransmit_limit())
        for node_id in self._rng.sample(live, fanout):
            self._send(SYNC, self._sync(wants_reply=False, members=(news,)), node_id)

    def tick(self, now: float) -> None:
        """Advance time: probe, relay nacks, expire suspicions, forget, join, sync."""
        assert now >= self._now, (now, self._now)
        self._now = now
        if self._left:
            return
        # Forget first: whatever this tick sends by node id (a relay's nack to its
        # requester, say) must go to a member still in the table when it is drained.
        self._tick_reap(now)
        self._tick_probe(now)
        self._tick_relays(now)
        self._tick_suspicions(now)
        self._tick_join(now)
        self._tick_push_pull(now)

    def step(self, message: Incoming) -> None:
        """Handle one verified ``swim.*`` message; odd input is counted, never raised."""
        if self._left:
            self._counters["messages_ignored_after_leave"] += 1
            return
        if message.sender == self._node_id:
            self._counters["messages_from_self"] += 1
            return
        payload = message.payload
        model = MESSAGE_MODELS.get(message.kind)
        if model is None or not isinstance(payload, model):
            self._counters["messages_unexpected"] += 1
            return
        sender = message.sender
        if isinstance(payload, Ping):
            self._on_ping(sender, payload)
        elif isinstance(payload, Ack):
            self._on_ack(sender, payload)
        elif isinstance(payload, PingReq):
            self._on_ping_req(sender, payload)
        elif isinstance(payload, Nack):
            self._on_nack(sender, payload)
        else:
            assert isinstance(payload, Sync), payload
            self._on_sync(sender, payload)

    def _check_invariants(self) -> None:
        """Assert the table's internal consistency (for tests and debugging)."""
        assert self._node_id not in self._members, self._node_id
        assert len(self._members) <= self._settings.members_max, len(self._members)
        live = [r for r in self._members.values() if r.state in LIVE_STATES]
        assert self._live_count == len(live), (self._live_count, len(live))
        suspects = [k for k, r in self._members.items() if r.state is MemberState.SUSPECT]
        assert sorted(suspects) == sorted(self._suspects), (suspects, self._suspects)
        for record in self._members.values():
            assert (record.suspicion is not None) == (record.state is MemberState.SUSPECT), record
        assert len(self._probes) <= _PROBES_IN_FLIGHT_MAX, self._probes
        assert len(self._relays) <= _RELAYS_MAX, len(self._relays)
        assert 0 <= self._awareness.score <= self._settings.awareness_max, self._awareness.score
        for record in self._members.values():
            assert record.cached_update is None or record.shown_by(record.cached_update), record
        if self._live_sorted is not None:
            live_ids = [key for key, record in sorted(self._members.items()) if record.state.live]
            assert self._live_sorted == live_ids, "cached live ids are stale"
        for node_id, number in self._suspects.items():
            suspicion = self._members[node_id].suspicion
            assert suspicion is not None, node_id
            assert (suspicion.deadline(), number, node_id) in self._deadlines, node_id
        if self._sync_entries is not None:
            table = (self._self_update(), *[r.update() for r in self._members.values()])
            assert self._sync_entries == table, "cached sync entries are stale"

    # -- probing ---------------------------------------------------------------------

    def _tick_probe(self, now: float) -> None:
        if self._probes:
            for seq, probe in list(self._probes.items()):
                if not probe.indirect_sent and now >= probe.ack_deadline:
                    self._ask_helpers(probe)
                if now >= probe.verdict_at:
                    del self._probes[seq]
                    self._probe_failed(probe)
        if now >= self._next_probe_at:
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        interval_s = self._awareness.scale(self._settings.probe_interval_s)
        self._next_probe_at = now + interval_s
        if len(self._probes) >= _PROBES_IN_FLIGHT_MAX:
            self._counters["probes_skipped"] += 1
            return
        target = self._order.next(self._is_probeable, self._live_ids)
        if target is None:
            return
        seq = self._next_seq()
        timeout_s = self._awareness.scale(self._settings.probe_timeout_s)
        # The verdict waits for the end of the interval, or for three timeouts if
        # that is later: helpers nack 80% of a timeout after being asked, and the
        # nack must arrive even over coarse driver ticks. So a probe may still be
        # in its indirect phase when the next one starts.
        self._probes[seq] = Probe(
            target=target,
            seq=seq,
            ack_deadline=now + timeout_s,
            verdict_at=now + max(interval_s, _VERDICT_TIMEOUTS * timeout_s),
        )
        self._send(PING, self._ping(seq, target), target)
        self._counters["probes_sent"] += 1

    def _ask_helpers(self, probe: Probe) -> None:
        probe.indirect_sent = True
        record = self._members.get(probe.target)
        if record is None:
            return
        candidates = [
            node_id
            for node_id, helper in self._members.items()
            if helper.state is MemberState.ALIVE and node_id != probe.target
        ]
        count = min(self._settings.indirect_probes, len(candidates))
        probe.helpers = self._rng.sample(candidates, count)
        for helper_id in probe.helpers:
            request = PingReq(
                name=self._name,
                address=self._address,
                incarnation=self._incarnation,
                seq=probe.seq,
                target=probe.target,
                target_address=record.address,
                updates=self._piggyback(helper_id),
            )
            self._send(PING_REQ, request, helper_id)
        self._counters["indirect_probes"] += count

    def _probe_failed(self, probe: Probe) -> None:
        record = self._members.get(probe.target)
        if record is None or not record.state.live:
            return  # it died or left meanwhile: the silence says nothing about us
        missed = len(probe.helpers) - len(probe.nacks_from)
        # A missing nack means our own links or timing failed, not only the target.
        self._awareness.apply(1 + missed)
        self._counters["probe_failures"] += 1
        self._counters["nacks_missed"] += missed
        if record.state is MemberState.ALIVE:
            self._counters["suspicions_raised"] += 1
            self._set_state(record, record.incarnation, MemberState.SUSPECT, self._node_id)
        elif record.state is MemberState.SUSPECT:
            self._confirm(record, self._node_id)

    def _probe_succeeded(self, probe: Probe) -> None:
        del self._probes[probe.seq]
        self._awareness.apply(-1)
        self._counters["probe_successes"] += 1

    def _is_probeable(self, node_id: bytes) -> bool:
        record = self._members.get(node_id)
        return record is not None and record.state.live

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < SEQ_MAX else 1
        return self._seq

    # -- helping other nodes' probes ---------------------------------------------------

    def _tick_relays(self, now: float) -> None:
        if not self._relays:
            return
        for seq, relay in list(self._relays.items()):
            if not relay.nacked and now >= relay.nack_at:
                relay.nacked = True
                nack = Nack(
                    name=self._name,
                    address=self._address,
                    incarnation=self._incarnation,
                    seq=relay.requester_seq,
                    target=relay.target,
                    updates=self._piggyback(relay.requester),
                )
                self._send(NACK, nack, relay.requester, relay.requester_address)
                self._counters["nacks_sent"] += 1
            if now >= relay.expires_at:
                del self._relays[seq]

    def _on_ping_req(self, sender: bytes, request: PingReq) -> None:
        self._hear_from(sender, request.name, request.address, request.incarnation)
        self._apply_updates(sender, request.updates)
        if request.target == self._node_id:
            self._send_ack(request.seq, sender, request.address)
            return
        if len(self._relays) >= _RELAYS_MAX:
            self._counters["relays_dropped_over_limit"] += 1
            return
        seq = self._next_seq()
        timeout_s = self._settings.probe_timeout_s
        self._relays[seq] = Relay(
            requester=sender,
            requester_address=request.address,
            requester_seq=request.seq,
            target=request.target,
            nack_at=self._now + _NACK_AFTER_FRACTION * timeout_s,
            # The requester's probe may be stretched by its own health score.
            expires_at=self._now
            + self._settings.probe_interval_s * (self._settings.awareness_max + 1),
        )
        self._send(PING, self._ping(seq, request.target), request.target, request.target_address)
        self._counters["indirect_pings_relayed"] += 1

    # -- handlers --------------------------------------------------------------------

    def _on_ping(self, sender: bytes, ping: Ping) -> None:
        self._hear_from(sender, ping.name, ping.address, ping.incarnation)
        self._apply_updates(sender, ping.updates)
        if ping.target != self._node_id:
            # Meant for whoever had our address before: staying silent is the truth.
            self._counters["pings_misdirected"] += 1
            return
        self._send_ack(ping.seq, sender, ping.address)

    def _on_ack(self, sender: bytes, ack: Ack) -> None:
        self._hear_from(sender, ack.name, ack.address, ack.incarnation, answered=True)
        self._apply_updates(sender, ack.updates)
        probe = self._probes.get(ack.seq)
        if (
            probe is not None
            and ack.target == probe.target
            and (sender == probe.target or sender in probe.helpers)
        ):
            self._probe_succeeded(probe)
            return
        relay = self._relays.get(ack.seq)
        if relay is not None and sender == relay.target == ack.target:
            del self._relays[ack.seq]
            relayed = Ack(
                name=self._name,
                address=self._address,
                incarnation=self._incarnation,
                seq=relay.requester_seq,
                target=relay.target,
                updates=self._piggyback(relay.requester),
            )
            self._send(ACK, relayed, relay.requester, relay.requester_address)
            self._counters["acks_relayed"] += 1
            return
        self._counters["acks_unmatched"] += 1

    def _on_nack(self, sender: bytes, nack: Nack) -> None:
        self._hear_from(sender, nack.name, nack.address, nack.incarnation, answered=True)
        self._apply_updates(sender, nack.updates)
        probe = self._probes.get(nack.seq)
        if (
            probe is not None
            and nack.target == probe.target
            and sender in probe.helpers
            and sender not in probe.nacks_from
        ):
            probe.nacks_from.append(sender)
            self._counters["nacks_received"] += 1
            return
        self._counters["nacks_unmatched"] += 1

    def _on_sync(self, sender: bytes, sync: Sync) -> None:
        self._counters["syncs_received"] += 1
        # An entry about the sender itself (e.g. its LEFT notice) speaks for it;
        # the header must not first re-add it as alive.
        about_sender = any(update.node_id == sender for update in sync.members)
        if not about_sender:
            self._hear_from(sender, sync.name, sync.address, sync.incarnation)
        limit = self._settings.sync_members_max
        members = self._members
        stale = 0
        for update in sync.members[:limit]:
            # Most entries of a sync are news we hold already: spot those at the cost
            # of a dict comparison (``_apply_update`` would find them stale too; a
            # suspect is left to it, as an equal suspicion can be a confirmation).
            record = members.get(update.node_id)
            if record is not None and record.state is not _SUSPECT:
                cached = record.cached_update
                if cached is update:
                    stale += 1
                    continue
                if cached is not None and cached.__dict__ == update.__dict__:
                    record.cached_update = update  # share it, see _apply_update
                    stale += 1
                    continue
            self._apply_update(update, sender, via_sync=True)
        self._counters["updates_stale"] += stale
        self._counters["sync_entries_ignored"] += max(0, len(sync.members) - limit)
        self._mark_heard(sender, sync.name, sync.address, answered=not sync.wants_reply)
        if sync.wants_reply:
            self._send_sync(sender, sync.address, wants_reply=False)

    # -- learning from messages ------------------------------------------------------

    def _hear_from(
        self, sender: bytes, name: str, address: str, incarnation: int, *, answered: bool = False
    ) -> None:
        """A message from ``sender`` proves it is alive at ``incarnation`` (at least)."""
        record = self._members.get(sender)
        if record is None:
            self._add(sender, name, address, incarnation, MemberState.ALIVE, None)
        elif incarnation > record.incarnation:
            record.set_contact(name, address)  # _set_state marks the change
            # A new incarnation may be a restarted process that lost our certificate.
            record.knows_us = False
            self._set_state(record, incarnation, MemberState.ALIVE, None)
        self._mark_heard(sender, name, address, answered=answered)

    def _mark_heard(self, sender: bytes, name: str, address: str, *, answered: bool) -> None:
        record = self._members.get(sender)
        if record is None:
            return
        # The sender is authenticated: its own word on its address is the freshest.
        if record.set_contact(name, address):
            self._sync_entries = None
        if answered:
            record.knows_us = True

    def _apply_updates(self, sender: bytes, updates: Iterable[MemberUpdate]) -> None:
        for update in updates:
            self._apply_update(update, sender, via_sync=False)

    def _apply_update(self, update: MemberUpdate, sender: bytes, *, via_sync: bool) -> None:
        # Runs for every entry of every full-table sync: kept to dict lookups and
        # identity tests (this node is never in its own table).
        record = self._members.get(update.node_id)
        state = _STATE_OF_NAME[update.state]
        suspector = update.suspector
        if record is None:
            if update.node_id == self._node_id:
                self._apply_about_self(update)
                return
            # Never learn a member from news of its death: that would resurrect
            # members that others have already forgotten.
            if not state.live:
                self._counters["updates_ignored"] += 1
                return
            suspector = suspector if suspector is not None else sender
            self._add(
                update.node_id, update.name, update.address, update.incarnation, state, suspector
            )
            return
        if via_sync and state is _DEAD:
            # A peer's verdict in a full-table sync is only a suspicion here: the
            # member gets the chance to refute (this is what heals partitions).
            # The verdict may be old, so it names no suspector and confirms nothing.
            state, suspector = _SUSPECT, None
        incarnation = update.incarnation
        if supersedes(incarnation, state, record.incarnation, record.state):
            if incarnation > record.incarnation:
                record.set_contact(update.name, update.address)  # see _set_state
                # A new incarnation may be a restarted process that lost our
                # certificate, heard of here before it speaks to us (as in
                # _hear_from): until it answers, what we send it carries ours, or
                # it refuses everything but our next full-table sync.
                record.knows_us = False
            self._counters["updates_applied"] += 1
            self._set_state(record, incarnation, state, suspector)
        elif (
            state is _SUSPECT
            and record.state is _SUSPECT
            and incarnation == record.incarnation
            and suspector is not None
        ):
            self._confirm(record, suspector)
        else:
            self._counters["updates_stale"] += 1
            if record.cached_update is not update and record.shown_by(update):
                # The news is exactly what we would say: keep this (immutable) object
                # as our update rather than build and hold an equal one. Full-table
                # syncs repeat every member, so in a large cluster this saves most
                # of the updates built, and the memory they would pin per member.
                record.cached_update = update

    def _apply_about_self(self, update: MemberUpdate) -> None:
        state = _STATE_OF_NAME[update.state]
        if state is MemberState.ALIVE:
            # Someone holds an incarnation of ours above the current one (a
            # previous life of this node): move past it so our news counts.
            must_raise = update.incarnation > self._incarnation
        else:
            must_raise = update.incarnation >= self._incarnation
        if not must_raise:
            return
        if update.incarnation >= INCARNATION_MAX:
            self._counters["self_updates_ignored"] += 1
            return
        self._incarnation = update.incarnation + 1
        self._sync_entries = None
        if state is not MemberState.ALIVE:
            self._counters["refutations"] += 1
            # Being suspected is a sign that our own links or timing are poor.
            self._awareness.apply(1)
        self._broadcasts.enqueue(self._self_update())

    # -- the table -------------------------------------------------------------------

    def _add(
        self,
        node_id: bytes,
        name: str,
        address: str,
        incarnation: int,
        state: MemberState,
        suspector: bytes | None,
    ) -> None:
        assert state.live, state
        if len(self._members) >= self._settings.members_max:
            self._counters["members_ignored_over_limit"] += 1
            return
        record = _Record(node_id, name, address, incarnation, state, self._now)
        self._members[node_id] = record
        self._sync_entries = None
        self._live_sorted = None
        self._live_count += 1
        self._order.insert(node_id)
        self._counters["members_joined"] += 1
        self._emit(MembershipEventKind.JOINED, record)
        if state is MemberState.SUSPECT:
            self._start_suspicion(record, suspector)
            self._emit(MembershipEventKind.SUSPECTED, record)
        self._broadcasts.enqueue(record.update())

    def _add_known(self, known_members: Sequence[tuple[bytes, str, str]]) -> None:
        """Start with ``known_members`` alive at incarnation 0 (see ``__init__``).

        One tight loop rather than ``_add`` per member: a simulated cluster of
        ``n`` nodes starts formed by running it ``n * n`` times.
        """
        members = self._members
        members_max = self._settings.members_max
        events = self._events
        now = self._now
        joined = dropped = 0
        for node_id, name, address in known_members:
            if node_id == self._node_id or node_id in members:
                continue
            _check_identity(node_id, name, address, 0)
            if len(members) >= members_max:
                self._counters["members_ignored_over_limit"] += 1
                continue
            members[node_id] = _Record(node_id, name, address, 0, _ALIVE, now)
            joined += 1
            # ``_emit`` inlined: the record's snapshot is this Member.
            if len(events) < _EVENTS_MAX:
                member = Member(node_id, name, address, 0, _ALIVE, now)
                events.append(MembershipEvent(_JOINED, member, now))
            else:
                dropped += 1
        self._live_count += joined
        self._live_sorted = None
        self._counters["members_joined"] += joined
        self._counters["events_dropped"] += dropped

    def _set_state(
        self, record: _Record, incarnation: int, state: MemberState, suspector: bytes | None
    ) -> None:
        old = record.state
        record.incarnation = incarnation
        record.cached_update = None
        self._sync_entries = None
        if state is not old:
            record.state = state
            if state.live:
                self._gone.pop(record.node_id, None)
            else:
                self._gone[record.node_id] = None
            record.state_since = self._now
            if state.live != old.live:
                self._live_count += state.live - old.live
                self._live_sorted = None
        record.suspicion = None
        self._suspects.pop(record.node_id, None)
        if state is MemberState.SUSPECT:
            self._start_suspicion(record, suspector)
        elif state is MemberState.DEAD:
            record.knows_us = False  # if it comes back, it is a new process
        if state.live and not old.live:
            self._order.insert(record.node_id)
        event = _transition_event(old, state)
        if event is not None:
            self._emit(event, record)
        self._broadcasts.enqueue(record.update())

    def _start_suspicion(self, record: _Record, suspector: bytes | None) -> None:
        cluster_size = self._live_count + 1
        settings = self._settings
        timeout_min_s = suspicion_timeout_min_s(
            settings.suspicion_min_multiplier, cluster_size, settings.probe_interval_s
        )
        suspicion = record.suspicion = Suspicion(
            started_at=self._now,
            timeout_min_s=timeout_min_s,
            timeout_max_s=settings.suspicion_max_multiplier * timeout_min_s,
            # Only nodes other than the suspect and the originator can confirm.
            confirmations_expected=min(settings.indirect_probes, max(0, cluster_size - 2)),
            originator=suspector,
        )
        self._suspicions_started += 1
        self._suspects[record.node_id] = self._suspicions_started
        self._push_deadline(record.node_id, suspicion)

    def _push_deadline(self, node_id: bytes, suspicion: Suspicion) -> None:
        entry = (suspicion.deadline(), self._suspects[node_id], node_id)
        heapq.heappush(self._deadlines, entry)

    def _confirm(self, record: _Record, confirmer: bytes) -> None:
        suspicion = record.suspicion
        assert suspicion is not None, record
        deadline = suspicion.deadline()
        if confirmer == record.node_id or not suspicion.confirm(confirmer):
            return
        if suspicion.deadline() != deadline:
            self._push_deadline(record.node_id, suspicion)  # earlier now
        self._counters["suspicion_confirmations"] += 1
        # Pass the confirmation on: others shorten their timers too.
        self._broadcasts.enqueue(record.update(suspector=confirmer))

    def _tick_suspicions(self, now: float) -> None:
        deadlines = self._deadlines
        if not deadlines or deadlines[0][0] > now:
            return
        expired: dict[int, bytes] = {}  # suspicion number -> node id
        suspects = self._suspects
        while deadlines and deadlines[0][0] <= now:
            _, number, node_id = heapq.heappop(deadlines)
            if suspects.get(node_id) == number:
                suspicion = self._members[node_id].suspicion
                # Confirmations only move a deadline earlier: due in the heap, due here.
                assert suspicion is not None and suspicion.expired(now), node_id
                expired[number] = node_id
        # Declared dead in the order they became suspect, as a scan of them would.
        for number in sorted(expired):
            record = self._members[expired[number]]
            self._counters["deaths_declared"] += 1
            self._set_state(record, record.incarnation, MemberState.DEAD, None)

    def _tick_reap(self, now: float) -> None:
        if now < self._next_reap_at:
            return
        self._next_reap_at = now + self._settings.probe_interval_s
        forget_after_s = self._settings.dead_forget_after_s
        members = self._members
        for node_id in [
            node_id for node_id in self._gone
            if now - members[node_id].state_since >= forget_after_s
        ]:
            del self._gone[node_id]
            record = members.pop(node_id)
            self._sync_entries = None
            self._counters["members_forgotten"] += 1
            self._emit(MembershipEventKind.FORGOTTEN, record)

    def _ids_in(self, state: MemberState) -> list[bytes]:
        # Insertion order: deterministic for the same inputs, unlike set order.
        return [node_id for node_id, record in self._members.items() if record.state is state]

    def _live_ids(self) -> list[bytes]:
        """Ids of the live members, in insertion order."""
        return [node_id for node_id, record in self._members.items() if record.state.live]

    def _emit(self, kind: MembershipEventKind, record: _Record) -> None:
        if len(self._events) >= _EVENTS_MAX:
            self._counters["events_dropped"] += 1
            return
        self._events.append(MembershipEvent(kind, record.snapshot(), self._now))

    # -- joining and push-pull -------------------------------------------------------

    def _add_seed_addresses(self, addresses: Sequence[str]) -> list[str]:
        added = []
        for address in addresses:
            if not isinstance(address, str) or not 1 <= len(address) <= ADDRESS_CHARS_MAX:
                raise ValueError(
                    f"seed address {address!r} must be a string of 1 to "
                    f"{ADDRESS_CHARS_MAX} characters"
                )
            if address == self._address or address in self._seeds:
                continue
            if len(self._seeds) >= _SEEDS_MAX:
                raise ValueError(f"more than {_SEEDS_MAX} seed addresses")
            self._seeds.append(address)
            added.append(address)
        return added

    def _tick_join(self, now: float) -> None:
        if not self._seeds or self._live_count > 0 or now < self._next_join_at:
            return
        self._next_join_at = now + self._settings.join_retry_interval_s
        for seed in self._seeds:
            self._send_sync(None, seed, wants_reply=True)
            self._counters["joins_sent"] += 1

    def _tick_push_pull(self, now: float) -> None:
        if now < self._next_push_pull_at:
            return
        self._next_push_pull_at = now + self._settings.push_pull_interval_s
        alive = self._ids_in(_ALIVE)
        if alive:
            self._send_sync(self._rng.choice(alive), None, wants_reply=True)
        if self._live_count > 0:  # otherwise the join loop is contacting the seeds
            live_addresses = {r.address for r in self._members.values() if r.state.live}
            for seed in self._seeds:
                if seed not in live_addresses:
                    self._send_sync(None, seed, wants_reply=True)
        dead = self._ids_in(_DEAD)
        if dead:
            # Perhaps only a partition separated us: a sync tells it to refute.
            self._send_sync(self._rng.choice(dead), None, wants_reply=True)

    def _send_sync(self, to: bytes | None, address: str | None, *, wants_reply: bool) -> None:
        entries = self._sync_entries
        if entries is None:
            # The whole table as news, kept until it changes: a large cluster's table
            # is thousands of entries, and most syncs find it as the last one left it.
            entries = (self._self_update(), *[record.update() for record in self._members.values()])
            self._sync_entries = entries
        room = self._settings.sync_members_max
        if len(entries) > room:
            entries = (entries[0], *self._rng.sample(entries[1:], room - 1))
        self._send(SYNC, self._sync(wants_reply=wants_reply, members=entries), to, address)
        self._counters["syncs_sent"] += 1

    # -- building and sending messages -----------------------------------------------

    def _send(
        self, kind: str, payload: BaseModel, to: bytes | None, address: str | None = None
    ) -> None:
        """Route by node id when the member is known, else by the address given."""
        record = self._members.get(to) if to is not None else None
        if record is not None:
            # Syncs always carry our certificate: they are how a restarted peer,
            # which lost every certificate it knew, gets back in.
            attach = kind == SYNC or not record.knows_us
            out = Outgoing(kind, (payload,), to_node=record.node_id, attach_certificate=attach)
        elif address is not None and address != self._address:
            out = Outgoing(kind, (payload,), to_address=address, attach_certificate=True)
        else:
            self._counters["sends_unroutable"] += 1
            return
        self._outbox.append(out)

    # Pings, acks and syncs are most of what this core sends, and what they carry
    # is its own valid state: they are built with ``trusted`` (no validation).

    def _send_ack(self, seq: int, to: bytes, address: str) -> None:
        ack = trusted(
            Ack,
            {
                "name": self._name,
                "address": self._address,
                "incarnation": self._incarnation,
                "seq": seq,
                "target": self._node_id,
                "updates": self._piggyback(to),
            },
        )
        self._send(ACK, ack, to, address)
        self._counters["acks_sent"] += 1

    def _ping(self, seq: int, target: bytes) -> Ping:
        return trusted(
            Ping,
            {
                "name": self._name,
                "address": self._address,
                "incarnation": self._incarnation,
                "seq": seq,
                "target": target,
                "updates": self._piggyback(target),
            },
        )

    def _sync(self, *, wants_reply: bool, members: tuple[MemberUpdate, ...]) -> Sync:
        return trusted(
            Sync,
            {
                "name": self._name,
                "address": self._address,
                "incarnation": self._incarnation,
                "wants_reply": wants_reply,
                "members": members,
            },
        )

    def _self_update(self) -> MemberUpdate:
        state: StateName = "left" if self._left else "alive"
        return _member_update(
            self._node_id, self._name, self._address, self._incarnation, state, None
        )

    def _piggyback(self, to: bytes) -> tuple[MemberUpdate, ...]:
        """Gossip for a message to ``to``: first what we hold against it, if anything."""
        room = self._settings.piggyback_updates_max
        first: list[MemberUpdate] = []
        record = self._members.get(to)
        if record is not None and record.state in (MemberState.SUSPECT, MemberState.DEAD):
            # Lifeguard's buddy system: a suspect learns of it from the next
            # message it gets from us and can refute at once.
            first.append(record.update())
            room -= 1
        # News about ourselves (a refutation) goes before everything else queued.
        news = self._broadcasts.take(room, self._retransmit_limit(), first=self._node_id)
        return (*first, *news)

    def _retransmit_limit(self) -> int:
        return retransmit_limit(self._settings.retransmit_multiplier, self._live_count + 1)


def _transition_event(old: MemberState, new: MemberState) -> MembershipEventKind | None:
    if old is new:
        return None
    if new is MemberState.ALIVE:
        return MembershipEventKind.JOINED if old is MemberState.LEFT else MembershipEventKind.ALIVE
    return {
        MemberState.SUSPECT: MembershipEventKind.SUSPECTED,
        MemberState.DEAD: MembershipEventKind.DIED,
        MemberState.LEFT: MembershipEventKind.LEFT,
    }[new]


def _check_identity(node_id: bytes, name: str, address: str, incarnation: int) -> None:
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_BYTES:
        raise ValueError(f"node_id ({node_id!r}) must be {NODE_ID_BYTES} bytes")
    if not 1 <= len(name) <= NAME_CHARS_MAX:
        raise ValueError(f"name ({name!r}) must have 1 to {NAME_CHARS_MAX} characters")
    if not 1 <= len(address) <= ADDRESS_CHARS_MAX:
        raise ValueError(f"address ({address!r}) must have 1 to {ADDRESS_CHARS_MAX} characters")
    if not 0 <= incarnation < INCARNATION_MAX:
        raise ValueError(f"incarnation ({incarnation}) must be in [0, {INCARNATION_MAX})")
