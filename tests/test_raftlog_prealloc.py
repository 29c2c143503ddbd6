"""The Raft log's preallocated segments: zeros ahead of the records, cut when done.

The active segment keeps zero bytes past its last record so that a sync need not
grow the file (``DurableLog`` module doc). These tests check the files
themselves: what lies past the records, that a finished segment is cut back to
its last record, and that recovery reads a zero tail as the clean end of the
log while a torn record before the zeros is still a torn tail and damage in the
middle is still corruption. A "crash" here is the process going away with its
files as they are (``_release``: the descriptors closed, nothing cut or synced),
or, where noted, a copy of the files' contents at a sync.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.raft_storage import FileStorage
from mesh.raftlog import (
    ENTRY_RECORD_OVERHEAD_BYTES,
    PREALLOCATE_BYTES_DEFAULT,
    DurableLog,
    HardState,
    LogCorruption,
    LogEntry,
    SnapshotMeta,
)
from mesh.raftlog.records import RecordType
from mesh.raftlog.segment import SegmentScan

KIB = 1 << 10


def entry(index: int, term: int = 1, size: int = 40) -> LogEntry:
    """A recognisable entry: its data says where it belongs."""
    stamp = f"i{index}t{term}|".encode()
    return LogEntry(index, term, index % 7, (stamp * (size // len(stamp) + 1))[:size])


def entries(lo: int, hi: int, term: int = 1, size: int = 40) -> list[LogEntry]:
    """Entries ``lo..hi-1`` of ``term``."""
    return [entry(index, term, size) for index in range(lo, hi)]


def everything(log: DurableLog) -> list[LogEntry]:
    """All entries the log holds."""
    return log.entries(log.first_index(), log.last_index() + 1)


def segment_files(path: Path) -> list[Path]:
    """The segment files of a log directory, oldest first."""
    return sorted(path.glob("*.seg"))


def records_end(path: Path) -> int:
    """Where the last intact record of a segment file ends (the scan stops at zeros)."""
    scan = SegmentScan(path, path.read_bytes(), is_last=True, first_lsn=None)
    end = 0
    for record in scan.records():
        end = record.offset + record.size
    return end


def entry_offsets(path: Path) -> list[tuple[int, int]]:
    """``(offset, size)`` of the ENTRY records of one segment file."""
    scan = SegmentScan(path, path.read_bytes(), is_last=True, first_lsn=None)
    return [(r.offset, r.size) for r in scan.records() if r.type == RecordType.ENTRY]


def crash(log: DurableLog) -> None:
    """The process dies: its files stay exactly as they are (nothing cut or synced)."""
    log._release()


def assert_zero_tail(path: Path, size: int | None = None) -> int:
    """The file is its records then only zeros (``size`` of them, if given); returns
    where the records end."""
    data = path.read_bytes()
    end = records_end(path)
    assert data.count(0, end) == len(data) - end
    if size is not None:
        assert len(data) - end == size
    return end


def no_hole(path: Path) -> bool:
    """Whether every byte of the file is really written (no sparse hole)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) == os.fstat(fd).st_size
    finally:
        os.close(fd)


# -- writing ---------------------------------------------------------------------------


def test_syncs_overwrite_zeros_the_file_already_has(tmp_path: Path) -> None:
    with DurableLog.open(tmp_path, preallocate_bytes=16 * KIB) as log:
        (segment,) = segment_files(tmp_path)
        size = segment.stat().st_size
        end = assert_zero_tail(segment)
        assert size == end + 16 * KIB  # opening wrote the head, then one chunk of zeros
        assert no_hole(segment)  # really written, not a hole or an fallocate'd extent
        assert log.stats["bytes_preallocated"] == 16 * KIB
        fsyncs = log.stats["fsyncs"]
        written = 0
        index = 1
        while True:  # one entry per sync, as a lone voter does
            log.append([entry(index, size=300)])
            log.sync()
            written += ENTRY_RECORD_OVERHEAD_BYTES + 300
            index += 1
            if end + written > size:
                break
            assert segment.stat().st_size == size  # the file did not grow
            assert_zero_tail(segment, size - end - written)
        # The write that passed the zeros grew the file and wrote the next chunk.
        assert segment.stat().st_size == end + written + 16 * KIB
        assert log.stats["bytes_preallocated"] == 32 * KIB
        assert log.stats["fsyncs"] - fsyncs == index - 1  # still one fdatasync per sync
        assert everything(log) == [entry(i, size=300) for i in range(1, index)]
    assert segment.stat().st_size == end + written  # closing cut the zeros off


