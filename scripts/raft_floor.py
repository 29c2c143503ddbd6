"""The floor under the Raft benchmark: the least a signed, fsynced write costs here.

A write in agentmesh's shape, with everything but the unavoidable taken away:
four processes on 127.0.0.1 (a client, which is the caller's process, a leader
and two followers), each hop a TCP frame (4-byte length, then the bytes) read
by an asyncio protocol, each frame authenticated, the log appended to a file
and fdatasynced before anything depends on it. Per write:

1. the client packs and signs a request (requests made in one loop turn share
   a frame) and sends it to the leader;
2. the leader checks it, packs the entries of every request that arrived
   together, signs that append once and sends the same bytes to both
   followers, then appends the entries to its log and fdatasyncs;
3. a follower checks the append, appends, fdatasyncs, and signs and sends an
   acknowledgement of its last index;
4. an entry is committed once two of the three logs hold it durably (the
   leader's own sync counts only once done, as in agentmesh); the leader
   applies it to a dict and signs one answer per client frame's worth;
5. the client checks the answer.

There is no Raft beyond that: no terms, elections, retries, sessions, snapshots,
envelope fields, certificates or replay checks, and a bad frame is a bug that
ends the process. ``auth`` is ``ed25519`` (libsodium, as agentmesh signs),
``mac`` (keyed BLAKE2b-256 per sender: what per-link MACs would cost) or
``none``. The log writes its zeros ahead, as agentmesh's does, so an fdatasync
need not grow the file.

It reports what ``raft_peers.py`` reports for the peers (``writes_per_s`` at
``outstanding`` writes in flight, ``p50_ms``/``p99_ms`` one at a time;
``failover_ms_p50`` is None: there is nothing to fail over), so that
``bench_raft.py --floor`` puts it beside agentmesh and etcd in one run.

    python scripts/raft_floor.py [--seconds S] [--value-bytes B] [--outstanding N]
                                 [--auth ed25519|mac|none] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import itertools
import os
import re
import socket
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair

AUTH_MODES = ("ed25519", "mac", "none")
HOST = "127.0.0.1"
FOLLOWERS = ("follower1", "follower2")
FRAME_BYTES_MAX = 16 * 1024 * 1024
PREALLOCATE_BYTES = 1024 * 1024
START_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0

_LENGTH = struct.Struct(">I")
_RECORD = struct.Struct(">IIQ")  # data length, CRC-32 of the data, log index
_MAC_BYTES = 32
_LISTENING = re.compile(r"^listening on (\d+)$", re.MULTILINE)


class FloorError(RuntimeError):
    """A frame failed its check, or a replica did not come up."""


def _peers() -> ModuleType:
    """``raft_peers.py`` beside this script: the floor runs, checks and reports its
    processes with the peers' helpers."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("raft_peers")


# --------------------------------------------------------------------------- frames


class _Auth:
    """Seals frames as one sender and opens frames from any of the run's roles."""

    def __init__(self, mode: str, master: bytes, me: str) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
        self._mode = mode
        self._master = master
        self._secret = crypto_sign_seed_keypair(_derive(master, "sign", me))[1]
        self._mac_key = _derive(master, "mac", me)

    def seal(self, message: Any) -> bytes:
        payload: bytes = msgpack.packb(message)
        if self._mode == "ed25519":
            return bytes(crypto_sign(payload, self._secret))
        if self._mode == "mac":
            return _mac(self._mac_key, payload) + payload
        return payload

    def opener(self, sender: str) -> Callable[[bytes], Any]:
        """A function that checks and unpacks one frame from ``sender``."""
        if self._mode == "ed25519":
            public = crypto_sign_seed_keypair(_derive(self._master, "sign", sender))[0]
            return lambda body: msgpack.unpackb(crypto_sign_open(body, public))
        if self._mode == "mac":
            key = _derive(self._master, "mac", sender)

            def open_mac(body: bytes) -> Any:
                payload = body[_MAC_BYTES:]
                if _mac(key, payload) != body[:_MAC_BYTES]:
                    raise FloorError(f"a frame from {sender} failed its MAC")
                return msgpack.unpackb(payload)

            return open_mac

        def open_plain(body: bytes) -> Any:
            return msgpack.unpackb(body)

        return open_plain


