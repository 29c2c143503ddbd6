"""SWIM membership with Lifeguard: cores driven by hand over a tiny virtual network.

How this works: ``Net`` holds running cores by node id and address, a virtual
clock advanced in steps of ``DT`` seconds, and a heap of messages in flight.
Every step it delivers the messages due, then ticks every core; outboxes are
routed like the real driver does (``to_node`` through the sender's
``address_of``), with optional seeded loss, extra delay and drop rules
(crashes, partitions). Every payload is re-validated against its wire model on
the way, so a core that builds an invalid payload fails here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from random import Random

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from consensus.core import Incoming, Outgoing
from mesh.membership import (
    ACK,
    NACK,
    PING,
    PING_REQ,
    SYNC,
    Ack,
    Member,
    MembershipEvent,
    MembershipEventKind,
    MembershipSettings,
    MemberState,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
    Sync,
)
from mesh.membership.broadcasts import BroadcastQueue, retransmit_limit
from mesh.membership.core import Membership
from mesh.membership.messages import INCARNATION_MAX, SEQ_MAX
from mesh.membership.suspicion import Suspicion, suspicion_timeout_min_s, suspicion_timeout_s

DT = 0.05
# Shorter push-pull than the default so that partition heals are quick in virtual time.
SETTINGS = MembershipSettings(push_pull_interval_s=10.0)

DropRule = Callable[[bytes, bytes, str], bool]
DelayRule = Callable[[bytes, bytes], float]


def nid(index: int) -> bytes:
    """The node id of test node ``index``."""
    return hashlib.blake2b(f"n{index}".encode(), digest_size=16).digest()


def addr(index: int) -> str:
    return f"sim://n{index}"


@dataclass
class Net:
    """A virtual network of membership cores (see module doc)."""

    seed: int
    loss: float = 0.0
    latency_s: tuple[float, float] = (0.002, 0.02)
    settings: MembershipSettings = SETTINGS
    steps: int = 0
    nodes: dict[bytes, Membership] = field(default_factory=dict)
    addresses: dict[str, bytes] = field(default_factory=dict)
    events: dict[bytes, list[MembershipEvent]] = field(default_factory=dict)
    drop_rules: list[DropRule] = field(default_factory=list)
    delay_rules: list[DelayRule] = field(default_factory=list)
    sent: list[tuple[float, bytes, Outgoing]] = field(default_factory=list)
    _queue: list[tuple[float, int, bytes, Incoming]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.rng = Random(self.seed)

    @property
    def now(self) -> float:
        return self.steps * DT

    def start(self, index: int, seeds: Iterable[int] = (), incarnation: int = 0) -> Membership:
        core = Membership(
            node_id=nid(index),
            name=f"n{index}",
            address=addr(index),
            settings=self.settings,
            rng=Random(self.rng.getrandbits(64)),
            seeds=[addr(s) for s in seeds],
            now=self.now,
            incarnation=incarnation,
        )
        self.nodes[core.node_id] = core
        self.addresses[core.address] = core.node_id
        self.events.setdefault(core.node_id, [])
        return core

    def start_cluster(self, count: int, seeds: Iterable[int] = (0,)) -> list[Membership]:
        seed_list = list(seeds)
        return [self.start(i, [s for s in seed_list if s != i]) for i in range(count)]

    def crash(self, index: int) -> None:
        """Stop a node: it neither ticks nor receives any more."""
        del self.nodes[nid(index)]

    def run_for(self, seconds: float) -> None:
        for _ in range(round(seconds / DT)):
            self.step()

    def run_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Step until ``condition`` holds; return the virtual seconds it took."""
        started = self.now
        while not condition():
            if self.now - started > timeout_s:
                pytest.fail(f"{what}: not within {timeout_s} virtual s (seed {self.seed})")
            self.step()
        return self.now - started

    def step(self) -> None:
        self.steps += 1
        now = self.now
        while self._queue and self._queue[0][0] <= now:
            _, _, to, message = heapq.heappop(self._queue)
            core = self.nodes.get(to)
            if core is not None:
                core.step(message)
                self._flush(core)
        for core in list(self.nodes.values()):
            core.tick(now)
            self._flush(core)

    def _flush(self, core: Membership) -> None:
        self.events[core.node_id].extend(core.take_events())
        for out in core.take_outbox():
            self.sent.append((self.now, core.node_id, out))
            self._route(core, out)

    def _route(self, core: Membership, out: Outgoing) -> None:
        model = core.message_kinds[out.kind]
        for payload in out.payloads:
            assert type(payload) is model, (out.kind, payload)
            model.model_validate(payload.model_dump())  # the wire schema holds
        if out.to_node is not None:
            address = core.address_of(out.to_node)
            assert address is not None, "a core addressed a node it cannot route to"
        else:
            assert out.to_address is not None
            assert out.attach_certificate, "messages to bare addresses carry the certificate"
            address = out.to_address
        to = self.addresses.get(address)
        if to is None or self.rng.random() < self.loss:
            return
        if any(rule(core.node_id, to, out.kind) for rule in self.drop_rules):
            return
        delay = self.rng.uniform(*self.latency_s) + sum(
            r(core.node_id, to) for r in self.delay_rules
        )
        for payload in out.payloads:
            message = Incoming(sender=core.node_id, kind=out.kind, payload=payload)
            heapq.heappush(self._queue, (self.now + delay, next(self._order), to, message))

    # -- views -------------------------------------------------------------------------

    def view(self, observer: int, subject: int) -> Member | None:
        return self.nodes[nid(observer)].member(nid(subject))

    def known(self, observer: int, subject: int) -> Member:
        member = self.view(observer, subject)
        assert member is not None, (observer, subject)
        return member

    def flush(self, index: int) -> None:
        """Route what a node produced outside step and tick (e.g. ``leave``)."""
        self._flush(self.nodes[nid(index)])

    def all_see(
        self, subjects: Iterable[int], state: MemberState, observers: Iterable[int]
    ) -> bool:
        subject_list = list(subjects)
        for observer in observers:
            for subject in subject_list:
                if subject == observer:
                    continue
                member = self.view(observer, subject)
                if member is None or member.state is not state:
                    return False
        return True

    def died(self, subject: int) -> list[bytes]:
        """The observers that ever declared ``subject`` dead."""
        return [
            observer
            for observer, events in self.events.items()
            if any(
                e.kind is MembershipEventKind.DIED and e.member.node_id == nid(subject)
                for e in events
            )
        ]