def test_the_default_chunk_and_a_disabled_one(tmp_path: Path) -> None:
    with DurableLog.open(tmp_path / "on") as log:
        (segment,) = segment_files(tmp_path / "on")
        opened = assert_zero_tail(segment, PREALLOCATE_BYTES_DEFAULT)  # after the head
        log.append(entries(1, 11))
        log.sync()
        assert segment.stat().st_size == opened + PREALLOCATE_BYTES_DEFAULT
    with DurableLog.open(tmp_path / "off", preallocate_bytes=0) as log:
        log.append(entries(1, 11))
        log.sync()
        (segment,) = segment_files(tmp_path / "off")
        assert segment.stat().st_size == records_end(segment)  # every write grows it
        assert log.stats["bytes_preallocated"] == 0
        log.append(entries(11, 21))
        log.sync()
        assert segment.stat().st_size == records_end(segment)
    with DurableLog.open(tmp_path / "off", preallocate_bytes=0) as log:
        assert everything(log) == entries(1, 21)
        assert log.recovery.bytes_truncated == 0
    with pytest.raises(ValueError, match="preallocate_bytes"):
        DurableLog.open(tmp_path / "bad", preallocate_bytes=-1)


def test_the_zeros_stop_a_little_past_the_segment_limit(tmp_path: Path) -> None:
    # A chunk far larger than the segment: the zeros stop at the limit plus room for
    # the records crossing it (64 KiB), and the segment is cut when it is done.
    with DurableLog.open(
        tmp_path, segment_bytes_max=4 * KIB, preallocate_bytes=1 << 20, fsync=False
    ) as log:
        log.append(entries(1, 3))
        log.sync()
        (segment,) = segment_files(tmp_path)
        assert segment.stat().st_size == 4 * KIB + 64 * KIB
        log.append(entries(3, 200))
        log.sync()
        *finished, last = segment_files(tmp_path)
        assert finished and all(s.stat().st_size == records_end(s) for s in finished)
        assert last.stat().st_size <= 4 * KIB + 64 * KIB
    assert last.stat().st_size == records_end(last)


def test_a_roll_cuts_the_finished_segment_to_its_last_record(tmp_path: Path) -> None:
    with DurableLog.open(tmp_path, segment_bytes_max=2 * KIB, preallocate_bytes=700) as log:
        for start in range(1, 121, 8):
            log.append(entries(start, start + 8))
            log.sync()
            *finished, last = segment_files(tmp_path)
            for segment in finished:
                data = segment.read_bytes()
                assert len(data) == records_end(segment)  # no zero tail, not one byte
            assert_zero_tail(last)
        assert len(finished) >= 3
        assert log.stats["segments_created"] == len(finished) + 1
        assert everything(log) == entries(1, 121)
    assert last.stat().st_size == records_end(last)
    with DurableLog.open(tmp_path, segment_bytes_max=2 * KIB, cache_bytes_max=0) as log:
        assert everything(log) == entries(1, 121)  # read back from every segment
        assert log.recovery.bytes_truncated == 0


def test_a_snapshot_that_replaces_the_log_rolls_and_cuts(tmp_path: Path) -> None:
    with DurableLog.open(tmp_path, preallocate_bytes=4 * KIB) as log:
        log.append(entries(1, 21))
        log.sync()
        log.save_snapshot(SnapshotMeta(50, 3, b"c"), b"image", replace_log=True)
        (segment,) = segment_files(tmp_path)  # the old segment was deleted
        assert_zero_tail(segment)
        log.append(entries(51, 61, term=3))
    (segment,) = segment_files(tmp_path)
    assert segment.stat().st_size == records_end(segment)
    with DurableLog.open(tmp_path) as log:
        assert (log.first_index(), everything(log)) == (51, entries(51, 61, term=3))


# -- crashes and recovery ---------------------------------------------------------------


