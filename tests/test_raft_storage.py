"""``FileStorage``: the Raft core's storage on the durable log, held to ``MemoryStorage``.

How this works: the differential tests run one random history of writes (appends
with overwrites and stale prefixes, hard states, snapshots taken and installed,
compactions, syncs, reopens) against ``MemoryStorage`` and ``FileStorage`` side
by side and compare every read after every step, errors included. Histories are
kept Raft-shaped (nothing at or below the commit index or the snapshot is ever
overwritten) because that is all the core asks and ``MemoryStorage`` is only
defined there. Crashes are simulated as in ``test_raftlog``: file contents are
noted at a ``sync`` and a copy holding them is what an fsync made durable.
Then a 3-node cluster from ``test_raft_core`` runs on ``FileStorage`` in temp
directories, restarting nodes from their files.
"""

from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_raft_core import Net, assert_converged

from consensus.raft import (
    CompactedError,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotOutOfDateError,
    UnavailableError,
    WritableStorage,
)
from consensus.raft.ready import Ready
from mesh.errors import CodecError, MeshError
from mesh.raft_storage import (
    BOOTSTRAP_FILE,
    FileStorage,
    decode_conf_state,
    encode_conf_state,
)
from mesh.raftlog import LogCorruption, SnapshotMeta
from mesh.raftlog.segment import SegmentScan

A, B, C, D = (bytes([k]) * 16 for k in b"abcd")
CONF = ConfState.of([A, B, C])
CONFS = [CONF, ConfState.of([A, B], [C]), ConfState.of([A, B, C, D]), ConfState.of([D])]
VOTES = [None, A, B, C]
BIG = 1 << 40
SMALL = {
    "segment_bytes_max": 512,
    "cache_bytes_max": 300,
    "write_buffer_bytes": 64,
    "preallocate_bytes": 100,
}