def detection_bound_s(settings: MembershipSettings, cluster_size: int) -> float:
    """Worst case from crash to DEAD everywhere, for healthy observers.

    Every observer probes each member once per pass, and a pass is at most two
    shuffled rounds apart: 2 * (n - 1) probe intervals until someone's probe
    fails, plus the verdict delay, plus the longest (unconfirmed) suspicion
    timeout, plus a few intervals for the DEAD news to spread by gossip.
    """
    interval = settings.probe_interval_s
    verdict = max(interval, 3 * settings.probe_timeout_s)
    timeout_min = suspicion_timeout_min_s(settings.suspicion_min_multiplier, cluster_size, interval)
    timeout_max = settings.suspicion_max_multiplier * timeout_min
    gossip = 3 * interval * math.ceil(math.log10(cluster_size + 1))
    return 2 * (cluster_size - 1) * interval + verdict + timeout_max + gossip


# -- scenarios ------------------------------------------------------------------------


def test_ten_nodes_joining_through_one_seed_all_see_each_other_alive() -> None:
    net = Net(seed=1)
    net.start_cluster(10, seeds=[0])
    took = net.run_until(
        lambda: net.all_see(range(10), MemberState.ALIVE, range(10)), 10.0, "full membership"
    )
    assert took <= 10.0
    for core in net.nodes.values():
        assert len(core.live_members()) == 9
        assert [m.node_id for m in core.members()] == sorted(m.node_id for m in core.members())
    joined = [e for e in net.events[nid(5)] if e.kind is MembershipEventKind.JOINED]
    assert len({e.member.node_id for e in joined}) == 9


