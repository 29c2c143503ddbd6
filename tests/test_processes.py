"""Real node processes on loopback: discovery, crash tolerance, hostile input, clean shutdown."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from pydantic import BaseModel

from conftest import LocalCluster, pid_alive, run_cli, running_up, wait_for
from mesh.config import MembershipConfig
from mesh.envelope import EnvelopeSealer
from mesh.identity import ClusterAuthority, Identity
from mesh.layout import create_node_identity, load_node_files
from mesh.messages import STATUS_REQUEST, StatusRequest
from mesh.runtime import wall_clock_ms
from sim.scenarios.membership import detection_bound_s


def _alive_peers(node: dict[str, Any]) -> set[str]:
    return {p["node_id"] for p in node.get("peers", []) if p["state"] == "alive"}


def _all_see_each_other(cluster: LocalCluster) -> bool:
    status = cluster.status()["nodes"]
    ids = {n["node_id"] for n in status}
    return all(n["reachable"] and _alive_peers(n) == ids - {n["node_id"]} for n in status)


def test_three_processes_find_each_other_and_survive_sigkill(local_cluster: LocalCluster) -> None:
    seed = local_cluster.start("alpha")
    local_cluster.start("beta", seeds=[seed.listen])
    gamma = local_cluster.start("gamma", seeds=[seed.listen])

    wait_for(lambda: _all_see_each_other(local_cluster), what="all three nodes to see each other")

    gamma.process.send_signal(signal.SIGKILL)
    gamma.process.wait(timeout=5)

    def survivors_report_gamma_down() -> bool:
        nodes = {n["name"]: n for n in local_cluster.status()["nodes"]}
        if nodes["gamma"]["reachable"]:
            return False
        for name in ("alpha", "beta"):
            node = nodes[name]
            states = {p["node_id"]: p["state"] for p in node["peers"]}
            if not node["reachable"] or states.get(gamma.node_id) not in ("suspect", "dead"):
                return False
        return True

    wait_for(survivors_report_gamma_down, timeout_s=20, what="alpha and beta to suspect gamma")
    assert local_cluster.nodes[0].process.poll() is None
    assert local_cluster.nodes[1].process.poll() is None


def test_node_learns_peers_transitively(local_cluster: LocalCluster) -> None:
    # a <- b <- c: c only knows b, yet ends up knowing a.
    a = local_cluster.start("a")
    b = local_cluster.start("b", seeds=[a.listen])
    local_cluster.start("c", seeds=[b.listen])
    wait_for(lambda: _all_see_each_other(local_cluster), what="transitive discovery")


class _Probe(BaseModel):
    text: str


def _dealer(address: str) -> zmq.Socket[bytes]:
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    return socket


def test_hostile_input_is_rejected_counted_and_survived(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    small_envelopes = ("[envelope]\nenvelope_size_bytes_max = 65536\n"
                       "[gossip]\nmessage_bytes_max = 32768\nvalue_bytes_max = 16384\n")
    node = local_cluster.start("target", config_toml=small_envelopes)
    # A certified sender the node has never heard of, and an outsider with its own authority.
    insider_dir = tmp_path / "insider"
    create_node_identity(insider_dir, local_cluster.authority, name="insider", roles=["node"])
    insider = load_node_files(insider_dir)
    sealer = EnvelopeSealer(insider.identity, insider.certificate, first_seq=1)
    outsider_authority = ClusterAuthority(Identity.generate())
    outsider_identity = Identity.generate()
    outsider_cert = outsider_authority.issue(
        name="outsider", public_key=outsider_identity.public_key, roles=["node"],
        not_after=int(time.time()) + 3600,
    )
    outsider = EnvelopeSealer(outsider_identity, outsider_cert, first_seq=1)
    def request_frame(seal: EnvelopeSealer, **kwargs: Any) -> bytes:
        return seal.seal(STATUS_REQUEST, [StatusRequest()],
                         wall_ms=kwargs.pop("wall_ms", wall_clock_ms()),
                         attach_certificate=True, **kwargs)[1]

    valid = request_frame(sealer)
    bad_signature = bytearray(request_frame(sealer))
    bad_signature[-1] ^= 0x01
    rng = random.Random(20261124)
    frames = {
        "malformed": [
            bytes(rng.getrandbits(8) for _ in range(200)),
            msgpack.packb([1, "mesh.status_request", b"x" * 16, None, 5])[:-3] + b"\x00" * 64,
            b"",
        ],
        "too_large": [b"\x92" + b"x" * 70_000],
        "unknown_sender": [request_frame(outsider)],
        "bad_signature": [bytes(bad_signature)],
        # Its own sealer: a timestamp an hour ahead would drag the main sealer's clock along.
        "clock_skew": [request_frame(EnvelopeSealer(insider.identity, insider.certificate, 10**6),
                                   wall_ms=wall_clock_ms() + 3_600_000)],
        "bad_payload": [sealer.seal("no.such.kind", [_Probe(text="x")], wall_ms=wall_clock_ms(),
                                    attach_certificate=True)[1]],
    }
    socket = _dealer(node.listen)
    try:
        socket.send(valid)
        socket.send(valid)  # the replay
        for batch in frames.values():
            for frame in batch:
                socket.send(frame)
        socket.send_multipart([b"one", b"two", b"three"])  # an odd multipart shape

        expected = {reason: len(batch) for reason, batch in frames.items()}
        expected["replay"] = 1
        expected["malformed"] += 1

        def counted() -> dict[str, int] | None:
            rejected = local_cluster.node_status("target")["counters"]["rejected"]
            return rejected if all(rejected[k] >= v for k, v in expected.items()) else None

        rejected = wait_for(counted, what="every hostile frame to be counted")
        assert rejected == expected
        status = local_cluster.node_status("target")
        assert status["reachable"] and node.process.poll() is None
        assert status["counters"]["accepted"] >= 2  # the valid request and our own status requests
    finally:
        socket.close()


def test_up_then_sigterm_leaves_no_process(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "mesh"
    with running_up(cluster_dir, "--nodes", "3") as up:
        pids = up.pids
        assert len(pids) == 3 and all(pid_alive(p) for p in pids)
        status = json.loads(run_cli("status", "--cluster", str(cluster_dir), "--json").stdout)
        assert [n["reachable"] for n in status["nodes"]] == [True, True, True]

        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=30) == 0
        assert not [p for p in pids if pid_alive(p)]


def test_up_killed_outright_takes_its_nodes_with_it(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "mesh"
    up = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "up", "--nodes", "2", "--dir", str(cluster_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pids: list[int] = []
    try:
        cluster_file = cluster_dir / "cluster.json"
        wait_for(cluster_file.exists, what="cluster.json")
        pids = [n["pid"] for n in json.loads(cluster_file.read_text())["nodes"]]
        up.kill()
        up.wait(timeout=10)
        wait_for(lambda: not [p for p in pids if pid_alive(p)], what="nodes to exit with up")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_status_reports_unreachable_node_without_traceback(local_cluster: LocalCluster) -> None:
    local_cluster.start("present")
    with zmq.Context.instance().socket(zmq.ROUTER) as placeholder:
        port = placeholder.bind_to_random_port("tcp://127.0.0.1")
    entries = [n.entry() for n in local_cluster.nodes] + [
        {"name": "absent", "node_id": "00" * 16, "listen": f"tcp://127.0.0.1:{port}"}
    ]
    (local_cluster.directory / "cluster.json").write_text(json.dumps({"nodes": entries}))
    result = run_cli("status", "--cluster", str(local_cluster.directory), "--json",
                     "--timeout", "0.5")
    nodes = {n["name"]: n for n in json.loads(result.stdout)["nodes"]}
    assert nodes["present"]["reachable"] is True
    assert nodes["absent"]["reachable"] is False
    assert "Traceback" not in result.stderr
    for required in ("name", "node_id", "listen", "reachable"):
        assert required in nodes["absent"]
    present = nodes["present"]
    assert set(present["counters"]["rejected"]) == {
        "too_large", "malformed", "unknown_sender", "bad_signature", "replay", "clock_skew",
        "bad_payload",
    }
    for counter in ("received", "sent"):
        assert isinstance(present["counters"][counter], int)
    table = run_cli("status", "--cluster", str(local_cluster.directory), "--timeout", "0.5")
    assert "absent" in table.stdout and "unreachable" in table.stdout


def _states_of(node: dict[str, Any]) -> dict[str, str]:
    return {p["node_id"]: p["state"] for p in node.get("peers", [])}


def test_five_processes_detect_a_killed_node_see_it_back_and_share_gossip(
    local_cluster: LocalCluster,
) -> None:
    bound_s = detection_bound_s(MembershipConfig().to_settings(), 5)
    first = local_cluster.start("n1")
    for name in ("n2", "n3", "n4", "n5"):
        local_cluster.start(name, seeds=[first.listen])
    wait_for(lambda: _all_see_each_other(local_cluster), timeout_s=30,
             what="five nodes to see each other alive")

    victim = next(n for n in local_cluster.nodes if n.name == "n4")
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=5)

    def every_survivor_sees_it_dead() -> bool:
        nodes = [n for n in local_cluster.status()["nodes"] if n["name"] != "n4"]
        return all(n["reachable"] and _states_of(n).get(victim.node_id) == "dead"
                   for n in nodes)

    wait_for(every_survivor_sees_it_dead, timeout_s=bound_s,
             what=f"every survivor to declare n4 dead within {bound_s:.0f} s")

    local_cluster.start("n4", seeds=[first.listen])
    wait_for(lambda: _all_see_each_other(local_cluster), timeout_s=bound_s,
             what="n4 to be alive again everywhere")
    incarnations = {p["incarnation"] for n in local_cluster.status()["nodes"]
                    for p in n["peers"] if p["node_id"] == victim.node_id}
    assert min(incarnations) > 0  # it refuted its death with a higher incarnation

    cluster = str(local_cluster.directory)
    run_cli("gossip", "set", "team/lead", '{"name": "ada"}', "--cluster", cluster,
            "--node", "n2")

    def everyone_holds_it() -> bool:
        for name in ("n1", "n2", "n3", "n4", "n5"):
            answer = run_cli("gossip", "get", "team/lead", "--cluster", cluster, "--node", name,
                             "--json", check=False)
            if answer.returncode != 0 or json.loads(answer.stdout)["value"] != {"name": "ada"}:
                return False
        return True

    wait_for(everyone_holds_it, timeout_s=20, what="the gossip value on all five nodes")
    listing = json.loads(run_cli("gossip", "list", "node/", "--cluster", cluster,
                                 "--json").stdout)
    assert len(listing["items"]) == 5  # every node publishes its metadata


def test_gossip_cli_reports_missing_keys_and_unknown_nodes(local_cluster: LocalCluster) -> None:
    local_cluster.start("solo")
    cluster = str(local_cluster.directory)
    missing = run_cli("gossip", "get", "no/such", "--cluster", cluster, check=False)
    assert missing.returncode == 1 and "no key 'no/such'" in missing.stderr
    unknown = run_cli("gossip", "get", "x", "--cluster", cluster, "--node", "ghost",
                      check=False)
    assert unknown.returncode == 1 and "no node named 'ghost'" in unknown.stderr
    run_cli("gossip", "set", "greeting", "hello", "--cluster", cluster)
    assert run_cli("gossip", "get", "greeting", "--cluster", cluster).stdout.strip() == '"hello"'
    run_cli("gossip", "del", "greeting", "--cluster", cluster)
    assert run_cli("gossip", "get", "greeting", "--cluster", cluster,
                   check=False).returncode == 1
