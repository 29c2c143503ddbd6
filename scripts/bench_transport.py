"""Transport benchmark: raw ZeroMQ, the crypto bound, and the full agentmesh path.

Every figure is measured between two processes on 127.0.0.1 in one run, so the
ratios compare like with like on whatever machine runs it:

a. raw pyzmq PUSH/PULL throughput for 256-byte messages (blocking sockets);
b. the crypto bound: Ed25519 signing in one process and verification in another
   with ``cryptography`` (OpenSSL), one core each; the pipeline runs at the
   slower of the two. Also libsodium's verification rate alone, which the mesh
   uses for envelopes this small (``mesh.trust``): the mesh can beat the bound;
c. messages delivered per second through the mesh (seal and sign, send, receive,
   verify, validate, dispatch to a handler), one payload per envelope;
d. the same with batching: many payloads in one envelope, one signature;
e. request/response round trips through the mesh, signed both ways (p50, p99).

    python scripts/bench_transport.py [--seconds S] [--verify-threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

import anyio
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_open
from pydantic import BaseModel

from mesh.config import NodeConfig
from mesh.identity import Certificate, ClusterAuthority, Identity
from mesh.runtime import Inbound, Node

MESSAGE_BYTES = 256
BATCH_PAYLOADS = 512
KIND_DATA = "bench.data"
KIND_PING = "bench.ping"
KIND_PONG = "bench.pong"
RAW_END = b"end"
RAW_STALL_S = 60.0  # a raw-socket measurement that stalls this long has failed
OSBRAIN_MSGS_PER_S = 85_000  # the unsigned ZeroMQ peer, measured on this class of machine


class Blob(BaseModel):
    """A benchmark payload: opaque bytes."""

    data: bytes


# -- keys shared by both processes ---------------------------------------------------


def _identity(seed: bytes) -> Identity:
    return Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(seed))


def _certificates(seeds: dict[str, bytes]) -> dict[str, Certificate]:
    authority = ClusterAuthority(_identity(seeds["authority"]))
    not_after = int(time.time()) + 3600
    return {
        name: authority.issue(
            name=name, public_key=_identity(seeds[name]).public_key, roles=["node"],
            not_after=not_after,
        )
        for name in ("sender", "receiver")
    }


def _node(name: str, seeds: dict[str, bytes], listen: bool, verify_threads: int) -> Node:
    certificates = _certificates(seeds)
    config = NodeConfig(name=name, listen="tcp://127.0.0.1:0",
                        envelope={"verify_threads": verify_threads})
    node = Node(
        config=config,
        identity=_identity(seeds[name]),
        certificate=certificates[name],
        authority_public_key=_identity(seeds["authority"]).public_key,
        listen=listen,
    )
    for certificate in certificates.values():
        node.trust.add(certificate, time.time())
    return node


# -- a. raw ZeroMQ -------------------------------------------------------------------


def _raw_receiver(control: Connection) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    control.send(port)
    count, first, last = 0, 0.0, 0.0
    # The sender is a freshly spawned process that may take seconds to start on a
    # loaded machine, so the end is an explicit marker, never a quiet period.
    pull.RCVTIMEO = int(RAW_STALL_S * 1000)
    try:
        while pull.recv() != RAW_END:
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
    except zmq.Again:
        count = 0  # the sender stalled or died: report no figure rather than a wrong one
    control.send(_rate(count, first, last))
    pull.close(0)
    context.term()


def _raw_sender(control: Connection, port: int, seconds: float) -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    message = b"x" * MESSAGE_BYTES
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            push.send(message)
    push.send(RAW_END)
    push.close(linger=int(RAW_STALL_S * 1000))
    context.term()
    control.send("done")


# -- b. crypto bound -----------------------------------------------------------------


def _signer(control: Connection, seconds: float) -> None:
    key = Ed25519PrivateKey.generate()
    message = b"x" * MESSAGE_BYTES
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            key.sign(message)
        count += 100
    control.send(count / (time.perf_counter() - start))


def _verifier(control: Connection, seconds: float, library: str) -> None:
    key = Ed25519PrivateKey.generate()
    messages = [bytes([i]) * MESSAGE_BYTES for i in range(100)]
    checks: list[Callable[[], Any]]
    if library == "sodium":
        # What the mesh uses for envelopes of this size (see mesh.trust).
        public = key.public_key().public_bytes_raw()
        checks = [partial(crypto_sign_open, key.sign(m) + m, public) for m in messages]
    else:
        public_key = key.public_key()
        checks = [partial(public_key.verify, key.sign(m), m) for m in messages]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for check in checks:
            check()
        count += len(checks)
    control.send(count / (time.perf_counter() - start))


# -- c, d, e. the mesh ---------------------------------------------------------------


def _mesh_receiver(control: Connection, seeds: dict[str, bytes], verify_threads: int) -> None:
    anyio.run(_mesh_receiver_async, control, seeds, verify_threads)


async def _mesh_receiver_async(control: Connection, seeds: dict[str, bytes],
                               verify_threads: int) -> None:
    node = _node("receiver", seeds, listen=True, verify_threads=verify_threads)
    stats = {"count": 0, "first": 0.0, "last": 0.0}

    def on_data(inbound: Inbound) -> None:
        now = time.perf_counter()
        if stats["count"] == 0:
            stats["first"] = now
        stats["last"] = now
        stats["count"] += len(inbound.envelope.payloads)

    def on_ping(inbound: Inbound) -> None:
        node.reply(inbound, KIND_PONG, inbound.envelope.payloads[0])

    node.on(KIND_DATA, Blob, on_data)
    node.on(KIND_PING, Blob, on_ping)
    async with node.running():
        control.send(node.address)
        while True:
            # The control pipe is polled between bursts of work: a benchmark
            # harness, not part of the measured path.
            while not control.poll():
                await anyio.sleep(0.05)
            command = control.recv()
            if command == "stop":
                return
            if command == "reset":
                stats.update(count=0, first=0.0, last=0.0)
                control.send("ok")
            elif command == "report":
                await _await_quiet(stats)
                count = int(stats["count"])
                control.send((_rate(count, stats["first"], stats["last"]), count))


async def _await_quiet(stats: dict[str, Any], quiet_s: float = 0.3) -> None:
    """Wait until nothing has arrived for ``quiet_s``: the queues are drained."""
    while time.perf_counter() - stats["last"] < quiet_s:
        await anyio.sleep(0.05)


def _mesh_sender(control: Connection, seeds: dict[str, bytes], address: str, mode: str,
                 seconds: float, verify_threads: int) -> None:
    control.send(anyio.run(_mesh_sender_async, seeds, address, mode, seconds, verify_threads))


async def _mesh_sender_async(seeds: dict[str, bytes], address: str, mode: str,
                             seconds: float, verify_threads: int) -> Any:
    node = _node("sender", seeds, listen=False, verify_threads=verify_threads)
    node.registry.register(KIND_DATA, Blob)
    node.registry.register(KIND_PING, Blob)
    node.registry.register(KIND_PONG, Blob)
    payload = Blob(data=b"x" * (MESSAGE_BYTES - 16))
    async with node.running():
        if mode == "rtt":
            return await _round_trips(node, address, payload, seconds)
        batch = [payload] * (BATCH_PAYLOADS if mode == "batched" else 1)
        sent = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if await node.send(address, KIND_DATA, batch):
                sent += len(batch)
        # One connection delivers in order: the answer to a ping sent last means
        # the receiver has taken every data envelope before it.
        await node.request(address, KIND_PING, payload, timeout_s=60)
        return sent


async def _round_trips(node: Node, address: str, payload: Blob, seconds: float) -> list[float]:
    for _ in range(20):  # warm up the connection and the certificate caches
        await node.request(address, KIND_PING, payload)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        await node.request(address, KIND_PING, payload)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


# -- the run -------------------------------------------------------------------------


def _rate(count: int, first: float, last: float) -> float:
    return (count - 1) / (last - first) if count > 1 and last > first else 0.0


def _spawn(context: Any, target: Any, *args: Any) -> tuple[Any, Connection]:
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    # Only the child holds this end now: if it dies, recv raises EOFError, not a hang.
    child.close()
    return process, parent


def _join(*processes: Any) -> None:
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


def measure(seconds: float, verify_threads: int | None = None) -> dict[str, float]:
    """Run every measurement once; returns the figures keyed as ``--json`` prints them.
    ``verify_threads``: the mesh nodes' ``envelope.verify_threads`` (default: the
    config's default)."""
    if verify_threads is None:
        verify_threads = NodeConfig().envelope.verify_threads
    context = mp.get_context("spawn")
    results: dict[str, float] = {}

    receiver, receiver_pipe = _spawn(context, _raw_receiver)
    port = receiver_pipe.recv()
    sender, sender_pipe = _spawn(context, _raw_sender, port, seconds)
    sender_pipe.recv()
    results["raw_zmq_msgs_per_s"] = receiver_pipe.recv()
    _join(sender, receiver)

    signer, signer_pipe = _spawn(context, _signer, seconds)
    verifier, verifier_pipe = _spawn(context, _verifier, seconds, "openssl")
    sign_rate, verify_rate = signer_pipe.recv(), verifier_pipe.recv()
    _join(signer, verifier)
    results["sign_msgs_per_s"] = sign_rate
    results["verify_msgs_per_s"] = verify_rate
    results["crypto_bound_msgs_per_s"] = min(sign_rate, verify_rate)
    verifier, verifier_pipe = _spawn(context, _verifier, seconds, "sodium")
    results["sodium_verify_msgs_per_s"] = verifier_pipe.recv()
    _join(verifier)

    seeds = {name: Ed25519PrivateKey.generate().private_bytes_raw()
             for name in ("authority", "sender", "receiver")}
    receiver, receiver_pipe = _spawn(context, _mesh_receiver, seeds, verify_threads)
    address = receiver_pipe.recv()
    try:
        for mode, key in (("single", "mesh_msgs_per_s"), ("batched", "mesh_batched_msgs_per_s")):
            receiver_pipe.send("reset")
            receiver_pipe.recv()
            sender, sender_pipe = _spawn(context, _mesh_sender, seeds, address, mode, seconds,
                                         verify_threads)
            sent = sender_pipe.recv()
            _join(sender)
            receiver_pipe.send("report")
            results[key], received = receiver_pipe.recv()
            results[key.replace("_per_s", "_sent")] = sent
            results[key.replace("_per_s", "_received")] = received
        sender, sender_pipe = _spawn(context, _mesh_sender, seeds, address, "rtt", seconds,
                                     verify_threads)
        latencies = sorted(sender_pipe.recv())
        _join(sender)
    finally:
        receiver_pipe.send("stop")
        _join(receiver)
    results["mesh_rtt_p50_ms"] = statistics.median(latencies)
    results["mesh_rtt_p99_ms"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    results["mesh_round_trips"] = len(latencies)
    return results


def ratios(figures: dict[str, float]) -> dict[str, float]:
    """The comparisons the targets are stated in."""
    floor = min(figures["raw_zmq_msgs_per_s"], figures["crypto_bound_msgs_per_s"])
    return {
        "mesh_vs_min_raw_crypto": figures["mesh_msgs_per_s"] / floor,
        "batched_vs_crypto_bound": figures["mesh_batched_msgs_per_s"]
        / figures["crypto_bound_msgs_per_s"],
        "batched_vs_osbrain": figures["mesh_batched_msgs_per_s"] / OSBRAIN_MSGS_PER_S,
        "mesh_vs_raw_zmq": figures["mesh_msgs_per_s"] / figures["raw_zmq_msgs_per_s"],
        "mesh_vs_sodium_verify": figures["mesh_msgs_per_s"]
        / figures["sodium_verify_msgs_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="duration of each measurement (default 3)")
    parser.add_argument("--verify-threads", type=int,
                        default=NodeConfig().envelope.verify_threads,
                        help="the mesh nodes' envelope.verify_threads (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.verify_threads < 1:
        parser.error("--verify-threads must be at least 1")
    figures = measure(args.seconds, args.verify_threads)
    report = {**figures, "ratios": ratios(figures), "seconds": args.seconds,
              "verify_threads": args.verify_threads,
              "message_bytes": MESSAGE_BYTES, "batch_payloads": BATCH_PAYLOADS}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    rows = [
        ("a. raw pyzmq PUSH/PULL, 256 B", figures["raw_zmq_msgs_per_s"], "msgs/s"),
        ("b. crypto bound (sign | verify)", figures["crypto_bound_msgs_per_s"], "msgs/s"),
        ("   libsodium verify alone", figures["sodium_verify_msgs_per_s"], "msgs/s"),
        ("c. mesh, one payload per envelope", figures["mesh_msgs_per_s"], "msgs/s"),
        (f"d. mesh, {BATCH_PAYLOADS} payloads per envelope", figures["mesh_batched_msgs_per_s"],
         "msgs/s"),
        ("e. mesh request/response p50", figures["mesh_rtt_p50_ms"], "ms"),
        ("   mesh request/response p99", figures["mesh_rtt_p99_ms"], "ms"),
    ]
    for label, value, unit in rows:
        print(f"{label:<40} {value:>12,.2f} {unit}")
    for name, value in report["ratios"].items():
        print(f"{name:<40} {value:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
