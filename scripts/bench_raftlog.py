"""Durable Raft log benchmark: group commit with real fsync, reads and recovery.

What it measures, each in a fresh directory on the same disk:

a. the raw cost of durability here: append one record and fdatasync, in a loop;
b. group commit: append a batch of N entries, set the hard state (commit moves
   on, as it does on every Raft ``Ready``), ``sync`` (one fdatasync), repeat;
   for N = 1, 64 and 1024 (or the one ``--batch``). Entries/s, syncs/s and the
   batch latency (append + sync) at p50 and p99;
c. the CPU ceiling: the same with fsync off, batch 1024;
d. reads: entries served from the recent-entry cache and from disk;
e. recovery: reopening a log of 100k entries (checking every record).

Issue 4 asks for at least 22k replicated writes/s with fsync on; every write
passes through this log on each voter, so group commit must clear that with
room to spare for the network and the state machine.

    python scripts/bench_raftlog.py [--seconds S] [--entry-bytes B] [--batch N]
                                    [--recovery-entries N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mesh.raftlog import DurableLog, HardState, LogEntry

TARGET_ENTRIES_PER_S = 22_000
BATCHES = (1, 64, 1024)
COMPACT_EVERY_ENTRIES = 200_000  # keep the disk bounded on long runs, as a snapshot would
RECOVERY_ENTRIES_DEFAULT = 100_000


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_raw_fsync(directory: Path, seconds: float, entry_bytes: int) -> dict[str, float]:
    """One small append + fdatasync at a time: the floor under any durable write."""
    fd = os.open(directory / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    record = b"x" * (entry_bytes + 34)
    latencies = []
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            os.write(fd, record)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return {
        "fsyncs_per_s": round(len(latencies) / sum(latencies), 1),
        "p50_ms": round(_percentile(latencies, 0.5) * 1e3, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 3),
    }


def bench_group_commit(
    directory: Path, seconds: float, entry_bytes: int, batch: int, *, fsync: bool
) -> dict[str, Any]:
    """Append ``batch`` entries, set the hard state, sync; repeat for ``seconds``."""
    data = os.urandom(entry_bytes)
    latencies = []
    index = 0
    with DurableLog.open(directory, fsync=fsync) as log:
        fsyncs_before = log.stats["fsyncs"]
        started_all = time.perf_counter()
        deadline = started_all + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            log.append([LogEntry(index + k, 1, 0, data) for k in range(1, batch + 1)])
            log.set_hard_state(HardState(1, b"n1", index))
            log.sync()
            latencies.append(time.perf_counter() - started)
            index += batch
            if index - log.first_index() > COMPACT_EVERY_ENTRIES:
                log.compact(index - COMPACT_EVERY_ENTRIES // 2)
        elapsed = time.perf_counter() - started_all
        stats = log.stats
    return {
        "batch": batch,
        "fsync": fsync,
        "entries_per_s": round(index / elapsed, 1),
        "syncs_per_s": round(len(latencies) / elapsed, 1),
        "fsyncs_per_sync": round((stats["fsyncs"] - fsyncs_before) / len(latencies), 3),
        "mb_per_s": round(stats["bytes_written"] / elapsed / 1e6, 2),
        "batch_p50_ms": round(_percentile(latencies, 0.5) * 1e3, 3),
        "batch_p99_ms": round(_percentile(latencies, 0.99) * 1e3, 3),
        "meets_target": index / elapsed >= TARGET_ENTRIES_PER_S,
    }


def bench_reads_and_recovery(directory: Path, entry_bytes: int, entries: int) -> dict[str, float]:
    """Write ``entries``, read them back from cache and from disk, time the recovery."""
    data = os.urandom(entry_bytes)
    batch = 1000
    with DurableLog.open(directory, segment_bytes_max=8 << 20) as log:
        for start in range(1, entries + 1, batch):
            log.append([LogEntry(i, 1, 0, data) for i in range(start, start + batch)])
            log.sync()
        last = log.last_index()
        cached = log.stats["cache_entries"]
        started = time.perf_counter()
        read = 0
        while read < 2 * entries:
            read += len(log.entries(last - cached + 1, last + 1, max_bytes=1 << 20))
        cache_rate = read / (time.perf_counter() - started)
    with DurableLog.open(directory, cache_bytes_max=0) as log:
        recovery = log.recovery
        started = time.perf_counter()
        read = 0
        lo = 1
        while lo <= last:
            got = log.entries(lo, last + 1, max_bytes=1 << 20)
            read += len(got)
            lo += len(got)
        disk_rate = read / (time.perf_counter() - started)
    return {
        "read_cached_entries_per_s": round(cache_rate, 1),
        "read_disk_entries_per_s": round(disk_rate, 1),
        "recovery_entries": recovery.entries_recovered,
        "recovery_seconds": round(recovery.seconds, 3),
        "recovery_records_per_s": round(recovery.records_scanned / recovery.seconds, 1),
        "recovery_mb_per_s": round(recovery.bytes_scanned / recovery.seconds / 1e6, 1),
    }


def run(
    seconds: float, entry_bytes: int, batches: tuple[int, ...], recovery_entries: int
) -> dict[str, Any]:
    """Every measurement, as one JSON-ready dict."""
    with tempfile.TemporaryDirectory(prefix="bench_raftlog_", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        raw = bench_raw_fsync(root, min(seconds, 1.0), entry_bytes)
        group = [
            bench_group_commit(root / f"fsync{b}", seconds, entry_bytes, b, fsync=True)
            for b in batches
        ]
        cpu = bench_group_commit(root / "nofsync", seconds, entry_bytes, max(batches), fsync=False)
        reads = bench_reads_and_recovery(root / "reads", entry_bytes, recovery_entries)
    best = max(group, key=lambda g: g["entries_per_s"])
    return {
        "entry_bytes": entry_bytes,
        "seconds": seconds,
        "raw_fsync": raw,
        "group_commit": group,
        "cpu_ceiling_no_fsync": cpu,
        **reads,
        "target_entries_per_s": TARGET_ENTRIES_PER_S,
        "best_entries_per_s": best["entries_per_s"],
        "best_vs_target": round(best["entries_per_s"] / TARGET_ENTRIES_PER_S, 2),
    }


def _print_human(report: dict[str, Any]) -> None:
    raw = report["raw_fsync"]
    print(f"entry size {report['entry_bytes']} B, {report['seconds']} s per run")
    print(f"raw append+fdatasync: {raw['fsyncs_per_s']:.0f}/s (p50 {raw['p50_ms']} ms)")
    for g in [*report["group_commit"], report["cpu_ceiling_no_fsync"]]:
        label = f"batch {g['batch']:>5}" + ("" if g["fsync"] else " (no fsync)")
        print(
            f"{label}: {g['entries_per_s']:>10.0f} entries/s  {g['syncs_per_s']:>8.0f} syncs/s  "
            f"p50 {g['batch_p50_ms']:.3f} ms  p99 {g['batch_p99_ms']:.3f} ms  "
            f"{g['mb_per_s']} MB/s"
        )
    print(
        f"reads: {report['read_cached_entries_per_s']:.0f}/s cached, "
        f"{report['read_disk_entries_per_s']:.0f}/s from disk; recovery of "
        f"{report['recovery_entries']} entries: {report['recovery_seconds']} s"
    )
    print(f"target {report['target_entries_per_s']} entries/s: best is {report['best_vs_target']}x")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--entry-bytes", type=int, default=256)
    parser.add_argument("--batch", type=int, help="one batch size instead of 1, 64 and 1024")
    parser.add_argument("--recovery-entries", type=int, default=RECOVERY_ENTRIES_DEFAULT)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if (
        args.seconds <= 0
        or args.recovery_entries < 1
        or (args.batch is not None and args.batch < 1)
    ):
        parser.error("--seconds, --batch and --recovery-entries must be positive")
    if args.entry_bytes < 0:
        parser.error("--entry-bytes must not be negative")
    batches = (args.batch,) if args.batch else BATCHES
    report = run(args.seconds, args.entry_bytes, batches, args.recovery_entries)
    if args.json:
        print(json.dumps(report))
    else:
        _print_human(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
