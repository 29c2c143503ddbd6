"""The simulator engine, driven with two tiny pure cores defined here.

``Beacon`` sends a numbered ping to fixed targets on every tick and remembers
what it received: it makes message fates countable (loss, duplication,
partitions, crashes, pauses). ``Flood`` gossips the largest number it has seen
to a few random peers per tick (node 0 raises it once per second): it makes
runs rich enough for determinism and speed checks.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from random import Random
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from consensus.core import Incoming, Outgoing, ProtocolCore
from sim.disk import SimDisk
from sim.engine import Engine
from sim.nemesis import (
    FaultKind,
    ScriptedNemesis,
    SwarmNemesis,
    SwarmSettings,
    parse_script,
)
from sim.network import FixedLatency, NetworkSettings
from sim.node import NodeContext, NodeState, SimNode
from sim.rng import Streams
from sim.trace import TraceMode
from sim.world import Violation, World

PING = "toy.ping"
STATE = "toy.state"


class Ping(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int


class State(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: int
    origin: bytes


class Beacon:
    """Pings ``targets`` (addresses) on every tick; records (sender, seq) received."""

    def __init__(self, context: NodeContext, targets: Sequence[str]) -> None:
        self.context = context
        self.targets = list(targets)
        self.seq = 0
        self.ticks = 0
        self.received: list[tuple[bytes, int]] = []
        self._outbox: list[Outgoing] = []

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        return {PING: Ping}

    def step(self, message: Incoming) -> None:
        assert isinstance(message.payload, Ping)
        self.received.append((message.sender, message.payload.seq))

    def tick(self, now: float) -> None:
        self.ticks += 1
        for target in self.targets:
            self.seq += 1
            self._outbox.append(Outgoing(PING, (Ping(seq=self.seq),), to_address=target))

    def take_outbox(self) -> list[Outgoing]:
        outbox, self._outbox = self._outbox, []
        return outbox


class Flood:
    """Push gossip of a maximum; node 0 raises it every ``raise_every`` ticks."""

    def __init__(self, context: NodeContext, peers: Sequence[bytes], fanout: int = 3) -> None:
        self.context = context
        self.rng = context.rng
        self.peers = sorted(p for p in peers if p != context.node_id)
        self.fanout = fanout
        self.value = 0
        self.ticks = 0
        self._outbox: list[Outgoing] = []
        self._events: list[int] = []

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        return {STATE: State}

    def step(self, message: Incoming) -> None:
        assert isinstance(message.payload, State)
        if message.payload.value > self.value:
            self.value = message.payload.value
            self._events.append(self.value)

    def tick(self, now: float) -> None:
        self.ticks += 1
        if self.context.index == 0 and self.ticks % 10 == 0:
            self.value += 1
            self._events.append(self.value)
        state = State(value=self.value, origin=self.context.node_id)
        for peer in self.rng.sample(self.peers, min(self.fanout, len(self.peers))):
            self._outbox.append(Outgoing(STATE, (state,), to_node=peer))

    def take_outbox(self) -> list[Outgoing]:
        outbox, self._outbox = self._outbox, []
        return outbox

    def take_events(self) -> list[int]:
        events, self._events = self._events, []
        return events


def beacon_world(
    n: int,
    targets: Mapping[int, Sequence[int]],
    *,
    seed: int = 1,
    tick_interval_s: float = 0.01,
    network: NetworkSettings | None = None,
    **kwargs: Any,
) -> World:
    def factory(context: NodeContext) -> list[ProtocolCore]:
        return [Beacon(context, [f"sim://n{t}" for t in targets.get(context.index, ())])]

    settings = network or NetworkSettings(latency=FixedLatency(0.001))
    return World(seed, n, factory, network=settings, tick_interval_s=tick_interval_s, **kwargs)


def flood_world(seed: int, n: int, **kwargs: Any) -> World:
    ids = World.node_ids_for(seed, n)

    def factory(context: NodeContext) -> list[ProtocolCore]:
        return [Flood(context, ids)]

    return World(seed, n, factory, **kwargs)


def received_from(world: World, dst: int, src: int) -> list[int]:
    beacon = world.nodes[dst].core(Beacon)
    sender = world.nodes[src].node_id
    return [seq for who, seq in beacon.received if who == sender]


# -- engine and streams ---------------------------------------------------------------


def test_engine_runs_events_in_time_then_schedule_order() -> None:
    engine = Engine()
    seen: list[str] = []
    engine.at(2.0, seen.append, "late")
    engine.at(1.0, seen.append, "first at 1")
    engine.at(1.0, seen.append, "second at 1")
    engine.after(0.5, seen.append, "early")
    engine.run(1.5)
    assert seen == ["early", "first at 1", "second at 1"]
    assert engine.now == 1.5 and engine.pending == 1
    engine.run(3.0)
    assert seen[-1] == "late" and engine.events_processed == 4


def test_streams_are_independent_and_reproducible() -> None:
    streams = Streams(7)
    assert streams.stream("a").random() == Streams(7).stream("a").random()
    assert streams.stream("a").random() != streams.stream("b").random()
    assert streams.stream("a").random() != Streams(8).stream("a").random()
    assert len(streams.node_id(0)) == 16 and streams.node_id(0) != streams.node_id(1)


# -- determinism -------------------------------------------------------------------


def _chaotic_flood(seed: int, trace: TraceMode = TraceMode.FULL) -> World:
    nemesis = SwarmNemesis(
        set(FaultKind), Streams(seed).stream("nemesis"), duration=5.0, nodes=8,
        settings=SwarmSettings(activation=1.0, crash_interval_s=(0.5, 1.0)),
    )  # fmt: skip
    network = NetworkSettings(loss=0.05, duplicate=0.05, reorder=0.1)
    world = flood_world(seed, 8, network=network, nemesis=nemesis, trace=trace, torn_writes=True)
    world.run(5.0)
    return world


def test_same_seed_same_digest_and_different_seed_different_digest() -> None:
    first, again, other = _chaotic_flood(11), _chaotic_flood(11), _chaotic_flood(12)
    assert first.trace_digest() == again.trace_digest()
    assert first.stats().network == again.stats().network
    assert first.trace_digest() != other.trace_digest()
    assert first.faults, "the swarm applied faults"
    headers = _chaotic_flood(11, TraceMode.HEADERS).trace_digest()
    assert headers == _chaotic_flood(11, TraceMode.HEADERS).trace_digest() != first.trace_digest()


def test_reading_the_digest_mid_run_does_not_change_it() -> None:
    peeked, plain = flood_world(3, 5, trace_keep=4), flood_world(3, 5)
    for until in (0.5, 1.0, 1.5, 2.0):
        peeked.run(until)
        peeked.trace_digest()
    plain.run(2.0)
    assert peeked.trace_digest() == plain.trace_digest()
    assert peeked.trace.recent is not None and len(peeked.trace.recent) == 4


def test_digest_does_not_depend_on_hash_randomization() -> None:
    program = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_sim_engine import _chaotic_flood
        print(_chaotic_flood(5).trace_digest())
        """
    )
    here = os.path.dirname(__file__)
    digests = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run(
            [sys.executable, "-c", program, here], env=env, capture_output=True, text=True,
            check=True, timeout=60,
        )  # fmt: skip
        digests.add(result.stdout.strip())
    assert digests == {_chaotic_flood(5).trace_digest()}