def test_crashed_node_is_declared_dead_everywhere_within_the_bound() -> None:
    net = Net(seed=2)
    net.start_cluster(8, seeds=[0, 1])
    net.run_until(lambda: net.all_see(range(8), MemberState.ALIVE, range(8)), 10.0, "join")
    net.run_for(3.0)
    net.crash(4)
    bound = detection_bound_s(net.settings, 8)
    others = [i for i in range(8) if i != 4]
    took = net.run_until(lambda: net.all_see([4], MemberState.DEAD, others), bound, "detection")
    assert took <= bound
    for i in others:
        assert net.view(i, 4) is not None
        kinds = [e.kind for e in net.events[nid(i)] if e.member.node_id == nid(4)]
        assert kinds[-1] is MembershipEventKind.DIED
    # Nobody else was harmed, and the suspicion was confirmed by several nodes.
    assert all(net.died(i) == [] for i in others)
    assert sum(c.counters["suspicion_confirmations"] for c in net.nodes.values()) > 0


def test_falsely_suspected_node_refutes_with_a_higher_incarnation() -> None:
    net = Net(seed=3)
    net.start_cluster(6, seeds=[0])
    net.run_until(lambda: net.all_see(range(6), MemberState.ALIVE, range(6)), 10.0, "join")
    victim = net.nodes[nid(2)]
    # Its acks are lost for a while: its probers suspect it, it still hears them.
    net.drop_rules.append(lambda src, dst, kind: src == nid(2) and kind == ACK)
    net.run_until(
        lambda: any(
            e.kind is MembershipEventKind.SUSPECTED and e.member.node_id == nid(2)
            for events in net.events.values()
            for e in events
        ),
        30.0,
        "a suspicion",
    )
    net.run_for(2.0)
    net.drop_rules.clear()
    net.run_until(
        lambda: all(
            (m := net.view(i, 2)) is not None
            and m.state is MemberState.ALIVE
            and m.incarnation == victim.incarnation
            for i in range(6)
            if i != 2
        ),
        15.0,
        "refutation everywhere",
    )
    assert victim.incarnation >= 1
    assert victim.counters["refutations"] >= 1
    assert net.died(2) == []


def test_graceful_leave_is_seen_as_left_everywhere_quickly() -> None:
    net = Net(seed=4)
    net.start_cluster(8, seeds=[0])
    net.run_until(lambda: net.all_see(range(8), MemberState.ALIVE, range(8)), 10.0, "join")
    leaver = net.nodes[nid(3)]
    leaver.leave()
    net.flush(3)
    assert leaver.has_left
    took = net.run_until(
        lambda: net.all_see([3], MemberState.LEFT, [i for i in range(8) if i != 3]), 5.0, "leave"
    )
    assert took <= 5.0
    assert net.died(3) == []
    assert net.known(0, 3).incarnation == leaver.incarnation
    # The left node stays quiet.
    quiet_since = net.now
    net.run_for(3.0)
    assert not [out for (t, src, out) in net.sent if src == nid(3) and t > quiet_since]


def test_restarted_node_that_was_declared_dead_rejoins_with_a_higher_incarnation() -> None:
    net = Net(seed=5)
    net.start_cluster(6, seeds=[0])
    net.run_until(lambda: net.all_see(range(6), MemberState.ALIVE, range(6)), 10.0, "join")
    net.crash(5)
    others = list(range(5))
    net.run_until(
        lambda: net.all_see([5], MemberState.DEAD, others), detection_bound_s(SETTINGS, 6), "death"
    )
    dead_at = max(net.known(i, 5).incarnation for i in others)
    net.run_for(5.0)
    reborn = net.start(5, seeds=[0], incarnation=0)
    took = net.run_until(
        lambda: (
            net.all_see([5], MemberState.ALIVE, others)
            and net.all_see(others, MemberState.ALIVE, [5])
        ),
        10.0,
        "rejoin",
    )
    assert took <= 10.0
    assert reborn.incarnation > dead_at
    assert all(net.known(i, 5).incarnation == reborn.incarnation for i in others)