def entry(index: int, term: int, size: int = 12, kind: EntryKind = EntryKind.NORMAL) -> Entry:
    """A recognisable entry: its data says where it belongs."""
    stamp = b"i%dt%d|" % (index, term)
    return Entry(term=term, index=index, kind=kind, data=(stamp * (size // len(stamp) + 1))[:size])


def run(action: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What ``action(*args)`` returned, or the type of what it raised."""
    try:
        return ("ok", action(*args))
    except Exception as error:  # compared by type across both storages
        return ("raised", type(error))


def snapshot_of_state(storage: WritableStorage) -> tuple[Any, ...]:
    """Every read a storage answers about its whole log."""
    first, last = storage.first_index(), storage.last_index()
    return (
        storage.initial_state(),
        storage.snapshot(),
        first,
        last,
        storage.term(first - 1),
        storage.entries(first, last + 1, BIG),
    )


def disk_images(path: Path) -> dict[str, bytes]:
    """Contents of every file the storage keeps (what a crash now keeps, if synced).
    Not sizes: preallocated segments are written over zeros they already hold."""
    return {p.name: p.read_bytes() for p in path.iterdir() if p.name != "LOCK"}


def crash_copy(target: Path, images: dict[str, bytes]) -> Path:
    """The directory as a crash would leave it: the files holding ``images``."""
    target.mkdir(parents=True)
    for name, data in images.items():
        (target / name).write_bytes(data)
    return target


# -- the differential test ---------------------------------------------------------------


class Pair:
    """``MemoryStorage`` (the reference) and ``FileStorage`` fed the same writes."""

    def __init__(self, directory: Path, rng: random.Random, options: dict[str, int]) -> None:
        self.directory = directory
        self.rng = rng
        self.options = options
        conf = rng.choice(CONFS)
        self.memory = MemoryStorage(conf)
        self.file = FileStorage.open(directory, conf=conf, fsync=False, **options)
        self.top_term = 0  # highest entry or snapshot term so far
        self.history: list[str] = []
        self.crashes = 0
        self.durable()

    def durable(self) -> None:
        """Note what a crash keeps now: the reference's state and the files."""
        self.durable_memory = copy.deepcopy(self.memory)
        self.durable_images = disk_images(self.directory)

    def both(
        self, what: str, action: Callable[[WritableStorage], Any], *, syncs: bool = False
    ) -> None:
        """Apply one write to both storages: same result or same error type. ``syncs``:
        the write, when it succeeds, makes everything before it durable."""
        self.history.append(what)
        expected = run(action, self.memory)
        actual = run(action, self.file)
        assert actual == expected, what
        if syncs and actual[0] == "ok":
            self.durable()

    def compare(self) -> None:
        """Every read, including the out-of-range ones, answers the same."""
        memory, file = self.memory, self.file
        assert file.initial_state() == memory.initial_state()
        assert file.hard_state == memory.hard_state
        assert file.snapshot() == memory.snapshot()
        first, last = memory.first_index(), memory.last_index()
        assert (file.first_index(), file.last_index()) == (first, last)
        for index in range(first - 2, last + 3):
            assert run(file.term, index) == run(memory.term, index), index
        assert file.entries(first, last + 1, BIG) == memory.entries(first, last + 1, BIG)
        rng = self.rng
        for _ in range(4):
            lo = rng.randint(first - 2, last + 2)
            hi = rng.randint(lo, last + 3)
            budget = rng.choice([0, 1, 40, 100, 300, BIG])
            expected = run(memory.entries, lo, hi, budget)
            assert run(file.entries, lo, hi, budget) == expected, (lo, hi, budget)

    def step(self) -> None:
        """One random write, kept Raft-shaped (see the module doc)."""
        rng, memory = self.rng, self.memory
        first, last = memory.first_index(), memory.last_index()
        snap = memory.snapshot().index
        hard = memory.hard_state
        floor = max(snap, hard.commit)  # never overwritten
        assert floor <= last
        roll = rng.random()
        if roll < 0.30:  # append after the end, sometimes in a new term
            self.top_term += rng.random() < 0.2
            batch = self._batch(last + 1, rng.randint(1, 8))
            self.both(f"append {last + 1}..", lambda s: s.append(batch))
        elif roll < 0.42 and floor < last:  # a Raft overwrite of an uncommitted suffix
            self.top_term += 1
            start = rng.randint(floor + 1, last)
            batch = self._batch(start, rng.randint(1, 6))
            self.both(f"overwrite from {start}", lambda s: s.append(batch))
        elif roll < 0.50:  # a stale batch reaching below the compaction point
            lo = max(1, first - rng.randint(1, 4))
            hi = rng.randint(max(lo, floor), last) if max(lo, floor) <= last else lo - 1
            held = memory.entries(first, hi + 1, BIG) if hi >= first else []
            below = [entry(i, 0, kind=EntryKind.CONF_CHANGE) for i in range(lo, min(first, hi + 1))]
            batch = below + held
            self.both(f"stale {lo}..{hi}", lambda s: s.append(batch))
        elif roll < 0.62:  # the hard state moves on
            state = HardState(
                term=hard.term + rng.randint(0, 2),
                vote=rng.choice(VOTES),
                commit=rng.randint(hard.commit, last),
            )
            self.both(f"hard {state}", lambda s: s.set_hard_state(state))
        elif roll < 0.72:  # the driver snapshots its state machine (sometimes wrongly)
            applied = min(hard.commit, last)
            if applied > snap and rng.random() < 0.8:
                index = rng.randint(snap + 1, applied)
            else:
                index = rng.choice([snap, max(0, snap - 1), last + 1, last + 3])
            conf, data = rng.choice(CONFS), rng.randbytes(rng.randint(0, 50))
            self.both(
                f"create_snapshot {index}",
                lambda s: s.create_snapshot(index, conf, data),
                syncs=True,
            )
        elif roll < 0.82:  # compaction, up to the snapshot (and past it: refused)
            index = rng.randint(0, snap + (2 if rng.random() < 0.2 else 0))
            self.both(f"compact {index}", lambda s: s.compact(index))
        elif roll < 0.88:  # a snapshot installed from a leader (or an old one)
            self.top_term += rng.random() < 0.5
            if rng.random() < 0.85:
                index = floor + rng.randint(1, 12)
            else:
                index = rng.randint(0, snap)
            snapshot = Snapshot(
                index=index,
                term=self.top_term,
                conf=rng.choice(CONFS),
                data=rng.randbytes(rng.randint(0, 80)),
            )
            self.both(f"apply_snapshot {index}", lambda s: s.apply_snapshot(snapshot), syncs=True)
        elif roll < 0.93:
            self.history.append("sync")
            self.file.sync()
            self.durable()
        elif roll < 0.97:  # a restart: closing syncs; the conf given now must be ignored
            self.history.append("reopen")
            self.file.close()
            self.file = FileStorage.open(
                self.directory, conf=ConfState.of([D]), fsync=False, **self.options
            )
            self.durable()
        else:  # a crash: only what the last sync made durable is left
            self.history.append("crash")
            self.crashes += 1
            target = self.directory.with_name(f"crash-{self.crashes}")
            crash_copy(target, self.durable_images)
            self.file.close()  # the crashed process's files stay behind, unused
            self.directory, self.memory = target, self.durable_memory
            self.file = FileStorage.open(
                target, conf=ConfState.of([D]), fsync=False, **self.options
            )
            self.durable()

    def _batch(self, start: int, count: int) -> list[Entry]:
        kinds = list(EntryKind)
        return [
            entry(i, self.top_term, self.rng.randint(0, 60), self.rng.choice(kinds))
            for i in range(start, start + count)
        ]


def run_history(directory: Path, rng: random.Random, steps: int, options: dict[str, int]) -> None:
    """``steps`` random writes against both storages, every read compared after each."""
    pair = Pair(directory, rng, options)
    try:
        pair.compare()
        for _ in range(steps):
            pair.step()
            pair.compare()
    except AssertionError as error:
        raise AssertionError(f"{error} after: {pair.history[-12:]}") from error
    finally:
        pair.file.close()


@pytest.mark.parametrize("seed", range(10))
def test_random_histories_answer_like_memory_storage(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    # Tiny segments, cache, buffer and preallocation (or none); or the defaults.
    options = ({**SMALL, "preallocate_bytes": 0} if seed % 4 == 3 else SMALL) if seed % 2 else {}
    run_history(tmp_path / "storage", rng, 300, options)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), steps=st.integers(1, 60))
def test_hypothesis_histories_answer_like_memory_storage(rng: random.Random, steps: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        run_history(Path(directory) / "storage", rng, steps, SMALL)


@pytest.mark.parametrize("make", ["memory", "file"])
def test_the_storage_contract_holds_for_both(tmp_path: Path, make: str) -> None:
    """``test_raft_core``'s contract test, run on each storage."""
    conf = ConfState.of([b"a"])
    storage: WritableStorage = (
        MemoryStorage(conf) if make == "memory" else FileStorage.open(tmp_path, conf=conf)
    )
    assert (storage.first_index(), storage.last_index(), storage.term(0)) == (1, 0, 0)
    assert storage.snapshot() == Snapshot(conf=conf)
    assert storage.initial_state() == (HardState(), conf)
    storage.append([Entry(term=1, index=i, data=b"%d" % i) for i in range(1, 11)])
    storage.append([Entry(term=2, index=i) for i in range(8, 10)])  # replaces 8.., drops 10
    assert storage.last_index() == 9 and storage.term(8) == 2 and storage.term(7) == 1
    assert len(storage.entries(1, 10, 1 << 30)) == 9
    assert len(storage.entries(1, 10, 1)) == 1  # at least one
    assert len(storage.entries(1, 10, 2 * (16 + 1))) == 2
    with pytest.raises(UnavailableError):
        storage.term(10)
    with pytest.raises(UnavailableError):
        storage.entries(5, 11, BIG)
    with pytest.raises(ValueError, match="snapshot index"):
        storage.compact(5)
    snap = storage.create_snapshot(6, ConfState.of([b"a", b"b"]), b"image")
    assert (snap.index, snap.term) == (6, 1)
    assert storage.first_index() == 1  # create_snapshot keeps the log
    storage.compact(4)
    assert storage.first_index() == 5 and storage.term(4) == 1
    with pytest.raises(CompactedError):
        storage.term(3)
    with pytest.raises(CompactedError):
        storage.entries(4, 6, 100)
    storage.append([Entry(term=1, index=i) for i in range(2, 5)])  # all at or below 4: ignored
    assert storage.entries(5, 6, BIG) == [Entry(term=1, index=5, data=b"5")]
    storage.append([Entry(term=1 + i // 8, index=i) for i in range(2, 10)])  # 5.. replaced
    assert storage.entries(5, 10, BIG) == [Entry(term=1 + i // 8, index=i) for i in range(5, 10)]
    with pytest.raises(SnapshotOutOfDateError):
        storage.create_snapshot(5, ConfState(), b"")
    with pytest.raises(SnapshotOutOfDateError):
        storage.apply_snapshot(Snapshot(6, 3, conf))
    storage.apply_snapshot(Snapshot(20, 3, ConfState.of([b"a"]), b"new"))
    assert (storage.first_index(), storage.last_index(), storage.term(20)) == (21, 20, 3)
    storage.set_hard_state(HardState(3, b"a", 20))
    assert storage.initial_state() == (HardState(3, b"a", 20), ConfState.of([b"a"]))
    if isinstance(storage, FileStorage):
        storage.close()
        with FileStorage.open(tmp_path) as reopened:
            assert reopened.initial_state() == (HardState(3, b"a", 20), ConfState.of([b"a"]))
            assert reopened.snapshot() == Snapshot(20, 3, ConfState.of([b"a"]), b"new")


# -- durability ----------------------------------------------------------------------------


@pytest.mark.parametrize("preallocate", [0, 1 << 20], ids=["growing", "preallocated"])
def test_a_crash_keeps_exactly_what_the_last_sync_made_durable(
    tmp_path: Path, preallocate: int
) -> None:
    source = tmp_path / "node"
    options = {  # every record to the OS
        "segment_bytes_max": 512,
        "write_buffer_bytes": 0,
        "preallocate_bytes": preallocate,
    }
    storage = FileStorage.open(source, conf=CONF, fsync=False, **options)
    storage.append([entry(i, 1) for i in range(1, 41)])
    storage.set_hard_state(HardState(term=2, vote=B, commit=30))
    storage.create_snapshot(20, CONF, b"image at 20")
    storage.compact(15)
    storage.sync()
    synced = snapshot_of_state(storage)
    images = disk_images(source)
    # Written but never synced: an overwrite, a new hard state, a compaction.
    storage.append([entry(i, 3) for i in range(35, 60)])
    storage.set_hard_state(HardState(term=3, vote=None, commit=40))
    storage.compact(20)
    unsynced = snapshot_of_state(storage)
    crashed = crash_copy(tmp_path / "crashed", images)
    with FileStorage.open(crashed, conf=ConfState.of([D])) as recovered:
        assert snapshot_of_state(recovered) == synced
    storage.close()  # closing syncs
    with FileStorage.open(source) as reopened:
        assert snapshot_of_state(reopened) == unsynced


def test_one_sync_makes_a_whole_batch_durable_with_one_fsync(tmp_path: Path) -> None:
    with FileStorage.open(tmp_path, conf=CONF) as storage:
        storage.append([entry(i, 1) for i in range(1, 21)])
        storage.create_snapshot(10, CONF, b"image")  # durable at once
        before = dict(storage.log.stats)
        for start in range(21, 61, 10):  # a Ready's worth of writes
            storage.append([entry(i, 2) for i in range(start, start + 10)])
        storage.set_hard_state(HardState(term=2, vote=A, commit=50))
        storage.compact(10)
        assert storage.log.stats["fsyncs"] == before["fsyncs"]  # nothing synced yet
        storage.sync()
        after = storage.log.stats
        assert (after["fsyncs"] - before["fsyncs"], after["syncs"] - before["syncs"]) == (1, 1)


def test_the_bootstrap_configuration_survives_a_reopen_and_later_confs_are_ignored(
    tmp_path: Path,
) -> None:
    with FileStorage.open(tmp_path, conf=CONF) as storage:
        assert storage.initial_state() == (HardState(), CONF)
        assert storage.snapshot() == Snapshot(conf=CONF)  # "no snapshot": index 0
        assert storage.log.snapshot_meta() is None
    assert (tmp_path / BOOTSTRAP_FILE).exists()
    with FileStorage.open(tmp_path, conf=ConfState.of([D])) as storage:
        assert storage.initial_state() == (HardState(), CONF)
        assert storage.snapshot() == Snapshot(conf=CONF)
    with FileStorage.open(tmp_path / "plain") as storage:  # no conf: the empty one
        assert storage.initial_state() == (HardState(), ConfState())


def test_a_snapshot_stores_its_configuration_as_canonical_msgpack(tmp_path: Path) -> None:
    conf = ConfState.of([C, A], [B])
    with FileStorage.open(tmp_path, conf=CONF) as storage:
        storage.append([entry(i, 1) for i in range(1, 6)])
        storage.create_snapshot(3, conf, b"img")
        assert storage.log.snapshot_meta() == SnapshotMeta(3, 1, encode_conf_state(conf))
    with FileStorage.open(tmp_path) as storage:
        assert storage.initial_state()[1] == conf
        assert storage.snapshot() == Snapshot(3, 1, conf, b"img")


# -- the configuration encoding ---------------------------------------------------------------


def test_conf_state_encoding_is_deterministic_and_round_trips() -> None:
    one = ConfState.of([C, A, B, A], [D])
    two = ConfState.of([B, C, A], [D, D])
    assert encode_conf_state(one) == encode_conf_state(two)
    assert encode_conf_state(ConfState()) == bytes([0x93, 0x01, 0x90, 0x90])
    assert encode_conf_state(ConfState.of([b"x"], [b"y"])) == bytes(
        [0x93, 0x01, 0x91, 0xC4, 0x01, 0x78, 0x91, 0xC4, 0x01, 0x79]
    )
    for conf in [*CONFS, ConfState()]:
        assert decode_conf_state(encode_conf_state(conf)) == conf


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        bytes([0x93, 0x01, 0x90]),  # truncated
        bytes([0x92, 0x01, 0x90]),  # two elements
        bytes([0x93, 0x02, 0x90, 0x90]),  # another version
        bytes([0x93, 0xC3, 0x90, 0x90]),  # version True
        bytes([0x93, 0x01, 0x91, 0xA1, 0x78, 0x90]),  # an id as str
        bytes([0x93, 0x01, 0x92, 0xC4, 0x01, 0x79, 0xC4, 0x01, 0x78, 0x90]),  # unsorted
        bytes([0x93, 0x01, 0x91, 0xC4, 0x01, 0x78, 0x91, 0xC4, 0x01, 0x78]),  # in both sets
        bytes([0x93, 0x01, 0x90, 0x90, 0x00]),  # trailing byte
    ],
)
def test_conf_state_decoding_refuses_anything_not_canonical(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_conf_state(data)


# -- damage on disk --------------------------------------------------------------------------


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def _filled(directory: Path, count: int) -> None:
    with FileStorage.open(directory, conf=CONF) as storage:
        storage.set_hard_state(HardState(term=1, vote=A, commit=0))
        storage.sync()  # the hard state first, so that the last record is an entry
        storage.append([entry(i, 1, size=30) for i in range(1, count + 1)])


def test_a_corrupt_byte_in_the_middle_of_the_log_refuses_to_open(tmp_path: Path) -> None:
    _filled(tmp_path, 100)
    (segment,) = _segments(tmp_path)
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x40
    segment.write_bytes(bytes(data))
    with pytest.raises(LogCorruption) as caught:
        FileStorage.open(tmp_path, conf=CONF)
    error = caught.value
    assert isinstance(error, MeshError) and error.path == segment
    assert error.offset is not None and error.offset <= middle
    message = str(error)
    assert segment.name in message and f"offset {error.offset}" in message
    assert "not a torn write" in message and "re-add" in message
    data[middle] ^= 0x40  # repaired: opens again, nothing was changed by the failed open
    segment.write_bytes(bytes(data))
    with FileStorage.open(tmp_path) as storage:
        assert storage.last_index() == 100


def test_a_torn_tail_is_cut_off_at_open(tmp_path: Path) -> None:
    _filled(tmp_path, 50)
    (segment,) = _segments(tmp_path)
    scan = SegmentScan(segment, segment.read_bytes(), is_last=True, first_lsn=None)
    last_record = list(scan.records())[-1]
    cut = last_record.offset + last_record.size // 2  # the last entry half written
    with open(segment, "r+b") as file:
        file.truncate(cut)
    with FileStorage.open(tmp_path, conf=ConfState.of([D])) as storage:
        report = storage.log.recovery
        assert report.bytes_truncated == cut - last_record.offset
        assert report.truncated_file == segment.name and report.truncated_at == last_record.offset
        assert storage.last_index() == 49
        assert storage.entries(1, 50, BIG) == [entry(i, 1, size=30) for i in range(1, 50)]
        assert storage.initial_state() == (HardState(term=1, vote=A, commit=0), CONF)
        storage.append([entry(50, 2)])  # and it carries on from there
    assert segment.stat().st_size > cut


def test_a_damaged_or_missing_bootstrap_file_is_corruption(tmp_path: Path) -> None:
    _filled(tmp_path, 5)
    path = tmp_path / BOOTSTRAP_FILE
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(LogCorruption, match="checksum mismatch"):
        FileStorage.open(tmp_path, conf=CONF)
    path.unlink()
    with pytest.raises(LogCorruption, match="configuration at index 0 is unknown"):
        FileStorage.open(tmp_path, conf=CONF)
    path.write_bytes(original)
    with FileStorage.open(tmp_path) as storage:
        assert storage.initial_state()[1] == CONF


# -- a cluster on files -------------------------------------------------------------------------


class FileNet(Net):
    """``test_raft_core.Net`` with every node on a ``FileStorage`` in ``root``.

    A Ready's messages only leave at the next ``deliver``, so syncing right after
    ``carry_out`` still persists before sending, once per Ready (group commit).
    """

    def __init__(self, root: Path, count: int, *, seed: int, fsync: bool) -> None:
        super().__init__(count, seed=seed)
        self.root = root
        self.fsync = fsync
        self.segment_bytes_max = 4096  # several segments per node
        self.files: dict[bytes, FileStorage] = {}
        for node_id in self.ids:  # nothing has run yet: swap the storages and restart
            self.open(node_id, conf=ConfState.of(self.ids))
            self.start(node_id)

    def open(self, node_id: bytes, conf: ConfState | None = None) -> FileStorage:
        storage = FileStorage.open(
            self.root / node_id.hex(),
            conf=conf,
            fsync=self.fsync,
            segment_bytes_max=self.segment_bytes_max,
        )
        self.files[node_id] = storage
        # Net only uses the WritableStorage interface of its storages.
        self.storages[node_id] = storage  # type: ignore[assignment]
        return storage

    def carry_out(self, node_id: bytes, ready: Ready) -> None:
        super().carry_out(node_id, ready)
        self.files[node_id].sync()

    def stop(self, node_id: bytes) -> None:
        """Crash the node (its pending Ready is lost) and close its files."""
        self.crash(node_id)
        self.files.pop(node_id).close()

    def restart(self, node_id: bytes) -> FileStorage:
        """Reopen the node's files (ignoring any bootstrap conf) and start it from them."""
        storage = self.open(node_id)
        self.start(node_id)
        return storage

    def close(self) -> None:
        for storage in self.files.values():
            storage.close()


@contextmanager
def file_net(root: Path, *, seed: int, fsync: bool = False) -> Iterator[FileNet]:
    net = FileNet(root, 3, seed=seed, fsync=fsync)
    try:
        yield net
    finally:
        net.close()


def test_a_three_node_cluster_on_files_replicates_and_restarts(tmp_path: Path) -> None:
    with file_net(tmp_path, seed=3, fsync=True) as net:
        leader = net.wait_leader()
        follower = next(i for i in net.ids if i != leader.node_id)
        for k in range(1000):
            net.propose(b"entry-%04d" % k)
            if k % 10 == 9:
                net.settle()
        net.settle()
        net.tick(1)  # followers learn the last commit index from the heartbeat
        assert len(assert_converged(net)) == 1000
        synced = snapshot_of_state(net.files[follower])
        assert synced[0][0].commit >= 1000 and synced[3] >= 1001  # the leader's no-op too
        net.stop(follower)
        for k in range(50):
            net.propose(b"while-down-%02d" % k)
        net.settle()
        storage = net.restart(follower)
        assert snapshot_of_state(storage) == synced  # exactly what it had synced
        assert storage.initial_state()[1] == ConfState.of(net.ids)
        net.tick(5)
        data = assert_converged(net)
        assert len(data) == 1050 and data[-1] == b"while-down-49"
        assert net.nodes[follower].commit_index == net.leader().commit_index
        for node_id in net.ids:
            assert net.files[node_id].log.stats["syncs"] > 0


def test_a_restarted_node_catches_up_from_a_snapshot_and_keeps_it(tmp_path: Path) -> None:
    with file_net(tmp_path, seed=4) as net:
        leader = net.wait_leader()
        follower = next(i for i in net.ids if i != leader.node_id)
        for k in range(300):
            net.propose(b"a%03d" % k)
        net.settle()
        net.stop(follower)
        for k in range(200):
            net.propose(b"b%03d" % k)
        net.settle()
        net.tick(1)  # the live follower learns the last commit index from the heartbeat
        for node_id in net.ids:
            if node_id != follower:
                net.snapshot(node_id, keep=5)
                assert net.files[node_id].first_index() > 490
        net.restart(follower)
        net.tick(10)
        assert net.nodes[follower].counters["snapshots_installed"] == 1
        assert len(assert_converged(net)) == 500
        installed = net.files[follower].snapshot()
        assert installed.index > 490 and installed.conf == ConfState.of(net.ids)
        assert net.files[follower].first_index() == installed.index + 1  # log replaced
        net.stop(follower)
        storage = net.restart(follower)  # from the installed snapshot on disk
        assert storage.snapshot() == installed
        net.propose(b"last")
        net.tick(3)
        data = assert_converged(net)
        assert len(data) == 501 and data[-1] == b"last"
