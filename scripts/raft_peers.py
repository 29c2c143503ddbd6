"""Peer systems for the Raft benchmark: PySyncObj and etcd, measured the same way.

Each ``bench_*`` function starts a three-replica cluster of real, separate
processes on 127.0.0.1 (ports probed free from the kernel), measures it and
tears it down, and returns::

    {"system", "writes_per_s", "p50_ms", "p99_ms",
     "failover_ms_p50", "failover_ms_all", "notes", ...}

measured as:

1. throughput: a client in a separate process (the caller's) keeps
   ``outstanding`` writes of ``value_bytes`` bytes in flight against the
   leader for ``seconds``; ``writes_per_s`` counts the writes acknowledged as
   committed inside that window. Keys cycle over ``outstanding`` slots so that
   the state stays bounded;
2. latency: the same with exactly one write in flight, for ``seconds`` again;
   ``p50_ms`` / ``p99_ms`` are over those writes;
3. failover: SIGKILL the leader's process group, then offer a fresh write to
   each survivor every 20 ms (over connections opened before the kill) until
   one is acknowledged; the time from the kill to that acknowledgement is one
   sample. Between repetitions the killed replica is restarted and the cluster
   must be healthy again (every replica connected to both others, one leader
   that all of them agree on, a write committed through it, every replica
   caught up to it) before the next kill. Election timeouts are randomised, so
   the samples spread: PySyncObj's 0.4-1.4 s, etcd's 1-2 s plus split votes.

PySyncObj (``pip install pysyncobj==0.3.17``; optional, benchmark only):
each replica process runs a ``SyncObj`` subclass with PySyncObj's defaults
(in-memory log, batched append entries, 0.4-1.4 s election timeout) whose
state is a dict changed by one ``@replicated`` method, ``set(key, value)``.
PySyncObj has no client protocol of its own (its fastest documented mode calls
the replicated method inside the leader's process), so each replica also runs
a small TCP front: the client sends length-prefixed frames
``b"W" | len | req_id:u32 | slot:u32 | value``, the front calls
``set(f"k{slot}", value, callback=...)`` and, when PySyncObj applies the
entry (or reports a failure), answers ``b"w" | len | req_id:u32 | status:u8``
(status 0 = committed, else PySyncObj's ``FAIL_REASON``). Answers are flushed
once per PySyncObj tick from its own tick thread. A front on a follower works
too (PySyncObj forwards the command to the leader); the load goes to the
leader's front, the failover probes to both survivors. The front also answers
status queries (``b"S"``) and, for the record, runs PySyncObj's best case on
request (``b"L"``): the same load generated inside the leader's own process,
reported under ``"in_leader"``. With its default batched append entries a
write waits for PySyncObj's 50 ms ticks (the enqueue does not wake the tick
thread), so one write in flight takes about 100 ms wherever the client is.

etcd (Debian's ``etcd-server`` 3.4, the ``etcd`` binary): three members with
data directories in a temporary directory, fsync on and default timeouts
(100 ms heartbeat, 1 s election); the client speaks etcd's v3 JSON gateway
over raw asyncio HTTP/1.1 keep-alive connections, one request in flight per
connection, ``POST /v3/kv/put`` with base64 key and value, to the leader found
through ``POST /v3/maintenance/status``.

Neither peer is a dependency of agentmesh: they exist only to put the Raft
benchmark's figures next to other implementations on the same machine, so a
missing one makes its ``bench_*`` raise RuntimeError naming the install
command, and the script print it.

Every process is started in its own session (and, where ``setpriv`` exists,
dies with this process); all of them are killed by process group and the
temporary directory removed on the way out, including on an exception or
Ctrl-C (and SIGTERM when run as a script).

``--system floor`` runs ``raft_floor.py``'s floor the same way (not a peer:
the least a write of agentmesh's shape costs in Python here).

    python scripts/raft_peers.py --system pysyncobj|etcd|floor [--seconds S]
        [--value-bytes B] [--outstanding N] [--failovers K] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import importlib.util
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PYSYNCOBJ_VERSION = "0.3.17"
PYSYNCOBJ_INSTALL = f"pip install pysyncobj=={PYSYNCOBJ_VERSION}"
ETCD_INSTALL = "apt-get install etcd-server"
HOST = "127.0.0.1"
REPLICAS = 3
PROBE_INTERVAL_S = 0.02  # failover: a fresh write to each survivor this often
PROBE_MAX_PENDING = 1024  # failover: unanswered probes per survivor (about 20 s of them)
FAILOVER_TIMEOUT_S = 30.0
HEALTHY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0

_HEADER = struct.Struct("!BI")  # frame type, payload length
_WRITE = struct.Struct("!II")  # req_id, key slot (the value follows)
_ACK = struct.Struct("!IB")  # req_id, status (0 = committed)
_ACK_FRAME_BYTES = _HEADER.size + _ACK.size


# --------------------------------------------------------------------------- common


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _check_args(seconds: float, value_bytes: int, outstanding: int, failovers: int) -> None:
    if not seconds > 0:
        raise ValueError("seconds must be positive")
    if value_bytes < 1:
        raise ValueError("value_bytes must be at least 1")
    if outstanding < 1:
        raise ValueError("outstanding must be at least 1")
    if failovers < 0:
        raise ValueError("failovers must not be negative")


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for port 0, all held at once so they differ."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None


@dataclass
class _Processes:
    """The processes of one cluster: started in their own sessions, killed by group."""

    workdir: Path
    procs: dict[str, _Proc] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> None:
        proc = self.procs.get(name) or _Proc(name, argv, self.workdir / f"{name}.log")
        self.procs[name] = proc
        if proc.popen is not None and proc.popen.poll() is None:
            raise RuntimeError(f"{name} is already running")
        wrapper = []
        setpriv = shutil.which("setpriv")
        if setpriv and sys.platform.startswith("linux"):
            # Die with this process even if it is killed before its finally runs.
            wrapper = [setpriv, "--pdeathsig", "KILL", "--"]
        with open(proc.log, "ab") as log:
            proc.popen = subprocess.Popen(
                [*wrapper, *proc.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )

    def kill(self, name: str) -> None:
        popen = self.procs[name].popen
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=10)
        # Also reap whatever the process forked into its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        self.procs[name].popen = None

    def kill_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        # Belt and braces (Linux): anything still running in the cluster's directory,
        # such as a process started just as an interrupt arrived.
        for pid in _pids_working_in(self.workdir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def check_alive(self, names: list[str]) -> None:
        for name in names:
            popen = self.procs[name].popen
            if popen is None or popen.poll() is not None:
                code = None if popen is None else popen.returncode
                raise RuntimeError(f"{name} exited ({code}); log tail:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.procs[name].log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _pids_working_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` or inside it (Linux /proc)."""
    root = str(directory.resolve())
    found = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def _cluster_dir(prefix: str, parent: str | None) -> Iterator[_Processes]:
    """A temporary directory and the processes that use it; both gone on exit."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    processes = _Processes(workdir)
    try:
        yield processes
    finally:
        try:
            processes.kill_all()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_until(
    condition: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    processes: _Processes | None = None,
    alive: list[str] | None = None,
    interval_s: float = 0.02,
) -> T:
    """Poll ``condition`` until truthy; fail early if a process we rely on has died."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = condition()
        if last:
            return last
        if processes is not None and alive:
            processes.check_alive(alive)
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def _some(value: T | None) -> tuple[T] | None:
    """A truthy wrapper, so that a found 0 counts as found."""
    return None if value is None else (value,)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _failover_summary(samples: list[float]) -> tuple[float | None, list[float]]:
    all_ms = [_ms(s) for s in samples]
    return (round(statistics.median(all_ms), 3) if all_ms else None), all_ms