# -- network -------------------------------------------------------------------------


def test_loss_and_duplication_rates_are_plausible() -> None:
    network = NetworkSettings(latency=FixedLatency(0.001), loss=0.2, duplicate=0.1)
    world = beacon_world(2, {0: [1]}, network=network)
    world.run(20.0)  # about 2000 pings
    sent = world.nodes[0].core(Beacon).seq
    counters = world.network.counters
    assert 1900 <= sent <= 2001
    assert abs(counters.lost / sent - 0.2) < 0.04, counters
    survivors = sent - counters.lost
    assert abs(counters.duplicated / survivors - 0.1) < 0.03, counters
    got = received_from(world, 1, 0)
    assert len(got) == counters.delivered  # every delivered copy reached the core
    assert len(got) - len(set(got)) == counters.duplicated


def test_reordering_delays_some_messages_past_later_ones() -> None:
    network = NetworkSettings(latency=FixedLatency(0.001), reorder=0.3, reorder_delay_max_s=0.05)
    world = beacon_world(2, {0: [1]}, network=network)
    world.run(2.0)
    got = received_from(world, 1, 0)
    inversions = sum(1 for a, b in itertools.pairwise(got) if a > b)
    assert inversions > 10 and world.network.counters.reordered > 0


def test_partition_blocks_both_ways_and_heal_restores() -> None:
    everyone = {i: [j for j in range(4) if j != i] for i in range(4)}
    world = beacon_world(4, everyone)
    crossings: list[tuple[float, int, int]] = []
    world.on_deliver = lambda src, dst, kind, payloads: crossings.append(
        (world.now, src.index, dst.index)
    )
    world.run(1.0)
    world.partition([{"n0", "n1"}, {"n2", "n3"}])
    world.run(2.0)
    world.heal()
    world.run(3.0)

    def across(a: int, b: int) -> bool:
        return (a < 2) != (b < 2)

    # Messages already in flight when the cut starts still land (1 ms latency).
    cut = [c for c in crossings if 1.002 < c[0] <= 2.0]
    assert cut and not any(across(s, d) for _, s, d in cut)
    assert any(across(s, d) for t, s, d in crossings if t > 2.002)
    assert world.network.counters.blocked > 0


