"""Scenario ``raft``: Raft's five safety properties and a linearizable KV under faults.

Fixed seeds for 3 and 5 voters under every fault kind (also with the writes of
many clients joined into batch entries), scripted leader faults,
lost and torn unsynced writes, determinism, the storage on the simulated disk,
and proof that the checkers fail: by hand-fed bad observations and by a storage
that never syncs. Every seed that ever failed joins its list here and stays.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from random import Random

import pytest

from consensus.raft import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    RaftSettings,
    Snapshot,
    StorageError,
)
from consensus.raft.snapshot_transfer import Receiving, Sending
from sim.disk import SimDisk
from sim.nemesis import FaultKind
from sim.raft_checkers import (
    ELECTION_SAFETY,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LOG_MATCHING,
    PROPERTIES,
    STATE_MACHINE_SAFETY,
    Applied,
    RaftSafety,
    Written,
)
from sim.raft_storage import LOG_FILE, SNAPSHOT_FILE, SimRaftStorage
from sim.scenario import RunOptions, RunResult
from sim.scenarios.raft import RaftScenario

ALL_FAULTS = frozenset(FaultKind)

THREE_VOTER_SEEDS = [1, 2, 3, 4, 6, 11, 12]
FIVE_VOTER_SEEDS = [1, 2, 3, 4]

# A fsync slow enough that a crash under load almost always finds writes unsynced.
SLOW_FSYNC_S = (0.02, 0.05)

# Every voter crashes at once, then all restart: only their disks carry the state over.
CRASH_ALL = ("at 8 crash n0; at 8 crash n1; at 8 crash n2; "
             "at 9 restart n0; at 9 restart n1; at 9 restart n2")


def run(seed: int, nodes: int, duration: float, *, faults: frozenset[FaultKind] = frozenset(),
        script: str | None = None, scenario: RaftScenario | None = None) -> RunResult:
    options = RunOptions(seed=seed, nodes=nodes, duration_s=duration, faults=faults,
                         script=script.replace("; ", "\n") if script else None)
    return (scenario or RaftScenario()).run(options)


def explain(result: RunResult) -> str:
    lines = [str(v) for v in result.violations]
    return "\n".join(lines) + f"\n(seed {result.seed})\n{result.description}"


def leader_at(result: RunResult, at: float) -> str:
    """The node that led the highest term seen by time ``at``."""
    seen = [entry for entry in result.series["leadership"] if entry[0] <= at]
    return str(max(seen, key=lambda entry: entry[2])[1])


def probe_leader(seed: int, nodes: int, at: float) -> str:
    """Who leads at ``at`` in a run of this seed: runs are identical until the first fault."""
    return leader_at(run(seed, nodes, at), at)


def assert_healthy(result: RunResult) -> None:
    assert result.passed, explain(result)
    assert result.metrics["linearizable"] == 1.0
    assert result.metrics["client_ops_ok"] > 100
    assert result.metrics["client_ops_refused"] == 0
    assert result.metrics["converge_s"] <= result.metrics["settle_bound_s"]


# -- seeds under every fault kind ----------------------------------------------------


@pytest.mark.parametrize("seed", THREE_VOTER_SEEDS)
def test_three_voters_under_every_fault_kind(seed: int) -> None:
    assert_healthy(run(seed, 3, 20, faults=ALL_FAULTS))


@pytest.mark.parametrize("seed", FIVE_VOTER_SEEDS)
def test_five_voters_under_every_fault_kind(seed: int) -> None:
    assert_healthy(run(seed, 5, 20, faults=ALL_FAULTS))


BATCH_SEEDS = [(1, 3), (2, 3), (3, 3), (4, 5), (5, 5)]


@pytest.mark.parametrize(("seed", "nodes"), BATCH_SEEDS)
def test_batch_entries_under_every_fault_kind(seed: int, nodes: int) -> None:
    # Many clients and a slow fsync: the leader holds the key writes that arrive
    # during each fsync and proposes them as one batch entry.
    busy = RaftScenario(clients=16, fsync_latency_s=SLOW_FSYNC_S)
    result = run(seed, nodes, 20, faults=ALL_FAULTS, scenario=busy)
    assert_healthy(result)
    assert result.metrics["batch_entries"] > 50


# -- scripted faults -------------------------------------------------------------------


def test_leader_crash_then_restart() -> None:
    leader = probe_leader(7, 3, 8)
    result = run(7, 3, 20, script=f"at 8 crash {leader}; at 14 restart {leader}")
    assert_healthy(result)
    assert leader_at(result, 8) == leader
    assert result.metrics["elections"] >= 2
    # Followers wait one randomized election timeout, [1 s, 2 s), then pre-vote and vote.
    assert 1.0 <= result.metrics["leader_failover_s_p50"] < 2.5


def test_leader_partitioned_into_the_minority_then_healed() -> None:
    leader = probe_leader(8, 5, 8)
    others = [f"n{i}" for i in range(5) if f"n{i}" != leader]
    minority = ",".join([leader, others[0]])
    script = f"at 8 partition {minority} | {','.join(others[1:])}; at 15 heal"
    result = run(8, 5, 20, script=script)
    assert_healthy(result)
    assert result.metrics["elections"] >= 2
    assert result.metrics["leader_failover_s_p50"] < 2.5
    # The new leader came from the majority side, in a later term.
    later = [entry for entry in result.series["leadership"] if 8 < entry[0] < 15]
    assert later and all(entry[1] not in (leader, others[0]) for entry in later)


def test_leader_paused_then_resumed() -> None:
    leader = probe_leader(9, 3, 8)
    result = run(9, 3, 20, script=f"at 8 pause {leader}; at 13 resume {leader}")
    assert_healthy(result)
    assert result.metrics["elections"] >= 2
    assert result.metrics["leader_failover_s_p50"] < 2.5


def test_crashes_lose_unsynced_writes_and_nothing_acknowledged() -> None:
    slow = RaftScenario(fsync_latency_s=SLOW_FSYNC_S)
    leader = probe_leader(10, 3, 6)
    follower = next(f"n{i}" for i in range(3) if f"n{i}" != leader)
    script = (f"at 6 crash {leader}; at 9 restart {leader}; at 11 crash {follower}; "
              f"at 13 restart {follower}; at 15 crash {leader}; at 16 restart {leader}")
    result = run(10, 3, 20, script=script, scenario=slow)
    assert_healthy(result)
    assert result.metrics["disk_bytes_lost"] > 0  # the crashes did catch writes unsynced


def test_torn_writes_are_cut_at_recovery() -> None:
    torn = RaftScenario(torn_writes=True, fsync_latency_s=SLOW_FSYNC_S)
    # Each node in turn crashes (keeping a random prefix of its unsynced log tail)
    # and restarts a second later.
    script = "; ".join(f"at {2 + 2 * k} crash n{k % 3}; at {3 + 2 * k} restart n{k % 3}"
                       for k in range(8))
    result = run(1, 3, 20, script=script, scenario=torn)
    assert_healthy(result)
    assert result.metrics["disk_torn_tails"] > 0
    assert result.metrics["torn_tails_repaired"] > 0


def test_crashed_followers_catch_up_by_snapshot() -> None:
    small = RaftScenario(snapshot_interval_entries=16, snapshot_keep_entries=0)
    result = run(13, 3, 20, script="at 4 crash n1; at 12 restart n1; at 5 crash n2; "
                                   "at 13 restart n2", scenario=small)
    assert_healthy(result)
    assert result.metrics["snapshots_installed"] >= 1


def test_every_node_crashed_at_once_recovers_from_its_disk() -> None:
    result = run(14, 3, 20, script=CRASH_ALL)
    assert_healthy(result)


# -- a bug of the Raft core the scenario found: a snapshot message storm ----------------
# Sending.on_ack used to go back to the acknowledged offset on every acknowledgement
# below ``sent``, which in-window ones always are, and the leader pumped a full window
# after each: chunks grew geometrically (x window per round trip).


def test_a_multi_chunk_snapshot_costs_about_one_send_per_chunk() -> None:
    snapshot = Snapshot(index=5, term=1, conf=CONF, data=bytes(64 * 16))
    sending = Sending(snapshot, chunk_bytes=64, window=4)
    receiving = Receiving(A, 1, 5, 1, CONF, len(snapshot.data), bytearray())
    wire = deque(sending.next_chunks())  # a lossless link in order
    sent = len(wire)
    while wire:
        offset, data, done = wire.popleft()
        if receiving.accept(offset, data) and done:
            break
        sending.on_ack(len(receiving.data))  # the follower answers every chunk
        more = sending.next_chunks()
        sent += len(more)
        wire.extend(more)
    assert receiving.complete
    assert sent == 16  # before the fix: 976


def test_catching_up_by_a_multi_chunk_snapshot_causes_no_message_storm() -> None:
    tiny_chunks = RaftScenario(RaftSettings(snapshot_chunk_bytes=64),
                               snapshot_interval_entries=16, snapshot_keep_entries=0)
    result = run(1, 3, 10, script="at 2 crash n2; at 6 restart n2", scenario=tiny_chunks)
    assert result.metrics["snapshots_installed"] >= 1
    assert result.passed, explain(result)  # failed with raft.message_storm
    assert result.metrics["message_storms"] == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_multi_chunk_snapshots_under_every_fault_kind(seed: int) -> None:
    tiny_chunks = RaftScenario(RaftSettings(snapshot_chunk_bytes=64),
                               snapshot_interval_entries=16, snapshot_keep_entries=0)
    result = run(seed, 3, 20, faults=ALL_FAULTS, scenario=tiny_chunks)
    assert_healthy(result)  # before the fix: raft.message_storm on every one of these seeds
    assert result.metrics["snapshots_installed"] >= 1
    assert result.metrics["message_storms"] == 0


# -- determinism -----------------------------------------------------------------------


def test_one_seed_replays_to_the_same_trace_digest() -> None:
    first = run(5, 3, 12, faults=ALL_FAULTS)
    again = run(5, 3, 12, faults=ALL_FAULTS)
    other = run(6, 3, 12, faults=ALL_FAULTS)
    assert first.trace_digest == again.trace_digest
    assert first.metrics == pytest.approx(again.metrics, nan_ok=True)
    assert first.trace_digest != other.trace_digest


def test_digest_does_not_depend_on_the_process_hash_seed() -> None:
    code = ("from sim.nemesis import FaultKind; from sim.scenario import RunOptions; "
            "from sim.scenarios.raft import RaftScenario; "
            "print(RaftScenario().run(RunOptions(seed=4, nodes=3, duration_s=8, "
            "faults=frozenset(FaultKind))).trace_digest)")
    digests = set()
    for hash_seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONHASHSEED": hash_seed},
                              check=False)
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert len(digests) == 1


# -- the checkers fail when they must ---------------------------------------------------

def test_a_storage_that_never_syncs_is_caught() -> None:
    broken = RaftScenario(fsync=False)
    result = run(14, 3, 20, script=CRASH_ALL, scenario=broken)
    assert not result.passed
    caught = {violation.checker for violation in result.violations}
    assert caught & {*PROPERTIES, "raft.linearizability"}, explain(result)
    assert "raft.linearizability" in caught  # acknowledged writes were lost
    assert result.metrics["linearizable"] == 0.0


class FakeLog:
    """A log as the checks read it: entries from ``first``."""

    def __init__(self, entries: list[Entry], first: int = 1) -> None:
        self.entries = entries
        self.first = first

    @property
    def first_index(self) -> int:
        return self.first

    @property
    def last_index(self) -> int:
        return self.first + len(self.entries) - 1

    def log_entries(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.first : hi - self.first]


def e(index: int, term: int, data: bytes = b"x") -> Entry:
    return Entry(term, index, EntryKind.NORMAL, data)


def checkers_of(safety: RaftSafety) -> set[str]:
    return {violation.checker for violation in safety.violations}


def test_election_safety_catches_two_leaders_in_one_term() -> None:
    safety = RaftSafety()
    log = FakeLog([e(1, 1)])
    safety.observe(1.0, "n0", 1, True, log)
    safety.observe(2.0, "n0", 1, True, log)
    safety.observe(3.0, "n1", 2, True, log)
    assert not safety.violations
    safety.observe(4.0, "n2", 2, True, log)
    assert checkers_of(safety) == {ELECTION_SAFETY}


def test_leader_append_only_catches_a_shrunk_or_rewritten_log() -> None:
    safety = RaftSafety()
    safety.observe(1.0, "n0", 3, True, FakeLog([e(1, 1), e(2, 3)]))
    safety.observe(2.0, "n0", 3, True, FakeLog([e(1, 1), e(2, 3), e(3, 3)]))
    assert not safety.violations
    safety.observe(3.0, "n0", 3, True, FakeLog([e(1, 1), e(2, 3)]))  # shrank
    assert checkers_of(safety) == {LEADER_APPEND_ONLY}
    replaced = RaftSafety()
    replaced.observe(1.0, "n0", 3, True, FakeLog([e(1, 1), e(2, 3, b"a")]))
    replaced.observe(2.0, "n0", 3, True, FakeLog([e(1, 1), e(2, 3, b"b")]))
    assert checkers_of(replaced) == {LEADER_APPEND_ONLY}
    rewritten = RaftSafety()
    rewritten.wrote(1.0, "n0", Written(1, (e(2, 3), e(3, 3)), leader_term=3))
    rewritten.wrote(2.0, "n0", Written(3, (e(4, 3),), leader_term=3))
    assert not rewritten.violations
    rewritten.wrote(3.0, "n0", Written(3, (e(3, 3, b"again"),), leader_term=3))
    assert LEADER_APPEND_ONLY in checkers_of(rewritten)


def test_log_matching_catches_different_entries_or_prefixes_under_one_index_and_term() -> None:
    safety = RaftSafety()
    safety.wrote(1.0, "n0", Written(0, (e(1, 1, b"a"), e(2, 2, b"b")), None))
    safety.wrote(2.0, "n1", Written(1, (e(2, 2, b"b"),), None))
    assert not safety.violations
    safety.wrote(3.0, "n2", Written(0, (e(1, 1, b"a"), e(2, 2, b"c")), None))
    assert checkers_of(safety) == {LOG_MATCHING}
    prefix = RaftSafety()
    prefix.wrote(1.0, "n0", Written(1, (e(5, 2),), None))
    prefix.wrote(2.0, "n1", Written(2, (e(5, 2),), None))  # same entry, other predecessor
    assert checkers_of(prefix) == {LOG_MATCHING}


def test_leader_completeness_catches_a_leader_without_a_committed_entry() -> None:
    safety = RaftSafety()
    safety.applied(1.0, "n0", Applied(1, e(1, 1, b"a")))
    safety.applied(1.0, "n0", Applied(1, e(2, 1, b"b")))
    safety.observe(2.0, "n1", 1, True, FakeLog([e(1, 1, b"a")]))  # same term: not due yet
    safety.observe(3.0, "n2", 2, True, FakeLog([e(1, 1, b"a"), e(2, 1, b"b"), e(3, 2)]))
    assert not safety.violations
    safety.observe(4.0, "n1", 3, True, FakeLog([e(1, 1, b"a")]))  # lacks index 2
    assert checkers_of(safety) == {LEADER_COMPLETENESS}
    other = RaftSafety()
    other.applied(1.0, "n0", Applied(1, e(1, 1, b"a")))
    other.observe(2.0, "n1", 2, True, FakeLog([e(1, 2, b"z")]))  # holds another entry there
    assert checkers_of(other) == {LEADER_COMPLETENESS}


def test_state_machine_safety_catches_two_entries_applied_at_one_index() -> None:
    safety = RaftSafety()
    safety.applied(1.0, "n0", Applied(1, e(1, 1, b"a")))
    safety.applied(2.0, "n1", Applied(2, e(1, 1, b"a")))
    assert not safety.violations
    safety.applied(3.0, "n2", Applied(2, e(1, 2, b"b")))
    assert checkers_of(safety) == {STATE_MACHINE_SAFETY}


# -- the storage on the simulated disk -----------------------------------------------------

A, B, C = (bytes([k]) * 16 for k in (1, 2, 3))
CONF = ConfState.of([A, B, C])


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(term, index, EntryKind.NORMAL, b"v%d" % index) for index in range(lo, hi + 1)]


def test_storage_keeps_what_was_synced_and_loses_the_rest() -> None:
    disk = SimDisk()
    storage = SimRaftStorage.open(disk, CONF)
    storage.append(entries(1, 3))
    storage.set_hard_state(HardState(1, A, 2))
    storage.sync()
    storage.append([Entry(2, 3, EntryKind.NORMAL, b"over"), *entries(4, 5, 2)])
    storage.set_hard_state(HardState(2, None, 3))
    assert storage.last_index() == 5
    disk.crash()
    again = SimRaftStorage.open(disk, CONF)
    assert again.last_index() == 3 and again.term(3) == 1
    assert again.hard_state == HardState(1, A, 2)
    assert again.initial_state() == (HardState(1, A, 2), CONF)
    again.append([Entry(2, 3, EntryKind.NORMAL, b"over")])
    again.sync()
    disk.crash()
    third = SimRaftStorage.open(disk, CONF)
    assert third.entries(1, 4, 1 << 20)[-1] == Entry(2, 3, EntryKind.NORMAL, b"over")


def test_a_storage_that_never_syncs_keeps_nothing() -> None:
    disk = SimDisk()
    storage = SimRaftStorage.open(disk, CONF, fsync=False)
    storage.append(entries(1, 3))
    storage.set_hard_state(HardState(1, A, 3))
    storage.sync()
    disk.crash()
    again = SimRaftStorage.open(disk, CONF)
    assert again.last_index() == 0 and again.hard_state == HardState()


def test_a_torn_tail_is_cut_off_durably() -> None:
    torn_seen = 0
    for seed in range(20):
        disk = SimDisk()
        storage = SimRaftStorage.open(disk, CONF)
        storage.append(entries(1, 4))
        storage.sync()
        storage.append(entries(5, 9))
        storage.set_hard_state(HardState(1, B, 9))
        disk.crash(Random(seed))  # keeps a random prefix of the unsynced tail
        again = SimRaftStorage.open(disk, CONF)
        assert 4 <= again.last_index() <= 9
        assert again.entries(1, again.last_index() + 1, 1 << 20) == entries(1, again.last_index())
        if again.report.torn_bytes:
            torn_seen += 1
            assert disk.is_synced(LOG_FILE)
            again.append(entries(again.last_index() + 1, 10))
            again.sync()
            assert SimRaftStorage.open(disk, CONF).last_index() == 10
    assert torn_seen >= 10


def test_snapshot_compaction_and_rewrite_survive_recovery() -> None:
    disk = SimDisk()
    storage = SimRaftStorage.open(disk, CONF)
    index = 0
    for round_ in range(60):
        batch = [Entry(1, index + k, EntryKind.NORMAL, b"%04d" % round_ * 40)
                 for k in range(1, 11)]
        storage.append(batch)
        index += 10
        storage.set_hard_state(HardState(1, A, index))
        storage.sync()
        if round_ % 5 == 4:
            storage.create_snapshot(index - 2, CONF, b"image %d" % index)
            storage.compact(index - 5)
            storage.sync()
    assert storage.counters.rewrites >= 1
    disk.crash()
    again = SimRaftStorage.open(disk, CONF)
    assert again.last_index() == 600
    assert again.snapshot().index == 598 and again.snapshot().data == b"image 600"
    assert again.first_index() == 596
    assert again.entries(596, 601, 1 << 20) == storage.entries(596, 601, 1 << 20)


def test_a_snapshot_newer_than_the_log_wins() -> None:
    # Crash after the snapshot file was synced but before the COMPACT record was:
    # the log continues the snapshot, so it is kept whole.
    disk = SimDisk()
    storage = SimRaftStorage.open(disk, CONF)
    storage.append(entries(1, 10))
    storage.sync()
    storage.create_snapshot(8, CONF, b"image")
    storage.compact(8)
    disk.crash()
    again = SimRaftStorage.open(disk, CONF)
    assert again.snapshot().index == 8 and again.snapshot().data == b"image"
    assert (again.first_index(), again.last_index()) == (1, 10)
    assert again.report.dropped_for_snapshot == 0
    # A snapshot the log does not continue replaces the log.
    other = SimDisk()
    foreign = SimRaftStorage.open(other, CONF)
    foreign.append(entries(1, 10, term=2))
    foreign.create_snapshot(8, CONF, b"term 2 image")
    image = other.read(SNAPSHOT_FILE)
    assert image is not None
    disk.write(SNAPSHOT_FILE, image)
    disk.fsync(SNAPSHOT_FILE)
    third = SimRaftStorage.open(disk, CONF)
    assert third.report.dropped_for_snapshot == 10
    assert (third.first_index(), third.last_index(), third.term(8)) == (9, 8, 2)
    # A snapshot installed from the leader replaces the log at once, durably.
    third.apply_snapshot(Snapshot(index=20, term=3, conf=CONF, data=b"leader's"))
    disk.crash()
    fourth = SimRaftStorage.open(disk, CONF)
    assert (fourth.first_index(), fourth.last_index(), fourth.term(20)) == (21, 20, 3)
    assert fourth.snapshot().data == b"leader's"


def test_a_log_with_a_gap_is_refused() -> None:
    disk = SimDisk()
    storage = SimRaftStorage.open(disk, CONF)
    storage.append(entries(1, 3))
    storage.sync()
    data = disk.read(LOG_FILE)
    assert data is not None
    record = len(data) // 3  # three records of equal size
    disk.write(LOG_FILE, data[:record] + data[2 * record :])
    disk.fsync(LOG_FILE)
    with pytest.raises(StorageError, match="gap"):
        SimRaftStorage.open(disk, CONF)