def test_partition_longer_than_the_dead_timeout_heals_into_one_cluster() -> None:
    net = Net(seed=6)
    net.start_cluster(10, seeds=[0, 1])
    everyone = range(10)
    net.run_until(lambda: net.all_see(everyone, MemberState.ALIVE, everyone), 10.0, "join")
    left_side = {nid(i) for i in range(5)}  # both seeds are on this side
    net.drop_rules.append(lambda src, dst, kind: (src in left_side) != (dst in left_side))
    net.run_until(
        lambda: (
            net.all_see(range(5, 10), MemberState.DEAD, range(5))
            and net.all_see(range(5), MemberState.DEAD, range(5, 10))
        ),
        detection_bound_s(SETTINGS, 10) + 30.0,
        "each side declares the other dead",
    )
    net.drop_rules.clear()
    # Reunion needs one push-pull round towards a dead member or seed, then
    # refutations, which spread by gossip.
    bound = SETTINGS.push_pull_interval_s * 3
    took = net.run_until(
        lambda: net.all_see(everyone, MemberState.ALIVE, everyone), bound, "reunion"
    )
    assert took <= bound


def _slow_node_run(settings: MembershipSettings) -> tuple[Net, list[int], float]:
    """Six nodes; after joining, everything n1 sends or receives is 1 s late."""
    net = Net(seed=7, settings=settings)
    net.start_cluster(6, seeds=[0])
    net.run_until(lambda: net.all_see(range(6), MemberState.ALIVE, range(6)), 10.0, "join")
    assert net.nodes[nid(1)].health_score == 0
    # A round trip now takes longer than a probe's verdict allows.
    net.delay_rules.append(lambda src, dst: 1.0 if nid(1) in (src, dst) else 0.0)
    slow_since = net.now
    scores = []
    for _ in range(int(30.0 / DT)):
        net.step()
        scores.append(net.nodes[nid(1)].health_score)
    return net, scores, slow_since


def test_local_health_awareness_stretches_a_slow_nodes_timing() -> None:
    net, scores, slow_since = _slow_node_run(SETTINGS)
    slow = net.nodes[nid(1)]
    assert max(scores) >= 3
    assert slow.counters["nacks_missed"] > 0
    assert slow.probe_timeout_effective_s >= 2 * SETTINGS.probe_timeout_s
    assert slow.probe_interval_effective_s >= 2 * SETTINGS.probe_interval_s
    # Its pings are spaced further apart than the healthy probe interval...
    pings = [
        t for (t, src, out) in net.sent if src == nid(1) and out.kind == PING and t > slow_since
    ]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) > 3 * SETTINGS.probe_interval_s
    # ...so it accuses healthy nodes far less often than without awareness.
    unaware, _, _ = _slow_node_run(dataclasses.replace(SETTINGS, awareness_max=0))
    raised = slow.counters["suspicions_raised"]
    assert raised * 4 < unaware.nodes[nid(1)].counters["suspicions_raised"]
    assert all(net.nodes[nid(i)].health_score <= 1 for i in (0, 2, 3, 4, 5))
    # Once its links are fine again, successful probes bring the score back to 0.
    net.delay_rules.clear()
    net.run_until(lambda: slow.health_score == 0, 120.0, "recovery")
    assert slow.probe_timeout_effective_s == SETTINGS.probe_timeout_s


def test_no_false_deaths_with_ten_percent_loss() -> None:
    net = Net(seed=9, loss=0.10)
    net.start_cluster(20, seeds=[0, 7, 13])
    net.run_for(60.0)
    assert [i for i in range(20) if net.died(i)] == []
    assert _everyone_known_live(net)
    assert sum(c.counters["refutations"] for c in net.nodes.values()) > 0  # loss did bite


def _everyone_known_live(net: Net) -> bool:
    """Everyone knows everyone, alive (or, at this instant, suspect and about to refute)."""
    return all(
        (m := core.member(nid(j))) is not None
        and m.state in (MemberState.ALIVE, MemberState.SUSPECT)
        for core in net.nodes.values()
        for j in range(20)
        if nid(j) != core.node_id
    )


def _scenario_digest(seed: int) -> list[str]:
    net = Net(seed=seed, loss=0.05)
    net.start_cluster(6, seeds=[0])
    net.run_for(8.0)
    net.crash(2)
    net.run_for(30.0)
    return [
        f"{observer.hex()} {e.kind.value} {e.member.node_id.hex()} "
        f"{e.member.incarnation} {e.at:.2f}"
        for observer, events in net.events.items()
        for e in events
    ]


def test_same_seed_gives_the_same_events() -> None:
    assert _scenario_digest(11) == _scenario_digest(11)
    assert _scenario_digest(11) != _scenario_digest(12)