def test_one_way_block_drops_only_one_direction() -> None:
    world = beacon_world(2, {0: [1], 1: [0]})
    world.block_one_way(["n0"], ["n1"])
    world.run(1.0)
    assert received_from(world, 1, 0) == []
    assert len(received_from(world, 0, 1)) > 50
    assert world.network.is_blocked(world.nodes[0].node_id, world.nodes[1].node_id)
    world.heal()
    world.run(2.0)
    assert len(received_from(world, 1, 0)) > 50


def test_unknown_destination_is_counted_and_dropped() -> None:
    def factory(context: NodeContext) -> list[ProtocolCore]:
        return [Beacon(context, ["sim://n9", "tcp://elsewhere:1"])]

    world = World(1, 2, factory, tick_interval_s=0.1)
    world.run(1.0)
    counters = world.network.counters
    assert counters.dropped_unknown == counters.sent > 0 and counters.delivered == 0


# -- node faults ---------------------------------------------------------------------


def test_crash_drops_inbound_and_restart_rebuilds_cores_with_same_id() -> None:
    world = beacon_world(2, {0: [1]})
    world.run(1.0)
    node = world.nodes[1]
    first = node.core(Beacon)
    assert first.context.restarts == 0 and len(first.received) > 50
    world.crash(1)
    assert node.state is NodeState.CRASHED and node.cores == ()
    with pytest.raises(LookupError):
        node.core(Beacon)
    world.run(2.0)
    assert world.network.counters.dropped_dead > 50
    world.restart("n1")
    second = node.core(Beacon)
    assert second is not first and node.restarts == 1 and second.context.restarts == 1
    assert second.context.node_id == first.context.node_id == node.node_id
    assert second.received == []  # memory did not survive
    world.run(3.0)
    assert len(second.received) > 50 and second.ticks > 50
    assert first.ticks <= 100  # the old incarnation's timer stopped at the crash


def test_restart_of_a_running_node_crashes_it_first() -> None:
    world = beacon_world(1, {})
    world.run(0.5)
    before = world.nodes[0].core(Beacon)
    world.restart("n0")
    world.run(1.0)
    assert world.nodes[0].restarts == 1 and world.nodes[0].core(Beacon) is not before


