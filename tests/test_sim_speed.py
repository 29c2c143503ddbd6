"""The shortcuts that make a thousand-node simulation fast, and that they change nothing.

Each shortcut has a slow, obviously right counterpart; these tests pin the two
together: payloads built without validation equal validated ones, the digest
summary equals a hash of the whole digest, the trace encodes content rather than
object identity, and the simulator hands the garbage collector back as it found it.
The timing itself is a slow test (``-m slow``).
"""

from __future__ import annotations

import gc
import time
from random import Random
from typing import Any

import pytest
from pydantic import BaseModel

from consensus.core import Incoming
from consensus.gossip import DIGEST, Gossip, GossipDigest, GossipSettings
from consensus.gossip.messages import GossipDeltas, GossipRecord, trusted
from consensus.gossip.rumors import RumorQueue
from consensus.gossip.versions import VersionTracker
from mesh.membership import LIVE_STATES, MembershipSettings, MemberState
from mesh.membership.core import Membership
from mesh.membership.messages import SYNC, Ack, MemberUpdate, Ping, StateName, Sync
from sim.nemesis import FaultKind
from sim.scenario import RunOptions
from sim.scenarios import scenario_named
from sim.trace import _LONG_SEQUENCE_MIN, canonical_payload

ORIGIN_A = b"a" * 16 + bytes(8)
ORIGIN_B = b"b" * 16 + bytes(8)


def update(index: int, state: StateName = "alive", suspector: bytes | None = None) -> MemberUpdate:
    return MemberUpdate(
        node_id=bytes([index]) * 16,
        name=f"n{index}",
        address=f"sim://n{index}",
        incarnation=index,
        state=state,
        suspector=suspector,
    )


# -- payloads built without validation -------------------------------------------------


def test_trusted_payloads_equal_validated_ones() -> None:
    record = GossipRecord(
        key="k", value=b"\x01", deleted=False, timestamp=7, origin=ORIGIN_A, version=1, tag=None
    )
    updates = (update(1), update(2, "suspect", b"s" * 16))
    cases: list[tuple[type[BaseModel], dict[str, Any]]] = [
        (
            GossipRecord,
            {
                "key": "k",
                "value": b"\x01",
                "deleted": False,
                "timestamp": 7,
                "origin": ORIGIN_A,
                "version": 1,
                "tag": None,
            },
        ),
        (GossipDigest, {"digest": ((ORIGIN_A, 3),), "summary": b"x" * 16, "rumors": (record,)}),
        (
            GossipDeltas,
            {"records": (record,), "advances": ((ORIGIN_A, 1, 2),), "request": ((ORIGIN_B, 0),)},
        ),
        (MemberUpdate, dict(update(3).__dict__)),
        (
            Ping,
            {
                "name": "n0",
                "address": "sim://n0",
                "incarnation": 0,
                "seq": 1,
                "target": b"t" * 16,
                "updates": updates,
            },
        ),
        (
            Ack,
            {
                "name": "n0",
                "address": "sim://n0",
                "incarnation": 0,
                "seq": 1,
                "target": b"t" * 16,
                "updates": (),
            },
        ),
        (
            Sync,
            {
                "name": "n0",
                "address": "sim://n0",
                "incarnation": 2,
                "wants_reply": True,
                "members": updates,
            },
        ),
    ]
    for model, values in cases:
        fast, checked = trusted(model, dict(values)), model(**values)
        assert fast == checked and hash(fast) == hash(checked), model
        assert fast.model_dump() == checked.model_dump(), model
        assert canonical_payload(fast) == canonical_payload(checked), model
        assert type(fast).model_validate(fast.model_dump()) == fast, model
        with pytest.raises(ValueError):
            fast.__setattr__(next(iter(values)), None)  # frozen, like the validated one


def test_member_state_attributes_match_the_sets_they_replace() -> None:
    assert {state for state in MemberState if state.live} == LIVE_STATES
    ranks = [
        state.rank
        for state in (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT)
    ]
    assert ranks == [0, 1, 2, 3]


# -- the gossip digest summary ---------------------------------------------------------


def test_digest_summary_is_a_hash_of_the_watermarks_in_any_order() -> None:
    rng = Random(5)
    origins = [bytes([index]) * 16 + bytes(8) for index in range(12)]
    arrivals = [(origin, version) for origin in origins for version in range(1, 6)]
    first, second = VersionTracker(), VersionTracker()
    for tracker in (first, second):
        rng.shuffle(arrivals)
        for origin, version in arrivals:
            if not tracker.covers(origin, version):
                tracker.receive(origin, version)
    assert list(first.watermarks) != list(second.watermarks)  # first-seen orders differ
    assert first.summary() == second.summary()
    fresh = VersionTracker()
    for origin in origins:
        fresh.advance(origin, 0, 5)
    assert fresh.summary() == first.summary()
    first.receive(origins[0], 6)
    assert first.summary() != second.summary()
    assert dict(first.digest(1 << 16)) == dict(first.watermarks)


def test_a_digest_of_a_recent_state_is_answered_from_the_moves_since() -> None:
    rng = Random(3)
    origins = [bytes([index]) * 16 + bytes(8) for index in range(6)]
    tracker = VersionTracker()
    states = []
    for _ in range(40):
        states.append((tracker.summary(), dict(tracker.watermarks)))
        origin = rng.choice(origins)
        tracker.receive(origin, tracker.watermark(origin) + 1)
    assert tracker.since(tracker.summary()) is None  # the current state is not "recent"
    for summary, watermarks in states[-16:]:
        then = tracker.since(summary)
        assert then is not None and tracker.state_then(then) == watermarks
        assert tracker.lacking_since(then) == tracker.lacking(watermarks)
        assert tracker.compare(watermarks) == (tracker.lacking(watermarks), [])
    assert tracker.since(states[0][0]) is None  # forgotten: too old