def test_a_crash_leaves_zeros_that_recovery_reads_as_the_end(tmp_path: Path) -> None:
    log = DurableLog.open(tmp_path, preallocate_bytes=64 * KIB)
    log.append(entries(1, 31))
    log.set_hard_state(HardState(2, b"me", 25))
    log.sync()
    (segment,) = segment_files(tmp_path)
    end = records_end(segment)
    zeros = segment.stat().st_size - end
    assert zeros > 0
    crash(log)

    with DurableLog.open(tmp_path, preallocate_bytes=64 * KIB) as log:
        report = log.recovery
        assert everything(log) == entries(1, 31)
        assert log.hard_state() == HardState(2, b"me", 25)
        assert (report.truncated_file, report.truncated_at) == (segment.name, end)
        assert report.bytes_truncated == report.zero_bytes_truncated == zeros
        assert report.tail_problem is not None and "not a torn write" in report.tail_problem
        assert log.stats["recovery_zero_bytes_truncated"] == zeros
        # The next records go where the valid ones ended, and zeros follow them again.
        log.append(entries(31, 41, term=2))
        log.sync()
        assert entry_offsets(segment)[30][0] == end
        assert_zero_tail(segment)
        crash(log)
    with DurableLog.open(tmp_path) as log:
        assert everything(log) == [*entries(1, 31), *entries(31, 41, term=2)]
        assert log.recovery.bytes_truncated == log.recovery.zero_bytes_truncated > 0
    # A clean close left no zeros: nothing to cut.
    assert segment.stat().st_size == records_end(segment)
    with DurableLog.open(tmp_path) as log:
        assert log.recovery.bytes_truncated == 0 and log.recovery.tail_problem is None
        assert log.last_index() == 40


def test_megabytes_of_zeros_recover_quickly(tmp_path: Path) -> None:
    chunk = 16 << 20
    log = DurableLog.open(
        tmp_path, segment_bytes_max=64 << 20, preallocate_bytes=chunk, fsync=False
    )
    log.append(entries(1, 101, size=200))
    log.sync()
    (segment,) = segment_files(tmp_path)
    end = records_end(segment)
    zeros = segment.stat().st_size - end
    assert zeros > chunk - 100 * KIB
    crash(log)
    with DurableLog.open(tmp_path, segment_bytes_max=64 << 20, fsync=False) as log:
        report = log.recovery
        assert everything(log) == entries(1, 101, size=200)
        assert report.zero_bytes_truncated == report.bytes_truncated == zeros
        assert report.truncated_at == end and report.bytes_scanned == end + zeros
        assert report.seconds < 5  # one bytes.count over the zeros: tens of ms
        log.append([entry(101, size=200)])
        log.sync()
        assert entry_offsets(segment)[-1][0] == end


def test_a_torn_record_followed_by_zeros_is_a_torn_tail(tmp_path: Path) -> None:
    log = DurableLog.open(tmp_path, preallocate_bytes=8 * KIB, write_buffer_bytes=0)
    log.append(entries(1, 11, size=60))
    log.sync()
    (segment,) = segment_files(tmp_path)
    synced = segment.read_bytes()
    end = records_end(segment)
    log.append([entry(11, size=60)])  # written over the zeros, never synced
    now = segment.read_bytes()
    crash(log)
    size = ENTRY_RECORD_OVERHEAD_BYTES + 60
    assert now[end + size :] == synced[end + size :] == bytes(len(now) - end - size)
    for cut in range(1, size):  # the unsynced record reached the disk up to `cut`
        torn = now[: end + cut] + synced[end + cut :]
        if torn[end:end + cut].count(0) == cut:
            continue  # only zeros reached the disk: nothing torn
        segment.write_bytes(torn)
        with DurableLog.open(tmp_path, fsync=False) as recovered:
            report = recovered.recovery
            assert everything(recovered) == entries(1, 11, size=60)
            assert report.truncated_at == end
            assert report.bytes_truncated == len(torn) - end
            assert report.zero_bytes_truncated < report.bytes_truncated
            assert report.tail_problem and "zero bytes" not in report.tail_problem
            recovered.append([entry(11, term=2)])
        assert segment.stat().st_size == records_end(segment)
    segment.write_bytes(now)  # the whole record made it: it is kept
    with DurableLog.open(tmp_path, fsync=False) as recovered:
        assert everything(recovered) == entries(1, 12, size=60)