def test_disk_loses_unsynced_writes_at_crash() -> None:
    disk = SimDisk()
    disk.write("term", b"3")
    disk.fsync("term")
    disk.write("term", b"4")  # not synced
    disk.append("log", b"entry-1;")
    disk.fsync("log")
    disk.append("log", b"entry-2;")
    disk.write("scratch", b"never synced")
    assert disk.read("term") == b"4" and disk.read("log") == b"entry-1;entry-2;"
    assert disk.names() == ["log", "scratch", "term"]
    disk.crash()
    assert disk.read("term") == b"3" and disk.read("log") == b"entry-1;"
    assert disk.read("scratch") is None and disk.names() == ["log", "term"]
    assert disk.counters.bytes_lost == len(b"4") + len(b"entry-2;") + len(b"never synced")


def test_torn_writes_keep_a_random_prefix_of_the_unsynced_tail() -> None:
    kept = set()
    for seed in range(40):
        disk = SimDisk()
        disk.append("log", b"synced|")
        disk.sync()
        disk.append("log", b"0123456789")
        disk.crash(Random(seed))
        data = disk.read("log")
        assert data is not None and data.startswith(b"synced|")
        tail = data[len(b"synced|") :]
        assert b"0123456789".startswith(tail)
        kept.add(len(tail))
    assert len(kept) > 5  # prefixes of many lengths, including none and all
    assert 0 in kept or 10 in kept


def test_world_disk_survives_restart_synced_only() -> None:
    contexts: list[NodeContext] = []

    def factory(context: NodeContext) -> list[ProtocolCore]:
        contexts.append(context)
        return [Beacon(context, [])]

    world = World(3, 1, factory, torn_writes=False)
    disk = contexts[0].disk
    disk.append("log", b"a")
    disk.fsync("log")
    disk.append("log", b"b")
    world.crash("n0")
    world.restart("n0")
    assert contexts[1].disk is disk and disk.read("log") == b"a"


def test_pause_queues_inbound_and_resume_delivers_it() -> None:
    network = NetworkSettings(latency=FixedLatency(0.001), paused_inbox_messages_max=30)
    world = beacon_world(2, {0: [1]}, network=network)
    world.run(1.0)
    beacon = world.nodes[1].core(Beacon)
    received, ticks = len(beacon.received), beacon.ticks
    world.pause("n1")
    world.run(2.0)
    assert len(beacon.received) == received and beacon.ticks == ticks
    assert len(world.nodes[1].inbox) == 30
    assert world.network.counters.queue_overflow > 50
    world.resume("n1")
    assert len(beacon.received) == received + 30  # the queue, delivered on resume
    world.run(3.0)
    assert beacon.ticks > ticks + 50 and world.nodes[1].core(Beacon) is beacon


def test_crash_while_paused_drops_the_queue() -> None:
    world = beacon_world(2, {0: [1]})
    world.pause("n1")
    world.run(0.5)
    queued = len(world.nodes[1].inbox)
    assert queued > 10
    world.crash("n1")
    assert not world.nodes[1].inbox
    assert world.network.counters.dropped_dead >= queued


def test_skew_shifts_the_wall_clock() -> None:
    world = beacon_world(3, {})
    world.run(1.234)
    n0, n2 = world.nodes[0], world.nodes[2]
    assert n0.wall_ms() == n2.wall_ms()
    world.set_skew("n2", 500)
    assert n2.core(Beacon).context.wall_ms() - n0.wall_ms() == 500
    world.set_skew(n2, -250)
    assert n2.wall_ms() - n0.wall_ms() == -250
    assert n0.core(Beacon).context.now() == pytest.approx(1.234)


def test_monotonic_spread_gives_each_node_its_own_origin() -> None:
    world = beacon_world(3, {}, monotonic_spread_s=100.0)
    origins = {node.now() for node in world.nodes}
    assert len(origins) == 3 and all(0 <= t < 100 for t in origins)


# -- nemesis ------------------------------------------------------------------------

