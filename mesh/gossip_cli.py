"""``agentmesh gossip get|set|del|list``: read and write a cluster's gossip state.

The CLI asks one node of the cluster (``--node NAME``, default the first that
answers) with a signed request; the node applies writes to its own gossip state,
from where they spread to every other node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mesh.errors import ClusterError, MeshError
from mesh.layout import read_cluster_file
from mesh.messages import GOSSIP_REQUEST, GossipRequest, GossipResponse
from mesh.status import open_client

__all__ = ["GossipCommandError", "gossip_command", "parse_value"]


class GossipCommandError(MeshError):
    """A gossip operation the node refused (e.g. a missing key)."""


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


async def gossip_command(cluster_dir: Path, request: GossipRequest, *, node: str | None,
                         timeout_s: float) -> GossipResponse:
    """Send ``request`` to the chosen node (or the first that answers) and return its answer."""
    listed = read_cluster_file(cluster_dir)
    if node is not None:
        listed = [entry for entry in listed if entry["name"] == node]
        if not listed:
            raise ClusterError(f"no node named {node!r} in {cluster_dir / 'cluster.json'}")
    client = open_client(cluster_dir)
    failures = []
    async with client.running():
        for entry in listed:
            try:
                answer = await client.request(
                    str(entry["listen"]), GOSSIP_REQUEST, request, timeout_s=timeout_s
                )
            except MeshError as exc:
                failures.append(f"{entry['name']}: {exc}")
                continue
            response = answer.payloads[0]
            assert isinstance(response, GossipResponse)
            return response
    raise ClusterError("no node answered: " + "; ".join(failures))