def test_damage_before_the_zeros_is_still_corruption(tmp_path: Path) -> None:
    log = DurableLog.open(tmp_path, preallocate_bytes=8 * KIB)
    log.append(entries(1, 21))
    log.sync()
    (segment,) = segment_files(tmp_path)
    crash(log)
    original = segment.read_bytes()
    offset, size = entry_offsets(segment)[9]
    for damaged in (
        original[: offset + 5] + bytes([original[offset + 5] ^ 0x40]) + original[offset + 6 :],
        original[:offset] + bytes(size) + original[offset + size :],  # a zeroed record
    ):
        segment.write_bytes(damaged)
        with pytest.raises(LogCorruption) as caught:
            DurableLog.open(tmp_path, fsync=False)
        assert caught.value.path == segment and caught.value.offset == offset
        assert "valid record" in str(caught.value)
        assert segment.read_bytes() == damaged  # nothing changed on disk
    segment.write_bytes(original)
    with DurableLog.open(tmp_path) as log:
        assert everything(log) == entries(1, 21)


def test_zeros_in_a_segment_that_is_not_last_are_corruption(tmp_path: Path) -> None:
    with DurableLog.open(tmp_path, segment_bytes_max=1 * KIB, preallocate_bytes=512) as log:
        log.append(entries(1, 61))
    first = segment_files(tmp_path)[0]
    end = first.stat().st_size
    with open(first, "ab") as writer:  # what a roll that did not cut would leave
        writer.write(bytes(4 * KIB))
    with pytest.raises(LogCorruption, match="not the last one") as caught:
        DurableLog.open(tmp_path)
    assert caught.value.path == first and caught.value.offset == end


def test_an_overwrite_appends_after_the_records_and_survives_reopen(tmp_path: Path) -> None:
    log = DurableLog.open(tmp_path, preallocate_bytes=4 * KIB)
    log.append(entries(1, 51))
    log.sync()
    (segment,) = segment_files(tmp_path)
    before = records_end(segment)
    log.append(entries(30, 41, term=2))  # a leader's conflicting suffix replaces 30..50
    log.sync()
    offsets = entry_offsets(segment)
    assert offsets[50][0] == before  # the overwrite's first record: where the log ended
    assert_zero_tail(segment)
    log.append(entries(41, 46, term=2))
    log.sync()
    expected = [*entries(1, 30), *entries(30, 46, term=2)]
    assert everything(log) == expected
    crash(log)
    with DurableLog.open(tmp_path, cache_bytes_max=0) as log:
        assert everything(log) == expected
        log.append(entries(20, 23, term=3))  # and another, after the crash
        expected = [*entries(1, 20), *entries(20, 23, term=3)]
    with DurableLog.open(tmp_path, cache_bytes_max=0) as log:
        assert everything(log) == expected
        assert log.recovery.bytes_truncated == 0


def test_file_storage_passes_the_chunk_on(tmp_path: Path) -> None:
    with FileStorage.open(tmp_path / "off", preallocate_bytes=0) as storage:
        (segment,) = segment_files(tmp_path / "off")
        assert segment.stat().st_size == records_end(segment)
        assert storage.log.stats["bytes_preallocated"] == 0
    with FileStorage.open(tmp_path / "on", preallocate_bytes=8 * KIB) as storage:
        (segment,) = segment_files(tmp_path / "on")
        assert_zero_tail(segment, 8 * KIB)


# -- the files' shape over random histories ----------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 30), st.integers(1, 15)),
        st.tuples(st.just("compact"), st.integers(0, 100)),
        st.tuples(st.just("torn"), st.integers(0, 1000)),
        st.sampled_from([("sync",), ("reopen",), ("crash",), ("die",)]),
    ),
    min_size=1,
    max_size=30,
)