SCRIPT = """
# a split brain, then a crash and a slow node
at 2 loss 0.1
at 2 skew n3 +500
at 3 crash n2
at 4 pause n1
at 5 partition n0,n1 | n2,n3,n4
at 5.5 oneway n0 -> n3
at 6 resume n1
at 8 restart n2
at 10 heal   # everyone talks again
"""


def test_scripted_nemesis_parses_and_round_trips() -> None:
    actions = parse_script(SCRIPT)
    assert [a.kind for a in actions] == [
        "loss", "skew", "crash", "pause", "partition", "oneway", "resume", "restart", "heal",
    ]  # fmt: skip
    assert actions[4].groups == [["n0", "n1"], ["n2", "n3", "n4"]]
    assert actions[5].groups == [["n0"], ["n3"]]
    assert actions[1].node == "n3" and actions[1].value == 500
    assert actions[0].describe() == "at 2 loss 0.1"
    assert actions[4].describe() == "at 5 partition n0,n1 | n2,n3,n4"
    text = ScriptedNemesis(actions).describe()
    assert parse_script(text) == actions


def test_scripted_nemesis_drives_the_world() -> None:
    everyone = {i: [j for j in range(5) if j != i] for i in range(5)}
    world = beacon_world(5, everyone, nemesis=ScriptedNemesis.parse(SCRIPT))
    world.run(4.5)
    assert world.nodes[2].state is NodeState.CRASHED
    assert world.nodes[1].state is NodeState.PAUSED
    assert world.network.loss == 0.1 and world.nodes[3].skew_ms == 500
    world.run(12.0)
    assert all(node.up for node in world.nodes) and not world.network.partitioned
    assert world.nodes[2].restarts == 1
    assert [text for _, text in world.faults][-1] == "at 10 heal"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("at x crash n2", "not a number"),
        ("crash n2", "expected 'at"),
        ("at 3 explode n2", "unknown fault"),
        ("at 3 crash", "takes 1 argument"),
        ("at 3 crash n1,n2", "one node"),
        ("at 3 loss 1.5", "probability"),
        ("at 3 partition n0,n1", "two or more groups"),
        ("at 3 partition n0,n1 | n1,n2", "two groups"),
        ("at 3 partition n0,,n1 | n2", "bad node group"),
        ("at 3 oneway n0 n1", "->"),
        ("at 3 skew n1 fast", "not an integer"),
        ("at -1 heal", ">= 0"),
    ],
)
def test_bad_script_lines_raise_naming_the_line(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match="line 3") as caught:
        parse_script(f"at 1 heal\n# fine\n{line}\n")
    assert reason in str(caught.value) and line in str(caught.value)


def test_a_script_naming_an_unknown_node_is_refused() -> None:
    with pytest.raises(ValueError, match="n7"):
        beacon_world(3, {}, nemesis=ScriptedNemesis.parse("at 1 crash n7"))


def _swarm(seed: int, n: int = 5, **settings: Any) -> SwarmNemesis:
    return SwarmNemesis(
        set(FaultKind), Streams(seed).stream("nemesis"), duration=30.0, nodes=n,
        settings=SwarmSettings(**settings),
    )  # fmt: skip


def test_swarm_nemesis_is_reproducible_and_describable() -> None:
    first, again = _swarm(3), _swarm(3)
    assert first.describe() == again.describe() and first.actions() == again.actions()
    assert first.describe() != _swarm(4).describe()
    # The description is a script that replays the same schedule.
    assert parse_script(first.describe()) == first.actions()
    actives = {tuple(_swarm(seed).active) for seed in range(20)}
    assert len(actives) > 5  # swarm: different seeds switch different kinds on