def test_same_seed_gives_the_same_events_under_other_hash_seeds() -> None:
    # bytes and str hashing differ between processes: set order must not leak in.
    code = "import test_membership as t; print('\\n'.join(t._scenario_digest(11)))"
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=os.path.dirname(__file__),
            timeout=60,
            check=True,
        )
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].strip()


# -- units ----------------------------------------------------------------------------


def test_suspicion_timeout_shrinks_with_independent_confirmations() -> None:
    suspicion = Suspicion(
        started_at=10.0,
        timeout_min_s=4.0,
        timeout_max_s=24.0,
        confirmations_expected=3,
        originator=nid(1),
    )
    assert suspicion.deadline() == 34.0
    assert not suspicion.confirm(nid(1))  # the originator is no confirmation
    timeouts = [suspicion.timeout_s()]
    for confirmer in (2, 3, 4):
        assert suspicion.confirm(nid(confirmer))
        assert not suspicion.confirm(nid(confirmer))  # only once per node
        timeouts.append(suspicion.timeout_s())
    assert timeouts == sorted(timeouts, reverse=True)
    assert timeouts[0] == 24.0 and timeouts[-1] == 4.0
    assert timeouts[1] == pytest.approx(24.0 - 20.0 * math.log(2) / math.log(4))
    # The first confirmation counts most.
    assert timeouts[0] - timeouts[1] > timeouts[1] - timeouts[2] > timeouts[2] - timeouts[3]
    assert not suspicion.confirm(nid(5))  # beyond the expected count
    assert suspicion.expired(14.0) and not suspicion.expired(13.99)
    assert suspicion_timeout_s(0, 0, 4.0, 24.0) == 4.0
    assert suspicion_timeout_min_s(4.0, 5, 1.0) == 4.0
    assert suspicion_timeout_min_s(4.0, 100, 1.0) == pytest.approx(8.0)