@dataclass
class _Load:
    writes: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def per_s(self) -> float:
        return round(self.writes / self.seconds, 1)

    def p50_ms(self) -> float:
        return _ms(_percentile(self.latencies, 0.5)) if self.latencies else float("nan")

    def p99_ms(self) -> float:
        return _ms(_percentile(self.latencies, 0.99)) if self.latencies else float("nan")


# --------------------------------------------------------------------------- PySyncObj


def pysyncobj_available() -> bool:
    return importlib.util.find_spec("pysyncobj") is not None


def _require_pysyncobj() -> None:
    if not pysyncobj_available():
        raise RuntimeError(
            f"pysyncobj is not installed; it is an optional benchmark-only peer: "
            f"{PYSYNCOBJ_INSTALL}"
        )


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind[0], len(payload)) + payload


def _write_frame(req_id: int, slot: int, value: bytes) -> bytes:
    return _HEADER.pack(ord("W"), _WRITE.size + len(value)) + _WRITE.pack(req_id, slot) + value


def _take_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove and return the complete frames at the front of ``buf``."""
    frames = []
    offset = 0
    while len(buf) - offset >= _HEADER.size:
        kind, length = _HEADER.unpack_from(buf, offset)
        end = offset + _HEADER.size + length
        if end > len(buf):
            break
        frames.append((kind, bytes(buf[offset + _HEADER.size : end])))
        offset = end
    del buf[:offset]
    return frames


def _recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    buf = bytearray()
    while True:
        frames = _take_frames(buf)
        if frames:
            return frames[0]
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed")
        buf += data


class _FrontConn:
    """One client connection inside a replica: buffered answers, one send lock."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.pending: list[bytes] = []
        self.open = True

    def send(self, data: bytes) -> None:
        if not self.open:
            return
        with self.send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self.open = False