def _check_files(directory: Path, *, closed: bool) -> None:
    """Older segments end at their last record; the last one has only zeros after its
    records (none once closed)."""
    *finished, last = segment_files(directory)
    for segment in finished:
        assert segment.stat().st_size == records_end(segment), segment.name
    end = assert_zero_tail(last)
    if closed:
        assert last.stat().st_size == end


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops, seed=st.integers(0, 2**16))
def test_random_histories_keep_the_files_in_shape(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str | int, ...]], seed: int
) -> None:
    """Appends with overwrites, compactions, syncs, clean reopens, crashes that keep
    everything written (``die``), the synced contents (``crash``) or the synced contents
    plus part of what came after (``torn``): the log always holds what the model says
    it may, and the files keep their shape."""
    base = tmp_path_factory.mktemp("shape")
    rng = random.Random(seed)
    options: dict[str, int | bool] = {
        "segment_bytes_max": rng.choice([600, 2048]),
        "preallocate_bytes": rng.choice([1, 100, 512, 4096]),
        "write_buffer_bytes": rng.choice([0, 200]),
        "cache_bytes_max": rng.choice([0, 1 << 20]),
        "fsync": False,
    }
    directory = base / "d0"
    log = DurableLog.open(directory, **options)  # type: ignore[arg-type]
    log_entries: list[LogEntry] = []  # what the log holds now
    durable: list[LogEntry] = []  # what the last sync made durable
    passed: list[list[LogEntry]] = [[]]  # every state since the last sync
    images = {p.name: p.read_bytes() for p in directory.glob("*.seg")}
    term = 1
    compacted = 0

    def synced() -> None:
        nonlocal durable, passed, images
        durable, passed = list(log_entries), [list(log_entries)]
        images = {p.name: p.read_bytes() for p in directory.glob("*.seg")}

    for number, (name, *args) in enumerate(ops):
        if name == "append":
            back, count = (int(a) for a in args)
            last = log.last_index()
            start = max(log.first_index(), last + 1 - back)
            term += int(start <= last)
            new = [entry(i, term, rng.randrange(0, 120)) for i in range(start, start + count)]
            log.append(new)
            kept = log_entries[: start - compacted - 1]
            passed.extend(kept + new[:n] for n in range(1, count + 1))
            log_entries = kept + new
        elif name == "compact":
            target = compacted + int(args[0]) * (log.last_index() - compacted) // 100
            if target > compacted:
                log.compact(target)
                log_entries = log_entries[target - compacted :]
                compacted = target
                log.sync()  # (compaction is not part of the crash model here)
                synced()
        elif name == "sync":
            log.sync()
            synced()
        elif name == "reopen":
            log.close()
            _check_files(directory, closed=True)
            log = DurableLog.open(directory, **options)  # type: ignore[arg-type]
            synced()
        else:
            target = base / f"d{number + 1}"
            if name == "die":  # everything written reached the disk, nothing was cut
                log.write_out()
                crash(log)
                directory.rename(target)
                passed = [list(log_entries)]
            else:
                now = {p.name: p.read_bytes() for p in directory.glob("*.seg")}
                kept = dict(images)
                if name == "torn":
                    newest = max(now)
                    low = len(images.get(newest, b"").rstrip(b"\0"))
                    high = len(now[newest].rstrip(b"\0"))
                    cut = low + (high - low) * int(args[0]) // 1000
                    kept = {**now, newest: now[newest][:cut] + images.get(newest, b"")[cut:]}
                crash(log)
                target.mkdir()
                for file_name, data in kept.items():
                    (target / file_name).write_bytes(data)
                if name == "crash":
                    passed = [durable]
            directory = target
            log = DurableLog.open(directory, **options)  # type: ignore[arg-type]
            found = everything(log)
            assert found in passed
            log_entries = found
            synced()
        assert everything(log) == log_entries
        _check_files(directory, closed=False)
    log.close()
    _check_files(directory, closed=True)


def test_a_chunk_of_one_byte_still_works(tmp_path: Path) -> None:
    # Degenerate but valid: every flush grows the file by its records and one zero.
    with DurableLog.open(tmp_path, preallocate_bytes=1, segment_bytes_max=1 * KIB) as log:
        for start in range(1, 60, 3):
            log.append(entries(start, start + 3))
            log.sync()
            assert_zero_tail(segment_files(tmp_path)[-1], 1)
    with DurableLog.open(tmp_path) as log:
        assert everything(log) == entries(1, 61)