def test_broadcast_queue_sends_fewest_sent_first_and_retires_updates() -> None:
    def update(index: int, incarnation: int = 0) -> MemberUpdate:
        return MemberUpdate(
            node_id=nid(index), name="n", address="a", incarnation=incarnation, state="alive"
        )

    queue = BroadcastQueue(capacity=3)
    for index in range(3):
        queue.enqueue(update(index))
    assert [u.node_id for u in queue.take(2, 2)] == [nid(2), nid(1)]  # newest first
    assert [u.node_id for u in queue.take(1, 2)] == [nid(0)]  # fewest sent
    queue.enqueue(update(1, incarnation=5))  # replaces the older news about n1
    assert len(queue) == 3
    assert queue.take(1, 2)[0].incarnation == 5
    queue.enqueue(update(3))  # full: the most-sent update goes
    assert queue.dropped == 1 and len(queue) == 3
    assert retransmit_limit(4, 1) == 4 and retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"probe_interval_s": 0.0}, "probe_interval_s (0.0) must be positive"),
        ({"probe_timeout_s": 2.0}, "probe_timeout_s (2.0) must be less than probe_interval_s"),
        ({"indirect_probes": -1}, "indirect_probes (-1)"),
        ({"suspicion_max_multiplier": 0.5}, "suspicion_max_multiplier (0.5)"),
        ({"awareness_max": -1}, "awareness_max (-1)"),
        ({"retransmit_multiplier": 0}, "retransmit_multiplier (0)"),
        ({"piggyback_updates_max": 0}, "piggyback_updates_max (0)"),
        ({"members_max": 0}, "members_max (0)"),
        ({"sync_members_max": 5000}, "sync_members_max (5000)"),
        ({"dead_forget_after_s": float("nan")}, "dead_forget_after_s (nan) must be a finite"),
        ({"push_pull_interval_s": -1.0}, "push_pull_interval_s (-1.0)"),
    ],
)
def test_settings_refuse_bad_values_naming_them(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MembershipSettings(**changes)  # type: ignore[arg-type]


def test_constructor_refuses_a_bad_identity() -> None:
    with pytest.raises(ValueError, match="node_id"):
        Membership(node_id=b"short", name="n", address="a", settings=SETTINGS, rng=Random(0))
    with pytest.raises(ValueError, match="seed address"):
        Membership(
            node_id=nid(0), name="n", address="a", settings=SETTINGS, rng=Random(0), seeds=[""]
        )


def test_members_beyond_the_limit_are_ignored_and_counted() -> None:
    core = Membership(
        node_id=nid(0),
        name="n0",
        address=addr(0),
        settings=MembershipSettings(members_max=2),
        rng=Random(0),
    )
    for index in range(1, 5):
        core.step(Incoming(nid(index), SYNC, _sync(index, wants_reply=True)))
    assert len(core.members()) == 2
    assert core.counters["members_ignored_over_limit"] == 2
    # Those it cannot keep still get an answer, by address.
    replies = core.take_outbox()
    assert [o.to_address for o in replies][2:] == [addr(3), addr(4)]


def test_odd_but_valid_input_is_counted_not_raised() -> None:
    core = Membership(node_id=nid(0), name="n0", address=addr(0), settings=SETTINGS, rng=Random(0))
    absurd = MemberUpdate(
        node_id=nid(0), name="n0", address=addr(0), incarnation=INCARNATION_MAX, state="dead"
    )
    core.step(Incoming(nid(1), PING, _ping(1, target=nid(0), updates=(absurd,))))
    assert core.counters["self_updates_ignored"] == 1
    assert core.incarnation == 0
    core.step(
        Incoming(nid(1), ACK, Ack(name="n1", address=addr(1), incarnation=0, seq=77, target=nid(1)))
    )
    assert core.counters["acks_unmatched"] == 1
    core.step(
        Incoming(nid(1), PING, Sync(name="n1", address=addr(1), incarnation=0, wants_reply=False))
    )
    assert core.counters["messages_unexpected"] == 1
    core.step(Incoming(nid(0), PING, _ping(0, target=nid(0))))
    assert core.counters["messages_from_self"] == 1


def test_suspicion_about_self_is_refuted_and_raises_the_health_score() -> None:
    core = Membership(node_id=nid(0), name="n0", address=addr(0), settings=SETTINGS, rng=Random(0))
    rumour = MemberUpdate(
        node_id=nid(0), name="n0", address=addr(0), incarnation=3, state="suspect", suspector=nid(2)
    )
    core.step(Incoming(nid(1), PING, _ping(1, target=nid(0), updates=(rumour,))))
    assert core.incarnation == 4
    assert core.health_score == 1
    ack = core.take_outbox()[0]
    assert ack.kind == ACK and ack.to_node == nid(1) and ack.attach_certificate
    payload = ack.payloads[0]
    assert isinstance(payload, Ack) and payload.incarnation == 4
    assert any(u.node_id == nid(0) and u.state == "alive" for u in payload.updates)


def test_two_cores_by_hand_route_replies_and_attach_certificates_until_answered() -> None:
    a = Membership(
        node_id=nid(0),
        name="n0",
        address=addr(0),
        settings=SETTINGS,
        rng=Random(1),
        seeds=[addr(1)],
    )
    b = Membership(node_id=nid(1), name="n1", address=addr(1), settings=SETTINGS, rng=Random(2))
    a.tick(0.0)
    (join,) = a.take_outbox()
    assert (join.kind, join.to_address, join.attach_certificate) == (SYNC, addr(1), True)
    b.step(Incoming(nid(0), SYNC, join.payloads[0]))
    assert [e.kind for e in b.take_events()] == [MembershipEventKind.JOINED]
    (answer,) = b.take_outbox()
    # b knows a now, so it answers by node id; syncs always carry the certificate.
    assert (answer.kind, answer.to_node, answer.attach_certificate) == (SYNC, nid(0), True)
    assert isinstance(answer.payloads[0], Sync) and not answer.payloads[0].wants_reply
    a.step(Incoming(nid(1), SYNC, answer.payloads[0]))
    assert [m.node_id for m in a.live_members()] == [nid(1)]
    # b answered a, so a's pings to b go without the certificate; b's to a carry it.
    a.tick(SETTINGS.probe_interval_s)
    (ping,) = a.take_outbox()
    assert (ping.kind, ping.to_node, ping.attach_certificate) == (PING, nid(1), False)
    b.tick(SETTINGS.probe_interval_s)
    (b_ping,) = b.take_outbox()
    assert (b_ping.kind, b_ping.attach_certificate) == (PING, True)
    b.step(Incoming(nid(0), PING, ping.payloads[0]))
    (ack,) = b.take_outbox()
    assert (ack.kind, ack.to_node) == (ACK, nid(0))
    a.step(Incoming(nid(1), ACK, ack.payloads[0]))
    assert a.counters["probe_successes"] == 1 and a.health_score == 0
    a.tick(SETTINGS.probe_interval_s + 5.0)  # no stray failure for the answered probe
    assert a.counters["probe_failures"] == 0
    a._check_invariants()
    b._check_invariants()


# -- fuzzing --------------------------------------------------------------------------

_ids = st.sampled_from([nid(i) for i in range(6)]) | st.binary(min_size=16, max_size=16)
_names = st.text(min_size=1, max_size=8)
_addresses = st.sampled_from([addr(i) for i in range(6)]) | st.text(min_size=1, max_size=12)
_incarnations = st.integers(0, 3) | st.integers(0, INCARNATION_MAX)
_seqs = st.integers(0, 5) | st.integers(0, SEQ_MAX)
_updates = st.builds(
    MemberUpdate,
    node_id=_ids,
    name=_names,
    address=_addresses,
    incarnation=_incarnations,
    state=st.sampled_from(["alive", "suspect", "dead", "left"]),
    suspector=st.none() | _ids,
)
_update_lists = st.lists(_updates, max_size=6).map(tuple)
_header = {"name": _names, "address": _addresses, "incarnation": _incarnations}
_payloads: st.SearchStrategy[tuple[str, BaseModel]] = st.one_of(
    st.tuples(
        st.just(PING), st.builds(Ping, **_header, seq=_seqs, target=_ids, updates=_update_lists)
    ),
    st.tuples(
        st.just(ACK), st.builds(Ack, **_header, seq=_seqs, target=_ids, updates=_update_lists)
    ),
    st.tuples(
        st.just(NACK), st.builds(Nack, **_header, seq=_seqs, target=_ids, updates=_update_lists)
    ),
    st.tuples(
        st.just(PING_REQ),
        st.builds(
            PingReq,
            **_header,
            seq=_seqs,
            target=_ids,
            target_address=_addresses,
            updates=_update_lists,
        ),
    ),
    st.tuples(
        st.just(SYNC), st.builds(Sync, **_header, wants_reply=st.booleans(), members=_update_lists)
    ),
)
_actions = st.lists(st.tuples(_ids, _payloads, st.floats(0.0, 10.0)), min_size=1, max_size=40)


def _n2_pings_after_it_left(count: int) -> list[tuple[bytes, tuple[str, BaseModel], float]]:
    """n2 says it left at incarnation 0, then keeps pinging n0, 10 s apart: n0 forgets
    it at 120 s, in the tick after the 12th message."""
    left = MemberUpdate(node_id=nid(2), name="n2", address=addr(2), incarnation=0, state="left")
    pings = [
        Ping(name="n2", address=addr(2), incarnation=0, seq=1, target=nid(0), updates=updates)
        for updates in [(left,), *[()] * (count - 1)]
    ]
    return [(nid(2), (PING, ping), 10.0) for ping in pings]


# What made this test fail rarely (found by reading the core; the lost failures were
# most likely this): n0 forgot a LEFT (or DEAD) member in the tick right after
# answering it by node id (a step's ack, before this test drained after every step;
# or that tick's own nack for a relay it had asked for, before the core reaped first).
_REQUEST_FROM_LEFT_N2 = PingReq(
    name="n2", address=addr(2), incarnation=0, seq=1, target=nid(3), target_address=addr(3)
)


# Without the explain phase, and with the blob to replay it: a rare failure seen once
# in CI was hidden behind the timeout, because explaining traces every line it runs.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[p for p in Phase if p is not Phase.explain], print_blob=True)
@given(actions=_actions, seed=st.integers(0, 2**32), leave_at=st.none() | st.integers(0, 40))
@example(actions=_n2_pings_after_it_left(12), seed=0, leave_at=None)
@example(
    actions=[*_n2_pings_after_it_left(11), (nid(2), (PING_REQ, _REQUEST_FROM_LEFT_N2), 10.0)],
    seed=0,
    leave_at=None,
)
def test_random_valid_messages_never_raise(
    actions: list[tuple[bytes, tuple[str, BaseModel], float]], seed: int, leave_at: int | None
) -> None:
    core = Membership(
        node_id=nid(0),
        name="n0",
        address=addr(0),
        settings=MembershipSettings(members_max=4, sync_members_max=3),
        rng=Random(seed),
        seeds=[addr(1)],
    )

    def drain() -> None:
        # As drivers do (see consensus.core): after every step and after every tick.
        for out in core.take_outbox():
            model = core.message_kinds[out.kind]
            for item in out.payloads:
                model.model_validate(item.model_dump())
            assert out.to_node is None or core.address_of(out.to_node) is not None
        core.take_events()
        core._check_invariants()

    now = 0.0
    for index, (sender, (kind, payload), advance) in enumerate(actions):
        if index == leave_at:
            core.leave()
        core.step(Incoming(sender=sender, kind=kind, payload=payload))
        drain()
        now += advance
        core.tick(now)
        drain()
    members = core.members()
    assert len(members) <= 4
    assert all(m.node_id != core.node_id for m in members)
    assert [m.node_id for m in members] == sorted(m.node_id for m in members)
    assert 0 <= core.health_score <= core.settings.awareness_max


def test_nack_for_a_member_forgotten_in_the_same_tick_goes_by_address() -> None:
    core = Membership(node_id=nid(0), name="n0", address=addr(0), settings=SETTINGS, rng=Random(0))
    left = MemberUpdate(node_id=nid(2), name="n2", address=addr(2), incarnation=0, state="left")
    core.step(Incoming(nid(2), PING, _ping(2, target=nid(0), updates=(left,))))
    core.tick(119.5)  # n2 left at 0.0; the reap at 119.5 keeps it, the next is at 120.5
    core.take_outbox()
    core.step(Incoming(nid(2), PING_REQ, _REQUEST_FROM_LEFT_N2))
    core.tick(120.5)  # the relay's nack is due and n2 is forgotten
    assert core.member(nid(2)) is None
    (nack,) = [out for out in core.take_outbox() if out.kind == NACK]
    assert (nack.to_node, nack.to_address, nack.attach_certificate) == (None, addr(2), True)


# -- helpers --------------------------------------------------------------------------


def test_a_new_incarnation_heard_of_second_hand_gets_the_certificate_again() -> None:
    # A member that restarted lost every certificate it knew. News of its new
    # incarnation may come through a third member before it speaks to us: our next
    # messages to it must carry our certificate again, or it refuses them all until
    # our next full-table sync (push_pull_interval_s, 30 s by default).
    a = Membership(node_id=nid(0), name="n0", address=addr(0), settings=SETTINGS,
                   rng=Random(1), seeds=[addr(1)])
    b = Membership(node_id=nid(1), name="n1", address=addr(1), settings=SETTINGS, rng=Random(2))
    a.tick(0.0)
    (join,) = a.take_outbox()
    b.step(Incoming(nid(0), SYNC, join.payloads[0]))
    (answer,) = b.take_outbox()
    a.step(Incoming(nid(1), SYNC, answer.payloads[0]))  # b answered: it knows us
    restarted = MemberUpdate(node_id=nid(1), name="n1", address=addr(5), incarnation=1,
                             state="alive")
    a.step(Incoming(nid(2), PING, _ping(2, target=nid(0), updates=(restarted,))))
    a.take_outbox()  # the ack to n2
    to_b: list[Outgoing] = []
    now = 0.0
    while not to_b:
        now += SETTINGS.probe_interval_s
        a.tick(now)
        to_b = [out for out in a.take_outbox() if out.to_node == nid(1)]
    assert all(out.attach_certificate for out in to_b), to_b


def _ping(index: int, *, target: bytes, updates: tuple[MemberUpdate, ...] = ()) -> Ping:
    return Ping(
        name=f"n{index}", address=addr(index), incarnation=0, seq=1, target=target, updates=updates
    )


def _sync(index: int, *, wants_reply: bool) -> Sync:
    return Sync(name=f"n{index}", address=addr(index), incarnation=0, wants_reply=wants_reply)