def _derive(master: bytes, purpose: str, role: str) -> bytes:
    return hashlib.blake2b(master, person=purpose.encode()[:16], salt=role.encode()[:16],
                           digest_size=32).digest()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=key, digest_size=_MAC_BYTES).digest()


class _Framed(asyncio.Protocol):
    """Length-prefixed frames on one TCP connection; every frame that arrived in one
    read is handed to ``on_frames`` together (so one sync covers them). A frame that
    fails (too large, a bad signature or MAC, or a bug) goes to ``on_error``, and the
    connection's end to ``on_closed``."""

    def __init__(self, on_frames: Callable[[_Framed, list[bytes]], None],
                 on_error: Callable[[Exception], None],
                 on_closed: Callable[[], None] = lambda: None) -> None:
        self._on_frames = on_frames
        self._on_error = on_error
        self._on_closed = on_closed
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        frames, start = [], 0
        try:
            while len(buffer) - start >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buffer, start)
                if length > FRAME_BYTES_MAX:
                    raise FloorError(f"a frame of {length} bytes, above {FRAME_BYTES_MAX}")
                end = start + _LENGTH.size + length
                if end > len(buffer):
                    break
                frames.append(bytes(buffer[start + _LENGTH.size:end]))
                start = end
            del buffer[:start]
            if frames:
                self._on_frames(self, frames)
        except Exception as error:  # asyncio would only log it, and the run would hang
            self._on_error(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed()

    def send(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_LENGTH.pack(len(body)) + body)


# --------------------------------------------------------------------------- the log


class _Log:
    """Records appended to one file, zeros written ahead, fdatasync on demand."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._end = 0
        self._zeros_end = 0
        self._zeros = bytes(PREALLOCATE_BYTES)

    def append(self, entries: list[tuple[int, bytes]]) -> None:
        records = b"".join(_RECORD.pack(len(data), zlib.crc32(data), index) + data
                           for index, data in entries)
        while self._end + len(records) > self._zeros_end:
            os.pwrite(self._fd, self._zeros, self._zeros_end)
            self._zeros_end += len(self._zeros)
        os.pwrite(self._fd, records, self._end)
        self._end += len(records)

    def sync(self) -> None:
        os.fdatasync(self._fd)


# --------------------------------------------------------------------------- replicas


def _die(error: Exception) -> None:
    """A replica stops at the first fault: the benchmark sees it exit, with the reason
    in its log."""
    print(f"raft_floor: {error!r}", file=sys.stderr, flush=True)
    os._exit(1)


def _lost_link() -> None:
    _die(FloorError("a replica closed its link"))


async def _listen(on_frames: Callable[[_Framed, list[bytes]], None]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Framed(on_frames, _die), HOST, 0)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    return server


async def _follower(auth: _Auth, log: _Log) -> None:
    open_append = auth.opener("leader")

    def on_appends(conn: _Framed, frames: list[bytes]) -> None:
        last = 0
        for frame in frames:
            entries = open_append(frame)
            log.append(entries)
            last = entries[-1][0]
        log.sync()
        conn.send(auth.seal(last))

    server = await _listen(on_appends)
    async with server:
        await server.serve_forever()


async def _leader(auth: _Auth, log: _Log, follower_ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    open_request = auth.opener("client")
    next_index = itertools.count(1)
    durable = 0  # the leader's own log
    matched = [0] * len(follower_ports)
    store: dict[bytes, bytes] = {}
    waiting: deque[tuple[int, _Framed, int, bytes, bytes]] = deque()  # index order

    def commit_index() -> int:
        return sorted([durable, *matched])[-2]  # held by two of the three

    def apply_and_answer() -> None:
        committed = commit_index()
        answers: dict[_Framed, list[int]] = {}
        while waiting and waiting[0][0] <= committed:
            _index, conn, request_id, key, value = waiting.popleft()
            store[key] = value
            answers.setdefault(conn, []).append(request_id)
        for conn, request_ids in answers.items():
            conn.send(auth.seal(request_ids))

    def on_acks(position: int) -> Callable[[_Framed, list[bytes]], None]:
        open_ack = auth.opener(FOLLOWERS[position])

        def on_frames(_conn: _Framed, frames: list[bytes]) -> None:
            matched[position] = max(matched[position], *(open_ack(f) for f in frames))
            apply_and_answer()

        return on_frames

    links = []
    for position, port in enumerate(follower_ports):
        _transport, link = await loop.create_connection(
            partial(_Framed, on_acks(position), _die, _lost_link), HOST, port)
        links.append(link)

    def on_requests(conn: _Framed, frames: list[bytes]) -> None:
        nonlocal durable
        entries = []
        for frame in frames:
            for request_id, key, value in open_request(frame):
                index = next(next_index)
                entries.append((index, msgpack.packb((key, value))))
                waiting.append((index, conn, request_id, key, value))
        if not entries:
            return
        append = auth.seal(entries)
        for link in links:  # before the leader's own sync, as in agentmesh
            link.send(append)
        log.append(entries)
        log.sync()
        durable = entries[-1][0]
        apply_and_answer()

    server = await _listen(on_requests)
    async with server:
        await server.serve_forever()


def _replica_main(argv: list[str]) -> None:
    """Entry point of one replica process (``raft_floor.py _replica``)."""
    parser = argparse.ArgumentParser(prog="raft_floor.py _replica")
    parser.add_argument("--role", choices=("leader", *FOLLOWERS), required=True)
    parser.add_argument("--auth", choices=AUTH_MODES, required=True)
    parser.add_argument("--master", required=True, help="hex; keys are derived from it")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--followers", default="", help="the followers' ports (leader)")
    args = parser.parse_args(argv)
    _peers()._set_parent_death_signal()
    auth = _Auth(args.auth, bytes.fromhex(args.master), args.role)
    log = _Log(args.log)
    if args.role == "leader":
        ports = [int(port) for port in args.followers.split(",")]
        asyncio.run(_leader(auth, log, ports))
    else:
        asyncio.run(_follower(auth, log))


# --------------------------------------------------------------------------- the client


class _Client:
    """The caller's side: requests made in one loop turn leave in one frame."""

    def __init__(self, auth: _Auth) -> None:
        self._auth = auth
        self._open_answer = auth.opener("leader")
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._queued: list[tuple[int, bytes, bytes]] = []
        self._link: _Framed | None = None

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        _transport, self._link = await loop.create_connection(
            lambda: _Framed(self._on_answers, self._fail, self._closed), HOST, port)

    def close(self) -> None:
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()

    async def put(self, key: bytes, value: bytes) -> None:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append((request_id, key, value))
        await future

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        assert self._link is not None
        self._link.send(self._auth.seal(queued))

    def _closed(self) -> None:
        self._fail(FloorError("the leader closed the connection"))

    def _fail(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    def _on_answers(self, _conn: _Framed, frames: list[bytes]) -> None:
        for frame in frames:
            for request_id in self._open_answer(frame):
                self._waiting.pop(request_id).set_result(None)


async def _load(client: _Client, seconds: float, value: bytes, outstanding: int) -> Any:
    latencies: list[float] = []
    writes = 0
    deadline = time.perf_counter() + seconds

    async def writer(slot: int) -> None:
        nonlocal writes
        key = f"bench/{slot}".encode()
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await client.put(key, value)
            now = time.perf_counter()
            if now <= deadline:
                writes += 1
                latencies.append(now - started)

    try:
        await asyncio.wait_for(asyncio.gather(*(writer(slot) for slot in range(outstanding))),
                               seconds + DRAIN_TIMEOUT_S)
    except TimeoutError:
        raise FloorError(f"writes still unanswered {DRAIN_TIMEOUT_S} s after the run") from None
    return _peers()._Load(writes, 0, seconds, latencies)


async def _measure(port: int, auth: _Auth, seconds: float, value: bytes,
                   outstanding: int) -> tuple[Any, Any]:
    client = _Client(auth)
    await client.connect(port)
    try:
        load = await _load(client, seconds, value, outstanding)
        single = await _load(client, seconds, value, 1)
    finally:
        client.close()
    return load, single


def bench_floor(
    seconds: float,
    value_bytes: int,
    outstanding: int,
    failovers: int = 0,
    *,
    auth: str = "ed25519",
    tmp_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The floor, measured as ``raft_peers.py`` measures the peers (see the module
    doc). ``failovers`` is accepted for the same signature and ignored."""
    raft_peers = _peers()
    say = progress or (lambda _line: None)
    raft_peers._check_args(seconds, value_bytes, outstanding, failovers)
    master = os.urandom(32)
    value = os.urandom(value_bytes)

    def replica(name: str, *extra: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "_replica", "--role", name,
                "--auth", auth, "--master", master.hex(), "--log", f"{name}.log.bin", *extra]

    with raft_peers._cluster_dir("raft-floor-", tmp_dir) as processes:
        ports = []
        for name in FOLLOWERS:
            processes.start(name, replica(name))
        for name in FOLLOWERS:
            ports.append(_port_of(processes, name))
        processes.start("leader", replica("leader", "--followers", ",".join(map(str, ports))))
        leader_port = _port_of(processes, "leader")
        say(f"floor: throughput, {outstanding} outstanding, then latency, one outstanding, "
            f"{seconds} s each ({auth})")
        load, single = asyncio.run(_measure(leader_port, _Auth(auth, master, "client"), seconds,
                                            value, outstanding))
        processes.check_alive(["leader", *FOLLOWERS])
    return {
        "system": "floor",
        "auth": auth,
        "writes_per_s": load.per_s,
        "p50_ms": single.p50_ms(),
        "p99_ms": single.p99_ms(),
        "failover_ms_p50": None,
        "failover_ms_all": [],
        "errors": 0,  # a frame that fails its check ends the run instead
        "notes": (
            f"the least a write of agentmesh's shape costs here (scripts/raft_floor.py): "
            f"client, leader and two followers as processes on {HOST}, {auth} on every "
            f"frame, fdatasync on every log, no Raft beyond commit by majority; "
            f"{outstanding} outstanding: p50 {load.p50_ms()} ms, p99 {load.p99_ms()} ms; "
            f"nothing to fail over"),
        "outstanding": outstanding,
        "value_bytes": value_bytes,
        "seconds": seconds,
        "single_writes": single.writes,
    }


def _port_of(processes: Any, name: str) -> int:
    def listening() -> int | None:
        try:
            found = _LISTENING.search(processes.procs[name].log.read_text(errors="replace"))
        except OSError:
            return None
        return int(found.group(1)) if found else None

    return int(_peers()._wait_until(listening, timeout_s=START_TIMEOUT_S,
                                    what=f"the floor's {name} to listen",
                                    processes=processes, alive=[name]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_replica":
        _replica_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--outstanding", type=int, default=1000)
    parser.add_argument("--auth", choices=AUTH_MODES, default="ed25519")
    parser.add_argument("--tmp-dir", default=None, help="parent of the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    return int(_peers().run_and_report(
        "raft_floor",
        lambda progress: bench_floor(args.seconds, args.value_bytes, args.outstanding,
                                     auth=args.auth, tmp_dir=args.tmp_dir, progress=progress),
        as_json=args.json,
    ))


if __name__ == "__main__":
    sys.exit(main())