class _Front:
    """The TCP front of one PySyncObj replica (runs inside the replica process)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.lock = threading.Lock()
        self.dirty: set[_FrontConn] = set()
        self.status_requests: deque[_FrontConn] = deque()
        self.keys: dict[int, str] = {}
        obj.addOnTickCallback(self._on_tick)

    # Called from PySyncObj's tick thread (or, for an immediate failure, the caller's).
    def _acked(self, conn: _FrontConn, req_id: int, _result: Any, error: int) -> None:
        with self.lock:
            conn.pending.append(
                _HEADER.pack(ord("w"), _ACK.size) + _ACK.pack(req_id, min(int(error), 255))
            )
            self.dirty.add(conn)

    def _on_tick(self) -> None:
        while self.status_requests:
            conn = self.status_requests.popleft()
            conn.send(_frame(b"s", json.dumps(self.status()).encode()))
        with self.lock:
            ready = [(conn, b"".join(conn.pending)) for conn in self.dirty]
            for conn in self.dirty:
                conn.pending.clear()
            self.dirty.clear()
        for conn, data in ready:
            conn.send(data)

    def status(self) -> dict[str, Any]:
        obj = self.obj
        leader = obj._getLeader()
        return {
            "self": obj.selfNode.id,
            "leader": None if leader is None else leader.id,
            "is_leader": bool(obj._isLeader()),
            "term": obj.raftCurrentTerm,
            "commit_idx": obj.raftCommitIndex,
            "last_applied": obj.raftLastApplied,
            "ready": bool(obj.isReady()),
            "has_quorum": bool(obj.hasQuorum),
            "partners_connected": sum(bool(obj.isNodeConnected(n)) for n in obj.otherNodes),
        }

    def serve(self, port: int) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, port))
        server.listen(128)
        while True:
            sock, _ = server.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve_conn, args=(_FrontConn(sock),), daemon=True).start()

    def _serve_conn(self, conn: _FrontConn) -> None:
        buf = bytearray()
        try:
            while True:
                data = conn.sock.recv(1 << 18)
                if not data:
                    return
                buf += data
                for kind, payload in _take_frames(buf):
                    if kind == ord("W"):
                        req_id, slot = _WRITE.unpack_from(payload)
                        key = self.keys.get(slot)
                        if key is None:
                            key = self.keys.setdefault(slot, f"k{slot}")
                        self.obj.set(
                            key, payload[_WRITE.size :], callback=partial(self._acked, conn, req_id)
                        )
                    elif kind == ord("S"):
                        self.status_requests.append(conn)
                    elif kind == ord("L"):
                        threading.Thread(
                            target=self._local_load, args=(conn, json.loads(payload)), daemon=True
                        ).start()
        except OSError:
            return
        finally:
            conn.open = False
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _local_load(self, conn: _FrontConn, params: dict[str, Any]) -> None:
        """PySyncObj's best case: keep ``outstanding`` writes in flight from this process."""
        seconds = float(params["seconds"])
        outstanding = int(params["outstanding"])
        value = os.urandom(int(params["value_bytes"]))
        keys = [f"k{slot}" for slot in range(outstanding)]
        sent: dict[int, float] = {}
        latencies: list[float] = []
        counts = {"writes": 0, "errors": 0, "next": 0}
        done = threading.Event()
        issue_lock = threading.Lock()
        deadline = 0.0

        def issue() -> None:
            with issue_lock:
                req_id = counts["next"]
                counts["next"] += 1
                sent[req_id] = time.perf_counter()
            self.obj.set(keys[req_id % outstanding], value, callback=partial(on_done, req_id))

        def on_done(req_id: int, _result: Any, error: int) -> None:
            now = time.perf_counter()
            started = sent.pop(req_id, now)
            if error == 0 and now <= deadline:
                counts["writes"] += 1
                latencies.append(now - started)
            elif error != 0:
                counts["errors"] += 1
            if now < deadline:
                issue()
            elif not sent:
                done.set()

        started_all = time.perf_counter()
        deadline = started_all + seconds
        for _ in range(outstanding):
            issue()
        drained = done.wait(seconds + DRAIN_TIMEOUT_S)
        report = {
            "writes": counts["writes"],
            "errors": counts["errors"],
            "seconds": seconds,
            "drained": drained,
            "p50_ms": _ms(_percentile(latencies, 0.5)) if latencies else None,
            "p99_ms": _ms(_percentile(latencies, 0.99)) if latencies else None,
        }
        conn.send(_frame(b"l", json.dumps(report).encode()))


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pysyncobj_replica_main(argv: list[str]) -> None:
    """Entry point of one replica process (``raft_peers.py _pysyncobj-replica``)."""
    parser = argparse.ArgumentParser(prog="raft_peers.py _pysyncobj-replica")
    parser.add_argument("--self", required=True)
    parser.add_argument("--partners", required=True)
    parser.add_argument("--front-port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _set_parent_death_signal()
    if os.getppid() != args.parent:
        return  # the benchmark is already gone

    from pysyncobj import SyncObj, replicated

    class ReplicatedDict(SyncObj):
        def __init__(self, self_address: str, partners: list[str]) -> None:
            self._data: dict[str, bytes] = {}
            super().__init__(self_address, partners)  # PySyncObj's defaults

        @replicated
        def set(self, key: str, value: bytes) -> None:
            self._data[key] = value

    obj = ReplicatedDict(args.self, args.partners.split(","))
    _Front(obj).serve(args.front_port)


@dataclass
class _PySyncObjCluster:
    processes: _Processes
    raft_ports: list[int]
    front_ports: list[int]

    @classmethod
    def start(cls, processes: _Processes) -> _PySyncObjCluster:
        ports = _free_ports(2 * REPLICAS)
        cluster = cls(processes, ports[:REPLICAS], ports[REPLICAS:])
        for index in range(REPLICAS):
            cluster.start_replica(index)
        return cluster

    def name(self, index: int) -> str:
        return f"pysyncobj{index}"

    def raft_address(self, index: int) -> str:
        return f"{HOST}:{self.raft_ports[index]}"

    def start_replica(self, index: int) -> None:
        partners = [self.raft_address(i) for i in range(REPLICAS) if i != index]
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_pysyncobj-replica",
            "--self", self.raft_address(index),
            "--partners", ",".join(partners),
            "--front-port", str(self.front_ports[index]),
            "--parent", str(os.getpid()),
        ]  # fmt: skip
        self.processes.start(self.name(index), argv)

    def kill(self, index: int) -> None:
        self.processes.kill(self.name(index))

    def connect(self, index: int, timeout_s: float = 2.0) -> socket.socket:
        sock = socket.create_connection((HOST, self.front_ports[index]), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def status(self, index: int) -> dict[str, Any] | None:
        try:
            with self.connect(index, timeout_s=1.0) as sock:
                sock.sendall(_frame(b"S", b""))
                _, payload = _recv_frame(sock)
            return dict(json.loads(payload))
        except (OSError, ValueError):
            return None

    def agreed_leader(self, members: list[int]) -> int | None:
        """The leader that every replica in ``members`` follows, all of them connected.

        PySyncObj connects each pair from one side only and retries a lost
        connection every 5 s (its default ``connectionRetryTime``): a restarted
        replica may follow the leader well before the other follower reconnects
        to it, and a kill in that window would time the reconnection instead.
        """
        statuses = [self.status(i) for i in members]
        if any(
            s is None or not s["ready"] or s["partners_connected"] < REPLICAS - 1 for s in statuses
        ):
            return None
        leaders = {s["leader"] for s in statuses if s is not None}
        if len(leaders) != 1 or None in leaders:
            return None
        (leader,) = leaders
        for index in range(REPLICAS):
            if self.raft_address(index) == leader:
                status = statuses[members.index(index)] if index in members else None
                return index if status is not None and status["is_leader"] else None
        return None

    def write_once(self, index: int, value: bytes, timeout_s: float = 10.0) -> int:
        with self.connect(index, timeout_s=timeout_s) as sock:
            sock.sendall(_write_frame(0, 0, value))
            _, payload = _recv_frame(sock)
        return int(_ACK.unpack(payload)[1])

    def wait_healthy(self) -> int:
        """Wait for one agreed leader, a write committed through it, everyone caught up."""
        everyone = list(range(REPLICAS))
        names = [self.name(i) for i in everyone]
        (leader,) = _wait_until(
            lambda: _some(self.agreed_leader(everyone)),
            timeout_s=HEALTHY_TIMEOUT_S, what="PySyncObj replicas to agree on a leader",
            processes=self.processes, alive=names,
        )  # fmt: skip
        status = self.write_once(leader, b"healthy")
        if status != 0:
            raise RuntimeError(f"PySyncObj health-check write failed with FAIL_REASON {status}")
        leader_status = self.status(leader)
        if leader_status is None:
            raise RuntimeError("PySyncObj leader stopped answering")
        target = leader_status["commit_idx"]

        def caught_up() -> bool:
            statuses = [self.status(i) for i in everyone]
            return all(s is not None and s["last_applied"] >= target for s in statuses)

        _wait_until(
            caught_up, timeout_s=HEALTHY_TIMEOUT_S, what="PySyncObj replicas to catch up",
            processes=self.processes, alive=names,
        )  # fmt: skip
        return leader


def _pipelined_writes(sock: socket.socket, seconds: float, value: bytes, outstanding: int) -> _Load:
    """Keep ``outstanding`` writes in flight on one front connection for ``seconds``."""
    sent: dict[int, float] = {}
    latencies: list[float] = []
    writes = errors = 0
    next_id = 0
    buf = bytearray()

    def frames(count: int, now: float) -> bytes:
        nonlocal next_id
        out = []
        for _ in range(count):
            sent[next_id] = now
            out.append(_write_frame(next_id, next_id % outstanding, value))
            next_id = (next_id + 1) & 0xFFFFFFFF
        return b"".join(out)

    sock.settimeout(0.2)
    start = time.perf_counter()
    deadline = start + seconds
    sock.sendall(frames(outstanding, start))
    while sent:
        try:
            data = sock.recv(1 << 18)
        except TimeoutError:
            data = None
        now = time.perf_counter()
        if now > deadline + DRAIN_TIMEOUT_S:
            raise RuntimeError(f"{len(sent)} PySyncObj writes still unanswered after the run")
        if data is None:
            continue
        if not data:
            raise RuntimeError("PySyncObj front closed the connection")
        buf += data
        answered = 0
        for _kind, payload in _take_frames(buf):
            req_id, status = _ACK.unpack(payload)
            started = sent.pop(req_id, None)
            if started is None:
                continue
            answered += 1
            if status != 0:
                errors += 1
            elif now <= deadline:
                writes += 1
                latencies.append(now - started)
        if answered and now < deadline:
            sock.sendall(frames(answered, now))
    return _Load(writes, errors, seconds, latencies)


def _first_success_after_kill(cluster: _PySyncObjCluster, victim: int, value: bytes) -> float:
    """Kill the leader; seconds until a survivor acknowledges a fresh write."""
    survivors = [i for i in range(REPLICAS) if i != victim]
    socks = {i: cluster.connect(i) for i in survivors}
    selector = selectors.DefaultSelector()
    try:
        for index, sock in socks.items():
            selector.register(sock, selectors.EVENT_READ, index)  # recv only once readable
        buffers = {i: bytearray() for i in survivors}
        pending = dict.fromkeys(survivors, 0)
        next_id = 0
        killed_at = time.perf_counter()
        cluster.kill(victim)
        next_probe = killed_at
        while True:
            now = time.perf_counter()
            if now - killed_at > FAILOVER_TIMEOUT_S:
                raise RuntimeError(
                    f"no PySyncObj write succeeded {FAILOVER_TIMEOUT_S} s after kill"
                )
            if now >= next_probe:
                for index, sock in socks.items():
                    if pending[index] < PROBE_MAX_PENDING:
                        sock.sendall(_write_frame(next_id, 0, value))
                        pending[index] += 1
                        next_id += 1
                next_probe = now + PROBE_INTERVAL_S
            for key, _ in selector.select(timeout=max(0.0, next_probe - time.perf_counter())):
                index = key.data
                data = socks[index].recv(65536)
                if not data:
                    raise RuntimeError(f"PySyncObj survivor {index} closed its front")
                buffers[index] += data
                for _kind, payload in _take_frames(buffers[index]):
                    pending[index] -= 1
                    if _ACK.unpack(payload)[1] == 0:
                        return time.perf_counter() - killed_at
    finally:
        selector.close()
        for sock in socks.values():
            sock.close()


def _in_leader_load(
    cluster: _PySyncObjCluster, leader: int, seconds: float, value_bytes: int, outstanding: int
) -> dict[str, Any]:
    params = {"seconds": seconds, "value_bytes": value_bytes, "outstanding": outstanding}
    with cluster.connect(leader, timeout_s=seconds + DRAIN_TIMEOUT_S + 10) as sock:
        sock.sendall(_frame(b"L", json.dumps(params).encode()))
        _, payload = _recv_frame(sock)
    report = dict(json.loads(payload))
    report["writes_per_s"] = round(report["writes"] / seconds, 1)
    return report


def bench_pysyncobj(
    seconds: float,
    value_bytes: int,
    outstanding: int,
    failovers: int = 5,
    *,
    tmp_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Three PySyncObj replicas, a client in this process over their TCP fronts.

    Raises RuntimeError (with the pip command) if pysyncobj is not installed.
    ``failover_ms_p50`` is None when ``failovers`` is 0. ``tmp_dir`` is the
    parent of the temporary directory (the system's default when None);
    ``progress`` is called with a line as each phase starts.
    """
    say = progress or (lambda _line: None)
    _check_args(seconds, value_bytes, outstanding, failovers)
    _require_pysyncobj()
    from pysyncobj.version import VERSION

    value = os.urandom(value_bytes)
    with _cluster_dir("raft-peers-pysyncobj-", tmp_dir) as processes:
        cluster = _PySyncObjCluster.start(processes)
        leader = cluster.wait_healthy()

        say(f"pysyncobj: throughput, {outstanding} outstanding, {seconds} s")
        cpu_before = _cpu_seconds()
        with cluster.connect(leader) as sock:
            load = _pipelined_writes(sock, seconds, value, outstanding)
        client_cpu_pct = round(100 * (_cpu_seconds() - cpu_before) / seconds, 1)
        say(f"pysyncobj: latency, one outstanding, {seconds} s")
        with cluster.connect(leader) as sock:
            single = _pipelined_writes(sock, seconds, value, 1)
        say(f"pysyncobj: load inside the leader's process, {2 * seconds} s")
        in_leader = _in_leader_load(cluster, leader, seconds, value_bytes, outstanding)
        in_leader_single = _in_leader_load(cluster, leader, seconds, value_bytes, 1)

        samples = []
        for repetition in range(failovers):
            leader = cluster.wait_healthy() if repetition else leader
            say(f"pysyncobj: failover {repetition + 1}/{failovers}")
            samples.append(_first_success_after_kill(cluster, leader, value))
            cluster.start_replica(leader)
        if failovers:
            cluster.wait_healthy()

    failover_p50, failover_all = _failover_summary(samples)
    notes = (
        f"PySyncObj {VERSION}, 3 replica processes with its defaults (in-memory log, batched "
        f"append entries every tick, election timeout 0.4-1.4 s); client in a separate process "
        f"over a TCP front in each replica that calls the @replicated set() with a callback and "
        f"answers on commit, load on the leader's front. Throughput {load.per_s} writes/s at "
        f"{outstanding} outstanding (p50 {load.p50_ms()} ms, p99 {load.p99_ms()} ms under load; "
        f"{load.errors} errors; the client used {client_cpu_pct}% of a core). Best case, "
        f"load inside the leader's process: "
        f"{in_leader['writes_per_s']} writes/s at {outstanding} outstanding, one outstanding "
        f"p50 {in_leader_single['p50_ms']} ms, p99 {in_leader_single['p99_ms']} ms. Failover: "
        f"SIGKILL the leader, a write to each survivor every {PROBE_INTERVAL_S * 1e3:.0f} ms "
        f"until one commits."
    )
    return {
        "system": "pysyncobj",
        "writes_per_s": load.per_s,
        "p50_ms": single.p50_ms(),
        "p99_ms": single.p99_ms(),
        "failover_ms_p50": failover_p50,
        "failover_ms_all": failover_all,
        "notes": notes,
        "outstanding": outstanding,
        "value_bytes": value_bytes,
        "seconds": seconds,
        "load_p50_ms": load.p50_ms(),
        "load_p99_ms": load.p99_ms(),
        "errors": load.errors + single.errors,
        "client_cpu_pct": client_cpu_pct,
        "single_writes": single.writes,
        "in_leader": {
            "writes_per_s": in_leader["writes_per_s"],
            "p50_ms": in_leader_single["p50_ms"],
            "p99_ms": in_leader_single["p99_ms"],
            "load_p50_ms": in_leader["p50_ms"],
            "load_p99_ms": in_leader["p99_ms"],
        },
    }


# --------------------------------------------------------------------------- etcd


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def _require_etcd() -> str:
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError(
            f"the etcd binary is not installed; it is an optional benchmark-only peer: "
            f"{ETCD_INSTALL} (Debian's etcd 3.4)"
        )
    return binary


def _etcd_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in out.splitlines():
        if line.lower().startswith("etcd version:"):
            return line.split(":", 1)[1].strip()
    return "?"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _put_request(port: int, key: bytes, value: bytes) -> bytes:
    body = json.dumps({"key": _b64(key), "value": _b64(value)}).encode()
    head = (
        f"POST /v3/kv/put HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_http_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, content = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(content)
        elif name == b"transfer-encoding" and b"chunked" in content.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, bytes(body)
            body += (await reader.readexactly(size + 2))[:-2]
    if length is not None:
        return status, await reader.readexactly(length)
    return status, await reader.read()


def _http_post(port: int, path: str, body: dict[str, Any], timeout_s: float = 2.0) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {data[:200]!r}")
        return json.loads(data)
    finally:
        conn.close()


@dataclass
class _EtcdCluster:
    processes: _Processes
    binary: str
    client_ports: list[int]
    peer_ports: list[int]
    member_ids: dict[int, str] = field(default_factory=dict)

    @classmethod
    def start(cls, processes: _Processes, binary: str) -> _EtcdCluster:
        ports = _free_ports(2 * REPLICAS)
        cluster = cls(processes, binary, ports[:REPLICAS], ports[REPLICAS:])
        for index in range(REPLICAS):
            cluster.start_member(index)
        return cluster

    def name(self, index: int) -> str:
        return f"etcd{index}"

    def start_member(self, index: int) -> None:
        client = f"http://{HOST}:{self.client_ports[index]}"
        peer = f"http://{HOST}:{self.peer_ports[index]}"
        initial = ",".join(
            f"{self.name(i)}=http://{HOST}:{self.peer_ports[i]}" for i in range(REPLICAS)
        )
        argv = [
            self.binary,
            "--name", self.name(index),
            "--data-dir", str(self.processes.workdir / self.name(index)),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-token", self.processes.workdir.name,
            "--initial-cluster-state", "new",  # ignored on restart: the data dir has the member
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
        ]  # fmt: skip
        self.processes.start(self.name(index), argv)

    def kill(self, index: int) -> None:
        self.processes.kill(self.name(index))

    def status(self, index: int) -> dict[str, Any] | None:
        try:
            status = dict(_http_post(self.client_ports[index], "/v3/maintenance/status", {}))
        except (OSError, RuntimeError, ValueError, http.client.HTTPException):
            return None
        self.member_ids[index] = str(status["header"]["member_id"])
        return status

    def agreed_leader(self, members: list[int]) -> int | None:
        statuses = [self.status(i) for i in members]
        if any(s is None for s in statuses):
            return None
        leaders = {str(s.get("leader", "0")) for s in statuses if s is not None}
        if len(leaders) != 1 or "0" in leaders:
            return None
        (leader,) = leaders
        for index, member_id in self.member_ids.items():
            if member_id == leader:
                return index
        return None

    def active_peers(self, index: int) -> int:
        """Peers this member has a live stream to, from its ``/metrics``."""
        conn = http.client.HTTPConnection(HOST, self.client_ports[index], timeout=2.0)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode(errors="replace")
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()
        remotes = set()
        for line in text.splitlines():
            if line.startswith("etcd_network_active_peers{"):
                labels, _, number = line.rpartition(" ")
                if float(number) >= 1:
                    remotes.add(labels)
        return len(remotes)

    def all_connected(self) -> bool:
        return all(self.active_peers(i) >= REPLICAS - 1 for i in range(REPLICAS))

    def put_once(self, index: int, key: bytes, value: bytes) -> None:
        _http_post(
            self.client_ports[index], "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, 10.0
        )

    def wait_healthy(self) -> int:
        everyone = list(range(REPLICAS))
        names = [self.name(i) for i in everyone]
        (leader,) = _wait_until(
            lambda: _some(self.agreed_leader(everyone)),
            timeout_s=HEALTHY_TIMEOUT_S, what="etcd members to agree on a leader",
            processes=self.processes, alive=names,
        )  # fmt: skip
        _wait_until(
            self.all_connected, timeout_s=HEALTHY_TIMEOUT_S, what="etcd peer streams",
            processes=self.processes, alive=names,
        )  # fmt: skip
        self.put_once(leader, b"healthy", b"yes")
        leader_status = self.status(leader)
        if leader_status is None:
            raise RuntimeError("etcd leader stopped answering")
        target = int(leader_status["raftIndex"])

        def caught_up() -> bool:
            statuses = [self.status(i) for i in everyone]
            return all(
                s is not None and int(s.get("raftAppliedIndex", s["raftIndex"])) >= target
                for s in statuses
            )

        _wait_until(
            caught_up, timeout_s=HEALTHY_TIMEOUT_S, what="etcd members to catch up",
            processes=self.processes, alive=names,
        )  # fmt: skip
        return leader


async def _etcd_load_async(port: int, seconds: float, value: bytes, outstanding: int) -> _Load:
    requests = [_put_request(port, f"bench/{slot}".encode(), value) for slot in range(outstanding)]
    conns = await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(outstanding)))
    latencies: list[float] = []
    counts = {"writes": 0, "errors": 0}
    deadline = 0.0

    async def worker(slot: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = requests[slot]
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            status, _ = await _read_http_response(reader)
            now = time.perf_counter()
            if status != 200:
                counts["errors"] += 1
            elif now <= deadline:
                counts["writes"] += 1
                latencies.append(now - started)

    try:
        deadline = time.perf_counter() + seconds
        await asyncio.wait_for(
            asyncio.gather(*(worker(i, r, w) for i, (r, w) in enumerate(conns))),
            seconds + DRAIN_TIMEOUT_S,
        )
    finally:
        for _, writer in conns:
            writer.close()
    return _Load(counts["writes"], counts["errors"], seconds, latencies)


async def _etcd_failover_async(cluster: _EtcdCluster, victim: int, value: bytes) -> float:
    survivors = [i for i in range(REPLICAS) if i != victim]
    idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {
        i: [await asyncio.open_connection(HOST, cluster.client_ports[i]) for _ in range(4)]
        for i in survivors
    }
    requests = {
        i: _put_request(cluster.client_ports[i], b"bench/failover", value) for i in survivors
    }
    pending = dict.fromkeys(survivors, 0)
    succeeded = asyncio.Event()
    first: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    opened: list[asyncio.StreamWriter] = [w for conns in idle.values() for _, w in conns]

    async def attempt(index: int) -> None:
        pending[index] += 1
        try:
            if idle[index]:
                reader, writer = idle[index].pop()
            else:
                reader, writer = await asyncio.open_connection(HOST, cluster.client_ports[index])
                opened.append(writer)
            writer.write(requests[index])
            status, _ = await _read_http_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            return
        finally:
            pending[index] -= 1
        idle[index].append((reader, writer))
        if status == 200 and not first:
            first.append(time.perf_counter())
            succeeded.set()

    killed_at = time.perf_counter()
    cluster.kill(victim)
    try:
        while not succeeded.is_set():
            if time.perf_counter() - killed_at > FAILOVER_TIMEOUT_S:
                raise RuntimeError(f"no etcd write succeeded {FAILOVER_TIMEOUT_S} s after kill")
            for index in survivors:
                if pending[index] < PROBE_MAX_PENDING:
                    task = asyncio.create_task(attempt(index))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(succeeded.wait(), PROBE_INTERVAL_S)
        return first[0] - killed_at
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in opened:
            writer.close()


def bench_etcd(
    seconds: float,
    value_bytes: int,
    outstanding: int,
    failovers: int = 5,
    *,
    tmp_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Three etcd members, a client in this process over the v3 JSON gateway.

    Raises RuntimeError (with the apt-get command) if the etcd binary is absent.
    ``failover_ms_p50`` is None when ``failovers`` is 0. ``tmp_dir`` is the
    parent of the temporary directory (the system's default when None);
    ``progress`` is called with a line as each phase starts.
    """
    say = progress or (lambda _line: None)
    _check_args(seconds, value_bytes, outstanding, failovers)
    binary = _require_etcd()
    version = _etcd_version(binary)
    _raise_nofile_limit()
    value = os.urandom(value_bytes)
    with _cluster_dir("raft-peers-etcd-", tmp_dir) as processes:
        cluster = _EtcdCluster.start(processes, binary)
        leader = cluster.wait_healthy()
        port = cluster.client_ports[leader]
        say(f"etcd: throughput, {outstanding} outstanding, {seconds} s")
        cpu_before = _cpu_seconds()
        load = asyncio.run(_etcd_load_async(port, seconds, value, outstanding))
        client_cpu_pct = round(100 * (_cpu_seconds() - cpu_before) / seconds, 1)
        say(f"etcd: latency, one outstanding, {seconds} s")
        single = asyncio.run(_etcd_load_async(port, seconds, value, 1))

        samples = []
        for repetition in range(failovers):
            leader = cluster.wait_healthy() if repetition else leader
            say(f"etcd: failover {repetition + 1}/{failovers}")
            samples.append(asyncio.run(_etcd_failover_async(cluster, leader, value)))
            cluster.start_member(leader)
        if failovers:
            cluster.wait_healthy()

    failover_p50, failover_all = _failover_summary(samples)
    notes = (
        f"etcd {version}, 3 member processes with default timeouts (heartbeat 100 ms, election "
        f"1 s) and fsync on, data dirs in a temporary directory; client in a separate process "
        f"over the v3 JSON gateway (POST /v3/kv/put), raw asyncio HTTP/1.1 keep-alive, one "
        f"connection per write in flight, to the leader. Throughput {load.per_s} writes/s at "
        f"{outstanding} outstanding (p50 {load.p50_ms()} ms, p99 {load.p99_ms()} ms under load; "
        f"{load.errors} errors; the client used {client_cpu_pct}% of a core). Failover: "
        f"SIGKILL the leader, a put to each survivor every "
        f"{PROBE_INTERVAL_S * 1e3:.0f} ms until one succeeds."
    )
    return {
        "system": "etcd",
        "writes_per_s": load.per_s,
        "p50_ms": single.p50_ms(),
        "p99_ms": single.p99_ms(),
        "failover_ms_p50": failover_p50,
        "failover_ms_all": failover_all,
        "notes": notes,
        "outstanding": outstanding,
        "value_bytes": value_bytes,
        "seconds": seconds,
        "load_p50_ms": load.p50_ms(),
        "load_p99_ms": load.p99_ms(),
        "errors": load.errors + single.errors,
        "client_cpu_pct": client_cpu_pct,
        "single_writes": single.writes,
    }


# --------------------------------------------------------------------------- command line

def bench_floor(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Not a peer but the floor under them all: ``raft_floor.bench_floor``."""
    path = Path(__file__).with_name("raft_floor.py")
    spec = importlib.util.spec_from_file_location("raft_floor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: dict[str, Any] = module.bench_floor(*args, **kwargs)
    return result


BENCHES: dict[str, Callable[..., dict[str, Any]]] = {
    "pysyncobj": bench_pysyncobj,
    "etcd": bench_etcd,
    "floor": bench_floor,
}


def _format(report: dict[str, Any]) -> str:
    lines = [
        f"{report['system']}: {report['writes_per_s']:,.0f} writes/s at "
        f"{report['outstanding']} outstanding, {report['value_bytes']} B values, "
        f"{report['seconds']} s",
        f"  one outstanding: p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms",
        f"  failover (SIGKILL leader -> next write): p50 {report['failover_ms_p50']} ms, "
        f"all {report['failover_ms_all']}",
    ]
    if "in_leader" in report:
        best = report["in_leader"]
        lines.append(
            f"  load inside the leader's process: {best['writes_per_s']:,.0f} writes/s, "
            f"one outstanding p50 {best['p50_ms']} ms, p99 {best['p99_ms']} ms"
        )
    lines.append(f"  notes: {report['notes']}")
    return "\n".join(lines)


def _raise_on_sigterm(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_pysyncobj-replica":
        _pysyncobj_replica_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--system", choices=sorted(BENCHES), required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--outstanding", type=int, default=1000)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--tmp-dir", default=None, help="parent of the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    return run_and_report(
        "raft_peers",
        lambda progress: BENCHES[args.system](
            args.seconds, args.value_bytes, args.outstanding, args.failovers,
            tmp_dir=args.tmp_dir, progress=progress),
        as_json=args.json,
    )


def run_and_report(
    prog: str, bench: Callable[[Callable[[str], None]], dict[str, Any]], *, as_json: bool
) -> int:
    """Run ``bench`` (given a progress printer) so that Ctrl-C and SIGTERM stop and
    clean up, print its report; the exit code (2: refused or failed, 130: interrupted)."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    # Ctrl-C must clean up even when the run was started with SIGINT ignored (as a
    # background job of a non-interactive shell is), which Python leaves ignored.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report = bench(lambda line: print(f"{prog}: {line}", file=sys.stderr, flush=True))
    except (RuntimeError, ValueError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; cluster stopped and cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    print(json.dumps(report, indent=2) if as_json else _format(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
