"""Asking a cluster's nodes for their status over the mesh protocol.

The CLI is a client with its own certificate (``client/`` in the cluster
directory). It sends a signed status request to every node listed in
``cluster.json`` at once; a node that does not answer within the timeout, or
whose answer is signed by another node than the one listed, is reported
unreachable with the reason, never as a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from mesh.config import NodeConfig
from mesh.errors import MeshError
from mesh.layout import CLIENT_DIR, load_node_files, read_cluster_file
from mesh.messages import STATUS_REQUEST, StatusRequest, StatusResponse
from mesh.runtime import Node

__all__ = ["format_status_table", "gather_status", "open_client"]


def open_client(cluster_dir: Path) -> Node:
    """A client node speaking with the cluster's CLI identity."""
    files = load_node_files(cluster_dir / CLIENT_DIR)
    return Node.client(
        config=NodeConfig(name="cli"),
        identity=files.identity,
        certificate=files.certificate,
        authority_public_key=files.authority_public_key,
    )


async def gather_status(cluster_dir: Path, *, timeout_s: float = 2.0) -> dict[str, Any]:
    """Status of every node in ``cluster_dir/cluster.json``: ``{"nodes": [...]}``."""
    listed = read_cluster_file(cluster_dir)
    results: list[dict[str, Any]] = [{} for _ in listed]
    client = open_client(cluster_dir)
    async with client.running(), anyio.create_task_group() as tg:
        for index, entry in enumerate(listed):
            tg.start_soon(_ask_one, client, entry, timeout_s, results, index)
    return {"nodes": results}


async def _ask_one(
    client: Node,
    entry: dict[str, Any],
    timeout_s: float,
    results: list[dict[str, Any]],
    index: int,
) -> None:
    base = {"name": entry["name"], "node_id": entry["node_id"], "listen": entry["listen"]}
    try:
        answer = await client.request(
            str(entry["listen"]), STATUS_REQUEST, StatusRequest(), timeout_s=timeout_s
        )
    except MeshError as exc:
        results[index] = {**base, "reachable": False, "error": str(exc)}
        return
    if answer.sender.hex() != entry["node_id"]:
        results[index] = {
            **base,
            "reachable": False,
            "error": f"{entry['listen']} answered as node {answer.sender.hex()}, "
            f"not {entry['node_id']}",
        }
        return
    payload = answer.payloads[0]
    assert isinstance(payload, StatusResponse)
    results[index] = {**base, **payload.status, "reachable": True}


def format_status_table(status: dict[str, Any]) -> str:
    """A fixed-width table of a ``gather_status`` result."""
    header = ("NAME", "NODE_ID", "LISTEN", "UP", "ALIVE", "SUSPECT", "DEAD", "RAFT", "RECEIVED",
              "SENT", "REJECTED")
    rows = [header]
    for node in status["nodes"]:
        if not node.get("reachable"):
            rows.append((node["name"], node["node_id"][:12], str(node["listen"]), "no",
                         "-", "-", "-", "-", "-", "-", "-"))
            continue
        states = [p["state"] for p in node.get("peers", [])]
        counters = node.get("counters", {})
        rows.append((
            node["name"],
            node["node_id"][:12],
            str(node["listen"]),
            "yes",
            str(states.count("alive")),
            str(states.count("suspect")),
            str(states.count("dead")),
            _raft_cell(node.get("raft")),
            str(counters.get("received", 0)),
            str(counters.get("sent", 0)),
            str(sum(counters.get("rejected", {}).values())),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    unreachable = [n for n in status["nodes"] if not n.get("reachable")]
    for node in unreachable:
        lines.append(f"{node['name']}: unreachable: {node.get('error', '')}")
    return "\n".join(lines)


def _raft_cell(raft: dict[str, Any] | None) -> str:
    """A node's Raft role and term (``-`` when the cluster has no voters)."""
    if not raft:
        return "-"
    if raft.get("term") is None:
        return str(raft.get("role", "-"))
    return f"{raft['role']}@{raft['term']}"