def test_taking_rumours_for_several_peers_at_once_equals_taking_them_one_by_one() -> None:
    rng = Random(9)
    for _ in range(200):
        one, many = RumorQueue(64), RumorQueue(64)
        for key in range(rng.randint(0, 12)):
            value = bytes(rng.randint(0, 300))
            record = GossipRecord(key=f"k{key}", value=value, deleted=False, timestamp=1,
                                  origin=ORIGIN_A, version=key + 1)
            left = rng.randint(1, 4)
            one.push(key, record, left)
            many.push(key, record, left)
        count, size, times = rng.randint(0, 8), rng.randint(0, 2000), rng.randint(1, 4)
        expected = [one.take(count, size) for _ in range(times)]
        answers = many.take_many(count, size, times)
        assert answers == expected
        assert [many.take(64, 1 << 20) for _ in range(4)] == [one.take(64, 1 << 20)
                                                               for _ in range(4)]


def gossip_core(node: int, members: int, seed: int = 1) -> Gossip:
    core = Gossip(
        node_id=bytes([node]) * 16,
        settings=GossipSettings(),
        rng=Random(seed),
        wall_ms=lambda: 1_700_000_000_000,
    )
    core.update_members([bytes([index]) * 16 for index in range(members)])
    return core


def test_a_round_sends_one_payload_object_to_every_peer() -> None:
    core = gossip_core(0, members=10)
    core.set("k", 1)
    core.tick(1.0)
    sent = core.take_outbox()
    assert len(sent) == 3 and len({id(out.payloads[0]) for out in sent}) == 1
    payload = sent[0].payloads[0]
    assert isinstance(payload, GossipDigest) and payload.rumors


def test_an_in_sync_peer_answers_nothing_and_a_lagging_one_gets_deltas() -> None:
    writer, reader = gossip_core(0, members=2), gossip_core(1, members=2, seed=2)
    writer.set("k", 1)
    writer.tick(1.0)
    digest = writer.take_outbox()[0].payloads[0]
    assert isinstance(digest, GossipDigest)
    lagging = digest.model_copy(update={"rumors": ()})
    reader.step(Incoming(writer.node_id, DIGEST, lagging))
    assert [out.kind for out in reader.take_outbox()] == ["gossip.deltas"]  # asks for it
    reader.step(Incoming(writer.node_id, DIGEST, digest))  # the rumour brings it in sync
    assert reader.take_outbox() == []
    assert reader.get("k") == 1 and reader.digest() == writer.digest()


# -- membership syncs share update objects -----------------------------------------------


def test_a_sync_of_news_already_held_counts_stale_and_shares_the_objects() -> None:
    roster = [(bytes([index]) * 16, f"n{index}", f"sim://n{index}") for index in range(6)]
    cores = [
        Membership(
            node_id=node_id,
            name=name,
            address=address,
            settings=MembershipSettings(),
            rng=Random(index),
            known_members=roster,
        )
        for index, (node_id, name, address) in enumerate(roster[:2])
    ]
    first, second = cores
    first._send_sync(second.node_id, None, wants_reply=False)
    (out,) = first.take_outbox()
    sync = out.payloads[0]
    assert isinstance(sync, Sync) and out.kind == SYNC
    before = second.counters["updates_stale"]
    second.step(Incoming(first.node_id, SYNC, sync))
    assert second.counters["updates_stale"] - before == len(sync.members) - 1  # all but self
    shared = {id(update) for update in sync.members}
    assert all(
        id(record.cached_update) in shared
        for record in second._members.values()
        if record.node_id != first.node_id
    )
    second._check_invariants()


# -- the trace ----------------------------------------------------------------------------


def test_trace_encoding_follows_content_not_identity() -> None:
    long = tuple((bytes([index]) * 24, index) for index in range(_LONG_SEQUENCE_MIN + 4))
    one = GossipDigest(digest=long, summary=b"", rumors=())
    two = GossipDigest(digest=tuple(list(long)), summary=b"", rumors=())
    assert one.digest is not two.digest
    assert canonical_payload(one) == canonical_payload(two)
    changed = GossipDigest(digest=(*long[:-1], (long[-1][0], 99)), summary=b"", rumors=())
    assert canonical_payload(changed) != canonical_payload(one)
    members = tuple(update(index) for index in range(_LONG_SEQUENCE_MIN + 1))
    sync = Sync(name="n", address="a", incarnation=0, wants_reply=False, members=members)
    other = Sync(
        name="n", address="a", incarnation=0, wants_reply=False, members=(*members[:-1], update(99))
    )
    assert canonical_payload(sync) != canonical_payload(other)


# -- the garbage collector ---------------------------------------------------------------


def test_a_run_leaves_the_collector_thresholds_as_it_found_them() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        scenario_named("gossip").run(RunOptions(seed=1, nodes=5, duration_s=2.0))
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)


# -- the target -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_thousand_node_gossip_run_with_every_fault_takes_under_a_minute() -> None:
    options = RunOptions(seed=1, nodes=1000, duration_s=60.0, faults=frozenset(FaultKind))
    started = time.perf_counter()
    result = scenario_named("gossip").run(options)
    elapsed = time.perf_counter() - started
    print(f"\n1000 nodes x 60 s, every fault: {elapsed:.1f} s; {result.stats}")
    assert result.passed, result.violations[:3]
    assert elapsed < 60.0