def test_swarm_heals_everything_by_heal_at_and_bounds_the_down_count() -> None:
    for seed in range(60):
        n = 3 + seed % 5
        nemesis = _swarm(seed, n, activation=1.0, crash_interval_s=(0.2, 2.0))
        assert nemesis.heal_at == 21.0 and nemesis.max_down == (n - 1) // 2
        down: set[str] = set()
        most_down = 0
        for action in nemesis.actions():
            assert action.at <= nemesis.heal_at
            if action.kind in ("crash", "pause"):
                assert action.node not in down
                down.add(action.node)
            elif action.kind in ("restart", "resume"):
                down.discard(action.node)
            most_down = max(most_down, len(down))
        assert not down and most_down <= nemesis.max_down
    # Driven through a world: at heal_at the cluster is whole again.
    nemesis = _swarm(9, 5, activation=1.0, crash_interval_s=(0.5, 1.0))
    world = beacon_world(5, {0: [1]}, nemesis=nemesis, tick_interval_s=0.05)
    world.run(nemesis.heal_at)
    assert all(node.up and node.skew_ms == 0 for node in world.nodes)
    assert not world.network.partitioned
    assert (world.network.loss, world.network.duplicate, world.network.reorder) == (0, 0, 0)
    assert sum(node.restarts for node in world.nodes) > 0
    assert world.describe().startswith("# seed=1 nodes=5")


# -- observers, hooks, checkers ------------------------------------------------------


class MaxChecker:
    """Flags any node that ends a run without the largest value (a toy convergence check)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, world: World, node: SimNode) -> None:
        self.steps += 1

    def at_end(self, world: World) -> list[Violation]:
        values = {node.name: node.core(Flood).value for node in world.up_nodes()}
        top = max(values.values())
        return [
            Violation("max", world.now, f"{name} has {value}, not {top}")
            for name, value in values.items()
            if value != top
        ]


def test_checker_violations_are_returned_from_run() -> None:
    checker = MaxChecker()
    world = flood_world(2, 6, checkers=[checker])
    world.partition([["n5"], ["n0", "n1", "n2", "n3", "n4"]])
    violations = world.run(2.6)  # n5 heard nothing; the others have all seen 2
    assert checker.steps > 100
    assert [v.message.split()[0] for v in violations] == ["n5"]
    assert violations[0].checker == "max" and str(violations[0]).startswith("[max @ 2.600s] n5")
    world.heal()
    assert world.run_until(lambda: not world.check(), deadline=3.9)
    assert world.now < 3.9


def test_node_hook_and_event_observers_see_every_batch() -> None:
    hooked: list[str] = []
    events: list[tuple[str, int]] = []

    def on_events(node: SimNode, core: ProtocolCore, found: list[Any]) -> None:
        events.extend((node.name, value) for value in found)

    world = flood_world(4, 4, node_hook=lambda node: hooked.append(node.name), on_events=on_events)
    world.run(1.05)
    assert {"n0", "n1", "n2", "n3"} <= set(hooked)
    assert ("n0", 1) in events and any(name != "n0" and v == 1 for name, v in events)


def test_inject_delivers_a_local_message_now() -> None:
    world = beacon_world(2, {})
    assert world.inject("n1", PING, [Ping(seq=42)], sender="n0")
    assert received_from(world, 1, 0) == [42]
    world.crash("n1")
    assert not world.inject("n1", PING, [Ping(seq=43)])


# -- speed ---------------------------------------------------------------------------


def test_two_hundred_flooding_nodes_run_ten_virtual_seconds() -> None:
    world = flood_world(1, 200, network=NetworkSettings(loss=0.01))
    world.run(10.0)
    stats = world.stats()
    print(f"\n200 nodes x 10 s: {stats.describe()}")
    assert stats.ticks >= 200 * 99 and stats.messages_delivered > 50_000
    assert all(node.core(Flood).value >= 9 for node in world.nodes)


@pytest.mark.slow
def test_a_thousand_nodes_run_sixty_virtual_seconds() -> None:
    world = flood_world(1, 1000, tick_interval_s=0.2, trace=TraceMode.FULL)
    world.run(60.0)
    print(f"\n1000 nodes x 60 s: {world.stats().describe()}")
    assert world.stats().wall_s < 60.0
